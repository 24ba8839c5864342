"""The moto speedups keep moto's answers: the same calls get the same answers from a stock moto server."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import boto3
import pytest

from pomona.core.settings import Settings
from pomona.local import moto_speedups
from pomona.local.stack import local_session

DEPTHS = [
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
]
# Values that differ on every run (or between servers) whatever moto does: compared by where they recur.
_IDS = frozenset({"MessageId", "ReceiptHandle", "TableId"})


@pytest.fixture(scope="module")
def stock_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto server as released, in a process of its own that never imports the speedups."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server_log = tmp_path_factory.mktemp("stock-moto") / "server.log"
    with server_log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_until_answering(endpoint, server, server_log)
        yield endpoint
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _wait_until_answering(endpoint: str, server: subprocess.Popen[bytes], server_log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"stock moto server exited with {server.returncode}:\n{server_log.read_text()}")
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=5).close()
            return
        except urllib.error.HTTPError:
            return  # an HTTP answer of any kind: it is serving
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"stock moto server not answering after 60 s:\n{server_log.read_text()}")


@pytest.fixture(scope="module")
def patched_endpoint(moto_endpoint: str) -> str:
    """The session's embedded server, which `start_server` patched."""
    if not moto_speedups.apply():
        pytest.skip(f"speedups off: written for moto {moto_speedups.FOR_MOTO}, {version('moto')} installed")
    return moto_endpoint


def test_sqs_answers_as_stock_moto_for_receives_depths_batch_deletes_and_redrive(
    stock_endpoint: str, patched_endpoint: str
) -> None:
    # GIVEN the same queue name on a stock and a patched server
    name = f"speedups-{uuid.uuid4().hex[:10]}"

    # WHEN each runs the same calls
    stock = _normalised(_sqs_story(_client("sqs", stock_endpoint), name), stock_endpoint)
    patched = _normalised(_sqs_story(_client("sqs", patched_endpoint), name), patched_endpoint)

    # THEN every answer is the same, up to ids, receipts, timestamps and the port
    assert patched == stock


def test_s3_sqs_and_dynamodb_on_one_server_answer_as_stock_moto(
    stock_endpoint: str, patched_endpoint: str
) -> None:
    # GIVEN the same resource names on a stock and a patched server
    name = f"speedups-{uuid.uuid4().hex[:10]}"

    # WHEN each serves the same calls to three services, interleaved, twice (the second time from remembered hosts)
    stock = _normalised(_dispatch_story(stock_endpoint, name), stock_endpoint)
    patched = _normalised(_dispatch_story(patched_endpoint, name), patched_endpoint)

    # THEN every answer is the same, and each came from the right service
    assert patched == stock
    answers = dict(patched)
    assert answers["s3 get r1"]["Body"] == b"r1"
    assert answers["sqs receive r1"]["Messages"][0]["Body"] == "r1"
    assert answers["dynamodb get r1"]["Item"] == {"pk": {"S": "r1"}}


def test_apply_refuses_another_moto_release_and_says_which(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=moto_speedups.__name__):
        assert moto_speedups._apply_for("0.0.0-other") is False

    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert moto_speedups.FOR_MOTO in record.getMessage()
    assert "0.0.0-other" in record.getMessage()
    assert moto_speedups.apply(enabled=False) is False


def test_a_batch_delete_answers_as_sqs_for_live_already_deleted_and_unknown_receipts(
    deployment: Settings,
) -> None:
    # GIVEN five received messages, one of them already deleted, and one receipt no message ever had
    sqs = boto3.client("sqs")
    queue = deployment.images_queue_url
    sqs.send_message_batch(QueueUrl=queue, Entries=[{"Id": str(i), "MessageBody": f"m{i}"} for i in range(5)])
    received: list[dict[str, str]] = []
    while len(received) < 5:  # a receive may return fewer than asked, as SQS's does
        answer = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, VisibilityTimeout=60)
        received += answer.get("Messages", [])
    receipts = [m["ReceiptHandle"] for m in received]
    sqs.delete_message(QueueUrl=queue, ReceiptHandle=receipts[0])

    # WHEN the batch deletes the four left, the deleted one again, and the unknown one
    entries = [{"Id": f"e{i}", "ReceiptHandle": r} for i, r in enumerate([*receipts, "not-a-receipt"])]
    answer = sqs.delete_message_batch(QueueUrl=queue, Entries=entries)

    # THEN the five known receipts succeed, the unknown one fails with SQS's code, and the queue is empty
    assert sorted(e["Id"] for e in answer["Successful"]) == ["e0", "e1", "e2", "e3", "e4"]
    assert [(e["Id"], e["Code"], e["SenderFault"]) for e in answer["Failed"]] == [
        ("e5", "ReceiptHandleIsInvalid", True)
    ]
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    assert attributes == {"ApproximateNumberOfMessages": "0", "ApproximateNumberOfMessagesNotVisible": "0"}


def _client(service: str, endpoint: str) -> Any:
    return local_session().client(service, endpoint_url=endpoint)  # type: ignore[call-overload]


def _sqs_story(sqs: Any, name: str) -> list[tuple[str, Any]]:
    """Six messages through a queue with a DLQ after two receives: every answer, labelled."""
    answers: list[tuple[str, Any]] = []

    def call(label: str, answer: Any) -> Any:
        answers.append((label, answer))
        return answer

    dlq = call("create dlq", sqs.create_queue(QueueName=f"{name}-dlq"))["QueueUrl"]
    dlq_arn = call("dlq arn", sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"]))
    redrive = {"deadLetterTargetArn": dlq_arn["Attributes"]["QueueArn"], "maxReceiveCount": "2"}
    attributes = {"RedrivePolicy": json.dumps(redrive), "VisibilityTimeout": "0"}
    queue = call("create queue", sqs.create_queue(QueueName=name, Attributes=attributes))["QueueUrl"]
    entries = [{"Id": f"s{i}", "MessageBody": f"m{i}"} for i in range(6)]
    call("send 6", sqs.send_message_batch(QueueUrl=queue, Entries=entries))

    def receive(label: str, url: str, **kwargs: Any) -> list[dict[str, Any]]:
        answer = sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=kwargs.pop("count", 10),
            MessageSystemAttributeNames=["All"],
            **kwargs,
        )
        return call(label, answer).get("Messages", [])  # type: ignore[no-any-return]

    held = receive("receive 3, hidden for 60 s", queue, count=3, VisibilityTimeout=60)
    call("depths", sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=DEPTHS))
    call("all attributes", sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["All"]))
    call("depths and another", sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=[*DEPTHS, "QueueArn"]))
    call("delete one", sqs.delete_message(QueueUrl=queue, ReceiptHandle=held[0]["ReceiptHandle"]))
    receipts = [held[1]["ReceiptHandle"], held[0]["ReceiptHandle"], "not-a-receipt"]  # live, deleted, unknown
    batch = [{"Id": f"d{i}", "ReceiptHandle": r} for i, r in enumerate(receipts)]
    call("batch delete", sqs.delete_message_batch(QueueUrl=queue, Entries=batch))
    call("depths after delete", sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=DEPTHS))

    first = receive("receive, visible again at once", queue, VisibilityTimeout=0)
    receive("receive again", queue, VisibilityTimeout=0)
    receive("receive past maxReceiveCount", queue, VisibilityTimeout=0)  # moves them to the DLQ
    moved = [{"Id": f"m{i}", "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(first)]
    call("batch delete of moved messages", sqs.delete_message_batch(QueueUrl=queue, Entries=moved))
    call("depths, queue", sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=DEPTHS))
    call("depths, dlq", sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=DEPTHS))
    receive("receive from dlq", dlq, VisibilityTimeout=60)
    call("dlq, all attributes", sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["All"]))
    return answers


def _dispatch_story(endpoint: str, name: str) -> list[tuple[str, Any]]:
    """S3, SQS and DynamoDB calls to one server, interleaved, in two rounds: every answer, labelled."""
    s3, sqs, dynamodb = (_client(service, endpoint) for service in ("s3", "sqs", "dynamodb"))
    table = {"AttributeName": "pk"}
    answers: list[tuple[str, Any]] = [
        ("s3 create bucket", s3.create_bucket(Bucket=name)),
        ("sqs create queue", sqs.create_queue(QueueName=name)),
        (
            "dynamodb create table",
            dynamodb.create_table(
                TableName=name,
                KeySchema=[{**table, "KeyType": "HASH"}],
                AttributeDefinitions=[{**table, "AttributeType": "S"}],
                BillingMode="PAY_PER_REQUEST",
            ),
        ),
    ]
    queue = answers[1][1]["QueueUrl"]
    for key in ("r0", "r1"):
        answers.append((f"s3 put {key}", s3.put_object(Bucket=name, Key=key, Body=key.encode())))
        answers.append((f"sqs send {key}", sqs.send_message(QueueUrl=queue, MessageBody=key)))
        answers.append((f"dynamodb put {key}", dynamodb.put_item(TableName=name, Item={"pk": {"S": key}})))
        got = s3.get_object(Bucket=name, Key=key)
        answers.append((f"s3 get {key}", {**got, "Body": got["Body"].read()}))
        answers.append((f"sqs receive {key}", sqs.receive_message(QueueUrl=queue, VisibilityTimeout=60)))
        answers.append((f"dynamodb get {key}", dynamodb.get_item(TableName=name, Key={"pk": {"S": key}})))
        answers.append((f"s3 list {key}", s3.list_objects_v2(Bucket=name)))
        answers.append((f"sqs depths {key}", sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=DEPTHS)))
        answers.append((f"dynamodb describe {key}", dynamodb.describe_table(TableName=name)))
    return answers


def _normalised(answers: list[tuple[str, Any]], endpoint: str) -> list[tuple[str, Any]]:
    """`answers` without what differs whatever moto does: ids and receipts become `<MessageId 1>` and so on
    (numbered by first appearance, so a recurring one still shows, in messages too), times `<time>` once
    checked to be about now, the endpoint `<endpoint>`; AWS's per-request metadata goes.
    """
    placeholders: dict[str, str] = {}
    now = time.time()

    def timestamp(value: datetime | str) -> str:
        seconds = value.timestamp() if isinstance(value, datetime) else float(value)
        seconds = (
            seconds / 1000 if seconds > 1e11 else seconds
        )  # SQS's message timestamps are in milliseconds
        assert abs(seconds - now) < 600, f"expected a time about now, got {value!r}"
        return "<time>"

    def normalise(value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {k: normalise(v, k) for k, v in value.items() if k != "ResponseMetadata"}
        if isinstance(value, list):
            return [normalise(v, key) for v in value]
        if isinstance(value, datetime) or (isinstance(value, str) and key.endswith("Timestamp")):
            return timestamp(value)
        if isinstance(value, str) and key in _IDS:
            return placeholders.setdefault(value, f"<{key} {len(placeholders) + 1}>")
        if isinstance(value, str):  # error messages quote receipts
            for seen, placeholder in placeholders.items():
                value = value.replace(seen, placeholder)
            return value.replace(endpoint, "<endpoint>")
        return value

    return [(label, normalise(answer)) for label, answer in answers]
