"""What the ingestion Lambda emits: its CloudWatch metrics (the EMF documents powertools prints) and its logs."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import pytest


@dataclass
class Emitted:
    """The metrics printed to stdout so far, read through `capsys`, and the log records collected so far."""

    capsys: pytest.CaptureFixture[str]
    records: list[logging.LogRecord]
    documents: list[dict[str, Any]] = field(default_factory=list)

    def metrics(self, name: str) -> list[dict[str, Any]]:
        """Each data point of metric `name` as its dimensions plus `value`, in the order they were emitted."""
        out = self.capsys.readouterr().out
        self.documents += [json.loads(line) for line in out.splitlines() if line.startswith('{"_aws"')]
        points = []
        for document in self.documents:
            for directive in document["_aws"]["CloudWatchMetrics"]:
                if any(metric["Name"] == name for metric in directive["Metrics"]):
                    dimensions = {d: document[d] for group in directive["Dimensions"] for d in group}
                    values = document[name] if isinstance(document[name], list) else [document[name]]
                    points += [dimensions | {"value": value} for value in values]
        return points

    def count(self, name: str, **dimensions: str) -> float:
        """The sum of metric `name` over the data points carrying these dimension values."""
        return sum(
            point["value"]
            for point in self.metrics(name)
            if all(point.get(dimension) == value for dimension, value in dimensions.items())
        )

    def logs(self, message: str) -> list[logging.LogRecord]:
        return [record for record in self.records if record.getMessage() == message]


class Collect(logging.Handler):
    """Keeps every record it is handed."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
