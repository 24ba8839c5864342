"""The ingestion Lambda: powertools wiring around `Ingestor.ingest` (pomona.ingest.ingestor).

Two event shapes reach it: a direct S3 notification (S3 → Lambda on AWS) and S3 notifications wrapped in SQS
records (S3 → SQS → Lambda, and the embedded stack's poller). The SQS shape reports partial batch failures, so
one bad record never fails the batch.
"""

from __future__ import annotations

import json
import os
from functools import cache
from typing import Any
from urllib.parse import unquote_plus

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes import S3Event, SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from pomona.core.resources import INGEST_SERVICE
from pomona.ingest.ingestor import Ingestor, ObjectRef

# Named here, not by POWERTOOLS_SERVICE_NAME: a process that hosts both handlers (local mode, the tests) would
# otherwise give them one logger. The other POWERTOOLS_* variables configure the rest.
logger = Logger(service=INGEST_SERVICE)
tracer = Tracer()
metrics = Metrics(namespace=os.getenv("POWERTOOLS_METRICS_NAMESPACE", "Pomona"), service=INGEST_SERVICE)
processor = BatchProcessor(event_type=EventType.SQS)

TEST_EVENT = "s3:TestEvent"


@cache
def _ingestor() -> Ingestor:
    # Built on first use, not at import: the clients read AWS_ENDPOINT_URL and credentials from the environment.
    return Ingestor.from_env(logger=logger, metrics=metrics)


def object_refs(event: S3Event) -> list[ObjectRef]:
    """The objects an S3 notification names, keys URL-decoded; `s3:TestEvent` names none."""
    if event.get("Event") == TEST_EVENT:
        return []
    return [
        ObjectRef(
            bucket=record.s3.bucket.name,
            key=unquote_plus(record.s3.get_object.key),
            version_id=record.s3.get_object.version_id,
            etag=record.s3.get_object.etag or None,
        )
        for record in event.records
        if record.event_name.startswith("ObjectCreated")
    ]


@tracer.capture_method
def record_handler(record: SQSRecord) -> None:
    """One SQS record holding one S3 notification; raising marks just this record failed."""
    for ref in object_refs(S3Event(json.loads(record.body))):
        _ingestor().ingest(ref)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(
    event: dict[str, Any], context: LambdaContext
) -> PartialItemFailureResponse | dict[str, int]:
    # An in-progress record expires with this invocation, so a crashed one is retried, not blocked.
    _ingestor().idempotency.register_lambda_context(context)
    records = event.get("Records") or []
    if records and records[0].get("eventSource") == "aws:sqs":
        return process_partial_response(
            event=event, record_handler=record_handler, processor=processor, context=context
        )
    # A direct S3 invocation: on failure Lambda retries the whole event, then sends it to the on-failure
    # destination, so raising here loses nothing.
    refs = object_refs(S3Event(event))
    for ref in refs:
        _ingestor().ingest(ref)
    return {"processed": len(refs)}
