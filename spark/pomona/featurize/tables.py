"""The committed outputs as Apache Iceberg tables in the Glue Data Catalog: what Athena, Spark, DuckDB or pyiceberg
read without knowing Pomona's folders or manifests.

Two tables, `features` and `projections`, register the part files the executors already wrote (no copy): a table
snapshot per committed batch, its summary naming the batch (`pomona.batch_id`) and its PCA version. A table is
brought up to LATEST by `catch_up`: from LATEST back through each version's parent while the table lacks that
batch, then those batches oldest first. The commit protocol (`pomona.featurize.commit`) runs it after LATEST
moved and the dedupe index holds the batch, and recovery runs it on every start, so a run that died in between
leaves tables the next run completes; a batch LATEST does not have is never registered, and a batch already in a
table's history is never registered again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyiceberg.catalog.glue import GlueCatalog
from pyiceberg.exceptions import CommitFailedException, NoSuchTableError, TableAlreadyExistsError
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table.snapshots import ancestors_of
from pyiceberg.transforms import IdentityTransform
from pyiceberg.types import (
    DoubleType,
    FloatType,
    IcebergType,
    IntegerType,
    ListType,
    NestedField,
    StringType,
)

from pomona.core.errors import PomonaError
from pomona.core.outputs import Latest, VersionMetadata

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog
    from pyiceberg.table import Table

    from pomona.core.settings import Settings

log = logging.getLogger(__name__)

# The snapshot summary's key naming the batch a snapshot registered: what makes a table commit idempotent.
BATCH_PROPERTY = "pomona.batch_id"
COMMIT_ATTEMPTS = 6
# Snapshots a table keeps: each commit rewrites the table's metadata with every snapshot's summary (~1 KB each),
# so older ones are expired (from the metadata only: their files stay, and the rows stay in the table), a tenth
# more at a time so that one run in ten pays the expiry's commit. Time travel reaches this many batches back; the
# catch-up walk needs only the newest registered batch, always kept.
KEEP_SNAPSHOTS = 100
TABLE_PROPERTIES = {
    "format-version": "2",  # what Athena reads
    # Few manifests: each commit's duplicate-file check reads them all, so at most 10 are kept apart.
    "commit.manifest-merge.enabled": "true",
    "commit.manifest.min-count-to-merge": "10",
    # pyiceberg's own retry re-applies an append on the reloaded table without asking whether the batch landed
    # meanwhile (a rival run's commit, or ours whose response was lost): `_register` retries instead, by batch id.
    "commit.retry.num-retries": "0",
}


class TableCommitError(PomonaError, RuntimeError):
    """A table could not be brought up to LATEST."""


def _schema(*columns: tuple[str, IcebergType | None]) -> Schema:
    """Every field optional, as pyarrow writes the part files' columns (a required table field would refuse a
    nullable file column); a list's element id follows the top-level fields', as Iceberg assigns them anyway."""
    n = len(columns)
    return Schema(
        *(
            NestedField(i, name, kind or ListType(n + 1, FloatType(), element_required=False), required=False)
            for i, (name, kind) in enumerate(columns, start=1)
        )
    )


_IDENTITY = (
    ("sha256", StringType()),
    ("key", StringType()),
    ("label", StringType()),
    ("version_id", StringType()),
)
_BATCH = (("batch_id", StringType()), ("pca_version", IntegerType()))
# Each table's columns, as the part files of `pomona.featurize.tasks` hold them (a list column is the vectors).
SCHEMAS = {
    "features": _schema(*_IDENTITY, *_BATCH, ("features", None)),
    "projections": _schema(
        *_IDENTITY,
        *_BATCH,
        ("projection", None),
        ("prediction", StringType()),
        ("confidence", DoubleType()),
        ("distance", DoubleType()),
    ),
}
# Partitioned by batch: `WHERE batch_id = …` reads one batch's files; the value comes from each file's statistics.
_BY_BATCH = PartitionSpec(
    PartitionField(source_id=5, field_id=1000, transform=IdentityTransform(), name="batch_id")
)


def glue_catalog(settings: Settings) -> GlueCatalog:
    """The Glue Data Catalog of `settings`' region (its endpoint too on the embedded stack, for S3 as for Glue).
    The region is always given: without it pyarrow asks real AWS where the bucket is."""
    properties = {"client.region": settings.region}
    if settings.endpoint_url:
        properties |= {"glue.endpoint": settings.endpoint_url, "s3.endpoint": settings.endpoint_url}
    return GlueCatalog("pomona", **properties)


def batches_in(table: Table) -> set[str]:
    """The batches the table's current history registered (its main branch, from the current snapshot back)."""
    batches = (
        snapshot.summary[BATCH_PROPERTY] if snapshot.summary is not None else None
        for snapshot in ancestors_of(table.current_snapshot(), table.metadata)
    )
    return {batch for batch in batches if batch is not None}


@dataclass(frozen=True)
class BatchTables:
    """The tables of one deployment's outputs (`bucket`, `prefix`) in `database` of `catalog`."""

    catalog: Catalog
    database: str
    bucket: str
    prefix: str
    keep_snapshots: int = KEEP_SNAPSHOTS

    @classmethod
    def for_settings(cls, settings: Settings) -> BatchTables | None:
        """The deployment's tables, or None with POMONA_TABLES=off."""
        if settings.tables == "off":
            return None
        return cls(glue_catalog(settings), settings.glue_database, settings.bucket, settings.output_prefix)

    def location(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}iceberg/{name}"

    def catch_up(self, latest: Latest, metadata_of: Callable[[Latest], VersionMetadata | None]) -> list[str]:
        """Register in each table every batch from `latest` back that it lacks, oldest first; the batches
        registered. `metadata_of` reads a committed version's metadata (its manifest names the part files)."""
        if latest.version == 0:
            return []
        tables = {name: self.table(name) for name in SCHEMAS}
        have = {name: batches_in(table) for name, table in tables.items()}
        missing: list[VersionMetadata] = []
        at = latest
        while at.version > 0 and any(at.batch_id not in batches for batches in have.values()):
            metadata = metadata_of(at)
            if metadata is None:
                raise TableCommitError(
                    f"expected the metadata of committed PCA v{at.version} (batch {at.batch_id}) to register its "
                    f"files in the tables, found none"
                )
            missing.append(metadata)
            at = metadata.parent
        registered = []
        for metadata in reversed(missing):
            for name, table in tables.items():
                if metadata.batch_id not in have[name] and self._register(table, name, metadata):
                    registered.append(f"{name}:{metadata.batch_id}")
        if registered:
            log.info("Tables caught up", extra={"registered": registered})
            for table in tables.values():
                self._expire(table)
        return registered

    def table(self, name: str) -> Table:
        """Table `name`, created on first use (at this deployment's location, which is checked)."""
        identifier = (self.database, name)
        try:
            table = self.catalog.load_table(identifier)
        except NoSuchTableError:
            try:
                table = self.catalog.create_table(
                    identifier,
                    schema=SCHEMAS[name],
                    partition_spec=_BY_BATCH,
                    location=self.location(name),
                    properties=TABLE_PROPERTIES,
                )
            except TableAlreadyExistsError:  # another run created it meanwhile
                table = self.catalog.load_table(identifier)
        if table.location().rstrip("/") != self.location(name):
            raise TableCommitError(
                f"expected table {self.database}.{name} at {self.location(name)}, found it at {table.location()}: "
                f"each output prefix needs a Glue database of its own (POMONA_GLUE_DATABASE)"
            )
        return table

    def _register(self, table: Table, name: str, metadata: VersionMetadata) -> bool:
        """Add the batch's part files of table `name` in one snapshot, unless the table's history has the batch
        already (a rival run, or our own attempt whose response was lost); whether this call added it. A commit that
        lost a race is retried on the table reloaded, once its history is read again."""
        keys = metadata.manifest["files"][name]
        properties = {
            BATCH_PROPERTY: metadata.batch_id,
            "pomona.pca_version": str(metadata.version),
            "pomona.weights_id": metadata.lineage.weights_id,
        }
        for attempt in range(COMMIT_ATTEMPTS):
            if attempt:
                time.sleep(min(0.2 * 2**attempt, 5.0))
                table.refresh()
                if metadata.batch_id in batches_in(table):
                    return False
            try:
                table.add_files([f"s3://{self.bucket}/{key}" for key in keys], snapshot_properties=properties)
                return True
            except CommitFailedException as err:
                log.warning(
                    "Table commit lost a race; retrying",
                    extra={"table": name, "batch_id": metadata.batch_id, "error": str(err)},
                )
        raise TableCommitError(
            f"expected to register batch {metadata.batch_id} in {self.database}.{name}, "
            f"lost {COMMIT_ATTEMPTS} commit races"
        )

    def _expire(self, table: Table) -> None:
        """Drop the oldest snapshots beyond `keep_snapshots` from the table's metadata once there are a tenth
        more, best-effort: a commit that loses a race leaves them for the next run's."""
        history = list(ancestors_of(table.current_snapshot(), table.metadata))
        if len(history) <= self.keep_snapshots + self.keep_snapshots // 10:
            return
        try:
            table.maintenance.expire_snapshots().by_ids(
                [s.snapshot_id for s in history[self.keep_snapshots :]]
            ).commit()
        except CommitFailedException as err:
            log.warning("Snapshot expiry lost a race; the next run retries", extra={"error": str(err)})
