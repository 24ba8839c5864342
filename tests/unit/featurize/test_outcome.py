"""What a featurize task reports of its part: the PCA state of all its rows, made from the training rows' statistics
and the held-out rows' state, is the state of all the rows; and the driver's view of its failed images."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from pomona.core.contract import ImageMessage, Reason
from pomona.featurize.outcome import ImageFailure, Settled, part_statistics
from pomona.ml.holdout import is_holdout
from pomona.ml.pca import PcaState

D = 16


def _image(n: int) -> ImageMessage:
    sha = hashlib.sha256(str(n).encode()).hexdigest()
    return ImageMessage(
        bucket="pomona-images",
        key=f"uploads/fig/{n}.jpg",
        version_id="v1",
        etag='"abc"',
        sha256=sha,
        size=100,
        format="JPEG",
        width=100,
        height=100,
        mode="RGB",
        label=("fig", "pear", "apple")[n % 3],
        uploaded_at="2026-11-25T05:40:00.000Z",
        validated_at="2026-11-25T05:40:00.120Z",
    )


def _images(count: int, *, held: bool | None) -> list[ImageMessage]:
    """`count` images: held out of training (True), all trained on (False), or as their sha256 falls (None)."""
    candidates = (_image(n) for n in range(100_000))
    return [image for image in candidates if held is None or is_holdout(image.sha256) == held][:count]


@pytest.mark.parametrize(
    "images",
    [
        pytest.param(_images(200, held=None), id="some-held"),
        pytest.param(_images(30, held=True), id="all-held"),
        pytest.param(_images(30, held=False), id="none-held"),
        pytest.param(_images(1, held=True), id="one-held"),
    ],
)
def test_the_parts_pca_state_is_that_of_all_its_rows(images: list[ImageMessage]) -> None:
    # GIVEN a part's featurized images, some held out of training or none or all
    rows = (np.random.default_rng(7).standard_normal((len(images), D)) * 3 + 5).astype(np.float32)

    # WHEN its statistics are made
    state, training, holdout = part_statistics(images, rows)

    # THEN its PCA state is that of every row, to rounding, and the rows are split between training and holdout
    expected = PcaState.from_rows(rows)
    assert state.n == expected.n == len(images)
    np.testing.assert_allclose(state.mean, expected.mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(state.scatter, expected.scatter, rtol=1e-10, atol=1e-9)
    held = [image.sha256 for image in images if is_holdout(image.sha256)]
    assert list(holdout.sha256) == held
    assert training.total.n == len(images) - len(held)


def test_a_failure_deferred_by_the_quarantine_keeps_its_image_and_detail() -> None:
    # GIVEN a failed image, and one deferred by the executors
    gone = ImageFailure(_image(1), Reason.OBJECT_GONE, "found none")
    denied = ImageFailure(_image(2), None, "GET failed", "AccessDenied")

    # WHEN S3 refuses the first one's quarantine
    settled = Settled(quarantined=[], deferred=[denied, gone.defer("SlowDown")])

    # THEN both come back, counted by S3's error code
    assert [f.deferred for f in (gone, denied)] == [False, True]
    assert settled.waiting() == {gone.sha256, denied.sha256}
    assert settled.deferred_by_code() == {"AccessDenied": 1, "SlowDown": 1}
    assert settled.deferred[1].detail == "found none"
