"""A local event-source mapping: feeds the events queue to the Lambda handler as Lambda's SQS integration does.

Up to `batch_size` messages are received, handed to the handler as one `aws:sqs` event, and the handler's
`batchItemFailures` decide what happens next: successes are deleted, failures stay on the queue and come back
after their visibility timeout, until the redrive policy moves them to the DLQ.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import boto3

from pomona.core.queues import SQS_BATCH, in_batches

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import MessageTypeDef

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any], Any], Any]


@dataclass
class LambdaContext:
    """The parts of Lambda's context object that powertools reads."""

    function_name: str = "pomona-ingest"
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 512
    timeout_s: float = 30.0
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:pomona-ingest"
    log_group_name: str = "/aws/lambda/pomona-ingest"
    log_stream_name: str = "local"
    _started: float = field(default_factory=time.monotonic)

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.timeout_s - (time.monotonic() - self._started)) * 1000))


@dataclass
class PollStats:
    batches: int = 0
    received: int = 0
    succeeded: int = 0
    failed: int = 0

    def add(self, other: PollStats) -> None:
        self.batches += other.batches
        self.received += other.received
        self.succeeded += other.succeeded
        self.failed += other.failed


class EventSourcePoller:
    """Polls `queue_url` and invokes `handler` with SQS events, as a Lambda event-source mapping would."""

    def __init__(
        self,
        queue_url: str,
        handler: Handler,
        *,
        batch_size: int = SQS_BATCH,
        wait_s: int = 0,
        retry_after_s: int | None = None,
        sqs: SQSClient | None = None,
    ) -> None:
        self.queue_url = queue_url
        self.handler = handler
        self.batch_size = batch_size
        self.wait_s = wait_s
        # Lambda leaves a failed message invisible for the queue's whole visibility timeout; locally a shorter
        # retry keeps a demo moving. None keeps Lambda's behaviour.
        self.retry_after_s = retry_after_s
        self.sqs = sqs or boto3.client("sqs")
        self.queue_arn = self.sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]

    def poll_once(self) -> PollStats:
        """Receive one batch, invoke the handler once, settle the batch. Empty stats when nothing was there."""
        messages = self.sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=self.batch_size,
            WaitTimeSeconds=self.wait_s,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not messages:
            return PollStats()
        event = {"Records": [self._record(m) for m in messages]}
        try:
            response = self.handler(event, LambdaContext()) or {}
            failed_ids = {f["itemIdentifier"] for f in response.get("batchItemFailures", [])}
        except Exception:
            # A handler that raises fails the whole batch, as on Lambda.
            log.exception("Handler failed the whole batch")
            failed_ids = {m["MessageId"] for m in messages}
        done = [m for m in messages if m["MessageId"] not in failed_ids]
        for batch in in_batches(done):
            entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)]
            self.sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=entries)  # type: ignore[arg-type]
        if self.retry_after_s is not None:
            for m in messages:
                if m["MessageId"] in failed_ids:
                    self.sqs.change_message_visibility(
                        QueueUrl=self.queue_url,
                        ReceiptHandle=m["ReceiptHandle"],
                        VisibilityTimeout=self.retry_after_s,
                    )
        return PollStats(batches=1, received=len(messages), succeeded=len(done), failed=len(failed_ids))

    def drain(self, *, idle_polls: int = 1, max_polls: int = 100_000) -> PollStats:
        """Poll until `idle_polls` polls in a row find nothing (failed messages still invisible are not waited for)."""
        total, idle = PollStats(), 0
        for _ in range(max_polls):
            stats = self.poll_once()
            total.add(stats)
            idle = idle + 1 if stats.received == 0 else 0
            if idle >= idle_polls:
                break
        return total

    def _record(self, message: MessageTypeDef) -> dict[str, Any]:
        return {
            "messageId": message["MessageId"],
            "receiptHandle": message["ReceiptHandle"],
            "body": message["Body"],
            "attributes": message.get("Attributes", {}),
            "messageAttributes": message.get("MessageAttributes", {}),
            "md5OfBody": message.get("MD5OfBody", ""),
            "eventSource": "aws:sqs",
            "eventSourceARN": self.queue_arn,
            "awsRegion": self.queue_arn.split(":")[3],
        }
