"""N single creates (POST /v1/tasks) from C concurrent clients against a
running API (`make run`), each client on one kept-alive connection; prints
creates/s and latency percentiles. Targets are `.invalid` hosts unless
--target is given (e.g. the echo target of `make run`).

    .venv/bin/python infra/create_load.py --api http://127.0.0.1:3000 --key KEY -n 400 -c 16
"""

import argparse
import concurrent.futures
import http.client
import json
import threading
import time
import urllib.parse


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--api", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("-n", type=int, default=400)
    ap.add_argument("-c", type=int, default=16)
    ap.add_argument("--target", default="http://courier-load.invalid/hook")
    a = ap.parse_args()
    netloc = urllib.parse.urlsplit(a.api).netloc
    local = threading.local()
    headers = {"authorization": f"Bearer {a.key}", "content-type": "application/json"}

    def create(i):
        conn = getattr(local, "conn", None) or http.client.HTTPConnection(netloc, timeout=60)
        local.conn = conn
        body = json.dumps({"request": {"method": "POST", "url": a.target, "json": {"i": i}}})
        t = time.perf_counter()
        conn.request("POST", "/v1/tasks", body=body, headers=headers)
        r = conn.getresponse()
        r.read()
        return r.status, time.perf_counter() - t

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(a.c) as pool:
        results = list(pool.map(create, range(a.n)))
    wall = time.perf_counter() - t0
    lat = sorted(d for _, d in results)
    statuses = {}
    for s, _ in results:
        statuses[s] = statuses.get(s, 0) + 1
    pct = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000  # noqa: E731
    print(f"{a.n} creates, {a.c} clients: {a.n / wall:.1f} creates/s, p50 {pct(0.5):.0f} ms, "
          f"p95 {pct(0.95):.0f} ms, max {lat[-1] * 1000:.0f} ms, statuses {statuses}")


if __name__ == "__main__":
    main()
