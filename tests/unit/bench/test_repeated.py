"""`bench featurize --repeat N` gives the job N distinct photos per sample photo: the job drops images by sha256."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from PIL import Image

from pomona.bench.featurize import repeated
from pomona.testing.samples import SYNTHETIC_LABELS, fruit_image


def _digests(folder: Path) -> list[str]:
    return [hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.rglob("*.jpg"))]


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_each_flip_and_rotation_is_a_new_sha256(tmp_path: Path) -> None:
    for label in SYNTHETIC_LABELS[:3]:
        (tmp_path / "sample" / label).mkdir(parents=True)
        for i in range(4):
            (tmp_path / "sample" / label / f"{i}.jpg").write_bytes(fruit_image(label, i))

    out = repeated(tmp_path / "sample", 8, into=tmp_path / "repeated")

    digests = _digests(out)
    assert len(digests) == 3 * 4 * 8
    assert len(set(digests)) == len(digests)
    # the originals are copied as they are, each label folder kept
    assert (out / "Banana" / "0.jpg").read_bytes() == (tmp_path / "sample" / "Banana" / "0.jpg").read_bytes()


@pytest.mark.parametrize(
    "image",
    [
        pytest.param(Image.new("RGB", (64, 64), (200, 40, 40)), id="uniform"),
        # a disc centred on a square: every flip and rotation gives the same pixels
        pytest.param(Image.radial_gradient("L").convert("RGB"), id="radially-symmetric"),
    ],
)
def test_a_symmetric_photo_still_gives_distinct_variants(tmp_path: Path, image: Image.Image) -> None:
    (tmp_path / "sample" / "Plum").mkdir(parents=True)
    (tmp_path / "sample" / "Plum" / "0.jpg").write_bytes(_jpeg(image))
    (tmp_path / "sample" / "Plum" / "1.jpg").write_bytes(_jpeg(image.point(lambda value: 255 - value)))

    out = repeated(tmp_path / "sample", 8, into=tmp_path / "repeated")

    digests = _digests(out)
    assert len(digests) == 2 * 8
    assert len(set(digests)) == len(digests)
    # each variant is still a decodable photo of the same size
    for path in out.rglob("*-v*.jpg"):
        with Image.open(path) as variant:
            assert variant.size == image.size


def test_more_variants_than_transforms_is_refused(tmp_path: Path) -> None:
    (tmp_path / "sample" / "Lime").mkdir(parents=True)

    with pytest.raises(ValueError, match="expected --repeat at most 8, got 9"):
        repeated(tmp_path / "sample", 9, into=tmp_path / "repeated")
