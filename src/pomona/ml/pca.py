"""Exact incremental PCA: a mergeable (n, mean, scatter) state and a refit that costs O(d³), not O(history).

Each Spark partition summarises its rows with `PcaState.from_rows`, the driver folds the summaries together
with the stored state through `merge_pca_state` (Chan et al.'s pairwise update, associative and commutative
up to rounding) and refits with `fit_pca`. The stored state is d + d² numbers whatever the number of images
seen, so a refit after a million images costs what a refit after a thousand does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pomona.core.errors import PomonaError
from pomona.core.settings import Settings
from pomona.ml.npz import from_npz, frozen, to_npz

Array = npt.NDArray[np.float64]

# Relative slack on the variance target: cumulative ratios such as 0.6 + 0.3 round to 0.8999999999999999.
_TARGET_SLACK = 1e-12
# The job's defaults for how many components a refit keeps.
_DEFAULTS = Settings()


class PcaError(PomonaError, ValueError):
    """A PCA state, model or input does not have the expected shape or size."""


@dataclass(frozen=True, eq=False)
class PcaState:
    """What a PCA needs to know about the rows seen so far: their count, mean and centred scatter matrix."""

    n: int
    mean: Array
    scatter: Array

    def __post_init__(self) -> None:
        mean = frozen(self.mean)
        scatter = frozen(self.scatter)
        if mean.ndim != 1 or scatter.shape != (mean.size, mean.size):
            raise PcaError(
                f"expected a mean of shape (d,) and a scatter of shape (d, d), got {mean.shape} and {scatter.shape}"
            )
        if self.n < 0:
            raise PcaError(f"expected a row count >= 0, got {self.n}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "scatter", scatter)

    @property
    def d(self) -> int:
        return self.mean.size

    @classmethod
    def empty(cls, d: int) -> PcaState:
        return cls(n=0, mean=np.zeros(d), scatter=np.zeros((d, d)))

    @classmethod
    def from_rows(cls, x: npt.ArrayLike) -> PcaState:
        """The state of the rows of `x` (n×d, any float dtype), accumulated in float64."""
        rows = np.asarray(x, dtype=np.float64)
        if rows.ndim != 2:
            raise PcaError(f"expected rows of shape (n, d), got shape {rows.shape}")
        if rows.shape[0] == 0:
            return cls.empty(rows.shape[1])
        mean = rows.mean(axis=0)
        centred = rows - mean
        return cls(n=rows.shape[0], mean=mean, scatter=centred.T @ centred)


def merge_pca_state(a: PcaState, b: PcaState) -> PcaState:
    """The state of the rows of `a` and `b` together (Chan, Golub & LeVeque's pairwise update)."""
    if a.d != b.d:
        raise PcaError(f"expected states of dimension {a.d}, got {b.d}")
    if b.n == 0:
        return a
    if a.n == 0:
        return b
    n = a.n + b.n
    delta = b.mean - a.mean
    return PcaState(
        n=n,
        mean=a.mean + delta * (b.n / n),
        scatter=a.scatter + b.scatter + np.outer(delta, delta) * (a.n * b.n / n),
    )


@dataclass(frozen=True, eq=False)
class PcaModel:
    """A fitted PCA: `components` holds k unit principal axes as rows, by decreasing explained variance."""

    mean: Array
    components: Array
    explained_variance: Array
    explained_variance_ratio: Array
    n_seen: int
    total_variance: float

    def __post_init__(self) -> None:
        shape = np.shape(self.components)
        k, d = shape if len(shape) == 2 else (-1, -1)
        variances = {np.shape(self.explained_variance), np.shape(self.explained_variance_ratio)}
        if d < 0 or np.shape(self.mean) != (d,) or variances != {(k,)}:
            raise PcaError(
                f"expected mean (d,), components (k, d) and variances (k,), got {np.shape(self.mean)}, "
                f"{shape} and {np.shape(self.explained_variance)}, {np.shape(self.explained_variance_ratio)}"
            )
        for name in ("mean", "components", "explained_variance", "explained_variance_ratio"):
            object.__setattr__(self, name, frozen(getattr(self, name)))

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])


def fit_pca(
    state: PcaState,
    *,
    variance_target: float = _DEFAULTS.variance_target,
    max_components: int = _DEFAULTS.max_components,
    n_components: int | None = None,
) -> PcaModel:
    """The PCA of the rows summarised by `state`, the same as scikit-learn's full-SVD PCA on those rows.

    k is `n_components` when given (at most d and n), else the fewest components explaining `variance_target`
    of the variance, at most `max_components`. Each axis's largest-magnitude entry is positive.
    """
    if state.n < 2:
        raise PcaError(f"expected at least 2 rows to fit a PCA, got {state.n}")
    if not 0.0 < variance_target <= 1.0:
        raise PcaError(f"expected variance_target in (0, 1], got {variance_target}")
    if max_components < 1:
        raise PcaError(f"expected max_components >= 1, got {max_components}")
    if n_components is not None and n_components < 1:
        raise PcaError(f"expected n_components >= 1 or None, got {n_components}")

    bound = min(state.d, state.n)
    # Sample covariance (n - 1), as scikit-learn's explained_variance_. Only the top axes a model can keep are
    # computed; the total variance is the trace, the sum of every eigenvalue.
    covariance = state.scatter / (state.n - 1)
    eigenvalues, eigenvectors = _top_eigenpairs(covariance, min(n_components or max_components, bound))
    variances = np.clip(eigenvalues[::-1], 0.0, None)  # rounding leaves tiny negatives on a PSD matrix
    axes = eigenvectors[:, ::-1].T
    total = float(max(np.trace(covariance), 0.0))
    ratios = variances / total if total > 0 else np.zeros_like(variances)

    if n_components is not None:
        k = min(n_components, bound)
    else:
        # The target not reached by the axes computed: all of them (the cap). With no variance at all, one
        # component already "explains" it: keep k = 1.
        reached = np.cumsum(ratios) >= variance_target - _TARGET_SLACK
        k = (int(np.argmax(reached)) + 1 if reached.any() else len(ratios)) if total > 0 else 1
        k = min(k, max_components, bound)

    components = axes[:k]
    largest = components[np.arange(k), np.abs(components).argmax(axis=1)]  # argmax: first of ties
    components = components * np.where(largest < 0, -1.0, 1.0)[:, None]
    return PcaModel(
        mean=state.mean,
        components=components,
        explained_variance=variances[:k],
        explained_variance_ratio=ratios[:k],
        n_seen=state.n,
        total_variance=total,
    )


def _top_eigenpairs(covariance: Array, count: int) -> tuple[Array, Array]:
    """The `count` largest eigenvalues of a symmetric matrix (ascending) and their eigenvectors (columns).

    LAPACK's MRRR driver computes only those, on one thread: at d = 1280 and 256 axes that is half the CPU of a
    full decomposition on two threads, in the same time (README, "Where the job's CPU goes")."""
    # Imported here: the job fits, the classify Lambda only projects, and its image has neither.
    from scipy.linalg import eigh
    from threadpoolctl import threadpool_limits

    d = covariance.shape[0]
    with threadpool_limits(limits=1, user_api="blas"):
        values, vectors = eigh(covariance, subset_by_index=[d - count, d - 1], driver="evr")
    return values, vectors


def fit_pca_or_point(
    state: PcaState,
    *,
    variance_target: float = _DEFAULTS.variance_target,
    max_components: int = _DEFAULTS.max_components,
    n_components: int | None = None,
) -> PcaModel:
    """`fit_pca`, and for a single row the model a point has: its mean, and one axis (the first coordinate
    axis) of zero variance. A platform's first batch may hold one image; the next refit from the merged state is
    exact either way."""
    if state.n != 1:
        return fit_pca(
            state, variance_target=variance_target, max_components=max_components, n_components=n_components
        )
    axis = np.zeros((1, state.d))
    axis[0, 0] = 1.0
    return PcaModel(
        mean=state.mean,
        components=axis,
        explained_variance=np.zeros(1),
        explained_variance_ratio=np.zeros(1),
        n_seen=1,
        total_variance=0.0,
    )


def project(model: PcaModel, x: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """The coordinates of the rows of `x` (n×d) on the model's k axes, as float32 (n×k)."""
    rows = np.asarray(x, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] != model.mean.size:
        raise PcaError(f"expected rows of shape (n, {model.mean.size}), got shape {rows.shape}")
    return ((rows - model.mean) @ model.components.T).astype(np.float32)


_MODEL_ARRAYS = (
    "mean",
    "components",
    "explained_variance",
    "explained_variance_ratio",
    "n_seen",
    "total_variance",
)
# Prefixed, so a state's arrays never share a name with a model's.
_STATE_ARRAYS = ("state_n", "state_mean", "state_scatter")


def model_to_npz(model: PcaModel) -> bytes:
    """The model, as a reader of projections needs it (`model.npz`).

    Uncompressed: float64 statistics barely compress, and deflating them would cost every refit, and each
    projection task again to inflate them.
    """
    return to_npz(
        mean=model.mean,
        components=model.components,
        explained_variance=model.explained_variance,
        explained_variance_ratio=model.explained_variance_ratio,
        n_seen=np.int64(model.n_seen),
        total_variance=np.float64(model.total_variance),
    )


def state_to_npz(state: PcaState) -> bytes:
    """The merge state, which the next refit starts from (`state.npz`), uncompressed as the model is."""
    return to_npz(state_n=np.int64(state.n), state_mean=state.mean, state_scatter=state.scatter)


def load_model(data: bytes) -> PcaModel:
    """The model written by `model_to_npz`; `PcaError` if `data` is not such a file."""
    arrays = from_npz(data, _MODEL_ARRAYS, what="PCA", error=PcaError)
    return PcaModel(
        mean=arrays["mean"],
        components=arrays["components"],
        explained_variance=arrays["explained_variance"],
        explained_variance_ratio=arrays["explained_variance_ratio"],
        n_seen=int(arrays["n_seen"]),
        total_variance=float(arrays["total_variance"]),
    )


def load_state(data: bytes) -> PcaState:
    """The merge state written by `state_to_npz`; `PcaError` if `data` is not such a file."""
    arrays = from_npz(data, _STATE_ARRAYS, what="PCA", error=PcaError)
    return PcaState(n=int(arrays["state_n"]), mean=arrays["state_mean"], scatter=arrays["state_scatter"])
