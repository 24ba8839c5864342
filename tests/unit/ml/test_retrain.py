"""A refit is calibrated on the holdout and answers only above the break-even confidence."""

from __future__ import annotations

import numpy as np
import pytest

from pomona.ml.calibration import break_even
from pomona.ml.classifier import LabelStats, distances
from pomona.ml.holdout import Reservoir
from pomona.ml.training import retrain


def _blobs(seed: int, n: int, noise: float) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    labels = [("a", "b", "c")[i % 3] for i in range(n)]
    centres = {"a": np.zeros(5), "b": np.eye(5)[0] * 3, "c": np.eye(5)[1] * 3}
    return np.stack([centres[label] for label in labels]) + rng.standard_normal((n, 5)) * noise, labels


def test_a_refit_is_tempered_on_the_holdout_and_its_threshold_floored_at_break_even() -> None:
    x, labels = _blobs(0, 300, 1.0)
    training = LabelStats.from_rows(x, labels)
    h, held = _blobs(1, 90, 2.0)
    holdout = Reservoir.from_rows([f"{i:064x}" for i in range(90)], held, h)

    retrained = retrain(training, holdout, gain=1.0, loss=5.0, variance_target=1.0)

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
        gain=1.0,
        loss=5.0,
    )
    assert retrained.classifier is None
    assert "expected at least 2 labels" in retrained.evaluation["skipped"]


def test_held_out_photos_are_as_new_to_the_refit_as_a_users_photo() -> None:
    # GIVEN few training rows per label in many dimensions, as the job has (20 photos a label, ~130 components)
    rng = np.random.default_rng(4)
    d, labels = 40, [f"l{i}" for i in range(6)]
    centres = rng.standard_normal((len(labels), d)) * 3

    def rows(n_per_label: int) -> tuple[np.ndarray, list[str]]:
        names = [label for label in labels for _ in range(n_per_label)]
        return np.repeat(centres, n_per_label, axis=0) + rng.standard_normal((len(names), d)), names

    x, names = rows(8)
    held, held_names = rows(25)
    unseen, _ = rows(50)
    training = LabelStats.from_rows(x, names)

    # WHEN the classifier is refitted
    retrained = retrain(
        training,
        Reservoir.from_rows([f"{i:064x}" for i in range(len(held_names))], held_names, held),
        gain=1.0,
        loss=5.0,
    )

    # THEN its space is the training rows' alone, so held-out photos lie as far as unseen ones: the familiar
    # distance set from them keeps unseen photos as it keeps them
    classifier = retrained.classifier
    assert classifier is not None
    np.testing.assert_allclose(classifier.pca_mean, training.total.mean)
    held_median, unseen_median = (
        np.median(distances(classifier, held)),
        np.median(distances(classifier, unseen)),
    )
    assert held_median == pytest.approx(unseen_median, rel=0.05)
    assert retrained.evaluation["unfamiliar_fraction"] == pytest.approx(
        float((distances(classifier, unseen) > classifier.familiar_distance).mean()), abs=0.05
    )
