"""The featurizer's ceiling without Spark or S3: decode, preprocess and model in a plain loop.

Run one backend per process, since peak RSS is the process's own:
`python -m pomona.bench.bare --backend openvino --precision bf16 --weights <file.weights.h5> <image folder>...`
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pomona.bench.cpu import peak_rss_mb
from pomona.core.settings import PRECISIONS
from pomona.ml.backends import BACKENDS, get_backend
from pomona.ml.featurizer import make_featurizer
from pomona.ml.preprocess import preprocess_batch


def run(
    images: Sequence[Path],
    *,
    weights: str,
    backend: str,
    precision: str = "f32",
    batch_size: int | None = None,
    num_threads: int = 2,
    cache_dir: Path | None = None,
    features_out: Path | None = None,
) -> dict[str, float | int | str | bool]:
    """Throughput in images per second after one warm-up batch, and the process's peak RSS. The batch size
    defaults to the one the job uses for `backend`. With `features_out`, the features (in input order, undecodable
    images left out) are saved there as a `.npy` file, for the bench's agreement figures."""
    batch_size = batch_size or get_backend(backend).best_batch
    featurizer = make_featurizer(
        weights,
        backend=backend,
        precision=precision,
        cache_dir=cache_dir,
        batch_size=batch_size,
        num_threads=num_threads,
    )
    blobs = [path.read_bytes() for path in images]  # file I/O stays out of the timings, as S3 would
    batches = [blobs[i : i + batch_size] for i in range(0, len(blobs), batch_size)]
    featurizer(preprocess_batch(batches[0])[0])  # warm-up: first-call allocation and tracing

    decode_s = model_s = 0.0
    features = []  # kept only for `features_out`: otherwise they would count in the peak RSS
    cpu_before = _cpu_s()
    for chunk in batches:
        started = time.perf_counter()
        batch, _ = preprocess_batch(chunk)
        decoded = time.perf_counter()
        computed = featurizer(batch)
        if features_out is not None:
            features.append(computed)
        decode_s += decoded - started
        model_s += time.perf_counter() - decoded

    cpu_s = _cpu_s() - cpu_before
    if features_out is not None:
        np.save(features_out, np.concatenate(features))
    count = len(blobs)
    return {
        "backend": backend,
        "precision": precision,
        "images": count,
        "bare_img_s": round(count / (decode_s + model_s), 1),
        "decode_img_s": round(count / decode_s, 1),
        "model_img_s": round(count / model_s, 1),
        "cpu_ms_per_image": round(cpu_s * 1000 / count, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "tensorflow_imported": "tensorflow" in sys.modules,
    }


def _cpu_s() -> float:
    """This process's user + system CPU seconds, every thread included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folders", nargs="+", type=Path, help="folders searched recursively for *.jpg")
    parser.add_argument("--weights", required=True, help="a POMONA_WEIGHTS value")
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="litert")
    parser.add_argument("--precision", choices=PRECISIONS, default="f32")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the job's for the backend")
    parser.add_argument("--num-threads", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=None)
    options = vars(parser.parse_args(argv))  # every option but the folders is one of `run`'s keywords
    images = sorted(path for folder in options.pop("folders") for path in folder.rglob("*.jpg"))
    print(json.dumps(run(images, **options)))


if __name__ == "__main__":
    main()
