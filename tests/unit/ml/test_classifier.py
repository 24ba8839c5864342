"""The incremental discriminant equals a one-shot fit, and scikit-learn's shrunk LDA, whatever the merge order."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from pomona.ml.classifier import (
    DEFAULT_SHRINKAGE,
    Classifier,
    ClassifierError,
    LabelStats,
    answer,
    classifier_to_npz,
    fit_classifier,
    label_stats_to_npz,
    load_classifier,
    load_label_stats,
    merge_label_stats,
    predict,
    predict_proba,
    within_scatter,
)
from pomona.ml.pca import PcaModel, PcaState, fit_pca, project

Array = npt.NDArray[np.float64]

D = 12
K = 6


def _labelled(
    seed: int, *, sizes: dict[str, int], d: int = D, spread: float = 1.5
) -> tuple[Array, list[str]]:
    """Anisotropic Gaussian blobs, one per label, `spread` within-class deviations apart, far from the origin.

    Close enough that the probabilities are not all 0 or 1, so comparing them means something.
    """
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((d, d)) * 10.0 ** rng.uniform(-1, 1, size=d)
    offset = rng.uniform(-100, 100, size=d)
    parts, labels = [], []
    for label, size in sizes.items():
        centre = rng.standard_normal(d) * spread
        parts.append((rng.standard_normal((size, d)) + centre) @ mixing + offset)
        labels += [label] * size
    order = rng.permutation(len(labels))
    return np.concatenate(parts)[order], [labels[i] for i in order]


def _pca(x: Array, k: int = K) -> PcaModel:
    return fit_pca(PcaState.from_rows(x), n_components=k)


def _merge_in_random_tree(parts: list[LabelStats], rng: np.random.Generator) -> LabelStats:
    """Merge random pairs until one is left: every order and tree shape is reachable."""
    pool = list(parts)
    while len(pool) > 1:
        i, j = rng.choice(len(pool), size=2, replace=False)
        merged = merge_label_stats(pool[i], pool[j])
        pool = [s for index, s in enumerate(pool) if index not in (i, j)] + [merged]
    return pool[0]


def _softmax(scores: Array) -> Array:
    weights = np.exp(scores - scores.max(axis=1, keepdims=True))
    return np.asarray(weights / weights.sum(axis=1, keepdims=True), dtype=np.float64)


SIZES = {"apple": 60, "banana": 45, "cherry": 80, "kiwi": 30, "lemon": 50}


@pytest.mark.parametrize("shrinkage", [0.0, DEFAULT_SHRINKAGE, 0.7])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_merged_chunks_fit_the_one_shot_model_and_sklearns_lda(seed: int, shrinkage: float) -> None:
    # GIVEN labelled rows, a PCA of them, and their statistics built in uneven chunks (one empty, several
    # missing labels) merged in a random order and tree shape
    x, labels = _labelled(seed, sizes=SIZES)
    x_test = x[:100] + np.random.default_rng(seed).standard_normal((100, D))  # near the training rows
    pca = _pca(x)
    rng = np.random.default_rng(seed + 100)
    cuts = np.sort(rng.choice(np.arange(1, len(labels)), size=9, replace=False))
    cuts = np.insert(cuts, 3, cuts[2])  # an empty chunk
    chunks = [
        LabelStats.from_rows(x[lo:hi], labels[lo:hi])
        for lo, hi in zip([0, *cuts], [*cuts, len(labels)], strict=True)
    ]
    merged = _merge_in_random_tree(chunks, rng)

    # WHEN the classifier is fitted from the merged statistics and from one-shot ones
    incremental = fit_classifier(merged, pca, shrinkage=shrinkage)
    one_shot = fit_classifier(LabelStats.from_rows(x, labels), pca, shrinkage=shrinkage)

    # THEN both are the same model
    assert incremental.labels == one_shot.labels == tuple(sorted(SIZES))
    np.testing.assert_allclose(incremental.coef, one_shot.coef, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(incremental.intercept, one_shot.intercept, rtol=1e-8)
    proba = predict_proba(incremental, x_test)
    np.testing.assert_allclose(proba, predict_proba(one_shot, x_test), rtol=1e-8, atol=1e-12)

    # AND the same as scikit-learn's shrunk LDA on every training row projected by the PCA
    lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=shrinkage)
    lda.fit(project(pca, x).astype(np.float64), labels)
    assert tuple(lda.classes_) == incremental.labels
    np.testing.assert_allclose(incremental.coef, lda.coef_, rtol=1e-5)
    np.testing.assert_allclose(incremental.intercept, lda.intercept_, rtol=1e-5)
    expected = lda.predict_proba(project(pca, x_test).astype(np.float64))
    np.testing.assert_allclose(proba, expected, atol=1e-6)
    assert 0.05 < proba.max(axis=1).min() < 0.95  # the probabilities are not saturated: the check bites


def test_the_shared_covariance_is_the_prior_weighted_shrunk_per_label_covariance() -> None:
    # GIVEN rows in a k-dimensional space, a PCA keeping every dimension, and a shrinkage
    x, labels = _labelled(3, sizes=SIZES, d=K)
    pca = _pca(x, k=K)
    alpha = 0.3
    classifier = fit_classifier(LabelStats.from_rows(x, labels), pca, shrinkage=alpha)

    # WHEN scikit-learn's recipe is followed by hand: each label's biased covariance, shrunk, weighted by n_c / n
    z = (x - pca.mean) @ pca.components.T
    names = np.asarray(labels)
    covariance = np.zeros((K, K))
    for label in classifier.labels:
        block = np.cov(z[names == label], rowvar=False, bias=True)
        shrunk = (1 - alpha) * block + alpha * np.trace(block) / K * np.eye(K)
        covariance += shrunk * (names == label).mean()

    # THEN the classifier's coefficients solve that covariance against the label means
    means = np.stack([z[names == label].mean(axis=0) for label in classifier.labels])
    np.testing.assert_allclose(classifier.coef @ covariance, means, rtol=1e-9, atol=1e-9)


def test_within_scatter_is_the_sum_of_each_labels_scatter() -> None:
    x, labels = _labelled(4, sizes=SIZES)
    names = np.asarray(labels)

    expected = sum(
        (x[names == label] - x[names == label].mean(axis=0)).T
        @ (x[names == label] - x[names == label].mean(axis=0))
        for label in SIZES
    )

    np.testing.assert_allclose(
        within_scatter(LabelStats.from_rows(x, labels)), expected, rtol=1e-9, atol=1e-6
    )


def test_merging_keeps_counts_and_means_of_labels_on_either_side() -> None:
    x, labels = _labelled(5, sizes={"apple": 6, "banana": 4, "cherry": 3})
    names = np.asarray(labels)
    left = names != "cherry"

    merged = merge_label_stats(
        LabelStats.from_rows(x[left], list(names[left])), LabelStats.from_rows(x[~left], list(names[~left]))
    )

    assert merged.counts == {"apple": 6, "banana": 4, "cherry": 3}
    for label in ("apple", "banana", "cherry"):
        np.testing.assert_allclose(merged.means[label], x[names == label].mean(axis=0), rtol=1e-12)
    assert merged.total.n == 13
    assert merge_label_stats(LabelStats.empty(D), merged).counts == merged.counts


def test_labels_with_too_few_images_are_withheld_but_inform_the_covariance() -> None:
    # GIVEN a label with 3 training images among labels with many
    x, labels = _labelled(6, sizes={**SIZES, "quince": 3})
    x_test = x[:50]
    pca = _pca(x)

    # WHEN the classifier needs 5 images per label
    classifier = fit_classifier(LabelStats.from_rows(x, labels), pca, min_label_images=5)

    # THEN the label is not offered, and the others score as in an LDA of every row with its column dropped
    assert classifier.withheld_labels == ("quince",)
    assert classifier.labels == tuple(sorted(SIZES))
    lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=DEFAULT_SHRINKAGE)
    lda.fit(project(pca, x).astype(np.float64), labels)
    scores = lda.decision_function(project(pca, x_test).astype(np.float64))
    offered = np.isin(lda.classes_, classifier.labels)
    np.testing.assert_allclose(predict_proba(classifier, x_test), _softmax(scores[:, offered]), atol=1e-6)
    assert set(predict(classifier, x_test)) <= set(SIZES)


def test_fewer_than_two_offered_labels_is_refused() -> None:
    x, labels = _labelled(7, sizes={"apple": 10, "banana": 4})

    with pytest.raises(
        ClassifierError, match=r"at least 2 labels with 5 or more images, got 1 \(of 2 labels"
    ):
        fit_classifier(LabelStats.from_rows(x, labels), _pca(x))


def test_predictions_are_the_most_probable_labels_and_separated_blobs_are_classified() -> None:
    x, labels = _labelled(8, sizes=SIZES, spread=20.0)
    classifier = fit_classifier(LabelStats.from_rows(x, labels), _pca(x))

    proba = predict_proba(classifier, x)
    predicted = predict(classifier, x)

    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    assert predicted.tolist() == [classifier.labels[i] for i in proba.argmax(axis=1)]
    assert (predicted == np.asarray(labels)).mean() > 0.95


def test_probabilities_stay_finite_far_from_the_training_rows() -> None:
    x, labels = _labelled(9, sizes=SIZES)
    classifier = fit_classifier(LabelStats.from_rows(x, labels), _pca(x))

    proba = predict_proba(classifier, x[:5] * 1e8)

    assert np.isfinite(proba).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


def test_an_answer_names_the_top_label_only_when_it_reaches_the_threshold() -> None:
    # GIVEN a classifier and one row it is unsure about
    x, labels = _labelled(10, sizes=SIZES)
    classifier = fit_classifier(LabelStats.from_rows(x, labels), _pca(x))
    proba = predict_proba(classifier, x)
    row = int(np.argmin(proba.max(axis=1)))
    p = np.sort(predict_proba(classifier, x[row : row + 1])[0])[::-1]  # as `answer` computes it, to the bit

    # WHEN it answers below and above that row's confidence
    sure = answer(dataclasses.replace(classifier, threshold=float(p[0])), x[row])
    unsure = answer(dataclasses.replace(classifier, threshold=float(np.nextafter(p[0], 1.0))), x[row])

    # THEN the top three are listed either way, by decreasing probability, the label only when answered
    assert sure.answered
    assert sure.label == classifier.labels[int(proba[row].argmax())]
    assert not unsure.answered
    assert unsure.label is None
    for reply in (sure, unsure):
        assert reply.confidence == pytest.approx(p[0])
        assert [q for _, q in reply.top] == pytest.approx(p[:3].tolist())
        assert reply.top[0][0] == classifier.labels[int(proba[row].argmax())]


def test_an_answer_lists_at_most_as_many_labels_as_there_are() -> None:
    x, labels = _labelled(11, sizes={"apple": 10, "banana": 10})
    classifier = fit_classifier(LabelStats.from_rows(x, labels), _pca(x))

    reply = answer(classifier, x[0])

    assert reply.answered  # threshold 0.0: answer everything
    assert [label for label, _ in reply.top] in (["apple", "banana"], ["banana", "apple"])


def test_classifier_round_trips_through_npz() -> None:
    x, labels = _labelled(12, sizes={**SIZES, "quince": 2})
    classifier = dataclasses.replace(fit_classifier(LabelStats.from_rows(x, labels), _pca(x)), threshold=0.75)

    loaded = load_classifier(classifier_to_npz(classifier))

    assert (loaded.labels, loaded.withheld_labels) == (classifier.labels, ("quince",))
    assert (loaded.n_train, loaded.shrinkage, loaded.threshold) == (len(labels), DEFAULT_SHRINKAGE, 0.75)
    for name in ("coef", "intercept", "pca_mean", "pca_components"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(classifier, name))
    np.testing.assert_array_equal(predict_proba(loaded, x), predict_proba(classifier, x))


@pytest.mark.parametrize("sizes", [pytest.param(SIZES, id="labels"), pytest.param({}, id="empty")])
def test_label_stats_round_trip_through_npz(sizes: dict[str, int]) -> None:
    x, labels = _labelled(13, sizes=sizes) if sizes else (np.empty((0, D)), [])
    stats = LabelStats.from_rows(x, labels)

    loaded = load_label_stats(label_stats_to_npz(stats))

    assert loaded.counts == stats.counts
    assert loaded.means.keys() == stats.means.keys()
    for label, mean in stats.means.items():
        np.testing.assert_array_equal(loaded.means[label], mean)
    assert loaded.total.n == stats.total.n
    np.testing.assert_array_equal(loaded.total.scatter, stats.total.scatter)


def test_loading_refuses_what_is_not_a_classifier_and_never_unpickles() -> None:
    buffer = io.BytesIO()
    np.savez(buffer, labels=np.array([{"evil": 1}], dtype=object))

    with pytest.raises(ClassifierError, match=r"expected a classifier \.npz file, got 9 bytes"):
        load_classifier(b"not a npz")
    with pytest.raises(ClassifierError, match=r"expected a classifier \.npz file"):
        load_classifier(buffer.getvalue())
    with pytest.raises(ClassifierError, match=r"expected arrays \['counts'"):
        load_label_stats(classifier_to_npz(_tiny_classifier()))


def _tiny_classifier() -> Classifier:
    return Classifier(
        labels=("a", "b"),
        coef=np.ones((2, 1)),
        intercept=np.zeros(2),
        pca_mean=np.zeros(3),
        pca_components=np.ones((1, 3)),
        n_train=10,
        shrinkage=0.1,
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        pytest.param(
            lambda: LabelStats.from_rows(np.zeros((3, D)), ["a", "b"]),
            r"expected rows of shape \(2, d\) for 2 labels, got shape \(3, 12\)",
            id="rows-vs-labels",
        ),
        pytest.param(
            lambda: merge_label_stats(LabelStats.empty(3), LabelStats.empty(4)),
            "expected statistics of dimension 3, got 4",
            id="merge-dimensions",
        ),
        pytest.param(
            lambda: LabelStats(total=PcaState.empty(2), counts={"a": 1}, means={"a": np.zeros(2)}),
            r"expected label counts >= 1 summing to the total's 0 rows, got \{'a': 1\}",
            id="counts-vs-total",
        ),
        pytest.param(
            lambda: LabelStats(total=PcaState.empty(2), counts={}, means={"a": np.zeros(2)}),
            r"expected the same labels in counts and means, got \[\] and \['a'\]",
            id="labels-differ",
        ),
        pytest.param(
            lambda: predict_proba(_tiny_classifier(), np.zeros((2, 4))),
            r"expected features of shape \(n, 3\), got shape \(2, 4\)",
            id="feature-dimension",
        ),
        pytest.param(
            lambda: answer(_tiny_classifier(), np.zeros((1, 3))),
            r"expected one feature row of shape \(3,\), got shape \(1, 3\)",
            id="answer-row",
        ),
        pytest.param(
            lambda: dataclasses.replace(_tiny_classifier(), labels=("b", "a")),
            "expected sorted distinct labels",
            id="unsorted-labels",
        ),
        pytest.param(
            lambda: dataclasses.replace(_tiny_classifier(), intercept=np.zeros(3)),
            r"expected coef \(2, k\), intercept \(2,\).*got \(2, 1\), \(3,\)",
            id="intercept-shape",
        ),
        pytest.param(
            lambda: fit_classifier(LabelStats.empty(3), _pca(np.eye(4), k=2)),
            "expected a PCA of dimension 3, got 4",
            id="pca-dimension",
        ),
    ],
)
def test_bad_inputs_are_refused_with_what_was_expected(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ClassifierError, match=message):
        call()
