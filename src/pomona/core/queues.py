"""SQS as every unit and tool uses it: batches of at most 10 entries, retried entry by entry, and a queue's depth."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

_T = TypeVar("_T")

# SQS's limit on messages per receive and entries per batch call (send, delete, change visibility).
SQS_BATCH = 10


def in_batches(items: Sequence[_T], size: int = SQS_BATCH) -> Iterator[Sequence[_T]]:
    """`items` in order, `size` at a time (the last batch may be shorter)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def batch_with_retry(
    call: Callable[[list[dict[str, Any]]], Any], entries: list[dict[str, Any]]
) -> dict[str, str]:
    """`call(entries)` (a batch call: send, delete, change visibility), then once more for the entries that failed
    on SQS's side; the Ids still failed, each with SQS's code and message.

    SQS answers a batch call entry by entry, so one call can half succeed; an entry refused for the sender's fault
    would be refused again and is not retried."""
    if not entries:
        return {}
    failed = call(entries).get("Failed", [])
    retry = {f["Id"] for f in failed if not f.get("SenderFault")}
    if retry:
        again = call([e for e in entries if e["Id"] in retry]).get("Failed", [])
        failed = [f for f in failed if f["Id"] not in retry] + again
    return {f["Id"]: f"{f.get('Code', '')} {f.get('Message', '')}".strip() for f in failed}


def change_visibility(sqs: SQSClient, url: str, receipts: Sequence[str], timeout_s: int) -> list[str]:
    """Set the visibility timeout of held messages (0 gives them back now), one batch call per 10, each retried
    once; the receipts whose visibility did not change."""
    left: list[str] = []
    for batch in in_batches(receipts):
        failed = batch_with_retry(
            lambda e: sqs.change_message_visibility_batch(QueueUrl=url, Entries=e),  # type: ignore[arg-type]
            [{"Id": str(i), "ReceiptHandle": r, "VisibilityTimeout": timeout_s} for i, r in enumerate(batch)],
        )
        left += [batch[int(i)] for i in failed]
    return left


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


# -- a failed run's messages ------------------------------------------------------------------------------------
# A run that fails gives its messages back as copies (their receive count starts again: a failed run never charges
# them) carrying these attributes; a message that failed a run alone goes to the DLQ with the failure recorded.
FAILED_RUNS = "pomona-failed-runs"
BATCH_CAP = "pomona-batch-cap"
FAILURE = "pomona-failure"
MAX_FAILURE_CHARS = 1000


@dataclass(frozen=True)
class Suspicion:
    """What failed runs said of a message: how many it was in, the most messages its next run may hold with it
    (half the last failed batch: `None` when it was in none), and the last failure."""

    failed_runs: int = 0
    batch_cap: int | None = None
    failure: str = ""

    @classmethod
    def of(cls, message: Mapping[str, Any]) -> Suspicion:
        """From a received message's MessageAttributes; a missing or unreadable attribute says nothing."""
        attributes = message.get("MessageAttributes", {})

        def number(name: str) -> int | None:
            try:
                return max(int(attributes[name]["StringValue"]), 0)
            except (KeyError, TypeError, ValueError):
                return None

        cap = number(BATCH_CAP)
        return cls(
            failed_runs=number(FAILED_RUNS) or 0,
            batch_cap=None if cap is None else max(cap, 1),
            failure=str(attributes.get(FAILURE, {}).get("StringValue", "")),
        )

    def after_failure(self, batch: int, failure: str) -> Suspicion:
        """This message once more in a run of `batch` messages that failed with `failure`."""
        return Suspicion(self.failed_runs + 1, max(batch // 2, 1), failure[:MAX_FAILURE_CHARS])

    def attributes(self) -> dict[str, Any]:
        """The MessageAttributes that carry it (none for a message no run failed with)."""
        if not self.failed_runs:
            return {}
        found: dict[str, Any] = {
            FAILED_RUNS: {"DataType": "Number", "StringValue": str(self.failed_runs)},
            FAILURE: {"DataType": "String", "StringValue": self.failure or "unknown"},
        }
        if self.batch_cap is not None:
            found[BATCH_CAP] = {"DataType": "Number", "StringValue": str(self.batch_cap)}
        return found
