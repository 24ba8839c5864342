"""MobileNetV2's input from image bytes: the shared decode (`pomona.imaging`), then scaled. Pure: bytes in,
arrays out."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from PIL import Image

from pomona.imaging.decode import IMAGE_SIZE, DecodeError, DecodeLimits, decode_image

__all__ = [
    "IMAGE_SIZE",
    "INPUT_SHAPE",
    "DecodeError",
    "DecodeLimits",
    "model_input",
    "preprocess_batch",
    "preprocess_image",
]

INPUT_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 3)
F32 = npt.NDArray[np.float32]
_ANY = DecodeLimits()  # anything Pillow opens, within its own bomb limit


def preprocess_image(data: bytes, limits: DecodeLimits = _ANY) -> F32:
    """Decode `data` into MobileNetV2's input: float32 (224, 224, 3) in [-1, 1]; `DecodeError` (naming what raised)
    if undecodable or outside `limits`."""
    return model_input(decode_image(data, limits).picture)


def model_input(picture: Image.Image) -> F32:
    """A decoded 224×224 RGB picture as MobileNetV2's input: float32 in [-1, 1]."""
    x = np.asarray(picture, dtype=np.float32)
    x /= 127.5  # MobileNetV2's preprocess_input ("tf" mode): [0, 255] -> [-1, 1]
    x -= 1.0
    return x


def preprocess_batch(
    images: Sequence[bytes], limits: DecodeLimits = _ANY
) -> tuple[F32, list[DecodeError | None]]:
    """The decodable images as one (k, 224, 224, 3) batch, in input order, and one error per input (None if OK).

    Errors are returned, not raised, so the job turns a bad image into its own outcome instead of a failed task."""
    arrays: list[F32] = []
    errors: list[DecodeError | None] = []
    for data in images:
        try:
            arrays.append(preprocess_image(data, limits))
            errors.append(None)
        except DecodeError as err:
            errors.append(err)
    batch = np.stack(arrays) if arrays else np.empty((0, *INPUT_SHAPE), dtype=np.float32)
    return batch, errors
