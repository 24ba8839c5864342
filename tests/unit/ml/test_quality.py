"""The linear probe and the net revenue curve: the business metric computed after each PCA refit."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest

from pomona.ml.pca import PcaState, fit_pca, project
from pomona.ml.quality import (
    PLOT_THRESHOLDS,
    QualityError,
    best_threshold,
    net_revenue_curve,
    probe,
    quality_report,
)


def _clusters(
    *, per_class: int, n_classes: int, d: int = 5, spread: float = 30.0, seed: int = 0
) -> tuple[npt.NDArray[np.float64], list[str]]:
    """Gaussian blobs `spread` standard deviations apart, one per class."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_classes, d)) * spread
    x = np.concatenate([centre + rng.standard_normal((per_class, d)) for centre in centres])
    labels = [f"fruit-{c}" for c in range(n_classes) for _ in range(per_class)]
    return x, labels


def test_separated_clusters_are_probed_perfectly() -> None:
    x, labels = _clusters(per_class=20, n_classes=3)

    result = probe(x, labels)

    assert result.skipped is None
    assert (result.n, result.n_classes, result.folds, result.excluded) == (60, 3, 5, 0)
    assert result.accuracy == 1.0
    assert result.macro_f1 == 1.0
    assert result.correct.all()
    assert ((result.confidence > 1 / 3) & (result.confidence <= 1.0)).all()


def test_separated_clusters_earn_full_revenue_from_threshold_zero() -> None:
    # GIVEN clusters the probe never gets wrong
    x, labels = _clusters(per_class=20, n_classes=3)

    # WHEN the report is computed with gain 2
    report = quality_report(x, labels, gain=2.0, loss=5.0)

    # THEN answering everything earns 1000 · gain, and the lowest such threshold wins
    assert report["accuracy"] == 1.0
    assert report["best_threshold"] == 0.0
    assert report["net_revenue_per_1000"] == pytest.approx(2000.0)
    assert report["coverage_at_best"] == 1.0
    assert report["curve"]["net_revenue_per_1000"][0] == pytest.approx(2000.0)
    assert report["skipped"] is None


def test_random_labels_are_near_chance_and_never_lose_money_at_best() -> None:
    # GIVEN features that carry no information about 3 balanced labels
    rng = np.random.default_rng(1)
    x = rng.standard_normal((150, 4))
    labels = [f"fruit-{i % 3}" for i in rng.permutation(150)]

    # WHEN probed and scored with a wrong answer costing 5 times a right one
    result = probe(x, labels)
    curve = net_revenue_curve(result.confidence, result.correct, gain=1.0, loss=5.0)
    threshold, revenue = best_threshold(curve)

    # THEN accuracy is near 1/3, answering everything loses money, and the best choice loses none
    assert 0.15 < result.accuracy < 0.5
    assert curve[0][0] == 0.0
    assert curve[0][1] < 0
    assert revenue >= 0.0
    assert curve[-1] == (PLOT_THRESHOLDS[-1], 0.0, 0.0)  # withholding everything
    assert threshold > 0.0


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


def test_default_thresholds_include_every_confidence_and_withhold_all() -> None:
    curve = net_revenue_curve([0.425, 0.9], [True, False])
    thresholds = [t for t, _, _ in curve]

    assert {0.0, 0.425, 0.9, 1.0} <= set(thresholds)
    assert thresholds == sorted(thresholds)
    assert curve[-1] == (PLOT_THRESHOLDS[-1], 0.0, 0.0)
    # Answering both loses 2000, answering the wrong 0.9 alone loses 2500: withhold from the next hundredth.
    assert best_threshold(curve) == (0.91, 0.0)


def test_ties_go_to_the_lowest_threshold() -> None:
    curve = [(0.7, 10.0, 0.2), (0.2, 10.0, 0.9), (0.5, 3.0, 0.5)]

    assert best_threshold(curve) == (0.2, 10.0)


@pytest.mark.parametrize(
    ("labels", "reason"),
    [
        pytest.param(["apple"] * 6, "got 1 \\(of 1 classes, 6 images\\)", id="single-class"),
        pytest.param(
            ["apple", "pear", "fig", "kiwi", "lime", "plum"], "got 0 \\(of 6 classes", id="all-singletons"
        ),
        pytest.param(["apple"] * 5 + ["pear"], "got 1 \\(of 2 classes", id="one-class-big-enough"),
    ],
)
def test_probe_is_skipped_without_two_usable_classes(labels: list[str], reason: str) -> None:
    x = np.random.default_rng(0).standard_normal((6, 3))

    result = probe(x, labels)
    report = quality_report(x, labels, gain=1.0, loss=5.0)

    assert result.skipped is not None
    assert "expected at least 2 classes with 2 or more images each" in result.skipped
    assert re.search(reason, result.skipped)
    assert result.confidence.size == 0
    assert report["skipped"] == result.skipped
    assert report["accuracy"] is None
    assert report["net_revenue_per_1000"] is None
    json.dumps(report, allow_nan=False)


def test_small_classes_reduce_folds_and_singletons_are_excluded() -> None:
    # GIVEN two classes of 3 images and one of a single image
    x, labels = _clusters(per_class=3, n_classes=2)
    x = np.vstack([x, [[100.0] * 5]])
    labels = [*labels, "lonely"]

    result = probe(x, labels, folds=5)

    assert (result.folds, result.n, result.n_classes, result.excluded) == (3, 6, 2, 1)
    assert result.confidence.shape == result.correct.shape == (6,)


def test_report_is_json_serialisable() -> None:
    x, labels = _clusters(per_class=10, n_classes=4, spread=1.0)

    report = quality_report(x, labels, gain=1.0, loss=5.0)
    decoded = json.loads(json.dumps(report, allow_nan=False))

    assert decoded == report
    assert len(report["curve"]["threshold"]) == len(PLOT_THRESHOLDS)
    assert 0.0 <= report["coverage_at_best"] <= 1.0
    assert report["net_revenue_per_1000"] >= max(report["curve"]["net_revenue_per_1000"])


def test_probe_is_deterministic_for_a_seed() -> None:
    x, labels = _clusters(per_class=10, n_classes=3, spread=1.0)

    first, second = probe(x, labels, seed=3), probe(x, labels, seed=3)

    np.testing.assert_array_equal(first.confidence, second.confidence)
    assert first.accuracy == second.accuracy


@pytest.mark.parametrize(
    ("call", "message"),
    [
        pytest.param(
            lambda: probe(np.zeros((3, 2)), ["a", "b"]),
            r"expected x of shape \(2, k\) for 2 labels, got \(3, 2\)",
            id="length-mismatch",
        ),
        pytest.param(
            lambda: probe(np.zeros((4, 2)), ["a", "a", "b", "b"], folds=1),
            r"expected folds >= 2, got 1",
            id="one-fold",
        ),
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


def test_report_on_pca_projections() -> None:
    # GIVEN clusters in 40 dimensions, reduced by the incremental PCA as the job does
    x, labels = _clusters(per_class=15, n_classes=4, d=40, spread=3.0)
    model = fit_pca(PcaState.from_rows(x), variance_target=0.9)

    # WHEN the float32 projections are probed
    report = quality_report(project(model, x), labels, gain=1.0, loss=5.0)

    # THEN the separation survives the reduction
    assert model.n_components < 40
    assert report["accuracy"] == 1.0
    assert report["net_revenue_per_1000"] == pytest.approx(1000.0)
