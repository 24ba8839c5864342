"""The template against `pomona.core.resources` and `Settings`: names, settings, the uploads' path, cfn-lint."""

from __future__ import annotations

import re
from typing import Any

import pytest
from cfn_eval import resources
from dockerfiles import stage_env
from manifests import ROOT
from template_stack import APP_ROLE, PARAMETERS, TEMPLATE, decoded, stack, statements

from pomona.core.resources import INGEST_SERVICE, describe
from pomona.core.settings import ENV_VARS, Settings

cfnlint_api = pytest.importorskip("cfnlint.api", reason="needs cfn-lint (a dev dependency)")


def test_cfn_lint_finds_nothing() -> None:
    matches = cfnlint_api.lint_file(TEMPLATE)

    assert [f"{m.rule.id} {m.message} (line {m.linenumber})" for m in matches] == []


# -- agreement with pomona.core.resources ------------------------------------------------------------------------------


def test_bucket_matches_resources(template: dict[str, Any]) -> None:
    spec = describe()
    (bucket,) = resources(template, "AWS::S3::Bucket").values()
    rules = {r["Id"]: r for r in bucket["LifecycleConfiguration"]["Rules"]}

    assert bucket["BucketName"] == spec.bucket
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    assert set(bucket["PublicAccessBlockConfiguration"].values()) == {True}
    assert rules["expire-quarantine"]["Prefix"] == spec.quarantine_prefix
    # Both follow RetentionDays by default: test_quarantine_outlives_the_upload_bytes_it_explains.
    assert rules["expire-quarantine"]["ExpirationInDays"] == str(spec.quarantine_expiry_days)
    assert rules["expire-noncurrent-versions"]["NoncurrentVersionExpiration"] == {
        "NoncurrentDays": str(spec.noncurrent_expiry_days)
    }


def test_bucket_refuses_plain_http(template: dict[str, Any]) -> None:
    ((_, deny),) = [
        (w, s) for w, s in statements(template) if w == "ImagesBucketPolicy" and s["Effect"] == "Deny"
    ]

    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert deny["Resource"] == ["<ImagesBucket.Arn>", "<ImagesBucket.Arn>/*"]


@pytest.mark.parametrize("days", ["1", "90", "3650"])
def test_quarantine_outlives_the_upload_bytes_it_explains(days: str) -> None:
    # GIVEN the bucket with this retention
    (bucket,) = resources(stack(RetentionDays=days), "AWS::S3::Bucket").values()
    rules = {r["Id"]: r for r in bucket["LifecycleConfiguration"]["Rules"]}

    # WHEN a rejected upload's bytes become a noncurrent version and its quarantined copy and sidecar are written
    noncurrent = int(rules["expire-noncurrent-versions"]["NoncurrentVersionExpiration"]["NoncurrentDays"])
    quarantine = int(rules["expire-quarantine"]["ExpirationInDays"])

    # THEN the copy and the reason stay at least as long as those bytes
    assert quarantine >= noncurrent == int(days)
    # AND the noncurrent rule covers the whole bucket, so an expired quarantined copy goes RetentionDays later
    assert not {"Prefix", "Filter"} & set(rules["expire-noncurrent-versions"])


@pytest.mark.parametrize(
    ("source", "dlq"), [("images", "ImagesDeadLetterQueue"), ("events", "IngestFailuresQueue")]
)
def test_queues_match_resources(template: dict[str, Any], source: str, dlq: str) -> None:
    spec = getattr(describe(), source)
    queues = {q["QueueName"]: q for q in resources(template, "AWS::SQS::Queue").values()}

    queue = queues[spec.name]

    assert queue["VisibilityTimeout"] == spec.visibility_timeout_s
    assert queue["MessageRetentionPeriod"] == spec.retention_s
    assert queue["RedrivePolicy"] == {
        "deadLetterTargetArn": f"<{dlq}.Arn>",
        "maxReceiveCount": spec.max_receive_count,
    }
    assert resources(template, "AWS::SQS::Queue")[dlq]["QueueName"] == spec.dlq_name
    assert all(q["SqsManagedSseEnabled"] for q in queues.values())


def test_events_queue_outlasts_six_function_timeouts(template: dict[str, Any]) -> None:
    # Lambda's advice for SQS event sources: a batch in flight never reappears while it is being handled.
    function = resources(template, "AWS::Lambda::Function")["IngestFunction"]
    events = resources(template, "AWS::SQS::Queue")["EventsQueue"]

    assert events["VisibilityTimeout"] >= 6 * function["Timeout"]


def _table(template: dict[str, Any], name: str) -> dict[str, Any]:
    (table,) = [t for t in resources(template, "AWS::DynamoDB::Table").values() if t["TableName"] == name]
    return table


def test_idempotency_table_matches_resources(template: dict[str, Any]) -> None:
    spec = describe().idempotency
    table = _table(template, spec.name)

    assert spec.ttl_attribute is not None
    assert table["KeySchema"] == [{"AttributeName": spec.hash_key, "KeyType": "HASH"}]
    assert table["TimeToLiveSpecification"] == {"AttributeName": spec.ttl_attribute, "Enabled": True}


def test_seen_table_matches_resources(template: dict[str, Any]) -> None:
    spec = describe().seen
    table = _table(template, spec.name)
    kept = template["Resources"]["SeenTable"]

    assert table["KeySchema"] == [{"AttributeName": spec.hash_key, "KeyType": "HASH"}]
    assert table["AttributeDefinitions"] == [{"AttributeName": spec.hash_key, "AttributeType": "S"}]
    # Items are kept for good: no TTL, and the table outlives the stack and a replacement, recoverable in time.
    assert spec.ttl_attribute is None
    assert "TimeToLiveSpecification" not in table
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert kept["Properties"] is table
    assert (kept["DeletionPolicy"], kept["UpdateReplacePolicy"]) == ("Retain", "Retain")


# -- uploads → events queue → Lambda -------------------------------------------------------------------------------


def test_uploads_notify_the_events_queue_not_the_lambda(template: dict[str, Any]) -> None:
    bucket = template["Resources"]["ImagesBucket"]
    notifications = bucket["Properties"]["NotificationConfiguration"]

    (notification,) = notifications["QueueConfigurations"]

    assert set(notifications) == {"QueueConfigurations"}
    assert notification["Event"] == "s3:ObjectCreated:*"
    assert notification["Filter"]["S3Key"]["Rules"] == [
        {"Name": "prefix", "Value": describe().uploads_prefix}
    ]
    assert notification["Queue"] == "<EventsQueue.Arn>"
    # S3 sends a test event when the notification is set: the queue's policy must already let it in.
    assert bucket["DependsOn"] == "EventsQueuePolicy"
    assert resources(template, "AWS::SQS::QueuePolicy")["EventsQueuePolicy"]["Queues"] == ["<EventsQueue>"]
    # Nothing invokes the ingestion function asynchronously any more.
    permissions = resources(stack(AppInvokeRoleArn=APP_ROLE), "AWS::Lambda::Permission").values()
    assert [p for p in permissions if p["FunctionName"].startswith("<IngestFunction")] == []
    assert resources(template, "AWS::Lambda::EventInvokeConfig") == {}


def test_events_queue_feeds_the_lambda_with_partial_batch_failures(template: dict[str, Any]) -> None:
    (mapping,) = resources(template, "AWS::Lambda::EventSourceMapping").values()
    function = resources(template, "AWS::Lambda::Function")["IngestFunction"]

    assert mapping["EventSourceArn"] == "<EventsQueue.Arn>"
    assert mapping["FunctionName"] == "<IngestFunction.Arn>"
    # One bad record is retried alone; the rest of its batch is deleted (pomona.ingest.handler).
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert 1 <= mapping["BatchSize"] <= 10
    assert mapping["MaximumBatchingWindowInSeconds"] == 0
    # By default nothing is reserved (a new account has no room to), and IngestMaxConcurrency bounds the pollers.
    assert "ReservedConcurrentExecutions" not in function
    assert mapping["ScalingConfig"]["MaximumConcurrency"] == "10"


def test_reserved_ingest_concurrency_also_bounds_the_pollers() -> None:
    template = stack(IngestReservedConcurrency="20", IngestMaxConcurrency="50")
    (mapping,) = resources(template, "AWS::Lambda::EventSourceMapping").values()
    function = resources(template, "AWS::Lambda::Function")["IngestFunction"]

    # No more pollers than the function may run: a throttled batch spends a receive of each record.
    assert function["ReservedConcurrentExecutions"] == "20"
    assert mapping["ScalingConfig"]["MaximumConcurrency"] == "20"


def test_name_is_required_and_optional_arns_may_be_empty() -> None:
    parameters = decoded()["Parameters"]
    optional = {"AppInvokeRoleArn", "RedriveRoleArn", "AlarmTopicArn"}

    # A bucket name is global: no default a second deployment would collide with (DEPLOY.md derives it from the
    # account id). DEPLOY.md passes the optional ARNs empty when it has none, which their patterns admit.
    assert "Default" not in parameters["Name"]
    assert re.fullmatch(parameters["Name"]["AllowedPattern"], "pomona-123456789012")
    for name in optional:
        assert parameters[name]["Default"] == ""
        assert re.fullmatch(parameters[name]["AllowedPattern"], "")


def test_outputs_name_the_settings_they_fill(template: dict[str, Any]) -> None:
    outputs = template["Outputs"]

    assert outputs["EventsQueueUrl"]["Value"] == "<EventsQueue>"
    assert outputs["EventsDlqUrl"]["Value"] == "<IngestFailuresQueue>"
    assert outputs["SeenTableName"]["Value"] == "<SeenTable>"
    named = {
        o["Description"].split()[0]
        for o in outputs.values()
        if o.get("Description", "").startswith("POMONA_")
    }
    filled = {"POMONA_BUCKET", "POMONA_IMAGES_QUEUE_URL", "POMONA_EVENTS_QUEUE_URL", "POMONA_SEEN_TABLE"}
    assert filled <= named <= set(ENV_VARS)


def test_lambda_runs_the_image_with_pomona_settings(template: dict[str, Any]) -> None:
    function = resources(template, "AWS::Lambda::Function")["IngestFunction"]
    variables = function["Environment"]["Variables"]

    assert (function["PackageType"], function["Code"]["ImageUri"], function["Timeout"]) == (
        "Image",
        PARAMETERS["IngestImageUri"],
        30,
    )
    assert {v for v in variables if not v.startswith("POWERTOOLS_")} <= set(ENV_VARS)
    assert variables["POMONA_IMAGES_QUEUE_URL"] == "<ImagesQueue>"
    # AND read as the handler reads them, the bucket and its prefixes are the resources'
    settings = Settings.from_env({k: v for k, v in variables.items() if k in ENV_VARS})
    spec = describe()
    assert (settings.bucket, settings.uploads_prefix, settings.quarantine_prefix) == (
        spec.bucket,
        spec.uploads_prefix,
        spec.quarantine_prefix,
    )
    # The handler names its service in code; the function and its image say the same to powertools.
    image = stage_env(ROOT / "Dockerfile.lambda")
    assert variables["POWERTOOLS_SERVICE_NAME"] == image["POWERTOOLS_SERVICE_NAME"] == INGEST_SERVICE
