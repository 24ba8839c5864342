"""An image's exact bytes, fetched in an executor: the version and ETag its message names, or why there are none.

The GETs go through `obstore` (Rust's object_store): a third of boto3's client CPU a GET, the largest of the job's
costs beyond the model (README, "Where the job's CPU goes"). Its errors are mapped to the
outcomes boto3's gave, so the deferral rules stand: gone or changed for good is quarantined, anything else (access
denied, throttled, a 5xx after the client's retries) is deferred under S3's error code. object_store will not
parse some keys S3 allows (empty or dot segments, control characters): those are fetched with boto3.
"""

from __future__ import annotations

import hashlib
import logging
import re
from typing import TYPE_CHECKING

import obstore
import obstore.exceptions
from botocore.exceptions import BotoCoreError, ClientError
from obstore.store import S3Store

from pomona.core.aws import error_code, is_missing
from pomona.core.contract import ImageMessage, Reason
from pomona.core.settings import Settings
from pomona.featurize.outcome import ImageFailure

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

# S3's error code in the XML body object_store quotes in its messages.
_S3_CODE = re.compile(r"<Code>(\w+)</Code>")


# An image's bytes, or why there are none: a reason to quarantine it, or deferred with S3's error code (its message
# is left on the queue, so it comes back, and reaches the DLQ after the queue's receive limit; one image's access or
# throttling error never fails its task, nor its batch).
Fetched = bytes | ImageFailure


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


def fetch_image(stores: ImageStores, s3: S3Client, message: ImageMessage) -> Fetched:
    """The exact bytes `message` names, or why they cannot be had: gone or changed since validation (for good), or
    an error of the moment (deferred)."""
    try:
        found = obstore.get(
            stores(message.bucket),
            message.key,
            options={"version": message.version_id, "if_match": message.etag},
        )
        body = bytes(found.bytes())
    except obstore.exceptions.PreconditionError:
        return _changed(message)
    except (
        obstore.exceptions.NotFoundError,
        FileNotFoundError,
    ) as err:  # obstore raises the builtin for a 404
        match = _S3_CODE.search(str(err))
        return _gone(message, match.group(1) if match else "NotFound")
    except ValueError:  # raised before any request: a key object_store will not parse
        return fetch_with_boto3(s3, message)
    except Exception as err:  # noqa: BLE001 - 403 included: an IAM mistake must not pass for a missing object
        match = _S3_CODE.search(str(err))
        return _deferred(message, match.group(1) if match else type(err).__name__, err)
    return _checked(message, body)


def fetch_with_boto3(s3: S3Client, message: ImageMessage) -> Fetched:
    """`fetch_image` through boto3, for the keys object_store refuses."""
    try:
        body = s3.get_object(
            Bucket=message.bucket, Key=message.key, VersionId=message.version_id, IfMatch=message.etag
        )["Body"].read()
    except ClientError as err:
        code = error_code(err)
        if code in {"PreconditionFailed", "412"}:
            return _changed(message)
        if is_missing(err) or code == "NoSuchVersion":
            return _gone(message, code)
        return _deferred(message, code or "ClientError", err)
    except BotoCoreError as err:  # the connection failed through every retry
        return _deferred(message, type(err).__name__, err)
    return _checked(message, body)


def _checked(message: ImageMessage, body: bytes) -> Fetched:
    digest = hashlib.sha256(body).hexdigest()
    if digest != message.sha256:
        return ImageFailure(message, Reason.OBJECT_CHANGED, f"expected sha256 {message.sha256}, got {digest}")
    return body


def _changed(message: ImageMessage) -> Fetched:
    return ImageFailure(message, Reason.OBJECT_CHANGED, f"expected ETag {message.etag}, found another")


def _gone(message: ImageMessage, code: str) -> Fetched:
    detail = f"expected version {message.version_id} of {message.key}, found none ({code})"
    return ImageFailure(message, Reason.OBJECT_GONE, detail)


def _deferred(message: ImageMessage, code: str, err: Exception) -> Fetched:
    log.warning(
        "Image deferred: its GET failed",
        extra={"key": message.key, "version_id": message.version_id, "error_code": code},
    )
    return ImageFailure(message, None, f"GET {message.key} version {message.version_id} failed: {err}", code)
