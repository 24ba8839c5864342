"""Where committed outputs are read from: the bucket itself, or a folder laid out as the bucket."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pomona.core.aws import read_bytes

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


class Files(Protocol):
    """Objects by key: the bucket itself, or a folder that mirrors it."""

    def read(self, key: str) -> bytes | None:
        """The object's bytes, or None when there is none."""

    def keys(self, prefix: str) -> list[str]:
        """Every key under `prefix`, sorted."""

    @property
    def location(self) -> str:
        """Where the keys are, for messages: `s3://bucket/` or a folder."""


@dataclass(frozen=True)
class S3Files:
    s3: S3Client
    bucket: str

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/"

    def read(self, key: str) -> bytes | None:
        return read_bytes(self.s3, self.bucket, key)

    def keys(self, prefix: str) -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


@dataclass(frozen=True)
class FolderFiles:
    """A folder laid out as the bucket: key `a/b.json` is the file `root/a/b.json`."""

    root: Path

    @property
    def location(self) -> str:
        return f"{self.root}/"

    def read(self, key: str) -> bytes | None:
        path = (self.root / key).resolve()
        # Keys come from manifests, which are data: never read outside the folder.
        if not path.is_relative_to(self.root.resolve()) or not path.is_file():
            return None
        return path.read_bytes()

    def keys(self, prefix: str) -> list[str]:
        folder, _, _ = prefix.rpartition("/")
        base = self.root / folder
        if not base.is_dir():
            return []
        found = (p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())
        return sorted(key for key in found if key.startswith(prefix))
