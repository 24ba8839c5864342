"""The `.npz` files models and statistics are stored in: uncompressed, and read without unpickling."""

from __future__ import annotations

import io
import zipfile
from typing import Any

import numpy as np
import numpy.typing as npt


def to_npz(**arrays: npt.ArrayLike) -> bytes:
    """The arrays as an uncompressed `.npz` file: float64 statistics barely compress, and inflating costs."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def from_npz(
    data: bytes, names: tuple[str, ...], *, what: str, error: type[Exception]
) -> dict[str, npt.NDArray[Any]]:
    """The arrays of a `.npz` file (never unpickled), checked to hold at least `names`; `error` otherwise."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as err:  # ValueError: refused to unpickle
        raise error(f"expected a {what} .npz file, got {len(data)} bytes that are not one") from err
    if not set(names) <= set(arrays):
        raise error(f"expected arrays {sorted(names)}, got {sorted(arrays)}")
    return arrays


def frozen(values: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """A read-only float64 copy, so a frozen dataclass stays frozen."""
    array = np.array(values, dtype=np.float64)
    array.flags.writeable = False
    return array
