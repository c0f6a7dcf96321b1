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

One process per service (infra/emulator.sh): DynamoDB (with its streams,
which moto keeps in the DynamoDB backend) and SQS each get a process of
their own, so SQS and Scheduler calls no longer queue behind DynamoDB's lock
or share one interpreter lock with it. The default endpoint's process serves
Scheduler and the rest, and forwards DynamoDB and SQS requests it receives
to their processes (EMULATOR_ROUTES="dynamodb=URL sqs=URL"), so a client that
only knows AWS_ENDPOINT_URL sees one consistent emulator. EventBridge (in
the default process) delivers a rule's events to an SQS target in-process;
with SQS elsewhere, that delivery is sent to the SQS process instead.

Speed patches, each measured and explained where it is applied: SendMessage
without building every queue attribute, one-pass DeleteMessage, receipt
handles drawn at once, TransactWriteItems rolled back from a journal of the
items it touches instead of copies of whole tables, queries that read their
partition instead of sorting the whole table, request logs for failed
requests only, kept-alive connections with responses written in one
piece, and per-request constants computed once. EMULATOR_PROFILE=path profiles the requests.

The patches are written for one moto version (MOTO_VERSION): with any other
the emulator refuses to start. infra/emulator_check.py tests them.

Usage: python infra/emulator.py [moto_server arguments]
"""

import functools
import json
import http.client
import os
import string
import sys
import threading
import time
import urllib.parse

import moto

MOTO_VERSION = "5.2.5"
if moto.__version__ != MOTO_VERSION:
    sys.exit(
        f"infra/emulator.py patches moto {MOTO_VERSION}, but moto {moto.__version__} is installed: "
        f"run `make tools` (infra/requirements.txt pins it) or re-check the patches for the new version"
    )

import copy  # noqa: E402

import moto.backends  # noqa: E402
import moto.dynamodb.models  # noqa: E402
import moto.dynamodb.models.table  # noqa: E402
import moto.dynamodb.models.dynamo_type  # noqa: E402
import moto.core.responses  # noqa: E402
import moto.core.utils  # noqa: E402
import moto.server  # noqa: E402
import moto.sqs.models  # noqa: E402
from moto.dynamodb.responses import DynamoHandler  # noqa: E402
from moto.server import main  # noqa: E402
from moto.sqs.models import SQSBackend  # noqa: E402

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

# SendMessage (and each entry of SendMessageBatch) reads one queue attribute,
# ContentBasedDeduplication, through `Queue.attributes`, which builds every
# attribute, the three message counts included: O(queued messages) per sent
# message, half of an SQS process's time with a few hundred queued. While a
# send runs, `attributes` answers with that one attribute, computed as the
# full property computes it (FIFO queues only; booleans as "true"/"false").
_Queue = moto.sqs.models.Queue
_all_attributes = _Queue.attributes
_sending = threading.local()


def _attributes(self):
    if not getattr(_sending, "active", False):
        return _all_attributes.fget(self)
    if not self.fifo_queue:
        return {}
    v = self.content_based_deduplication
    return {"ContentBasedDeduplication": str(v).lower() if isinstance(v, bool) else v}


_Queue.attributes = property(_attributes)
_send_message = SQSBackend.send_message


def _send_message_lean(self, *args, **kwargs):
    _sending.active = True
    try:
        return _send_message(self, *args, **kwargs)
    finally:
        _sending.active = False


SQSBackend.send_message = _send_message_lean

# TransactWriteItems deep-copies every table it touches, once per action,
# before applying anything, to roll back on failure: O(table size) under
# DynamoDB's lock, so a transaction on a table of a few thousand items held
# every other DynamoDB call for tens of milliseconds. Here the rollback
# journal holds only what the actions can change: the item each action
# targets (copied before the action) and the length of each stream's record
# list; a failed transaction restores exactly those. The rest is moto's
# transact_write_items as written (same checks, same order, same errors).
_ddb = moto.dynamodb.models
_DynamoType = moto.dynamodb.models.dynamo_type.DynamoType


def _transact_write_items(self, transact_items):
    if len(transact_items) > 100:
        raise _ddb.TooManyTransactionsException()
    journal = []  # (table, hash, range or None, hash present, item before or None)
    streams = {}  # table name -> (shard, its record list, length)
    for item in transact_items:
        _, op = next(iter(item.items()))
        table = self.tables.get(op.get("TableName")) if op.get("TableName") else None
        if table is not None and table.stream_shard is not None and table.name not in streams:
            streams[table.name] = (table.stream_shard, table.stream_shard.items, len(table.stream_shard.items))

    def remember(table_name, key):
        table = self.tables.get(table_name)
        if table is None or table.hash_key_attr not in key:
            return
        h = _DynamoType(key[table.hash_key_attr])
        r = None
        if table.range_key_attr is not None:
            if table.range_key_attr not in key:
                return
            r = _DynamoType(key[table.range_key_attr])
        had = h in table.items
        old = (table.items[h].get(r) if r is not None else table.items[h]) if had else None
        journal.append((table, h, r, had, copy.deepcopy(old)))

    def rollback():
        for table, h, r, had, old in reversed(journal):
            if r is None:
                if old is None:
                    table.items.pop(h, None)
                else:
                    table.items[h] = old
            elif old is None:
                table.items.get(h, {}).pop(r, None)
                if not had and not table.items.get(h):
                    table.items.pop(h, None)
            else:
                table.items[h][r] = old
        for shard, records, n in streams.values():
            del records[n:]
            shard.items = records

    target_items = set()

    def check_unicity(table_name, key):
        item = (str(table_name), str(dict(sorted(key.items()))))
        if item in target_items:
            raise _ddb.MultipleTransactionsException()
        target_items.add(item)

    errors = []
    for item in transact_items:
        original_item = None
        if len(list(item.keys())) > 1:
            raise _ddb.TransactWriteSingleOpException
        try:
            op_type, op = next(iter(item.items()))
            if op_type not in {"ConditionCheck", "Put", "Delete", "Update"}:
                raise ValueError("Unsupported transaction operation")
            table_name = op["TableName"]
            condition_expression = op.get("ConditionExpression")
            expression_attribute_names = op.get("ExpressionAttributeNames")
            expression_attribute_values = op.get("ExpressionAttributeValues")
            return_values_on_condition_check_failure = op.get("ReturnValuesOnConditionCheckFailure")
            if op_type == "Put":
                attrs = op["Item"]
                table = self.get_table(table_name)
                key = {table.hash_key_attr: attrs[table.hash_key_attr]}
                if table.range_key_attr is not None:
                    key[table.range_key_attr] = attrs[table.range_key_attr]
            else:
                key = op["Key"]
            check_unicity(table_name, key)
            if op_type != "ConditionCheck":
                remember(table_name, key)
            current = self.get_item(table_name, key)
            if condition_expression is not None:
                condition_op = _ddb.get_filter_expression(
                    condition_expression, expression_attribute_names, expression_attribute_values
                )
                if not condition_op.expr(current):
                    if return_values_on_condition_check_failure == "ALL_OLD" and current:
                        original_item = current.to_json()["Attributes"]
                    raise _ddb.ConditionalCheckFailed(item=original_item)
            if op_type == "Put":
                self.put_item(
                    table_name,
                    op["Item"],
                    condition_expression=condition_expression,
                    expression_attribute_names=expression_attribute_names,
                    expression_attribute_values=expression_attribute_values,
                )
            elif op_type == "Delete":
                self.delete_item(
                    table_name,
                    key,
                    condition_expression=condition_expression,
                    expression_attribute_names=expression_attribute_names,
                    expression_attribute_values=expression_attribute_values,
                )
            elif op_type == "Update":
                self.update_item(
                    table_name,
                    key,
                    update_expression=op["UpdateExpression"],
                    condition_expression=condition_expression,
                    expression_attribute_names=expression_attribute_names,
                    expression_attribute_values=expression_attribute_values,
                )
            errors.append((None, None, None))
        except (_ddb.MultipleTransactionsException, _ddb.MockValidationException):
            rollback()
            raise
        except _ddb.ConditionalCheckFailed as e:
            errors.append(("ConditionalCheckFailed", str(e.message), original_item))
        except Exception as e:  # noqa: BLE001 (as moto: any other error cancels)
            errors.append((type(e).__name__, str(e), original_item))
    if any(code is not None for code, _, _ in errors):
        rollback()
        raise _ddb.TransactionCanceledException(errors)


_ddb.DynamoDBBackend.transact_write_items = _transact_write_items

# Query lists its candidates through `Table.all_items`, which gathers every
# item of the table and sorts them all by key (DynamoType comparisons in
# Python) before the query keeps one partition: O(N log N) per query under
# DynamoDB's lock. With a few thousand tasks stored, the API's one query per
# create by business id made that half of the DynamoDB process's time. While
# a query runs, `all_items` hands it the one partition it asks for (a table
# query: the caller still checks the hash key and sorts by range key), or for
# an index query every item unsorted (the caller sorts its candidates by the
# index's keys, a total order, so the table order it started from is lost
# anyway). Scans and everything else get the sorted list as before.
_Table = moto.dynamodb.models.table.Table
_all_items = _Table.all_items
_table_query = _Table.query
_querying = threading.local()


def _query_items(self):
    q = getattr(_querying, "q", None)
    if q is None or q[0] is not self:
        return _all_items(self)
    hash_key, index_name = q[1], q[2]
    if index_name is None and hash_key is not None and self.range_key_attr:
        return list(self.items[hash_key].values()) if hash_key in self.items else []
    items = []
    for v in self.items.values():
        if self.range_key_attr:
            items.extend(v.values())
        else:
            items.append(v)
    return items


def _query(self, hash_key, *args, **kwargs):
    index_name = args[6] if len(args) > 6 else kwargs.get("index_name")
    _querying.q = (self, hash_key, index_name)
    try:
        return _table_query(self, hash_key, *args, **kwargs)
    finally:
        _querying.q = None


_Table.all_items = _query_items
_Table.query = _query

# werkzeug logs one line per request through `logging` (a lock, a format,
# a write): 8 % of the DynamoDB process's time under load. Only failed
# requests are logged now, which are the ones worth reading.
import werkzeug.serving  # noqa: E402

_log_request = werkzeug.serving.WSGIRequestHandler.log_request


def _log_failed_request(self, code="-", size="-"):
    if str(getattr(code, "value", code)).isdigit() and int(getattr(code, "value", code)) < 400:
        return
    _log_request(self, code, size)


werkzeug.serving.WSGIRequestHandler.log_request = _log_failed_request

# Every response said `Connection: close`, so every call paid a TCP
# connection and a new server thread: werkzeug closes because, after the
# application, it drains the socket (reading until nothing more comes),
# which on a kept-alive connection would swallow the next request. Here the
# application and that drain read the request through a stream that ends
# where the request's body ends (its Content-Length), so a connection stays
# open for the next request; a request of unknown length (chunked) still
# closes it. Responses are also written buffered, in one write instead of
# one per header line (a `100 Continue` is flushed at once).
werkzeug.serving.WSGIRequestHandler.wbufsize = 64 * 1024
_run_wsgi = werkzeug.serving.WSGIRequestHandler.run_wsgi
_send_header = werkzeug.serving.WSGIRequestHandler.send_header


class _Body:
    """One request's body: at most `left` bytes of the connection's stream."""

    def __init__(self, raw, left):
        self.raw, self.left = raw, left

    def _cap(self, n):
        return self.left if n is None or n < 0 else min(n, self.left)

    def _took(self, b):
        self.left -= len(b)
        return b

    def read(self, n=-1):
        return self._took(self.raw.read(self._cap(n))) if self.left else b""

    def read1(self, n=-1):
        return self._took(self.raw.read1(self._cap(n))) if self.left else b""

    def readline(self, n=-1):
        return self._took(self.raw.readline(self._cap(n))) if self.left else b""

    def readinto(self, buf):
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def __getattr__(self, name):
        return getattr(self.raw, name)


def _send_header_kept(self, keyword, value):
    if getattr(self, "_keep_alive", False) and keyword.lower() == "connection" and value.lower() == "close":
        return
    _send_header(self, keyword, value)


def _run_wsgi_kept_alive(self):
    if self.headers.get("Expect", "").lower().strip(" \t") == "100-continue":
        self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.wfile.flush()
        del self.headers["Expect"]
    length = self.headers.get("Content-Length", "0")
    self._keep_alive = not self.close_connection and "Transfer-Encoding" not in self.headers and length.isdigit()
    if not self._keep_alive:
        return _run_wsgi(self)
    raw = self.rfile
    body = self.rfile = _Body(raw, int(length))
    try:
        return _run_wsgi(self)
    finally:
        self.rfile = raw
        if body.left:  # the drain stopped early (a client slow to send): the stream is not at a request line
            self.close_connection = True


werkzeug.serving.WSGIRequestHandler.send_header = _send_header_kept
werkzeug.serving.WSGIRequestHandler.run_wsgi = _run_wsgi_kept_alive

# A receipt handle is 185 random lowercase letters; moto draws them one
# `random.choice` call each (a quarter of a receive). Same alphabet, length
# and random source, drawn in one `choices` call.
moto.sqs.models.generate_receipt_handle = lambda: "".join(
    moto.sqs.models.random.choices(string.ascii_lowercase, k=185)
)


def _delete_message(self, receipt_handle):
    """Queue.delete_message in one pass over the queue instead of two, each
    calling a property that builds a list per message; same checks, same
    result (every message that ever had the handle goes; its handles are
    remembered so that deleting again is a no-op)."""
    if receipt_handle in self.deleted_messages:
        return
    kept, gone = [], []
    for m in self._messages:
        if m.receipt_handle == receipt_handle or receipt_handle in m._old_receipt_handles:
            gone.append(m)
        else:
            kept.append(m)
    if not gone:
        raise moto.sqs.models.ReceiptHandleIsInvalid()
    for m in gone:
        self.pending_messages.discard(m)
        self.deleted_messages.update(m.all_receipt_handles)
    self._messages = kept


_Queue.delete_message = _delete_message

# Per-request work that does not depend on the request: routing every
# request lists moto's package directory (a listdir and a stat per service,
# ~0.7 ms), dispatching lists the handler class's methods through
# `inspect.getmembers`, and action and attribute names are converted from
# CamelCase character by character. All three are pure: computed once.
_moto_modules = tuple(moto.backends.list_of_moto_modules())
moto.backends.list_of_moto_modules = lambda: _moto_modules
_method_names = functools.lru_cache(maxsize=None)(lambda cls: tuple(moto.core.utils.method_names_from_class(cls)))
moto.core.responses.method_names_from_class = lambda cls: list(_method_names(cls))
_camel = functools.lru_cache(maxsize=4096)(moto.core.utils.camelcase_to_underscores)
moto.core.responses.camelcase_to_underscores = _camel
moto.sqs.models.camelcase_to_underscores = _camel


def _service_of(environ):
    """The service a request is for: its X-Amz-Target prefix (JSON
    protocols) or its signature's credential scope (query protocols)."""
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target:
        prefix = target.split(".", 1)[0]
        if prefix.startswith("DynamoDB"):
            return "dynamodb"
        return "sqs" if prefix == "AmazonSQS" else None
    auth = environ.get("HTTP_AUTHORIZATION", "")
    if "Credential=" in auth:
        scope = auth.split("Credential=", 1)[1].split(",", 1)[0].split("/")
        if len(scope) > 3:
            return scope[3]
    return None


_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class _Router:
    """Forwards the requests of routed services to their processes (one
    kept-alive connection per serving thread), serves the rest itself."""

    def __init__(self, app, routes):
        self.app = app
        self.routes = {k: urllib.parse.urlsplit(v).netloc for k, v in routes.items()}
        self.local = threading.local()

    def __call__(self, environ, start_response):
        netloc = self.routes.get(_service_of(environ))
        if netloc is None:
            return self.app(environ, start_response)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        headers = {k[5:].replace("_", "-").title(): v for k, v in environ.items() if k.startswith("HTTP_")}
        for k in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if environ.get(k):
                headers[k.replace("_", "-").title()] = environ[k]
        headers = {k: v for k, v in headers.items() if k.lower() not in _HOP_BY_HOP}
        path = environ.get("REQUEST_URI") or urllib.parse.quote(environ.get("PATH_INFO", "/"))
        if "REQUEST_URI" not in environ and environ.get("QUERY_STRING"):
            path += "?" + environ["QUERY_STRING"]
        conns = self.local.__dict__.setdefault("conns", {})
        for attempt in (0, 1):
            conn = conns.get(netloc) or http.client.HTTPConnection(netloc, timeout=120)
            try:
                conn.request(environ["REQUEST_METHOD"], path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conns[netloc] = conn
                break
            except (ConnectionError, http.client.HTTPException):
                conn.close()
                conns.pop(netloc, None)
                if attempt:
                    raise
        out = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length"]
        out.append(("Content-Length", str(len(data))))
        start_response(f"{resp.status} {resp.reason}", out)
        return [data]


_ROUTES = dict(r.split("=", 1) for r in os.environ.get("EMULATOR_ROUTES", "").split() if "=" in r)
if _ROUTES:
    _Dispatcher = moto.server.DomainDispatcherApplication

    def _routed_dispatcher(*args, **kwargs):
        return _Router(_Dispatcher(*args, **kwargs), _ROUTES)

    moto.server.DomainDispatcherApplication = _routed_dispatcher

if "sqs" in _ROUTES:
    # EventBridge rules deliver to SQS targets in-process, but SQS runs in a
    # process of its own here: send a rule's event there, as EventBridge
    # would (the event JSON as the message body). A target queue that does
    # not exist is logged and skipped, as on AWS (PutEvents still succeeds).
    import boto3  # noqa: E402
    import moto.events.models  # noqa: E402

    _sqs_client = boto3.client(
        "sqs",
        endpoint_url=_ROUTES["sqs"],
        region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )

    def _send_to_routed_sqs(self, resource_id, event, group_id=None):
        if "time" in event:
            event["time"] = moto.events.models.iso_8601_datetime_without_milliseconds(
                moto.events.models.utcfromtimestamp(float(event["time"]))
            )
        try:
            url = _sqs_client.get_queue_url(QueueName=resource_id)["QueueUrl"]
            extra = {"MessageGroupId": group_id} if group_id else {}
            _sqs_client.send_message(QueueUrl=url, MessageBody=json.dumps(event), **extra)
        except Exception as e:  # noqa: BLE001 - a target failure never fails PutEvents
            print(f"emulator: event to queue {resource_id} not delivered: {e}", file=sys.stderr)

    moto.events.models.Rule._send_to_sqs_queue = _send_to_routed_sqs

# Responses go through moto's generic serializer, which walks every member of
# every shape: each DynamoDB attribute value is a structure of ten members, so
# an item costs hundreds of lookups, half of the DynamoDB process's time under
# load (stream records, with old and new images, most of all). An attribute
# value that is already in its wire form (DynamoDB JSON with no binary, which
# would need base64) is written as it is.
import moto.core.serialize  # noqa: E402

_WIRE_SCALARS = {"S": str, "N": str, "BOOL": bool, "NULL": bool}


def _wire_attribute_value(v):
    if type(v) is not dict or len(v) != 1:
        return False
    ((k, x),) = v.items()
    kind = _WIRE_SCALARS.get(k)
    if kind is not None:
        return type(x) is kind
    if k in ("SS", "NS"):
        return type(x) is list and all(type(i) is str for i in x)
    if k == "L":
        return type(x) is list and all(_wire_attribute_value(i) for i in x)
    if k == "M":
        return type(x) is dict and all(type(n) is str and _wire_attribute_value(i) for n, i in x.items())
    return False


_json_structure = moto.core.serialize.BaseJSONSerializer._serialize_type_structure


def _serialize_structure(self, serialized, value, shape, key):
    if key and shape.name == "AttributeValue" and _wire_attribute_value(value):
        self._default_serialize(serialized, value, shape, key)
        return
    _json_structure(self, serialized, value, shape, key)


moto.core.serialize.BaseJSONSerializer._serialize_type_structure = _serialize_structure

_PROFILE = os.environ.get("EMULATOR_PROFILE")
if _PROFILE:
    # For finding hot spots: every request runs under one cProfile profiler
    # (so one at a time), and the stats go to $EMULATOR_PROFILE.PID every 200.
    import cProfile

    _profiler, _profile_lock, _profiled = cProfile.Profile(), threading.Lock(), [0]
    _Plain = moto.server.DomainDispatcherApplication

    def _profiled_dispatcher(*args, **kwargs):
        app = _Plain(*args, **kwargs)

        def call(environ, start_response):
            with _profile_lock:
                _profiler.enable()
                try:
                    return list(app(environ, start_response))
                finally:
                    _profiler.disable()
                    _profiled[0] += 1
                    if _profiled[0] % 200 == 0:
                        _profiler.dump_stats(f"{_PROFILE}.{os.getpid()}")

        return call

    moto.server.DomainDispatcherApplication = _profiled_dispatcher

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
