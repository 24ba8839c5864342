"""A refit is calibrated on the holdout and answers only above the break-even confidence."""

from __future__ import annotations

import numpy as np

from pomona.ml.calibration import break_even
from pomona.ml.classifier import LabelStats
from pomona.ml.holdout import Reservoir
from pomona.ml.pca import PcaState, fit_pca
from pomona.ml.training import retrain


def _blobs(seed: int, n: int, noise: float) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    labels = [("a", "b", "c")[i % 3] for i in range(n)]
    centres = {"a": np.zeros(5), "b": np.eye(5)[0] * 3, "c": np.eye(5)[1] * 3}
    return np.stack([centres[label] for label in labels]) + rng.standard_normal((n, 5)) * noise, labels


def test_a_refit_is_tempered_on_the_holdout_and_its_threshold_floored_at_break_even() -> None:
    x, labels = _blobs(0, 300, 1.0)
    training = LabelStats.from_rows(x, labels)
    pca = fit_pca(PcaState.from_rows(x), n_components=5)
    h, held = _blobs(1, 90, 2.0)
    holdout = Reservoir.from_rows([f"{i:064x}" for i in range(90)], held, h)

    retrained = retrain(training, holdout, pca, gain=1.0, loss=5.0)

    assert retrained.classifier is not None
    assert retrained.classifier.temperature > 1.0
    assert retrained.evaluation["temperature"] == retrained.classifier.temperature
    assert (
        retrained.classifier.threshold == retrained.evaluation["best_threshold"] >= break_even(gain=1, loss=5)
    )


def test_before_any_holdout_the_threshold_is_the_break_even() -> None:
    x, labels = _blobs(2, 60, 1.0)
    retrained = retrain(
        LabelStats.from_rows(x, labels),
        Reservoir.empty(5),
        fit_pca(PcaState.from_rows(x), n_components=5),
        gain=1.0,
        loss=3.0,
    )
    assert retrained.classifier is not None
    assert (retrained.classifier.threshold, retrained.classifier.temperature) == (0.75, 1.0)
    assert "got none yet" in retrained.evaluation["skipped"]


def test_too_few_labels_give_no_classifier_and_say_why() -> None:
    x, _ = _blobs(3, 20, 1.0)
    retrained = retrain(
        LabelStats.from_rows(x, ["a"] * 20),
        Reservoir.empty(5),
        fit_pca(PcaState.from_rows(x), n_components=5),
        gain=1.0,
        loss=5.0,
    )
    assert retrained.classifier is None
    assert "expected at least 2 labels" in retrained.evaluation["skipped"]
