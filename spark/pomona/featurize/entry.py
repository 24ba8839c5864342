"""The job's entry point: the SparkApplication's `spark/main.py` and spark-submit call `main`."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pomona.core.settings import AUTO, PRECISIONS, Settings
from pomona.featurize.driver import JobOptions, run_job
from pomona.featurize.liveness import EXIT_STOPPED, RunStoppedError
from pomona.featurize.lock import ConcurrentRunError
from pomona.ml.backends import BACKENDS

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

EXIT_CONCURRENT_RUN = 75  # EX_TEMPFAIL: another run was working; retry later


def spark_session(master: str | None = None, app_name: str = "pomona-featurize") -> SparkSession:
    from pyspark.sql import SparkSession

    # Python workers run this interpreter (and so see this environment's packages) unless told otherwise.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if master and master.startswith("local"):
        os.environ.setdefault(
            "SPARK_LOCAL_IP", "127.0.0.1"
        )  # a laptop's hostname may not resolve to loopback
    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    if master and (master == "local" or master.startswith("local[")):
        # One short-lived JVM is driver and executor: C2's compilations cost more CPU than they pay back in a run
        # (about half the JVM's CPU; the README's "Where the job's CPU goes"), on cores the model needs.
        # Set in code, so it replaces a spark-defaults.conf value for local runs.
        builder = builder.config("spark.driver.extraJavaOptions", "-XX:TieredStopAtLevel=1")
    return (
        builder.config("spark.python.worker.reuse", "true")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "256")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pomona-featurize", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--max-images", type=int, default=None, help="cap on images per run (POMONA_MAX_IMAGES)"
    )
    parser.add_argument("--weights", default=None, help="imagenet | random | PATH | s3://… (POMONA_WEIGHTS)")
    parser.add_argument("--backend", choices=[*sorted(BACKENDS), AUTO], default=None, help="POMONA_BACKEND")
    parser.add_argument("--precision", choices=[*PRECISIONS, AUTO], default=None, help="POMONA_PRECISION")
    parser.add_argument("--master", default=None, help="Spark master when not launched by spark-submit")
    lease_s = JobOptions().visibility_timeout_s
    parser.add_argument(
        "--visibility-timeout",
        type=int,
        default=None,
        help=f"seconds the received messages stay hidden if this run dies (default {lease_s})",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the SparkApplication (spark/main.py) and spark-submit. `pomona job run` calls the same
    `run_job` with a local session, and reports a concurrent run as one error line."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    settings = Settings.from_env().override(
        max_images=args.max_images, weights=args.weights, backend=args.backend, precision=args.precision
    )
    options = JobOptions()
    if args.visibility_timeout is not None:
        options = dataclasses.replace(options, visibility_timeout_s=args.visibility_timeout)
    spark = spark_session(args.master)
    try:
        result = run_job(spark, settings, options)
    except ConcurrentRunError as err:
        # Expected when runs overlap: nothing was committed, the other run carries on; no traceback needed.
        log.error("Run stopped: another run holds the lock or committed first", extra={"error": str(err)})
        return EXIT_CONCURRENT_RUN
    except RunStoppedError as err:
        log.error("Run stopped by its watchdog; its messages were given back", extra={"reason": str(err)})
        return EXIT_STOPPED
    finally:
        spark.stop()
    log.info("Run finished", extra={"committed": result.manifest is not None, "skipped": result.skipped})
    return 0
