"""moto's server, with each DynamoDB call applied whole before the next.

moto serves requests on threads and does not lock its tables, so two
concurrent conditional updates of one item can both succeed (measured with
8 racing claims: 1 race in 200 had two winners), which DynamoDB never
allows. Courier's claims, leases and count batches rely on that atomicity,
so the local stack runs DynamoDB's handler under one lock; SQS, Scheduler
and the streams API stay concurrent (an SQS long poll must not block them).

moto's SQS receive also checks each candidate message's retention by
building every queue attribute, counts of the whole queue included, so one
receive costs O(messages²): 0.7-1.1 s with 500 messages queued, which made
a backlog of held-back deliveries crawl. The retention check here reads the
one attribute it needs (same rule, same result), and the SQS model reads
the clock as `time.time()` instead of through datetime arithmetic (its
per-message visibility checks spent most of a receive there).

Usage: python infra/emulator.py [moto_server arguments]
"""

import sys
import threading
import time

from moto.dynamodb.responses import DynamoHandler
from moto.server import main
import moto.sqs.models
from moto.sqs.models import SQSBackend

_ONE_AT_A_TIME = threading.Lock()
_call_action = DynamoHandler.call_action


def _locked_call_action(self):
    with _ONE_AT_A_TIME:
        return _call_action(self)


DynamoHandler.call_action = _locked_call_action


def _within_retention(self, queue_name, message):
    retention_s = int(self.get_queue(queue_name).message_retention_period)
    return retention_s + message.sent_timestamp / 1000 > time.time()


SQSBackend.is_message_valid_based_on_retention_period = _within_retention

_slow_unix_time = moto.sqs.models.unix_time


def _unix_time(dt=None):
    return time.time() if dt is None else _slow_unix_time(dt)


def _unix_time_millis(dt=None):
    return _unix_time(dt) * 1000.0


moto.sqs.models.unix_time = _unix_time
moto.sqs.models.unix_time_millis = _unix_time_millis

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
