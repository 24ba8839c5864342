"""`pomona bench validate`: how long `validate_image` takes per upload, and the peak memory of judging them.

Times are per call on one core, after a warm-up call. Peak RSS is measured in fresh child processes (this
module run with `python -m`), so the parent's own imports and caches don't count; each child also reports its
peak before validating anything: what Python, Pillow and the generated inputs alone cost. The inputs: the hostile
matrix, a 12 MP JPEG, and `FUZZ_COUNT` random mutations of a 640×640 photo in each of JPEG, PNG and WebP.
"""

from __future__ import annotations

import json
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import PIL

from pomona.bench.floors import eighth_scale_decode, p50, p99, timed_ms, timed_side_by_side_ms
from pomona.testing.samples import FUZZ_FORMATS, fruit_image, hostile_cases, large_jpeg, random_mutations
from pomona.validation.checks import Limits, validate_image

_KIB = 1024
FUZZ_COUNT = 300  # per format


def run(*, repeats: int = 200) -> dict[str, float | str]:
    """Time small (100×100) and large (4000×3000) JPEGs, the large one's floor (its 1/8-scale decode) in
    between, then measure peak RSS in child processes."""
    limits = Limits()
    photo = large_jpeg()
    large_repeats = max(5, repeats * 3 // 20)  # 30 for the default 200
    small_ms = _time_ms(fruit_image("Apple Red", 0), limits, repeats)
    large_ms, floor_ms = timed_side_by_side_ms(
        lambda: validate_image(photo, limits=limits), lambda: eighth_scale_decode(photo), large_repeats
    )
    with tempfile.TemporaryDirectory() as tmp:
        # The child reads the large JPEG from a file: generating it costs more memory than validating it.
        path = Path(tmp) / "large.jpg"
        path.write_bytes(large_jpeg())
        hostile, large = measure_peak_rss("hostile"), measure_peak_rss("large", str(path))
    fuzz = measure_peak_rss("fuzz")
    return {
        "small_p50_ms": p50(small_ms),
        "small_p99_ms": p99(small_ms),
        "large_p50_ms": p50(large_ms),
        "large_p99_ms": p99(large_ms),
        "large_floor_p50_ms": p50(floor_ms),
        "large_floor_p99_ms": p99(floor_ms),
        "large_p99_over_floor": p99(large_ms) / p99(floor_ms),
        "hostile_peak_rss_mb": hostile["peak_mb"],
        "hostile_baseline_rss_mb": hostile["baseline_mb"],
        "large_peak_rss_mb": large["peak_mb"],
        "large_baseline_rss_mb": large["baseline_mb"],
        "fuzz_peak_rss_mb": fuzz["peak_mb"],
        "fuzz_slowest_ms": fuzz["slowest_ms"],
        "cases": hostile["cases"],
        "fuzz_cases": fuzz["cases"],
        "python": platform.python_version(),
        "pillow": PIL.__version__,
    }


def _time_ms(data: bytes, limits: Limits, repeats: int) -> list[float]:
    verdict = validate_image(data, limits=limits)
    if not verdict.accepted:
        raise RuntimeError(f"expected the benchmark image to be accepted, got {verdict.detail!r}")
    return timed_ms(lambda: validate_image(data, limits=limits), repeats)


def measure_peak_rss(*args: str) -> dict[str, float]:
    """Validate one input set (`hostile`, `fuzz`, or `large PATH`) in a fresh process: its peak RSS, in MB."""
    command = [sys.executable, "-m", "pomona.bench.validate", *args]
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=600)
    result: dict[str, float] = json.loads(done.stdout)
    return result


def _peak_mb() -> float:
    """This process's peak resident memory. Linux's ru_maxrss (SELF, or CHILDREN in the parent) carries the
    parent's peak over fork and exec, so it would report the parent's memory; VmHWM starts afresh at exec."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / _KIB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / _KIB  # KiB on Linux, bytes on macOS


def _measure_in_child(which: str, path: str | None = None) -> dict[str, float]:
    """Note the peak so far, validate every input, note the peak again and the slowest input."""
    baseline = _peak_mb()
    limits = Limits()
    slowest, cases = 0.0, 0
    for data, declared_type, filename in _inputs(which, path):
        start = time.perf_counter()
        validate_image(data, limits=limits, declared_type=declared_type, filename=filename)
        slowest, cases = max(slowest, time.perf_counter() - start), cases + 1
    return {"baseline_mb": baseline, "peak_mb": _peak_mb(), "cases": cases, "slowest_ms": slowest * 1000}


def _inputs(which: str, path: str | None) -> Iterator[tuple[bytes, str | None, str | None]]:
    """(bytes, declared type, file name) of each input, made one at a time: only the validation should count."""
    if which == "hostile":
        yield from ((case.data, case.declared_type, case.filename) for case in hostile_cases())
    elif which == "fuzz":
        rng = random.Random(0)
        for fmt in FUZZ_FORMATS:
            seed = fruit_image("Apple Red", 0, size=640, fmt=fmt)
            yield from ((data, None, None) for data in random_mutations(seed, FUZZ_COUNT, rng=rng))
    else:
        yield Path(str(path)).read_bytes(), None, "large.jpg"


if __name__ == "__main__":  # the child process of `measure_peak_rss`; its stdout is the parent's input
    print(json.dumps(_measure_in_child(*sys.argv[1:])))
