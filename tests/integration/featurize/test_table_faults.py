"""The Iceberg tables under a killed run: a table never holds a batch LATEST lacks, and a run killed between
moving LATEST and committing the tables leaves tables the next run completes, each batch and image once."""

from __future__ import annotations

from collections import Counter
from typing import Any

import boto3
import pytest
from job_process import KILLED, Uploaded, expire_lock, finish, start_job, table_contents, wait_until_visible

from pomona.core.outputs import read_latest_for_update
from pomona.featurize.driver import JobOptions, run_job

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("phase", ["after_latest", "after_index"])
def test_a_run_killed_between_latest_and_the_table_commit_is_caught_up_by_the_next(
    phase: str, spark: Any, uploaded: Uploaded, job_options: JobOptions
) -> None:
    settings = uploaded.settings

    # GIVEN a run killed after it moved LATEST, before it committed the tables
    code, output = finish(start_job(settings, fault=phase))
    assert code == KILLED, output[-3000:]
    committed = read_latest_for_update(boto3.client("s3"), settings.bucket, settings.output_prefix)
    assert committed.version == 1
    # (so far no table has the batch: a reader sees the tables as they were before it)
    assert table_contents(settings) == {"features": ([], []), "projections": ([], [])}

    # WHEN its lock lapses and the next run starts
    expire_lock(settings)
    wait_until_visible(settings)
    result = run_job(spark, settings, job_options)

    # THEN that run only finished the killed run's commit, and each table holds its batch once, every image once
    assert result.manifest is None
    for batches, images in table_contents(settings).values():
        assert (batches, Counter(images)) == ([committed.batch_id], Counter(uploaded.shas))


def test_a_run_killed_before_latest_leaves_no_image_in_the_tables(
    spark: Any, uploaded: Uploaded, job_options: JobOptions
) -> None:
    settings = uploaded.settings

    # GIVEN a run killed after writing its part files and its PCA version, before moving LATEST
    code, output = finish(start_job(settings, fault="after_pca_version"))
    assert code == KILLED, output[-3000:]

    # WHEN the next run commits the images in a batch of its own
    expire_lock(settings)
    wait_until_visible(settings)
    result = run_job(spark, settings, job_options)

    # THEN the tables hold that batch alone: no image of the killed run's files
    assert result.manifest is not None
    for batches, images in table_contents(settings).values():
        assert (batches, Counter(images)) == ([result.manifest["batch_id"]], Counter(uploaded.shas))
