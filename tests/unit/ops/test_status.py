"""What `pomona status` shows of each batch's classifier (its evaluation on the holdout), and its health line."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from pomona.ops.status import _holdout_figures, health

EVALUATED = {
    "n": 54,
    "accuracy": 0.98,
    "macro_f1": 0.97,
    "best_threshold": 0.9967,
    "answered_fraction": 0.9,
    "answered_accuracy": 1.0,
    "net_revenue_per_1000": 900.0,
    "per_label_recall": {"Apple": 1.0},
}
SHOWN = {
    "accuracy": 0.98,
    "answered_fraction": 0.9,
    "answered_accuracy": 1.0,
    "net_revenue_per_1000": 900.0,
    "threshold": 0.9967,
    "refused_unfamiliar": None,
    "never_taught_answered": None,
    "holdout_n": 54,
    "skipped": None,
}
NOTHING = dict.fromkeys(SHOWN)


@pytest.mark.parametrize(
    ("manifest", "shown"),
    [
        pytest.param({"quality": EVALUATED, "classifier": {"labels": 18}}, SHOWN, id="evaluated"),
        pytest.param(
            {"quality": {"skipped": "expected held-out images"}, "classifier": {"labels": 2}},
            NOTHING | {"skipped": "expected held-out images"},
            id="not-evaluated",
        ),
        pytest.param({}, NOTHING, id="no-quality"),
    ],
)
def test_each_batch_shows_its_holdout_figures(manifest: dict[str, Any], shown: dict[str, Any]) -> None:
    assert _holdout_figures(manifest) == shown


NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("images", "dlq", "last_commit", "line"),
    [
        pytest.param(
            (0, 0),
            (0, 0),
            "2026-12-06T11:00:00.000Z",
            "ok: 0 image(s) waiting, last batch committed 60 min ago",
            id="quiet",
        ),
        pytest.param(
            (40, 0),
            (0, 0),
            "2026-12-06T11:00:00.000Z",
            "ok: 40 image(s) waiting, last batch committed 60 min ago",
            id="waiting-for-the-next-run",
        ),
        pytest.param((0, 0), (0, 0), None, "ok: 0 image(s) waiting, no batch committed yet", id="new"),
        pytest.param(
            (3, 5),
            (0, 0),
            "2026-12-06T06:00:00.000Z",
            "attention: 8 image(s) waiting, last batch committed 6.0 h ago",
            id="stale",
        ),
        pytest.param(
            (1, 0),
            (0, 0),
            None,
            "attention: 1 image(s) waiting, no batch committed yet",
            id="never-committed",
        ),
        pytest.param(
            (0, 0),
            (1, 1),
            "2026-12-06T11:00:00.000Z",
            "attention: 2 message(s) on the images DLQ (pomona dlq list)",
            id="dead-letters",
        ),
    ],
)
def test_the_health_line_says_what_the_alarms_would(
    images: tuple[int, int], dlq: tuple[int, int], last_commit: str | None, line: str
) -> None:
    queues = {
        "images": {"visible": images[0], "in_flight": images[1]},
        "images_dlq": {"visible": dlq[0], "in_flight": dlq[1]},
    }
    assert health(queues, last_commit, now=NOW, stale_after_s=3 * 3600) == line
