"""The refit benchmark reports a time per history size and the state's fixed size."""

from __future__ import annotations

from pomona.bench.refit import bench_refit


def test_bench_refit_reports_each_history() -> None:
    timings = bench_refit(d=16, n_seen=(100, 1000), batch_rows=10)

    assert set(timings) == {"refit_s_at_100", "refit_s_at_1000", "state_bytes"}
    assert timings["state_bytes"] == (16 + 16 * 16) * 8
    assert all(seconds >= 0 for seconds in timings.values())
