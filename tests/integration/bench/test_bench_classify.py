"""`pomona bench classify` measures the serving core in a fresh process and the local Function URL as the app
meets it, and reports every figure it promises, each door's large-photo time beside its floor."""

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
        "eighth_scale_decode_p50_ms",
        "large_decode_share",
        "url_small_p50_ms",
        "url_large_p99_ms",
    ):
        assert isinstance(result[key], float), key
        assert result[key] > 0, key
    for door in ("", "url_"):
        assert result[f"{door}small_p50_ms"] <= result[f"{door}small_p99_ms"]
        assert result[f"{door}large_p50_ms"] <= result[f"{door}large_p99_ms"]
        for q in ("p50", "p99"):
            # the floor: the 1/8-scale decode plus the small photo's answer through the same door
            floor = result[f"{door}eighth_scale_decode_{q}_ms"] + result[f"{door}small_{q}_ms"]
            assert result[f"{door}large_{q}_floor_ms"] == round(floor, 2)
            ratio = result[f"{door}large_{q}_ms"] / floor
            assert abs(result[f"{door}large_{q}_over_floor"] - ratio) < 1e-3
    assert result["model_version"] == "v1-bench"
    assert (result["backend"], result["threads"]) == ("litert", os.cpu_count())
