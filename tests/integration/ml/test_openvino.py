"""The openvino backend on real weights and the 540 sample photos: f32 is LiteRT's features, bf16 is close to them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pomona.ml.backends.openvino import cpu_capabilities
from pomona.ml.featurizer import Featurizer, get_featurizer, make_featurizer
from pomona.ml.mobilenet import FEATURE_DIM
from pomona.ml.preprocess import preprocess_batch

pytestmark = pytest.mark.slow


def relative_error(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """‖a − b‖ / ‖b‖ for each row."""
    return np.asarray(np.linalg.norm(actual - expected, axis=1) / np.linalg.norm(expected, axis=1))


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray((a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))


@pytest.fixture(scope="module")
def photos(sample_dir: Path) -> np.ndarray:
    """All 540 sample photos, preprocessed."""
    paths = sorted(sample_dir.glob("*/*.jpg"))
    batch, errors = preprocess_batch([p.read_bytes() for p in paths])
    assert errors == [None] * len(paths)
    return batch


@pytest.fixture(scope="module")
def float32_features(weights: str, cache_dir: Path, photos: np.ndarray) -> np.ndarray:
    """LiteRT's float32 features: the reference."""
    return make_featurizer(weights, backend="litert", cache_dir=cache_dir, batch_size=1, num_threads=2)(
        photos
    )


@pytest.fixture(scope="module")
def needs_bf16() -> None:
    if "BF16" not in cpu_capabilities():
        pytest.skip("this CPU has no bf16 arithmetic (OpenVINO's OPTIMIZATION_CAPABILITIES lacks BF16)")


def test_openvino_f32_agrees_with_litert(
    weights: str, cache_dir: Path, photos: np.ndarray, float32_features: np.ndarray
) -> None:
    # GIVEN the same converted model on OpenVINO in float32, with a call size that leaves a short last call
    openvino = make_featurizer(
        weights, backend="openvino", precision="f32", cache_dir=cache_dir, batch_size=32, num_threads=2
    )

    # WHEN it featurizes the 540 photos
    features = openvino(photos)

    # THEN its features are LiteRT's within 1e-4 relative, in the featurizer's shape and type
    assert features.shape == (len(photos), FEATURE_DIM)
    assert features.dtype == np.float32
    assert relative_error(features, float32_features).max() < 1e-4
    assert (openvino.backend, openvino.precision) == ("openvino", "f32")


def test_openvino_bf16_is_close_to_float32(
    needs_bf16: None, weights: str, cache_dir: Path, photos: np.ndarray, float32_features: np.ndarray
) -> None:
    # GIVEN the same converted model on OpenVINO in bf16
    openvino = make_featurizer(
        weights, backend="openvino", precision="bf16", cache_dir=cache_dir, batch_size=32, num_threads=2
    )

    # WHEN it featurizes the 540 photos
    features = openvino(photos)

    # THEN every photo's features point where float32's do (measured: min 0.975, median 0.992), yet they are
    # bf16's, not float32's: one lineage must never mix the two
    similarity = cosine(features, float32_features)
    assert similarity.min() >= 0.97
    assert np.median(similarity) >= 0.99
    assert relative_error(features, float32_features).max() > 1e-3
    assert openvino.precision == "bf16"


def test_openvino_features_do_not_depend_on_batch_composition(
    needs_bf16: None, weights: str, cache_dir: Path, photos: np.ndarray
) -> None:
    openvino = get_featurizer(weights, "openvino", precision="bf16", cache_dir=cache_dir, batch_size=32)

    one_by_one = np.concatenate([openvino(photos[i : i + 1]) for i in range(5)])

    np.testing.assert_array_equal(one_by_one, openvino(photos[:5]))


def test_a_caller_naming_no_precision_gets_f32(weights: str, cache_dir: Path) -> None:
    f32 = get_featurizer(weights, "openvino", cache_dir=cache_dir, batch_size=32)
    again = get_featurizer(weights, "openvino", precision="f32", cache_dir=cache_dir, batch_size=32)

    assert isinstance(f32, Featurizer)
    assert again is f32
    assert f32.precision == "f32"
