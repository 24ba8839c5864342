"""The images queue as the job uses it: drain it, keep what it holds invisible while it works, delete at commit."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
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

# Threads a beat extends visibility on. At 50k held messages a beat is ~5,000 batch calls of ~20-50 ms each:
# 100-250 s one at a time, longer than the 60 s between beats and close to the 300 s visibility timeout; 12-31 s on
# 8 threads. 8 also stays under botocore's default pool of 10 connections per client, which the drain shares.
BEAT_THREADS = 8


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


def drain_queue(
    sqs: SQSClient,
    settings: Settings,
    *,
    visibility_timeout_s: int,
    wait_s: int,
    on_receive: Callable[[list[str]], None] | None = None,
) -> Received:
    """Receive in batches of 10 until the queue is empty or `settings.max_images` valid messages are held.

    After each receive, `on_receive` gets the receipts of the messages it took (valid and refused alike, not the
    malformed ones), so that the heartbeat keeps them invisible while the drain goes on: a drain of 50k messages
    takes minutes, and the first ones must not come back meanwhile.

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
        held: list[str] = []
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
            held.append(message["ReceiptHandle"])
            try:
                check_queued(image, settings)
                received.messages.append((image, message["ReceiptHandle"]))
            except ContractError as err:
                received.refused.append((image, message["ReceiptHandle"], str(err)))
                log.warning("Message refused", extra={"message_id": message["MessageId"], "error": str(err)})
        if held and on_receive is not None:
            on_receive(held)
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
        # The drain adds receipts (`hold`) and the driver replaces them while the beat's thread reads them.
        self._receipts: list[str] = []
        self._receipts_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pomona-heartbeat", daemon=True)

    @property
    def receipts(self) -> list[str]:
        """The receipts held, a copy; setting it holds those alone (the driver letting go of what it defers)."""
        with self._receipts_lock:
            return list(self._receipts)

    @receipts.setter
    def receipts(self, receipts: Sequence[str]) -> None:
        with self._receipts_lock:
            self._receipts = list(receipts)

    def hold(self, receipts: Sequence[str]) -> None:
        """Hold these too, from the next beat on: `drain_queue`'s `on_receive`."""
        with self._receipts_lock:
            self._receipts += receipts

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
        """Renew the lock, then extend every held message's visibility, `BEAT_THREADS` batch calls at a time.

        A batch call that raises fails the beat, but only once every other batch has been tried."""
        self.lock.renew()
        with ThreadPoolExecutor(BEAT_THREADS, thread_name_prefix="pomona-heartbeat") as pool:
            lapsed = [r for left in pool.map(self._extend, in_batches(self.receipts)) for r in left]
        if lapsed:
            # Their messages may be redelivered while this run works: dedupe finds them committed.
            log.warning("Messages whose visibility was not extended", extra={"count": len(lapsed)})

    def _extend(self, batch: Sequence[str]) -> list[str]:
        """One batch call (and its retry); the receipts whose visibility it did not extend."""
        return _batch_with_retry(
            lambda e: self.sqs.change_message_visibility_batch(QueueUrl=self.queue_url, Entries=e),  # type: ignore[arg-type]
            [
                {"Id": str(i), "ReceiptHandle": r, "VisibilityTimeout": self.visibility_timeout_s}
                for i, r in enumerate(batch)
            ],
        )
