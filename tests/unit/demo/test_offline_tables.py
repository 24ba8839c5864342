"""Where the demo's offline tables find each registered file: the downloaded copy in `--out`, by path."""

from __future__ import annotations

from pathlib import Path

import pytest

from pomona.core.settings import Settings
from pomona.demo.tables import _downloaded

SETTINGS = Settings(bucket="pomona-images", output_prefix="runs/2026/")


def test_a_registered_file_maps_to_its_download_with_the_batch_folder_unencoded(tmp_path: Path) -> None:
    path = "s3://pomona-images/runs/2026/features/batch_id=20261207T000000Z-1a2b3c4d/part-00000.parquet"

    found = _downloaded(path, SETTINGS, tmp_path)

    # `=` stays as it is: Path.as_uri would write %3D, which no reader unquotes
    assert (
        found == f"file://{tmp_path.resolve()}/features/batch_id=20261207T000000Z-1a2b3c4d/part-00000.parquet"
    )


@pytest.mark.parametrize(
    "path",
    [
        "s3://other-bucket/runs/2026/features/x.parquet",
        "s3://pomona-images/features/x.parquet",
        "s3://pomona-images/runs/2026/../../../etc/passwd",
    ],
)
def test_a_file_outside_the_deployments_outputs_is_refused_saying_where_it_was_expected(
    path: str, tmp_path: Path
) -> None:
    with pytest.raises(
        ValueError, match=r"expected a table file under s3://pomona-images/runs/2026/, found s3://"
    ):
        _downloaded(path, SETTINGS, tmp_path)
