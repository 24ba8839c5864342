"""The holdout: a fixed tenth of the images, never trained on, kept in a bounded sample that scores each refit.

Which images are held out is a function of their sha256 alone (`is_holdout`), so every run, partition and
re-run agrees without coordination, and the label plays no part. Held-out rows go into a `Reservoir`, merged
by `merge_reservoir` (per label, the rows with the smallest sha256: a uniform sample, since the hash is, and
one that does not depend on the order of the merges). `evaluate` scores a classifier on it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.metrics import confusion_matrix, f1_score

from pomona.ml.classifier import Classifier, ClassifierError, Strings, distances, predict_proba
from pomona.ml.npz import from_npz, to_npz
from pomona.ml.quality import PLOT_THRESHOLDS, best_threshold, net_revenue_curve

# One image in HOLDOUT_MODULUS is held out: those whose sha256's first 8 hex digits, read as a number, are a
# multiple of it (a tenth of the hash space up to 2⁻³², as 2³² is not a multiple of 10).
HOLDOUT_MODULUS = 10
# The reservoir's default bound on rows: 20 000 × 1280 float32 features are 100 MB.
RESERVOIR_CAP = 20_000

_SHA256 = re.compile(r"[0-9a-f]{64}")
_RESERVOIR_ARRAYS = ("sha256", "labels", "features")


def is_holdout(sha256_hex: str) -> bool:
    """Whether the image with this sha256 (64 lowercase hex digits) is held out of training."""
    if not _SHA256.fullmatch(sha256_hex):
        raise ClassifierError(f"expected 64 lowercase hex digits, got {sha256_hex!r}")
    return int(sha256_hex[:8], 16) % HOLDOUT_MODULUS == 0


@dataclass(frozen=True, eq=False)
class Reservoir:
    """Held-out rows: each image's sha256 and label, and its features (n×d float32)."""

    sha256: Strings
    labels: Strings
    features: npt.NDArray[np.float32]

    def __post_init__(self) -> None:
        sha256 = np.array(self.sha256, dtype=np.str_).reshape(-1)
        labels = np.array(self.labels, dtype=np.str_).reshape(-1)
        features = np.array(self.features, dtype=np.float32)
        if features.ndim != 2 or sha256.size != labels.size or features.shape[0] != sha256.size:
            raise ClassifierError(
                f"expected sha256 (n,), labels (n,) and features (n, d), got {sha256.shape}, {labels.shape} "
                f"and {features.shape}"
            )
        for name, array in (("sha256", sha256), ("labels", labels), ("features", features)):
            array.flags.writeable = False
            object.__setattr__(self, name, array)

    @property
    def n(self) -> int:
        return int(self.sha256.size)

    @property
    def d(self) -> int:
        return int(self.features.shape[1])

    @classmethod
    def from_rows(cls, sha256: Sequence[str], labels: Sequence[str], features: npt.ArrayLike) -> Reservoir:
        """Held-out rows as they come: hashes and labels as strings, features (n×d) of any float dtype."""
        return cls(
            sha256=np.asarray(sha256, dtype=np.str_),
            labels=np.asarray(labels, dtype=np.str_),
            features=np.asarray(features, dtype=np.float32),
        )

    @classmethod
    def empty(cls, d: int) -> Reservoir:
        return cls(
            sha256=np.empty(0, dtype=np.str_),
            labels=np.empty(0, dtype=np.str_),
            features=np.empty((0, d), dtype=np.float32),
        )


def merge_reservoir(a: Reservoir, b: Reservoir, *, cap: int = RESERVOIR_CAP) -> Reservoir:
    """The rows of `a` and `b` kept in a bounded sample: per label, the k with the smallest sha256.

    k = max(1, cap // labels), so there are at most `cap` rows while there are at most `cap` labels, and every
    label keeps one. A row is its (sha256, label): a row met twice is kept once. The result is the same
    whatever the order and grouping of the merges, since the labels seen only grow and k only shrinks: the
    smallest k of a union are among the smallest k' ≥ k of each part. Rows come out sorted by label, then
    sha256. (The seen index commits each sha256 once, under one label; were one under two labels, each would
    keep it, as dropping one would depend on which merge met it first.)
    """
    if a.d != b.d:
        raise ClassifierError(f"expected reservoirs of dimension {a.d}, got {b.d}")
    if cap < 1:
        raise ClassifierError(f"expected cap >= 1, got {cap}")
    sha256 = np.concatenate([a.sha256, b.sha256])
    labels = np.concatenate([a.labels, b.labels])
    order = np.lexsort((sha256, labels))  # by label, then sha256
    sha256, labels = sha256[order], labels[order]
    first = np.ones(sha256.size, dtype=bool)
    first[1:] = (sha256[1:] != sha256[:-1]) | (labels[1:] != labels[:-1])
    order, sha256, labels = order[first], sha256[first], labels[first]

    names, starts = np.unique(labels, return_index=True)
    per_label = max(1, cap // max(1, names.size))
    rank = np.arange(labels.size) - np.repeat(starts, np.diff(np.append(starts, labels.size)))
    kept = rank < per_label
    features = np.concatenate([a.features, b.features])[order[kept]]
    return Reservoir(sha256=sha256[kept], labels=labels[kept], features=features)


def evaluate(
    classifier: Classifier, reservoir: Reservoir, *, gain: float, loss: float, min_threshold: float = 0.0
) -> dict[str, Any]:
    """The classifier's scores on the holdout, as a JSON-serialisable dict.

    A right answer earns `gain`, a wrong one costs `loss`, a withheld one nothing. Rows of a label the
    classifier does not offer (withheld for too few images, or never trained on) are scored as users would meet
    them: wrong when answered (they count against accuracy and revenue, and macro F1 gives their label 0),
    nothing when withheld. `best_threshold` maximises net revenue per 1000 holdout images over every distinct
    confidence and `PLOT_THRESHOLDS` from `min_threshold` up (the lowest among equals); `curve` holds the
    plotting grid only.
    """
    if reservoir.d != classifier.d:
        raise ClassifierError(f"expected holdout features of dimension {classifier.d}, got {reservoir.d}")
    if reservoir.n == 0:
        raise ClassifierError("expected at least one holdout row to evaluate on, got none")
    proba = predict_proba(classifier, reservoir.features)
    # An unfamiliar image is never answered, whatever its confidence: below every threshold the curve tries.
    unfamiliar = distances(classifier, reservoir.features) > classifier.familiar_distance
    confidence = np.where(unfamiliar, -1.0, proba.max(axis=1))
    predicted = np.asarray(classifier.labels, dtype=np.str_)[proba.argmax(axis=1)]
    truth = reservoir.labels
    correct = predicted == truth

    candidates = np.union1d(np.union1d(PLOT_THRESHOLDS, confidence), [min_threshold])
    threshold, revenue = best_threshold(
        net_revenue_curve(
            confidence,
            correct,
            gain=gain,
            loss=loss,
            thresholds=candidates[candidates >= min_threshold].tolist(),
        )
    )
    answered = confidence >= threshold
    plotted = net_revenue_curve(confidence, correct, gain=gain, loss=loss, thresholds=PLOT_THRESHOLDS)
    labels = np.union1d(truth, classifier.labels)
    matrix = confusion_matrix(truth, predicted, labels=labels)  # rows: true label, columns: answer
    support = matrix.sum(axis=1)
    return {
        "n": reservoir.n,
        "gain": gain,
        "loss": loss,
        "accuracy": float(correct.mean()),
        "macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0.0)),
        "per_label_recall": {
            str(label): float(matrix[i, i] / support[i]) for i, label in enumerate(labels) if support[i]
        },
        "confusion": {"labels": labels.tolist(), "matrix": matrix.tolist()},
        "not_offered": int((~np.isin(truth, classifier.labels)).sum()),
        "temperature": classifier.temperature,
        "min_threshold": min_threshold,
        "best_threshold": threshold,
        "net_revenue_per_1000": revenue,
        "familiar_distance": classifier.familiar_distance
        if np.isfinite(classifier.familiar_distance)
        else None,
        # Held-out photos of known labels refused as unfamiliar: each one a photo the app says it does not know.
        "unfamiliar_fraction": float(unfamiliar.mean()),
        "answered_fraction": float(answered.mean()),
        "answered_accuracy": float(correct[answered].mean()) if answered.any() else None,
        "curve": {
            "threshold": [point[0] for point in plotted],
            "net_revenue_per_1000": [point[1] for point in plotted],
            "coverage": [point[2] for point in plotted],
        },
    }


def reservoir_to_npz(reservoir: Reservoir) -> bytes:
    """The holdout sample the next evaluation merges into; uncompressed, as the PCA model is."""
    return to_npz(sha256=reservoir.sha256, labels=reservoir.labels, features=reservoir.features)


def load_reservoir(data: bytes) -> Reservoir:
    arrays = from_npz(data, _RESERVOIR_ARRAYS, what="holdout reservoir", error=ClassifierError)
    return Reservoir(sha256=arrays["sha256"], labels=arrays["labels"], features=arrays["features"])
