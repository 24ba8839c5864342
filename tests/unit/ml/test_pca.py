"""The incremental PCA equals a one-shot PCA of all rows, whatever the batches and the order they merge in."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.decomposition import PCA

from pomona.ml.pca import (
    PcaError,
    PcaModel,
    PcaState,
    fit_pca,
    fit_pca_or_point,
    load_model,
    load_state,
    merge_pca_state,
    model_to_npz,
    project,
    state_to_npz,
)

try:
    from scipy.linalg import subspace_angles
except ImportError:  # pragma: no cover - scipy comes with scikit-learn

    def subspace_angles(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        cosines = np.linalg.svd(np.linalg.qr(a)[0].T @ np.linalg.qr(b)[0], compute_uv=False)
        return np.arccos(np.clip(cosines, -1.0, 1.0))


Array = npt.NDArray[np.float64]


def _data(seed: int, n: int, d: int) -> Array:
    """Rows with per-column scales over six decades and an offset far from the origin."""
    rng = np.random.default_rng(seed)
    scales = 10.0 ** rng.uniform(-3, 3, size=d)
    mixing = np.linalg.qr(rng.standard_normal((d, d)))[0]  # so the axes are not the coordinate axes
    return (rng.standard_normal((n, d)) * scales) @ mixing + rng.uniform(-1e3, 1e3, size=d)


def _merge_in_random_tree(states: list[PcaState], rng: np.random.Generator) -> PcaState:
    """Merge random pairs until one state is left: every order and tree shape is reachable."""
    pool = list(states)
    while len(pool) > 1:
        i, j = rng.choice(len(pool), size=2, replace=False)
        merged = merge_pca_state(pool[i], pool[j])
        pool = [s for index, s in enumerate(pool) if index not in (i, j)] + [merged]
    return pool[0]


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(3, 60),
    d=st.integers(2, 8),
    n_batches=st.integers(1, 6),
)
def test_merged_batches_equal_one_shot_pca(seed: int, n: int, d: int, n_batches: int) -> None:
    # GIVEN rows split at random cut points (empty batches allowed), shuffled, merged in a random tree
    rng = np.random.default_rng(seed)
    x = _data(seed, n, d)
    cuts = np.sort(rng.integers(0, n + 1, size=n_batches - 1))
    batches = [x[idx] for idx in np.split(rng.permutation(n), cuts)]
    batches = [b.astype(np.float32) if i % 2 else b for i, b in enumerate(batches)]  # float32 rows too
    x_seen = np.concatenate([b.astype(np.float64) for b in batches])

    # WHEN the merged state is fitted
    state = _merge_in_random_tree([PcaState.from_rows(b) for b in batches], rng)
    model = fit_pca(state, n_components=d)

    # THEN it equals the one-shot mean, scatter and PCA of all rows
    centred = x_seen - x_seen.mean(axis=0)
    scatter = centred.T @ centred
    assert state.n == n
    assert np.abs(state.mean - x_seen.mean(axis=0)).max() <= 1e-10 * np.abs(x_seen).max()
    assert np.linalg.norm(state.scatter - scatter) <= 1e-10 * np.linalg.norm(scatter)

    reference = PCA(n_components=min(n, d), svd_solver="full").fit(x_seen)
    k = reference.n_components_
    top = reference.explained_variance_[0]
    np.testing.assert_allclose(
        model.explained_variance[:k], reference.explained_variance_, rtol=0, atol=1e-8 * top
    )
    np.testing.assert_allclose(model.total_variance, np.trace(scatter) / (n - 1), rtol=1e-10)

    # Only subspaces that end at a clear eigengap are defined well enough to compare.
    variances = np.append(reference.explained_variance_, 0.0)
    for j in range(1, k + 1):
        if variances[j - 1] - variances[j] > 1e-4 * top:
            angles = subspace_angles(model.components[:j].T, reference.components_[:j].T)
            assert angles.max() < 1e-8, f"first {j} components"


def test_merge_with_empty_state_is_identity() -> None:
    state = PcaState.from_rows(_data(0, 10, 3))

    assert merge_pca_state(state, PcaState.empty(3)) is state
    assert merge_pca_state(PcaState.empty(3), state) is state
    assert merge_pca_state(PcaState.empty(3), PcaState.empty(3)).n == 0
    assert PcaState.from_rows(np.empty((0, 3))).n == 0


def test_state_size_does_not_grow_with_history() -> None:
    batch = PcaState.from_rows(_data(1, 50, 4))
    state = PcaState.empty(4)
    for _ in range(20):
        state = merge_pca_state(state, batch)

    assert state.n == 1000
    assert state.mean.shape == (4,)
    assert state.scatter.shape == (4, 4)


def test_state_arrays_are_read_only() -> None:
    rows = _data(2, 5, 3)
    state = PcaState.from_rows(rows)

    with pytest.raises(ValueError, match="read-only"):
        state.mean[0] = 1.0


# -- sign convention --------------------------------------------------------------------------------------------


def test_largest_entry_of_each_component_is_positive() -> None:
    model = fit_pca(PcaState.from_rows(_data(3, 40, 6)), n_components=6)

    for component in model.components:
        assert component[np.abs(component).argmax()] > 0
    np.testing.assert_allclose(np.linalg.norm(model.components, axis=1), 1.0, rtol=1e-12)


def test_signs_do_not_depend_on_the_data_sign_or_row_order() -> None:
    # GIVEN the same rows, negated, and shuffled
    x = _data(4, 40, 5)
    shuffled = x[np.random.default_rng(0).permutation(len(x))]

    # WHEN each is fitted
    models = [fit_pca(PcaState.from_rows(rows), n_components=5) for rows in (x, -x, shuffled)]

    # THEN the axes are the same vectors, not merely the same lines
    for other in models[1:]:
        np.testing.assert_allclose(other.components, models[0].components, atol=1e-9)


def test_ties_in_largest_magnitude_go_to_the_first_entry() -> None:
    # GIVEN variance only along (-1, 1)/√2: both entries have the same magnitude
    x = np.outer(np.arange(-3.0, 4.0), [-1.0, 1.0])

    model = fit_pca(PcaState.from_rows(x), n_components=1)

    np.testing.assert_allclose(model.components[0], np.array([1.0, -1.0]) / np.sqrt(2), atol=1e-12)


# -- how many components ----------------------------------------------------------------------------------------

# Sample covariance diag(6, 3, 1, 0): ratios 0.6, 0.3, 0.1, 0.
_SPECTRUM = PcaState(n=11, mean=np.zeros(4), scatter=np.diag([60.0, 30.0, 10.0, 0.0]))


@pytest.mark.parametrize(
    ("kwargs", "expected_k"),
    [
        pytest.param({"variance_target": 0.5}, 1, id="target-below-first"),
        pytest.param({"variance_target": 0.6}, 1, id="target-equals-first"),
        pytest.param({"variance_target": 0.9}, 2, id="target-equals-cumulative-despite-rounding"),
        pytest.param({"variance_target": 0.95}, 3, id="default-target"),
        pytest.param({"variance_target": 1.0}, 3, id="all-variance-needs-no-zero-axis"),
        pytest.param({"variance_target": 0.95, "max_components": 2}, 2, id="capped"),
        pytest.param({"n_components": 4}, 4, id="fixed"),
        pytest.param({"n_components": 10}, 4, id="fixed-bounded-by-d"),
        pytest.param({"n_components": 2, "max_components": 1}, 2, id="fixed-ignores-cap"),
    ],
)
def test_number_of_components(kwargs: dict[str, float], expected_k: int) -> None:
    model = fit_pca(_SPECTRUM, **kwargs)  # type: ignore[arg-type]

    assert model.n_components == expected_k
    np.testing.assert_allclose(model.explained_variance, [6.0, 3.0, 1.0, 0.0][:expected_k])
    np.testing.assert_allclose(model.explained_variance_ratio, [0.6, 0.3, 0.1, 0.0][:expected_k])
    assert model.total_variance == pytest.approx(10.0)


def test_fewer_rows_than_dimensions_bounds_k_by_rows() -> None:
    # GIVEN 3 rows in 6 dimensions: their centred span has rank 2
    state = PcaState.from_rows(_data(5, 3, 6))

    assert fit_pca(state, variance_target=1.0).n_components == 2
    assert fit_pca(state, n_components=10).n_components == 3
    assert fit_pca(state, n_components=10).explained_variance[2] == pytest.approx(0.0, abs=1e-9)


def test_constant_rows_keep_one_component() -> None:
    model = fit_pca(PcaState.from_rows(np.ones((5, 3))))

    assert model.n_components == 1
    assert model.total_variance == 0.0
    np.testing.assert_array_equal(model.explained_variance_ratio, [0.0])


# -- projection and storage -------------------------------------------------------------------------------------


def test_a_single_row_is_a_point_and_the_next_refit_is_exact() -> None:
    # GIVEN one row, then more
    rows = _data(5, 8, 4)

    # WHEN the first is fitted alone, then merged with the rest
    point = fit_pca_or_point(PcaState.from_rows(rows[:1]))
    merged = fit_pca_or_point(merge_pca_state(PcaState.from_rows(rows[:1]), PcaState.from_rows(rows[1:])))

    # THEN the point is its own mean on one axis of no variance, and the refit equals the one-shot fit
    np.testing.assert_array_equal(point.mean, rows[0])
    assert (point.n_seen, point.n_components, point.total_variance) == (1, 1, 0.0)
    np.testing.assert_array_equal(project(point, rows[:1]), [[0.0]])
    one_shot = fit_pca(PcaState.from_rows(rows))
    np.testing.assert_allclose(merged.explained_variance, one_shot.explained_variance, rtol=1e-9)


def test_project_matches_sklearn_transform() -> None:
    x = _data(6, 30, 5)
    model = fit_pca(PcaState.from_rows(x), n_components=3)
    reference = PCA(n_components=3, svd_solver="full").fit(x)

    projected = project(model, x)

    assert projected.dtype == np.float32
    assert projected.shape == (30, 3)
    # Same coordinates up to each axis's sign, which sklearn chooses by its own rule.
    signs = np.sign(np.sum(model.components * reference.components_, axis=1))
    np.testing.assert_allclose(
        projected, reference.transform(x) * signs, rtol=1e-5, atol=1e-6 * np.abs(x).max()
    )


def test_npz_round_trip() -> None:
    # GIVEN a model and the state it came from
    state = PcaState.from_rows(_data(7, 20, 4))
    model = fit_pca(state, variance_target=0.9)

    # WHEN each is written to its own file and read back
    loaded_model, loaded_state = load_model(model_to_npz(model)), load_state(state_to_npz(state))

    # THEN every array and count comes back exactly
    for name in ("mean", "components", "explained_variance", "explained_variance_ratio"):
        np.testing.assert_array_equal(getattr(loaded_model, name), getattr(model, name))
    assert (loaded_model.n_seen, loaded_model.total_variance) == (model.n_seen, model.total_variance)
    assert loaded_state.n == state.n
    np.testing.assert_array_equal(loaded_state.mean, state.mean)
    np.testing.assert_array_equal(loaded_state.scatter, state.scatter)


def test_npz_written_by_numpy_alone_is_readable() -> None:
    # The format is plain numpy arrays, so any reader can open it without this module.
    data = state_to_npz(PcaState.from_rows(_data(8, 10, 3)))

    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        assert int(npz["state_n"]) == 10
        assert npz["state_scatter"].shape == (3, 3)


# -- errors -----------------------------------------------------------------------------------------------------


def _model(d: int) -> PcaModel:
    return fit_pca(PcaState.from_rows(_data(9, 10, d)), n_components=2)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        pytest.param(
            lambda: merge_pca_state(PcaState.empty(3), PcaState.empty(4)),
            r"expected states of dimension 3, got 4",
            id="merge-dimension-mismatch",
        ),
        pytest.param(
            lambda: PcaState.from_rows(np.zeros(3)),
            r"expected rows of shape \(n, d\), got shape \(3,\)",
            id="1d-rows",
        ),
        pytest.param(
            lambda: PcaState(n=2, mean=np.zeros(3), scatter=np.zeros((3, 2))),
            r"got \(3,\) and \(3, 2\)",
            id="bad-scatter-shape",
        ),
        pytest.param(
            lambda: PcaState(n=-1, mean=np.zeros(1), scatter=np.zeros((1, 1))), r"got -1", id="negative-n"
        ),
        pytest.param(
            lambda: fit_pca(PcaState.from_rows(np.ones((1, 3)))),
            r"expected at least 2 rows to fit a PCA, got 1",
            id="one-row",
        ),
        pytest.param(
            lambda: fit_pca(PcaState.empty(3)), r"expected at least 2 rows to fit a PCA, got 0", id="no-rows"
        ),
        pytest.param(
            lambda: fit_pca(_SPECTRUM, variance_target=1.5),
            r"expected variance_target in \(0, 1\], got 1.5",
            id="target-too-high",
        ),
        pytest.param(
            lambda: fit_pca(_SPECTRUM, variance_target=0.0),
            r"variance_target in \(0, 1\], got 0.0",
            id="target-zero",
        ),
        pytest.param(
            lambda: fit_pca(_SPECTRUM, max_components=0), r"expected max_components >= 1, got 0", id="no-cap"
        ),
        pytest.param(
            lambda: fit_pca(_SPECTRUM, n_components=0),
            r"expected n_components >= 1 or None, got 0",
            id="zero-k",
        ),
        pytest.param(
            lambda: project(_model(4), np.zeros((2, 5))),
            r"expected rows of shape \(n, 4\), got shape \(2, 5\)",
            id="project-dimension-mismatch",
        ),
        pytest.param(
            lambda: load_model(b"not an npz"), r"expected a PCA \.npz file, got 10 bytes", id="garbage"
        ),
        pytest.param(lambda: load_state(b""), r"expected a PCA \.npz file, got 0 bytes", id="empty-bytes"),
        pytest.param(
            lambda: load_model(_npz(mean=np.zeros(2))),
            r"expected arrays \[.*\], got \['mean'\]",
            id="missing",
        ),
    ],
)
def test_errors_say_what_was_expected(call: Callable[[], object], message: str) -> None:
    with pytest.raises(PcaError, match=message):
        call()


def test_pca_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="dimension"):
        merge_pca_state(PcaState.empty(1), PcaState.empty(2))


def _npz(**arrays: Array) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()
