"""SQS as every unit and tool uses it: batches of at most 10 entries, and a queue's depth."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

_T = TypeVar("_T")

# SQS's limit on messages per receive and entries per batch call (send, delete, change visibility).
SQS_BATCH = 10


def in_batches(items: Sequence[_T], size: int = SQS_BATCH) -> Iterator[Sequence[_T]]:
    """`items` in order, `size` at a time (the last batch may be shorter)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def queue_depth(sqs: SQSClient, url: str) -> dict[str, int]:
    """Messages waiting (`visible`) and held by a consumer (`in_flight`); {} when no queue is configured."""
    if not url:
        return {}
    attributes = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return {
        "visible": int(attributes["ApproximateNumberOfMessages"]),
        "in_flight": int(attributes["ApproximateNumberOfMessagesNotVisible"]),
    }
