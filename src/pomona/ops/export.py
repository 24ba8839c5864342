"""Reading committed outputs back: every committed image's features, projected with the latest PCA model.

`pomona export csv` writes the seed project's deliverable from it: one row per image, key, label and PCA
components. Only batches with a manifest are read, and only the part files their manifest lists.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pomona.core.contract import pca_prefix
from pomona.core.errors import PomonaError
from pomona.core.settings import Settings
from pomona.core.store import committed_batches, read_latest
from pomona.ml.pca import PcaModel, load_npz, project

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def committed_features(s3: S3Client, settings: Settings) -> pa.Table:
    """sha256, key, label, batch_id and features of every committed image, oldest batch first."""
    tables = []
    for manifest in committed_batches(s3, settings.bucket, settings.output_prefix):
        for key in manifest["files"]["features"]:
            body = s3.get_object(Bucket=settings.bucket, Key=key)["Body"].read()
            tables.append(
                pq.read_table(io.BytesIO(body), columns=["sha256", "key", "label", "batch_id", "features"])
            )
    if not tables:
        raise PomonaError(
            f"expected committed batches in s3://{settings.bucket}/{settings.output_prefix}, found none"
        )
    return pa.concat_tables(tables)


def latest_model(s3: S3Client, settings: Settings) -> tuple[int, PcaModel]:
    version, _ = read_latest(s3, settings.bucket, settings.output_prefix)
    if version == 0:
        raise PomonaError("expected a committed PCA model (models/pca/LATEST), found none: run the job first")
    key = pca_prefix(settings.output_prefix, version) + "model.npz"
    model, _ = load_npz(s3.get_object(Bucket=settings.bucket, Key=key)["Body"].read())
    return version, model


def write_csv(table: pa.Table, model: PcaModel, out: TextIO) -> int:
    """key, label, pc_1 … pc_k for each row of `table`; returns the number of rows written."""
    features = np.asarray(table.column("features").to_pylist(), dtype=np.float32)
    projected = project(model, features)
    writer = csv.writer(out)
    writer.writerow(["key", "label", *(f"pc_{i + 1}" for i in range(model.n_components))])
    for key, label, row in zip(
        table.column("key").to_pylist(), table.column("label").to_pylist(), projected, strict=True
    ):
        writer.writerow([key, label, *(f"{v:.6g}" for v in row)])
    return len(projected)


def export_csv(s3: S3Client, settings: Settings, path: Path) -> tuple[int, int]:
    """Write the CSV to `path`; returns (rows, PCA version used)."""
    version, model = latest_model(s3, settings)
    table = committed_features(s3, settings)
    with path.open("w", newline="", encoding="utf-8") as out:
        return write_csv(table, model, out), version
