"""The run lock: a lease in S3 that keeps two featurization runs from working at once; and each run's own lease
on its batch's files, which outlives a takeover of the lock so that recovery never deletes a live run's files."""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from pomona.core.aws import is_missing, is_precondition_failed, put_json
from pomona.core.errors import PomonaError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

LOCK_TTL = timedelta(minutes=30)
# A run's lease on its batch outlives its lock: a run that stalls past its lock's TTL, and whose lock is taken
# over, still finds its files where it left them for another TTL.
LEASE_TTL = 2 * LOCK_TTL


class ConcurrentRunError(PomonaError, RuntimeError):
    """Another featurization run holds the lock or committed first; this run stops without committing."""


@dataclass(frozen=True)
class Holder:
    owner: str
    expires_at: datetime


@dataclass
class RunLock:
    """A lease in S3 that keeps two featurization runs from working at once; renewed by the run's heartbeat."""

    s3: S3Client
    bucket: str
    key: str  # pomona.core.outputs.lock_key
    # The run's lease on its batch (pomona.core.outputs.lease_key), written and renewed while the lock is ours.
    lease_key: str | None = None
    owner: str = field(default_factory=lambda: uuid.uuid4().hex)
    etag: str | None = None

    def acquire(self, now: datetime | None = None) -> None:
        now = now or datetime.now(UTC)
        self._take(now)
        try:
            self._write_lease(now)
        except BaseException:  # no lease, no run: free the lock now rather than after its TTL
            self.s3.delete_object(Bucket=self.bucket, Key=self.key)
            raise

    def _take(self, now: datetime) -> None:
        try:
            self.etag = put_json(self.s3, self.bucket, self.key, self._document(now), if_none_match=True)
            return
        except ClientError as err:
            if not is_precondition_failed(err):
                raise
        found = self._holder()
        if found is not None:
            holder, etag = found
            if holder.owner == self.owner:  # our write landed, its response was lost, the retry met it
                self.etag = etag
                return
            if holder.expires_at > now:
                raise ConcurrentRunError(
                    f"expected no other run, found run {holder.owner} holding the lock until "
                    f"{holder.expires_at.isoformat()}"
                )
            log.warning("Taking over an expired run lock", extra={"previous_owner": holder.owner})
            try:
                self.etag = put_json(self.s3, self.bucket, self.key, self._document(now), if_match=etag)
                return
            except ClientError as err:
                if not is_precondition_failed(err):
                    raise
        raise ConcurrentRunError("expected to take the run lock, another run took it at the same moment")

    def renew(self, now: datetime | None = None) -> None:
        now = now or datetime.now(UTC)
        self._renew(now)
        self._write_lease(now)

    def _renew(self, now: datetime) -> None:
        try:
            self.etag = put_json(self.s3, self.bucket, self.key, self._document(now), if_match=self.etag)
        except ClientError as err:
            # S3 answers a conditional write to a key that is gone with 404: the lock was deleted under us.
            if not (is_precondition_failed(err) or is_missing(err)):
                raise
            found = self._holder()
            if found is None or found[0].owner != self.owner:
                raise ConcurrentRunError("expected to still hold the run lock, another run took it") from err
            self.etag = found[1]  # our renewal landed, its response was lost, the retry met it

    def release(self) -> None:
        """Delete the lock if it is still ours: a run that lost it must not free the run that took it over.

        The conditional renewal first makes it ours for a full TTL, so no run can take it over before the delete.
        The run's lease goes either way: the run is over, and what it left uncommitted is recovery's to delete.
        """
        try:
            self._renew(datetime.now(UTC))
            self.s3.delete_object(Bucket=self.bucket, Key=self.key)
        except ConcurrentRunError:
            pass
        finally:
            if self.lease_key is not None:
                self.s3.delete_object(Bucket=self.bucket, Key=self.lease_key)

    def _write_lease(self, now: datetime) -> None:
        if self.lease_key is not None:  # the key is this run's alone: no condition needed
            put_json(self.s3, self.bucket, self.lease_key, self._document(now, ttl=LEASE_TTL))

    def _holder(self) -> tuple[Holder, str] | None:
        """Who holds the lock until when, and the document's ETag; None when there is no lock.

        A document that is not a lock (a hand edit, a bug) is reported and held by nobody until its TTL has passed
        since it was written: never a permanent block, never taken over at once."""
        try:
            response = self.s3.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as err:
            if is_missing(err):
                return None
            raise
        try:
            document = json.loads(response["Body"].read())
            holder = Holder(
                owner=str(document["owner"]), expires_at=datetime.fromisoformat(document["expires_at"])
            )
        except (ValueError, KeyError, TypeError) as err:
            expires_at = response["LastModified"] + LOCK_TTL
            log.error(
                "Malformed run lock: held until its TTL passes",
                extra={"key": self.key, "error": str(err), "expires_at": expires_at.isoformat()},
            )
            holder = Holder(owner=f"(malformed lock document: {err})", expires_at=expires_at)
        return holder, response["ETag"]

    def _document(self, now: datetime, *, ttl: timedelta = LOCK_TTL) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "acquired_at": now.isoformat(),
            "expires_at": (now + ttl).isoformat(),
        }


def lease_is_live(s3: S3Client, bucket: str, key: str, now: datetime | None = None) -> bool:
    """Whether the run lease at `key` is held: written by a run that renewed it within LEASE_TTL. A lease that
    cannot be read as one counts as live until that TTL has passed since it was written, as a malformed lock does."""
    try:
        response = s3.get_object(Bucket=bucket, Key=key)
    except ClientError as err:
        if is_missing(err):
            return False
        raise
    try:
        expires_at = datetime.fromisoformat(json.loads(response["Body"].read())["expires_at"])
    except (ValueError, KeyError, TypeError):
        expires_at = response["LastModified"] + LEASE_TTL
    return expires_at > (now or datetime.now(UTC))
