"""An SQS client whose answers a test lays out with botocore's Stubber: SQS's refusals and move tasks, which moto
cannot give."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber


@pytest.fixture
def sqs() -> Iterator[tuple[Any, Stubber]]:
    client = boto3.client(
        "sqs",
        region_name="us-east-1",
        endpoint_url="https://sqs.us-east-1.amazonaws.com",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # pragma: allowlist secret (a stub, never sent)
    )
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()
