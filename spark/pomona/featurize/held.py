"""The messages a run holds and has not settled yet, and how it lets go of them: deleted once their image is committed
or quarantined, moved back to the queue (a copy: its receive count starts again) or, after a failure, given back
carrying what the failure said (`pomona.core.queues.Suspicion`)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from pomona.core.queues import MAX_FAILURE_CHARS, Suspicion
from pomona.core.settings import Settings
from pomona.featurize.outcome import Settled
from pomona.featurize.queue import Held, Received, delete_messages, move_messages

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

log = logging.getLogger(__name__)


class HeldMessages:
    """The valid messages a run holds and has not deleted or moved, with what failed runs said of them: what a
    failure gives back. `between` runs between two delete calls (the fault-injection point `mid_delete`)."""

    def __init__(self, sqs: SQSClient, settings: Settings, *, between: Callable[[], None]) -> None:
        self.sqs, self.settings, self.between = sqs, settings, between
        self.messages: list[Held] = []
        self.suspicion: dict[str, Suspicion] = {}

    def hold(self, received: Received) -> None:
        """Hold what the drain took."""
        self.messages, self.suspicion = list(received.messages), received.suspicion

    def settle(self, received: Received, duplicates: Sequence[Held], settled: Settled) -> None:
        """Delete the message of every image now committed or quarantined, and of every duplicate of a committed
        image. A duplicate within the batch whose representative was quarantined (its own version gone or changed,
        its bytes undecodable) is given back instead: it names another upload, which is retried on its own. Deferred
        images' messages stay held, to come back."""
        waiting = settled.waiting()
        quarantined = {f.sha256 for f in settled.quarantined}
        retried = [h for h in duplicates if h.message.sha256 in quarantined]
        again = {h.receipt for h in retried}
        self.delete(
            [
                h.receipt
                for h in received.messages
                if h.message.sha256 not in waiting and h.receipt not in again
            ]
        )
        self.move(retried)

    def give_back(self, err: Exception) -> None:
        """After a failure: give back every message this run still holds, each carrying the failure and a batch cap
        of half this batch, so the next runs bisect towards what failed; a message that failed a run on its own goes
        to the DLQ with the failure recorded (`pomona dlq list` shows it). Nothing is charged a receive."""
        held, failure = self.messages, _one_line(err)
        if not held:
            return
        log.error("Run failed; giving its messages back", extra={"messages": len(held), "error": failure})
        try:
            suspicion = {
                h.receipt: self.suspicion.get(h.receipt, Suspicion()).after_failure(len(held), failure)
                for h in held
            }
            target = self.settings.images_dlq_url if len(held) == 1 else self.settings.images_queue_url
            if target:
                self.move(held, suspicion=suspicion, to=target)
        except (ClientError, BotoCoreError):  # they come back after their visibility timeout, charged
            log.exception("Messages not given back")

    def delete(self, receipts: Sequence[str]) -> None:
        left = delete_messages(self.sqs, self.settings.images_queue_url, receipts, between=self.between)
        self._let_go(set(receipts) - set(left))

    def move(
        self,
        messages: Sequence[Held],
        *,
        suspicion: Mapping[str, Suspicion] | None = None,
        to: str | None = None,
    ) -> None:
        """Move these messages to the images queue (or `to`) as copies with their suspicion (unchanged unless
        given): back on the queue, their receive count started again."""
        said = self.suspicion if suspicion is None else suspicion
        queue = self.settings.images_queue_url
        entries = [(h, said.get(h.receipt, Suspicion())) for h in messages]
        left = move_messages(self.sqs, queue, to or queue, entries)
        self._let_go({h.receipt for h in messages} - set(left))

    def _let_go(self, receipts: set[str]) -> None:
        self.messages = [h for h in self.messages if h.receipt not in receipts]


def _one_line(err: BaseException) -> str:
    """The failure as the DLQ records it: its type and the first line of its message; for a Spark job's failure, the
    JVM's exception, which says why (a Py4J error's own first line only names the call)."""
    text = str(err)
    if (java := getattr(err, "java_exception", None)) is not None:
        with contextlib.suppress(Exception):  # the JVM may be gone: the Python side's text then stands
            text = str(java.toString())
    first = next(iter(text.strip().splitlines()), "")
    return f"{type(err).__name__}: {first}"[:MAX_FAILURE_CHARS]
