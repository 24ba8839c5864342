"""The job's two executor passes, as the driver starts them: featurize the batch's messages, then project the
features part files with the refit. Each is an RDD over task ids (DataFrame tasks would start a second pool of
Python workers); what runs in the tasks is `pomona.featurize.tasks`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

from pomona.core.contract import ImageMessage
from pomona.core.settings import Settings
from pomona.featurize.outcome import PartOutcome, combine_outcomes
from pomona.featurize.partitions import partition_count, split_evenly, tree_depth
from pomona.featurize.tasks import featurize_partitions, project_partitions

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def featurize_pass(
    spark: SparkSession,
    settings: Settings,
    messages: Sequence[ImageMessage],
    *,
    images_per_partition: int,
    batch_id: str,
    version: int,
    provenance: dict[str, str],
) -> tuple[PartOutcome, int]:
    """The tasks' outcomes, reduced on the executors into one, and how many message groups (tasks) there were."""
    context = spark.sparkContext
    parts = partition_count(
        len(messages), images_per_partition=images_per_partition, parallelism=context.defaultParallelism
    )
    # Task i featurizes group i. The groups are broadcast, and the tasks run over a range of task ids.
    groups = context.broadcast(split_evenly(messages, parts))
    featurize = featurize_partitions(
        settings, groups, batch_id=batch_id, pca_version=version, provenance=provenance
    )
    try:
        tasks = context.parallelize(range(parts), parts).mapPartitions(featurize)
        return tasks.treeReduce(combine_outcomes, depth=tree_depth(parts)), parts
    finally:
        groups.destroy()


def projection_pass(
    spark: SparkSession,
    settings: Settings,
    parts: Sequence[int],
    model_npz: bytes,
    classifier_npz: bytes | None,
    *,
    batch_id: str,
    version: int,
    provenance: dict[str, str],
) -> pd.DataFrame:
    """A task per features part file; (sha256, label, projection, distance to the new classifier's nearest label)
    per image."""
    if not parts:
        return pd.DataFrame({"sha256": [], "label": [], "projection": [], "distance": []})
    project_parts = project_partitions(
        settings,
        model_npz,
        parts=parts,
        batch_id=batch_id,
        pca_version=version,
        provenance=provenance,
        classifier_npz=classifier_npz,
    )
    tasks = spark.sparkContext.parallelize(range(len(parts)), len(parts))
    return pd.concat(tasks.mapPartitions(project_parts).collect(), ignore_index=True)
