"""The classify Lambda, behind a Function URL (AWS_IAM auth): POST a photo's bytes, get the fruit or "not sure".

`POST /?file=apple.jpg` with the photo as the body (Lambda hands it over base64-encoded). 200 with the answer
(`pomona.classify.answering`), 400 with the validation reason for a photo ingestion would reject, 405 for
another method, 503 before any classifier is committed. The model is loaded once per container and reloaded
when LATEST moves (`LatestModel`). `pomona local up` serves this same handler over HTTP on loopback.
"""

from __future__ import annotations

import binascii
import json
import os
from functools import cache
from typing import Any

import boto3
import pybase64
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import LambdaFunctionUrlEvent, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from pomona.classify.answering import UNFAMILIAR, classify_photo
from pomona.classify.model import LatestModel, ModelUnavailableError
from pomona.core.aws import RETRIES
from pomona.core.outputs import S3Files
from pomona.core.resources import CLASSIFY_SERVICE
from pomona.core.settings import Settings
from pomona.validation.checks import Limits

# Named here, not by POWERTOOLS_SERVICE_NAME: a process that hosts both handlers (local mode, the tests) would
# otherwise give them one logger, and quieting this one would quiet ingestion's.
logger = Logger(service=CLASSIFY_SERVICE)
tracer = Tracer()
metrics = Metrics(namespace=os.getenv("POWERTOOLS_METRICS_NAMESPACE", "Pomona"), service=CLASSIFY_SERVICE)

DEFAULT_FILE = "photo"


@cache
def _served() -> tuple[LatestModel, Limits]:
    # Built on first use, not at import: the client reads AWS_ENDPOINT_URL and credentials from the environment.
    settings = Settings.from_env()
    files = S3Files(boto3.client("s3", config=RETRIES), settings.bucket)
    return LatestModel(files, settings, num_threads=os.cpu_count() or 1), Limits.from_settings(settings)


def respond(
    model: LatestModel, limits: Limits, *, method: str, body: bytes, file: str
) -> tuple[int, dict[str, Any]]:
    """The status code and JSON body for one request: the part of the handler every door shares."""
    if method != "POST":
        return 405, {"error": f"expected POST with a photo as the body, got {method}"}
    try:
        served = model.get()
    except ModelUnavailableError as err:
        return 503, {"error": str(err)}
    result = classify_photo(served, body, file=file, limits=limits, catalog=model.catalog)
    return (200 if result["reason"] in {None, UNFAMILIAR} else 400), result


def _body(event: LambdaFunctionUrlEvent) -> bytes:
    raw = event.body or ""
    if not event.is_base64_encoded:
        return raw.encode()
    try:
        return pybase64.b64decode(raw, validate=True)  # SIMD: 40× CPython's on a 12 MP photo
    except binascii.Error:
        return b""  # not base64 after all: judged as an empty photo


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
@event_source(data_class=LambdaFunctionUrlEvent)
def lambda_handler(event: LambdaFunctionUrlEvent, context: LambdaContext) -> dict[str, Any]:
    model, limits = _served()
    file = (event.query_string_parameters or {}).get("file") or DEFAULT_FILE
    status, answer = respond(
        model, limits, method=event.request_context.http.method, body=_body(event), file=file
    )
    outcome = {200: "NotSure", 400: "Rejected", 503: "Unanswerable"}.get(status)
    if answer.get("answered"):
        outcome = "Answered"
    elif answer.get("reason") == UNFAMILIAR:
        outcome = "Unfamiliar"
    if outcome is not None:  # a 405 is not a photo
        metrics.add_metric(name=f"Photos{outcome}", unit=MetricUnit.Count, value=1)
    logger.info("classified", extra={"status": status, "file": file, "label": answer.get("label")})
    body = json.dumps(answer, allow_nan=False)
    return {"statusCode": status, "headers": {"content-type": "application/json"}, "body": body}
