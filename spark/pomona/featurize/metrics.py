"""What a run tells CloudWatch, for the alarms in deploy/template.yaml: whether it ended healthy, and how many images
it committed. Best-effort: a metric that cannot be sent is logged, never a failed run."""

from __future__ import annotations

import logging
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

log = logging.getLogger(__name__)


class RunMetrics:
    """`RunsSucceeded` (committed a batch or found nothing to do), `RunsFailed`, `ImagesCommitted`, `ImagesUnfamiliar`
    (committed images the new classifier scores unfamiliar), each with the deployment's bucket as its one dimension;
    nothing when `namespace` is ""."""

    # `cloudwatch` is boto3's client (typed Any: the dev stubs cover s3, sqs and dynamodb only).
    def __init__(self, cloudwatch: Any, *, namespace: str, bucket: str) -> None:
        self.cloudwatch, self.namespace, self.bucket = cloudwatch, namespace, bucket

    def run_succeeded(self, *, committed: int, unfamiliar: int = 0) -> None:
        self._put({"RunsSucceeded": 1, "ImagesCommitted": committed, "ImagesUnfamiliar": unfamiliar})

    def run_failed(self) -> None:
        self._put({"RunsFailed": 1})

    def _put(self, values: dict[str, int]) -> None:
        if not self.namespace:
            return
        dimensions = [{"Name": "Bucket", "Value": self.bucket}]
        try:
            self.cloudwatch.put_metric_data(
                Namespace=self.namespace,
                MetricData=[
                    {"MetricName": name, "Value": value, "Unit": "Count", "Dimensions": dimensions}
                    for name, value in values.items()
                ],
            )
        except (ClientError, BotoCoreError) as err:
            log.warning("Run metrics not sent", extra={"metrics": sorted(values), "error": str(err)})
