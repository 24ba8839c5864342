"""The classify Lambda in the template: its role reads committed models only, its URL takes IAM callers only."""

from __future__ import annotations

from typing import Any

import pytest
from cfn_eval import resources
from dockerfiles import stage_env
from iam_policies import Request, decide, lambda_permission_statement
from manifests import ROOT
from template_stack import (
    APP_ROLE,
    BUCKET_ARN,
    OPERATOR,
    OUTPUT_PREFIXES,
    PARAMETERS,
    allowed,
    may,
    stack,
    trust,
)

from pomona.core.resources import CLASSIFY_SERVICE, describe
from pomona.core.settings import ENV_VARS, Settings

# What a SigV4-signed request to an AWS_IAM function URL carries, for both actions Lambda checks.
THROUGH_THE_URL = {"lambda:FunctionUrlAuthType": "AWS_IAM", "lambda:InvokedViaFunctionUrl": "true"}


@OUTPUT_PREFIXES
@pytest.mark.parametrize(
    "key",
    [
        "models/pca/LATEST",
        "models/pca/v3-20260101T000000Z-1a2b/classifier.npz",
        "models/pca/v3-20260101T000000Z-1a2b/metadata.json",
        "models/catalog/x.json",
        "models/catalog/Apple Red.json",
    ],
)
def test_classify_role_reads_the_committed_models_and_catalog(prefix: str, key: str) -> None:
    template = stack(OutputPrefix=prefix)

    assert may(template, "ClassifyRole", "s3:GetObject", f"{BUCKET_ARN}/{prefix}{key}") == "allow"


@OUTPUT_PREFIXES
@pytest.mark.parametrize(
    "key",
    [
        "uploads/Apple Red/photo.jpg",
        "quarantine/corrupt/uploads/Apple Red/photo.jpg",
        "quarantine/corrupt/uploads/Apple Red/photo.jpg.reason.json",
        "{prefix}features/batch_id=b1/part-00000.parquet",
        "{prefix}projections/batch_id=b1/part-00000.parquet",
        "{prefix}batches/b1/manifest.json",
        "{prefix}locks/featurize.json",
    ],
)
def test_classify_role_reads_nothing_but_models(prefix: str, key: str) -> None:
    template = stack(OutputPrefix=prefix)

    assert (
        may(template, "ClassifyRole", "s3:GetObject", f"{BUCKET_ARN}/{key.format(prefix=prefix)}")
        == "implicit deny"
    )


def test_classify_role_reads_only_its_own_output_prefixs_models() -> None:
    # Another deployment's outputs in the same bucket (at its root here) are not this one's to read.
    template = stack(OutputPrefix="runs/2025/")

    assert may(template, "ClassifyRole", "s3:GetObject", f"{BUCKET_ARN}/models/pca/LATEST") == "implicit deny"


@OUTPUT_PREFIXES
@pytest.mark.parametrize(
    "action",
    [
        "s3:PutObject",
        "s3:DeleteObject",
        "s3:DeleteObjectVersion",
        "s3:PutObjectTagging",
        "s3:AbortMultipartUpload",
        "s3:GetObjectVersion",
    ],
)
@pytest.mark.parametrize("key", ["models/pca/LATEST", "models/catalog/x.json"])
def test_classify_role_may_not_write_or_delete_models(prefix: str, action: str, key: str) -> None:
    template = stack(OutputPrefix=prefix)

    assert may(template, "ClassifyRole", action, f"{BUCKET_ARN}/{prefix}{key}") == "implicit deny"


@OUTPUT_PREFIXES
@pytest.mark.parametrize(
    ("listed", "expected"),
    [
        pytest.param("{prefix}models/", "allow", id="models"),
        pytest.param("{prefix}models/catalog/x.json", "allow", id="a-catalog-entry"),
        pytest.param("{prefix}models/pca/LATEST", "allow", id="latest"),
        pytest.param("uploads/", "implicit deny", id="uploads"),
        pytest.param("quarantine/", "implicit deny", id="quarantine"),
        pytest.param("{prefix}features/", "implicit deny", id="features"),
        pytest.param("", "implicit deny", id="the-whole-bucket"),
        pytest.param(None, "implicit deny", id="no-prefix"),
    ],
)
def test_classify_role_lists_only_under_models(prefix: str, listed: str | None, expected: str) -> None:
    template = stack(OutputPrefix=prefix)
    context = {} if listed is None else {"s3:prefix": listed.format(prefix=prefix)}

    assert may(template, "ClassifyRole", "s3:ListBucket", BUCKET_ARN, **context) == expected


def test_classify_role_has_nothing_but_models_logs_and_traces(template: dict[str, Any]) -> None:
    grants = allowed(template, "ClassifyRole")
    statement = trust(template, "ClassifyRole")

    # No queue, no table, no other bucket action: the answer is computed in memory from what it reads.
    assert set(grants) == {
        "s3:GetObject",
        "s3:ListBucket",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "xray:PutTraceSegments",
        "xray:PutTelemetryRecords",
    }
    assert grants["logs:PutLogEvents"] == {"<ClassifyLogGroup.Arn>"}
    assert (statement["Principal"], statement["Action"]) == (
        {"Service": "lambda.amazonaws.com"},
        "sts:AssumeRole",
    )


@pytest.mark.parametrize("parameters", [{}, {"AppInvokeRoleArn": APP_ROLE}], ids=["default", "app-role"])
def test_function_urls_always_authenticate_with_iam(parameters: dict[str, str]) -> None:
    template = stack(**parameters)
    urls = resources(template, "AWS::Lambda::Url")
    permissions = resources(template, "AWS::Lambda::Permission").values()

    assert {name: (url["TargetFunctionArn"], url["AuthType"]) for name, url in urls.items()} == {
        "ClassifyFunctionUrl": ("<ClassifyFunction.Arn>", "AWS_IAM")
    }
    # Never a public URL, nor a permission for anyone.
    assert [p for p in permissions if p.get("FunctionUrlAuthType") == "NONE" or p["Principal"] == "*"] == []
    assert template["Outputs"]["ClassifyFunctionUrl"]["Value"] == "<ClassifyFunctionUrl.FunctionUrl>"


def _invoke(template: dict[str, Any], principal: str, action: str, **context: str) -> str:
    """The decision on `principal` calling `action` on the classify function, by the function's own policy."""
    policy = [lambda_permission_statement(p) for p in resources(template, "AWS::Lambda::Permission").values()]
    request = Request(principal=principal, action=action, resource="<ClassifyFunction.Arn>", context=context)
    return decide(request, resource_policy=policy)


@pytest.mark.parametrize(
    ("principal", "action", "context", "expected"),
    [
        pytest.param(APP_ROLE, "lambda:InvokeFunctionUrl", THROUGH_THE_URL, "allow", id="app-url"),
        # Function URLs created since October 2025 also check lambda:InvokeFunction, through the URL.
        pytest.param(APP_ROLE, "lambda:InvokeFunction", THROUGH_THE_URL, "allow", id="app-url-invoke"),
        pytest.param(APP_ROLE, "lambda:InvokeFunction", {}, "implicit deny", id="app-invoke-api"),
        pytest.param(
            APP_ROLE,
            "lambda:InvokeFunctionUrl",
            {"lambda:FunctionUrlAuthType": "NONE"},
            "implicit deny",
            id="app-unauthenticated-url",
        ),
        pytest.param(
            OPERATOR, "lambda:InvokeFunctionUrl", THROUGH_THE_URL, "implicit deny", id="another-role"
        ),
    ],
)
def test_app_role_may_call_the_classify_url_only(
    principal: str, action: str, context: dict[str, str], expected: str
) -> None:
    template = stack(AppInvokeRoleArn=APP_ROLE)

    assert _invoke(template, principal, action, **context) == expected


def test_without_app_role_the_function_grants_no_one() -> None:
    template = stack()

    assert resources(template, "AWS::Lambda::Permission") == {}
    assert _invoke(template, APP_ROLE, "lambda:InvokeFunctionUrl", **THROUGH_THE_URL) == "implicit deny"


@OUTPUT_PREFIXES
def test_classify_function_runs_its_image_with_known_settings(prefix: str) -> None:
    # GIVEN the function as deployed with this output prefix
    template = stack(OutputPrefix=prefix)
    function = resources(template, "AWS::Lambda::Function")["ClassifyFunction"]
    variables = function["Environment"]["Variables"]

    # WHEN its environment is read as the handler reads it
    settings = Settings.from_env({k: v for k, v in variables.items() if not k.startswith("POWERTOOLS_")})

    # THEN every name is a setting: this stack's bucket and prefix, the default model check, the image's weights
    assert {v for v in variables if not v.startswith("POWERTOOLS_")} <= set(ENV_VARS)
    assert (settings.bucket, settings.output_prefix, settings.model_check_seconds) == (
        describe().bucket,
        prefix,
        Settings().model_check_seconds,
    )
    image = stage_env(ROOT / "Dockerfile.classify")
    assert (variables["POMONA_WEIGHTS"], variables["POMONA_CACHE_DIR"]) == (
        image["POMONA_WEIGHTS"],
        image["POMONA_CACHE_DIR"],
    )
    assert variables["POWERTOOLS_SERVICE_NAME"] == image["POWERTOOLS_SERVICE_NAME"] == CLASSIFY_SERVICE
    assert (function["PackageType"], function["Code"]["ImageUri"], function["Role"]) == (
        "Image",
        PARAMETERS["ClassifyImageUri"],
        "<ClassifyRole.Arn>",
    )
    assert (function["Architectures"], function["Timeout"], function["MemorySize"]) == (
        ["x86_64"],
        30,
        "1024",
    )
    assert function["LoggingConfig"]["LogGroup"] == "<ClassifyLogGroup>"
    assert function["TracingConfig"] == {"Mode": "Active"}


@pytest.mark.parametrize(("reserved", "expected"), [("0", None), ("5", "5")], ids=["unreserved", "reserved"])
def test_classify_reserved_concurrency_is_optional(reserved: str, expected: str | None) -> None:
    template = stack(ClassifyReservedConcurrency=reserved)
    function = resources(template, "AWS::Lambda::Function")["ClassifyFunction"]

    assert function.get("ReservedConcurrentExecutions") == expected


def test_nothing_but_its_url_invokes_the_classify_function(template: dict[str, Any]) -> None:
    mappings = resources(template, "AWS::Lambda::EventSourceMapping").values()

    assert [m for m in mappings if m["FunctionName"].startswith("<ClassifyFunction")] == []
