"""Verifies one received webhook with the `standardwebhooks` package (an
implementation independent of Courier's). Reads a JSON document on stdin:
{"secret": "whsec_...", "headers": {name: value}, "body_base64": "..."}.
Exits 0 and prints "verified" when a signature matches, 1 and the reason
when not."""

import base64
import json
import sys

from standardwebhooks import Webhook


def main() -> int:
    doc = json.load(sys.stdin)
    body = base64.b64decode(doc["body_base64"])
    try:
        Webhook(doc["secret"]).verify(body, doc["headers"], json_parse=False)
    except Exception as e:  # the package's errors, and a body that is not UTF-8
        print(f"rejected: {type(e).__name__}: {e}")
        return 1
    print("verified")
    return 0


if __name__ == "__main__":
    sys.exit(main())
