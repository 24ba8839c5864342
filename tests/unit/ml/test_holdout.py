"""The holdout rule, the bounded reservoir of held-out rows, and the evaluation of a classifier on it."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import numpy.typing as npt
import pytest

from pomona.ml.classifier import ClassifierError, LabelStats, fit_classifier, predict_proba
from pomona.ml.holdout import (
    Reservoir,
    evaluate,
    is_holdout,
    load_reservoir,
    merge_reservoir,
    reservoir_to_npz,
)
from pomona.ml.pca import PcaState, fit_pca
from pomona.ml.quality import PLOT_THRESHOLDS

D = 4


def _sha(i: int, salt: str = "") -> str:
    return hashlib.sha256(f"{salt}image-{i}".encode()).hexdigest()


def _reservoir(sizes: dict[str, int], *, seed: int = 0, d: int = D) -> Reservoir:
    """Rows with distinct hashes; each feature row is a function of its hash, as featurizing an image is."""
    labels = [label for label, size in sizes.items() for _ in range(size)]
    sha = [_sha(i, salt=str(seed)) for i in range(len(labels))]
    features = [np.random.default_rng(int(s[:8], 16)).standard_normal(d) for s in sha]
    return Reservoir.from_rows(sha, labels, np.reshape(features, (len(sha), d)))


def _rows(r: Reservoir, index: npt.NDArray[np.intp]) -> Reservoir:
    return Reservoir(sha256=r.sha256[index], labels=r.labels[index], features=r.features[index])


def _same(a: Reservoir, b: Reservoir) -> bool:
    return (
        a.sha256.tolist() == b.sha256.tolist()
        and a.labels.tolist() == b.labels.tolist()
        and np.array_equal(a.features, b.features)
    )


def test_holdout_is_a_fixed_function_of_the_hash() -> None:
    assert is_holdout("0" * 64)  # 0 is a multiple of 10
    assert not is_holdout("00000001" + "f" * 56)
    assert is_holdout("0000000a" + "f" * 56)  # 10
    assert [is_holdout(_sha(i)) for i in range(200)] == [is_holdout(_sha(i)) for i in range(200)]


def test_about_a_tenth_of_images_are_held_out_in_every_label() -> None:
    # GIVEN 20 000 image hashes spread over four labels
    hashes = [_sha(i) for i in range(20_000)]
    labels = [("apple", "banana", "cherry", "kiwi")[i % 4] for i in range(20_000)]

    # WHEN each is tested
    held = np.array([is_holdout(h) for h in hashes])

    # THEN a tenth are held out (±5 standard deviations), overall and within each label
    assert 0.089 < held.mean() < 0.111
    for label in set(labels):
        in_label = np.array([held[i] for i, name in enumerate(labels) if name == label])
        assert 0.078 < in_label.mean() < 0.122


@pytest.mark.parametrize("sha", ["0" * 63, "G" * 64, "A" * 64, " " + "0" * 63])
def test_a_malformed_hash_is_refused(sha: str) -> None:
    with pytest.raises(ClassifierError, match="expected 64 lowercase hex digits, got"):
        is_holdout(sha)


def test_merging_in_any_order_and_grouping_gives_one_sample() -> None:
    # GIVEN rows of five labels, cut into chunks that bring new labels late (so the per-label bound shrinks)
    everything = _reservoir({"apple": 40, "banana": 25, "cherry": 9, "kiwi": 30, "lemon": 3})
    by_label = np.argsort(everything.labels, kind="stable")
    chunks = [_rows(everything, part) for part in np.array_split(by_label, 7)]
    one_shot = merge_reservoir(Reservoir.empty(D), everything, cap=20)

    for seed in range(5):
        # WHEN the chunks are merged pairwise in a random order and tree shape
        rng = np.random.default_rng(seed)
        pool = list(chunks)
        while len(pool) > 1:
            i, j = rng.choice(len(pool), size=2, replace=False)
            merged = merge_reservoir(pool[i], pool[j], cap=20)
            pool = [r for index, r in enumerate(pool) if index not in (i, j)] + [merged]

        # THEN the sample is the one-shot sample
        assert _same(pool[0], one_shot)


def test_each_label_keeps_its_smallest_hashes_within_the_cap() -> None:
    # GIVEN 5 labels and room for 20 rows: 4 a label
    everything = _reservoir({"apple": 40, "banana": 25, "cherry": 9, "kiwi": 30, "lemon": 3})

    # WHEN the rows are merged into an empty reservoir
    sample = merge_reservoir(Reservoir.empty(D), everything, cap=20)

    # THEN each label keeps its 4 smallest hashes (all 3 of lemon), with their features
    assert sample.n == 19
    for label in ("apple", "banana", "cherry", "kiwi", "lemon"):
        expected = sorted(everything.sha256[everything.labels == label].tolist())[:4]
        assert sample.sha256[sample.labels == label].tolist() == expected
    position = {sha: i for i, sha in enumerate(everything.sha256.tolist())}
    np.testing.assert_array_equal(sample.features, everything.features[[position[s] for s in sample.sha256]])


def test_every_label_keeps_a_row_even_past_the_cap() -> None:
    sample = merge_reservoir(Reservoir.empty(D), _reservoir({"a": 3, "b": 3, "c": 3}), cap=2)

    assert sorted(sample.labels.tolist()) == ["a", "b", "c"]


def test_a_row_merged_twice_is_kept_once() -> None:
    rows = _reservoir({"apple": 5, "banana": 4})

    twice = merge_reservoir(rows, rows, cap=100)
    again = merge_reservoir(twice, _rows(rows, np.arange(3)), cap=100)

    assert twice.n == again.n == 9
    assert len(set(again.sha256.tolist())) == 9


def test_reservoir_round_trips_through_npz() -> None:
    for rows in (_reservoir({"apple": 5, "banana": 4}), Reservoir.empty(D)):
        loaded = load_reservoir(reservoir_to_npz(rows))

        assert _same(loaded, rows)
        assert loaded.features.dtype == np.float32
        assert loaded.d == D


def test_reservoir_shapes_are_checked() -> None:
    with pytest.raises(ClassifierError, match=r"expected sha256 \(n,\), labels \(n,\) and features \(n, d\)"):
        Reservoir.from_rows(["a"], ["x", "y"], np.zeros((1, D)))
    with pytest.raises(ClassifierError, match="expected reservoirs of dimension 4, got 3"):
        merge_reservoir(Reservoir.empty(4), Reservoir.empty(3))


def _clusters(
    sizes: dict[str, int], *, seed: int, spread: float
) -> tuple[npt.NDArray[np.float64], list[str]]:
    rng = np.random.default_rng(seed)
    centres = {label: rng.standard_normal(D) * spread for label in sizes}
    x = np.concatenate([centres[label] + rng.standard_normal((size, D)) for label, size in sizes.items()])
    return x, [label for label, size in sizes.items() for _ in range(size)]


def _holdout_of(x: npt.NDArray[np.float64], labels: list[str]) -> Reservoir:
    return Reservoir.from_rows([_sha(i) for i in range(len(labels))], labels, x)


def test_a_perfect_classifier_answers_everything() -> None:
    # GIVEN well-separated labels and a holdout drawn like the training rows
    train, train_labels = _clusters({"apple": 30, "banana": 30, "cherry": 30}, seed=0, spread=50.0)
    test, test_labels = _clusters({"apple": 10, "banana": 10, "cherry": 10}, seed=0, spread=50.0)
    pca = fit_pca(PcaState.from_rows(train), n_components=3)
    classifier = fit_classifier(LabelStats.from_rows(train, train_labels), pca)

    # WHEN it is evaluated
    report = evaluate(classifier, _holdout_of(test, test_labels), gain=1.0, loss=5.0)

    # THEN every answer is right, so answering everything earns most, and the report is plain JSON
    assert (report["n"], report["accuracy"], report["macro_f1"]) == (30, 1.0, 1.0)
    assert report["per_label_recall"] == {"apple": 1.0, "banana": 1.0, "cherry": 1.0}
    assert report["confusion"] == {
        "labels": ["apple", "banana", "cherry"],
        "matrix": [[10, 0, 0], [0, 10, 0], [0, 0, 10]],
    }
    assert (report["best_threshold"], report["net_revenue_per_1000"]) == (0.0, 1000.0)
    assert (report["answered_fraction"], report["answered_accuracy"]) == (1.0, 1.0)
    assert report["curve"]["threshold"] == list(PLOT_THRESHOLDS)
    json.dumps(report, allow_nan=False)


def test_labels_not_offered_count_as_wrong_when_answered_and_cost_nothing_withheld() -> None:
    # GIVEN a classifier that withholds "quince" (2 training images), and a holdout with quinces in it
    train, train_labels = _clusters({"apple": 30, "banana": 30, "quince": 2}, seed=1, spread=4.0)
    test, test_labels = _clusters({"apple": 40, "banana": 40, "quince": 20}, seed=1, spread=4.0)
    pca = fit_pca(PcaState.from_rows(train), n_components=D)
    classifier = fit_classifier(LabelStats.from_rows(train, train_labels), pca)
    assert classifier.withheld_labels == ("quince",)

    # WHEN it is evaluated with a wrong answer costing 5 right ones
    report = evaluate(classifier, _holdout_of(test, test_labels), gain=1.0, loss=5.0)

    # THEN the quinces are wrong answers at threshold 0: in accuracy, recall, the confusion matrix and macro F1
    proba = predict_proba(classifier, test)
    predicted = np.asarray(classifier.labels)[proba.argmax(axis=1)]
    correct = predicted == np.asarray(test_labels)
    assert report["accuracy"] == pytest.approx(correct.mean())
    assert report["accuracy"] <= 0.8
    assert report["per_label_recall"]["quince"] == 0.0
    assert report["confusion"]["labels"] == ["apple", "banana", "quince"]
    assert report["confusion"]["matrix"][2][2] == 0
    assert sum(report["confusion"]["matrix"][2]) == 20
    assert report["not_offered"] == 20
    assert report["macro_f1"] < 2 / 3 + 1e-9  # quince's F1 is 0

    # AND at the best threshold, revenue counts right and wrong answers only; withheld rows earn nothing
    answered = proba.max(axis=1) >= report["best_threshold"]
    right, wrong = int((answered & correct).sum()), int((answered & ~correct).sum())
    assert report["net_revenue_per_1000"] == pytest.approx((right - 5 * wrong) * 1000 / 100)
    assert report["net_revenue_per_1000"] > (correct.sum() - 5 * (~correct).sum()) * 1000 / 100
    assert report["answered_fraction"] == pytest.approx(answered.mean())
    assert report["answered_accuracy"] == pytest.approx(right / answered.sum())


def test_evaluating_needs_holdout_rows_of_the_classifiers_dimension() -> None:
    train, labels = _clusters({"apple": 10, "banana": 10}, seed=2, spread=10.0)
    classifier = fit_classifier(LabelStats.from_rows(train, labels), fit_pca(PcaState.from_rows(train)))

    with pytest.raises(ClassifierError, match="expected at least one holdout row to evaluate on, got none"):
        evaluate(classifier, Reservoir.empty(D), gain=1.0, loss=5.0)
    with pytest.raises(ClassifierError, match="expected holdout features of dimension 4, got 3"):
        evaluate(classifier, Reservoir.empty(3), gain=1.0, loss=5.0)
