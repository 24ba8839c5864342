"""The seed project's pattern, measured on the images `bench featurize` gives the job: what the job is compared with.

As the seed ran it: Spark reads the photos from local disk with `binaryFile`; the driver builds the Keras
MobileNetV2 from the weights file and broadcasts its weights; an iterator pandas UDF rebuilds the model from them
once per partition and calls `model.predict` on each Arrow batch; MLlib's StandardScaler and PCA (`bench featurize`
gives the headline job's k) project the features, and the projections are written to Parquet. `local[2]`. Like the
seed, it reads the `*.jpg` files under the folder, whatever their depth.

Spark start-up (the JVM, and a Python worker per core with TensorFlow imported) is timed apart, as the job's is,
and so is the driver's TensorFlow import; the model's build and broadcast count. The features are computed once
and cached for the scaler's and PCA's passes: the seed at its most favourable, one model pass per image.

It runs in a child process, so TensorFlow's memory and the Spark session leave with it: `run` starts that child and
returns the JSON object it prints.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd  # at module level: pyspark reads the pandas UDFs' type hints from the module's globals

from pomona.bench.cpu import cpu_s, descendants, parents, runs
from pomona.core.errors import PomonaError

MASTER = "local[2]"
# Imported, not run as __main__, so the UDF's helpers pickle by reference to this module.
_CHILD = "import sys; from pomona.bench.seed_pattern import main; main(sys.argv[1:])"


class SeedPatternError(PomonaError, RuntimeError):
    """The seed pattern's process failed."""


def run(images: Path, *, weights: str, k: int, out: Path | None = None) -> dict[str, Any]:
    """The seed pattern over every JPEG under `images` (label folders), in a fresh process; `out` keeps its Parquet
    projections (default: a temporary folder, removed)."""
    with tempfile.TemporaryDirectory(prefix="pomona-seed-") as scratch:
        target = out or Path(scratch) / "projections"
        completed = subprocess.run(
            [
                sys.executable,
                "-c",
                _CHILD,
                str(images),
                "--weights",
                weights,
                "--k",
                str(k),
                "--out",
                str(target),
            ],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYSPARK_PYTHON": sys.executable},
        )
    if completed.returncode != 0:
        # Its traceback's last line names the failure (TensorFlow missing, weights unreadable, …).
        last = completed.stderr.strip().splitlines()[-1:] or ["no error output"]
        raise SeedPatternError(
            f"expected the seed pattern's process to exit 0, got {completed.returncode}: {last[0]}"
        )
    # Python workers share the child's stdout: the result is its last JSON line.
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def measure(images: Path, *, weights: str, k: int, out: Path) -> dict[str, Any]:
    """The pattern in this process: images/s from the model's build to the projections written."""
    from pyspark.sql import SparkSession

    clock = time.monotonic()
    spark = (
        SparkSession.builder.master(MASTER)
        .appName("pomona-bench-seed-pattern")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    try:
        _start_python_workers(spark)
        import keras  # noqa: F401  # the driver's TensorFlow import is start-up too

        startup_s = time.monotonic() - clock
        cpu_before = _spark_cpu_s()
        result = _seed_pattern(spark, images, weights=weights, k=k, out=out)
        cpu = _spark_cpu_s() - cpu_before
    finally:
        spark.stop()
    count = result["images"]
    return {
        "seed_img_s": round(count / result["seed_s"], 1),
        **result,
        "spark_startup_s": round(startup_s, 2),
        "pca_k": k,
        "master": MASTER,
        # The driver (its Python and its JVM) and the Python workers, as the job's `cpu_ms_per_image.job`.
        "cpu_ms_per_image": round(cpu * 1000 / max(count, 1), 2),
    }


def _seed_pattern(spark: Any, images: Path, *, weights: str, k: int, out: Path) -> dict[str, Any]:
    from pyspark.ml.feature import PCA, StandardScaler
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.functions import pandas_udf
    from pyspark.sql.types import ArrayType, FloatType
    from pyspark.storagelevel import StorageLevel

    from pomona.core.settings import Settings
    from pomona.ml.mobilenet import build_keras_model
    from pomona.ml.weights import resolve_weights

    started = time.monotonic()
    model = build_keras_model(resolve_weights(weights, cache_dir=Settings.from_env().model_cache_dir))
    weights_broadcast = spark.sparkContext.broadcast(model.get_weights())
    model_s = time.monotonic() - started

    @pandas_udf(ArrayType(FloatType()))  # type: ignore[call-overload]  # the stubs predate iterator UDFs typed by hints
    def featurize(contents: Iterator[pd.Series]) -> Iterator[pd.Series]:
        rebuilt = _rebuild_model(weights_broadcast.value)
        for content in contents:
            batch = np.stack([_preprocess(data) for data in content])
            yield pd.Series(list(rebuilt.predict(batch, verbose=0)))

    photos = (
        spark.read.format("binaryFile")
        .option("pathGlobFilter", "*.jpg")
        .option("recursiveFileLookup", "true")
        .load(str(images))
    )
    features = photos.select(
        "path",
        F.element_at(F.split("path", "/"), -2).alias("label"),
        array_to_vector(featurize("content")).alias("features"),
    ).persist(StorageLevel.MEMORY_AND_DISK)
    count = features.count()
    featurized = time.monotonic()

    scaler = StandardScaler(inputCol="features", outputCol="scaled", withMean=True, withStd=True)
    scaled = scaler.fit(features).transform(features)
    pca = PCA(k=k, inputCol="scaled", outputCol="projection").fit(scaled)
    pca.transform(scaled).select("path", "label", "projection").write.mode("overwrite").parquet(str(out))
    finished = time.monotonic()
    features.unpersist()
    return {
        "images": count,
        "seed_s": round(finished - started, 2),
        "model_broadcast_s": round(model_s, 2),
        "featurize_s": round(featurized - started - model_s, 2),
        "scaler_pca_write_s": round(finished - featurized, 2),
    }


def _rebuild_model(weights: list[Any]) -> Any:
    """The seed's executor side: the architecture built again, the broadcast weights set into it."""
    import keras

    model = keras.applications.MobileNetV2(
        alpha=1.0, include_top=False, pooling="avg", input_shape=(224, 224, 3), weights=None
    )
    model.set_weights(weights)
    return model


def _preprocess(data: bytes) -> Any:
    """The seed's preprocessing: Pillow's resize to 224×224, then MobileNetV2's scaling to [-1, 1]."""
    from keras.applications.mobilenet_v2 import preprocess_input
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        pixels = np.asarray(img.convert("RGB").resize((224, 224)), dtype=np.float32)
    return preprocess_input(pixels)


def _start_python_workers(spark: Any) -> None:
    """One Python worker per core, TensorFlow imported, reused by the pattern's tasks (as the job's start-up
    brings its workers up with the job's imports)."""
    from pyspark.sql.pandas.functions import pandas_udf

    @pandas_udf("long")  # type: ignore[call-overload]  # the stubs predate iterator UDFs typed by hints
    def import_keras(ids: Iterator[pd.Series]) -> Iterator[pd.Series]:
        import keras  # noqa: F401

        yield from ids

    parallelism = spark.sparkContext.defaultParallelism
    spark.range(0, parallelism, numPartitions=parallelism).select(import_keras("id")).collect()


def _spark_cpu_s() -> float:
    """CPU seconds so far of this process (the driver), its JVM and that JVM's Python workers."""
    me, tree = os.getpid(), parents()
    jvms = [pid for pid, parent in tree.items() if parent == me]
    workers = [pid for jvm in jvms for pid in descendants(jvm, tree) if runs(pid, b"pyspark.daemon")]
    total = cpu_s(me, reaped=False)
    for pid, reaped in [*((jvm, False) for jvm in jvms), *((worker, True) for worker in workers)]:
        try:
            total += cpu_s(pid, reaped=reaped)
        except OSError:  # gone since it was listed: its time is in its parent's reaped time
            continue
    return total


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("images", type=Path, help="a folder of <label>/<image>.jpg files")
    parser.add_argument("--weights", required=True, help="a POMONA_WEIGHTS value")
    parser.add_argument("--k", type=int, required=True, help="PCA components")
    parser.add_argument("--out", type=Path, required=True, help="where the Parquet projections go")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.images, weights=args.weights, k=args.k, out=args.out)))


if __name__ == "__main__":
    main()
