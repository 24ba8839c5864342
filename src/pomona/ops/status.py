"""What `pomona status` shows: one health line (what the deployment's alarms watch, as far as the APIs tell it),
queue depths, committed batches, PCA versions, counts by label and by reason, and how each batch's classifier scored
on the holdout.

boto3 only, so it works from any machine with the settings, against the embedded stack or real AWS.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pomona.core.outputs import CommittedOutputs
from pomona.core.queues import queue_depth
from pomona.core.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient


# Images waiting with no batch committed for this long: the "no healthy run" alarm's default (3 hourly schedules).
STALE_AFTER_S = 3 * 3600


def collect_status(
    s3: S3Client, sqs: SQSClient, settings: Settings, *, last: int = 10, stale_after_s: float = STALE_AFTER_S
) -> dict[str, Any]:
    outputs = CommittedOutputs.in_bucket(s3, settings)
    manifests = outputs.manifests()
    labels: Counter[str] = Counter()
    for manifest in manifests:
        labels.update(manifest["counts"].get("labels", {}))
    version = outputs.latest_version()
    queues = {
        "images": queue_depth(sqs, settings.images_queue_url),
        "images_dlq": queue_depth(sqs, settings.images_dlq_url),
    }
    last_commit = max((m["created_at"] for m in manifests), default=None)
    return {
        "bucket": settings.bucket,
        "health": health(queues, last_commit, now=datetime.now(UTC), stale_after_s=stale_after_s),
        "queues": queues,
        "pca_version": version,
        "batches": [
            {
                "batch_id": m["batch_id"],
                "pca_version": m["pca_version"],
                "n_seen": m["n_seen"],
                "k": m["k"],
                "featurized": m["counts"]["featurized"],
                "failed": sum(m["counts"]["failed"].values()),
                # Left on the queue for redelivery, by S3 error code.
                "deferred": m["counts"]["deferred"],
                "duplicates": m["counts"]["duplicates"],
                "unfamiliar": m["counts"]["unfamiliar"],
                **_holdout_figures(m),
            }
            for m in manifests[-last:]
        ],
        "labels": dict(sorted(labels.items())),
        "quarantined": outputs.quarantine_counts(),
    }


def health(
    queues: dict[str, dict[str, int]], last_commit: str | None, *, now: datetime, stale_after_s: float
) -> str:
    """One line: "ok: …", or "attention: …" naming each problem the deployment's alarms would page for that the
    queue and the manifests show (a dead-lettered image, images waiting with no batch committed for too long)."""
    problems = []
    dead = sum(queues.get("images_dlq", {}).values())
    if dead:
        problems.append(f"{dead} message(s) on the images DLQ (pomona dlq list)")
    images = queues.get("images", {})
    waiting = images.get("visible", 0) + images.get("in_flight", 0)
    age = None if last_commit is None else (now - datetime.fromisoformat(last_commit)).total_seconds()
    since = "no batch committed yet" if age is None else f"last batch committed {_ago(age)} ago"
    if waiting and (age is None or age > stale_after_s):
        problems.append(f"{waiting} image(s) waiting, {since}")
    if problems:
        return "attention: " + "; ".join(problems)
    return f"ok: {waiting} image(s) waiting, {since}"


def _ago(seconds: float) -> str:
    minutes = seconds / 60
    return f"{minutes:.0f} min" if minutes < 120 else f"{minutes / 60:.1f} h"


def _holdout_figures(manifest: dict[str, Any]) -> dict[str, Any]:
    """The batch's classifier on the holdout, from its manifest's `quality`: accuracy, the share answered at its
    threshold and their accuracy, net revenue per 1000 images, the threshold, and how many held-out images
    scored it. All None when it was not evaluated, with `skipped` saying why."""
    quality = manifest.get("quality") or {}
    return {
        "accuracy": quality.get("accuracy"),
        "answered_fraction": quality.get("answered_fraction"),
        "answered_accuracy": quality.get("answered_accuracy"),
        "net_revenue_per_1000": quality.get("net_revenue_per_1000"),
        "threshold": quality.get("best_threshold"),
        # Held-out known photos refused as unfamiliar, and never-taught labels' photos answered (leave-labels-out).
        "refused_unfamiliar": quality.get("unfamiliar_fraction"),
        "never_taught_answered": (quality.get("leave_labels_out") or {}).get("never_taught_answered"),
        "holdout_n": quality.get("n"),
        "skipped": quality.get("skipped"),
    }
