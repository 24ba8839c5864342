"""What `pomona status` shows: queue depths, committed batches, PCA versions, counts by label and by reason, and
how each batch's classifier scored on the holdout.

boto3 only, so it works from any machine with the settings, against the embedded stack or real AWS.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from pomona.core.outputs import CommittedOutputs
from pomona.core.queues import queue_depth
from pomona.core.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient


def collect_status(s3: S3Client, sqs: SQSClient, settings: Settings, *, last: int = 10) -> dict[str, Any]:
    outputs = CommittedOutputs.in_bucket(s3, settings)
    manifests = outputs.manifests()
    labels: Counter[str] = Counter()
    for manifest in manifests:
        labels.update(manifest["counts"].get("labels", {}))
    version = outputs.latest_version()
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
                # Left on the queue for redelivery, by S3 error code (manifests before deferral have none).
                "deferred": m["counts"].get("deferred", {}),
                "duplicates": m["counts"]["duplicates"],
                **_holdout_figures(m),
            }
            for m in manifests[-last:]
        ],
        "labels": dict(sorted(labels.items())),
        "quarantined": outputs.quarantine_counts(),
    }


def _holdout_figures(manifest: dict[str, Any]) -> dict[str, Any]:
    """The batch's classifier on the holdout, from its manifest's `quality`: accuracy, the share answered at its
    threshold and their accuracy, net revenue per 1000 images, the threshold, and how many held-out images
    scored it. All None when it was not evaluated, with `skipped` saying why."""
    quality = manifest.get("quality") or {}
    if "folds" in quality:
        # The per-batch probe of manifests written before the holdout; between the two, its scores rode in
        # `classifier`. A probe's figures are not the holdout's and are not shown as such.
        quality = manifest.get("classifier") or {}
    return {
        "accuracy": quality.get("accuracy"),
        "answered_fraction": quality.get("answered_fraction"),
        "answered_accuracy": quality.get("answered_accuracy"),
        "net_revenue_per_1000": quality.get("net_revenue_per_1000"),
        "threshold": quality.get("best_threshold"),
        "holdout_n": quality.get("n"),
        "skipped": quality.get("skipped"),
    }
