"""Fixtures for the ingestion Lambda's tests: what it emits, and an S3 that denies chosen keys."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from lambda_output import Collect, Emitted

from fault_proxy import Denials, FlakyProxy
from pomona.core.settings import Settings
from pomona.ingest import handler


@pytest.fixture
def emitted(capsys: pytest.CaptureFixture[str]) -> Iterator[Emitted]:
    """What the handler emitted during the test; its log records are collected on the service's own logger."""
    collect = Collect()
    service_logger = logging.getLogger(handler.logger.service)
    service_logger.addHandler(collect)
    try:
        yield Emitted(capsys, collect.records)
    finally:
        service_logger.removeHandler(collect)


@pytest.fixture
def denying_s3(ingest: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Denials]:
    """Every S3 client made from here on reaches the deployment through a proxy that refuses what the test
    denies; SQS goes direct."""
    denials = Denials()
    with FlakyProxy(ingest.endpoint_url or "", denials) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        handler._ingestor.cache_clear()
        yield denials
        handler._ingestor.cache_clear()
