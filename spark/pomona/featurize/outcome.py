"""What becomes of the batch's images, as values: an image not featurized is an `ImageFailure` (quarantined with its
`Reason`, or deferred under S3's error code), and the featurize tasks report a `PartOutcome` that merges with
another in any order. Pure: no I/O, no Spark."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt

from pomona.core.contract import ImageMessage, Reason
from pomona.ml.classifier import LabelStats, merge_label_stats
from pomona.ml.holdout import Reservoir, is_holdout, merge_reservoir
from pomona.ml.pca import PcaState, merge_pca_state


@dataclass(frozen=True)
class ImageFailure:
    """Why an image of the batch has no features: a `Reason` to quarantine it for, or None when it is deferred (its
    message left on the queue to come back), with `error_code` S3's error code (a decoder's exception type when
    the reason is `DECODE_FAILED`)."""

    image: ImageMessage
    reason: Reason | None
    detail: str = ""
    error_code: str | None = None

    @property
    def sha256(self) -> str:
        return self.image.sha256

    @property
    def deferred(self) -> bool:
        return self.reason is None

    def defer(self, error_code: str) -> ImageFailure:
        """This image deferred instead of quarantined: S3 refused its quarantine with `error_code`."""
        return dataclasses.replace(self, reason=None, error_code=error_code)


class PartOutcome(NamedTuple):
    """What featurize tasks tell the driver besides the part files they wrote: their failed images, the part files'
    numbers, the PCA statistics of their features (None: no features), the classifier's statistics of the training
    images among them and the held-out ones (`pomona.ml.holdout`)."""

    failures: list[ImageFailure]
    parts: list[int]
    state: PcaState | None
    training: LabelStats | None = None
    holdout: Reservoir | None = None


def combine_outcomes(a: PartOutcome, b: PartOutcome) -> PartOutcome:
    """Two outcomes as one: associative, so Spark may reduce them in any tree."""
    return PartOutcome(
        a.failures + b.failures,
        a.parts + b.parts,
        merge_optional(a.state, b.state, merge_pca_state),
        merge_optional(a.training, b.training, merge_label_stats),
        merge_optional(a.holdout, b.holdout, merge_reservoir),
    )


_S = TypeVar("_S")


def merge_optional(a: _S | None, b: _S | None, merge: Callable[[_S, _S], _S]) -> _S | None:
    """`merge(a, b)`, or whichever of them is there: statistics of no rows are None, not empty."""
    return a if b is None else b if a is None else merge(a, b)


def part_statistics(
    images: Sequence[ImageMessage], rows: npt.NDArray[np.float32]
) -> tuple[PcaState, LabelStats, Reservoir]:
    """The statistics of a part's featurized `images` (`rows`, n×d, in order): the PCA state of them all, the
    classifier's of the training images, and the held-out ones. Each scatter matrix is computed once: the PCA state
    is the training rows' (from their `LabelStats`) merged with the held-out rows'."""
    held = np.array([is_holdout(image.sha256) for image in images], dtype=bool)
    labels = np.array([image.label for image in images], dtype=np.str_)
    training = LabelStats.from_rows(rows[~held], labels[~held].tolist())
    state = merge_pca_state(training.total, PcaState.from_rows(rows[held]))
    shas = [image.sha256 for image, h in zip(images, held, strict=True) if h]
    return state, training, Reservoir.from_rows(shas, labels[held].tolist(), rows[held])


@dataclass(frozen=True)
class Settled:
    """The batch's failed images once the driver tried to quarantine them: those quarantined, and those deferred
    (by the executors, or because S3 refused their quarantine)."""

    quarantined: list[ImageFailure]
    deferred: list[ImageFailure]

    def waiting(self) -> set[str]:
        """The sha256 of the images whose messages come back."""
        return {f.sha256 for f in self.deferred}

    def deferred_by_code(self) -> Counter[str | None]:
        return Counter(f.error_code for f in self.deferred)
