"""Model weights: a POMONA_WEIGHTS value turned into a local file and an id written into every output's metadata.

"imagenet" downloads Keras' own file once into the cache, checked against the sha256 in MOBILENET_V2_SHA256
(production images bake it in at build time, checked against the same build argument, so a run downloads
nothing); `s3://bucket/key` is fetched by ETag; a path is used as it is; "random" needs no file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pomona.core.errors import PomonaError

# Where Keras itself downloads `MobileNetV2(include_top=False, weights="imagenet")` from
# (keras/src/applications/mobilenet_v2.py). Fetched directly so resolving weights never imports TensorFlow.
IMAGENET_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
IMAGENET_URL = f"https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/{IMAGENET_FILE}"
# The file's sha256: the variable the images' builds take it from (Dockerfile.spark and Dockerfile.classify's
# build argument), so a download here is checked against the value the images were built with.
IMAGENET_SHA256_VARIABLE = "MOBILENET_V2_SHA256"


class WeightsError(PomonaError, ValueError):
    """The weights spec (POMONA_WEIGHTS) cannot be turned into a usable model."""


@dataclass(frozen=True)
class WeightsRef:
    """Resolved weights: a local file (None for "random") and the id written into every output's metadata."""

    spec: str
    path: Path | None
    weights_id: str


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
    if target.is_file():  # baked by an image build, or downloaded and checked here
        return target
    expected = os.environ.get(IMAGENET_SHA256_VARIABLE, "").strip().lower()
    if not expected:
        raise WeightsError(
            f"expected {IMAGENET_SHA256_VARIABLE}=<sha256 of {IMAGENET_URL}> to check the download against, "
            "got none; or set POMONA_WEIGHTS to a local .weights.h5 path or an s3:// URI"
        )
    try:
        with urllib.request.urlopen(IMAGENET_URL, timeout=60) as response:
            data = response.read()
    except OSError as err:  # URLError, timeouts, DNS: every offline failure is an OSError
        raise WeightsError(
            f"expected to download the ImageNet weights from {IMAGENET_URL}, got {err}; "
            "offline, set POMONA_WEIGHTS to a local .weights.h5 path or an s3:// URI"
        ) from err
    found = hashlib.sha256(data).hexdigest()
    if found != expected:  # nothing is cached: a later run downloads again rather than trust this file
        raise WeightsError(
            f"expected the ImageNet weights from {IMAGENET_URL} to have sha256 {expected} "
            f"({IMAGENET_SHA256_VARIABLE}), found {found}: refused"
        )
    write_atomically(target, data)
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
            write_atomically(target, body)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as err:
        raise WeightsError(f"expected a readable weights object at {uri!r}, got {err}") from err
    return target


def write_atomically(target: Path, data: bytes) -> None:
    """Write then rename, so concurrent workers never see (or leave) a half-written file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False) as tmp:
        tmp.write(data)
    written = Path(tmp.name)
    written.chmod(
        0o644
    )  # readable by a Spark user other than the one who baked the cache (temp files are 0600)
    written.replace(target)
