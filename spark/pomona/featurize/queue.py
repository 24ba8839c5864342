"""The images queue as the job uses it: drain it, keep what it holds invisible while it works, delete at commit."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

from pomona.core.contract import ImageMessage, check_queued
from pomona.core.errors import ContractError
from pomona.core.queues import SQS_BATCH, in_batches
from pomona.core.settings import Settings
from pomona.featurize.lock import RunLock

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

log = logging.getLogger(__name__)


@dataclass
class Received:
    """What the drain took off the queue: valid messages with their receipts, messages it refused (with their
    receipts and why), and how many it could not read at all (left for the DLQ)."""

    messages: list[tuple[ImageMessage, str]] = field(default_factory=list)
    refused: list[tuple[ImageMessage, str, str]] = field(default_factory=list)
    malformed: int = 0

    @property
    def receipts(self) -> list[str]:
        return [receipt for _, receipt in self.messages]


def drain_queue(sqs: SQSClient, settings: Settings, *, visibility_timeout_s: int, wait_s: int) -> Received:
    """Receive in batches of 10 until the queue is empty or `settings.max_images` valid messages are held.

    A message that names what this deployment's ingestion would not have queued (another bucket, a key outside
    uploads/, an unsanitised label, another format, too many pixels) is refused: the driver quarantines it by a
    sidecar, and nothing it names is fetched. One that is no `ImageMessage` at all names nothing to quarantine: it
    is counted and left alone, comes back after its visibility timeout, and the redrive policy moves it to the DLQ
    after the queue's receive limit.
    """
    queue_url, max_images = settings.images_queue_url, settings.max_images
    received = Received()
    while len(received.messages) < max_images:
        batch = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=min(SQS_BATCH, max_images - len(received.messages)),
            VisibilityTimeout=visibility_timeout_s,
            WaitTimeSeconds=wait_s,
        ).get("Messages", [])
        if not batch:
            break
        for message in batch:
            try:
                image = ImageMessage.from_json(message["Body"])
            except ContractError as err:
                received.malformed += 1
                log.warning(
                    "Message breaks the contract",
                    extra={"message_id": message["MessageId"], "error": str(err)},
                )
                continue
            try:
                check_queued(image, settings)
                received.messages.append((image, message["ReceiptHandle"]))
            except ContractError as err:
                received.refused.append((image, message["ReceiptHandle"], str(err)))
                log.warning("Message refused", extra={"message_id": message["MessageId"], "error": str(err)})
    return received


def delete_messages(
    sqs: SQSClient, queue_url: str, receipts: Sequence[str], *, between: Callable[[], None] | None = None
) -> list[str]:
    """Delete in batches of 10; `between` runs between two batches (the fault-injection point `mid_delete`).

    SQS answers a batch call entry by entry: an entry that failed on SQS's side is sent once more. The receipts
    still not deleted are logged and returned: their messages come back, and dedupe finds their images
    committed."""
    left: list[str] = []
    for i, batch in enumerate(in_batches(receipts)):
        if i and between is not None:
            between()
        left += _batch_with_retry(
            lambda entries: sqs.delete_message_batch(QueueUrl=queue_url, Entries=entries),  # type: ignore[arg-type]
            [{"Id": str(n), "ReceiptHandle": r} for n, r in enumerate(batch)],
        )
    if left:
        log.warning("Messages not deleted; they will come back as duplicates", extra={"count": len(left)})
    return left


def _batch_with_retry(
    call: Callable[[list[dict[str, Any]]], Any], entries: list[dict[str, Any]]
) -> list[str]:
    """`call(entries)`, then once more for the entries that failed on SQS's side; the receipts still failed."""
    failed = call(entries).get("Failed", [])
    retry = {f["Id"] for f in failed if not f.get("SenderFault")}
    if retry:
        again = call([e for e in entries if e["Id"] in retry]).get("Failed", [])
        failed = [f for f in failed if f["Id"] not in retry] + again
    by_id = {e["Id"]: e["ReceiptHandle"] for e in entries}
    return [by_id[f["Id"]] for f in failed]


class Heartbeat:
    """Keeps held messages invisible and the run lock alive while the job works."""

    def __init__(
        self, sqs: SQSClient, queue_url: str, lock: RunLock, *, every_s: float, visibility_timeout_s: int
    ) -> None:
        self.sqs, self.queue_url, self.lock = sqs, queue_url, lock
        self.every_s, self.visibility_timeout_s = every_s, visibility_timeout_s
        self.receipts: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pomona-heartbeat", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.beat()
            except Exception:  # a missed beat is survivable; the next one retries
                log.exception("Heartbeat failed")

    def beat(self) -> None:
        self.lock.renew()
        lapsed = []
        for batch in in_batches(list(self.receipts)):
            entries = [
                {"Id": str(i), "ReceiptHandle": r, "VisibilityTimeout": self.visibility_timeout_s}
                for i, r in enumerate(batch)
            ]
            lapsed += _batch_with_retry(
                lambda e: self.sqs.change_message_visibility_batch(QueueUrl=self.queue_url, Entries=e),  # type: ignore[arg-type]
                entries,
            )
        if lapsed:
            # Their messages may be redelivered while this run works: dedupe finds them committed.
            log.warning("Messages whose visibility was not extended", extra={"count": len(lapsed)})
