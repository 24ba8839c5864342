"""`pomona bench validate` times a 12 MP JPEG's validation beside its floor, the same photo's 1/8-scale decode."""

from __future__ import annotations

from pomona.bench.validate import run


def test_bench_validate_reports_the_large_photo_beside_its_floor() -> None:
    result = run(repeats=40)

    assert 0 < result["large_floor_p50_ms"] <= result["large_floor_p99_ms"]
    assert 0 < result["large_p50_ms"] <= result["large_p99_ms"]
    assert result["large_p99_over_floor"] == result["large_p99_ms"] / result["large_floor_p99_ms"]
    assert result["cases"] > 0
