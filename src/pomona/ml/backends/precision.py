"""What a backend says when asked for a precision it does not run."""

from __future__ import annotations

from pomona.core.errors import SettingsError
from pomona.core.settings import PRECISIONS


def require_known(precision: str) -> None:
    """`SettingsError` unless `precision` is one of POMONA_PRECISION's values."""
    if precision not in PRECISIONS:
        raise SettingsError(f"POMONA_PRECISION: expected one of {list(PRECISIONS)}, got {precision!r}")


def require_f32(backend: str, precision: str) -> None:
    """`SettingsError` unless `precision` is f32: the one precision `backend` runs."""
    require_known(precision)
    if precision != "f32":
        raise SettingsError(
            f"POMONA_PRECISION: expected f32, the one precision backend {backend!r} runs, got {precision!r} "
            "(bf16 runs on POMONA_BACKEND=openvino)"
        )
