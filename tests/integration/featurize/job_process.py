"""The job as its pod runs it, in a process of its own, and what a test reads of the deployment around it."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

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
