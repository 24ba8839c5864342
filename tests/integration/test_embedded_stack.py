"""The embedded stack's patches to moto keep SQS's answers: they change how fast moto is, not what it says."""

from __future__ import annotations

import boto3
import pytest

from pomona.core.settings import Settings

pytestmark = pytest.mark.integration


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
