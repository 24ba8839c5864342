"""The images queue as the job uses it: drain it, keep what it holds invisible while it works, delete at commit."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from pomona.core.contract import ImageMessage, check_queued
from pomona.core.errors import ContractError
from pomona.core.queues import (
    BATCH_CAP,
    FAILED_RUNS,
    FAILURE,
    SQS_BATCH,
    Suspicion,
    batch_with_retry,
    change_visibility,
    in_batches,
)
from pomona.core.settings import Settings
from pomona.featurize.liveness import Periodic
from pomona.featurize.lock import RunLock

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

log = logging.getLogger(__name__)

# Threads a beat extends visibility on. At 50k held messages a beat is ~5,000 batch calls of ~20-50 ms each:
# 100-250 s one at a time, longer than the 60 s between beats and close to the 300 s visibility timeout; 12-31 s on
# 8 threads. 8 also stays under botocore's default pool of 10 connections per client, which the drain shares.
BEAT_THREADS = 8


class Held(NamedTuple):
    """A valid message the run holds, and the receipt that deletes, moves or hides it."""

    message: ImageMessage
    receipt: str


class Refused(NamedTuple):
    """A message the drain refused: it names what ingestion would not have queued (`detail` says what)."""

    message: ImageMessage
    receipt: str
    detail: str


@dataclass
class Received:
    """What the drain took off the queue: valid messages with their receipts, messages it refused (with their
    receipts and why), and how many it could not read at all (left for the DLQ)."""

    messages: list[Held] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    malformed: int = 0
    # What failed runs said of the valid messages that carry a suspicion, by receipt.
    suspicion: dict[str, Suspicion] = field(default_factory=dict)
    # Valid messages past the batch cap a suspect message set: the driver gives them back untouched.
    excess: list[Held] = field(default_factory=list)

    def suspicion_of(self, receipt: str) -> Suspicion:
        return self.suspicion.get(receipt, Suspicion())

    @property
    def receipts(self) -> list[str]:
        return [held.receipt for held in self.messages]


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

    A message given back by a failed run carries its batch cap (`Suspicion`): the run holds no more messages than
    the smallest cap among them, the most suspect first, so a failing batch halves run after run until the message
    that fails a run on its own is alone. The rest go to `excess`, for the driver to give back.
    """
    queue_url, limit = settings.images_queue_url, settings.max_images
    received = Received()
    while len(received.messages) < limit:
        batch = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=min(SQS_BATCH, limit - len(received.messages)),
            VisibilityTimeout=visibility_timeout_s,
            WaitTimeSeconds=wait_s,
            MessageAttributeNames=[FAILED_RUNS, BATCH_CAP, FAILURE],
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
                received.messages.append(Held(image, message["ReceiptHandle"]))
                suspicion = Suspicion.of(message)
                if suspicion.failed_runs:
                    received.suspicion[message["ReceiptHandle"]] = suspicion
                    limit = min(limit, suspicion.batch_cap or limit)
            except ContractError as err:
                received.refused.append(Refused(image, message["ReceiptHandle"], str(err)))
                log.warning("Message refused", extra={"message_id": message["MessageId"], "error": str(err)})
        if held and on_receive is not None:
            on_receive(held)
    received.messages, received.excess = _within_cap(received, limit)
    return received


def _within_cap(received: Received, limit: int) -> tuple[list[Held], list[Held]]:
    """(the `limit` most suspect messages, the rest), each in the order received."""
    if len(received.messages) <= limit:
        return received.messages, []
    cap = {r: s.batch_cap or limit for r, s in received.suspicion.items()}
    order = sorted(
        range(len(received.messages)), key=lambda i: (cap.get(received.messages[i].receipt, limit), i)
    )
    kept = set(order[:limit])
    return (
        [m for i, m in enumerate(received.messages) if i in kept],
        [m for i, m in enumerate(received.messages) if i not in kept],
    )


def move_messages(
    sqs: SQSClient,
    source_url: str,
    target_url: str,
    messages: Sequence[tuple[Held, Suspicion]],
) -> list[str]:
    """Send a copy of each message to `target_url` (the images queue itself, or its DLQ) carrying its suspicion,
    then delete each original whose copy was sent: SQS's receive count starts again with the copy, so a run that
    fails never charges the messages it held. The receipts not moved (logged): those come back after their
    visibility timeout, charged one receive, and dedupe finds any copy's image committed."""
    left: list[str] = []
    for batch in in_batches(messages):
        entries: list[dict[str, Any]] = []
        for n, (held, suspicion) in enumerate(batch):
            entry: dict[str, Any] = {"Id": str(n), "MessageBody": held.message.to_json()}
            if attributes := suspicion.attributes():
                entry["MessageAttributes"] = attributes
            entries.append(entry)
        answer = sqs.send_message_batch(QueueUrl=target_url, Entries=entries)  # type: ignore[arg-type]
        failed = {f["Id"] for f in answer.get("Failed", [])}
        sent = [held.receipt for n, (held, _) in enumerate(batch) if str(n) not in failed]
        left += [held.receipt for n, (held, _) in enumerate(batch) if str(n) in failed]
        left += delete_messages(sqs, source_url, sent)
    if left:
        log.warning(
            "Messages not moved; they come back after their visibility timeout", extra={"count": len(left)}
        )
    return left


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
        failed = batch_with_retry(
            lambda entries: sqs.delete_message_batch(QueueUrl=queue_url, Entries=entries),  # type: ignore[arg-type]
            [{"Id": str(n), "ReceiptHandle": r} for n, r in enumerate(batch)],
        )
        left += [batch[int(n)] for n in failed]
    if left:
        log.warning("Messages not deleted; they will come back as duplicates", extra={"count": len(left)})
    return left


class Heartbeat(Periodic):
    """Keeps held messages invisible and the run lock alive while the job works."""

    def __init__(
        self,
        sqs: SQSClient,
        queue_url: str,
        lock: RunLock,
        *,
        every_s: float,
        visibility_timeout_s: int,
        progressing: Callable[[], bool] = lambda: True,
    ) -> None:
        super().__init__(every_s=every_s, name="pomona-heartbeat")
        self.sqs, self.queue_url, self.lock = sqs, queue_url, lock
        self.visibility_timeout_s = visibility_timeout_s
        # Whether the run still makes progress: one that does not lets its lock lapse (`pomona.featurize.liveness`).
        self.progressing = progressing
        # The drain adds receipts (`hold`) and the driver replaces them while the beat's thread reads them.
        self._receipts: list[str] = []
        self._receipts_lock = threading.Lock()

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

    def tick(self) -> bool:
        try:
            self.beat()
        except Exception:  # a missed beat is survivable; the next one retries
            log.exception("Heartbeat failed")
        return False

    def beat(self) -> None:
        """Renew the lock, then extend every held message's visibility, `BEAT_THREADS` batch calls at a time.

        A batch call that raises fails the beat, but only once every other batch has been tried. A run that makes no
        progress keeps its messages hidden (it is giving them back) but no longer renews the lock."""
        if self.progressing():
            self.lock.renew()
        else:
            log.warning("Run lock not renewed: the run makes no progress")
        with ThreadPoolExecutor(BEAT_THREADS, thread_name_prefix="pomona-heartbeat") as pool:
            lapsed = [r for left in pool.map(self._extend, in_batches(self.receipts)) for r in left]
        if lapsed:
            # Their messages may be redelivered while this run works: dedupe finds them committed.
            log.warning("Messages whose visibility was not extended", extra={"count": len(lapsed)})

    def _extend(self, batch: Sequence[str]) -> list[str]:
        """One batch call (and its retry); the receipts whose visibility it did not extend."""
        return change_visibility(self.sqs, self.queue_url, batch, self.visibility_timeout_s)
