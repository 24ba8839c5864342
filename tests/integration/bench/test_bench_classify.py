"""`pomona bench classify` measures the serving core in a fresh process and reports every figure it promises."""

from __future__ import annotations

import os
from pathlib import Path

from pomona.bench.classify import run


def test_bench_classify_reports_latency_cold_start_and_memory_of_a_served_model(model_cache: Path) -> None:
    result = run(model=None, weights="random", cache_dir=model_cache, repeats=14)

    for key in (
        "small_p50_ms",
        "small_p99_ms",
        "large_p50_ms",
        "large_p99_ms",
        "cold_start_s",
        "peak_rss_mb",
    ):
        assert isinstance(result[key], float), key
        assert result[key] > 0, key
    assert result["small_p50_ms"] <= result["small_p99_ms"]
    assert result["large_p50_ms"] <= result["large_p99_ms"]
    assert result["model_version"] == "v1-bench"
    assert (result["backend"], result["threads"]) == ("litert", os.cpu_count())
