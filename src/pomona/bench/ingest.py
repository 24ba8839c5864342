"""`pomona bench ingest`: N uploads through the embedded stack as fast as it goes, then one job run.

Stages run one after another so each has its own rate: the uploads (8 threads, as `pomona upload`), the Lambda
handler fed by the local event-source poller (one invocation at a time, batches of 10), and the featurization job
on `local[N]` (Spark start-up and the model conversion excluded). A sampler records the depth of the events and
images queues over the whole run. The accounting closes the run: uploaded = accepted + quarantined,
accepted = featurized + failed + duplicates, and `missing` (uploads that ended nowhere) must be 0.

Uploads: synthetic 100×100 fruit; every `bad_every`-th is one of the demo's bad uploads (quarantined) and every
`duplicate_every`-th repeats the last good upload's bytes under another key (a duplicate for the job).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import boto3

from pomona.core.aws import RETRIES
from pomona.core.queues import queue_depth
from pomona.core.settings import Settings
from pomona.demo.run import summarize
from pomona.local.poller import EventSourcePoller, PollStats
from pomona.local.stack import EmbeddedStack, embedded_stack
from pomona.local.upload import upload_files, upload_key
from pomona.testing.samples import SYNTHETIC_LABELS, bad_uploads, fruit_image

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient


def bench_files(
    count: int, settings: Settings, *, bad_every: int, duplicate_every: int
) -> list[tuple[str, bytes]]:
    """`count` (key, body) uploads: synthetic fruit with a bad upload every `bad_every` and, every
    `duplicate_every`, the last good upload's bytes again under a key of its own (0 turns either off)."""
    bad = bad_uploads()
    files: list[tuple[str, bytes]] = []
    previous: bytes | None = None  # the last good upload's bytes, for the next duplicate
    for i in range(count):
        if bad_every and i % bad_every == bad_every - 1:
            name, body, reason = bad[(i // bad_every) % len(bad)]
            files.append((upload_key(settings, "Unknown", f"{i:06d}-{reason.value}-{name}"), body))
            continue
        label = SYNTHETIC_LABELS[i % len(SYNTHETIC_LABELS)]
        if previous is None or not (duplicate_every and i % duplicate_every == duplicate_every - 1):
            previous = fruit_image(label, i)
        files.append((upload_key(settings, label, f"{i:06d}.jpg"), previous))
    return files


def run(
    *,
    count: int = 5000,
    workers: int = 2,
    weights: str = "random",
    backend: str = "litert",
    bad_every: int = 100,
    duplicate_every: int = 50,
    sample_every_s: float = 0.5,
) -> dict[str, Any]:
    from pomona.featurize.driver import run_job, timed
    from pomona.featurize.entry import spark_session
    from pomona.featurize.lineage import prepare_model

    timings: dict[str, float] = {}
    with embedded_stack() as stack:
        settings = stack.settings.replace(weights=weights, backend=backend, max_images=count)
        files = bench_files(count, settings, bad_every=bad_every, duplicate_every=duplicate_every)
        prepare_model(settings)
        # The handler's JSON logs and EMF metrics (CloudWatch's share) would drown the JSON this prints.
        with Path(os.devnull).open("w") as devnull, contextlib.redirect_stdout(devnull):
            from pomona.ingest import handler

            handler._ingestor.cache_clear()
            poller = EventSourcePoller(settings.events_queue_url, handler.lambda_handler, retry_after_s=1)
            spark = spark_session(f"local[{workers}]", app_name="pomona-bench-ingest")
            try:
                with QueueSampler(settings, every_s=sample_every_s) as sampler:
                    with timed(timings, "upload"):
                        upload_files(files, settings)
                    with timed(timings, "ingest"):
                        invocations = _drain_events(poller, settings)
                    with timed(timings, "featurize"):
                        manifest = run_job(spark, settings).manifest
            finally:
                spark.stop()
        summary = summarize(settings, files=files, manifests=[manifest] if manifest else [], timings=timings)
        left = _queue_depths(stack)
    featurized = summary["featurized"]
    return {
        "uploaded": summary["uploaded"],
        "accepted": summary["accepted"],
        "quarantined": sum(summary["quarantined"].values()),
        "featurized": featurized,
        "failed": sum(summary["failed"].values()),
        "duplicates": summary["duplicates"],
        "missing": len(summary["missing"]),
        "left_on_queues": left,
        "upload_img_s": round(count / timings["upload"], 1),
        "ingest_img_s": round(count / timings["ingest"], 1),
        "featurize_img_s": round(featurized / timings["featurize"], 1) if featurized else 0.0,
        "end_to_end_img_s": round(count / sum(timings.values()), 1),
        "timings_s": {stage: round(seconds, 2) for stage, seconds in timings.items()},
        "job_timings_s": manifest["timings"] if manifest else None,
        "quarantined_by_reason": summary["quarantined"],
        "failed_by_reason": summary["failed"],
        "lambda_invocations": invocations.batches,
        "lambda_failed_records": invocations.failed,
        "workers": workers,
        "backend": backend,
        "weights": weights,
        # [t_s, events queue depth, images queue depth], t from the first upload; depth counts in-flight messages.
        "queue_depth": sampler.samples,
    }


def _drain_events(poller: EventSourcePoller, settings: Settings, *, timeout_s: float = 300) -> PollStats:
    """Poll until the events queue is empty, in flight included: a failed record comes back after the poller's
    retry delay, and after its last receive it is in the DLQ. Bounded, like every loop of a benchmark."""
    sqs = boto3.client("sqs", endpoint_url=settings.endpoint_url, config=RETRIES)
    stats = PollStats()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stats.add(poller.drain())
        if not _depth(sqs, settings.events_queue_url):
            break
        time.sleep(0.5)
    return stats


def accounting_holds(result: dict[str, Any]) -> bool:
    """Nothing lost, nothing counted twice: the two equations, no missing upload, nothing left on a queue."""
    return (
        result["uploaded"] == result["accepted"] + result["quarantined"]
        and result["accepted"] == result["featurized"] + result["failed"] + result["duplicates"]
        and result["missing"] == 0
        and not any(result["left_on_queues"].values())
    )


def _queue_depths(stack: EmbeddedStack) -> dict[str, int]:
    """Messages on every queue of the deployment (visible and in flight) once the run is over: all should be 0."""
    sqs = boto3.client("sqs", endpoint_url=stack.endpoint_url, config=RETRIES)
    names = {
        "events": stack.resources.events.name,
        "events_dlq": stack.resources.events.dlq_name,
        "images": stack.resources.images.name,
        "images_dlq": stack.resources.images.dlq_name,
    }
    return {
        queue: _depth(sqs, sqs.get_queue_url(QueueName=name)["QueueUrl"])
        for queue, name in names.items()
        if name
    }


def _depth(sqs: SQSClient, url: str) -> int:
    """Messages on the queue, visible and in flight."""
    return sum(queue_depth(sqs, url).values())


class QueueSampler:
    """Samples the events and images queue depths every `every_s` seconds in a thread, while in its `with`."""

    def __init__(self, settings: Settings, *, every_s: float) -> None:
        self.sqs = boto3.client("sqs", endpoint_url=settings.endpoint_url, config=RETRIES)
        self.urls = (settings.events_queue_url, settings.images_queue_url)
        self.every_s = every_s
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pomona-queue-sampler", daemon=True)
        self._started = time.monotonic()

    def __enter__(self) -> Self:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()  # the depths at the end

    def _run(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(self.every_s):
                return

    def _sample(self) -> None:
        events, images = (_depth(self.sqs, url) for url in self.urls)
        self.samples.append((round(time.monotonic() - self._started, 2), events, images))


__all__ = ["accounting_holds", "bench_files", "run"]
