"""An image's exact bytes, fetched in an executor: the version and ETag its message names, or why there are none.

The GETs go through `obstore` (Rust's object_store): 0.36–0.47 CPU-ms a GET on the client against boto3's 1.25, the
largest of the job's costs beyond the model (README, "Where the job's CPU goes"). Its errors are mapped to the
outcomes boto3's gave, so the deferral rules stand: gone or changed for good is quarantined, anything else (access
denied, throttled, a 5xx after the client's retries) is deferred under S3's error code. object_store will not
parse some keys S3 allows (empty or dot segments, control characters): those are fetched with boto3.
"""

from __future__ import annotations

import hashlib
import logging
import re
from typing import TYPE_CHECKING, Any, NamedTuple

import obstore
import obstore.exceptions
from botocore.exceptions import BotoCoreError, ClientError
from obstore.store import S3Store

from pomona.core.aws import error_code, is_missing
from pomona.core.contract import Reason
from pomona.core.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

# Not a `Reason`: the image's message is left on the queue, so it comes back (and reaches the DLQ after the queue's
# receive limit); one image's access or throttling error never fails its task, nor its batch.
DEFERRED = "deferred"
# S3's error code in the XML body object_store quotes in its messages.
_S3_CODE = re.compile(r"<Code>(\w+)</Code>")


class Fetched(NamedTuple):
    """An image's bytes, or why there are none: a `Reason` to quarantine it, or DEFERRED with the S3 error code."""

    body: bytes | None
    reason: str | None = None
    detail: str = ""
    error_code: str | None = None


class ImageStores:
    """One object_store client per bucket, built on first use from the settings' endpoint and the environment's
    credentials and region (as boto3 finds them: keys, web identity on EKS, instance metadata)."""

    def __init__(self, settings: Settings) -> None:
        self._endpoint = settings.endpoint_url
        self._stores: dict[str, S3Store] = {}

    def __call__(self, bucket: str) -> S3Store:
        if bucket not in self._stores:
            endpoint = self._endpoint
            self._stores[bucket] = (
                S3Store(bucket)
                if endpoint is None
                else S3Store(
                    bucket,
                    endpoint=endpoint,
                    virtual_hosted_style_request=False,
                    client_options={"allow_http": endpoint.startswith("http://")},
                )
            )
        return self._stores[bucket]


def fetch_image(stores: ImageStores, s3: S3Client, row: Any) -> Fetched:
    """The exact bytes the message `row` names, or why they cannot be had: gone or changed since validation (for
    good), or an error of the moment (deferred)."""
    try:
        found = obstore.get(
            stores(row.bucket), row.key, options={"version": row.version_id, "if_match": row.etag}
        )
        body = bytes(found.bytes())
    except obstore.exceptions.PreconditionError:
        return _changed(row)
    except (
        obstore.exceptions.NotFoundError,
        FileNotFoundError,
    ) as err:  # obstore raises the builtin for a 404
        match = _S3_CODE.search(str(err))
        return _gone(row, match.group(1) if match else "NotFound")
    except ValueError:  # raised before any request: a key object_store will not parse
        return fetch_with_boto3(s3, row)
    except Exception as err:  # noqa: BLE001 - 403 included: an IAM mistake must not pass for a missing object
        match = _S3_CODE.search(str(err))
        return _deferred(row, match.group(1) if match else type(err).__name__, err)
    return _checked(row, body)


def fetch_with_boto3(s3: S3Client, row: Any) -> Fetched:
    """`fetch_image` through boto3, for the keys object_store refuses."""
    try:
        body = s3.get_object(Bucket=row.bucket, Key=row.key, VersionId=row.version_id, IfMatch=row.etag)[
            "Body"
        ].read()
    except ClientError as err:
        code = error_code(err)
        if code in {"PreconditionFailed", "412"}:
            return _changed(row)
        if is_missing(err) or code == "NoSuchVersion":
            return _gone(row, code)
        return _deferred(row, code or "ClientError", err)
    except BotoCoreError as err:  # the connection failed through every retry
        return _deferred(row, type(err).__name__, err)
    return _checked(row, body)


def _checked(row: Any, body: bytes) -> Fetched:
    digest = hashlib.sha256(body).hexdigest()
    if digest != row.sha256:
        return Fetched(None, Reason.OBJECT_CHANGED, f"expected sha256 {row.sha256}, got {digest}")
    return Fetched(body)


def _changed(row: Any) -> Fetched:
    return Fetched(None, Reason.OBJECT_CHANGED, f"expected ETag {row.etag}, found another")


def _gone(row: Any, code: str) -> Fetched:
    return Fetched(
        None, Reason.OBJECT_GONE, f"expected version {row.version_id} of {row.key}, found none ({code})"
    )


def _deferred(row: Any, code: str, err: Exception) -> Fetched:
    log.warning(
        "Image deferred: its GET failed",
        extra={"key": row.key, "version_id": row.version_id, "error_code": code},
    )
    return Fetched(None, DEFERRED, f"GET {row.key} version {row.version_id} failed: {err}", code)
