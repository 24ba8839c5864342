"""A run's liveness: past its deadline, or without progress for too long, it stops.

Progress is what the driver reports (a message received, a phase done) and what Spark's status tracker shows (a task
finished, a job done). A run that stops cancels its Spark jobs, so the driver's thread raises and the run gives its
messages back (`pomona.featurize.driver`) and exits non-zero; a run that makes no progress no longer renews the run
lock (`Heartbeat`), so the next scheduled run takes over once the lock lapses, whatever state this one is in. Should
the driver's thread not come back after the cancel, the process exits after a grace period, as a killed pod would.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Self

from pomona.core.errors import PomonaError

if TYPE_CHECKING:
    from pyspark import SparkContext

log = logging.getLogger(__name__)

EXIT_STOPPED = 124  # timeout(1)'s: the run was stopped by its watchdog


class RunStoppedError(PomonaError, TimeoutError):
    """The run passed its deadline or made no progress for too long; its messages were given back."""


class Periodic:
    """Calls `tick` every `every_s` seconds (first at once with `at_start`) on a daemon thread of its own, from the
    `with` block's start to its end; a `tick` that returns True ends the thread early. The run's heartbeat and
    watchdog are two; a tool that watches a run from the side is another."""

    def __init__(self, *, every_s: float, name: str, at_start: bool = False) -> None:
        self.every_s, self._at_start = every_s, at_start
        self._exited = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def tick(self) -> bool:
        """One beat; True to stop beating."""
        raise NotImplementedError

    def wait_for_exit(self, timeout_s: float) -> bool:
        """Whether the `with` block ended within `timeout_s`."""
        return self._exited.wait(timeout_s)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._exited.set()
        self._thread.join()

    def _run(self) -> None:
        if self._at_start and self.tick():
            return
        while not self._exited.wait(self.every_s):
            if self.tick():
                return


class Watchdog(Periodic):
    """Watches one run from a thread of its own; `stopped` says why it stopped the run, or is None."""

    def __init__(
        self,
        spark: SparkContext,
        *,
        deadline_s: float,
        stall_s: float,
        poll_s: float = 1.0,
        grace_s: float = 300.0,
    ) -> None:
        super().__init__(every_s=poll_s, name="pomona-watchdog")
        self.spark, self.deadline_s, self.stall_s, self.grace_s = spark, deadline_s, stall_s, grace_s
        self.stopped: str | None = None
        self._started = self._last = time.monotonic()
        self._tasks: tuple[tuple[int, int], ...] = ()

    def progress(self) -> None:
        """The run moved on: a message received, a phase done."""
        self._last = time.monotonic()

    def step(self) -> None:
        """Between two phases: `RunStoppedError` if the run was stopped meanwhile, else progress."""
        if self.stopped is not None:
            raise RunStoppedError(self.stopped)
        self.progress()

    def progressing(self) -> bool:
        """Not stopped, and some progress within `stall_s`: whether the run may renew its lock."""
        return self.stopped is None and time.monotonic() - self._last < self.stall_s

    def tick(self) -> bool:
        """Take Spark's progress in; stop the run (and end the watch) once it is overdue."""
        self._observe_spark()
        reason = self._overdue()
        if reason is not None:
            self._stop(reason)
        return reason is not None

    def _observe_spark(self) -> None:
        """A finished task or job is progress."""
        try:
            tracker = self.spark.statusTracker()
            stages = tuple(
                (stage, info.numCompletedTasks)
                for stage in sorted(tracker.getActiveStageIds())
                if (info := tracker.getStageInfo(stage)) is not None
            )
        except Exception:  # a status read that fails tells nothing: the deadline still holds
            log.warning("Spark status not read", exc_info=True)
            return
        if stages != self._tasks:
            self._tasks = stages
            self.progress()

    def _overdue(self) -> str | None:
        now = time.monotonic()
        if now - self._started > self.deadline_s:
            return f"expected the run to end within its deadline of {self.deadline_s:g} s, it ran {now - self._started:.0f} s"
        if now - self._last > self.stall_s:
            return (
                f"expected progress at least every {self.stall_s:g} s, got none for {now - self._last:.0f} s"
            )
        return None

    def _stop(self, reason: str) -> None:
        self.stopped = reason
        log.error("Run stopped", extra={"reason": reason})
        self.spark.cancelAllJobs()
        if not self.wait_for_exit(self.grace_s):
            log.error(
                "Run did not come back after its jobs were cancelled; exiting",
                extra={"grace_s": self.grace_s},
            )
            os._exit(EXIT_STOPPED)
