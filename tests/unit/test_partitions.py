"""How the job splits a batch into Spark partitions: whole rounds over the task slots, bounded; and partitions
that end up empty."""

from __future__ import annotations

import numpy as np
import pytest

from pomona.featurize.job import partition_count, partition_states, project_partitions
from pomona.featurize.pca import PcaState, fit_pca, state_to_npz
from pomona.settings import Settings


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


def test_a_partition_whose_every_image_failed_projects_nothing_and_holds_no_state() -> None:
    # GIVEN a refit model, and a partition the failed-rows filter left without a single frame
    state = PcaState.from_rows(np.random.default_rng(0).normal(size=(8, 4)))
    model_npz = state_to_npz(fit_pca(state, n_components=2), state)
    project = project_partitions(Settings(), model_npz, batch_id="b", pca_version=1, provenance={})

    # WHEN / THEN both executor passes yield nothing, rather than fail the stage
    assert list(project(iter([]))) == []
    assert list(partition_states(iter([]))) == []
