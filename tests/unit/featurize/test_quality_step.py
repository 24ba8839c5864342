"""The job's quality step is best-effort: what it cannot measure it records, and the batch still commits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pomona.featurize.driver import probe_quality


def _projected(rows: list[np.ndarray], labels: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {"sha256": [f"{i:064x}" for i in range(len(rows))], "label": labels, "projection": rows}
    )


def test_a_probe_that_fails_is_recorded_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN projections the probe cannot stack (one row of another width)
    rows = [np.zeros(3, np.float32)] * 5 + [np.zeros(2, np.float32)]

    # WHEN the step runs
    quality = probe_quality(_projected(rows, ["a", "b"] * 3), gain=1.0, loss=5.0)

    # THEN the manifest gets why, and the log the traceback
    assert quality["skipped"].startswith("the quality probe failed: ValueError: ")
    assert "Quality probe failed" in caplog.text


def test_too_few_images_are_skipped_with_the_count() -> None:
    quality = probe_quality(_projected([np.zeros(3, np.float32)] * 3, ["a"] * 3), gain=1.0, loss=5.0)

    assert quality == {"skipped": "expected at least 4 featurized images, got 3"}


def test_a_measurable_batch_gets_the_probe() -> None:
    rng = np.random.default_rng(0)
    centres = {"a": np.zeros(4), "b": np.full(4, 5.0)}
    labels = ["a", "b"] * 20
    rows = [(centres[label] + rng.standard_normal(4)).astype(np.float32) for label in labels]

    quality = probe_quality(_projected(rows, labels), gain=1.0, loss=5.0)

    assert quality["skipped"] is None
    assert quality["accuracy"] > 0.9
