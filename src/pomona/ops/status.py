"""What `pomona status` shows: queue depths, committed batches, PCA versions, counts by label and by reason.

boto3 only, so it works from any machine with the settings, against the embedded stack or real AWS.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from pomona.core.settings import Settings
from pomona.core.store import committed_batches, read_latest

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient


def queue_depth(sqs: SQSClient, url: str) -> dict[str, int]:
    if not url:
        return {}
    attributes = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return {"visible": int(attributes["ApproximateNumberOfMessages"]),
            "in_flight": int(attributes["ApproximateNumberOfMessagesNotVisible"])}  # fmt: skip


def quarantine_counts(s3: S3Client, settings: Settings) -> dict[str, int]:
    """Quarantined uploads by reason, from the sidecars' keys: `quarantine/<reason>/.../*.reason.json`."""
    counts: Counter[str] = Counter()
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket=settings.bucket, Prefix=settings.quarantine_prefix
    )
    for page in pages:
        for item in page.get("Contents", []):
            if item["Key"].endswith(".reason.json"):
                counts[item["Key"][len(settings.quarantine_prefix) :].split("/", 1)[0]] += 1
    return dict(counts)


def collect_status(s3: S3Client, sqs: SQSClient, settings: Settings, *, last: int = 10) -> dict[str, Any]:
    manifests = committed_batches(s3, settings.bucket, settings.output_prefix)
    labels: Counter[str] = Counter()
    for manifest in manifests:
        labels.update(manifest["counts"].get("labels", {}))
    version, _ = read_latest(s3, settings.bucket, settings.output_prefix)
    return {
        "bucket": settings.bucket,
        "queues": {
            "images": queue_depth(sqs, settings.images_queue_url),
            "images_dlq": queue_depth(sqs, settings.images_dlq_url),
        },
        "pca_version": version,
        "batches": [
            {
                "batch_id": m["batch_id"],
                "pca_version": m["pca_version"],
                "n_seen": m["n_seen"],
                "k": m["k"],
                "featurized": m["counts"]["featurized"],
                "failed": sum(m["counts"]["failed"].values()),
                "duplicates": m["counts"]["duplicates"],
                "accuracy": (m.get("quality") or {}).get("accuracy"),
                "net_revenue_per_1000": (m.get("quality") or {}).get("net_revenue_per_1000"),
            }
            for m in manifests[-last:]
        ],
        "labels": dict(sorted(labels.items())),
        "quarantined": quarantine_counts(s3, settings),
    }
