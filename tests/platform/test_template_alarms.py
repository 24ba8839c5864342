"""The stack's alarms: what each watches, when it fires, and whom it notifies."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from cfn_eval import resources
from manifests import CHART
from template_stack import decoded, identity_policy, stack

from pomona.core.resources import describe
from pomona.core.settings import Settings

TOPIC = "arn:aws:sns:us-east-1:123456789012:pomona-alarms"

# The two halves of "no healthy run while images wait": only their composite, JobStalledAlarm, notifies.
SILENT_ALARMS = {"JobRunsMissingAlarm", "ImagesWaitingAlarm"}
NOTIFYING_ALARMS = {
    "ImagesAgeAlarm",
    "ImagesDlqAlarm",
    "EventsDlqAlarm",
    "IngestErrorsAlarm",
    "IngestThrottlesAlarm",
    "Classify5xxAlarm",
    "ClassifyLatencyAlarm",
    "JobStalledAlarm",
    "JobRunFailedAlarm",
}


def _alarms(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return resources(template, "AWS::CloudWatch::Alarm") | resources(
        template, "AWS::CloudWatch::CompositeAlarm"
    )


def _watched(metric: dict[str, Any]) -> tuple[str, str, dict[str, str]]:
    """(namespace, metric name, dimensions) of an alarm or of a MetricStat's Metric."""
    dimensions = {d["Name"]: d["Value"] for d in metric["Dimensions"]}
    return metric["Namespace"], metric["MetricName"], dimensions


IMAGES_QUEUE = {"QueueName": "<ImagesQueue.QueueName>"}
JOB = {"Bucket": describe().bucket}  # the one dimension of the job's run metrics: POMONA_BUCKET


@pytest.mark.parametrize(
    ("name", "metric", "dimensions", "comparison", "threshold"),
    [
        pytest.param(
            "ImagesAgeAlarm",
            "AWS/SQS ApproximateAgeOfOldestMessage",
            IMAGES_QUEUE,
            "GreaterThanThreshold",
            "21600",
            id="images-oldest-message",
        ),
        pytest.param(
            "ImagesDlqAlarm",
            "AWS/SQS ApproximateNumberOfMessagesVisible",
            {"QueueName": "<ImagesDeadLetterQueue.QueueName>"},
            "GreaterThanThreshold",
            0,
            id="images-dlq",
        ),
        pytest.param(
            "EventsDlqAlarm",
            "AWS/SQS ApproximateNumberOfMessagesVisible",
            {"QueueName": "<IngestFailuresQueue.QueueName>"},
            "GreaterThanThreshold",
            0,
            id="events-dlq",
        ),
        pytest.param(
            "IngestErrorsAlarm",
            "AWS/Lambda Errors",
            {"FunctionName": "<IngestFunction>"},
            "GreaterThanThreshold",
            0,
            id="ingest-errors",
        ),
        pytest.param(
            "IngestThrottlesAlarm",
            "AWS/Lambda Throttles",
            {"FunctionName": "<IngestFunction>"},
            "GreaterThanThreshold",
            0,
            id="ingest-throttles",
        ),
        pytest.param(
            "Classify5xxAlarm",
            "AWS/Lambda Url5xxCount",
            {"FunctionName": "<ClassifyFunction>"},
            "GreaterThanThreshold",
            0,
            id="classify-5xx",
        ),
        pytest.param(
            "ClassifyLatencyAlarm",
            "AWS/Lambda Duration",
            {"FunctionName": "<ClassifyFunction>"},
            "GreaterThanThreshold",
            "3000",
            id="classify-p99",
        ),
        pytest.param(
            "JobRunsMissingAlarm",
            "Pomona RunsSucceeded",
            JOB,
            "LessThanThreshold",
            1,
            id="job-no-healthy-run",
        ),
        pytest.param(
            "JobRunFailedAlarm",
            "Pomona RunsFailed",
            JOB,
            "GreaterThanOrEqualToThreshold",
            1,
            id="job-run-failed",
        ),
    ],
)
def test_each_alarm_watches_its_resource_and_metric(
    template: dict[str, Any],
    name: str,
    metric: str,
    dimensions: dict[str, str],
    comparison: str,
    threshold: str | int,
) -> None:
    alarm = _alarms(template)[name]

    assert _watched(alarm) == (*metric.split(), dimensions)
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == (comparison, threshold)


def test_classify_latency_alarm_is_a_sustained_p99() -> None:
    alarm = _alarms(stack(ClassifyP99AlarmMs="1500"))["ClassifyLatencyAlarm"]

    assert (alarm["ExtendedStatistic"], alarm["Threshold"]) == ("p99", "1500")
    assert "Statistic" not in alarm
    # One slow request in a quiet 5 minutes is that period's p99: three periods in a row page, one does not.
    assert alarm["EvaluationPeriods"] == alarm["DatapointsToAlarm"] == 3


def test_images_age_alarm_leaves_most_of_the_retention_to_act_in(template: dict[str, Any]) -> None:
    alarm = _alarms(template)["ImagesAgeAlarm"]
    queue = resources(template, "AWS::SQS::Queue")["ImagesQueue"]
    parameter = decoded()["Parameters"]["ImagesQueueAgeAlarmSeconds"]

    # Six hours by default: several runs late, 13 days and more before SQS drops the message.
    assert int(alarm["Threshold"]) == 6 * 3600
    assert alarm["Statistic"] == "Maximum"
    assert parameter["MaxValue"] <= queue["MessageRetentionPeriod"] // 2


@pytest.mark.parametrize(
    ("period", "missed"), [("3600", "3"), ("900", "8")], ids=["default", "quarter-hours"]
)
def test_job_stalled_alarm_is_missing_healthy_runs_while_images_wait(period: str, missed: str) -> None:
    # GIVEN the stack deployed for this run period and number of missed periods
    alarms = _alarms(stack(JobRunPeriodSeconds=period, JobMissedRunPeriods=missed))
    missing, waiting = alarms["JobRunsMissingAlarm"], alarms["ImagesWaitingAlarm"]

    # THEN no healthy run in `missed` whole periods in a row breaches, a period without any run included
    assert (missing["Statistic"], missing["Period"]) == ("Sum", period)
    assert missing["EvaluationPeriods"] == missing["DatapointsToAlarm"] == missed
    assert missing["TreatMissingData"] == "breaching"
    # AND images wait when visible or in flight (a hung run holds its messages in flight)
    (result,) = [m for m in waiting["Metrics"] if m["ReturnData"]]
    inputs = {m["Id"]: _watched(m["MetricStat"]["Metric"]) for m in waiting["Metrics"] if "MetricStat" in m}
    assert inputs == {
        "visible": ("AWS/SQS", "ApproximateNumberOfMessagesVisible", IMAGES_QUEUE),
        "inflight": ("AWS/SQS", "ApproximateNumberOfMessagesNotVisible", IMAGES_QUEUE),
    }
    assert result["Expression"] == "visible + inflight"
    assert (waiting["ComparisonOperator"], waiting["Threshold"]) == ("GreaterThanThreshold", 0)
    # AND only both together raise the alarm that notifies: a quiet queue in backlog mode starts no run
    assert (
        alarms["JobStalledAlarm"]["AlarmRule"]
        == "ALARM(<JobRunsMissingAlarm>) AND ALARM(<ImagesWaitingAlarm>)"
    )


def test_job_alarm_window_fits_cloudwatch_for_every_allowed_period() -> None:
    parameters = decoded()["Parameters"]
    most = parameters["JobMissedRunPeriods"]["MaxValue"]

    # CloudWatch: a period is a multiple of 60 s; an alarm looks back 1 day at most (periods under 1 h), else 7.
    for period in parameters["JobRunPeriodSeconds"]["AllowedValues"]:
        assert period % 60 == 0
        assert period * most <= (86400 if period < 3600 else 7 * 86400)


def test_job_metrics_namespace_agrees_across_job_chart_grant_and_alarms(template: dict[str, Any]) -> None:
    watched = {
        a["Namespace"] for a in _alarms(template).values() if a.get("MetricName", "").startswith("Runs")
    }
    (grant,) = [s for s in identity_policy(template, "JobRole") if s["Action"] == "cloudwatch:PutMetricData"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    assert watched == {grant["Condition"]["StringEquals"]["cloudwatch:namespace"]}
    assert watched == {Settings.from_env({}).metrics_namespace, values["config"]["POMONA_METRICS_NAMESPACE"]}


def test_alarms_notify_the_topic_when_one_is_given() -> None:
    alarms = _alarms(stack(AlarmTopicArn=TOPIC))

    actions = {name: (a.get("AlarmActions"), a.get("OKActions")) for name, a in alarms.items()}

    assert actions == {name: ([TOPIC], [TOPIC]) for name in NOTIFYING_ALARMS} | dict.fromkeys(
        SILENT_ALARMS, (None, None)
    )


def test_alarms_exist_but_notify_no_one_without_a_topic(template: dict[str, Any]) -> None:
    alarms = _alarms(template)

    assert set(alarms) == NOTIFYING_ALARMS | SILENT_ALARMS
    notifying = [
        n for n, a in alarms.items() if {"AlarmActions", "OKActions", "InsufficientDataActions"} & set(a)
    ]
    assert notifying == []
