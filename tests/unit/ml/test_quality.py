"""The net revenue curve and its best threshold: the business metric each holdout evaluation reports."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from pomona.ml.quality import PLOT_THRESHOLDS, QualityError, best_threshold, net_revenue_curve


def test_revenue_by_hand() -> None:
    # GIVEN four answers: right at 0.9, wrong at 0.8, right at 0.6, wrong at 0.3; gain 1, loss 5
    confidence = [0.9, 0.8, 0.6, 0.3]
    correct = [True, False, True, False]

    curve = net_revenue_curve(confidence, correct, gain=1.0, loss=5.0, thresholds=[0.0, 0.5, 0.8, 0.85, 1.0])

    # THEN (right - 5·wrong) / 4 images · 1000, answering where confidence ≥ threshold
    assert curve == [
        (0.0, (2 - 10) * 250.0, 1.0),
        (0.5, (2 - 5) * 250.0, 0.75),
        (0.8, (1 - 5) * 250.0, 0.5),  # 0.8 itself is answered
        (0.85, 1 * 250.0, 0.25),
        (1.0, 0.0, 0.0),
    ]
    assert best_threshold(curve) == (0.85, 250.0)


def test_all_right_answers_earn_full_revenue_from_threshold_zero() -> None:
    # GIVEN answers that are all right, with gain 2
    confidence = np.linspace(0.4, 0.99, 50)

    curve = net_revenue_curve(confidence, np.ones(50, dtype=bool), gain=2.0, loss=5.0)

    # THEN answering everything earns 1000 · gain, and the lowest such threshold wins
    assert curve[0] == (0.0, pytest.approx(2000.0), 1.0)
    assert best_threshold(curve) == (0.0, pytest.approx(2000.0))


def test_uninformed_answers_lose_money_everywhere_but_withholding() -> None:
    # GIVEN a third of the answers right, whatever their confidence
    rng = np.random.default_rng(1)
    confidence = rng.uniform(0.34, 1.0, 300)
    correct = rng.permutation(np.arange(300) % 3 == 0)

    curve = net_revenue_curve(confidence, correct, gain=1.0, loss=5.0)
    threshold, revenue = best_threshold(curve)

    # THEN answering everything loses money, and the best choice withholds (nearly) everything and loses none
    assert curve[0][0] == 0.0
    assert curve[0][1] < 0
    assert revenue >= 0.0
    assert curve[-1] == (PLOT_THRESHOLDS[-1], 0.0, 0.0)  # withholding everything
    assert threshold > 0.0


def test_default_thresholds_include_every_confidence_and_withhold_all() -> None:
    curve = net_revenue_curve([0.425, 0.9], [True, False])
    thresholds = [t for t, _, _ in curve]

    assert {0.0, 0.425, 0.9, 1.0} <= set(thresholds)
    assert thresholds == sorted(thresholds)
    assert curve[-1] == (PLOT_THRESHOLDS[-1], 0.0, 0.0)
    # Answering both loses 2000, answering the wrong 0.9 alone loses 2500: withhold from the next hundredth.
    assert best_threshold(curve) == (0.91, 0.0)


def test_the_best_threshold_earns_at_least_any_plotted_one() -> None:
    rng = np.random.default_rng(2)
    confidence = rng.uniform(0.2, 1.0, 200)
    correct = rng.uniform(size=200) < confidence  # better calibrated than chance

    exact = net_revenue_curve(confidence, correct)
    plotted = net_revenue_curve(confidence, correct, thresholds=PLOT_THRESHOLDS)

    assert [t for t, _, _ in plotted] == list(PLOT_THRESHOLDS)
    assert best_threshold(exact)[1] >= max(r for _, r, _ in plotted)


def test_ties_go_to_the_lowest_threshold() -> None:
    curve = [(0.7, 10.0, 0.2), (0.2, 10.0, 0.9), (0.5, 3.0, 0.5)]

    assert best_threshold(curve) == (0.2, 10.0)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        pytest.param(
            lambda: net_revenue_curve([0.5], [True, False]),
            r"got \(1,\) and \(2,\)",
            id="curve-length-mismatch",
        ),
        pytest.param(
            lambda: net_revenue_curve([], []),
            r"expected at least one answer to score, got none",
            id="no-answers",
        ),
        pytest.param(
            lambda: best_threshold([]), r"expected a non-empty revenue curve, got none", id="empty-curve"
        ),
    ],
)
def test_errors_say_what_was_expected(call: Callable[[], object], message: str) -> None:
    with pytest.raises(QualityError, match=message):
        call()
