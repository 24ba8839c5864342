"""`pomona bench history`: one run of the same batch, after histories of N committed images.

For each N, in one run of the bench:
- a fresh embedded stack in a process of its own, so the emulator's CPU and memory (a million index items) are
  not the job's;
- a history of N synthetic committed images in batches of `batch_images`, written by the job's own commit code
  (`history_data`): the dedupe index, PCA versions with retention, LATEST, table snapshots and manifests, as N
  images of real runs would leave them;
- the same batch of `images` synthetic fruit photos, uploaded and ingested by the Lambda handler;
- one run of the job in a fresh driver process (`local[2]`, random weights): `run_s` is the run alone (Spark's
  start-up and the model's preparation are outside it), `driver_peak_rss_mb` the driver's Python process's peak
  RSS, `requests` what the emulator received meanwhile (moto's recorder), by service and operation.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qs, urlsplit

from rich.console import Console

from pomona.bench.history_data import BATCH_IMAGES, build_history
from pomona.bench.ingest import bench_files
from pomona.core.settings import Settings
from pomona.local.poller import EventSourcePoller
from pomona.local.upload import upload_files

DEFAULT_SEEN = (0, 100_000, 1_000_000)
STACK_READY_TIMEOUT_S = 120
# Marks the child processes' one line of result on stdout, among whatever their libraries log there.
RESULT = "pomona-bench-history: "


def run(
    *, seen: Sequence[int] = DEFAULT_SEEN, images: int = 256, batch_images: int = BATCH_IMAGES
) -> dict[str, Any]:
    runs = [_level(n, images=images, batch_images=batch_images) for n in seen]
    first = runs[0]
    ratios = [
        {
            "seen": level["seen"],
            **{key: round(level[key] / first[key], 3) for key in ("run_s", "driver_peak_rss_mb")},
            "requests": round(level["requests"]["total"] / first["requests"]["total"], 3),
        }
        for level in runs[1:]
    ]
    return {"images": images, "batch_images": batch_images, "runs": runs, "ratios_to_first": ratios}


def _level(seen: int, *, images: int, batch_images: int) -> dict[str, Any]:
    # The stack's environment (endpoint, region, credentials) is the whole level's, as `local up` would give it.
    with stack_process() as (env, recording), _environment(env):
        settings = Settings.from_env(env).replace(weights="random")
        clock = time.monotonic()
        build_history(settings, seen=seen, batch_images=batch_images)
        build_s = time.monotonic() - clock
        queued = _ingest(settings, images)
        endpoint = settings.endpoint_url
        recorder(endpoint, "start-recording")
        job = _job_process({**env, **settings.to_env()})
        recorder(endpoint, "stop-recording")
        requests = count_requests(recorded(recording))
    assert job["n_seen"] == seen + queued, f"expected {seen} + {queued} images committed, found {job}"
    return {
        "seen": seen,
        "run_s": job["run_s"],
        "driver_peak_rss_mb": job["driver_peak_rss_mb"],
        "requests": requests,
        "featurized": job["featurized"],
        "timings": job["timings"],
        "history_build_s": round(build_s, 1),
    }


@contextlib.contextmanager
def stack_process() -> Iterator[tuple[dict[str, str], Path]]:
    """An embedded stack in a child process, alive until the block ends: its environment and recording file."""
    with tempfile.TemporaryDirectory(prefix="pomona-bench-history-") as tmp:
        recording = Path(tmp) / "requests.jsonl"
        with subprocess.Popen(
            [sys.executable, "-m", "pomona.bench.history", "stack"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "MOTO_RECORDER_FILEPATH": str(recording)},
        ) as child:
            assert child.stdin is not None
            assert child.stdout is not None
            try:
                yield _ready(child.stdout), recording
            finally:
                child.stdin.close()  # the child's signal to stop
                child.wait(timeout=60)


def _ready(stdout: IO[str]) -> dict[str, str]:
    deadline = time.monotonic() + STACK_READY_TIMEOUT_S
    for line in stdout:
        if line.startswith(RESULT):
            env: dict[str, str] = json.loads(line.removeprefix(RESULT))
            return env
        if time.monotonic() > deadline:
            break
    raise RuntimeError("expected the embedded stack's environment from its process, found none")


def _ingest(settings: Settings, images: int) -> int:
    """Upload `images` synthetic fruits and run the ingestion handler over them; how many it queued."""
    upload_files(
        bench_files(images, settings, bad_every=0, duplicate_every=0), settings, console=Console(quiet=True)
    )
    # The handler's logger takes sys.stdout when first imported: stderr then, as stdout carries the result.
    with contextlib.redirect_stdout(sys.stderr):
        from pomona.ingest import handler

        handler._ingestor.cache_clear()  # its clients were built for whatever environment came before
        EventSourcePoller(settings.events_queue_url, handler.lambda_handler, retry_after_s=1).drain()
    return images


@contextlib.contextmanager
def _environment(env: Mapping[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _job_process(env: Mapping[str, str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "pomona.bench.history", "job"],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, **env, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith(RESULT)]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"the bench's job process failed ({out.returncode}): {out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1].removeprefix(RESULT))
    return result


def recorder(endpoint: str | None, action: str) -> None:
    request = urllib.request.Request(f"{endpoint}/moto-api/recorder/{action}", method="POST")
    urllib.request.urlopen(request, timeout=30).close()


def recorded(recording: Path) -> Iterator[dict[str, Any]]:
    """The recorded requests. moto's recorder writes each entry and its newline in two appends, so entries from
    concurrent requests can share a line: each line is read as a run of JSON documents."""
    if not recording.exists():
        return
    decoder = json.JSONDecoder()
    with recording.open() as lines:
        for line in lines:
            at = 0
            while (at := len(line) - len(line[at:].lstrip())) < len(line):
                entry, at = decoder.raw_decode(line, at)
                yield entry


_SERVICE = re.compile(r"Credential=[^/]+/[^/]+/[^/]+/([^/]+)/")


# Where the tables' metadata lives in the bench's deployments, whose outputs are at the bucket root.
TABLES_PREFIX = "iceberg/"


def _in_tables(path: str, prefixes: list[str]) -> bool:
    """Whether an S3 request's key (`/<bucket>/<key>`) or listed prefix is the tables' metadata."""
    key = path.lstrip("/").partition("/")[2]
    return any(name.startswith(TABLES_PREFIX) for name in (key, *prefixes))


def count_requests(entries: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Recorded requests by `service:Operation`, with their `total`."""
    counts = Counter(request_name(e["headers"], e["method"], e["url"]) for e in entries)
    return {"total": sum(counts.values()), **dict(sorted(counts.items()))}


def request_name(headers: Mapping[str, str], method: str, url: str) -> str:
    """`service:Operation` of a signed AWS request: JSON protocols name it in X-Amz-Target, S3 by its shape (and
    `s3-tables:` for the Iceberg tables' files)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    found = _SERVICE.search(lowered.get("authorization", ""))
    service = found.group(1) if found else "unsigned"
    if target := lowered.get("x-amz-target"):
        return f"{service}:{target.rsplit('.', 1)[-1]}"
    query = parse_qs(urlsplit(url).query, keep_blank_values=True)
    if "Action" in query:
        return f"{service}:{query['Action'][0]}"
    if service != "s3":
        return f"{service}:{method}"
    if _in_tables(urlsplit(url).path, query.get("prefix", [])):
        service = "s3-tables"  # the Iceberg tables' metadata and manifests, apart from the outputs
    if method == "GET" and ("list-type" in query or "prefix" in query):
        return f"{service}:ListObjectsV2"
    if method == "POST" and "delete" in query:
        return f"{service}:DeleteObjects"
    if method == "PUT" and "x-amz-copy-source" in lowered:
        return f"{service}:CopyObject"
    verbs = {"GET": "GetObject", "HEAD": "HeadObject", "PUT": "PutObject", "DELETE": "DeleteObject"}
    return f"{service}:{verbs.get(method, method)}"


# -- the child processes ---------------------------------------------------------------------------------------


def _serve_stack() -> None:
    """An embedded stack until stdin closes; its environment is the one line of JSON on stdout."""
    from pomona.local.stack import start_stack

    stack = start_stack()
    print(RESULT + json.dumps(stack.env()), flush=True)
    sys.stdin.read()
    stack.stop()


def _run_job() -> None:
    """One run of the job on `local[2]` against the environment's deployment: its time, peak RSS and manifest."""
    import resource

    from pomona.featurize.driver import Job, JobOptions
    from pomona.featurize.entry import spark_session
    from pomona.featurize.lineage import prepare_model

    settings = Settings.from_env()
    spark = spark_session("local[2]", app_name="pomona-bench-history")
    try:
        prepare_model(settings)
        clock = time.monotonic()
        manifest = Job(spark, settings, JobOptions()).run().manifest
        run_s = time.monotonic() - clock
    finally:
        spark.stop()
    assert manifest is not None, "expected the bench's batch to commit"
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    result = {
        "run_s": round(run_s, 2),
        "driver_peak_rss_mb": round(peak_kb / 1024, 1),
        "featurized": manifest["counts"]["featurized"],
        "n_seen": manifest["n_seen"],
        "timings": manifest["timings"],  # the job's phases, in seconds
    }
    print(RESULT + json.dumps(result), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pomona.bench.history", description=__doc__.split("\n")[0]
    )
    parser.add_argument("role", choices=["stack", "job"], help="the bench's child processes")
    args = parser.parse_args(argv)
    _serve_stack() if args.role == "stack" else _run_job()


if __name__ == "__main__":
    main()
