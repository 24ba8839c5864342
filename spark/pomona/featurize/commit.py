"""The commit protocol: how a batch's outputs become visible to readers all at once, or not at all.

  0. the run's lease `locks/runs/<batch id>.json`, before any output: the mark recovery finds its files by;
  1. outputs: features and projections part files (the executors), failed images quarantined;
  2. the PCA version `models/pca/v<N>-<batch id>/` (model, merge state, classifier, its evaluation, and metadata
     holding the manifest to be and the parent version), each file written only if absent: no other run writes
     there;
  3. `models/pca/LATEST` moved from (N-1, its batch) to (N, this batch) with a conditional write: of two runs
     that got this far, exactly one commits; the other stops, its version uncommitted;
  4. the batch's images recorded in the dedupe index (`pomona.featurize.index`);
  5. the batch's part files registered in the Iceberg tables (`pomona.featurize.tables`), one snapshot each;
  6. `batches/<id>/manifest.json`;
  7. the messages deleted (the driver, `pomona.featurize.queue`), the lease deleted, and the merge states of
     versions beyond `keep_full_versions` deleted (retention).
A crash at any step is finished or cleaned up by the next run's recovery (`pomona.featurize.recovery`). The run
lock (`pomona.featurize.lock`) keeps two runs from working at once; steps 2 and 3 hold even when it fails to.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from enum import Enum
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from pomona.core.aws import get_json, is_precondition_failed, json_bytes, put_json
from pomona.core.contract import ImageMessage, QuarantineSidecar, Reason
from pomona.core.outputs import (
    EVALUATION_FILE,
    HOLDOUT_FILE,
    METADATA_FILE,
    MODEL_FILE,
    NOTHING_COMMITTED,
    STATE_FILE,
    TRAINING_FILE,
    Latest,
    Lineage,
    S3Files,
    VersionMetadata,
    manifest_key,
    move_latest,
    read_latest_for_update,
    read_version_metadata,
)
from pomona.core.quarantine import quarantine_object
from pomona.core.settings import Settings
from pomona.featurize.index import SeenIndex
from pomona.featurize.lock import ConcurrentRunError
from pomona.featurize.tables import BatchTables
from pomona.ml.classifier import LabelStats, load_label_stats
from pomona.ml.holdout import Reservoir, load_reservoir
from pomona.ml.pca import PcaModel, PcaState, load_state, model_to_npz, state_to_npz

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)


# What a version past retention's window loses: what only the next refit needs.
RETIRED_FILES = (STATE_FILE, TRAINING_FILE, HOLDOUT_FILE)


class CommitState(Enum):
    """How far a run's batch got: what its lease's release needs to know."""

    NOTHING_WRITTEN = "nothing written"  # no file of the batch exists: the lease goes
    UNCOMMITTED = "uncommitted"  # files of the batch may exist: the lease stays, for recovery to find them
    COMMITTED = "committed"  # its manifest is written: the lease goes

    @property
    def settled(self) -> bool:
        """Whether the batch left nothing uncommitted (it committed, or wrote nothing)."""
        return self is not CommitState.UNCOMMITTED


class Committer:
    """The S3 side of the protocol for one deployment's outputs."""

    def __init__(self, s3: S3Client, settings: Settings, index: SeenIndex) -> None:
        self.s3 = s3
        self.index = index
        self.bucket = settings.bucket
        self.prefix = settings.output_prefix
        self.quarantine_prefix = settings.quarantine_prefix
        self.keep_full_versions = settings.keep_full_versions
        self.files = S3Files(s3, settings.bucket)
        self.tables = BatchTables.for_settings(settings)

    # -- reading the committed state

    def read_latest(self) -> Latest:
        """The committed PCA version (0 when there is none yet), its batch, and the pointer's ETag for step 3."""
        return read_latest_for_update(self.s3, self.bucket, self.prefix)

    def version_metadata(self, version: Latest) -> VersionMetadata | None:
        """The metadata of committed `version` (None for version 0, or when its folder has none)."""
        return read_version_metadata(self.files.read, self.prefix, version)

    def load_state(self, latest: Latest) -> PcaState | None:
        """The merge state of the committed version (None before the first commit)."""
        if latest.version == 0:
            return None
        found = self.files.read(latest.folder(self.prefix) + STATE_FILE)
        if found is None:
            raise FileNotFoundError(
                f"expected the merge state of committed PCA v{latest.version} at {latest.folder(self.prefix)}"
            )
        return load_state(found)

    def load_classifier_state(self, latest: Latest) -> tuple[LabelStats | None, Reservoir | None]:
        """The classifier's training statistics and holdout reservoir of the committed version; None for either the
        version has none of (before the first commit, or a version committed without them, as synthetic histories
        are)."""
        if latest.version == 0:
            return None, None
        base = latest.folder(self.prefix)
        training, holdout = self.files.read(base + TRAINING_FILE), self.files.read(base + HOLDOUT_FILE)
        return (
            None if training is None else load_label_stats(training),
            None if holdout is None else load_reservoir(holdout),
        )

    def batch_keys(self, folder: str, batch_id: str) -> list[str]:
        """The part files of `batch_id` under `folder` ("features" or "projections")."""
        return self.files.keys(f"{self.prefix}{folder}/batch_id={batch_id}/")

    def has_manifest(self, batch_id: str) -> bool:
        return get_json(self.s3, self.bucket, manifest_key(self.prefix, batch_id)) is not None

    # -- the steps

    def quarantine(
        self,
        message: ImageMessage,
        reason: Reason,
        detail: str,
        *,
        copy: bool = True,
        error_type: str | None = None,
    ) -> None:
        """Step 1, for an image the executors could not featurize: a copy of its version (unless `copy` is False:
        a message that names what it should not is never read from) and a sidecar; a version S3 no longer has gets
        the sidecar alone. `error_type` is the exception's type name when a decoder raised."""
        sidecar = QuarantineSidecar(
            reason=reason,
            detail=detail,
            original_key=message.key,
            version_id=message.version_id,
            etag=message.etag,
            size=message.size,
            sha256=message.sha256,
            stage="featurize",
            error_type=error_type,
        )
        quarantine_object(
            self.s3,
            sidecar,
            bucket=self.bucket,
            quarantine_prefix=self.quarantine_prefix,
            source_bucket=message.bucket,
            copy=copy,
            missing_ok=True,
        )

    def write_version(
        self,
        latest: Latest,
        batch_id: str,
        model: PcaModel,
        state: PcaState,
        manifest: dict[str, Any],
        quality: dict[str, Any],
        classifier_files: Mapping[str, bytes] | None = None,
    ) -> None:
        """Step 2: version `latest.version + 1`, in this batch's own folder, each file only if absent: `quality`
        (the classifier's evaluation) as `EVALUATION_FILE`, and the classifier's files (`CLASSIFIER_FILE`,
        `TRAINING_FILE`, `HOLDOUT_FILE`), so that one LATEST move commits model and classifier together. The
        metadata's lineage is the manifest's."""
        version = latest.advanced(batch_id)
        metadata = VersionMetadata(
            version=version.version,
            batch_id=batch_id,
            parent=Latest(latest.version, latest.batch_id),
            lineage=Lineage.from_json(manifest),
            weights=manifest["weights"],
            n_seen=model.n_seen,
            k=model.n_components,
            explained_variance_ratio=tuple(model.explained_variance_ratio.tolist()),
            created_at=manifest["created_at"],
            manifest=manifest,
        )
        base = version.folder(self.prefix)
        for name, body in [
            (MODEL_FILE, model_to_npz(model)),
            (STATE_FILE, state_to_npz(state)),
            (EVALUATION_FILE, json_bytes(quality)),
            *(classifier_files or {}).items(),
            (METADATA_FILE, json_bytes(metadata.to_json())),  # last: its presence says the folder is whole
        ]:
            self._put_once(base + name, body)

    def advance_latest(self, latest: Latest, *, batch_id: str) -> None:
        """Step 3: point LATEST at (`latest.version + 1`, `batch_id`), only if nobody moved it since we read it."""
        version = latest.advanced(batch_id)
        if move_latest(self.s3, self.bucket, self.prefix, read=latest, to=version):
            return
        if self._committed(version):
            return  # our first attempt landed, its response was lost, and botocore's retry met it
        raise ConcurrentRunError(
            f"expected models/pca/LATEST to be unchanged since this run read it, found it moved "
            f"(another run committed first); version {version.version} of batch {batch_id} is left uncommitted"
        )

    def record(self, batch_id: str, shas: Iterable[str]) -> None:
        """Step 4: the batch's images, committed now, in the dedupe index."""
        self.index.record(shas, batch_id=batch_id)

    def register_tables(self, latest: Latest) -> None:
        """Step 5: the tables brought up to committed version `latest` (this batch's, and any an earlier run's
        crash left out)."""
        if self.tables is not None:
            self.tables.catch_up(latest, self.version_metadata)

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Step 6."""
        key = manifest_key(self.prefix, manifest["batch_id"])
        try:
            put_json(self.s3, self.bucket, key, manifest, if_none_match=True)
        except ClientError as err:
            # The key is this batch's alone: a manifest there is this one, written by our own first attempt
            # (its response lost, botocore retried it) or rolled forward from the version's metadata.
            if not is_precondition_failed(err):
                raise

    def retire(self, version: int, batch_id: str) -> None:
        """Retention: delete the merge state and the classifier's statistics and holdout of each version older
        than the `keep_full_versions` up to `version`. The walk goes back through each version's parent and stops
        at one already retired, so a sweep a crash missed is done by the next; model.npz, metadata, quality.json
        and the classifier stay: a reader of a version's projections needs its components and mean."""
        at = Latest(version, batch_id)
        for _ in range(self.keep_full_versions):
            at = self._parent(at)
        while at.version > 0:
            doomed = [
                k
                for k in self.files.keys(at.folder(self.prefix))
                if k.endswith(tuple(f"/{name}" for name in RETIRED_FILES))
            ]
            if not doomed:
                return
            self.delete(doomed)
            at = self._parent(at)

    # -- helpers

    def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in chunk]})

    def _parent(self, version: Latest) -> Latest:
        metadata = self.version_metadata(version) if version.version > 0 else None
        return NOTHING_COMMITTED if metadata is None else metadata.parent

    def _committed(self, version: Latest) -> bool:
        """Whether `version` is LATEST or one of its ancestors: read from LATEST back through each version's
        parent, files no other run can have written under those batch ids."""
        at = self.read_latest()
        while at.version >= version.version and at.version > 0:
            if at == version:
                return True
            at = self._parent(at)
        return False

    def _put_once(self, key: str, body: bytes) -> None:
        """Write `key` only if absent. The key is this batch's alone: one already there is our own first attempt,
        its response lost and botocore's retry refused."""
        try:
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, IfNoneMatch="*")
        except ClientError as err:
            if not is_precondition_failed(err):
                raise
