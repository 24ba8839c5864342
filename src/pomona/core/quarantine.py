"""The one quarantine writer, for the ingest Lambda and the featurization job alike: a copy of the object version
and its sidecar beside it, both under the key of that version (`pomona.core.contract.quarantine_key`).

Only boto3 and the contract, so the ingest Lambda's image (the `lambda` extra) runs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from pomona.core.aws import error_code, is_missing
from pomona.core.contract import QuarantineSidecar, quarantine_key, sidecar_key

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# What S3 answers a copy of a version it does not have, or of a version id it cannot parse.
_NOT_THERE = frozenset({"NoSuchVersion", "InvalidArgument"})


def quarantine_object(
    s3: S3Client,
    sidecar: QuarantineSidecar,
    *,
    bucket: str,
    quarantine_prefix: str,
    source_bucket: str | None = None,
    copy: bool = True,
    missing_ok: bool = False,
) -> str:
    """Quarantine the object version `sidecar` names (in `source_bucket`, by default `bucket`) into `bucket`: a copy
    of it (unless `copy` is False), then `sidecar` beside the copy; the copy's key.

    With `missing_ok`, a version S3 no longer has (or whose id it cannot parse) gets its sidecar alone; without,
    the copy's error is raised and nothing is written."""
    target = quarantine_key(
        sidecar.reason,
        sidecar.original_key,
        version_id=sidecar.version_id,
        quarantine_prefix=quarantine_prefix,
    )
    if copy:
        source: Any = {
            "Bucket": source_bucket or bucket,
            "Key": sidecar.original_key,
            **({"VersionId": sidecar.version_id} if sidecar.version_id else {}),
        }
        try:
            s3.copy_object(Bucket=bucket, Key=target, CopySource=source)
        except ClientError as err:
            if not (missing_ok and (is_missing(err) or error_code(err) in _NOT_THERE)):
                raise
    s3.put_object(
        Bucket=bucket,
        Key=sidecar_key(target),
        Body=sidecar.to_json(),
        ContentType="application/json",
    )
    return target
