"""Recovery: what a run does first, so that a crash at any step of the commit protocol (`pomona.featurize.commit`)
is finished or cleaned up.

A crash before step 3 (LATEST moved) leaves files no reader trusts: `recover` deletes them once their run's lease
has lapsed (at once if the run ended), and the messages come back. A crash between 3 and 6 is rolled forward: the
batch's images recorded from its projections, its part files registered in the tables, the manifest written from
the version's metadata. A crash after 6 only redelivers messages, which the dedupe index finds committed. The
tables are brought up to LATEST on every start, whatever a manifest says: a deployment whose tables were off, or
lost, catches up too. Recovery reads only LATEST, its parent, the leases and each table's current metadata: its
cost follows what can be uncommitted, not history.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import pyarrow.parquet as pq

from pomona.core.outputs import Latest, VersionMetadata, leases_prefix, move_latest
from pomona.featurize.commit import Committer
from pomona.featurize.lock import read_lease

log = logging.getLogger(__name__)


class Recovery:
    """Recovery of one deployment's outputs, by the steps of its `Committer`."""

    def __init__(self, committer: Committer) -> None:
        self.committer = committer

    def recover(self) -> tuple[Latest, VersionMetadata | None]:
        """Finish the commits a crash interrupted after LATEST moved, then delete what ended runs left
        uncommitted; LATEST as found and the committed version's metadata (None before the first commit)."""
        latest = self.committer.read_latest()
        metadata = self.roll_forward(latest)
        self._delete_orphans(latest)
        return latest, metadata

    def roll_forward(self, latest: Latest) -> VersionMetadata | None:
        """Steps 4 to 6 for LATEST's batch and its parent's (on which a second run past the lock may have built
        before the first finished), where they did not happen; LATEST's version metadata."""
        metadata = self.committer.version_metadata(latest)
        if metadata is None:
            return None
        parent = self.committer.version_metadata(metadata.parent)
        unfinished = [c for c in (parent, metadata) if c and not self.committer.has_manifest(c.batch_id)]
        for committed in unfinished:
            log.warning(
                "Rolling forward a batch committed to LATEST without a manifest",
                extra={"batch_id": committed.batch_id},
            )
            self.committer.record(committed.batch_id, self._projected(committed.manifest))
        self.committer.register_tables(latest)
        for committed in unfinished:
            self.committer.write_manifest(committed.manifest)
        return metadata

    def _projected(self, manifest: dict[str, Any]) -> list[str]:
        """The sha256 of every image a committed batch's projections hold."""
        shas: list[str] = []
        for key in manifest["files"]["projections"]:
            body = self.committer.files.read(key)
            if body is None:
                raise FileNotFoundError(f"expected projections part file {key} of a committed batch")
            shas += pq.read_table(io.BytesIO(body), columns=["sha256"]).column("sha256").to_pylist()
        return shas

    def _delete_orphans(self, latest: Latest) -> None:
        """Delete the files of each run whose lease has lapsed or ended without a manifest, and those leases.

        Every run writes its lease before any file, and the lease stays until its batch is committed or its files
        are deleted: the leases name everything that can be uncommitted. A live run (one whose lock was taken over
        while it stalled, say) keeps its files: its lease outlives the lock. Before anything is deleted, LATEST
        is rewritten (conditionally, same content): a run that read it before, however long it stalled, can then
        no longer commit the files deleted here."""
        committer = self.committer
        uncommitted: list[str] = []
        lapsed: list[str] = []
        for key in committer.files.keys(leases_prefix(committer.prefix)):
            lease = read_lease(committer.s3, committer.bucket, key)
            if lease is None or lease.is_live():
                continue
            batch_id = key.rsplit("/", 1)[-1].removesuffix(".json")
            lapsed.append(key)
            if not committer.has_manifest(batch_id):
                uncommitted += self._batch_files(batch_id, lease.pca_version)
        if uncommitted and not self._fence(latest):
            return
        committer.delete(uncommitted)
        committer.delete(lapsed)  # last: a lease goes only once its files have
        if uncommitted:
            log.warning("Deleted files of uncommitted runs", extra={"files": len(uncommitted)})

    def _batch_files(self, batch_id: str, pca_version: int | None) -> list[str]:
        """The files an uncommitted run of `batch_id` may have written."""
        committer = self.committer
        keys = committer.batch_keys("features", batch_id) + committer.batch_keys("projections", batch_id)
        if pca_version:
            keys += committer.files.keys(Latest(pca_version, batch_id).folder(committer.prefix))
        return keys

    def _fence(self, latest: Latest) -> bool:
        """Rewrite LATEST as read (a version 0 when there is none yet), so that no run that read it before can
        move it; False when another run moved it meanwhile (its files are then left for a later recovery)."""
        committer = self.committer
        if move_latest(committer.s3, committer.bucket, committer.prefix, read=latest, to=latest):
            return True
        log.warning("LATEST moved during recovery; leaving uncommitted files for a later run")
        return False
