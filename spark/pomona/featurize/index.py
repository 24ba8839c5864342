"""The dedupe index: a DynamoDB table with one item per committed image, keyed by its sha256.

An image is its bytes: two uploads with the same sha256 are one image, whatever their keys or labels, and the
second is a duplicate. A run looks up only its own batch (BatchGetItem, 100 keys a call) and records only its own
committed images (BatchWriteItem, 25 items a call): its cost follows the batch, never the history.

The index holds committed images only: a batch's items are written after LATEST names the batch (step 4 of
`pomona.featurize.commit`), and recovery (`pomona.featurize.recovery`) writes them again from the batch's
projections when a crash came in between. Writes are idempotent puts of the same item, so a roll-forward and a late first attempt agree.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from pomona.core.errors import PomonaError

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

log = logging.getLogger(__name__)

GET_BATCH = 100  # BatchGetItem's limit
WRITE_BATCH = 25  # BatchWriteItem's limit
WRITE_THREADS = 8  # a 50,000-image batch is 2,000 calls: in flight together, they take seconds, not a minute
# DynamoDB may answer part of a batch call (throttling, the 16 MB answer limit): the rest is asked again.
ATTEMPTS = 8

_T = TypeVar("_T")


class IndexUnavailableError(PomonaError, RuntimeError):
    """DynamoDB kept leaving part of a batch call unprocessed."""


class SeenIndex:
    """The committed images of one deployment, by sha256."""

    def __init__(self, dynamodb: DynamoDBClient, table: str) -> None:
        self.dynamodb = dynamodb
        self.table = table

    def committed(self, shas: Iterable[str]) -> set[str]:
        """Which of `shas` belong to committed images."""
        found: set[str] = set()
        for chunk in _chunks(sorted(set(shas)), GET_BATCH):
            request: dict[str, Any] = {
                self.table: {
                    "Keys": [{"sha256": {"S": sha}} for sha in chunk],
                    "ProjectionExpression": "sha256",
                    "ConsistentRead": True,  # an item written a moment ago by the run before counts
                }
            }
            for _ in _attempts("BatchGetItem"):
                answer = self.dynamodb.batch_get_item(RequestItems=request)
                found.update(item["sha256"]["S"] for item in answer["Responses"].get(self.table, []))
                request = answer.get("UnprocessedKeys") or {}
                if not request:
                    break
        return found

    def record(self, shas: Iterable[str], *, batch_id: str) -> None:
        """Mark `shas` committed by `batch_id`. Idempotent: writing again what is there changes nothing."""
        items = [
            {"PutRequest": {"Item": {"sha256": {"S": sha}, "batch_id": {"S": batch_id}}}}
            for sha in sorted(set(shas))
        ]
        with ThreadPoolExecutor(max_workers=WRITE_THREADS) as pool:
            list(pool.map(self._write, _chunks(items, WRITE_BATCH)))

    def _write(self, chunk: list[dict[str, Any]]) -> None:
        request: dict[str, Any] = {self.table: chunk}
        for _ in _attempts("BatchWriteItem"):
            request = self.dynamodb.batch_write_item(RequestItems=request).get("UnprocessedItems") or {}
            if not request:
                return


def _attempts(call: str) -> Iterator[int]:
    """Up to ATTEMPTS tries, backing off between them; raises once they are spent."""
    for attempt in range(ATTEMPTS):
        if attempt:
            time.sleep(min(2.0, 0.05 * 2**attempt))
        yield attempt
    raise IndexUnavailableError(
        f"expected DynamoDB to process every item of a {call} within {ATTEMPTS} attempts, "
        "found some still unprocessed (throttled?); nothing is committed twice: the run stops before deleting"
    )


def _chunks(items: Sequence[_T], size: int) -> Iterator[list[_T]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk
