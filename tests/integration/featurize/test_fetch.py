"""An executor's GET of an image: the exact version its message names through obstore, the same outcomes boto3
gave, and boto3 for the keys object_store will not parse."""

from __future__ import annotations

import hashlib
from typing import NamedTuple

import boto3
import pytest

from pomona.core.aws import RETRIES
from pomona.core.contract import Reason
from pomona.core.settings import Settings
from pomona.featurize.fetch import ImageStores, fetch_image
from pomona.featurize.outcome import ImageFailure


class Row(NamedTuple):
    """The fields of an `ImageMessage` the GET reads."""

    sha256: str
    key: str
    version_id: str
    etag: str
    bucket: str


def _put(settings: Settings, key: str, body: bytes) -> Row:
    put = boto3.client("s3").put_object(Bucket=settings.bucket, Key=key, Body=body)
    return Row(hashlib.sha256(body).hexdigest(), key, put["VersionId"], put["ETag"], settings.bucket)


def _fetch(settings: Settings, row: Row) -> tuple[bytes | None, Reason | None]:
    """The bytes fetched, or the reason to quarantine the image."""
    s3 = boto3.client("s3", endpoint_url=settings.endpoint_url, config=RETRIES)
    fetched = fetch_image(ImageStores(settings), s3, row)
    return (None, fetched.reason) if isinstance(fetched, ImageFailure) else (fetched, None)


@pytest.mark.parametrize(
    "key",
    [
        "uploads/Apple Red/img 0+é.jpg",
        "uploads/x%41~!*'();:@&=$,?#[].jpg",
        # object_store refuses these; boto3 fetches them
        "uploads/a//b.jpg",
        "uploads/./x.jpg",
        "uploads/../y.jpg",
        "uploads/tab\t.jpg",
    ],
)
def test_the_version_the_message_names_is_fetched_whatever_its_key(deployment: Settings, key: str) -> None:
    # GIVEN a photo overwritten after its message was sent
    first = _put(deployment, key, b"the photo validated")
    _put(deployment, key, b"a later upload")

    # WHEN the message's version is fetched, THEN those bytes come back
    assert _fetch(deployment, first) == (b"the photo validated", None)


def test_a_photo_changed_or_gone_since_validation_is_quarantined_not_deferred(deployment: Settings) -> None:
    row = _put(deployment, "uploads/apple/a.jpg", b"validated")

    # another ETag: changed
    other_etag = f'"{hashlib.md5(b"other bytes", usedforsecurity=False).hexdigest()}"'
    assert _fetch(deployment, row._replace(etag=other_etag)) == (
        None,
        Reason.OBJECT_CHANGED,
    )
    # the same ETag, other bytes than the message's sha256: changed
    assert _fetch(deployment, row._replace(sha256="0" * 64)) == (None, Reason.OBJECT_CHANGED)
    # its version deleted: gone
    boto3.client("s3").delete_object(Bucket=deployment.bucket, Key=row.key, VersionId=row.version_id)
    assert _fetch(deployment, row) == (None, Reason.OBJECT_GONE)
