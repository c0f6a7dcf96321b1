"""Checks that the local emulator (infra/emulator.py: moto, split per service
and patched) still answers like DynamoDB and SQS on the paths the patches and
the split touch. Run by `make test` (infra/test.sh) against the emulator it
started; uses the endpoints of the environment (AWS_ENDPOINT_URL and the
per-service AWS_ENDPOINT_URL_* variables), as the functions do.

    .venv/bin/python infra/emulator_check.py          # the checks
    .venv/bin/python infra/emulator_check.py --bench  # ops/s of fixed loops
"""

import concurrent.futures
import os
import sys
import time
import uuid

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

CFG = Config(retries={"max_attempts": 1}, max_pool_connections=32)


def client(service, endpoint=None):
    env = "AWS_ENDPOINT_URL_" + {"dynamodbstreams": "DYNAMODB_STREAMS"}.get(service, service.upper())
    url = endpoint or os.environ.get(env) or os.environ["AWS_ENDPOINT_URL"]
    region = os.environ.get("AWS_REGION", "us-east-1")
    return boto3.client(service, endpoint_url=url, region_name=region, config=CFG)


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok   {what}")


def make_table(ddb, name):
    ddb.create_table(
        TableName=name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[
            {"AttributeName": k, "AttributeType": "S"} for k in ("pk", "sk", "g1", "g2")
        ],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        GlobalSecondaryIndexes=[
            {"IndexName": f"by-{g}", "KeySchema": [{"AttributeName": g, "KeyType": "HASH"}], "Projection": {"ProjectionType": "ALL"}}
            for g in ("g1", "g2")
        ],
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )
    return ddb.describe_table(TableName=name)["Table"]


def item(pk, n, **extra):
    d = {"pk": {"S": pk}, "sk": {"S": "s"}, "g1": {"S": f"a{n % 5}"}, "g2": {"S": f"b{n % 7}"}, "n": {"N": str(n)}}
    d.update(extra)
    return d


def check_dynamodb():
    ddb = client("dynamodb")
    name = f"check-{uuid.uuid4().hex[:8]}"
    table = make_table(ddb, name)
    key = lambda pk: {"pk": {"S": pk}, "sk": {"S": "s"}}  # noqa: E731
    for i in range(4):
        ddb.put_item(TableName=name, Item=item(f"k{i}", i))
    # A transaction whose last condition fails leaves every item unchanged.
    before = {i: ddb.get_item(TableName=name, Key=key(f"k{i}"), ConsistentRead=True)["Item"] for i in range(4)}
    try:
        ddb.transact_write_items(
            TransactItems=[
                {"Put": {"TableName": name, "Item": item("k0", 100)}},
                {"Put": {"TableName": name, "Item": item("fresh", 0)}},
                {"Update": {"TableName": name, "Key": key("k1"), "UpdateExpression": "SET n = :v",
                            "ExpressionAttributeValues": {":v": {"N": "101"}}}},
                {"Delete": {"TableName": name, "Key": key("k3")}},
                {"Update": {"TableName": name, "Key": key("upserted"), "UpdateExpression": "SET n = :v",
                            "ExpressionAttributeValues": {":v": {"N": "1"}}}},
                {"ConditionCheck": {"TableName": name, "Key": key("k2"), "ConditionExpression": "n = :x",
                                    "ExpressionAttributeValues": {":x": {"N": "999"}}}},
            ]
        )
        check(False, "transaction with a failing condition is cancelled")
    except ClientError as e:
        check(e.response["Error"]["Code"] == "TransactionCanceledException", "failing transaction: TransactionCanceledException")
        reasons = [r["Code"] for r in e.response.get("CancellationReasons", [])]
        check(reasons == ["None"] * 5 + ["ConditionalCheckFailed"], f"cancellation reasons in order: {reasons}")
    after = {i: ddb.get_item(TableName=name, Key=key(f"k{i}"), ConsistentRead=True)["Item"] for i in range(4)}
    check(after == before, "failing transaction leaves every item unchanged (put, update, delete)")
    absent = [ddb.get_item(TableName=name, Key=key(k), ConsistentRead=True).get("Item") for k in ("fresh", "upserted")]
    check(absent == [None, None], "failing transaction creates no item (put, upsert)")
    count = ddb.scan(TableName=name, Select="COUNT", ConsistentRead=True)["Count"]
    check(count == 4, f"failing transaction: still 4 items ({count})")
    # Two transactions on one item: the one whose condition fails changes nothing.
    try:
        ddb.transact_write_items(TransactItems=[
            {"Update": {"TableName": name, "Key": key("k2"), "UpdateExpression": "SET n = :v",
                        "ConditionExpression": "n = :x",
                        "ExpressionAttributeValues": {":v": {"N": "50"}, ":x": {"N": "999"}}}},
            {"Put": {"TableName": name, "Item": item("k0", 55)}}])
        check(False, "a transaction whose first condition fails is cancelled")
    except ClientError as e:
        check(e.response["Error"]["Code"] == "TransactionCanceledException", "a transaction whose first condition fails is cancelled")
    k0 = ddb.get_item(TableName=name, Key=key("k0"), ConsistentRead=True)["Item"]
    check(k0 == before[0], "and its later, valid action is rolled back")
    q = ddb.query(TableName=name, IndexName="by-g1", KeyConditionExpression="g1 = :g", ExpressionAttributeValues={":g": {"S": "a0"}})
    check([i["pk"]["S"] for i in q["Items"]] == ["k0"], "failing transactions leave the indexes unchanged")
    # A transaction that succeeds applies every write.
    ddb.transact_write_items(
        TransactItems=[
            {"Put": {"TableName": name, "Item": item("k0", 100), "ConditionExpression": "attribute_exists(pk)"}},
            {"Update": {"TableName": name, "Key": key("k1"), "UpdateExpression": "SET n = :v",
                        "ExpressionAttributeValues": {":v": {"N": "101"}}}},
        ]
    )
    got = [ddb.get_item(TableName=name, Key=key(f"k{i}"), ConsistentRead=True)["Item"]["n"]["N"] for i in range(2)]
    check(got == ["100", "101"], "a passing transaction applies every write")
    # Conditional update with ReturnValues ALL_OLD; the failing one with ALL_OLD on failure.
    r = ddb.update_item(TableName=name, Key=key("k2"), UpdateExpression="SET n = :v", ConditionExpression="n = :o",
                        ExpressionAttributeValues={":v": {"N": "7"}, ":o": {"N": "2"}}, ReturnValues="ALL_OLD")
    check(r["Attributes"]["n"]["N"] == "2", "conditional update returns the old item")
    try:
        ddb.update_item(TableName=name, Key=key("k2"), UpdateExpression="SET n = :v", ConditionExpression="n = :o",
                        ExpressionAttributeValues={":v": {"N": "8"}, ":o": {"N": "2"}},
                        ReturnValuesOnConditionCheckFailure="ALL_OLD")
        check(False, "stale conditional update fails")
    except ClientError as e:
        check(e.response["Error"]["Code"] == "ConditionalCheckFailedException", "stale conditional update fails")
        check(e.response.get("Item", {}).get("n", {}).get("N") == "7", "and returns the current item")
    # Racing conditional claims: exactly one winner per round.
    pool = concurrent.futures.ThreadPoolExecutor(8)
    clients = [client("dynamodb") for _ in range(8)]
    for rnd in range(25):
        pk = f"race{rnd}"
        ddb.put_item(TableName=name, Item=item(pk, 0, owner={"S": "-"}))

        def claim(i):
            try:
                clients[i].update_item(TableName=name, Key=key(pk), UpdateExpression="SET #o = :me",
                                       ConditionExpression="#o = :free", ExpressionAttributeNames={"#o": "owner"},
                                       ExpressionAttributeValues={":me": {"S": str(i)}, ":free": {"S": "-"}})
                return 1
            except ClientError as e:
                assert e.response["Error"]["Code"] == "ConditionalCheckFailedException", e
                return 0

        wins = sum(pool.map(claim, range(8)))
        if wins != 1:
            check(False, f"race {rnd}: {wins} winners")
    check(True, "25 rounds of 8 racing conditional claims: one winner each")
    # BatchWriteItem, then the stream has a record for every write, in order per key.
    ddb.batch_write_item(RequestItems={name: [{"PutRequest": {"Item": item(f"b{i}", i)}} for i in range(20)]})
    streams = client("dynamodbstreams")
    arn = table["LatestStreamArn"]
    records = []
    for shard in streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]:
        it = streams.get_shard_iterator(StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        records += streams.get_records(ShardIterator=it, Limit=1000)["Records"]
    events = [(r["eventName"], r["dynamodb"]["Keys"]["pk"]["S"]) for r in records]
    expected = [("INSERT", f"k{i}") for i in range(4)] + [("MODIFY", "k0"), ("MODIFY", "k1"), ("MODIFY", "k2")]
    expected += [e for r in range(25) for e in [("INSERT", f"race{r}"), ("MODIFY", f"race{r}")]]
    expected += [("INSERT", f"b{i}") for i in range(20)]
    check(events == expected, f"stream records: one per write, none from cancelled transactions, in order ({len(events)})")
    # Every attribute type reads back as written (responses, queries and stream
    # images; binary ones take the serializer's slow path, the rest the fast one).
    every = item("types", 1, s={"S": "ü<&>\"\\"}, num={"N": "-1.5e3"}, t={"BOOL": True}, f={"BOOL": False},
                 z={"NULL": True}, ss={"SS": ["a", "b"]}, ns={"NS": ["1", "2.5"]}, b={"B": b"\x00\xff"},
                 bs={"BS": [b"x", b"y"]}, l={"L": [{"S": "x"}, {"N": "1"}, {"L": []}, {"M": {"k": {"BOOL": False}}}]},
                 m={"M": {"in": {"M": {"deep": {"SS": ["q"]}}}, "bin": {"B": b"\x01"}}})
    plain = {k: v for k, v in every.items() if k not in ("b", "bs", "m")}
    for what, doc in (("with binary", every), ("without binary", plain)):
        ddb.put_item(TableName=name, Item=doc)
        got = ddb.get_item(TableName=name, Key=key("types"), ConsistentRead=True)["Item"]
        queried = ddb.query(TableName=name, KeyConditionExpression="pk = :p",
                            ExpressionAttributeValues={":p": {"S": "types"}})["Items"]
        check(got == doc and queried == [doc], f"an item of every attribute type ({what}) reads back as written")
    image = None
    for shard in streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]:
        it = streams.get_shard_iterator(StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        for r in streams.get_records(ShardIterator=it, Limit=1000)["Records"]:
            if r["dynamodb"]["Keys"]["pk"]["S"] == "types":
                image = (r["dynamodb"].get("OldImage"), r["dynamodb"]["NewImage"])
    check(image == (every, plain), "its stream record carries both images as written")
    ddb.delete_table(TableName=name)


def attrs(sqs, url):
    a = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    return tuple(int(a[k]) for k in ("ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                                     "ApproximateNumberOfMessagesDelayed"))


def check_queries():
    """Queries read one partition (table) or every item unsorted (index): the
    answers must be DynamoDB's, order and pages included."""
    ddb = client("dynamodb")
    name = f"check-{uuid.uuid4().hex[:8]}"
    make_table(ddb, name)
    sks = ["a", "b", "c", "d", "e", "f", "g"]
    for p in range(6):
        for j, sk in enumerate(reversed(sks)):
            ddb.put_item(TableName=name, Item={"pk": {"S": f"p{p}"}, "sk": {"S": sk}, "g1": {"S": f"x{(p + j) % 3}"},
                                               "n": {"N": str(p * 10 + j)}})
    ddb.put_item(TableName=name, Item={"pk": {"S": "p9"}, "sk": {"S": "a"}})  # in no index

    def pages(**kw):
        out, start = [], None
        while True:
            args = dict(kw, Limit=3, **({"ExclusiveStartKey": start} if start else {}))
            r = ddb.query(TableName=name, **args)
            out += [(i["pk"]["S"], i["sk"]["S"]) for i in r["Items"]]
            start = r.get("LastEvaluatedKey")
            if not start:
                return out

    part = lambda p: {":p": {"S": p}}  # noqa: E731
    check(pages(KeyConditionExpression="pk = :p", ExpressionAttributeValues=part("p3")) == [("p3", s) for s in sks],
          "a table query reads its partition in range-key order, in pages")
    check(pages(KeyConditionExpression="pk = :p", ExpressionAttributeValues=part("p3"), ScanIndexForward=False)
          == [("p3", s) for s in reversed(sks)], "and backwards")
    between = ddb.query(TableName=name, KeyConditionExpression="pk = :p AND sk BETWEEN :a AND :b",
                        ExpressionAttributeValues={**part("p2"), ":a": {"S": "b"}, ":b": {"S": "d"}})["Items"]
    check([i["sk"]["S"] for i in between] == ["b", "c", "d"], "a range condition keeps its keys")
    check(ddb.query(TableName=name, KeyConditionExpression="pk = :p", ExpressionAttributeValues=part("nope"))["Items"] == [],
          "a query of an absent partition finds nothing")
    got = pages(IndexName="by-g1", KeyConditionExpression="g1 = :g", ExpressionAttributeValues={":g": {"S": "x1"}})
    # Unpatched moto orders an index without a range key by the table's range key, then hash key.
    want = sorted(((f"p{p}", sks[len(sks) - 1 - j]) for p in range(6) for j in range(len(sks)) if (p + j) % 3 == 1),
                  key=lambda k: (k[1], k[0]))
    check(got == want, f"an index query finds every item of its key, in moto's order, in pages ({len(got)})")
    scanned = ddb.scan(TableName=name)["Items"]
    check(len(scanned) == 43, "a scan still sees every item")
    ddb.delete_table(TableName=name)


def check_connections():
    """Connections stay open between requests of known length; each request
    on one reads its own answer."""
    import http.client
    import urllib.parse

    url = urllib.parse.urlparse(os.environ.get("AWS_ENDPOINT_URL_DYNAMODB") or os.environ["AWS_ENDPOINT_URL"])
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=5)
    headers = {"x-amz-target": "DynamoDB_20120810.ListTables", "content-type": "application/x-amz-json-1.0",
               "authorization": "AWS4-HMAC-SHA256 Credential=test/20261123/us-east-1/dynamodb/aws4_request, "
                                "SignedHeaders=host, Signature=x"}
    answers, socks = [], []
    for body in ("{}", '{"Limit": 1}', "{}"):
        conn.request("POST", "/", body=body, headers=headers)
        r = conn.getresponse()
        answers.append((r.status, r.getheader("Connection"), "TableNames" in r.read().decode()))
        socks.append(conn.sock)
    check(answers == [(200, None, True)] * 3, f"three requests answered on a kept-alive connection ({answers})")
    check(socks[0] is not None and socks.count(socks[0]) == 3, "all three on the same connection")
    conn.request("POST", "/", body=iter([b"{}"]), headers=dict(headers, **{"Transfer-Encoding": "chunked"}),
                 encode_chunked=True)
    r = conn.getresponse()
    check((r.status, r.getheader("Connection"), "TableNames" in r.read().decode()) == (200, "close", True),
          "a chunked request is answered and closes its connection")
    conn.close()


def check_sqs():
    sqs = client("sqs")
    tag = uuid.uuid4().hex[:8]
    dlq = sqs.create_queue(QueueName=f"check-dlq-{tag}")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    url = sqs.create_queue(QueueName=f"check-{tag}", Attributes={
        "VisibilityTimeout": "1",
        "RedrivePolicy": f'{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":"2"}}'})["QueueUrl"]
    for i in range(0, 300, 10):
        sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(j), "MessageBody": f"m{i + j}"} for j in range(10)])
    sqs.send_message(QueueUrl=url, MessageBody="late", DelaySeconds=2)
    check(attrs(sqs, url) == (300, 0, 1), "counts after 300 sends and 1 delayed send: visible 300, delayed 1")
    got = []
    for _ in range(5):
        got += sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["ApproximateReceiveCount"])["Messages"]
    check(len(got) == 50 and len({m["MessageId"] for m in got}) == 50, "5 receives of 10: 50 distinct messages")
    check(all(m["Attributes"]["ApproximateReceiveCount"] == "1" for m in got), "first receive: receive count 1")
    check(attrs(sqs, url) == (250, 50, 1), "counts after receiving 50: visible 250, in flight 50, delayed 1")
    sqs.delete_message_batch(QueueUrl=url, Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got[:10])])
    check(attrs(sqs, url) == (250, 40, 1), "counts after deleting 10: in flight 40")
    time.sleep(2.2)
    check(attrs(sqs, url) == (291, 0, 0), "after the visibility timeout and the delay: visible 291, none delayed")
    # Drain: every message is received at most twice, then goes to the DLQ.
    counts = {}
    deadline = time.time() + 20
    while time.time() < deadline:
        ms = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["ApproximateReceiveCount"],
                                 WaitTimeSeconds=1).get("Messages", [])
        for m in ms:
            counts[m["Body"]] = max(counts.get(m["Body"], 0), int(m["Attributes"]["ApproximateReceiveCount"]))
        if attrs(sqs, dlq)[0] == 291:
            break
    check(max(counts.values()) == 2 and counts.get("late") == 2, "messages never acknowledged are received twice")
    check(attrs(sqs, dlq) == (291, 0, 0) and attrs(sqs, url) == (0, 0, 0), "then redriven: 291 in the DLQ, source empty")
    sqs.delete_queue(QueueUrl=url)
    sqs.delete_queue(QueueUrl=dlq)
    # Deletes: by the newest or an older receipt handle, twice, or an invalid one.
    url = sqs.create_queue(QueueName=f"check-del-{tag}", Attributes={"VisibilityTimeout": "1"})["QueueUrl"]
    sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": f"d{i}"} for i in range(3)])
    first = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    time.sleep(1.1)
    second = {m["Body"]: m for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]}
    check(len(first) == 3 and len(second) == 3, "3 messages received twice")
    old = next(m for m in first if m["Body"] == "d0")
    sqs.delete_message(QueueUrl=url, ReceiptHandle=old["ReceiptHandle"])
    sqs.delete_message(QueueUrl=url, ReceiptHandle=old["ReceiptHandle"])
    sqs.delete_message(QueueUrl=url, ReceiptHandle=second["d1"]["ReceiptHandle"])
    check(attrs(sqs, url) == (0, 1, 0), "deleted by an old handle, again (no-op) and by the new one: 1 left in flight")
    try:
        sqs.delete_message(QueueUrl=url, ReceiptHandle="not-a-handle")
        check(False, "an invalid receipt handle is refused")
    except ClientError as e:
        check("ReceiptHandleIsInvalid" in e.response["Error"]["Code"], "an invalid receipt handle is refused")
    sqs.delete_queue(QueueUrl=url)
    # FIFO, content-based deduplication (the attribute SendMessage reads).
    fifo = sqs.create_queue(QueueName=f"check-{tag}.fifo", Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true"})["QueueUrl"]
    for _ in range(2):
        sqs.send_message(QueueUrl=fifo, MessageBody="same", MessageGroupId="g")
    sqs.send_message(QueueUrl=fifo, MessageBody="other", MessageGroupId="g")
    check(attrs(sqs, fifo)[0] == 2, "FIFO with content-based deduplication: a repeated body is dropped")
    a = sqs.get_queue_attributes(QueueUrl=fifo, AttributeNames=["All"])["Attributes"]
    check(a.get("ContentBasedDeduplication") == "true" and a.get("FifoQueue") == "true", "FIFO attributes still reported")
    sqs.delete_queue(QueueUrl=fifo)


def bench():
    """Fixed loops, ops/s, one thread each then 8 threads of a mixed load."""
    ddb, sqs = client("dynamodb"), client("sqs")
    name = f"bench-{uuid.uuid4().hex[:8]}"
    make_table(ddb, name)
    for i in range(0, 300, 25):
        ddb.batch_write_item(RequestItems={name: [{"PutRequest": {"Item": item(f"p{j}", j)}} for j in range(i, i + 25)]})
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    for i in range(0, 300, 10):
        sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(j), "MessageBody": "x" * 500} for j in range(10)])

    def ddb_op(c, i):
        k = {"pk": {"S": f"p{i % 300}"}, "sk": {"S": "s"}}
        c.get_item(TableName=name, Key=k)
        c.update_item(TableName=name, Key=k, UpdateExpression="SET n = n + :one", ConditionExpression="attribute_exists(pk)",
                      ExpressionAttributeValues={":one": {"N": "1"}}, ReturnValues="ALL_OLD")
        c.put_item(TableName=name, Item=item(f"q{i}", i), ConditionExpression="attribute_not_exists(pk)")

    def sqs_op(c, i):
        c.send_message(QueueUrl=url, MessageBody="y" * 500)
        ms = c.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        if ms:
            c.delete_message_batch(QueueUrl=url, Entries=[{"Id": str(j), "ReceiptHandle": m["ReceiptHandle"]} for j, m in enumerate(ms)])
        c.send_message_batch(QueueUrl=url, Entries=[{"Id": str(j), "MessageBody": "z" * 500} for j in range(len(ms))] or [{"Id": "0", "MessageBody": "z"}])

    def run(label, op, svc, n, threads):
        cs = [client(svc) for _ in range(threads)]
        t = time.time()
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda i: op(cs[i % threads], i), range(n)))
        dt = time.time() - t
        print(f"{label}: {n / dt:.0f} rounds/s ({n} rounds, {threads} threads, {dt:.2f} s)")

    run("dynamodb get+cond update ALL_OLD+cond put (2 GSIs, stream)", ddb_op, "dynamodb", 300, 1)
    run("sqs send+receive 10+delete batch+send batch (300 queued)", sqs_op, "sqs", 200, 1)
    t = time.time()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        a = pool.submit(run, "  mixed: dynamodb rounds, 4 threads", lambda c, i: ddb_op(c, i + 1000), "dynamodb", 400, 4)
        b = pool.submit(run, "  mixed: sqs rounds, 4 threads", sqs_op, "sqs", 300, 4)
        a.result(), b.result()
    print(f"mixed load wall: {time.time() - t:.2f} s")
    ddb.delete_table(TableName=name)
    sqs.delete_queue(QueueUrl=url)


if __name__ == "__main__":
    if "--bench" in sys.argv:
        bench()
    else:
        check_dynamodb()
        check_queries()
        check_connections()
        check_sqs()
        print("emulator checks passed")
