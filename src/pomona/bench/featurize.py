"""`pomona bench featurize`: the featurizer in a plain loop against the whole job on the embedded stack.

For each backend, in one run on the same images:
- bare: decode + preprocess + model in a plain loop (no Spark, no S3), in a fresh process for a clean peak RSS;
- job: upload, ingest through the Lambda handler, then the Spark job on `local[2]` (S3 → features + PCA → S3).
  Spark start-up (the JVM, and the Python workers with the job's imports) is timed apart, and so is the drain
  of the queue: it measures the embedded SQS (moto), not Pomona.
The embedded stack runs in a process of its own (`pomona.local.stack_process`), so `cpu_ms_per_image` can say
where the CPU went during the run, per process: the emulator, the driver (its Python and its JVM) and the Spark
Python workers; `job` is all but the emulator, and `bare` the plain loop's own.
Peak RSS per Python worker is read from /proc for the Spark Python workers while their session is alive.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pomona.local.upload import labelled_files, upload_files, upload_key


def run(
    *, images: Path, weights: str, backends: tuple[str, ...] = ("litert", "tensorflow")
) -> dict[str, Any]:
    from pomona.bench.refit import bench_refit

    files = [path for path, _ in labelled_files(images)]
    results = {backend: _measure(images, files, weights=weights, backend=backend) for backend in backends}
    first = results[backends[0]]
    return {**first, **{b: results[b] for b in backends[1:]}, "pca_refit": bench_refit()}


def _measure(images: Path, files: list[Path], *, weights: str, backend: str) -> dict[str, Any]:
    bare = _bare(files, weights=weights, backend=backend)
    job = _job(images, weights=weights, backend=backend)
    cpu = job.pop("cpu_ms_per_image")
    return {
        "backend": backend,
        "images": len(files),
        "bare_img_s": bare["bare_img_s"],
        "bare_peak_rss_mb": bare["peak_rss_mb"],
        **job,
        "ratio": round(job["job_img_s"] / bare["bare_img_s"], 3),
        "cpu_ms_per_image": {"bare": bare["cpu_ms_per_image"], **cpu},
    }


def _bare(files: list[Path], *, weights: str, backend: str) -> dict[str, Any]:
    """The plain loop, in its own process: nothing else's memory counts, and TensorFlow leaves with it."""
    code = (
        "import json, sys; from pathlib import Path; from pomona.bench.bare import run; "
        "files = [Path(p) for p in sys.argv[3:]]; "
        "print(json.dumps(run(files, weights=sys.argv[1], backend=sys.argv[2], num_threads=2)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, weights, backend, *map(str, files)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def _job(images: Path, *, weights: str, backend: str) -> dict[str, Any]:
    from pomona.bench.cpu import job_cpu
    from pomona.featurize.driver import prepare_model, run_job
    from pomona.featurize.entry import spark_session
    from pomona.local.poller import EventSourcePoller
    from pomona.local.stack_process import stack_process

    with stack_process() as stack, contextlib.redirect_stdout(io.StringIO()):
        settings = stack.settings.replace(weights=weights, backend=backend)
        upload_files(
            [
                (upload_key(settings, label, path.name), path.read_bytes())
                for path, label in labelled_files(images)
            ],
            settings,
        )
        from pomona.ingest import handler

        handler._ingestor.cache_clear()
        EventSourcePoller(settings.events_queue_url, handler.lambda_handler).drain()
        prepare_model(settings)
        clock = time.monotonic()
        spark = spark_session("local[2]", app_name=f"pomona-bench-{backend}")
        _start_python_workers(spark)
        startup_s = time.monotonic() - clock
        try:
            before = job_cpu(emulator_pid=stack.pid)
            manifest = run_job(spark, settings).manifest
            cpu = job_cpu(emulator_pid=stack.pid) - before
            worker_rss = _python_worker_peak_rss_mb()
        finally:
            spark.stop()
    assert manifest is not None, "the benchmark's batch did not commit"
    timings = manifest["timings"]
    work_s = timings["total_s"] - timings["drain_s"]
    return {
        "job_img_s": round(manifest["counts"]["featurized"] / work_s, 1),
        "job_s": round(work_s, 2),
        "drain_s": timings["drain_s"],
        "timings": timings,
        "spark_startup_s": round(startup_s, 2),
        "worker_peak_rss_mb": max(worker_rss, default=None),
        "workers": len(worker_rss),
        "cpu_ms_per_image": cpu.ms_per_image(manifest["counts"]["featurized"]),
    }


def _start_python_workers(spark: Any) -> None:
    """Bring the JVM and one Python worker per core up, with the job's imports, as a run's first tasks do: about
    2 s per run (a fresh process each), paid once whatever the batch size; it counts as Spark start-up here."""

    def imports(tasks: Iterator[int]) -> Iterator[int]:
        import pomona.featurize.tasks  # noqa: F401  # the executors' imports: the model, pandas, pyarrow, boto3

        yield from tasks

    # RDD tasks, as the job's passes are (DataFrame tasks have Python workers of their own).
    parallelism = spark.sparkContext.defaultParallelism
    spark.sparkContext.parallelize(range(parallelism), parallelism).mapPartitions(imports).collect()


def _python_worker_peak_rss_mb() -> list[float]:
    """Peak RSS (VmHWM) of each live Spark Python worker process on this machine."""
    peaks = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            if b"pyspark.daemon" not in cmdline and b"pyspark/daemon" not in cmdline:
                continue
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(round(int(line.split()[1]) / 1024, 1))
        except OSError:
            continue
    return peaks
