"""The physical floors the latency benchmarks are held to, measured in the same run as the figures they bound.

A 12 MP JPEG cannot be judged or answered faster than libjpeg decodes it at 1/8 scale (`eighth_scale_decode`): the
DCT scaling skips most of the inverse transform, but entropy decoding still reads every byte, which is also what
catches a truncated file. Hosts differ 2× in speed, so a figure is only meaningful as a ratio to its floor.
"""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable

from PIL import Image


def eighth_scale_decode(data: bytes) -> None:
    """Decode a JPEG with libjpeg's DCT scaling at 1/8 (Pillow's `draft`), and nothing else."""
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (image.width // 8, image.height // 8))
        image.load()


def timed_ms(call: Callable[[], object], repeats: int) -> list[float]:
    """`call`'s wall time per call, in ms, `repeats` times after one warm-up call."""
    call()
    taken = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        taken.append((time.perf_counter() - start) * 1000)
    return taken


def timed_side_by_side_ms(
    call: Callable[[], object], floor: Callable[[], object], repeats: int
) -> tuple[list[float], list[float]]:
    """`timed_ms` of `call` and of its `floor`, in turns: whatever else the host is doing weighs on both alike."""
    call()
    floor()
    taken: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for which, timed in zip(taken, (call, floor), strict=True):
            start = time.perf_counter()
            timed()
            which.append((time.perf_counter() - start) * 1000)
    return taken


def p50(times: list[float]) -> float:
    return statistics.median(times)


def p99(times: list[float]) -> float:
    return statistics.quantiles(times, n=100, method="inclusive")[98]


def percentiles(prefix: str = "", **times: list[float]) -> dict[str, float]:
    """`<prefix><name>_p50_ms` and `…_p99_ms` of each named list of times, rounded to 0.01 ms."""
    return {
        f"{prefix}{name}_{q}_ms": round(percentile(ms), 2)
        for name, ms in times.items()
        for q, percentile in (("p50", p50), ("p99", p99))
    }
