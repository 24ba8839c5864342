"""`Periodic`, the thread under the run's heartbeat and watchdog: it beats while its `with` block runs, and stops
when the block ends or a beat says so."""

from __future__ import annotations

import threading

from pomona.featurize.liveness import Periodic


class _Counter(Periodic):
    def __init__(self, *, stop_after: int | None = None, at_start: bool = False) -> None:
        super().__init__(every_s=0.01, name="test-periodic", at_start=at_start)
        self.ticks, self.stop_after = 0, stop_after
        self.ticked = threading.Event()

    def tick(self) -> bool:
        self.ticks += 1
        self.ticked.set()
        return self.ticks == self.stop_after


def test_it_beats_until_the_block_ends_and_not_after() -> None:
    with _Counter() as counter:
        assert counter.ticked.wait(5)
    ticks = counter.ticks
    assert ticks >= 1
    assert counter.wait_for_exit(0)  # the block ended: seen at once
    assert counter.ticks == ticks


def test_a_beat_that_returns_true_ends_the_thread() -> None:
    with _Counter(stop_after=2) as counter:
        counter._thread.join(5)
        assert not counter._thread.is_alive()
    assert counter.ticks == 2


def test_at_start_beats_at_once() -> None:
    counter = _Counter(at_start=True)
    counter.every_s = 3600  # no second beat within the test
    with counter:
        assert counter.ticked.wait(5)
    assert counter.ticks == 1
