"""The featurizer on real weights and images: both backends, the per-process cache, weights resolution."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import numpy as np
import pytest
from moto import mock_aws

from pomona.ml.featurizer import Featurizer, get_featurizer, make_featurizer
from pomona.ml.mobilenet import FEATURE_DIM
from pomona.ml.preprocess import IMAGE_SIZE, preprocess_batch
from pomona.ml.weights import WeightsError, resolve_weights

pytestmark = pytest.mark.slow

SHARED_WEIGHTS_ID = "sha256:d1a8dbb4a817a18c"  # /work/shared/models/SOURCE.md


def relative_error(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """‖a − b‖ / ‖b‖ for each row."""
    return np.asarray(np.linalg.norm(actual - expected, axis=1) / np.linalg.norm(expected, axis=1))


@pytest.fixture(scope="module")
def images(sample_dir: Path) -> np.ndarray:
    paths = sorted(sample_dir.glob("*/*.jpg"))[::17][:32]  # spread over the 18 classes
    batch, errors = preprocess_batch([p.read_bytes() for p in paths])
    assert errors == [None] * len(paths)
    return batch


@pytest.fixture(scope="module")
def litert(weights: str, cache_dir: Path) -> Featurizer:
    # batch_size 12 on 32 images: two full chunks and a short one, so the interpreter is resized
    return get_featurizer(weights, "litert", cache_dir=cache_dir, batch_size=12)


def test_litert_and_tensorflow_agree(litert: Featurizer, weights: str, images: np.ndarray) -> None:
    # GIVEN the same weights on both backends
    tensorflow = make_featurizer(weights, backend="tensorflow", batch_size=32)

    # WHEN both featurize the same real images
    expected = tensorflow(images)
    actual = litert(images)

    # THEN they return the same non-negative (ReLU6, then average pooling) 1280-d features
    assert actual.shape == expected.shape == (len(images), FEATURE_DIM)
    assert actual.dtype == np.float32
    assert actual.min() >= 0
    assert relative_error(actual, expected).max() < 1e-4
    assert litert.weights_id == tensorflow.weights_id == SHARED_WEIGHTS_ID
    assert (litert.backend, tensorflow.backend) == ("litert", "tensorflow")


def test_features_do_not_depend_on_batch_composition(litert: Featurizer, images: np.ndarray) -> None:
    one_by_one = np.concatenate([litert(images[i : i + 1]) for i in range(4)])

    assert relative_error(one_by_one, litert(images[:4])).max() < 1e-5


def test_litert_featurizer_is_loaded_once_per_process(
    litert: Featurizer, weights: str, cache_dir: Path
) -> None:
    again = get_featurizer(weights, backend="litert", cache_dir=cache_dir, batch_size=12)

    assert again is litert


@pytest.mark.parametrize("backend", ["litert", "openvino"])
def test_a_worker_never_imports_tensorflow(backend: str, weights: str, cache_dir: Path) -> None:
    # GIVEN a fresh Python process, as a Spark worker is, with the converted model already cached
    get_featurizer(weights, backend, cache_dir=cache_dir, batch_size=32)
    code = (
        "import sys; import numpy as np; from pathlib import Path;"
        "from pomona.ml.featurizer import get_featurizer;"
        f"f = get_featurizer({weights!r}, {backend!r}, cache_dir=Path({str(cache_dir)!r}), batch_size=32);"
        "f(np.zeros((32, 224, 224, 3), np.float32));"
        "from pomona.bench.bare import peak_rss_mb;"
        "print('tensorflow' in sys.modules, int(peak_rss_mb()))"
    )

    # WHEN it featurizes a batch with that backend
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    # THEN TensorFlow was never imported and the process stays well under 1 GB
    imported, peak_mb = result.stdout.split()
    assert imported == "False"
    assert int(peak_mb) < 1024


def test_random_weights_are_deterministic_across_processes(cache_dir: Path, images: np.ndarray) -> None:
    # GIVEN random weights built twice here, and once more in the child process that converts to TFLite
    first = make_featurizer("random", backend="tensorflow", batch_size=8)
    second = make_featurizer("random", backend="tensorflow", batch_size=8)
    converted = make_featurizer("random", backend="litert", cache_dir=cache_dir, batch_size=8)

    # WHEN they featurize the same images
    features = first(images[:8])

    # THEN all three are the same network
    assert first.weights_id == converted.weights_id == "random"
    np.testing.assert_array_equal(second(images[:8]), features)
    assert relative_error(converted(images[:8]), features).max() < 1e-4


def test_missing_weights_path_is_a_clear_weights_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.weights.h5"

    with pytest.raises(WeightsError, match=f"an existing .h5 file, got '{missing}' \\(no such file\\)"):
        make_featurizer(str(missing), cache_dir=tmp_path)


def test_featurizer_rejects_a_batch_of_the_wrong_shape(litert: Featurizer) -> None:
    with pytest.raises(
        ValueError, match=r"expected a float32 array of shape \(n, 224, 224, 3\), got float32"
    ):
        litert(np.zeros((2, IMAGE_SIZE, IMAGE_SIZE), np.float32))


@pytest.fixture
def s3_bucket(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)  # moto intercepts the default endpoint
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket="models")
        yield "models"


def test_s3_weights_are_downloaded_once_and_keep_their_id(
    s3_bucket: str, weights: str, tmp_path: Path
) -> None:
    # GIVEN the shared weights uploaded to S3
    boto3.client("s3").upload_file(weights, s3_bucket, "pomona/mobilenet_v2.weights.h5")
    uri = f"s3://{s3_bucket}/pomona/mobilenet_v2.weights.h5"

    # WHEN the URI is resolved twice
    first = resolve_weights(uri, cache_dir=tmp_path)
    second = resolve_weights(uri, cache_dir=tmp_path)

    # THEN the local copy keeps the file's id and name (Keras reads the format from it) and is reused
    assert first.weights_id == SHARED_WEIGHTS_ID
    assert first.path is not None
    assert first.path.name == "mobilenet_v2.weights.h5"
    assert first.path.is_relative_to(tmp_path)
    assert second == first


def test_missing_s3_weights_are_a_clear_weights_error(s3_bucket: str, tmp_path: Path) -> None:
    with pytest.raises(
        WeightsError, match=r"expected a readable weights object at 's3://models/nope\.weights\.h5'"
    ):
        resolve_weights(f"s3://{s3_bucket}/nope.weights.h5", cache_dir=tmp_path)
