"""The lineage check: a run's model against the committed version's, compared as typed values."""

from __future__ import annotations

import pytest

from pomona.core.outputs import NOTHING_COMMITTED, Lineage, VersionMetadata
from pomona.featurize.lineage import LineageError, check_lineage

OURS = Lineage(weights_id="random", backend="litert", precision="f32")


def _committed(lineage: Lineage) -> VersionMetadata:
    return VersionMetadata(
        version=1,
        batch_id="b1",
        parent=NOTHING_COMMITTED,
        lineage=lineage,
        weights="random",
        n_seen=6,
        k=1,
        explained_variance_ratio=(1.0,),
        created_at="2026-12-01T00:00:00.000Z",
        manifest={},
    )


def test_a_new_lineage_or_the_same_model_passes() -> None:
    check_lineage(None, OURS)
    check_lineage(_committed(Lineage(weights_id="random", backend="litert", precision="f32")), OURS)


def test_another_precision_is_refused_saying_which_model_the_pca_holds() -> None:
    committed = _committed(Lineage(weights_id="random", backend="litert", precision="bf16"))
    with pytest.raises(
        LineageError,
        match=r"expected features from the model of PCA v1 \(weights random, backend litert, precision bf16\), "
        r"got weights random, backend litert, precision f32: one PCA never mixes features of two models",
    ):
        check_lineage(committed, OURS)
