"""A source queue's dead-letter queue, found from its `RedrivePolicy`, so `pomona dlq …` needs only the settings'
queue URLs; and SQS's "no such queue" and "access denied" as one line naming the queue.

What a DLQ holds is described in `pomona.ops.dlq_describe`; moving it back is `pomona.ops.dlq_redrive`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from botocore.exceptions import ClientError

from pomona.core.aws import error_code
from pomona.core.errors import PomonaError
from pomona.core.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

QueueName = Literal["images", "events"]
QUEUES: tuple[QueueName, ...] = ("images", "events")
_SOURCE_SETTING = {"images": "POMONA_IMAGES_QUEUE_URL", "events": "POMONA_EVENTS_QUEUE_URL"}
_MISSING = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})


class QueueLookupError(PomonaError, LookupError):
    """A source queue or its dead-letter queue is not configured, does not exist, or has no redrive policy."""


class QueueAccessError(PomonaError, PermissionError):
    """SQS refused a call on a source queue or its dead-letter queue."""


@dataclass(frozen=True, kw_only=True)
class DeadLetterQueue:
    """A source queue and the DLQ its redrive policy names."""

    name: QueueName
    source_url: str
    source_arn: str
    url: str
    arn: str
    max_receive_count: int

    @property
    def label(self) -> str:
        """How messages name the DLQ: whose it is and its URL."""
        return f"{self.name} dead-letter queue {self.url}"


def source_url(settings: Settings, name: QueueName) -> str:
    """The `name` queue's URL from the settings ("" when not configured)."""
    return settings.images_queue_url if name == "images" else settings.events_queue_url


def parse_redrive_policy(raw: str | None, *, queue: str) -> tuple[str, int]:
    """The DLQ's ARN and maxReceiveCount from a queue's RedrivePolicy attribute (a JSON string)."""
    if not raw:
        raise QueueLookupError(f"{queue}: expected a RedrivePolicy naming its dead-letter queue, got none")
    try:
        policy = json.loads(raw)
        return str(policy["deadLetterTargetArn"]), int(policy["maxReceiveCount"])
    except (ValueError, KeyError, TypeError) as err:
        raise QueueLookupError(
            f"{queue}: expected a RedrivePolicy with deadLetterTargetArn and maxReceiveCount, got {raw!r}"
        ) from err


def queue_name_from_arn(arn: str) -> str:
    """`arn:aws:sqs:<region>:<account>:<name>` → `<name>`."""
    parts = arn.split(":")
    if len(parts) != 6 or parts[:3] != ["arn", parts[1], "sqs"] or not parts[5]:
        raise QueueLookupError(f"expected an SQS queue ARN (arn:<partition>:sqs:…:<name>), got {arn!r}")
    return parts[5]


def find_dlq(sqs: SQSClient, settings: Settings, name: QueueName) -> DeadLetterQueue:
    """The DLQ of the `name` queue, from its RedrivePolicy; `QueueLookupError` says what is missing."""
    url = source_url(settings, name)
    label = f"{name} queue"
    if not url:
        raise QueueLookupError(f"{label}: expected a queue URL in {_SOURCE_SETTING[name]}, got none")
    with about_queue(f"{label} {url}", "sqs:GetQueueAttributes"):
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn", "RedrivePolicy"])[
            "Attributes"
        ]
    dlq_arn, max_receive_count = parse_redrive_policy(attributes.get("RedrivePolicy"), queue=f"{label} {url}")
    dlq_name = queue_name_from_arn(dlq_arn)
    with about_queue(f"{label}'s dead-letter queue {dlq_name} ({dlq_arn})", "sqs:GetQueueUrl"):
        dlq_url = sqs.get_queue_url(QueueName=dlq_name)["QueueUrl"]
    return DeadLetterQueue(
        name=name,
        source_url=url,
        source_arn=attributes["QueueArn"],
        url=dlq_url,
        arn=dlq_arn,
        max_receive_count=max_receive_count,
    )


@contextmanager
def about_queue(what: str, action: str) -> Iterator[None]:
    """SQS's "no such queue" and "access denied" as one line naming the queue; other errors as they are."""
    try:
        yield
    except ClientError as err:
        code = error_code(err)
        found = f"{code} ({err.response.get('Error', {}).get('Message', '')})"
        if code in _MISSING or err.response.get("Error", {}).get("QueryErrorCode") in _MISSING:
            raise QueueLookupError(f"{what}: expected an existing queue, got {found}") from err
        if "AccessDenied" in code:
            raise QueueAccessError(f"{what}: expected permission for {action}, got {found}") from err
        raise
