"""A committed PCA version's `metadata.json` and the lineage it names: their types and their one parser.

The lineage is the model whose features the PCA holds (weights, backend, precision): one PCA never mixes features
of two models, and serving makes features with the same one. Its fields sit at the top level of both a version's
metadata and a batch's manifest, so `Lineage.from_json` reads either. `from_json` is the one place a missing field
gets a default: a version's lineage without a precision was computed in f32.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pomona.core.outputs.latest import Latest, OutputsError
from pomona.core.outputs.layout import METADATA_FILE

# What a lineage without a recorded precision computed in.
DEFAULT_PRECISION = "f32"


@dataclass(frozen=True, kw_only=True)
class Lineage:
    """The model that made a PCA's features: the weights' id, the backend, and the arithmetic's precision."""

    weights_id: str
    backend: str
    precision: str

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Lineage:
        """The lineage named at the top level of a version's metadata or a batch's manifest."""
        _require(document, ("weights_id", "backend"), what="a lineage")
        return cls(
            weights_id=str(document["weights_id"]),
            backend=str(document["backend"]),
            precision=str(document.get("precision") or DEFAULT_PRECISION),
        )

    def to_json(self) -> dict[str, str]:
        return {"weights_id": self.weights_id, "backend": self.backend, "precision": self.precision}

    def describe(self) -> str:
        """For messages: `weights …, backend …, precision …`."""
        return f"weights {self.weights_id}, backend {self.backend}, precision {self.precision}"


@dataclass(frozen=True, kw_only=True)
class VersionMetadata:
    """`metadata.json` of PCA version `version`, written last into its folder: its presence says the folder is whole.

    `parent` is the version it was built on (LATEST as the run read it), `weights` the POMONA_WEIGHTS spec the run
    used (serving loads the same), and `manifest` the batch's manifest to be, which recovery writes should the run
    stop between moving LATEST and writing it."""

    version: int
    batch_id: str
    parent: Latest
    lineage: Lineage
    weights: str | None
    n_seen: int
    k: int
    explained_variance_ratio: tuple[float, ...]
    created_at: str
    manifest: dict[str, Any]

    @property
    def committed(self) -> Latest:
        """This version, as LATEST names it."""
        return Latest(self.version, self.batch_id)

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> VersionMetadata:
        _require(document, _REQUIRED, what=METADATA_FILE)
        return cls(
            version=int(document["version"]),
            batch_id=str(document["batch_id"]),
            parent=Latest.from_json(document["parent"]),
            lineage=Lineage.from_json(document),
            weights=document.get("weights"),
            n_seen=int(document["n_seen"]),
            k=int(document["k"]),
            explained_variance_ratio=tuple(float(r) for r in document["explained_variance_ratio"]),
            created_at=str(document["created_at"]),
            manifest=dict(document["manifest"]),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "batch_id": self.batch_id,
            "parent": self.parent.to_json(),
            **self.lineage.to_json(),
            "weights": self.weights,
            "n_seen": self.n_seen,
            "k": self.k,
            "explained_variance_ratio": list(self.explained_variance_ratio),
            "created_at": self.created_at,
            "manifest": self.manifest,
        }


_REQUIRED = (
    "version",
    "batch_id",
    "parent",
    "n_seen",
    "k",
    "explained_variance_ratio",
    "created_at",
    "manifest",
)


def read_version_metadata(
    read: Callable[[str], bytes | None], prefix: str, version: Latest
) -> VersionMetadata | None:
    """The metadata of committed `version` under `prefix`, read through `read` (a `Files.read`); None when its
    folder has none (version 0 never has)."""
    if version.version == 0:
        return None
    body = read(version.folder(prefix) + METADATA_FILE)
    return None if body is None else VersionMetadata.from_json(json.loads(body))


def _require(document: Mapping[str, Any], fields: tuple[str, ...], *, what: str) -> None:
    missing = [name for name in fields if name not in document]
    if missing:
        raise OutputsError(f"expected {what} with fields {sorted(fields)}, got one without {missing}")
