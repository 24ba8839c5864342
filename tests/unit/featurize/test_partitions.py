"""How the job splits a batch into Spark partitions: whole rounds over the task slots, bounded.

A partition whose every image failed writes no features part file, so the projection pass has no task for it:
`test_messages_naming_gone_or_changed_objects_are_reported_not_featurized` (integration) runs into that case."""

from __future__ import annotations

import math

import pytest

from pomona.featurize.partitions import partition_count, split_evenly, tree_depth


@pytest.mark.parametrize(
    ("images", "per_partition", "parallelism", "expected"),
    [
        pytest.param(540, 512, 2, 2, id="sample-one-round"),
        pytest.param(1500, 512, 2, 4, id="three-wanted-two-rounds"),
        pytest.param(50_000, 512, 2, 8, id="at-most-four-rounds"),
        pytest.param(24, 8, 2, 4, id="small-partitions"),
        pytest.param(1, 512, 2, 1, id="one-image"),
        pytest.param(3, 1, 8, 3, id="fewer-images-than-slots"),
        pytest.param(100, 512, 0, 1, id="no-slots-yet"),
    ],
)
def test_partition_count(images: int, per_partition: int, parallelism: int, expected: int) -> None:
    assert partition_count(images, images_per_partition=per_partition, parallelism=parallelism) == expected


@pytest.mark.parametrize(("items", "parts"), [(540, 2), (541, 2), (7, 3), (3, 3), (1, 1), (50_000, 8)])
def test_split_evenly_keeps_order_and_balances_to_one(items: int, parts: int) -> None:
    groups = split_evenly(range(items), parts)
    assert len(groups) == parts
    assert [i for group in groups for i in group] == list(range(items))
    assert max(map(len, groups)) - min(map(len, groups)) <= 1


def _driver_receives(parts: int, depth: int) -> int:
    """How many partial results `RDD.treeReduce(depth)` leaves for the driver (pyspark's treeAggregate loop)."""
    scale = max(math.ceil(parts ** (1.0 / depth)), 2)
    left: float = parts
    while left > scale + left / scale:
        left /= scale
    return math.ceil(left) if left != int(left) else int(left)


@pytest.mark.parametrize("parts", [1, 2, 4, 8, 80, 400, 4096])
def test_the_tree_reduction_leaves_the_driver_at_most_four_states(parts: int) -> None:
    assert _driver_receives(parts, tree_depth(parts)) <= 4
