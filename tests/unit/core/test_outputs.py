"""The committed outputs' typed documents (LATEST, a version's metadata, its lineage) and their one reader, on a
folder laid out as the bucket."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pomona.core.aws import json_bytes
from pomona.core.outputs import (
    METADATA_FILE,
    NOTHING_COMMITTED,
    CommittedOutputs,
    FolderFiles,
    Latest,
    Lineage,
    OutputsError,
    VersionMetadata,
    manifest_key,
    pca_latest_key,
)

LINEAGE = Lineage(weights_id="random", backend="litert", precision="f32")


def _metadata(version: int, batch_id: str, parent: Latest) -> VersionMetadata:
    return VersionMetadata(
        version=version,
        batch_id=batch_id,
        parent=parent,
        lineage=LINEAGE,
        weights="random",
        n_seen=12,
        k=2,
        explained_variance_ratio=(0.6, 0.3),
        created_at="2026-12-01T00:00:00.000Z",
        manifest={"batch_id": batch_id, "pca_version": version, "files": {"features": [], "projections": []}},
    )


def _write(root: Path, key: str, document: dict[str, Any]) -> None:
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(json_bytes(document))


@pytest.mark.parametrize(
    ("latest", "stored"),
    [
        pytest.param(Latest(3, "b3"), {"version": 3, "batch_id": "b3"}, id="committed"),
        pytest.param(NOTHING_COMMITTED, {"version": 0}, id="fenced-before-the-first-commit"),
    ],
)
def test_latest_round_trips_as_stored(latest: Latest, stored: dict[str, Any]) -> None:
    assert latest.to_json() == stored
    assert Latest.from_json(stored) == latest


def test_latest_compares_what_it_points_at_not_its_etag() -> None:
    assert Latest(2, "b2", etag='"one"') == Latest(2, "b2", etag='"two"')
    assert Latest(1, "b1").advanced("b2") == Latest(2, "b2")
    assert Latest(2, "b2").folder("out/") == "out/models/pca/v2-b2/"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        pytest.param({"version": 2}, "got version 2, batch None", id="no-batch"),
        pytest.param({"version": 0, "batch_id": "b"}, "got version 0, batch 'b'", id="batch-of-nothing"),
        pytest.param({"version": "2", "batch_id": "b"}, "expected a PCA version and its batch id", id="text"),
    ],
)
def test_latest_refuses_a_pointer_without_its_batch(document: dict[str, Any], message: str) -> None:
    with pytest.raises(OutputsError, match=message):
        Latest.from_json(document)


def test_a_lineage_without_a_precision_is_f32_and_one_without_weights_is_refused() -> None:
    assert Lineage.from_json({"weights_id": "random", "backend": "litert"}) == LINEAGE
    with pytest.raises(
        OutputsError, match=r"expected a lineage with fields \['backend', 'weights_id'\], got one "
    ):
        Lineage.from_json({"backend": "litert", "precision": "f32"})


def test_version_metadata_round_trips_with_its_lineage_at_the_top_level() -> None:
    metadata = _metadata(2, "b2", Latest(1, "b1"))
    stored = json.loads(json_bytes(metadata.to_json()))
    assert (stored["weights_id"], stored["backend"], stored["precision"]) == ("random", "litert", "f32")
    assert stored["parent"] == {"version": 1, "batch_id": "b1"}
    assert VersionMetadata.from_json(stored) == metadata
    assert metadata.committed == Latest(2, "b2")
    del stored["manifest"]
    with pytest.raises(
        OutputsError, match=r"expected metadata\.json with fields .*, got one without \['manifest'\]"
    ):
        VersionMetadata.from_json(stored)


def test_the_reader_finds_each_committed_versions_folder(tmp_path: Path) -> None:
    # GIVEN two committed versions: LATEST names the second, the first batch's manifest the first
    files = FolderFiles(tmp_path)
    outputs = CommittedOutputs(files)
    assert (outputs.latest(), outputs.latest_version(), outputs.version_metadata(0)) == (
        NOTHING_COMMITTED,
        0,
        None,
    )
    first, second = _metadata(1, "b1", NOTHING_COMMITTED), _metadata(2, "b2", Latest(1, "b1"))
    for metadata in (first, second):
        _write(tmp_path, metadata.committed.folder("") + METADATA_FILE, metadata.to_json())
        _write(tmp_path, manifest_key("", metadata.batch_id), metadata.manifest)
    _write(tmp_path, pca_latest_key(""), second.committed.to_json())

    # WHEN it reads them, THEN each version's files are its own batch's, and an unknown version has none
    assert outputs.latest() == Latest(2, "b2")
    assert outputs.version_metadata(2) == second
    assert outputs.version_metadata(1) == first
    assert outputs.version_json(1, METADATA_FILE) == first.to_json()
    assert outputs.version_file(3, METADATA_FILE) is None
