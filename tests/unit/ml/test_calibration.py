"""The temperature is ~1 where the discriminant's model holds, and grows as held-out rows spread wider than the
training rows; the threshold never goes below the break-even confidence."""

from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt
import pytest

from pomona.ml.calibration import MAX_TEMPERATURE, break_even, fit_temperature
from pomona.ml.classifier import (
    Classifier,
    ClassifierError,
    LabelStats,
    classifier_to_npz,
    fit_classifier,
    load_classifier,
    predict_proba,
)
from pomona.ml.holdout import Reservoir, evaluate
from pomona.ml.npz import from_npz, to_npz
from pomona.ml.pca import PcaState, fit_pca

D = 8
LABELS = ("a", "b", "c", "d")


def _draw(rng: np.random.Generator, n: int, *, noise: float) -> tuple[npt.NDArray[np.float64], list[str]]:
    """Isotropic Gaussian blobs centred at 3i along axis i (a and b 3 deviations apart, the others further): exactly a
    linear discriminant's model when noise is 1."""
    centres = np.arange(len(LABELS))[:, None] * np.eye(len(LABELS), D) * 3.0
    labels = [LABELS[i % len(LABELS)] for i in range(n)]
    rows = np.stack([centres[LABELS.index(label)] for label in labels])
    return rows + rng.standard_normal((n, D)) * noise, labels


def _fitted(rng: np.random.Generator) -> tuple[Classifier, LabelStats]:
    x, labels = _draw(rng, 4000, noise=1.0)
    stats = LabelStats.from_rows(x, labels)
    return fit_classifier(stats, fit_pca(PcaState.from_rows(x), n_components=D), shrinkage=0.0), stats


def _holdout(rng: np.random.Generator, *, noise: float) -> Reservoir:
    x, labels = _draw(rng, 2000, noise=noise)
    return Reservoir.from_rows([f"{i:064x}" for i in range(len(labels))], labels, x)


def test_a_discriminant_whose_model_holds_keeps_a_temperature_near_one() -> None:
    rng = np.random.default_rng(0)
    classifier, stats = _fitted(rng)
    assert fit_temperature(classifier, stats, _holdout(rng, noise=1.0)) == pytest.approx(1.0, abs=0.15)


def test_held_out_rows_wider_than_the_training_rows_raise_the_temperature_and_calibrate_it() -> None:
    rng = np.random.default_rng(1)
    classifier, stats = _fitted(rng)
    holdout = _holdout(rng, noise=1.6)
    temperature = fit_temperature(classifier, stats, holdout)
    assert temperature > 1.5

    def gap(c: Classifier) -> float:
        """Mean confidence less accuracy on the holdout: positive when overconfident."""
        proba = predict_proba(c, holdout.features)
        right = np.asarray(c.labels)[proba.argmax(axis=1)] == holdout.labels
        return float(proba.max(axis=1).mean() - right.mean())

    untempered, tempered = gap(classifier), gap(dataclasses.replace(classifier, temperature=temperature))
    assert untempered > 0.05
    assert abs(tempered) < untempered / 2


def test_without_held_out_rows_of_an_offered_label_the_temperature_stays_one() -> None:
    rng = np.random.default_rng(2)
    classifier, stats = _fitted(rng)
    stranger = Reservoir.from_rows(["0" * 64], ["z"], np.zeros((1, D)))
    assert fit_temperature(classifier, stats, stranger) == 1.0
    assert fit_temperature(classifier, stats, Reservoir.empty(D)) == 1.0


def test_rows_nearer_their_runner_up_than_their_own_label_get_the_largest_temperature() -> None:
    rng = np.random.default_rng(3)
    classifier, stats = _fitted(rng)
    x, labels = _draw(rng, 400, noise=0.1)
    shuffled = [LABELS[(LABELS.index(label) + 1) % len(LABELS)] for label in labels]  # every label wrong
    wrong = Reservoir.from_rows([f"{i:064x}" for i in range(len(labels))], shuffled, x)
    assert fit_temperature(classifier, stats, wrong) == MAX_TEMPERATURE


def test_the_temperature_needs_the_classifiers_own_statistics() -> None:
    rng = np.random.default_rng(4)
    classifier, _ = _fitted(rng)
    x, _ = _draw(rng, 40, noise=1.0)
    other = LabelStats.from_rows(x, ["a"] * 40)
    with pytest.raises(ClassifierError, match=r"missing \['b', 'c', 'd'\]"):
        fit_temperature(classifier, other, _holdout(rng, noise=1.0))


def test_break_even_is_where_a_right_answer_pays_for_a_wrong_one() -> None:
    assert break_even(gain=1.0, loss=5.0) == pytest.approx(5 / 6)
    assert break_even(gain=1.0, loss=0.0) == 0.0
    with pytest.raises(ClassifierError, match=r"expected gain > 0 and loss >= 0, got 0.0 and 5.0"):
        break_even(gain=0.0, loss=5.0)


def test_the_chosen_threshold_is_never_below_the_floor_even_on_a_clean_holdout() -> None:
    rng = np.random.default_rng(5)
    classifier, _ = _fitted(rng)
    holdout = _holdout(rng, noise=0.2)  # every row far inside its label: all right
    free = evaluate(classifier, holdout, gain=1.0, loss=5.0)
    floored = evaluate(classifier, holdout, gain=1.0, loss=5.0, min_threshold=0.9)
    assert free["accuracy"] == 1.0
    assert free["best_threshold"] < 0.9
    assert floored["best_threshold"] >= 0.9
    assert floored["min_threshold"] == 0.9
    assert floored["answered_accuracy"] == 1.0


def test_the_temperature_round_trips_and_a_file_without_it_is_refused() -> None:
    rng = np.random.default_rng(6)
    classifier = dataclasses.replace(_fitted(rng)[0], temperature=7.5)
    assert load_classifier(classifier_to_npz(classifier)).temperature == 7.5
    arrays = from_npz(classifier_to_npz(classifier), (), what="classifier", error=ClassifierError)
    del arrays["temperature"]
    with pytest.raises(ClassifierError, match=r"expected arrays \[.*'temperature'.*\], got \["):
        load_classifier(to_npz(**arrays))


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_a_temperature_must_be_finite_and_positive(temperature: float) -> None:
    classifier, _ = _fitted(np.random.default_rng(7))
    with pytest.raises(ClassifierError, match="expected a finite temperature > 0"):
        dataclasses.replace(classifier, temperature=temperature)


def test_a_temperature_widens_the_densities_not_the_priors() -> None:
    rng = np.random.default_rng(8)
    x, labels = _draw(rng, 4000, noise=1.0)
    keep = [i for i, label in enumerate(labels) if label != "a" or i % 4 == 0]  # "a" a quarter as common
    stats = LabelStats.from_rows(x[keep], [labels[i] for i in keep])
    classifier = fit_classifier(stats, fit_pca(PcaState.from_rows(x), n_components=D), shrinkage=0.0)
    priors = np.array([stats.counts[label] for label in classifier.labels]) / stats.total.n

    flattened = predict_proba(dataclasses.replace(classifier, temperature=1e6), x[:5])

    assert flattened == pytest.approx(np.tile(priors, (5, 1)), abs=1e-4)
