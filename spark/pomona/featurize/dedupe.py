"""Which received images are new: an image is its sha256, and one already committed is a duplicate."""

from __future__ import annotations

from collections.abc import Sequence

from pomona.featurize.queue import Held


def split_duplicates(messages: Sequence[Held], seen: set[str]) -> tuple[list[Held], list[Held]]:
    """(first occurrence of each image not yet committed, the rest). Images are identified by sha256."""
    fresh: list[Held] = []
    duplicates: list[Held] = []
    taken = set(seen)
    for held in messages:
        if held.message.sha256 in taken:
            duplicates.append(held)
        else:
            taken.add(held.message.sha256)
            fresh.append(held)
    return fresh, duplicates
