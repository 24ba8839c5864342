"""What `pomona status` shows of each batch's classifier: its evaluation on the holdout, never a probe's."""

from __future__ import annotations

from typing import Any

import pytest

from pomona.ops.status import _holdout_figures

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
    "holdout_n": 54,
    "skipped": None,
}
NOTHING = dict.fromkeys(SHOWN)
PROBE = {"accuracy": 0.5, "net_revenue_per_1000": -10.0, "folds": 5, "coverage_at_best": 0.1, "skipped": None}


@pytest.mark.parametrize(
    ("manifest", "shown"),
    [
        pytest.param({"quality": EVALUATED, "classifier": {"labels": 18}}, SHOWN, id="evaluated"),
        pytest.param(
            {"quality": {"skipped": "expected held-out images"}, "classifier": {"labels": 2}},
            NOTHING | {"skipped": "expected held-out images"},
            id="not-evaluated",
        ),
        pytest.param({"quality": PROBE}, NOTHING, id="probe-before-the-classifier"),
        pytest.param(
            {"quality": PROBE, "classifier": EVALUATED | {"labels": 18}}, SHOWN, id="probe-beside-it"
        ),
        pytest.param({}, NOTHING, id="no-quality"),
    ],
)
def test_each_batch_shows_its_holdout_figures(manifest: dict[str, Any], shown: dict[str, Any]) -> None:
    assert _holdout_figures(manifest) == shown
