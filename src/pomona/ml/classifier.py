"""Exact incremental fruit classifier: mergeable per-label statistics and a linear discriminant refit from them.

A linear discriminant (one covariance shared by every label) needs, of its training rows, only their count,
mean and scatter (a `PcaState`) and each label's count and mean: `LabelStats`. Each Spark partition summarises
its rows with `LabelStats.from_rows`, the driver folds the summaries into the stored statistics with
`merge_label_stats`, and `fit_classifier` refits in the PCA space without re-reading history. The refit equals
scikit-learn's `LinearDiscriminantAnalysis(solver="lsqr", shrinkage=α)` fitted on every training row projected
by the same PCA, up to rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pomona.core.errors import PomonaError
from pomona.ml.npz import from_npz, frozen, to_npz
from pomona.ml.pca import PcaModel, PcaState, merge_pca_state

Array = npt.NDArray[np.float64]
Strings = npt.NDArray[np.str_]

# A fixed ridge on the PCA-space covariance: 10 % of it is replaced by its average variance. The trailing
# components of a PCA kept to 95 % of the variance carry far less than the average, and an unshrunk
# discriminant divides by them, so their noise would weigh most; with 5 images for a new label the per-label
# means are noisy too. A data-driven amount (Ledoit-Wolf) needs fourth moments, which the mergeable
# statistics do not hold; 0.1 is the common fixed choice, and it keeps a refit a pure function of them.
DEFAULT_SHRINKAGE = 0.1
# How many (label, probability) pairs an answer lists.
TOP_ANSWERS = 3


class ClassifierError(PomonaError, ValueError):
    """Label statistics, a classifier, a holdout sample or an input does not have the expected shape or size."""


@dataclass(frozen=True, eq=False)
class LabelStats:
    """The training rows' statistics: all rows' (n, mean, scatter), and each label's count and mean."""

    total: PcaState
    counts: dict[str, int]
    means: dict[str, Array]

    def __post_init__(self) -> None:
        if set(self.counts) != set(self.means):
            raise ClassifierError(
                f"expected the same labels in counts and means, got {sorted(self.counts)} and {sorted(self.means)}"
            )
        labels = sorted(self.counts)
        means = {label: frozen(self.means[label]) for label in labels}
        shapes = {mean.shape for mean in means.values()}
        if not shapes <= {(self.total.d,)}:
            raise ClassifierError(f"expected label means of shape ({self.total.d},), got {sorted(shapes)}")
        counts = {label: int(self.counts[label]) for label in labels}
        if any(count < 1 for count in counts.values()) or sum(counts.values()) != self.total.n:
            raise ClassifierError(
                f"expected label counts >= 1 summing to the total's {self.total.n} rows, got {counts}"
            )
        object.__setattr__(self, "counts", counts)
        object.__setattr__(self, "means", means)

    @property
    def d(self) -> int:
        return self.total.d

    @classmethod
    def empty(cls, d: int) -> LabelStats:
        return cls(total=PcaState.empty(d), counts={}, means={})

    @classmethod
    def from_rows(cls, x: npt.ArrayLike, labels: Sequence[str]) -> LabelStats:
        """The statistics of the rows of `x` (n×d, any float dtype) labelled `labels`, in float64."""
        rows = np.asarray(x, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[0] != len(labels):
            raise ClassifierError(
                f"expected rows of shape ({len(labels)}, d) for {len(labels)} labels, got shape {rows.shape}"
            )
        names, index, counts = np.unique(
            np.asarray(labels, dtype=np.str_), return_inverse=True, return_counts=True
        )
        return cls(
            total=PcaState.from_rows(rows),
            counts={str(name): int(count) for name, count in zip(names, counts, strict=True)},
            means={str(name): rows[index == i].mean(axis=0) for i, name in enumerate(names)},
        )


def merge_label_stats(a: LabelStats, b: LabelStats) -> LabelStats:
    """The statistics of the rows of `a` and `b` together; associative and commutative up to rounding."""
    if a.d != b.d:
        raise ClassifierError(f"expected statistics of dimension {a.d}, got {b.d}")
    counts: dict[str, int] = {}
    means: dict[str, Array] = {}
    for label in a.counts.keys() | b.counts.keys():
        n_a, n_b = a.counts.get(label, 0), b.counts.get(label, 0)
        counts[label] = n_a + n_b
        if n_a == 0 or n_b == 0:
            means[label] = a.means[label] if n_b == 0 else b.means[label]
        else:  # the same pairwise update as the total's mean
            means[label] = a.means[label] + (b.means[label] - a.means[label]) * (n_b / (n_a + n_b))
    return LabelStats(total=merge_pca_state(a.total, b.total), counts=counts, means=means)


def within_scatter(stats: LabelStats) -> Array:
    """The pooled within-label scatter: the total scatter less the between-label scatter (an exact identity).

    S_w = S - Σ_c n_c (μ_c - μ)(μ_c - μ)ᵀ, a d×d float64 matrix.
    """
    if not stats.counts:
        return np.array(stats.total.scatter)
    offsets = np.stack(list(stats.means.values())) - stats.total.mean
    counts = np.array(list(stats.counts.values()), dtype=np.float64)
    return np.asarray(stats.total.scatter - (offsets.T * counts) @ offsets, dtype=np.float64)


@dataclass(frozen=True, eq=False)
class Classifier:
    """A linear discriminant in a PCA space: from d-dimensional features to one probability per label.

    `coef` (C×k) and `intercept` (C,) score the projections `(x - pca_mean) @ pca_components.T` for the sorted
    `labels`; the intercept includes each label's log prior, `log_priors`. `withheld_labels` had too few training
    images to be offered. Probabilities are the softmax of the prior-free scores divided by `temperature` (1.0
    until the holdout calibrates it, `pomona.ml.calibration`), plus the log priors: the temperature widens the
    class-conditional densities, not the priors. Answers below `threshold` are withheld (`retrain` sets it).
    """

    labels: tuple[str, ...]
    coef: Array
    intercept: Array
    pca_mean: Array
    pca_components: Array
    n_train: int
    shrinkage: float
    threshold: float = 0.0
    withheld_labels: tuple[str, ...] = ()
    temperature: float = 1.0
    # None: taken as zeros (the priors are then tempered with the rest of the score).
    log_priors: Array | None = None
    # Familiarity (`distances`): the offered labels' means in the PCA space (C×k) and the whitening (k×k) under which
    # distances are Mahalanobis under the shared covariance; a photo farther than `familiar_distance` from every
    # label is unfamiliar. None / inf: no familiarity, nothing refused as unfamiliar.
    class_means: Array | None = None
    whiten: Array | None = None
    familiar_distance: float = float("inf")

    def __post_init__(self) -> None:
        c = len(self.labels)
        k, d = np.shape(self.pca_components) if np.ndim(self.pca_components) == 2 else (-1, -1)
        shapes = (np.shape(self.coef), np.shape(self.intercept), np.shape(self.pca_mean))
        if k < 0 or shapes != ((c, k), (c,), (d,)):
            raise ClassifierError(
                f"expected coef ({c}, k), intercept ({c},), pca_mean (d,) and pca_components (k, d), "
                f"got {shapes[0]}, {shapes[1]}, {shapes[2]} and {np.shape(self.pca_components)}"
            )
        if list(self.labels) != sorted(set(self.labels)) or set(self.labels) & set(self.withheld_labels):
            raise ClassifierError(
                f"expected sorted distinct labels, none withheld, got {self.labels} and {self.withheld_labels}"
            )
        log_priors = np.zeros(c) if self.log_priors is None else frozen(self.log_priors)
        if log_priors.shape != (c,):
            raise ClassifierError(f"expected log_priors of shape ({c},), got {log_priors.shape}")
        object.__setattr__(self, "log_priors", frozen(log_priors))
        if not (np.isfinite(self.temperature) and self.temperature > 0):
            raise ClassifierError(f"expected a finite temperature > 0, got {self.temperature}")
        if (self.class_means is None) != (self.whiten is None):
            raise ClassifierError("expected class_means and whiten together, got one of them")
        if self.class_means is not None and self.whiten is not None:
            found = (np.shape(self.class_means), np.shape(self.whiten))
            if found != ((c, k), (k, k)):
                raise ClassifierError(f"expected class_means ({c}, {k}) and whiten ({k}, {k}), got {found}")
            object.__setattr__(self, "class_means", frozen(self.class_means))
            object.__setattr__(self, "whiten", frozen(self.whiten))
        if not self.familiar_distance > 0:
            raise ClassifierError(f"expected a familiar distance > 0, got {self.familiar_distance}")
        for name in ("coef", "intercept", "pca_mean", "pca_components"):
            object.__setattr__(self, name, frozen(getattr(self, name)))
        object.__setattr__(self, "labels", tuple(str(label) for label in self.labels))
        object.__setattr__(self, "withheld_labels", tuple(str(label) for label in self.withheld_labels))

    @property
    def d(self) -> int:
        return self.pca_mean.size


def fit_classifier(
    stats: LabelStats,
    pca: PcaModel,
    *,
    shrinkage: float = DEFAULT_SHRINKAGE,
    min_label_images: int = 5,
) -> Classifier:
    """The shrunk linear discriminant of the rows summarised by `stats`, in the space of `pca`.

    Class means m_c = (μ_c - pca.mean) Wᵀ; covariance Σ = W S_w Wᵀ / n (biased), shrunk to
    (1 - α) Σ + α tr(Σ)/k I; priors n_c / n. This is scikit-learn's lsqr solver: it shrinks each label's
    biased covariance and weighs them by priors, which is the same since shrinking is linear.

    Labels with fewer than `min_label_images` images are withheld: not offered as answers. Their rows still
    count in Σ and n (the statistics cannot take a label's scatter out), so the scores of the offered labels are
    exactly those of a discriminant fitted on every row, with the withheld labels' columns dropped.
    """
    if pca.mean.size != stats.d:
        raise ClassifierError(f"expected a PCA of dimension {stats.d}, got {pca.mean.size}")
    if not 0.0 <= shrinkage <= 1.0:
        raise ClassifierError(f"expected shrinkage in [0, 1], got {shrinkage}")
    if min_label_images < 1:
        raise ClassifierError(f"expected min_label_images >= 1, got {min_label_images}")
    offered = [label for label, count in stats.counts.items() if count >= min_label_images]
    if len(offered) < 2:
        raise ClassifierError(
            f"expected at least 2 labels with {min_label_images} or more images, got {len(offered)} "
            f"(of {len(stats.counts)} labels, {stats.total.n} images)"
        )

    axes = pca.components
    k = axes.shape[0]
    covariance = axes @ within_scatter(stats) @ axes.T / stats.total.n
    covariance = (1.0 - shrinkage) * covariance + shrinkage * np.trace(covariance) / k * np.eye(k)
    means = (np.stack([stats.means[label] for label in offered]) - pca.mean) @ axes.T
    coef = np.linalg.lstsq(covariance, means.T, rcond=None)[0].T
    priors = np.array([stats.counts[label] for label in offered], dtype=np.float64) / stats.total.n
    intercept = -0.5 * np.einsum("ck,ck->c", means, coef) + np.log(priors)
    # L with L Lᵀ = Σ⁻¹: ‖(z - m) L‖ is the Mahalanobis distance of z to m under the shared covariance.
    whiten = np.linalg.cholesky(np.linalg.inv(covariance))
    return Classifier(
        labels=tuple(offered),
        coef=coef,
        intercept=intercept,
        pca_mean=pca.mean,
        pca_components=axes,
        n_train=stats.total.n,
        shrinkage=shrinkage,
        withheld_labels=tuple(label for label in stats.counts if label not in offered),
        log_priors=np.log(priors),
        class_means=means,
        whiten=whiten,
    )


def predict_proba(classifier: Classifier, features: npt.ArrayLike) -> Array:
    """Each row's probability for each of `classifier.labels` (n×C): the softmax of the discriminant scores."""
    rows = np.asarray(features, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] != classifier.d:
        raise ClassifierError(f"expected features of shape (n, {classifier.d}), got shape {rows.shape}")
    priors = np.asarray(classifier.log_priors)
    scores = (discriminant_scores(classifier, rows) - priors) / classifier.temperature + priors
    scores -= scores.max(axis=1, keepdims=True)  # exp of at most 0: no overflow
    weights = np.exp(scores)
    return np.asarray(weights / weights.sum(axis=1, keepdims=True), dtype=np.float64)


def discriminant_scores(classifier: Classifier, rows: Array) -> Array:
    """The untempered scores (n×C): log prior + the linear discriminant of each row's projection."""
    return np.asarray(
        (rows - classifier.pca_mean) @ classifier.pca_components.T @ classifier.coef.T + classifier.intercept,
        dtype=np.float64,
    )


def distances(classifier: Classifier, features: npt.ArrayLike) -> Array:
    """Each row's distance to the nearest offered label (n,): the Mahalanobis distance of its projection to the
    label's mean under the discriminant's own shared covariance. Far from every label is far from all it learnt:
    softmax confidence cannot say so, it only compares the labels with each other. Zeros when not known."""
    rows = np.asarray(features, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] != classifier.d:
        raise ClassifierError(f"expected features of shape (n, {classifier.d}), got shape {rows.shape}")
    return projected_distances(classifier, (rows - classifier.pca_mean) @ classifier.pca_components.T)


def projected_distances(classifier: Classifier, projections: npt.ArrayLike) -> Array:
    """`distances` of rows already projected by the classifier's own PCA (n×k)."""
    rows = np.asarray(projections, dtype=np.float64)
    k = classifier.pca_components.shape[0]
    if rows.ndim != 2 or rows.shape[1] != k:
        raise ClassifierError(f"expected projections of shape (n, {k}), got shape {rows.shape}")
    if classifier.class_means is None or classifier.whiten is None:
        return np.zeros(rows.shape[0])
    z = rows @ classifier.whiten
    m = classifier.class_means @ classifier.whiten
    # ‖z - m‖² expanded: n×C, without an n×C×k array (the holdout has up to 20,000 rows).
    squared = (z * z).sum(axis=1)[:, None] - 2.0 * z @ m.T + (m * m).sum(axis=1)[None, :]
    return np.asarray(np.sqrt(np.maximum(squared.min(axis=1), 0.0)), dtype=np.float64)


def predict(classifier: Classifier, features: npt.ArrayLike) -> Strings:
    """Each row's most probable label (the first in sorted order among equals)."""
    best = predict_proba(classifier, features).argmax(axis=1)
    return np.asarray(np.asarray(classifier.labels, dtype=np.str_)[best], dtype=np.str_)


@dataclass(frozen=True)
class Answer:
    """What the classifier tells a user about one image: a label when the image is familiar and the label confident
    enough, and its best guesses; `unfamiliar` when it is far from everything learnt (`distance` beyond the
    classifier's `familiar_distance`)."""

    answered: bool
    label: str | None
    confidence: float
    top: tuple[tuple[str, float], ...]
    unfamiliar: bool = False
    distance: float = 0.0


def answer(classifier: Classifier, features_row: npt.ArrayLike) -> Answer:
    """The answer for one image's features (d,): its top label when it is familiar and its probability reaches the
    threshold."""
    row = np.asarray(features_row, dtype=np.float64)
    if row.shape != (classifier.d,):
        raise ClassifierError(f"expected one feature row of shape ({classifier.d},), got shape {row.shape}")
    proba = predict_proba(classifier, row[None, :])[0]
    order = np.argsort(-proba, kind="stable")[:TOP_ANSWERS]
    top = tuple((classifier.labels[i], float(proba[i])) for i in order)
    confidence = top[0][1]
    distance = float(distances(classifier, row[None, :])[0])
    unfamiliar = distance > classifier.familiar_distance
    answered = confidence >= classifier.threshold and not unfamiliar
    return Answer(
        answered=answered,
        label=top[0][0] if answered else None,
        confidence=confidence,
        top=top,
        unfamiliar=unfamiliar,
        distance=distance,
    )


def classifier_to_npz(classifier: Classifier) -> bytes:
    """The classifier, as the answering side needs it; uncompressed, as the PCA model is."""
    return to_npz(
        labels=np.asarray(classifier.labels, dtype=np.str_),
        coef=classifier.coef,
        intercept=classifier.intercept,
        pca_mean=classifier.pca_mean,
        pca_components=classifier.pca_components,
        n_train=np.int64(classifier.n_train),
        shrinkage=np.float64(classifier.shrinkage),
        threshold=np.float64(classifier.threshold),
        withheld_labels=np.asarray(classifier.withheld_labels, dtype=np.str_),
        temperature=np.float64(classifier.temperature),
        log_priors=np.asarray(classifier.log_priors),
        **(
            {}
            if classifier.class_means is None or classifier.whiten is None
            else {"class_means": classifier.class_means, "whiten": classifier.whiten}
        ),
        familiar_distance=np.float64(classifier.familiar_distance),
    )


def load_classifier(data: bytes) -> Classifier:
    arrays = from_npz(data, _CLASSIFIER_ARRAYS, what="classifier", error=ClassifierError)
    return Classifier(
        labels=tuple(arrays["labels"].tolist()),
        coef=arrays["coef"],
        intercept=arrays["intercept"],
        pca_mean=arrays["pca_mean"],
        pca_components=arrays["pca_components"],
        n_train=int(arrays["n_train"]),
        shrinkage=float(arrays["shrinkage"]),
        threshold=float(arrays["threshold"]),
        withheld_labels=tuple(arrays["withheld_labels"].tolist()),
        temperature=float(arrays["temperature"]),
        log_priors=arrays["log_priors"],
        # A classifier without familiarity is saved without its means and whitening (`classifier_to_npz`).
        class_means=arrays.get("class_means"),
        whiten=arrays.get("whiten"),
        familiar_distance=float(arrays["familiar_distance"]),
    )


def label_stats_to_npz(stats: LabelStats) -> bytes:
    """The statistics the next refit starts from; labels in sorted order, their means as rows."""
    return to_npz(
        total_n=np.int64(stats.total.n),
        total_mean=stats.total.mean,
        total_scatter=stats.total.scatter,
        labels=np.asarray(list(stats.counts), dtype=np.str_),
        counts=np.asarray(list(stats.counts.values()), dtype=np.int64),
        means=np.reshape(list(stats.means.values()), (len(stats.means), stats.d)),
    )


def load_label_stats(data: bytes) -> LabelStats:
    arrays = from_npz(data, _STATS_ARRAYS, what="label statistics", error=ClassifierError)
    labels = arrays["labels"].tolist()
    if not arrays["counts"].shape == arrays["means"].shape[:1] == (len(labels),):
        raise ClassifierError(
            f"expected counts and means for {len(labels)} labels, got {arrays['counts'].shape} and "
            f"{arrays['means'].shape}"
        )
    return LabelStats(
        total=PcaState(n=int(arrays["total_n"]), mean=arrays["total_mean"], scatter=arrays["total_scatter"]),
        counts={label: int(count) for label, count in zip(labels, arrays["counts"], strict=True)},
        means=dict(zip(labels, arrays["means"], strict=True)),
    )


_CLASSIFIER_ARRAYS = (
    "labels",
    "coef",
    "intercept",
    "pca_mean",
    "pca_components",
    "n_train",
    "shrinkage",
    "threshold",
    "withheld_labels",
    "temperature",
    "log_priors",
    "familiar_distance",
)
_STATS_ARRAYS = ("total_n", "total_mean", "total_scatter", "labels", "counts", "means")
