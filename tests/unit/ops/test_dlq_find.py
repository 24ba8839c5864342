"""Finding a source queue's dead-letter queue: its redrive policy, the DLQ's name from its ARN, and SQS's
refusals (botocore's Stubber standing in for SQS) as one line naming the queue."""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.stub import Stubber

from pomona.core.settings import Settings
from pomona.ops.dlq import (
    QueueAccessError,
    QueueLookupError,
    find_dlq,
    parse_redrive_policy,
    queue_name_from_arn,
)

SETTINGS = Settings(
    bucket="b", images_queue_url="https://sqs/123/p-images", events_queue_url="https://sqs/123/p-events"
)
DLQ_ARN = "arn:aws:sqs:us-east-1:123456789012:p-images-dlq"


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
