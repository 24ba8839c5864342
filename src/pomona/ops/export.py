"""Reading committed outputs back: every committed image's features, projected with the latest PCA model.

`pomona export csv` writes the seed project's deliverable from it: one row per image, key, label and PCA
components. Only batches with a manifest are read, and only the part files their manifest lists.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np
import numpy.typing as npt

from pomona.core.errors import PomonaError
from pomona.core.outputs import CommittedOutputs
from pomona.ml.pca import PcaModel, load_model, project

if TYPE_CHECKING:
    import pyarrow as pa


def committed_features(outputs: CommittedOutputs) -> pa.Table:
    """sha256, key, label, batch_id and features of every committed image, oldest batch first."""
    table, missing = outputs.read_parts("features", ["sha256", "key", "label", "batch_id", "features"])
    if missing:
        raise PomonaError(f"expected every part file committed batches list, found none at {missing[:3]}")
    if table is None:
        raise PomonaError(
            f"expected committed batches in {outputs.files.location}{outputs.prefix}, found none"
        )
    return table


def latest_model(outputs: CommittedOutputs) -> tuple[int, PcaModel]:
    version = outputs.latest_version()
    model_npz = outputs.version_file(version, "model.npz") if version else None
    if model_npz is None:
        raise PomonaError("expected a committed PCA model (models/pca/LATEST), found none: run the job first")
    model = load_model(model_npz)
    return version, model


def features_matrix(column: pa.ChunkedArray) -> npt.NDArray[np.float32]:
    """A list column of n rows of d values as an n×d float32 matrix, flattened by Arrow (no Python object per
    value). Every row must hold d values."""
    import pyarrow.compute as pc

    if not len(column):
        return np.empty((0, 0), dtype=np.float32)
    if column.null_count:
        raise PomonaError(f"expected features in every row, found {column.null_count} row(s) without")
    lengths = pc.list_value_length(column).to_numpy()
    d = int(lengths[0])
    if (wrong := np.flatnonzero(lengths != d)).size:
        found = sorted({int(n) for n in lengths[wrong]})
        raise PomonaError(
            f"expected {d} feature values in every row, found {found[:5]} in {wrong.size} row(s), "
            f"the first at row {int(wrong[0])}"
        )
    values = [chunk.flatten().to_numpy(zero_copy_only=False) for chunk in column.chunks]
    return np.concatenate(values).astype(np.float32, copy=False).reshape(len(column), d)


def write_csv(table: pa.Table, model: PcaModel, out: TextIO) -> int:
    """key, label, pc_1 … pc_k for each row of `table`; returns the number of rows written."""
    projected = project(model, features_matrix(table.column("features")))
    writer = csv.writer(out)
    writer.writerow(["key", "label", *(f"pc_{i + 1}" for i in range(model.n_components))])
    for key, label, row in zip(
        table.column("key").to_pylist(), table.column("label").to_pylist(), projected, strict=True
    ):
        writer.writerow([neutralised(key), neutralised(label), *(f"{v:.6g}" for v in row)])
    return len(projected)


# A spreadsheet runs a cell that starts with one of these as a formula (OWASP's "CSV injection").
_FORMULA_LEADS = ("=", "+", "-", "@", "\t", "\r")


def neutralised(text: str) -> str:
    """`text` as a spreadsheet shows it, never runs it: a formula-leading cell gets a leading apostrophe."""
    return f"'{text}" if text.startswith(_FORMULA_LEADS) else text


def export_csv(outputs: CommittedOutputs, path: Path) -> tuple[int, int]:
    """Write the CSV to `path`; returns (rows, PCA version used)."""
    version, model = latest_model(outputs)
    table = committed_features(outputs)
    with path.open("w", newline="", encoding="utf-8") as out:
        return write_csv(table, model, out), version
