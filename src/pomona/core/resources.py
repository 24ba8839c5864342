"""The AWS resources Pomona runs on, described once.

The embedded stack (`pomona.local.stack`) provisions exactly these on the moto server, and a test checks that
the CloudFormation template in `deploy/` declares the same names and settings.
"""

from __future__ import annotations

from dataclasses import dataclass

# Queue names are suffixes of the stack's name prefix, e.g. pomona-images, pomona-images-dlq.
DEFAULT_NAME = "pomona"
# The powertools service of each Lambda: the `service` key of its logs and dimension of its metrics. The handlers
# name it in code, and the template and images set POWERTOOLS_SERVICE_NAME to the same (a test checks).
INGEST_SERVICE = "pomona-ingest"
CLASSIFY_SERVICE = "pomona-classify"


@dataclass(frozen=True, kw_only=True)
class QueueSpec:
    name: str
    visibility_timeout_s: int
    retention_s: int = 14 * 24 * 3600
    dlq_name: str | None = None
    max_receive_count: int = 5


@dataclass(frozen=True, kw_only=True)
class TableSpec:
    name: str
    hash_key: str = "id"  # powertools Idempotency's default key attribute
    ttl_attribute: str | None = (
        "expiration"  # powertools Idempotency's default expiry attribute; None: no TTL
    )


@dataclass(frozen=True, kw_only=True)
class Resources:
    bucket: str
    uploads_prefix: str
    quarantine_prefix: str
    # S3 ObjectCreated events for `uploads_prefix` land here, drained by the Lambda (on AWS by its event source
    # mapping, locally by a poller playing that part).
    events: QueueSpec
    # Accepted images, one message each, drained by the featurization job.
    images: QueueSpec
    idempotency: TableSpec
    # The dedupe index: the sha256 of every committed image, with its batch (`pomona.featurize.index`). Kept for
    # good: an image's entry is what makes a redelivery of it, years later, a duplicate.
    seen: TableSpec
    # The Glue database of the committed outputs' Iceberg tables (`pomona.featurize.tables`): Glue and Athena
    # names allow `_`, not `-`.
    glue_database: str
    # Quarantined objects become noncurrent this many days after they were written, then are kept
    # `noncurrent_expiry_days` more. Never shorter than `noncurrent_expiry_days`: a quarantined copy's sidecar says
    # why an upload was refused and which version it was, so it outlives those bytes. On AWS both are the stack's
    # `RetentionDays` (default 90); the embedded stack sets no lifecycle rules.
    quarantine_expiry_days: int = 90
    # Old object versions (replaced, deleted or rejected uploads) expire this many days after they stopped being
    # current.
    noncurrent_expiry_days: int = 90


def describe(name: str = DEFAULT_NAME) -> Resources:
    """The resources of one Pomona deployment called `name`."""
    return Resources(
        bucket=f"{name}-images",
        uploads_prefix="uploads/",
        quarantine_prefix="quarantine/",
        # Lambda's SQS integration wants the visibility timeout ≥ 6× the function timeout (30 s). Three receives:
        # the event source mapping's MaximumConcurrency keeps throttling from spending them.
        events=QueueSpec(
            name=f"{name}-events",
            visibility_timeout_s=180,
            dlq_name=f"{name}-events-dlq",
            max_receive_count=3,
        ),
        # The job keeps its messages invisible by heartbeat; this is the first lease, before the heartbeat starts.
        images=QueueSpec(
            name=f"{name}-images",
            visibility_timeout_s=300,
            dlq_name=f"{name}-images-dlq",
            max_receive_count=5,
        ),
        idempotency=TableSpec(name=f"{name}-idempotency"),
        seen=TableSpec(name=f"{name}-seen", hash_key="sha256", ttl_attribute=None),
        glue_database=name.replace("-", "_"),
    )
