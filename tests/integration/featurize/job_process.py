"""The job as its pod runs it, in a process of its own, and what a test reads of the deployment around it."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from pyiceberg.catalog.glue import GlueCatalog
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.table.snapshots import ancestors_of

from pomona.core.aws import get_json, put_json
from pomona.core.outputs import leases_prefix, lock_key
from pomona.core.settings import Settings
from pomona.local.stack import LOCAL_ENV

ROOT = Path(__file__).resolve().parents[3]
KILLED = 137  # the injected fault's exit code, as a SIGKILLed pod reports it
JOB_TIMEOUT_S = 300
# A killed run's messages come back after this, instead of the production 300 s.
SHORT_VISIBILITY_S = 5


@dataclasses.dataclass(frozen=True)
class Uploaded:
    """A deployment with a batch ingested onto its images queue."""

    settings: Settings
    shas: frozenset[str]  # the distinct valid images
    queued: int  # messages on the images queue


def start_job(
    settings: Settings, *, fault: str | None = None, short_visibility: bool = False
) -> subprocess.Popen[str]:
    """The job as its pod runs it: spark/main.py in its own process, against `settings`.

    A run that is killed or stopped holds its messages for SHORT_VISIBILITY_S only: once it is gone they come
    back sooner than the production 300 s, as if that much time had passed.
    """
    env = {
        **os.environ,
        **LOCAL_ENV,
        **settings.to_env(),
        "SPARK_LOCAL_IP": "127.0.0.1",
    }
    env.pop("POMONA_FAULT", None)
    args = ["--master", "local[1]", "--weights", "random"]
    if fault:
        env["POMONA_FAULT"] = fault
    if fault or short_visibility:
        args += ["--visibility-timeout", str(SHORT_VISIBILITY_S)]
    return subprocess.Popen(
        [sys.executable, "spark/main.py", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        output, _ = process.communicate(timeout=JOB_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"expected the job to end within {JOB_TIMEOUT_S} s, it did not: {output[-2000:]}")
    return process.returncode, output


def queue_depth(settings: Settings) -> tuple[int, int]:
    """(visible, in flight) on the images queue."""
    attributes = boto3.client("sqs").get_queue_attributes(
        QueueUrl=settings.images_queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]), int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


def wait_until_visible(settings: Settings, *, timeout_s: float = 60) -> None:
    """Messages a dead run held come back after their visibility timeout; wait for that, boundedly."""
    deadline = time.monotonic() + timeout_s
    while queue_depth(settings)[1]:
        if time.monotonic() > deadline:
            pytest.fail(f"expected held messages back within {timeout_s} s, found {queue_depth(settings)}")
        time.sleep(0.5)


def list_keys(settings: Settings, prefix: str) -> list[str]:
    pages = (
        boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=settings.bucket, Prefix=prefix)
    )
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def expire_lock(settings: Settings, *, leases: bool = True) -> dict[str, Any]:
    """Move the dead run's lock (and with `leases`, every run lease) past its TTL, as 30 minutes of waiting would;
    returns the lock as found.

    This is the production recovery path (the next run takes over an expired lock), with the clock advanced;
    deleting the lock would skip the takeover code.
    """
    s3 = boto3.client("s3")
    found = get_json(s3, settings.bucket, lock_key(settings.output_prefix))
    assert found is not None, "expected the killed run to still hold the run lock, found none"
    holder, etag = found
    expired = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    lock = lock_key(settings.output_prefix)
    put_json(s3, settings.bucket, lock, {**holder, "expires_at": expired}, if_match=etag)
    if leases:
        expire_leases(settings)
    return holder


def expire_leases(settings: Settings) -> list[str]:
    """Move every run lease past its TTL, as an hour of waiting would; the batch ids of the leases."""
    s3 = boto3.client("s3")
    expired = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    found = list_keys(settings, leases_prefix(settings.output_prefix))
    for key in found:
        lease = get_json(s3, settings.bucket, key)
        assert lease is not None
        put_json(s3, settings.bucket, key, {**lease[0], "expires_at": expired})
    return [key.rsplit("/", 1)[-1].removesuffix(".json") for key in found]


def catalog_reader(settings: Settings) -> GlueCatalog:
    """A reader that knows only the catalog: pyiceberg's Glue catalog on the deployment's endpoint, no project code."""
    return GlueCatalog(
        "reader",
        **{
            "client.region": settings.region,
            "glue.endpoint": settings.endpoint_url,
            "s3.endpoint": settings.endpoint_url,
        },
    )


def table_contents(settings: Settings) -> dict[str, tuple[list[str], list[str]]]:
    """Each Iceberg table as a reader that knows only the Glue catalog finds it: (the batches of its snapshots,
    oldest first; the sha256 of its rows); empty when the table does not exist yet."""
    catalog = catalog_reader(settings)
    found: dict[str, tuple[list[str], list[str]]] = {}
    for name in ("features", "projections"):
        try:
            table = catalog.load_table((settings.glue_database, name))
        except NoSuchTableError:
            found[name] = ([], [])
            continue
        history = reversed(list(ancestors_of(table.current_snapshot(), table.metadata)))
        batches = [s.summary["pomona.batch_id"] for s in history if s.summary is not None]
        images = table.scan(selected_fields=("sha256",)).to_arrow().column("sha256").to_pylist()
        found[name] = (batches, images)
    return found
