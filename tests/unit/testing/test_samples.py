"""The sample generators: deterministic, what they claim to be, and agreeing with the validator."""

from __future__ import annotations

import io
from collections import Counter

import pytest
from PIL import Image, ImageStat

from pomona.testing.samples import SYNTHETIC_LABELS, bad_uploads, fruit_image, hostile_cases, large_jpeg
from pomona.validation.checks import Limits, validate_image


@pytest.mark.parametrize("fmt", [pytest.param(fmt, id=fmt.lower()) for fmt in ("JPEG", "PNG", "WEBP")])
def test_fruit_image_is_deterministic_and_of_the_requested_kind(fmt: str) -> None:
    # WHEN
    data = fruit_image("Pear", 3, size=64, fmt=fmt)

    # THEN
    assert data == fruit_image("Pear", 3, size=64, fmt=fmt)
    assert data != fruit_image("Pear", 4, size=64, fmt=fmt)
    with Image.open(io.BytesIO(data)) as image:
        assert (image.format, image.size, image.mode) == (fmt, (64, 64), "RGB")


def test_each_label_has_its_own_colour_on_a_white_background() -> None:
    # GIVEN the mean colour of the middle of each label's first image, and of its corners
    centres, corners = {}, []
    for label in SYNTHETIC_LABELS:
        with Image.open(io.BytesIO(fruit_image(label, 0))) as image:
            centres[label] = tuple(round(c) for c in ImageStat.Stat(image.crop((35, 35, 65, 65))).mean)
            corners.append(ImageStat.Stat(image.crop((0, 0, 8, 8))).mean)

    # THEN
    assert len(set(centres.values())) == len(SYNTHETIC_LABELS)
    assert all(min(corner) > 200 for corner in corners)


def test_hostile_case_ids_are_unique() -> None:
    ids = Counter(case.id for case in hostile_cases())
    assert [case_id for case_id, n in ids.items() if n > 1] == []


def test_bad_uploads_get_the_reason_they_claim() -> None:
    uploads = bad_uploads()
    got = {name: validate_image(data, limits=Limits(), filename=name).reason for name, data, _ in uploads}
    assert got == {name: reason for name, _, reason in uploads}
    assert len(uploads) >= 6


def test_large_jpeg_is_a_12_megapixel_photo() -> None:
    data = large_jpeg()
    with Image.open(io.BytesIO(data)) as image:
        assert (image.format, image.size, image.mode) == ("JPEG", (4000, 3000), "RGB")
    assert len(data) > 1_000_000  # noise makes it photo-sized, not a flat gradient
