"""Preprocessing: bytes in, MobileNetV2 input out. Fast, and never imports TensorFlow."""

from __future__ import annotations

import subprocess
import sys
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from pomona.ml.preprocess import IMAGE_SIZE, DecodeError, DecodeLimits, preprocess_batch, preprocess_image

RED = (255, 0, 0)
WHITE_OUT = np.array([1.0, 1.0, 1.0], dtype=np.float32)  # white after x / 127.5 - 1
RED_OUT = np.array([1.0, -1.0, -1.0], dtype=np.float32)


def encode(img: Image.Image, fmt: str, **save_args: object) -> bytes:
    out = BytesIO()
    img.save(out, fmt, **save_args)
    return out.getvalue()


def sample_images(folder: Path, count: int) -> list[Path]:
    return sorted(folder.glob("*/*.jpg"))[:count]


def image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size


def test_real_jpeg_becomes_float32_224_in_unit_range(sample_dir: Path) -> None:
    # GIVEN a real 100x100 fruit photo
    data = sample_images(sample_dir, 1)[0].read_bytes()

    # WHEN it is preprocessed
    x = preprocess_image(data)

    # THEN it is MobileNetV2's input: float32 (224, 224, 3), scaled to [-1, 1] and not constant
    assert x.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert x.dtype == np.float32
    assert x.min() >= -1.0
    assert x.max() <= 1.0
    assert x.std() > 0.1


@pytest.mark.parametrize(
    ("img", "fmt", "expected"),
    [
        pytest.param(Image.new("CMYK", (64, 48), (0, 255, 255, 0)), "JPEG", RED_OUT, id="cmyk-jpeg"),
        pytest.param(Image.new("L", (64, 48), 255), "PNG", WHITE_OUT, id="greyscale-png"),
        pytest.param(Image.new("L", (64, 48), 255), "JPEG", WHITE_OUT, id="greyscale-jpeg"),
        pytest.param(
            Image.new("RGBA", (64, 48), (0, 0, 0, 0)), "PNG", WHITE_OUT, id="transparent-rgba-on-white"
        ),
        pytest.param(Image.new("RGBA", (64, 48), (*RED, 255)), "WEBP", RED_OUT, id="opaque-rgba-webp"),
        pytest.param(Image.new("RGB", (64, 48), RED).convert("P"), "PNG", RED_OUT, id="palette"),
        pytest.param(
            Image.fromarray(np.full((48, 64), 65535, dtype=np.uint16)),
            "PNG",
            WHITE_OUT,
            id="16-bit-greyscale",
        ),
    ],
)
def test_every_mode_becomes_rgb(img: Image.Image, fmt: str, expected: np.ndarray) -> None:
    x = preprocess_image(encode(img, fmt))

    assert x.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    np.testing.assert_allclose(x.mean(axis=(0, 1)), expected, atol=0.03)


def test_half_transparent_red_is_composited_on_white() -> None:
    img = Image.new("RGBA", (64, 48), (*RED, 128))

    x = preprocess_image(encode(img, "PNG"))

    # 50% red over white: R stays 255, G and B land half way (~127), i.e. ~0 after scaling
    np.testing.assert_allclose(x[0, 0], [1.0, 0.0, 0.0], atol=0.02)


def test_palette_with_transparent_index_is_composited_on_white() -> None:
    img = Image.new("P", (64, 48), 0)
    img.putpalette([0, 0, 0, *RED])
    img.paste(1, (0, 0, 32, 48))  # left half red, right half index 0 = transparent black
    data = encode(img, "PNG", transparency=0)

    x = preprocess_image(data)

    np.testing.assert_allclose(x[:, :100].mean(axis=(0, 1)), RED_OUT, atol=0.02)
    np.testing.assert_allclose(x[:, 124:].mean(axis=(0, 1)), WHITE_OUT, atol=0.02)


def test_exif_orientation_6_is_rotated_upright() -> None:
    # GIVEN a landscape image with a red block at its top-left, stored with EXIF orientation 6
    # ("rotate 90° clockwise to display"): upright, the block is at the top-right of a portrait image
    img = Image.new("RGB", (300, 200), (0, 0, 255))
    img.paste(RED, (0, 0, 100, 80))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(img, "JPEG", exif=exif, quality=95)
    upright = ImageOps.exif_transpose(Image.open(BytesIO(data)))
    assert upright.size == (200, 300)

    # WHEN it is preprocessed
    x = preprocess_image(data)

    # THEN the red block is at the top-right, and the top-left is blue
    half = IMAGE_SIZE // 2
    np.testing.assert_allclose(x[:40, -40:].mean(axis=(0, 1)), RED_OUT, atol=0.05)
    np.testing.assert_allclose(x[:40, :40].mean(axis=(0, 1)), [-1.0, -1.0, 1.0], atol=0.05)
    assert x[half:, :, 0].max() < 0  # no red in the bottom half


def test_jpeg_draft_decode_matches_a_full_decode(originals_dir: Path) -> None:
    # GIVEN real photos at least twice 224 px on both sides, where draft() decodes at half scale or less
    large = [p for p in sample_images(originals_dir, 120) if min(image_size(p)) >= 2 * IMAGE_SIZE]
    assert len(large) >= 10, f"expected at least 10 images >= 448 px per side, got {len(large)}"

    for path in large:
        data = path.read_bytes()
        # WHEN preprocessed with draft() and with a full-resolution decode
        x = preprocess_image(data)
        with Image.open(BytesIO(data)) as img:
            full = (
                ImageOps.exif_transpose(img)
                .convert("RGB")
                .resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
            )
        reference = np.asarray(full, dtype=np.float32) / 127.5 - 1.0

        # THEN the two differ by about one grey level on average (a full [-1, 1] range is 255 levels)
        mean_abs_diff = float(np.abs(x - reference).mean())
        assert mean_abs_diff < 0.02, f"{path.name}: mean abs diff {mean_abs_diff:.4f}"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not an image at all", id="text"),
        pytest.param(b"\xff\xd8\xff\xe0" + bytes(200), id="jpeg-magic-then-zeros"),
        pytest.param(encode(Image.new("RGB", (300, 300), RED), "JPEG")[:400], id="truncated-jpeg"),
        pytest.param(encode(Image.new("RGB", (300, 300), RED), "PNG")[:100], id="truncated-png"),
    ],
)
def test_undecodable_bytes_raise_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError, match=f"expected an image Pillow can decode, got {len(data)} bytes"):
        preprocess_image(data)


def test_decode_error_is_also_a_value_error() -> None:
    with pytest.raises(ValueError, match="expected an image"):
        preprocess_image(b"nope")


def test_preprocess_batch_keeps_order_and_error_slots(sample_dir: Path) -> None:
    # GIVEN two good images around a bad one
    first, second = (p.read_bytes() for p in sample_images(sample_dir, 2))

    # WHEN the batch is preprocessed
    batch, errors = preprocess_batch([first, b"garbage", second])

    # THEN the good ones come out in order and the bad one leaves an error in its slot
    assert batch.shape == (2, IMAGE_SIZE, IMAGE_SIZE, 3)
    np.testing.assert_array_equal(batch[0], preprocess_image(first))
    np.testing.assert_array_equal(batch[1], preprocess_image(second))
    assert errors[0] is None
    assert errors[2] is None
    assert errors[1] is not None
    assert "expected an image Pillow can decode, got 7 bytes" in str(errors[1])


def test_preprocess_batch_of_only_bad_images_is_an_empty_batch() -> None:
    batch, errors = preprocess_batch([b"", b"x"])

    assert batch.shape == (0, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert batch.dtype == np.float32
    assert all(error is not None for error in errors)


def test_importing_the_featurizer_module_does_not_import_tensorflow() -> None:
    code = "import sys, pomona.ml.featurizer; print('tensorflow' in sys.modules)"

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert result.stdout.strip() == "False"


def test_decode_limits_allow_only_the_named_formats() -> None:
    # GIVEN a valid GIF, and limits naming JPEG and PNG alone
    gif = encode(Image.new("RGB", (64, 64), RED), "GIF")
    limits = DecodeLimits(formats=("JPEG", "PNG"))

    # WHEN / THEN the GIF decoder is never asked, and the error says so; without limits it decodes
    with pytest.raises(DecodeError, match="expected an image Pillow can decode"):
        preprocess_image(gif, limits)
    assert preprocess_image(gif).shape == (IMAGE_SIZE, IMAGE_SIZE, 3)


def test_decode_limits_refuse_more_pixels_from_the_header() -> None:
    png = encode(Image.new("RGB", (300, 200), RED), "PNG")

    with pytest.raises(DecodeError, match="expected at most 50000 pixels, got 300×200"):
        preprocess_image(png, DecodeLimits(max_pixels=50_000))
    batch, errors = preprocess_batch([png], DecodeLimits(max_pixels=60_000))
    assert (batch.shape[0], errors) == (1, [None])
