"""`pomona demo --out`'s tables offline: the embedded stack's Iceberg tables rebuilt as a SQLite catalog in the
output folder, over the part files downloaded there.

An Iceberg table's metadata names its files by absolute path (`s3://…` on the embedded stack, gone when the demo
ends), so the tables are rebuilt, not copied: each snapshot of the Glue table, oldest first, becomes a snapshot of
the local table adding the same files at their downloaded paths, with the same `pomona.*` summary. Nothing is
copied twice, and a reader needs pyiceberg alone (`PYICEBERG_HOME=<out>/iceberg`): no server, no project code.
The folder is not relocatable: its metadata holds absolute paths too.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.manifest import ManifestEntryStatus
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot, ancestors_of

from pomona.core.settings import Settings
from pomona.featurize.tables import SCHEMAS, TABLE_PROPERTIES, glue_catalog

CATALOG = "pomona"


def localize_tables(settings: Settings, out: Path) -> Path | None:
    """Rebuild the deployment's tables in `out/iceberg` (replacing an earlier demo's), over the part files
    `download_outputs` mirrored into `out`; that folder, or None when the deployment has no tables."""
    root = out.resolve() / "iceberg"
    shutil.rmtree(root, ignore_errors=True)
    if settings.tables == "off":
        return None
    root.mkdir(parents=True)
    uri = f"sqlite:///{root}/catalog.db"
    local = SqlCatalog(CATALOG, uri=uri, warehouse=f"file://{root}")
    local.create_namespace(settings.glue_database)
    source = glue_catalog(settings)
    for name in SCHEMAS:
        try:
            remote = source.load_table((settings.glue_database, name))
        except NoSuchTableError:
            continue  # nothing committed yet
        table = local.create_table(
            (settings.glue_database, name),
            schema=remote.schema(),
            partition_spec=remote.spec(),
            properties=TABLE_PROPERTIES,
        )
        for snapshot in reversed(list(ancestors_of(remote.current_snapshot(), remote.metadata))):
            files = [_downloaded(path, settings, out) for path in _added_files(remote, snapshot)]
            summary = snapshot.summary.additional_properties if snapshot.summary is not None else {}
            table.add_files(
                files, snapshot_properties={k: v for k, v in summary.items() if k.startswith("pomona.")}
            )
    # pyiceberg's configuration file: `load_catalog("pomona")` finds it through PYICEBERG_HOME.
    (root / ".pyiceberg.yaml").write_text(f"catalog:\n  {CATALOG}:\n    type: sql\n    uri: {uri}\n")
    return root


def _added_files(table: Table, snapshot: Snapshot) -> list[str]:
    """The data files `snapshot` added (merged manifests also list earlier snapshots' files as existing)."""
    return [
        entry.data_file.file_path
        for manifest in snapshot.manifests(table.io)
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True)
        if entry.status == ManifestEntryStatus.ADDED and entry.snapshot_id == snapshot.snapshot_id
    ]


def _downloaded(path: str, settings: Settings, out: Path) -> str:
    """Where `download_outputs` put the object `s3://<bucket>/<output prefix><folder>…`: `out/<folder>…`."""
    where = f"s3://{settings.bucket}/{settings.output_prefix}"
    target = out.resolve() / path.removeprefix(where)
    if not path.startswith(where) or not target.resolve().is_relative_to(out.resolve()):
        raise ValueError(f"expected a table file under {where}, found {path}")
    # `file://` and the path as it is: Path.as_uri would percent-encode the `=` of `batch_id=`.
    return f"file://{target}"
