"""The embedded AWS stack: a moto server on loopback, provisioned with the resources of `pomona.core.resources`.

Local mode runs the production code against it: only the endpoint differs. The S3 notification goes to the
events queue, where `pomona.local.poller` picks it up for the Lambda handler as Lambda's SQS integration would.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3

from pomona.core.resources import DEFAULT_NAME, QueueSpec, Resources, describe
from pomona.core.settings import Settings
from pomona.local import moto_speedups

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
    """A moto server in a thread of this process, on loopback, with `moto_speedups` where they apply; returns it
    and its endpoint URL.
    """
    from moto.server import ThreadedMotoServer

    moto_speedups.apply()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per request is noise here
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    host, bound = server.get_host_and_port()
    return server, f"http://{host}:{bound}"


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
    try:
        with exported(stack.env()):
            yield stack
    finally:
        stack.stop()


@contextmanager
def exported(env: Mapping[str, str]) -> Iterator[None]:
    """`env` in this process's environment for the duration; the environment as it was afterwards."""
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def provision(
    resources: Resources, *, session: boto3.session.Session, endpoint_url: str, base: Settings
) -> Settings:
    """Create the bucket, queues, notification, idempotency table, dedupe index and the tables' Glue database;
    return settings pointing at them."""
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
    for table in (resources.idempotency, resources.seen):
        dynamodb.create_table(
            TableName=table.name,
            KeySchema=[{"AttributeName": table.hash_key, "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": table.hash_key, "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        if table.ttl_attribute:
            dynamodb.update_time_to_live(
                TableName=table.name,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": table.ttl_attribute},
            )
    session.client("glue", endpoint_url=endpoint_url).create_database(
        DatabaseInput={"Name": resources.glue_database}
    )
    return base.replace(
        bucket=resources.bucket,
        uploads_prefix=resources.uploads_prefix,
        quarantine_prefix=resources.quarantine_prefix,
        events_queue_url=events_url,
        images_queue_url=images_url,
        images_dlq_url=images_dlq_url,
        idempotency_table=resources.idempotency.name,
        seen_table=resources.seen.name,
        glue_database=resources.glue_database,
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
