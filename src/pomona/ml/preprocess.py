"""MobileNetV2's input from image bytes: decode, orient, flatten transparency, resize, scale. Pure: bytes in,
arrays out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps

from pomona.core.errors import PomonaError

IMAGE_SIZE = 224
INPUT_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 3)
F32 = npt.NDArray[np.float32]
_WHITE = (255, 255, 255, 255)
# What Pillow raises on bytes it cannot decode: unidentified, truncated, corrupt or oversized images.
_PILLOW_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


class DecodeError(PomonaError, ValueError):
    """The bytes are not an image Pillow can decode."""


@dataclass(frozen=True, kw_only=True)
class DecodeLimits:
    """What a decoder may be asked to open: these formats' plugins alone, at most this many pixels (from the
    header, before any pixel is decoded). None: anything Pillow opens, within Pillow's own bomb limit."""

    formats: tuple[str, ...] | None = None
    max_pixels: int | None = None


def preprocess_image(data: bytes, limits: DecodeLimits = DecodeLimits()) -> F32:
    """Decode `data` into MobileNetV2's input: float32 (224, 224, 3) in [-1, 1]; `DecodeError` if undecodable
    or outside `limits`.

    Resizing stretches to 224×224 without cropping, as the notebook's `load_img(target_size=(224, 224))` did,
    but with bilinear instead of Keras' default nearest: Pillow's bilinear widens its kernel when shrinking
    (area-aware, no aliasing), so features do not depend on pixel phase or on the JPEG decode scale below.
    """
    try:
        with Image.open(BytesIO(data), formats=limits.formats) as img:
            if limits.max_pixels is not None and img.width * img.height > limits.max_pixels:
                raise DecodeError(
                    f"expected at most {limits.max_pixels} pixels, got {img.width}×{img.height}"
                )
            if img.format == "JPEG":
                # Let libjpeg decode at 1/2, 1/4 or 1/8 scale, never below 224 px on either side.
                img.draft("RGB", (IMAGE_SIZE, IMAGE_SIZE))
            img.load()
            rgb = _to_rgb(ImageOps.exif_transpose(img))
            # reducing_gap=3: a cheap integer reduce() first for very large images, indistinguishable from
            # plain bilinear (Pillow's docs); JPEGs already arrive small thanks to draft().
            small = rgb.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR, reducing_gap=3.0)
    except _PILLOW_ERRORS as err:
        raise DecodeError(f"expected an image Pillow can decode, got {len(data)} bytes: {err}") from err
    x = np.asarray(small, dtype=np.float32)
    x /= 127.5  # MobileNetV2's preprocess_input ("tf" mode): [0, 255] -> [-1, 1]
    x -= 1.0
    return x


def preprocess_batch(
    images: Sequence[bytes], limits: DecodeLimits = DecodeLimits()
) -> tuple[F32, list[str | None]]:
    """The decodable images as one (k, 224, 224, 3) batch, in input order, and one error per input (None if OK).

    Errors are returned, not raised, so the job turns a bad image into an error row instead of a failed stage.
    """
    arrays: list[F32] = []
    errors: list[str | None] = []
    for data in images:
        try:
            arrays.append(preprocess_image(data, limits))
            errors.append(None)
        except DecodeError as err:
            errors.append(str(err))
    batch = np.stack(arrays) if arrays else np.empty((0, *INPUT_SHAPE), dtype=np.float32)
    return batch, errors


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode.startswith("I;16"):  # 16-bit greyscale PNG: keep the high byte, where convert() would clip
        img = Image.fromarray((np.asarray(img) >> 8).astype(np.uint8))
    if img.has_transparency_data:  # RGBA, LA, PA, or a palette/greyscale with a transparent colour
        background = Image.new("RGBA", img.size, _WHITE)
        return Image.alpha_composite(background, img.convert("RGBA")).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")  # CMYK, L, P, YCbCr...
