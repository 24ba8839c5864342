"""`pomona bench autoscale`: the featurization job's executors following its backlog on a real cluster manager.

A Spark standalone master and workers run on loopback (`pomona.local.spark_cluster`), the AWS side is the embedded moto
stack, and a backlog of synthetic uploads goes through the real ingestion handler onto the images queue. The job
then runs with dynamic allocation from zero executors: the scheduler's backlog asks for executors, the workers
start them, and once the batch is committed they sit idle and are released. A background thread samples the
driver's count of live executors throughout, from its REST status API.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import urllib.request
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import boto3
from rich.console import Console

from pomona.bench.ingest import bench_files
from pomona.core.errors import PomonaError
from pomona.core.queues import queue_depth
from pomona.core.settings import Settings
from pomona.featurize.liveness import Periodic
from pomona.local.poller import EventSourcePoller
from pomona.local.spark_cluster import LOOPBACK, standalone_cluster
from pomona.local.stack import embedded_stack
from pomona.local.upload import upload_files

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def run(
    *,
    images: int = 256,
    workers: int = 2,
    idle_timeout_s: int = 5,
    after_s: float = 15.0,
    every_s: float = 0.5,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """Featurize `images` uploads on `workers` one-core workers, sampling executors until `after_s` past the end.

    `samples` holds `[t_s, executors]` pairs, t from the job's start, `changes` the samples where the count moved
    and `executors` when each executor was added and removed, as the driver recorded it. The job may have at most
    `workers` executors at once, each released after `idle_timeout_s` without tasks.
    """
    from pomona.featurize.driver import JobOptions, run_job
    from pomona.featurize.lineage import prepare_model

    # Random weights need no shared data; images_per_partition keeps the backlog at several tasks per executor.
    model = Settings.from_env().override(
        weights="random", backend="litert", cache_dir=str(cache_dir) if cache_dir else None
    )
    options = JobOptions(wait_s=0, images_per_partition=16)
    prepare_model(model)  # the one-off LiteRT conversion, kept out of the timeline
    with embedded_stack() as stack, standalone_cluster(workers) as cluster:
        settings = stack.settings.replace(
            weights=model.weights, backend=model.backend, cache_dir=model.cache_dir
        )
        queued = _ingest(stack.settings, images)
        spark = autoscaling_session(
            cluster.master_url, executor_env=stack.env(), max_executors=workers, idle_timeout_s=idle_timeout_s
        )
        try:
            with ExecutorSampler(spark, every_s=every_s) as sampler:
                result = run_job(spark, settings, options)
                job_s = sampler.elapsed()
                time.sleep(after_s)
            lifetimes = sampler.lifetimes()
        finally:
            spark.stop()
    samples = sampler.samples
    counts = [n for _, n in samples]
    manifest = result.manifest or {}
    return {
        "images": images,
        "queued": queued,
        "committed": manifest.get("counts", {}).get("featurized", 0),
        "workers": workers,
        "idle_timeout_s": idle_timeout_s,
        "job_s": round(job_s, 1),
        "max_executors": max(counts, default=0),
        "executors_at_end": counts[-1] if counts else 0,
        "first_executor_s": next((t for t, n in samples if n > 0), None),
        "released_s": _released_at(samples),
        "job_timings": manifest.get("timings", {}),
        "executors": lifetimes,
        "changes": changes(samples),
        "samples": samples,
    }


def changes(samples: list[tuple[float, int]]) -> list[tuple[float, int]]:
    """The first sample, each sample where the count differs from the one before, and the last sample."""
    kept = [s for i, s in enumerate(samples) if i == 0 or s[1] != samples[i - 1][1]]
    return kept + samples[-1:] if samples and kept[-1] != samples[-1] else kept


def autoscaling_session(
    master_url: str, *, executor_env: Mapping[str, str], max_executors: int, idle_timeout_s: int
) -> SparkSession:
    """A session on `master_url` with `job.spark_session`'s settings plus dynamic allocation from zero."""
    from pyspark.sql import SparkSession

    # The Python workers run this interpreter, where pomona is installed; on a real cluster the image carries it.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    conf = {
        # as job.spark_session
        "spark.python.worker.reuse": "true",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": "256",
        "spark.ui.showConsoleProgress": "false",
        # the executors reach the driver on loopback, as the workers do the master
        "spark.driver.host": LOOPBACK,
        "spark.driver.bindAddress": LOOPBACK,
        # One core and 1 GiB each: the LiteRT featurizer adds ~300 MB per Python worker outside the JVM.
        "spark.executor.cores": "1",
        "spark.executor.memory": "1g",
        # Without an external shuffle service, shuffle tracking lets idle executors go (as on Kubernetes).
        "spark.dynamicAllocation.enabled": "true",
        "spark.dynamicAllocation.shuffleTracking.enabled": "true",
        # The tree reduction's shuffle is read within its own job: an executor holding it may go when idle.
        "spark.dynamicAllocation.shuffleTracking.timeout": f"{idle_timeout_s}s",
        "spark.dynamicAllocation.minExecutors": "0",
        "spark.dynamicAllocation.initialExecutors": "0",
        "spark.dynamicAllocation.maxExecutors": str(max_executors),
        "spark.dynamicAllocation.executorIdleTimeout": f"{idle_timeout_s}s",
        "spark.dynamicAllocation.schedulerBacklogTimeout": "1s",
        # The executors reach the embedded stack with its credentials, as pods get theirs from the chart.
        **{f"spark.executorEnv.{name}": value for name, value in executor_env.items()},
    }
    builder = SparkSession.builder.master(master_url).appName("pomona-autoscale")
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    if spark.sparkContext.master != master_url:  # getOrCreate hands back a session already running here
        found = spark.sparkContext.master
        raise PomonaError(f"expected a Spark session on {master_url}, found one already running on {found}")
    return spark


class ExecutorSampler(Periodic):
    """Samples the number of live executors (the driver excluded) every `every_s` seconds in a thread."""

    def __init__(self, spark: SparkSession, *, every_s: float) -> None:
        super().__init__(every_s=every_s, name="pomona-executor-sampler", at_start=True)
        context = spark.sparkContext
        if context.uiWebUrl is None:
            raise PomonaError(
                "expected the Spark UI on (its REST API counts the executors), found it disabled"
            )
        self.url = f"{context.uiWebUrl}/api/v1/applications/{context.applicationId}"
        self.samples: list[tuple[float, int]] = []
        self._started = time.monotonic()
        self._started_at = time.time()

    def __enter__(self) -> Self:
        self.executors()  # the UI's first answer is slow (seconds on a busy machine): not part of the timeline
        self._started, self._started_at = time.monotonic(), time.time()
        return super().__enter__()

    def tick(self) -> bool:
        at = round(self.elapsed(), 1)
        # A sample missed while the driver is busy leaves a gap; the next one counts.
        with contextlib.suppress(OSError):
            self.samples.append((at, self.executors()))
        return False

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def executors(self) -> int:
        return sum(1 for executor in self._get("executors") if executor["id"] != "driver")

    def lifetimes(self) -> list[dict[str, Any]]:
        """Every executor the application had, with when it was added and removed (seconds on the timeline)."""
        return [
            {
                "id": executor["id"],
                "added_s": self._offset(executor["addTime"]),
                "removed_s": self._offset(executor["removeTime"]) if "removeTime" in executor else None,
            }
            for executor in self._get("allexecutors")
            if executor["id"] != "driver"
        ]

    def _get(self, path: str) -> list[dict[str, Any]]:
        # 30 s: the UI's first answer takes seconds on a busy machine, and a sample late is better than none.
        with urllib.request.urlopen(f"{self.url}/{path}", timeout=30) as response:
            found: list[dict[str, Any]] = json.load(response)
        return found

    def _offset(self, stamp: str) -> float:
        """Seconds from the timeline's start to one of the REST API's times ("2026-11-25T06:29:10.123GMT")."""
        when = datetime.strptime(stamp.replace("GMT", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z")
        return round(when.timestamp() - self._started_at, 1)


def _ingest(settings: Settings, images: int) -> int:
    """Upload `images` synthetic fruits and run the ingestion handler over them; returns the queue's depth."""
    from pomona.ingest import handler

    files = bench_files(images, settings, bad_every=0, duplicate_every=0)
    upload_files(files, settings, console=Console(quiet=True))
    handler._ingestor.cache_clear()  # its clients were built for whatever environment came before the stack's
    EventSourcePoller(settings.events_queue_url, handler.lambda_handler, retry_after_s=1).drain()
    sqs = boto3.client("sqs", endpoint_url=settings.endpoint_url)
    return queue_depth(sqs, settings.images_queue_url)["visible"]


def _released_at(samples: list[tuple[float, int]]) -> float | None:
    """When the executors were all gone for good: the first sample of the final run of zeros after work."""
    busy = [i for i, (_, n) in enumerate(samples) if n > 0]
    if not busy or busy[-1] == len(samples) - 1:
        return None
    return samples[busy[-1] + 1][0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pomona.bench.autoscale", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--after-s", type=float, default=15.0, help="sampling after the job ends")
    parser.add_argument("--cache-dir", type=Path, default=None, help="converted models (POMONA_CACHE_DIR)")
    args = parser.parse_args(argv)
    with contextlib.redirect_stdout(
        sys.stderr
    ):  # the handler logs to stdout; stdout carries the result alone
        result = run(images=args.images, workers=args.workers, after_s=args.after_s, cache_dir=args.cache_dir)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
