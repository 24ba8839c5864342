"""AWS clients and S3 JSON documents, as every unit uses them: one retry policy, one reading of S3's error codes.

Only boto3 and the standard library, so the Lambda, the job and the CLI share it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from botocore.config import Config
from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# Throttling, 5xx and connection resets are retried with backoff and client-side rate limiting.
RETRIES = Config(retries={"mode": "adaptive", "max_attempts": 8})


def error_code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def is_precondition_failed(err: ClientError) -> bool:
    return error_code(err) in {"PreconditionFailed", "ConditionalRequestConflict", "412"}


def is_missing(err: ClientError) -> bool:
    return error_code(err) in {"NoSuchKey", "404", "NotFound"}


def read_bytes(s3: S3Client, bucket: str, key: str) -> bytes | None:
    """The object's bytes, or None when there is none."""
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as err:
        if is_missing(err):
            return None
        raise


def get_json(s3: S3Client, bucket: str, key: str) -> tuple[dict[str, Any], str] | None:
    """The document at `key` and its ETag, or None when there is none."""
    try:
        response = s3.get_object(Bucket=bucket, Key=key)
    except ClientError as err:
        if is_missing(err):
            return None
        raise
    return json.loads(response["Body"].read()), response["ETag"]


def json_bytes(document: dict[str, Any]) -> bytes:
    """A JSON document as every Pomona writer stores it: indented, keys sorted, UTF-8."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False).encode()


def put_json(
    s3: S3Client,
    bucket: str,
    key: str,
    document: dict[str, Any],
    *,
    if_none_match: bool = False,
    if_match: str | None = None,
) -> str:
    """Write `document`; with `if_none_match` or `if_match` the write fails with ClientError instead of clobbering."""
    conditions: dict[str, str] = {}
    if if_none_match:
        conditions["IfNoneMatch"] = "*"
    if if_match is not None:
        conditions["IfMatch"] = if_match
    response = s3.put_object(
        Bucket=bucket,
        Key=key,
        Body=json_bytes(document),
        ContentType="application/json",
        **conditions,  # type: ignore[arg-type]
    )
    return response["ETag"]
