"""Known-ness: the distance to the nearest label learnt, its threshold set from known photos alone, the answer that
refuses what is far from everything, and the leave-labels-out self-check."""

from __future__ import annotations

import dataclasses
import hashlib
import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pomona.ml.classifier import (
    Classifier,
    ClassifierError,
    LabelStats,
    answer,
    classifier_to_npz,
    distances,
    fit_classifier,
    load_classifier,
    merge_label_stats,
)
from pomona.ml.familiarity import MIN_FAMILIAR_HOLDOUT, familiar_distance, leave_labels_out
from pomona.ml.holdout import Reservoir, evaluate
from pomona.ml.npz import to_npz
from pomona.ml.pca import PcaModel, PcaState, fit_pca
from pomona.ml.training import retrain

D = 8
LABELS = tuple("abcdef")


def _blobs(
    seed: int, n: int, *, labels: tuple[str, ...] = LABELS, noise: float = 1.0
) -> tuple[np.ndarray, list[str]]:
    """`n` rows around one centre per label (8 from the origin on its own axis), labels in turn."""
    rng = np.random.default_rng(seed)
    names = [labels[i % len(labels)] for i in range(n)]
    centres = {label: np.eye(D)[i % D] * 8.0 for i, label in enumerate(LABELS)}
    return np.stack([centres[name] for name in names]) + rng.standard_normal((n, D)) * noise, names


def _shas(n: int, salt: str) -> list[str]:
    return [hashlib.sha256(f"{salt}{i}".encode()).hexdigest() for i in range(n)]


def _fitted(seed: int = 0, n: int = 600) -> tuple[Classifier, np.ndarray, list[str], PcaModel]:
    x, labels = _blobs(seed, n)
    pca = fit_pca(PcaState.from_rows(x), n_components=D)
    return fit_classifier(LabelStats.from_rows(x, labels), pca), x, labels, pca


def test_distances_are_the_mahalanobis_distance_to_the_nearest_label_under_the_shared_covariance() -> None:
    classifier, _, _, _ = _fitted()
    rows = np.random.default_rng(9).standard_normal((25, D)) * 3

    found = distances(classifier, rows)

    # Recomputed directly: project, then the smallest (z - m)ᵀ Σ⁻¹ (z - m) over the offered labels' means
    assert classifier.whiten is not None
    assert classifier.class_means is not None
    precision = classifier.whiten @ classifier.whiten.T
    z = (rows - classifier.pca_mean) @ classifier.pca_components.T
    direct = np.array(
        [min(float((zi - m) @ precision @ (zi - m)) for m in classifier.class_means) for zi in z]
    )
    np.testing.assert_allclose(found, np.sqrt(direct), rtol=1e-9, atol=1e-9)


@settings(max_examples=25, deadline=None)
@given(cut=st.integers(30, 570))
def test_distances_from_merged_statistics_equal_those_fitted_on_all_rows_at_once(cut: int) -> None:
    x, labels = _blobs(1, 600)
    pca = fit_pca(PcaState.from_rows(x), n_components=D)
    whole = fit_classifier(LabelStats.from_rows(x, labels), pca)
    merged = fit_classifier(
        merge_label_stats(
            LabelStats.from_rows(x[:cut], labels[:cut]), LabelStats.from_rows(x[cut:], labels[cut:])
        ),
        pca,
    )
    rows = np.random.default_rng(2).standard_normal((40, D)) * 4
    np.testing.assert_allclose(distances(merged, rows), distances(whole, rows), rtol=1e-8)


def test_the_familiar_distance_is_a_multiple_of_the_held_out_known_photos_median_distance() -> None:
    classifier, _, _, _ = _fitted()
    held, held_labels = _blobs(3, 300)
    foreign = np.random.default_rng(4).standard_normal((10, D))  # a label it never offered: left out
    holdout = Reservoir.from_rows(_shas(310, "h"), [*held_labels, *["z"] * 10], np.vstack([held, foreign]))

    limit = familiar_distance(classifier, holdout, factor=1.3)

    assert limit == pytest.approx(1.3 * np.median(distances(classifier, held)))
    # too few held-out known photos to set it by: nothing is refused
    assert familiar_distance(classifier, Reservoir.empty(D)) == float("inf")
    few = MIN_FAMILIAR_HOLDOUT
    assert familiar_distance(
        classifier, Reservoir.from_rows(_shas(few - 1, "f"), held_labels[: few - 1], held[: few - 1])
    ) == float("inf")
    assert familiar_distance(
        classifier, Reservoir.from_rows(_shas(few, "f"), held_labels[:few], held[:few])
    ) < float("inf")


def test_a_photo_far_from_every_label_is_refused_as_unfamiliar_however_confident() -> None:
    # GIVEN a classifier whose familiar distance is set on its holdout
    x, labels = _blobs(4, 600)
    held, held_labels = _blobs(5, 120)
    retrained = retrain(
        LabelStats.from_rows(x, labels),
        Reservoir.from_rows(_shas(120, "h"), held_labels, held),
        gain=1.0,
        loss=5.0,
        variance_target=1.0,
    )
    classifier = retrained.classifier
    assert classifier is not None

    # WHEN a photo lies far beyond label "a", along its own axis: the discriminant is sure it is an "a"
    far = np.eye(D)[0] * 80.0
    found = answer(classifier, far)

    # THEN it is not answered: unfamiliar, though its confidence is high; a typical "a" is answered
    assert found.confidence > 0.99
    assert (found.unfamiliar, found.answered, found.label) == (True, False, None)
    assert found.distance > classifier.familiar_distance
    near = answer(classifier, np.eye(D)[0] * 8.0)
    assert (near.unfamiliar, near.answered, near.label) == (False, True, "a")


def test_the_evaluation_counts_refusals_of_known_photos_as_unanswered() -> None:
    x, labels = _blobs(6, 600)
    held, held_labels = _blobs(7, 200, noise=1.6)
    holdout = Reservoir.from_rows(_shas(200, "h"), held_labels, held)
    retrained = retrain(
        LabelStats.from_rows(x, labels),
        holdout,
        gain=1.0,
        loss=5.0,
        variance_target=1.0,
    )
    assert retrained.classifier is not None
    evaluation = retrained.evaluation
    unfamiliar = distances(retrained.classifier, held) > retrained.classifier.familiar_distance
    assert evaluation["unfamiliar_fraction"] == pytest.approx(unfamiliar.mean())
    assert 0 < evaluation["unfamiliar_fraction"] < 0.5
    assert evaluation["answered_fraction"] + evaluation["unfamiliar_fraction"] <= 1 + 1e-12
    assert evaluate(retrained.classifier, holdout, gain=1.0, loss=5.0)[
        "unfamiliar_fraction"
    ] == pytest.approx(unfamiliar.mean())


def test_familiarity_is_saved_with_the_classifier_and_a_file_without_it_is_refused() -> None:
    classifier, _, _, _ = _fitted()
    classifier = dataclasses.replace(classifier, familiar_distance=7.5)
    loaded = load_classifier(classifier_to_npz(classifier))
    assert loaded.familiar_distance == 7.5
    rows = np.random.default_rng(3).standard_normal((5, D))
    np.testing.assert_allclose(distances(loaded, rows), distances(classifier, rows))

    with np.load(io.BytesIO(classifier_to_npz(classifier))) as saved:
        without = {
            k: saved[k] for k in saved.files if k not in {"class_means", "whiten", "familiar_distance"}
        }
    with pytest.raises(ClassifierError, match=r"expected arrays \[.*'familiar_distance'.*\], got \["):
        load_classifier(to_npz(**without))


def test_leave_labels_out_answers_few_never_taught_photos_and_most_known_ones() -> None:
    # GIVEN a classifier of 6 well-separated labels, answering from 5/6 confidence, and their held-out photos
    classifier, _, _, _ = _fitted()
    classifier = dataclasses.replace(classifier, threshold=5 / 6)
    held, held_labels = _blobs(8, 1200)
    holdout = Reservoir.from_rows(_shas(1200, "h"), held_labels, held)

    # WHEN labels are left out in turn and their photos scored by the classifier without them
    # 8 dimensions spread more about their median than the model's ~100: a wider factor
    check = leave_labels_out(classifier, holdout, factor=1.6, draws=6)

    # THEN they are seldom answered, while the known ones mostly are
    assert check["draws"] == 6
    assert check["labels_left_out"] == 2
    assert check["never_taught_answered"] <= 0.03
    assert check["known_answered"] >= 0.9


def test_leaving_labels_out_renormalises_over_the_labels_kept() -> None:
    # GIVEN a classifier that answers from any confidence, and photos of label "a"
    classifier, _, _, _ = _fitted()
    held, held_labels = _blobs(10, 300)
    holdout = Reservoir.from_rows(_shas(300, "h"), held_labels, held)

    # WHEN a third of its labels are left out, with no familiar distance to refuse by (an enormous factor)
    check = leave_labels_out(classifier, holdout, factor=1e6, draws=4)

    # THEN every photo is answered, the never-taught ones by some kept label: probabilities over the kept labels
    assert (check["never_taught_answered"], check["known_answered"]) == (1.0, 1.0)


def test_leave_labels_out_needs_labels_to_leave_out() -> None:
    x, labels = _blobs(9, 90, labels=("a", "b"))
    classifier = fit_classifier(
        LabelStats.from_rows(x, labels), fit_pca(PcaState.from_rows(x), n_components=D)
    )
    holdout = Reservoir.from_rows(_shas(90, "h"), labels, x)
    check = leave_labels_out(classifier, holdout)
    assert "expected at least 3 offered labels" in check["skipped"]
