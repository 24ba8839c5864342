"""What a failed run says of the messages it gives back (`Suspicion`), as message attributes."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from pomona.core.queues import BATCH_CAP, FAILED_RUNS, FAILURE, MAX_FAILURE_CHARS, Suspicion


def _received(attributes: dict[str, Any]) -> dict[str, Any]:
    """A received message carrying `attributes` as SQS returns them (no DataType on the way back is needed)."""
    return {"MessageId": "m", "Body": "{}", "MessageAttributes": attributes}


def test_a_message_no_run_failed_with_carries_nothing() -> None:
    assert Suspicion.of({"MessageId": "m", "Body": "{}"}) == Suspicion()
    assert Suspicion().attributes() == {}


def test_each_failed_run_halves_the_batch_cap_down_to_one() -> None:
    suspicion = Suspicion()
    caps = []
    for batch in (13, 6, 3, 1):
        suspicion = suspicion.after_failure(batch, "boom")
        caps.append(suspicion.batch_cap)
    assert caps == [6, 3, 1, 1]
    assert suspicion.failed_runs == 4


@given(failed_runs=st.integers(1, 10_000), batch=st.integers(1, 50_000), failure=st.text(max_size=3000))
def test_attributes_read_back_as_they_were_written(failed_runs: int, batch: int, failure: str) -> None:
    written = Suspicion(failed_runs - 1).after_failure(batch, failure)
    read = Suspicion.of(_received(written.attributes()))
    assert read.failed_runs == failed_runs
    assert read.batch_cap == max(batch // 2, 1)
    assert read.failure == (failure[:MAX_FAILURE_CHARS] or "unknown")


def test_unreadable_attributes_say_nothing_rather_than_raise() -> None:
    garbage = {
        FAILED_RUNS: {"DataType": "Number", "StringValue": "many"},
        BATCH_CAP: {"DataType": "Number", "StringValue": "-5"},
        FAILURE: {"DataType": "String"},
    }
    assert Suspicion.of(_received(garbage)) == Suspicion(0, 1, "")
