"""Speedups for the embedded moto server, written for one moto release and applied to that release only.

Each patch below replaces a moto internal with code that gives the same answers faster; none changes what
moto says (`tests/integration/test_moto_speedups.py` compares them with a stock moto server). Internals change
between releases, so on any other moto version `apply` leaves moto as released and logs that the speedups are
off. moto 5.2.5 has no setting that does any of this.
"""

from __future__ import annotations

import functools
import logging
import time
from datetime import datetime
from importlib.metadata import version
from typing import Any

log = logging.getLogger(__name__)

FOR_MOTO = "5.2.5"
"""The moto release these patches were written for and checked against."""

# Queue depths, which `pomona status`, the trigger and the benchmarks' samplers ask for.
_DEPTH_ATTRIBUTES = frozenset(
    {
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    }
)


def apply(*, enabled: bool = True) -> bool:
    """Patch moto in this process, once, if it is the release `FOR_MOTO`; return whether the speedups are on.

    `enabled=False` leaves moto as released (patches an earlier call applied stay: they cannot be undone).
    """
    return enabled and _apply_for(version("moto"))


@functools.cache  # once per process: the patches wrap moto's own functions
def _apply_for(installed: str) -> bool:
    if installed != FOR_MOTO:
        log.warning("moto speedups off: written for moto %s, moto %s is installed", FOR_MOTO, installed)
        return False
    for patch in (
        _read_retention_directly,
        _compute_depths_alone,
        _read_clock_directly,
        _delete_batch_in_one_scan,
        _remember_backend_per_host,
    ):
        patch()
    return True


def _read_retention_directly() -> None:
    """A receive recomputes every queue attribute (three scans of the whole queue) for each message it returns,
    so draining n messages costs O(n²): 0.4 s a receive at a depth of 540. Only the retention period is needed
    there; it is read directly.
    """
    from moto.core.utils import unix_time
    from moto.sqs.models import Message, SQSBackend

    def is_message_valid_based_on_retention_period(
        self: SQSBackend, queue_name: str, message: Message
    ) -> bool:
        queue = self.get_queue(queue_name)
        retention_s = int(queue.message_retention_period)  # type: ignore[attr-defined]  # set from attributes
        return bool(retention_s + message.sent_timestamp / 1000 > unix_time())  # type: ignore[operator]

    SQSBackend.is_message_valid_based_on_retention_period = is_message_valid_based_on_retention_period  # type: ignore[method-assign]


def _compute_depths_alone() -> None:
    """GetQueueAttributes computes every attribute up to three times for each name asked: at a depth of 5,000,
    sampling two queues' depths twice a second held the GIL of the process serving the Lambda handler for most
    of that second. Depth attributes alone are computed alone, once.
    """
    from moto.core.utils import camelcase_to_underscores
    from moto.sqs.models import SQSBackend

    all_attributes = SQSBackend.get_queue_attributes

    def get_queue_attributes(self: SQSBackend, queue_name: str, attribute_names: list[str]) -> dict[str, Any]:
        if not attribute_names or not set(attribute_names) <= _DEPTH_ATTRIBUTES:
            return all_attributes(self, queue_name, attribute_names)
        queue = self.get_queue(queue_name)
        return {name: getattr(queue, camelcase_to_underscores(name)) for name in attribute_names}

    SQSBackend.get_queue_attributes = get_queue_attributes  # type: ignore[method-assign]


def _read_clock_directly() -> None:
    """Every receive and depth still looks at every message, and each look builds two datetimes to read the
    clock (a quarter of the embedded stack's time at a depth of 5,000): the clock is read directly, the same
    epoch milliseconds.
    """
    from moto.sqs import models

    clock_millis = models.unix_time_millis  # type: ignore[attr-defined]

    def unix_time_millis(dt: datetime | None = None) -> float:
        return time.time() * 1000 if dt is None else float(clock_millis(dt))

    models.unix_time_millis = unix_time_millis  # type: ignore[attr-defined]


def _delete_batch_in_one_scan() -> None:
    """DeleteMessageBatch scans the whole queue twice per receipt: the job's commit at 4,900 images spent 17 s
    deleting. One scan per batch now deletes all of its receipts, with SQS's answers unchanged (a receipt
    already deleted succeeds, an unknown one fails with ReceiptHandleIsInvalid).
    """
    from moto.sqs.models import SQSBackend

    delete_one_by_one = SQSBackend.delete_message_batch

    def delete_message_batch(
        self: SQSBackend, queue_name: str, receipts: list[dict[str, Any]]
    ) -> tuple[list[str], list[dict[str, str]]]:
        queue = self.get_queue(queue_name)
        wanted = {entry["ReceiptHandle"] for entry in receipts} - queue.deleted_messages
        kept = []
        for message in queue._messages:
            if wanted.intersection(message.all_receipt_handles):
                queue.pending_messages.discard(message)
                queue.deleted_messages.update(message.all_receipt_handles)  # type: ignore[arg-type]
            else:
                kept.append(message)
        queue._messages = kept
        # What is left (unknown receipts) gets moto's own error entries.
        unknown = [entry for entry in receipts if entry["ReceiptHandle"] not in queue.deleted_messages]
        _, errors = delete_one_by_one(self, queue_name, unknown)
        return [entry["Id"] for entry in receipts if entry not in unknown], errors

    SQSBackend.delete_message_batch = delete_message_batch  # type: ignore[method-assign]


def _remember_backend_per_host() -> None:
    """Remember which service answers each host name.

    moto's server finds the service of every request anew, under a lock that every request must take: it lists
    moto's package folder (a `stat` per service, ~200) and then tries every service's URL patterns. That was
    0.65 ms of CPU per request, and a third of the CPU of an S3 GET (4.4 → 3.1 ms, measured with 8 concurrent
    GETs). The answer depends on the host name alone, and moto's folders and patterns never change while it runs.
    """
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    find_backend = DomainDispatcherApplication.get_backend_for_host
    backends: dict[str | None, Any] = {}

    def get_backend_for_host(self: DomainDispatcherApplication, host: str | None) -> Any:
        if host not in backends:
            backends[host] = find_backend(self, host)
        return backends[host]

    DomainDispatcherApplication.get_backend_for_host = get_backend_for_host  # type: ignore[method-assign]
