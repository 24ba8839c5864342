"""`models/pca/LATEST`, the pointer whose move commits a batch: its type, its one parser, its reads and its
conditional move.

LATEST names the committed PCA version and the batch that wrote it: `{"version": 3, "batch_id": "…"}`, or
`{"version": 0}` when recovery fenced a deployment before its first commit. A run moves it from what it read to
the next version only if nobody moved it since (`move_latest`, on the ETag it read), so of two runs that got
that far exactly one commits.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from pomona.core.aws import get_json, is_precondition_failed, put_json
from pomona.core.errors import PomonaError
from pomona.core.outputs.layout import pca_latest_key, pca_prefix

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


class OutputsError(PomonaError, ValueError):
    """A committed document is not of the form its type expects."""


@dataclass(frozen=True)
class Latest:
    """A committed PCA version: its number (0: none yet) and the batch that wrote it (None for version 0 alone).

    `etag`, when read from S3, is what `move_latest` conditions on; it is not part of what LATEST points at, so two
    reads of one pointer compare equal whatever their ETags."""

    version: int
    batch_id: str | None
    etag: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.version < 0 or (self.version > 0) != (self.batch_id is not None):
            raise OutputsError(
                f"expected version 0 without a batch or a later version with one, got version {self.version}, "
                f"batch {self.batch_id!r}"
            )

    @classmethod
    def from_json(cls, document: Mapping[str, Any], *, etag: str | None = None) -> Latest:
        """LATEST (or a version's `parent`) as stored."""
        version, batch_id = document.get("version"), document.get("batch_id")
        if not isinstance(version, int) or not (batch_id is None or isinstance(batch_id, str)):
            raise OutputsError(f"expected a PCA version and its batch id, got {dict(document)!r}")
        return cls(version, batch_id, etag)

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "batch_id": self.batch_id} if self.version else {"version": 0}

    def advanced(self, batch_id: str) -> Latest:
        """The version `batch_id` commits on top of this one."""
        return Latest(self.version + 1, batch_id)

    def folder(self, prefix: str) -> str:
        """This version's folder under `prefix` (version 0 has none)."""
        if self.batch_id is None:
            raise OutputsError("expected a committed version, got version 0, which has no folder")
        return pca_prefix(prefix, self.version, self.batch_id)

    @property
    def name(self) -> str:
        """`v<N>-<batch id>`, the version's folder name."""
        return f"v{self.version}-{self.batch_id}"


NOTHING_COMMITTED = Latest(0, None)


def read_latest(read: Callable[[str], bytes | None], prefix: str) -> Latest:
    """LATEST under `prefix`, read through `read` (a `Files.read`); `NOTHING_COMMITTED` when there is none."""
    body = read(pca_latest_key(prefix))
    return NOTHING_COMMITTED if body is None else Latest.from_json(json.loads(body))


def read_latest_for_update(s3: S3Client, bucket: str, prefix: str) -> Latest:
    """LATEST under `prefix` with its ETag, for `move_latest`; `NOTHING_COMMITTED` (no ETag) when there is none."""
    found = get_json(s3, bucket, pca_latest_key(prefix))
    return NOTHING_COMMITTED if found is None else Latest.from_json(found[0], etag=found[1])


def move_latest(s3: S3Client, bucket: str, prefix: str, *, read: Latest, to: Latest) -> bool:
    """Point LATEST at `to` if it is still as `read` found it (its ETag, or absent when `read` had none); False
    when another writer moved it since."""
    try:
        put_json(
            s3,
            bucket,
            pca_latest_key(prefix),
            to.to_json(),
            if_none_match=read.etag is None,
            if_match=read.etag,
        )
    except ClientError as err:
        if is_precondition_failed(err):
            return False
        raise
    return True
