"""SQS batch calls retried entry by entry (`batch_with_retry`), and what a failed run says of the messages it gives
back (`Suspicion`), as message attributes."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from pomona.core.queues import BATCH_CAP, FAILED_RUNS, FAILURE, MAX_FAILURE_CHARS, Suspicion, batch_with_retry


class _BatchCall:
    """A batch call whose answers are laid out in advance, one `Failed` list per call; it records what it was sent."""

    def __init__(self, *answers: list[dict[str, Any]]) -> None:
        self.answers = list(answers)
        self.sent: list[list[str]] = []

    def __call__(self, entries: list[dict[str, Any]]) -> dict[str, Any]:
        self.sent.append([e["Id"] for e in entries])
        return {"Failed": self.answers.pop(0)}


def _entries(n: int) -> list[dict[str, Any]]:
    return [{"Id": str(i), "ReceiptHandle": f"r{i}"} for i in range(n)]


def test_entries_failed_on_sqss_side_are_sent_once_more_and_those_still_failed_returned() -> None:
    # GIVEN a call where SQS fails two entries on its side and one for the sender's fault, then one again
    call = _BatchCall(
        [
            {"Id": "1", "SenderFault": False, "Code": "InternalError", "Message": "try again"},
            {"Id": "2", "SenderFault": True, "Code": "ReceiptHandleIsInvalid", "Message": "bad"},
            {"Id": "3", "SenderFault": False, "Code": "InternalError"},
        ],
        [{"Id": "3", "SenderFault": False, "Code": "InternalError", "Message": "still"}],
    )

    failed = batch_with_retry(call, _entries(4))

    # THEN only SQS's failures are retried, and each still failed comes back with SQS's code and message
    assert call.sent == [["0", "1", "2", "3"], ["1", "3"]]
    assert failed == {"2": "ReceiptHandleIsInvalid bad", "3": "InternalError still"}


def test_no_entries_make_no_call() -> None:
    call = _BatchCall()
    assert batch_with_retry(call, []) == {}
    assert call.sent == []


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
