"""How a batch is cut into Spark tasks."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import TypeVar

_T = TypeVar("_T")


def partition_count(images: int, *, images_per_partition: int, parallelism: int) -> int:
    """Partitions for a batch: about `images_per_partition` images each, in whole rounds over the `parallelism`
    task slots (a short last round would leave cores idle), at most 4 rounds, never more than the images."""
    wanted = math.ceil(images / images_per_partition)
    rounds = min(4, max(1, math.ceil(wanted / max(1, parallelism))))
    return max(1, min(images, rounds * max(1, parallelism)))


def split_evenly(items: Sequence[_T], parts: int) -> list[list[_T]]:
    """`items` in order, cut into `parts` runs whose lengths differ by at most one."""
    size, extra = divmod(len(items), parts)
    bounds = itertools.accumulate([0] + [size + (i < extra) for i in range(parts)])
    return [list(items[a:b]) for a, b in itertools.pairwise(bounds)]


def tree_depth(parts: int) -> int:
    """The depth of the tree reduction over `parts` partial results for which Spark halves their number at each
    level (`RDD.treeReduce` uses a fan-in of ceil(parts ** (1/depth))): the driver then receives at most 4, however
    many partitions the batch had."""
    return max(2, math.ceil(math.log2(max(parts, 1))))
