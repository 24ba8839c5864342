"""`pomona bench featurize` runs the seed project's pattern unless told `--no-seed`; the ratio it reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pomona.bench import featurize
from pomona.cli.bench import app


@pytest.mark.parametrize(("flags", "seed"), [([], True), (["--no-seed"], False), (["--seed"], True)])
def test_the_seed_flag_reaches_the_benchmark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: list[str], seed: bool
) -> None:
    calls: list[dict[str, Any]] = []

    def fake_run(**kwargs: Any) -> dict[str, Any]:
        calls.append(kwargs)
        return {"job_img_s": 1.0}

    monkeypatch.setattr(featurize, "run", fake_run)

    result = CliRunner().invoke(app, ["featurize", "--images", str(tmp_path), *flags])

    assert result.exit_code == 0, result.output
    assert [call["seed"] for call in calls] == [seed]
    assert result.stdout.strip() == '{"job_img_s": 1.0}'


def test_job_over_seed_is_the_headline_rate_over_the_seeds() -> None:
    assert featurize.job_over_seed({"job_img_s": 175.0}, {"seed_img_s": 30.4}) == 5.76
    # a model this CPU cannot run has no rate to compare
    assert featurize.job_over_seed({"skipped": "this CPU does not run bf16"}, {"seed_img_s": 30.4}) is None
