"""A synthetic history for `pomona bench history`: N committed images, written by the job's own commit code.

The images are synthetic (hashes of counters, a random PCA state of their count): what a run pays for history is
what it reads of it, and that goes through the same dedupe index, PCA versions, LATEST, table snapshots (of no
files) and manifests the job writes, by the same `Committer` steps, retention included.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import boto3
import numpy as np

from pomona.core.aws import RETRIES
from pomona.core.contract import utc_now
from pomona.core.outputs import Latest, Lineage, new_batch_id
from pomona.core.settings import Settings
from pomona.featurize.commit import Committer
from pomona.featurize.index import SeenIndex
from pomona.ml.backends import choose_model
from pomona.ml.mobilenet import FEATURE_DIM
from pomona.ml.pca import PcaState, fit_pca_or_point
from pomona.ml.weights import resolve_weights

# Images per synthetic batch: half of what one run may take (Settings.max_images' default), so that 100,000 seen
# is already more versions than retention keeps whole, as 1,000,000 is: a run then pays one retention sweep at both.
BATCH_IMAGES = 25_000


def committer_for(settings: Settings) -> Committer:
    s3 = boto3.client("s3", endpoint_url=settings.endpoint_url, config=RETRIES)
    dynamodb = boto3.client("dynamodb", endpoint_url=settings.endpoint_url, config=RETRIES)
    return Committer(s3, settings, SeenIndex(dynamodb, settings.seen_table))


def synthetic_shas(start: int, count: int) -> list[str]:
    """`count` image hashes no real upload has: sha256 of a counter."""
    return [hashlib.sha256(f"pomona-synthetic-{i}".encode()).hexdigest() for i in range(start, start + count)]


def build_history(settings: Settings, *, seen: int, batch_images: int = BATCH_IMAGES, seed: int = 0) -> None:
    """Commit `seen` synthetic images in batches of `batch_images` to the deployment `settings` names, as runs
    of the model `settings` names would (so the job's lineage check accepts them)."""
    if seen <= 0:
        return
    committer = committer_for(settings)
    rng = np.random.default_rng(seed)
    factor = rng.standard_normal((FEATURE_DIM, FEATURE_DIM)) / FEATURE_DIM
    state = PcaState(n=seen, mean=rng.standard_normal(FEATURE_DIM), scatter=factor @ factor.T * seen)
    # One refit for every version: fitting is the job's cost per run, not the history's, and synthetic is fine.
    model = fit_pca_or_point(
        state,
        variance_target=settings.variance_target,
        max_components=settings.max_components,
        n_components=settings.n_components,
    )
    weights_id = resolve_weights(settings.weights, cache_dir=settings.model_cache_dir).weights_id
    backend, precision = choose_model(settings.backend, settings.precision)  # a new lineage's, as the job's
    for start in range(0, seen, batch_images):
        count = min(batch_images, seen - start)
        latest = committer.read_latest()
        batch_id = new_batch_id(entropy=os.urandom(8))
        version = latest.version + 1
        manifest: dict[str, Any] = {
            "batch_id": batch_id,
            "created_at": utc_now(),
            "pca_version": version,
            "n_seen": start + count,
            "k": model.n_components,
            **Lineage(weights_id=weights_id, backend=backend, precision=precision).to_json(),
            "weights": settings.weights,
            "counts": {"received": count, "featurized": count, "synthetic": True},
            "files": {"features": [], "projections": []},
        }
        committer.write_version(latest, batch_id, model, state, manifest, {"skipped": "synthetic history"})
        committer.advance_latest(latest, batch_id=batch_id)
        committer.record(batch_id, synthetic_shas(start, count))
        committer.register_tables(Latest(version, batch_id))
        committer.write_manifest(manifest)
        committer.retire(version, batch_id)
