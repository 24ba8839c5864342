"""The pure parts of `pomona dlq`: redrive policies, what a DLQ message names and why it is there; and, with
botocore's Stubber standing in for SQS, the move-task path that moto cannot run and SQS's refusals."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from pomona.core.contract import ImageMessage
from pomona.core.queues import Suspicion
from pomona.core.settings import Settings
from pomona.ops.dlq import (
    DeadLetterQueue,
    QueueAccessError,
    QueueLookupError,
    copy_entry,
    describe_event_body,
    describe_image_body,
    describe_message,
    find_dlq,
    is_unsupported,
    parse_redrive_policy,
    queue_name_from_arn,
    receive_reason,
    redrive,
)

SETTINGS = Settings(
    bucket="b", images_queue_url="https://sqs/123/p-images", events_queue_url="https://sqs/123/p-events"
)
DLQ_ARN = "arn:aws:sqs:us-east-1:123456789012:p-images-dlq"
DLQ = DeadLetterQueue(
    name="images",
    source_url="https://sqs/123/p-images",
    source_arn="arn:aws:sqs:us-east-1:123456789012:p-images",
    url="https://sqs/123/p-images-dlq",
    arn=DLQ_ARN,
    max_receive_count=5,
)


def _image(**changes: Any) -> str:
    fields: dict[str, Any] = {
        "bucket": "b", "key": "uploads/Fig/f.jpg", "version_id": "v7", "etag": '"e"', "sha256": "a" * 64,
        "size": 10, "format": "JPEG", "width": 40, "height": 40, "mode": "RGB", "label": "Fig",
        "uploaded_at": "2026-12-01T00:00:00.000Z", "validated_at": "2026-12-01T00:00:00.000Z",
    }  # fmt: skip
    return ImageMessage(**(fields | changes)).to_json()


# -- redrive policies -----------------------------------------------------------------------------------------


def test_redrive_policy_gives_the_dlq_arn_and_max_receive_count() -> None:
    raw = json.dumps({"deadLetterTargetArn": DLQ_ARN, "maxReceiveCount": "5"})
    assert parse_redrive_policy(raw, queue="q") == (DLQ_ARN, 5)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        pytest.param(None, "q: expected a RedrivePolicy naming its dead-letter queue, got none", id="none"),
        pytest.param("", "got none", id="empty"),
        pytest.param(
            '{"maxReceiveCount": 5}', "expected a RedrivePolicy with deadLetterTargetArn", id="no-arn"
        ),
        pytest.param("{", "got '{'", id="not-json"),
    ],
)
def test_a_missing_or_broken_redrive_policy_says_what_was_expected(raw: str | None, match: str) -> None:
    with pytest.raises(QueueLookupError, match=match):
        parse_redrive_policy(raw, queue="q")


def test_queue_name_from_arn() -> None:
    assert queue_name_from_arn(DLQ_ARN) == "p-images-dlq"
    assert queue_name_from_arn("arn:aws-cn:sqs:cn-north-1:1:q") == "q"
    with pytest.raises(QueueLookupError, match="expected an SQS queue ARN"):
        queue_name_from_arn("arn:aws:sns:us-east-1:1:topic")


# -- what a message names, and why it is there ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "payload", "keys", "problem"),
    [
        pytest.param(
            _image(), "uploads/Fig/f.jpg (version v7, label 'Fig')", ("uploads/Fig/f.jpg",), None, id="ok"
        ),
        pytest.param(
            "{oops", "'{oops'", (), "not an ImageMessage: expected a JSON object, got '{oops'", id="not-json"
        ),
        pytest.param(
            "[1]", "'[1]'", (), "not an ImageMessage: expected a JSON object, got list", id="a-list"
        ),
        pytest.param(
            json.dumps({"schema_version": 1, "key": "uploads/Fig/g.jpg"}),
            "uploads/Fig/g.jpg",
            ("uploads/Fig/g.jpg",),
            "not an ImageMessage: expected fields ['bucket', 'etag', 'format', 'height', 'label', 'mode', 'sha256', "
            "'size', 'uploaded_at', 'validated_at', 'version_id', 'width'], got none for them",
            id="fields-missing",
        ),
        pytest.param(
            _image(format="GIF"),
            "uploads/Fig/f.jpg (version v7, label 'Fig')",
            ("uploads/Fig/f.jpg",),
            "not what this deployment queues: format: expected one of ['JPEG', 'PNG', 'WEBP'], got 'GIF'",
            id="not-allowed-here",
        ),
    ],
)
def test_an_images_message_names_its_image_or_says_what_is_wrong(
    body: str, payload: str, keys: tuple[str, ...], problem: str | None
) -> None:
    assert describe_image_body(body, SETTINGS) == (payload, keys, problem)


def _notification(*keys: str) -> str:
    return json.dumps(
        {"Records": [{"eventName": "ObjectCreated:Put", "s3": {"object": {"key": k}}} for k in keys]}
    )


@pytest.mark.parametrize(
    ("body", "payload", "keys", "problem"),
    [
        pytest.param(
            _notification("uploads/Apple+Red/caf%C3%A9+%2B1.jpg"),
            "uploads/Apple Red/café +1.jpg",
            ("uploads/Apple Red/café +1.jpg",),
            None,
            id="url-encoded",
        ),
        pytest.param(
            _notification("uploads/a/1", "uploads/a/2", "uploads/a/3", "uploads/a/4"),
            "uploads/a/1, uploads/a/2, uploads/a/3 (+1 more)",
            ("uploads/a/1", "uploads/a/2", "uploads/a/3", "uploads/a/4"),
            None,
            id="many",
        ),
        pytest.param(
            json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"}),
            "s3:TestEvent (names no object)",
            (),
            None,
            id="test-event",
        ),
        pytest.param(
            "hello", "'hello'", (), "expected an S3 notification (a JSON object), got 'hello'", id="not-json"
        ),
        pytest.param(
            json.dumps({"detail": {}}),
            "",
            (),
            "expected an S3 notification with Records or s3:TestEvent, got keys ['detail']",
            id="not-a-notification",
        ),
        pytest.param(
            json.dumps({"Records": [{"s3": {}}]}),
            "",
            (),
            "expected Records[0].s3.object.key, got '{\"s3\": {}}'",
            id="record-without-key",
        ),
    ],
)
def test_an_events_message_names_its_decoded_keys_or_says_what_is_wrong(
    body: str, payload: str, keys: tuple[str, ...], problem: str | None
) -> None:
    assert describe_event_body(body) == (payload, keys, problem)


def test_a_well_formed_message_is_there_for_its_receives_and_the_look_is_not_counted() -> None:
    message = {
        "MessageId": "m-1",
        "Body": _image(),
        "Attributes": {"ApproximateReceiveCount": "6", "SentTimestamp": "1764547200123"},
    }

    peeked = describe_message("images", message, settings=SETTINGS, max_receive_count=5)

    assert (peeked.message_id, peeked.receives, peeked.sent_at) == ("m-1", 5, "2025-12-01T00:00:00.123Z")
    assert peeked.reason == "exceeded maxReceiveCount (5 receives, limit 5)"


def test_a_message_the_job_dead_lettered_shows_the_failure_it_caused() -> None:
    # GIVEN a message the job sent to the DLQ itself: it failed a run on its own, the third run it failed
    suspicion = Suspicion(2, 1, "Py4JJavaError: earlier").after_failure(
        1, "Py4JJavaError: Python worker exited"
    )
    message = {
        "MessageId": "m-2",
        "Body": _image(),
        "Attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1764547200123"},
        "MessageAttributes": suspicion.attributes(),
    }

    # WHEN `dlq list` describes it, THEN it says why, not "no stored reason"
    peeked = describe_message("images", message, settings=SETTINGS, max_receive_count=5)
    assert (
        peeked.reason == "failed a run on its own (after 3 failed runs): Py4JJavaError: Python worker exited"
    )


def test_a_key_that_is_not_unicode_text_is_shown_escaped() -> None:
    # GIVEN a malformed message whose key holds a lone surrogate (JSON's "\\ud800")
    body = '{"schema_version": 1, "key": "uploads/Fig/\\ud800.jpg"}'

    # WHEN `dlq list` describes it, THEN the key is shown escaped, so a terminal can print it
    payload, keys, problem = describe_image_body(body, SETTINGS)
    assert payload == "uploads/Fig/\\ud800.jpg"
    assert keys == (payload,)
    assert problem is not None
    assert problem.startswith("not an ImageMessage: ")


def test_receive_reason_under_the_limit_has_no_stored_reason() -> None:
    assert (
        receive_reason(0, 3)
        == "no stored reason: 0 receives, under maxReceiveCount 3 (sent to the DLQ directly?)"
    )
    assert receive_reason(7, 3) == "exceeded maxReceiveCount (7 receives, limit 3)"


def test_a_copy_keeps_body_and_message_attributes() -> None:
    message = {
        "Body": "b",
        "MessageAttributes": {
            "s": {"DataType": "String", "StringValue": "v", "StringListValues": [], "BinaryListValues": []},
            "n": {"DataType": "Binary", "BinaryValue": b"\x00"},
        },
    }
    assert copy_entry(3, message) == {
        "Id": "3",
        "MessageBody": "b",
        "MessageAttributes": {
            "s": {"DataType": "String", "StringValue": "v"},
            "n": {"DataType": "Binary", "BinaryValue": b"\x00"},
        },
    }
    assert copy_entry(0, {"Body": "b"}) == {"Id": "0", "MessageBody": "b"}


@pytest.mark.parametrize(
    ("code", "status", "unsupported"),
    [
        pytest.param("UnsupportedOperation", 400, True, id="unsupported"),
        pytest.param("AWS.SimpleQueueService.UnsupportedOperation", 400, True, id="unsupported-query"),
        pytest.param("NotImplemented", 501, True, id="501"),
        pytest.param("500", 500, False, id="moto-500-needs-a-second-look"),
        pytest.param("AccessDenied", 403, False, id="access"),
    ],
)
def test_is_unsupported(code: str, status: int, unsupported: bool) -> None:
    assert is_unsupported(_error(code, status, "StartMessageMoveTask")) is unsupported


# -- SQS's answers, stubbed -----------------------------------------------------------------------------------


@pytest.fixture
def sqs() -> Iterator[tuple[Any, Stubber]]:
    client = boto3.client(
        "sqs",
        region_name="us-east-1",
        endpoint_url="https://sqs.us-east-1.amazonaws.com",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # pragma: allowlist secret (a stub, never sent)
    )
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


def test_the_move_task_is_started_and_followed_until_it_completes(sqs: tuple[Any, Stubber]) -> None:
    client, stub = sqs
    stub.add_response(
        "start_message_move_task",
        {"TaskHandle": "h"},
        {"SourceArn": DLQ_ARN, "DestinationArn": DLQ.source_arn},
    )
    for status, moved in [("RUNNING", 4), ("COMPLETED", 9)]:
        stub.add_response(
            "list_message_move_tasks",
            {
                "Results": [
                    {
                        "Status": status,
                        "ApproximateNumberOfMessagesMoved": moved,
                        "ApproximateNumberOfMessagesToMove": 9,
                    }
                ]
            },
            {"SourceArn": DLQ_ARN, "MaxResults": 1},
        )
    seen: list[str] = []

    result = redrive(client, DLQ, poll_s=0, on_status=seen.append)

    assert (result.method, result.moved, result.failed, result.status, result.succeeded) == (
        "move-task", 9, 0, "COMPLETED", True,
    )  # fmt: skip
    assert seen[1:] == ["RUNNING: 4 of 9 moved", "COMPLETED: 9 of 9 moved"]


def test_a_move_task_still_running_at_the_timeout_is_reported_not_succeeded(sqs: tuple[Any, Stubber]) -> None:
    client, stub = sqs
    stub.add_response("start_message_move_task", {"TaskHandle": "h"})
    stub.add_response(
        "list_message_move_tasks",
        {
            "Results": [
                {
                    "Status": "RUNNING",
                    "ApproximateNumberOfMessagesMoved": 1,
                    "ApproximateNumberOfMessagesToMove": 9,
                }
            ]
        },
    )

    result = redrive(client, DLQ, timeout_s=0, poll_s=0)

    assert (result.status, result.moved, result.failed, result.succeeded) == ("RUNNING", 1, 8, False)
    assert result.detail.startswith("still running after 0 s")


def test_a_move_task_already_running_is_followed_not_raced_by_copying(sqs: tuple[Any, Stubber]) -> None:
    client, stub = sqs
    stub.add_client_error("start_message_move_task", "UnsupportedOperation", "a task runs", 400)
    running = {
        "Status": "RUNNING",
        "ApproximateNumberOfMessagesMoved": 2,
        "ApproximateNumberOfMessagesToMove": 3,
    }
    stub.add_response("list_message_move_tasks", {"Results": [running]})
    stub.add_response(
        "list_message_move_tasks",
        {"Results": [running | {"Status": "COMPLETED", "ApproximateNumberOfMessagesMoved": 3}]},
    )
    seen: list[str] = []

    result = redrive(client, DLQ, poll_s=0, on_status=seen.append)

    assert (result.method, result.moved, result.status) == ("move-task", 3, "COMPLETED")
    assert seen[0] == "a message move task already runs on this DLQ: following it"


def test_an_endpoint_without_move_tasks_falls_back_to_copying(sqs: tuple[Any, Stubber]) -> None:
    # GIVEN an endpoint that answers the move task with a server error, and the listing of tasks too (moto 5.2.5)
    client, stub = sqs
    stub.add_client_error("start_message_move_task", "500", "Internal Server Error", 500)
    stub.add_client_error("list_message_move_tasks", "500", "Internal Server Error", 500)
    # ... and a DLQ holding one message: copied, then deleted
    message = {
        "MessageId": "m",
        "ReceiptHandle": "r",
        "Body": "x",
        "MD5OfBody": "9dd4e461268c8034f5c8564e155c67a6",  # pragma: allowlist secret (md5 of a test body)
    }
    stub.add_response("receive_message", {"Messages": [message]})
    stub.add_response(
        "send_message_batch",
        {"Successful": [{"Id": "0", "MessageId": "n", "MD5OfMessageBody": "x"}], "Failed": []},
        {"QueueUrl": DLQ.source_url, "Entries": [{"Id": "0", "MessageBody": "x"}]},
    )
    stub.add_response(
        "delete_message_batch",
        {"Successful": [{"Id": "0"}], "Failed": []},
        {"QueueUrl": DLQ.url, "Entries": [{"Id": "0", "ReceiptHandle": "r"}]},
    )
    stub.add_response("receive_message", {})
    seen: list[str] = []

    result = redrive(client, DLQ, wait_s=0, on_status=seen.append)

    assert (result.method, result.moved, result.failed, result.status) == ("copy", 1, 0, "COMPLETED")
    assert seen == ["no message move task on this endpoint for this DLQ: copying the messages back instead"]


def test_a_move_task_refused_while_none_runs_falls_back_to_copying(sqs: tuple[Any, Stubber]) -> None:
    client, stub = sqs
    stub.add_client_error("start_message_move_task", "UnsupportedOperation", "not for this queue", 400)
    stub.add_response("list_message_move_tasks", {"Results": [{"Status": "COMPLETED"}]})
    stub.add_response("receive_message", {})

    result = redrive(client, DLQ, wait_s=0)

    assert (result.method, result.moved, result.status) == ("copy", 0, "COMPLETED")


def test_a_server_error_while_move_tasks_exist_is_raised_not_copied_around(sqs: tuple[Any, Stubber]) -> None:
    client, stub = sqs
    stub.add_client_error("start_message_move_task", "InternalError", "try again", 500)
    stub.add_response("list_message_move_tasks", {"Results": []})

    with pytest.raises(ClientError, match="InternalError"):
        redrive(client, DLQ)


def test_a_copy_that_fails_is_never_deleted_and_is_counted(sqs: tuple[Any, Stubber]) -> None:
    client, stub = sqs
    messages = [{"MessageId": f"m{i}", "ReceiptHandle": f"r{i}", "Body": f"b{i}"} for i in range(2)]
    stub.add_response("receive_message", {"Messages": messages})
    stub.add_response(
        "send_message_batch",
        {
            "Successful": [{"Id": "0", "MessageId": "n0", "MD5OfMessageBody": "x"}],
            "Failed": [
                {"Id": "1", "SenderFault": True, "Code": "InvalidParameterValue", "Message": "too big"}
            ],
        },
    )
    # only the copy that was sent is deleted
    stub.add_response(
        "delete_message_batch",
        {"Successful": [{"Id": "0"}], "Failed": []},
        {"QueueUrl": DLQ.url, "Entries": [{"Id": "0", "ReceiptHandle": "r0"}]},
    )
    stub.add_response("receive_message", {})

    result = redrive(client, DLQ, max_messages=10, wait_s=0)

    assert (result.method, result.moved, result.failed, result.status) == ("copy", 1, 1, "FAILED")
    assert result.detail == "m1: not sent: InvalidParameterValue too big"


def test_access_denied_names_the_queue_and_the_action(sqs: tuple[Any, Stubber]) -> None:
    client, stub = sqs
    stub.add_client_error("get_queue_attributes", "AccessDenied", "not allowed", 403)

    with pytest.raises(QueueAccessError) as caught:
        find_dlq(client, SETTINGS, "events")

    assert str(caught.value) == (
        "events queue https://sqs/123/p-events: expected permission for sqs:GetQueueAttributes, "
        "got AccessDenied (not allowed)"
    )
    assert isinstance(caught.value, PermissionError)


def _error(code: str, status: int, operation: str) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},  # type: ignore[typeddict-item]
        operation,
    )
