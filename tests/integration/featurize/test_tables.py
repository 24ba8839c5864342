"""The committed outputs' Iceberg tables (`pomona.featurize.tables`) on the moto server's Glue and S3: part files
registered once per batch, oldest first, never a batch LATEST lacks, and commits that lost a race retried."""

from __future__ import annotations

import dataclasses
import io

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest
from job_process import catalog_reader

from pomona.core.outputs import (
    NOTHING_COMMITTED,
    Latest,
    Lineage,
    VersionMetadata,
    features_key,
    projections_key,
)
from pomona.core.settings import Settings
from pomona.featurize.commit import Committer
from pomona.featurize.tables import BATCH_PROPERTY, SCHEMAS, BatchTables, TableCommitError, batches_in
from pomona.featurize.tasks import _part_table, _scored, put_parquet

pytestmark = pytest.mark.integration

LINEAGE = Lineage(weights_id="random-0", backend="litert", precision="f32")


def _commit_files(settings: Settings, version: int, batch_id: str, parent: Latest, n: int) -> VersionMetadata:
    """Part files of `n` images for batch `batch_id`, written as the executors write them, and the version
    metadata that names them."""
    s3 = boto3.client("s3")
    rows = np.arange(n * 4, dtype=np.float32).reshape(n, 4)
    identity = {
        c: [f"{batch_id}-{c}-{i}" for i in range(n)] for c in ("sha256", "key", "label", "version_id")
    }
    common = {"batch_id": batch_id, "pca_version": version, "provenance": {}}
    features = _part_table(identity, "features", list(rows), **common)
    projections = _part_table(
        identity, "projection", list(rows[:, :2]), **common, extra=_scored(None, rows, np.zeros(n))
    )
    files = {
        "features": [features_key(settings.output_prefix, batch_id, 0)],
        "projections": [projections_key(settings.output_prefix, batch_id, 0)],
    }
    put_parquet(s3, settings.bucket, files["features"][0], features)
    put_parquet(s3, settings.bucket, files["projections"][0], projections)
    return VersionMetadata(
        version=version,
        batch_id=batch_id,
        parent=parent,
        lineage=LINEAGE,
        weights="random",
        n_seen=n,
        k=2,
        explained_variance_ratio=(0.6, 0.4),
        created_at="2026-12-07T00:00:00Z",
        manifest={"batch_id": batch_id, "files": files},
    )


def _history(settings: Settings, batches: int) -> dict[Latest, VersionMetadata]:
    """`batches` committed versions, 2 images each more than the last."""
    history: dict[Latest, VersionMetadata] = {}
    parent = NOTHING_COMMITTED
    for version in range(1, batches + 1):
        metadata = _commit_files(
            settings, version, f"20261207T00000{version}Z-0000000{version}", parent, version + 1
        )
        history[metadata.committed] = metadata
        parent = metadata.committed
    return history


def test_catch_up_registers_each_batch_latest_has_once_and_oldest_first(deployment: Settings) -> None:
    # GIVEN three committed versions whose batches no table has yet
    history = _history(deployment, 3)
    tables = BatchTables.for_settings(deployment)
    assert tables is not None
    first, second, third = history

    # WHEN the tables catch up with the second, then with the third, then again
    tables.catch_up(second, history.get)
    tables.catch_up(third, history.get)
    again = tables.catch_up(third, history.get)

    # THEN a reader of the catalog sees one snapshot per batch, in commit order, naming its batch and PCA version,
    # and every image exactly once; the repeat registered nothing
    assert again == []
    for name in SCHEMAS:
        table = catalog_reader(deployment).load_table((deployment.glue_database, name))
        summaries = [s.summary for s in table.snapshots()]
        assert [s[BATCH_PROPERTY] for s in summaries] == [first.batch_id, second.batch_id, third.batch_id]
        assert [s["pomona.pca_version"] for s in summaries] == ["1", "2", "3"]
        rows = table.scan().to_arrow()
        assert sorted(rows.column("sha256").to_pylist()) == sorted(
            f"{m.batch_id}-sha256-{i}" for m in history.values() for i in range(m.n_seen)
        )
        # Partitioned by batch: each file's partition value is its batch.
        files = table.inspect.files().to_pylist()
        assert {f["partition"]["batch_id"] for f in files} == {m.batch_id for m in history.values()}


def test_a_batch_latest_does_not_have_is_never_registered(deployment: Settings) -> None:
    # GIVEN two versions written, of which LATEST names only the first (the second run lost the race for LATEST)
    history = _history(deployment, 2)
    first, second = history
    tables = BatchTables.for_settings(deployment)
    assert tables is not None

    # WHEN the tables catch up with LATEST
    tables.catch_up(first, history.get)

    # THEN they hold the first batch alone
    for name in SCHEMAS:
        assert batches_in(tables.table(name)) == {first.batch_id}
    assert second.batch_id not in set(
        tables.table("features").scan().to_arrow().column("batch_id").to_pylist()
    )


def test_the_tables_columns_are_the_part_files_columns(deployment: Settings) -> None:
    # GIVEN a batch's part files, written as the executors write them, registered
    history = _history(deployment, 1)
    tables = BatchTables.for_settings(deployment)
    assert tables is not None
    tables.catch_up(next(iter(history)), history.get)

    # THEN each table reads back every column the part files hold, by name and type
    s3 = boto3.client("s3")
    for name, keys in next(iter(history.values())).manifest["files"].items():
        part = pq.read_table(io.BytesIO(s3.get_object(Bucket=deployment.bucket, Key=keys[0])["Body"].read()))
        scanned = tables.table(name).scan().to_arrow()
        assert scanned.column_names == part.column_names == [f.name for f in SCHEMAS[name].fields]
        for column in part.column_names:
            assert scanned.column(column).to_pylist() == part.column(column).to_pylist()
            assert scanned.schema.field(column).type.equals(
                part.schema.field(column).type, check_metadata=False
            )


def test_a_commit_that_lost_a_race_is_retried_on_the_reloaded_table_and_never_doubles(
    deployment: Settings,
) -> None:
    # GIVEN the first batch registered, and a writer holding the table as it was then
    history = _history(deployment, 2)
    first, second = history
    tables = BatchTables.for_settings(deployment)
    assert tables is not None
    tables.catch_up(first, history.get)
    stale = tables.table("features")

    # WHEN another writer registers the second batch first, and the stale writer then registers it too (a rival
    # run, or its own attempt whose response was lost)
    assert tables._register(tables.table("features"), "features", history[second])
    registered = tables._register(stale, "features", history[second])

    # THEN the stale writer's commit failed, it reloaded the table, found the batch and added nothing
    assert registered is False
    table = tables.table("features")
    assert [s.summary[BATCH_PROPERTY] for s in table.snapshots()] == [first.batch_id, second.batch_id]

    # AND a stale writer with a batch the table lacks retries on the reloaded table and lands it once
    third = _commit_files(deployment, 3, "20261207T000009Z-00000009", second, 1)
    stale = tables.table("projections")
    tables._register(tables.table("projections"), "projections", history[second])
    assert tables._register(stale, "projections", third)
    assert [s.summary[BATCH_PROPERTY] for s in tables.table("projections").snapshots()] == [
        first.batch_id,
        second.batch_id,
        third.batch_id,
    ]


def test_the_tables_of_another_output_prefix_are_refused_saying_which_database_to_set(
    deployment: Settings,
) -> None:
    # GIVEN tables made for the deployment's output prefix
    history = _history(deployment, 1)
    tables = BatchTables.for_settings(deployment)
    assert tables is not None
    tables.catch_up(next(iter(history)), history.get)

    # WHEN a deployment with another output prefix but the same database looks for its tables
    other = BatchTables.for_settings(deployment.replace(output_prefix="elsewhere/"))
    assert other is not None

    # THEN it is refused, naming both locations and the setting that separates them
    with pytest.raises(TableCommitError, match=r"s3://.*/elsewhere/iceberg/features.*POMONA_GLUE_DATABASE"):
        other.table("features")


def test_a_missing_version_metadata_stops_the_catch_up_saying_which(deployment: Settings) -> None:
    history = _history(deployment, 2)
    first, second = history
    tables = BatchTables.for_settings(deployment)
    assert tables is not None
    with pytest.raises(TableCommitError, match=rf"PCA v1 \(batch {first.batch_id}\).*found none"):
        tables.catch_up(second, {second: history[second]}.get)


def test_with_tables_off_the_committer_registers_nothing(deployment: Settings) -> None:
    off = deployment.replace(tables="off")
    committer = Committer(boto3.client("s3"), off, index=None)  # type: ignore[arg-type]
    assert committer.tables is None
    committer.register_tables(Latest(1, "20261207T000001Z-00000001"))  # no table, no Glue call
    assert boto3.client("glue").get_tables(DatabaseName=deployment.glue_database)["TableList"] == []


def test_old_snapshots_are_expired_from_the_metadata_and_their_rows_stay(deployment: Settings) -> None:
    # GIVEN tables that keep 2 snapshots, and 4 committed batches
    history = _history(deployment, 4)
    tables = BatchTables.for_settings(deployment)
    assert tables is not None
    tables = dataclasses.replace(tables, keep_snapshots=2)
    *_, third, fourth = history

    # WHEN they catch up with LATEST, then again
    tables.catch_up(fourth, history.get)
    again = tables.catch_up(fourth, history.get)

    # THEN each table's metadata keeps the 2 newest snapshots, every batch's rows are still there once, and the
    # catch-up registered nothing twice
    assert again == []
    for name in SCHEMAS:
        table = catalog_reader(deployment).load_table((deployment.glue_database, name))
        assert [s.summary[BATCH_PROPERTY] for s in table.snapshots()] == [third.batch_id, fourth.batch_id]
        assert sorted(table.scan().to_arrow().column("sha256").to_pylist()) == sorted(
            f"{m.batch_id}-sha256-{i}" for m in history.values() for i in range(m.n_seen)
        )
