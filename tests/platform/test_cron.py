"""The cron check the chart's schedules are held to (`cron`)."""

from __future__ import annotations

import pytest
from cron import is_valid_cron


@pytest.mark.parametrize(
    "schedule", ["*/15 * * * *", "0 3 * * MON-FRI", "5,35 */2 1-15 jan-jun 0", "@hourly", "0 0 ? * 7"]
)
def test_valid_schedules(schedule: str) -> None:
    assert is_valid_cron(schedule)


@pytest.mark.parametrize(
    "schedule",
    [
        pytest.param("*/15 * * *", id="four-fields"),
        pytest.param("60 * * * *", id="minute-60"),
        pytest.param("* 24 * * *", id="hour-24"),
        pytest.param("* * 0 * *", id="day-0"),
        pytest.param("*/0 * * * *", id="step-0"),
        pytest.param("30-10 * * * *", id="backwards-range"),
        pytest.param("* * * FOO *", id="unknown-month"),
        pytest.param("@every 10m", id="operator-only"),
        pytest.param("every 15 minutes", id="words"),
    ],
)
def test_invalid_schedules(schedule: str) -> None:
    assert not is_valid_cron(schedule)
