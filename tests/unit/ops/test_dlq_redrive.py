"""`pomona dlq redrive` with botocore's Stubber standing in for SQS: the move-task path that moto cannot run, the
fallback to copying, and a copy that fails."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from pomona.ops.dlq import DeadLetterQueue
from pomona.ops.dlq_redrive import copy_entry, is_unsupported, redrive

DLQ_ARN = "arn:aws:sqs:us-east-1:123456789012:p-images-dlq"
DLQ = DeadLetterQueue(
    name="images",
    source_url="https://sqs/123/p-images",
    source_arn="arn:aws:sqs:us-east-1:123456789012:p-images",
    url="https://sqs/123/p-images-dlq",
    arn=DLQ_ARN,
    max_receive_count=5,
)


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


def _error(code: str, status: int, operation: str) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},  # type: ignore[typeddict-item]
        operation,
    )
