"""Uploading images the way the mobile app does: `uploads/<label>/<file>`, the label the image's folder."""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
from rich.console import Console
from rich.progress import Progress

from pomona.core.aws import RETRIES
from pomona.core.settings import Settings


def labelled_files(folder: Path) -> list[tuple[Path, str]]:
    """Every file under `folder`, with its label: the name of the folder it sits in (Fruits-360's layout)."""
    # os.walk, unlike Path.rglob on Python 3.11, follows symlinked label folders.
    return sorted(
        (Path(root) / name, Path(root).name)
        for root, _, names in os.walk(folder, followlinks=True)
        if Path(root) != folder
        for name in names
    )


def upload_key(settings: Settings, label: str, name: str) -> str:
    return f"{settings.uploads_prefix}{label}/{name}"


def upload_files(
    files: Iterable[tuple[str, bytes]],
    settings: Settings,
    *,
    console: Console | None = None,
    threads: int = 8,
) -> int:
    """PUT `(key, body)` pairs into the bucket in parallel, with a progress bar; returns how many."""
    s3 = boto3.client("s3", endpoint_url=settings.endpoint_url, config=RETRIES)
    items = list(files)

    def put(item: tuple[str, bytes]) -> None:
        key, body = item
        content_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
        s3.put_object(Bucket=settings.bucket, Key=key, Body=body, ContentType=content_type)

    with Progress(console=console or Console(stderr=True), transient=True) as progress:
        task = progress.add_task("uploading", total=len(items))
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for _ in pool.map(put, items):
                progress.advance(task)
    return len(items)


def upload_folder(folder: Path, settings: Settings, *, console: Console | None = None) -> int:
    files = (
        (upload_key(settings, label, path.name), path.read_bytes()) for path, label in labelled_files(folder)
    )
    return upload_files(files, settings, console=console)
