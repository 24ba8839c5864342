"""The embedded AWS stack: a moto server on loopback, provisioned with the resources of `pomona.core.resources`.

Local mode runs the production code against it: only the endpoint differs. The S3 notification goes to the
events queue, where `pomona.local.poller` picks it up for the Lambda handler as Lambda's SQS integration would.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import boto3

from pomona.core.resources import DEFAULT_NAME, QueueSpec, Resources, describe
from pomona.core.settings import Settings

if TYPE_CHECKING:
    from moto.server import ThreadedMotoServer
    from mypy_boto3_sqs import SQSClient

log = logging.getLogger(__name__)

# moto accepts any credentials; these keep boto3 from looking for real ones.
LOCAL_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",  # pragma: allowlist secret (moto accepts any)
    "AWS_DEFAULT_REGION": "us-east-1",
    "POWERTOOLS_SERVICE_NAME": "pomona-ingest",
    "POWERTOOLS_METRICS_NAMESPACE": "Pomona",
    "POWERTOOLS_TRACE_DISABLED": "true",
}


@dataclass(frozen=True)
class EmbeddedStack:
    """A running moto server and the settings that point every Pomona unit at it."""

    server: ThreadedMotoServer
    settings: Settings
    resources: Resources

    @property
    def endpoint_url(self) -> str:
        assert self.settings.endpoint_url is not None
        return self.settings.endpoint_url

    def env(self) -> dict[str, str]:
        """The environment a process needs to use this stack (`pomona local up` prints it)."""
        return {**LOCAL_ENV, **self.settings.to_env()}

    def stop(self) -> None:
        self.server.stop()


def start_stack(
    *, port: int = 0, name: str = DEFAULT_NAME, environ: Mapping[str, str] | None = None
) -> EmbeddedStack:
    """Start a moto server on 127.0.0.1 (`port` 0 picks a free one) and provision a deployment called `name`."""
    server, endpoint = start_server(port=port)
    # moto keeps its state per process, not per server: a second stack in this process starts empty too.
    urllib.request.urlopen(
        urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=30
    ).close()
    resources = describe(name)
    settings = provision(
        resources, session=local_session(), endpoint_url=endpoint, base=Settings.from_env(environ)
    )
    log.info("Embedded stack ready", extra={"endpoint": endpoint, "bucket": settings.bucket})
    return EmbeddedStack(server=server, settings=settings, resources=resources)


def start_server(*, port: int = 0) -> tuple[ThreadedMotoServer, str]:
    """A moto server in a thread of this process, on loopback; returns it and its endpoint URL."""
    from moto.server import ThreadedMotoServer

    _speed_up_moto_sqs()
    _speed_up_moto_dispatch()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per request is noise here
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    host, bound = server.get_host_and_port()
    return server, f"http://{host}:{bound}"


# Queue depths, which `pomona status`, the trigger and the benchmarks' samplers ask for.
_DEPTH_ATTRIBUTES = frozenset(
    {
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    }
)


@functools.cache  # once per process: the patches wrap moto's own methods
def _speed_up_moto_sqs() -> None:
    """Make the embedded SQS scale like real SQS where moto 5 does not.

    - A receive recomputes every queue attribute (three scans of the whole queue) for each message it returns,
      so draining n messages costs O(n²): 0.4 s a receive at a depth of 540. Only the retention period is
      needed there; it is read directly.
    - GetQueueAttributes computes every attribute up to three times for each name asked: at a depth of 5,000,
      sampling two queues' depths twice a second held the GIL of the process serving the Lambda handler for
      most of that second. Depth attributes alone are computed alone, once.
    - Every receive and depth still looks at every message, and each look builds two datetimes to read the
      clock (a quarter of the embedded stack's time at a depth of 5,000): the clock is read directly, the same
      epoch milliseconds.
    - DeleteMessageBatch scans the whole queue twice per receipt: the job's commit at 4,900 images spent 17 s
      deleting. One scan per batch now deletes all of its receipts, with SQS's answers unchanged (a receipt
      already deleted succeeds, an unknown one fails with ReceiptHandleIsInvalid).
    """
    from moto.core.utils import camelcase_to_underscores, unix_time
    from moto.sqs import models
    from moto.sqs.models import Message, SQSBackend

    def is_message_valid_based_on_retention_period(
        self: SQSBackend, queue_name: str, message: Message
    ) -> bool:
        queue = self.get_queue(queue_name)
        retention_s = int(queue.message_retention_period)  # type: ignore[attr-defined]  # set from attributes
        return bool(retention_s + message.sent_timestamp / 1000 > unix_time())  # type: ignore[operator]

    all_attributes = SQSBackend.get_queue_attributes

    def get_queue_attributes(self: SQSBackend, queue_name: str, attribute_names: list[str]) -> dict[str, Any]:
        if not attribute_names or not set(attribute_names) <= _DEPTH_ATTRIBUTES:
            return all_attributes(self, queue_name, attribute_names)
        queue = self.get_queue(queue_name)
        return {name: getattr(queue, camelcase_to_underscores(name)) for name in attribute_names}

    SQSBackend.is_message_valid_based_on_retention_period = is_message_valid_based_on_retention_period  # type: ignore[method-assign]
    SQSBackend.get_queue_attributes = get_queue_attributes  # type: ignore[method-assign]

    clock_millis = models.unix_time_millis  # type: ignore[attr-defined]

    def unix_time_millis(dt: datetime | None = None) -> float:
        return time.time() * 1000 if dt is None else float(clock_millis(dt))

    models.unix_time_millis = unix_time_millis  # type: ignore[attr-defined]

    delete_one_by_one = SQSBackend.delete_message_batch

    def delete_message_batch(
        self: SQSBackend, queue_name: str, receipts: list[dict[str, Any]]
    ) -> tuple[list[str], list[dict[str, str]]]:
        queue = self.get_queue(queue_name)
        wanted = {entry["ReceiptHandle"] for entry in receipts} - queue.deleted_messages
        kept = []
        for message in queue._messages:
            if wanted.intersection(message.all_receipt_handles):
                queue.pending_messages.discard(message)
                queue.deleted_messages.update(message.all_receipt_handles)  # type: ignore[arg-type]
            else:
                kept.append(message)
        queue._messages = kept
        # What is left (unknown receipts) gets moto's own error entries.
        unknown = [entry for entry in receipts if entry["ReceiptHandle"] not in queue.deleted_messages]
        _, errors = delete_one_by_one(self, queue_name, unknown)
        return [entry["Id"] for entry in receipts if entry not in unknown], errors

    SQSBackend.delete_message_batch = delete_message_batch  # type: ignore[method-assign]


@functools.cache  # once per process, as above
def _speed_up_moto_dispatch() -> None:
    """Remember which service answers each host name.

    moto's server finds the service of every request anew, under a lock that every request must take: it lists
    moto's package folder (a `stat` per service, ~200) and then tries every service's URL patterns. That was
    0.65 ms of CPU per request, and a third of the CPU of an S3 GET (4.4 → 3.1 ms, measured with 8 concurrent
    GETs). The answer depends on the host name alone, and moto's folders and patterns never change while it runs.
    """
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    find_backend = DomainDispatcherApplication.get_backend_for_host
    backends: dict[str | None, Any] = {}

    def get_backend_for_host(self: DomainDispatcherApplication, host: str | None) -> Any:
        if host not in backends:
            backends[host] = find_backend(self, host)
        return backends[host]

    DomainDispatcherApplication.get_backend_for_host = get_backend_for_host  # type: ignore[method-assign]


def local_session() -> boto3.session.Session:
    """A boto3 session with moto's placeholder credentials, whatever the environment holds."""
    return boto3.session.Session(
        aws_access_key_id=LOCAL_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=LOCAL_ENV["AWS_SECRET_ACCESS_KEY"],
        region_name=LOCAL_ENV["AWS_DEFAULT_REGION"],
    )


@contextmanager
def embedded_stack(**kwargs: object) -> Iterator[EmbeddedStack]:
    """`start_stack` as a context manager that also exports the stack's environment for its duration."""
    stack = start_stack(**kwargs)  # type: ignore[arg-type]
    saved = dict(os.environ)
    os.environ.update(stack.env())
    try:
        yield stack
    finally:
        os.environ.clear()
        os.environ.update(saved)
        stack.stop()


def provision(
    resources: Resources, *, session: boto3.session.Session, endpoint_url: str, base: Settings
) -> Settings:
    """Create the bucket, queues, notification and idempotency table; return settings pointing at them."""
    s3 = session.client("s3", endpoint_url=endpoint_url)
    sqs = session.client("sqs", endpoint_url=endpoint_url)
    dynamodb = session.client("dynamodb", endpoint_url=endpoint_url)

    s3.create_bucket(Bucket=resources.bucket)
    s3.put_bucket_versioning(Bucket=resources.bucket, VersioningConfiguration={"Status": "Enabled"})
    events_url, events_arn = _create_queue(sqs, resources.events)
    images_url, _ = _create_queue(sqs, resources.images)
    images_dlq_url = sqs.get_queue_url(QueueName=resources.images.dlq_name or "")["QueueUrl"]
    s3.put_bucket_notification_configuration(
        Bucket=resources.bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "Id": "uploads-to-events",
                    "QueueArn": events_arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {
                        "Key": {"FilterRules": [{"Name": "prefix", "Value": resources.uploads_prefix}]}
                    },
                }
            ]
        },
    )
    table = resources.idempotency
    dynamodb.create_table(
        TableName=table.name,
        KeySchema=[{"AttributeName": table.hash_key, "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": table.hash_key, "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    dynamodb.update_time_to_live(
        TableName=table.name, TimeToLiveSpecification={"Enabled": True, "AttributeName": table.ttl_attribute}
    )
    return base.replace(
        bucket=resources.bucket,
        uploads_prefix=resources.uploads_prefix,
        quarantine_prefix=resources.quarantine_prefix,
        events_queue_url=events_url,
        images_queue_url=images_url,
        images_dlq_url=images_dlq_url,
        idempotency_table=table.name,
        endpoint_url=endpoint_url,
        region=session.region_name or LOCAL_ENV["AWS_DEFAULT_REGION"],
    )


def _create_queue(sqs: SQSClient, spec: QueueSpec) -> tuple[str, str]:
    attributes: dict[Any, str] = {
        "VisibilityTimeout": str(spec.visibility_timeout_s),
        "MessageRetentionPeriod": str(spec.retention_s),
        "ReceiveMessageWaitTimeSeconds": "0",
    }
    if spec.dlq_name:
        dlq_url = sqs.create_queue(QueueName=spec.dlq_name, Attributes={"MessageRetentionPeriod": "1209600"})[
            "QueueUrl"
        ]
        dlq_arn = _queue_arn(sqs, dlq_url)
        attributes["RedrivePolicy"] = json.dumps(
            {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(spec.max_receive_count)}
        )
    url = sqs.create_queue(QueueName=spec.name, Attributes=attributes)["QueueUrl"]
    return url, _queue_arn(sqs, url)


def _queue_arn(sqs: SQSClient, url: str) -> str:
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
