"""Fixtures of the job's fault and failure tests: a deployment with a small batch ingested onto its queue."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator

import boto3
import pytest
from job_process import Uploaded, queue_depth

from pomona.core.settings import Settings
from pomona.ingest import handler
from pomona.local.poller import EventSourcePoller
from pomona.testing.samples import SYNTHETIC_LABELS, fruit_image


@pytest.fixture
def uploaded(deployment: Settings, random_model: Callable[[Settings], Settings]) -> Iterator[Uploaded]:
    """12 distinct images and one more copy of the first under another key, ingested onto the images queue."""
    handler._ingestor.cache_clear()
    s3 = boto3.client("s3")
    images = {
        f"uploads/{SYNTHETIC_LABELS[i % 3]}/img_{i}.jpg": fruit_image(SYNTHETIC_LABELS[i % 3], i)
        for i in range(12)
    }
    images["uploads/Banana/copy_of_img_0.jpg"] = images[f"uploads/{SYNTHETIC_LABELS[0]}/img_0.jpg"]
    for key, body in images.items():
        s3.put_object(Bucket=deployment.bucket, Key=key, Body=body)
    EventSourcePoller(deployment.events_queue_url, handler.lambda_handler).drain()
    shas = frozenset(hashlib.sha256(body).hexdigest() for body in images.values())
    assert queue_depth(deployment) == (len(images), 0)
    yield Uploaded(settings=random_model(deployment), shas=shas, queued=len(images))
    handler._ingestor.cache_clear()
