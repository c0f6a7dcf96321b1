"""moto's server, with each DynamoDB call applied whole before the next.

moto serves requests on threads and does not lock its tables, so two
concurrent conditional updates of one item can both succeed (measured with
8 racing claims: 1 race in 200 had two winners), which DynamoDB never
allows. Courier's claims, leases and count batches rely on that atomicity,
so the local stack runs DynamoDB's handler under one lock; SQS, Scheduler
and the streams API stay concurrent (an SQS long poll must not block them).

Usage: python infra/emulator.py [moto_server arguments]
"""

import sys
import threading

from moto.dynamodb.responses import DynamoHandler
from moto.server import main

_ONE_AT_A_TIME = threading.Lock()
_call_action = DynamoHandler.call_action


def _locked_call_action(self):
    with _ONE_AT_A_TIME:
        return _call_action(self)


DynamoHandler.call_action = _locked_call_action

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
