"""The run lock against the embedded S3: a malformed lock document never blocks runs for good."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import boto3
import pytest

from pomona.core.outputs import lock_key
from pomona.core.settings import Settings
from pomona.featurize.lock import LOCK_TTL, ConcurrentRunError, RunLock


@pytest.mark.parametrize(
    "document",
    [
        pytest.param(b"{not json", id="not-json"),
        pytest.param(b'{"owner": "x"}', id="no-expiry"),
        pytest.param(b'{"owner": "x", "expires_at": "tomorrow"}', id="bad-expiry"),
        pytest.param(b"[]", id="not-an-object"),
    ],
)
def test_a_malformed_lock_is_reported_held_for_its_ttl_then_taken_over(
    deployment: Settings, document: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN a lock document that is not a lock
    s3 = boto3.client("s3")
    key = lock_key(deployment.output_prefix)
    s3.put_object(Bucket=deployment.bucket, Key=key, Body=document)
    lock = RunLock(s3, deployment.bucket, key)

    # WHEN a run comes now, THEN it stops, and the log says why
    with pytest.raises(ConcurrentRunError, match=r"malformed lock document"):
        lock.acquire()
    assert "Malformed run lock" in caplog.text

    # WHEN a run comes once the TTL has passed since the document was written, THEN it takes the lock
    lock.acquire(now=datetime.now(UTC) + LOCK_TTL * 1.1)
    held = json.loads(s3.get_object(Bucket=deployment.bucket, Key=key)["Body"].read())
    assert held["owner"] == lock.owner
