"""`pomona local up`: the embedded stack in the foreground, for real clients to upload to and watch.

The Lambda poller runs continuously; the Spark job runs on a schedule when the images queue holds work.
Ctrl-C stops everything cleanly. State lives in memory: it does not survive a restart.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import signal
import threading
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

from pomona.core.errors import PomonaError, SettingsError
from pomona.core.queues import queue_depth
from pomona.local.function_url import FunctionUrlServer
from pomona.local.poller import EventSourcePoller
from pomona.local.stack import EmbeddedStack

if TYPE_CHECKING:
    from pomona.featurize.driver import BatchResult

log = logging.getLogger(__name__)
_INTERVAL = re.compile(r"(\d+)([smh])")


def parse_interval(text: str) -> timedelta:
    """`30s`, `1m`, `2h` → a timedelta."""
    match = _INTERVAL.fullmatch(text.strip())
    if not match:
        raise SettingsError(f"--schedule: expected a number and s, m or h such as 1m, got {text!r}")
    units = {"s": "seconds", "m": "minutes", "h": "hours"}
    return timedelta(**{units[match.group(2)]: int(match.group(1))})


def export_lines(env: dict[str, str]) -> list[str]:
    return [f"export {name}={value}" for name, value in sorted(env.items())]


def serve(
    stack: EmbeddedStack, *, every: timedelta, workers: int, console: Console, classify_port: int = 0
) -> None:
    """Poll the events queue into the handler, run the job every `every` while there is work, and answer
    classify requests on http://127.0.0.1:`classify_port`/ (0: a free port), until Ctrl-C."""
    from pomona.featurize.driver import run_job
    from pomona.featurize.entry import spark_session

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    settings = stack.settings
    with contextlib.redirect_stdout(
        io.StringIO()
    ):  # the handler's JSON logs: CloudWatch's, not the console's
        from pomona.ingest import handler
    handler._ingestor.cache_clear()
    poller = EventSourcePoller(settings.events_queue_url, handler.lambda_handler, retry_after_s=5)
    classify = classify_endpoint(port=classify_port)
    console.print(
        f"classify endpoint [bold]{classify.url}[/] (POST a photo, or open it in a browser; 503 until a batch"
        " is committed)"
    )
    spark: Any = None
    next_run = time.monotonic() + every.total_seconds()
    try:
        while not stop.is_set():
            with contextlib.redirect_stdout(io.StringIO()):
                stats = poller.poll_once()
            if stats.received:
                console.print(f"ingested {stats.succeeded} events ({stats.failed} failed)")
            if time.monotonic() >= next_run:
                next_run = time.monotonic() + every.total_seconds()
                # A failed run is the stack's news, never its end: its messages come back and the next tick retries
                # them, as the schedule would on a cluster.
                try:
                    if _backlog(stack) > 0:
                        spark = spark or spark_session(f"local[{workers}]", app_name="pomona-local")
                        console.print(_told(run_job(spark, settings)))
                except Exception as err:  # whatever the cause: the stack stays up, and says why in one line
                    log.debug("Scheduled run failed", exc_info=True)
                    console.print(f"[bold red]run failed:[/] {escape(_one_line(err))}")
            if not stats.received:
                stop.wait(1.0)
    except (
        KeyboardInterrupt
    ):  # pyspark's own SIGINT handler (once Spark has started) cancels the run and raises
        pass
    finally:
        classify.stop()
        if spark is not None:
            spark.stop()
        console.print("stopped")


def classify_endpoint(*, port: int) -> FunctionUrlServer:
    """The classify Lambda's handler behind a local Function URL, quiet: its logs and metrics are CloudWatch's.
    A browser opening `/` gets the classify page, which asks that same handler."""
    from pomona.classify import handler
    from pomona.local.page import classify_page

    handler.logger.setLevel(logging.WARNING)
    os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"  # read at each flush
    handler._served.cache_clear()  # built from this stack's environment on the first request
    return FunctionUrlServer(handler.lambda_handler, port=port, page=classify_page()).start()


def _told(result: BatchResult) -> str:
    if result.manifest is None:
        return f"no batch committed: {result.skipped}"
    return f"batch {result.manifest['batch_id']} committed: PCA v{result.manifest['pca_version']}"


def _one_line(err: Exception) -> str:
    """Our errors say what was expected and found; anyone else's get their type named too."""
    first = next(iter(str(err).splitlines()), "")
    return first if isinstance(err, PomonaError) and first else f"{type(err).__name__}: {first}"


def _backlog(stack: EmbeddedStack) -> int:
    import boto3

    sqs = boto3.client("sqs", endpoint_url=stack.endpoint_url)
    return queue_depth(sqs, stack.settings.images_queue_url)["visible"]
