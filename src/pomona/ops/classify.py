"""`pomona classify`: answers for photos on this machine, from the deployment's latest model or a folder's.

The same serving core as the classify Lambda (`pomona.classify`): a folder that mirrors the bucket (the demo's
`--out`) works offline, the deployment's bucket through the configured endpoint.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pomona.classify.answering import classify_photo, rejected
from pomona.classify.model import LatestModel
from pomona.core.outputs import Files, FolderFiles, S3Files
from pomona.core.settings import Settings
from pomona.validation.checks import Limits

UNREADABLE = "unreadable"  # not a validation reason: the file itself could not be read


def model_source(settings: Settings, *, model_dir: Path | None, weights: str | None = None) -> LatestModel:
    """The latest model under `model_dir` (a folder laid out as the bucket), else in the deployment's bucket."""
    files: Files
    if model_dir is not None:
        files = FolderFiles(model_dir)
    else:
        import boto3

        from pomona.core.aws import RETRIES

        files = S3Files(
            boto3.client("s3", endpoint_url=settings.endpoint_url, config=RETRIES), settings.bucket
        )
    return LatestModel(files, settings, weights=weights, num_threads=min(os.cpu_count() or 1, 4))


def classify_files(paths: Iterable[Path], model: LatestModel, settings: Settings) -> Iterator[dict[str, Any]]:
    """One answer per photo, in order; the model is loaded before the first (`ModelUnavailableError` if none)."""
    served = model.get()
    limits = Limits.from_settings(settings)
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as err:
            yield rejected(
                str(path),
                UNREADABLE,
                f"expected a readable file, got {err}",
                model_version=served.model_version,
            )
            continue
        yield classify_photo(served, data, file=str(path), limits=limits, catalog=model.catalog)
