"""MobileNetV2 features from image bytes: preprocessing, weights resolution and two inference backends.

A pure module: bytes and arrays in, arrays out. No Spark here, and no S3 except to fetch a weights file.

The Spark job calls `get_featurizer(...)` inside its pandas UDF: like pyspark's `predict_batch_udf`, the model
is loaded once per Python worker (with `spark.python.worker.reuse=true`) and reused by every later task.

Two backends compute the same function:
- `litert` (default): the Keras model converted once to a float32 `.tflite` file, run by LiteRT with XNNPACK.
  About 2.5× faster than TensorFlow on CPU, and the worker never imports TensorFlow (~1.8 GB per worker with
  it, a few hundred MB without): conversion runs in a child process and its result is cached on disk.
- `tensorflow`: the Keras model under `tf.function`; the reference, and a fallback if LiteRT misbehaves.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps

from pomona.core.errors import PomonaError, SettingsError

if TYPE_CHECKING:
    import keras

logger = logging.getLogger(__name__)

IMAGE_SIZE = 224
FEATURE_DIM = 1280
Backend = Literal["litert", "tensorflow"]
# Images per model call that run fastest on these 2 cores, per backend: XNNPACK's kernels stay in cache at one
# image (measured: 1 → 135 img/s on one thread, 8 → 112, 16 → 99); tf.function amortises its dispatch on 32.
BEST_BATCH: dict[Backend, int] = {"litert": 1, "tensorflow": 32}
BACKENDS: tuple[str, ...] = get_args(Backend)
CACHE_DIR_ENV = "POMONA_CACHE_DIR"
RANDOM_SEED = 1234

# Where Keras itself downloads `MobileNetV2(include_top=False, weights="imagenet")` from
# (keras/src/applications/mobilenet_v2.py). Fetched directly so resolving weights never imports TensorFlow.
IMAGENET_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
IMAGENET_URL = f"https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/{IMAGENET_FILE}"

F32 = npt.NDArray[np.float32]
_INPUT_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 3)
_WHITE = (255, 255, 255, 255)
# What Pillow raises on bytes it cannot decode: unidentified, truncated, corrupt or oversized images.
_PILLOW_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


class DecodeError(PomonaError, ValueError):
    """The bytes are not an image Pillow can decode."""


class WeightsError(PomonaError, ValueError):
    """The weights spec (POMONA_WEIGHTS) cannot be turned into a usable model."""


# -- preprocessing ---------------------------------------------------------------------------------------------


def preprocess_image(data: bytes) -> F32:
    """Decode `data` into MobileNetV2's input: float32 (224, 224, 3) in [-1, 1]; `DecodeError` if undecodable.

    Resizing stretches to 224×224 without cropping, as the notebook's `load_img(target_size=(224, 224))` did,
    but with bilinear instead of Keras' default nearest: Pillow's bilinear widens its kernel when shrinking
    (area-aware, no aliasing), so features do not depend on pixel phase or on the JPEG decode scale below.
    """
    try:
        with Image.open(BytesIO(data)) as img:
            if img.format == "JPEG":
                # Let libjpeg decode at 1/2, 1/4 or 1/8 scale, never below 224 px on either side.
                img.draft("RGB", (IMAGE_SIZE, IMAGE_SIZE))
            img.load()
            rgb = _to_rgb(ImageOps.exif_transpose(img))
            # reducing_gap=3: a cheap integer reduce() first for very large images, indistinguishable from
            # plain bilinear (Pillow's docs); JPEGs already arrive small thanks to draft().
            small = rgb.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR, reducing_gap=3.0)
    except _PILLOW_ERRORS as err:
        raise DecodeError(f"expected an image Pillow can decode, got {len(data)} bytes: {err}") from err
    x = np.asarray(small, dtype=np.float32)
    x /= 127.5  # MobileNetV2's preprocess_input ("tf" mode): [0, 255] -> [-1, 1]
    x -= 1.0
    return x


def preprocess_batch(images: Sequence[bytes]) -> tuple[F32, list[str | None]]:
    """The decodable images as one (k, 224, 224, 3) batch, in input order, and one error per input (None if OK).

    Errors are returned, not raised, so the job turns a bad image into an error row instead of a failed stage.
    """
    arrays: list[F32] = []
    errors: list[str | None] = []
    for data in images:
        try:
            arrays.append(preprocess_image(data))
            errors.append(None)
        except DecodeError as err:
            errors.append(str(err))
    batch = np.stack(arrays) if arrays else np.empty((0, *_INPUT_SHAPE), dtype=np.float32)
    return batch, errors


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode.startswith("I;16"):  # 16-bit greyscale PNG: keep the high byte, where convert() would clip
        img = Image.fromarray((np.asarray(img) >> 8).astype(np.uint8))
    if img.has_transparency_data:  # RGBA, LA, PA, or a palette/greyscale with a transparent colour
        background = Image.new("RGBA", img.size, _WHITE)
        return Image.alpha_composite(background, img.convert("RGBA")).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")  # CMYK, L, P, YCbCr...


# -- weights ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightsRef:
    """Resolved weights: a local file (None for "random") and the id written into every output's metadata."""

    spec: str
    path: Path | None
    weights_id: str


def default_cache_dir() -> Path:
    """`$POMONA_CACHE_DIR`, else `~/.cache/pomona`: downloaded weights and converted `.tflite` files."""
    return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "pomona")


def resolve_weights(spec: str, *, cache_dir: Path) -> WeightsRef:
    """Turn a POMONA_WEIGHTS value into a local file: "imagenet", "random", `s3://bucket/key` or a local path."""
    if spec == "random":
        return WeightsRef(spec=spec, path=None, weights_id="random")
    if spec == "imagenet":
        path = _download_imagenet(cache_dir)
    elif spec.startswith("s3://"):
        path = _download_s3(spec, cache_dir)
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise WeightsError(
                f"expected 'imagenet', 'random', an s3:// URI or an existing .h5 file, got {spec!r} (no such file)"
            )
    if not path.name.endswith(".h5"):
        raise WeightsError(f"expected a Keras .weights.h5 or .h5 file, got {path.name!r}")
    return WeightsRef(spec=spec, path=path, weights_id=_file_id(path))


def _file_id(path: Path) -> str:
    with path.open("rb") as f:
        return f"sha256:{hashlib.file_digest(f, 'sha256').hexdigest()[:16]}"


def _download_imagenet(cache_dir: Path) -> Path:
    target = cache_dir / "weights" / IMAGENET_FILE
    if target.is_file():
        return target
    try:
        with urllib.request.urlopen(IMAGENET_URL, timeout=60) as response:
            _write_atomically(target, response.read())
    except OSError as err:  # URLError, timeouts, DNS: every offline failure is an OSError
        raise WeightsError(
            f"expected to download the ImageNet weights from {IMAGENET_URL}, got {err}; "
            "offline, set POMONA_WEIGHTS to a local .weights.h5 path or an s3:// URI"
        ) from err
    return target


def _download_s3(uri: str, cache_dir: Path) -> Path:
    import boto3  # boto3 reads AWS_ENDPOINT_URL itself, so the embedded stack works unchanged
    import botocore.exceptions

    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket or not key or key.endswith("/"):
        raise WeightsError(f"expected s3://<bucket>/<key>, got {uri!r}")
    s3 = boto3.client("s3")
    try:
        etag = s3.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
        # Keyed by ETag: a replaced object is fetched again. The file name is kept because Keras reads
        # the format (.weights.h5 or legacy .h5) from it.
        target = (
            cache_dir
            / "weights"
            / hashlib.sha256(f"{uri}\0{etag}".encode()).hexdigest()[:16]
            / Path(key).name
        )
        if not target.is_file():
            body = s3.get_object(Bucket=bucket, Key=key, IfMatch=etag)["Body"].read()
            _write_atomically(target, body)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as err:
        raise WeightsError(f"expected a readable weights object at {uri!r}, got {err}") from err
    return target


def _write_atomically(target: Path, data: bytes) -> None:
    """Write then rename, so concurrent workers never see (or leave) a half-written file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False) as tmp:
        tmp.write(data)
    written = Path(tmp.name)
    written.chmod(
        0o644
    )  # readable by a Spark user other than the one who baked the cache (temp files are 0600)
    written.replace(target)


# -- models ----------------------------------------------------------------------------------------------------


def build_keras_model(weights: WeightsRef) -> keras.Model:
    """MobileNetV2 (alpha 1.0, no top, global average pooling) with `weights` loaded; imports TensorFlow."""
    import keras

    if weights.path is None:
        # "random": Keras draws initial weights from its global seed; fixing it makes them reproducible
        # across processes (and reseeds Python's and numpy's global generators as a side effect).
        keras.utils.set_random_seed(RANDOM_SEED)
    model = keras.applications.MobileNetV2(
        alpha=1.0, include_top=False, pooling="avg", input_shape=_INPUT_SHAPE, weights=None
    )
    if weights.path is not None:
        model.load_weights(weights.path)
    return model


def convert_to_tflite(weights: WeightsRef, *, cache_dir: Path) -> Path:
    """The model as a float32 `.tflite` file, converted once and cached in `cache_dir`.

    Conversion runs in a child Python process: TensorFlow's ~1.5 GB is returned to the OS when it exits, and
    the calling Spark worker keeps a small footprint because it never imports TensorFlow itself. A file lock
    makes the other workers of an executor wait for that one conversion instead of each running their own.
    """
    target = cache_dir / f"mobilenet_v2_{weights.weights_id.replace(':', '-')}.tflite"
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with (cache_dir / f".{target.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not target.is_file():
            _convert_in_child(weights, target)
    return target


def _convert_in_child(weights: WeightsRef, target: Path) -> None:
    started = time.monotonic()
    code = "import sys; from pomona.ml.featurizer import _convert_main; _convert_main(sys.argv[1:])"
    args = [weights.spec, str(weights.path or ""), weights.weights_id, str(target)]
    # The child sees the same modules as this process, including --py-files added to sys.path at run time.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=900, check=False
    )
    if result.returncode != 0 or not target.is_file():
        tail = result.stderr.strip().splitlines()[-5:]
        raise WeightsError(
            f"expected {weights.spec!r} to convert to TFLite, got exit code {result.returncode}: {tail}"
        )
    logger.info(
        "weights converted to TFLite",
        extra={"weights_id": weights.weights_id, "path": str(target), "seconds": time.monotonic() - started},
    )


def _convert_main(argv: Sequence[str]) -> None:
    """Entry point of the conversion child process."""
    import tensorflow as tf

    spec, path, weights_id, target = argv
    weights = WeightsRef(spec=spec, path=Path(path) if path else None, weights_id=weights_id)
    converter = tf.lite.TFLiteConverter.from_keras_model(build_keras_model(weights))
    _write_atomically(Path(target), converter.convert())


# -- featurizers -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Featurizer:
    """`featurizer(batch)`: (n, 224, 224, 3) preprocessed images → (n, 1280) float32 MobileNetV2 features."""

    weights_id: str
    backend: Backend
    batch_size: int
    # Runs the model on at most `batch_size` images.
    predict_chunk: Callable[[F32], F32] = field(repr=False)

    def __call__(self, batch: F32) -> F32:
        if batch.ndim != 4 or batch.shape[1:] != _INPUT_SHAPE or batch.dtype != np.float32:
            raise ValueError(
                f"expected a float32 array of shape (n, {IMAGE_SIZE}, {IMAGE_SIZE}, 3), "
                f"got {batch.dtype} {batch.shape}"
            )
        if len(batch) == 0:
            return np.empty((0, FEATURE_DIM), dtype=np.float32)
        chunks = [
            self.predict_chunk(np.ascontiguousarray(batch[i : i + self.batch_size]))
            for i in range(0, len(batch), self.batch_size)
        ]
        return np.concatenate(chunks)


class _LiteRtModel:
    """A LiteRT interpreter (XNNPACK, the default CPU delegate) resized to the chunk's batch dimension."""

    def __init__(self, model_path: Path, *, batch_size: int, num_threads: int) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(model_path=str(model_path), num_threads=num_threads)
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        self._lock = threading.Lock()  # an interpreter is not thread-safe; the cached featurizer is shared
        self._rows = 0
        self._resize(batch_size)

    def _resize(self, rows: int) -> None:
        # Only a short last chunk changes the size; re-allocating costs a few ms, less than padding would.
        self._interpreter.resize_tensor_input(self._input, [rows, *_INPUT_SHAPE])
        self._interpreter.allocate_tensors()
        self._rows = rows

    def __call__(self, chunk: F32) -> F32:
        with self._lock:
            if len(chunk) != self._rows:
                self._resize(len(chunk))
            self._interpreter.set_tensor(self._input, chunk)
            self._interpreter.invoke()
            features: F32 = self._interpreter.get_tensor(self._output)
            return features


def _tensorflow_model(weights: WeightsRef, *, batch_size: int, num_threads: int) -> Callable[[F32], F32]:
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(num_threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow was initialised earlier in this process: its settings stay
        logger.warning(
            "TensorFlow already initialised, num_threads ignored", extra={"num_threads": num_threads}
        )
    model = build_keras_model(weights)

    # One fixed input shape: chunks are padded to batch_size, so the function is traced exactly once.
    @tf.function(
        input_signature=[tf.TensorSpec([batch_size, *_INPUT_SHAPE], tf.float32)],
        jit_compile=False,
        reduce_retracing=True,
    )
    def forward(x: Any) -> Any:
        return model(x, training=False)

    def predict(chunk: F32) -> F32:
        rows = len(chunk)
        padded = np.zeros((batch_size, *_INPUT_SHAPE), dtype=np.float32)
        padded[:rows] = chunk
        features: F32 = forward(padded).numpy()[:rows]
        return features

    return predict


def make_featurizer(
    weights: str,
    *,
    backend: Backend = "litert",
    cache_dir: Path | None = None,
    batch_size: int = 32,
    num_threads: int = 1,
) -> Featurizer:
    """Load the model for `weights` (a POMONA_WEIGHTS value) on `backend`; see `get_featurizer` to reuse it."""
    if backend not in BACKENDS:
        raise SettingsError(f"POMONA_BACKEND: expected one of {list(BACKENDS)}, got {backend!r}")
    if batch_size < 1 or num_threads < 1:
        raise ValueError(f"expected batch_size and num_threads >= 1, got {batch_size} and {num_threads}")
    started = time.monotonic()
    cache_dir = cache_dir or default_cache_dir()
    ref = resolve_weights(weights, cache_dir=cache_dir)
    predict: Callable[[F32], F32]
    if backend == "litert":
        model_path = convert_to_tflite(ref, cache_dir=cache_dir)
        predict = _LiteRtModel(model_path, batch_size=batch_size, num_threads=num_threads)
    else:
        predict = _tensorflow_model(ref, batch_size=batch_size, num_threads=num_threads)
    logger.info(
        "featurizer loaded",
        extra={"backend": backend, "weights_id": ref.weights_id, "seconds": time.monotonic() - started},
    )
    return Featurizer(
        weights_id=ref.weights_id, backend=backend, batch_size=batch_size, predict_chunk=predict
    )


_LOAD_LOCK = threading.Lock()


def get_featurizer(
    weights: str,
    backend: Backend = "litert",
    *,
    cache_dir: Path | None = None,
    batch_size: int = 32,
    num_threads: int = 1,
) -> Featurizer:
    """`make_featurizer`, memoised per process: a reused Spark Python worker loads the model once.

    A changed weights object behind the same spec is picked up when the worker is restarted.
    """
    with _LOAD_LOCK:  # two threads asking at once load the model once
        return _cached_featurizer(weights, backend, cache_dir or default_cache_dir(), batch_size, num_threads)


@functools.cache
def _cached_featurizer(
    weights: str, backend: Backend, cache_dir: Path, batch_size: int, num_threads: int
) -> Featurizer:
    return make_featurizer(
        weights, backend=backend, cache_dir=cache_dir, batch_size=batch_size, num_threads=num_threads
    )
