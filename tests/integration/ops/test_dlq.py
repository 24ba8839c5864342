"""`pomona dlq list|redrive` against the moto server: a look consumes nothing, a redrive moves every message back
whole, and a queue that is missing or set up otherwise is one clear line."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
from typer.testing import CliRunner

from pomona.cli.app import app
from pomona.core.contract import ImageMessage
from pomona.core.queues import queue_depth
from pomona.core.settings import Settings
from pomona.local.stack import local_session

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient


def test_list_describes_the_images_dlq_and_gives_every_message_back(deployment: Settings) -> None:
    # GIVEN an image the job kept failing on (received 5 times, then moved by the redrive policy), and messages
    # put on the DLQ directly: no JSON, JSON that is no ImageMessage, an image of another bucket
    sqs = _sqs(deployment)
    dlq = deployment.images_dlq_url
    _exceed_max_receive_count(sqs, deployment.images_queue_url, _image(deployment, "uploads/Kiwi/k.jpg"), 5)
    sqs.send_message(QueueUrl=dlq, MessageBody="not json")
    sqs.send_message(QueueUrl=dlq, MessageBody=json.dumps({"key": "uploads/Fig/f.jpg", "label": "Fig"}))
    sqs.send_message(QueueUrl=dlq, MessageBody=_image(deployment, "uploads/Lime/l.jpg", bucket="elsewhere"))
    assert queue_depth(sqs, dlq) == {"visible": 4, "in_flight": 0}

    # WHEN the DLQ is listed
    result = CliRunner().invoke(app, ["dlq", "list", "--queue", "images", "--json"])

    # THEN each message is described with why it is there, where that can be known
    assert result.exit_code == 0, result.output
    listing = json.loads(result.stdout)["images"]
    assert (listing["visible"], listing["in_flight"], listing["dlq"]["url"]) == (4, 0, dlq)
    by_payload = {m["payload"]: m for m in listing["messages"]}
    kiwi = by_payload["uploads/Kiwi/k.jpg (version v1, label 'Kiwi')"]
    assert (kiwi["keys"], kiwi["receives"]) == (["uploads/Kiwi/k.jpg"], 5)
    assert kiwi["reason"] == "exceeded maxReceiveCount (5 receives, limit 5)"
    assert kiwi["sent_at"].endswith("Z")
    assert by_payload["'not json'"]["reason"] == "not an ImageMessage: expected a JSON object, got 'not json'"
    assert (
        by_payload["uploads/Fig/f.jpg"]["reason"]
        == "not an ImageMessage: expected schema_version 1, got None"
    )
    lime = by_payload["uploads/Lime/l.jpg (version v1, label 'Lime')"]
    assert (
        lime["reason"]
        == f"not what this deployment queues: bucket: expected {deployment.bucket!r}, got 'elsewhere'"
    )
    # ... and nothing is consumed: all four are visible again at once, a second look sees them one receive later
    assert queue_depth(sqs, dlq) == {"visible": 4, "in_flight": 0}
    again = CliRunner().invoke(app, ["dlq", "list", "--queue", "images", "--json"])
    seen_again = {m["message_id"]: m["receives"] for m in json.loads(again.stdout)["images"]["messages"]}
    assert seen_again == {m["message_id"]: m["receives"] + 1 for m in listing["messages"]}


def test_list_of_both_queues_decodes_the_keys_of_s3_notifications(deployment: Settings) -> None:
    # GIVEN the events DLQ holding a notification with S3's URL-encoded key and an s3:TestEvent
    sqs = _sqs(deployment)
    events_dlq = sqs.get_queue_url(QueueName=_queue_name(deployment.events_queue_url) + "-dlq")["QueueUrl"]
    notification = {
        "Records": [
            {"eventName": "ObjectCreated:Put", "s3": {"object": {"key": "uploads/Apple+Red/a%C3%A9.jpg"}}}
        ]
    }
    sqs.send_message(QueueUrl=events_dlq, MessageBody=json.dumps(notification))
    sqs.send_message(
        QueueUrl=events_dlq, MessageBody=json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"})
    )

    # WHEN both DLQs are listed (no --queue)
    result = CliRunner().invoke(app, ["dlq", "list", "--json"])

    # THEN the images DLQ is empty and the events DLQ names the decoded key
    assert result.exit_code == 0, result.output
    listings = json.loads(result.stdout)
    assert (listings["images"]["visible"], listings["images"]["messages"]) == (0, [])
    events = sorted(listings["events"]["messages"], key=lambda m: m["payload"])
    assert [(m["payload"], m["keys"]) for m in events] == [
        ("s3:TestEvent (names no object)", []),
        ("uploads/Apple Red/aé.jpg", ["uploads/Apple Red/aé.jpg"]),
    ]
    assert events[1]["reason"].startswith("no stored reason: 0 receives, under maxReceiveCount 3")
    assert queue_depth(sqs, events_dlq) == {"visible": 2, "in_flight": 0}


def test_list_limit_and_table(deployment: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN three messages on the images DLQ, and no events queue configured (as on AWS, where S3 invokes the Lambda)
    sqs = _sqs(deployment)
    ids = [
        sqs.send_message(QueueUrl=deployment.images_dlq_url, MessageBody=f"m{i}")["MessageId"]
        for i in range(3)
    ]
    monkeypatch.setenv("POMONA_EVENTS_QUEUE_URL", "")
    monkeypatch.setenv("COLUMNS", "250")

    # WHEN two are listed as a table
    result = CliRunner().invoke(app, ["dlq", "list", "--limit", "2"])

    # THEN the table shows two of the three, the DLQ still holds three, and the events queue is skipped
    assert result.exit_code == 0, result.output
    assert "images DLQ: 3 waiting, 0 in flight, 2 shown" in result.stdout
    assert sum(i in result.stdout for i in ids) == 2
    assert "events DLQ" not in result.stdout
    assert queue_depth(sqs, deployment.images_dlq_url) == {"visible": 3, "in_flight": 0}


def test_redrive_copies_every_message_back_whole_and_empties_the_dlq(deployment: Settings) -> None:
    # GIVEN 12 messages (more than one batch) with message attributes on the images DLQ
    sqs = _sqs(deployment)
    sent = {_image(deployment, f"uploads/Pear/{i}.jpg") for i in range(12)}
    for body in sent:
        sqs.send_message(
            QueueUrl=deployment.images_dlq_url,
            MessageBody=body,
            MessageAttributes={
                "trace": {"DataType": "String", "StringValue": "t-1"},
                "blob": {"DataType": "Binary", "BinaryValue": b"\x00\xff"},
            },
        )

    # WHEN it is redriven
    result = CliRunner().invoke(app, ["dlq", "redrive", "--queue", "images", "--json"])

    # THEN moto has no message move tasks, so each message was copied back, and the DLQ is empty
    assert result.exit_code == 0, result.output
    assert "no message move task on this endpoint for this DLQ: copying" in result.stderr
    outcome = json.loads(result.stdout)
    assert (outcome["method"], outcome["moved"], outcome["failed"], outcome["status"]) == (
        "copy",
        12,
        0,
        "COMPLETED",
    )
    assert queue_depth(sqs, deployment.images_dlq_url) == {"visible": 0, "in_flight": 0}
    back = _drain(sqs, deployment.images_queue_url)
    assert {m["Body"] for m in back} == sent
    assert all(
        m["MessageAttributes"]
        == {
            "trace": {"DataType": "String", "StringValue": "t-1"},
            "blob": {"DataType": "Binary", "BinaryValue": b"\x00\xff"},
        }
        for m in back
    )


def test_redrive_max_moves_that_many_and_leaves_the_rest(deployment: Settings) -> None:
    sqs = _sqs(deployment)
    events_dlq = sqs.get_queue_url(QueueName=_queue_name(deployment.events_queue_url) + "-dlq")["QueueUrl"]
    for i in range(5):
        sqs.send_message(QueueUrl=events_dlq, MessageBody=f'{{"n": {i}}}')
    before = queue_depth(sqs, deployment.events_queue_url)["visible"]  # S3's s3:TestEvent, from provisioning

    result = CliRunner().invoke(app, ["dlq", "redrive", "--queue", "events", "--max", "3"])

    assert result.exit_code == 0, result.output
    assert "moved 3 messages to the events queue by copying; 0 failed" in result.stdout
    assert queue_depth(sqs, events_dlq) == {"visible": 2, "in_flight": 0}
    assert queue_depth(sqs, deployment.events_queue_url) == {"visible": before + 3, "in_flight": 0}


@pytest.mark.parametrize("command", [["list"], ["redrive"]])
@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        pytest.param(
            lambda s, sqs: {"POMONA_IMAGES_QUEUE_URL": s.images_dlq_url},
            "images queue {images_dlq_url}: expected a RedrivePolicy naming its dead-letter queue, got none",
            id="no-redrive-policy",
        ),
        pytest.param(
            lambda s, sqs: {"POMONA_IMAGES_QUEUE_URL": s.images_queue_url + "-gone"},
            "images queue {images_queue_url}-gone: expected an existing queue, got "
            "AWS.SimpleQueueService.NonExistentQueue (The specified queue does not exist.)",
            id="no-source-queue",
        ),
        pytest.param(
            lambda s, sqs: sqs.delete_queue(QueueUrl=s.images_dlq_url) and {},
            "images queue's dead-letter queue {dlq_name} (arn:aws:sqs:us-east-1:123456789012:{dlq_name}): "
            "expected an existing queue, got AWS.SimpleQueueService.NonExistentQueue",
            id="no-dlq",
        ),
        pytest.param(
            lambda s, sqs: {"POMONA_IMAGES_QUEUE_URL": "", "POMONA_EVENTS_QUEUE_URL": ""},
            "images queue: expected a queue URL in POMONA_IMAGES_QUEUE_URL, got none",
            id="not-configured",
        ),
    ],
)
def test_a_queue_missing_or_set_up_otherwise_is_one_line_and_exit_1(
    deployment: Settings, monkeypatch: pytest.MonkeyPatch, command: list[str], setup: Any, expected: str
) -> None:
    # GIVEN a deployment whose images queue, or its DLQ, is not what the command expects
    sqs = _sqs(deployment)
    for var, value in setup(deployment, sqs).items():
        monkeypatch.setenv(var, value)
    monkeypatch.setenv("COLUMNS", "1000")  # one line however long the URLs

    # WHEN a DLQ command runs
    result = CliRunner().invoke(app, ["dlq", *command])

    # THEN it says which queue, what it expected and what it found, on one line, and exits 1
    assert result.exit_code == 1, result.output
    line = expected.format(
        images_dlq_url=deployment.images_dlq_url,
        images_queue_url=deployment.images_queue_url,
        dlq_name=_queue_name(deployment.images_dlq_url),
    )
    assert result.stderr.startswith(f"error: {line}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_list_of_events_when_no_events_queue_is_configured_says_so(
    deployment: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POMONA_EVENTS_QUEUE_URL", "")

    result = CliRunner().invoke(app, ["dlq", "list", "--queue", "events"])

    assert result.exit_code == 1
    assert result.stderr == "error: events queue: expected a queue URL in POMONA_EVENTS_QUEUE_URL, got none\n"


# -- helpers --------------------------------------------------------------------------------------------------


def _sqs(settings: Settings) -> SQSClient:
    return local_session().client("sqs", endpoint_url=settings.endpoint_url)


def _queue_name(url: str) -> str:
    return url.rsplit("/", 1)[1]


def _image(settings: Settings, key: str, *, bucket: str | None = None) -> str:
    label = key.split("/")[1]
    return ImageMessage(
        bucket=bucket or settings.bucket,
        key=key,
        version_id="v1",
        etag='"e"',
        sha256="0" * 64,
        size=100,
        format="JPEG",
        width=100,
        height=100,
        mode="RGB",
        label=label,
        uploaded_at="2026-12-01T00:00:00.000Z",
        validated_at="2026-12-01T00:00:00.000Z",
    ).to_json()


def _exceed_max_receive_count(sqs: SQSClient, queue_url: str, body: str, max_receive_count: int) -> None:
    """Send `body` and receive it without deleting until the redrive policy moves it to the DLQ."""
    sqs.send_message(QueueUrl=queue_url, MessageBody=body)
    for _ in range(max_receive_count):
        assert sqs.receive_message(QueueUrl=queue_url, VisibilityTimeout=0).get("Messages")
    assert not sqs.receive_message(QueueUrl=queue_url, VisibilityTimeout=0).get("Messages")


def _drain(sqs: SQSClient, queue_url: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    while batch := sqs.receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=10, VisibilityTimeout=60, MessageAttributeNames=["All"]
    ).get("Messages", []):
        messages += batch
    return messages  # type: ignore[return-value]
