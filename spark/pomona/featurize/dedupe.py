"""Which received images are new: an image is its sha256, and one already committed is a duplicate."""

from __future__ import annotations

from collections.abc import Sequence

from pomona.core.contract import ImageMessage


def split_duplicates(
    messages: Sequence[tuple[ImageMessage, str]], seen: set[str]
) -> tuple[list[tuple[ImageMessage, str]], list[tuple[ImageMessage, str]]]:
    """(first occurrence of each image not yet committed, the rest). Images are identified by sha256."""
    fresh: list[tuple[ImageMessage, str]] = []
    duplicates: list[tuple[ImageMessage, str]] = []
    taken = set(seen)
    for message, receipt in messages:
        if message.sha256 in taken:
            duplicates.append((message, receipt))
        else:
            taken.add(message.sha256)
            fresh.append((message, receipt))
    return fresh, duplicates
