"""The CSV export: one row per image, no cell a spreadsheet would run as a formula, and the features read as
one matrix."""

from __future__ import annotations

import csv
import io

import numpy as np
import pyarrow as pa
import pytest

from pomona.core.errors import PomonaError
from pomona.ml.pca import PcaState, fit_pca
from pomona.ops.export import features_matrix, neutralised, write_csv


@pytest.mark.parametrize(
    ("cell", "shown"),
    [
        pytest.param('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")', id="formula"),
        pytest.param("+1+1", "'+1+1", id="plus"),
        pytest.param("-2+3", "'-2+3", id="minus"),
        pytest.param("@SUM(A1)", "'@SUM(A1)", id="at"),
        pytest.param("\tcmd", "'\tcmd", id="tab"),
        pytest.param("Apple Red", "Apple Red", id="plain"),
        pytest.param("uploads/Apple/a=b.jpg", "uploads/Apple/a=b.jpg", id="equals-inside"),
    ],
)
def test_formula_leading_cells_are_neutralised(cell: str, shown: str) -> None:
    assert neutralised(cell) == shown


def test_csv_rows_carry_key_label_and_components_with_text_cells_neutralised() -> None:
    # GIVEN three images, one of them uploaded under a formula-looking label
    rng = np.random.default_rng(0)
    features = rng.standard_normal((3, 6)).astype(np.float32)
    model = fit_pca(PcaState.from_rows(features), n_components=2)
    table = pa.table(
        {
            "key": ["uploads/Apple/a.jpg", "uploads/=cmd/b.jpg", "uploads/Pear/c.jpg"],
            "label": ["Apple", "=cmd()", "Pear"],
            "features": pa.array(list(features), pa.list_(pa.float32())),
        }
    )

    # WHEN it is written
    out = io.StringIO()
    rows = write_csv(table, model, out)

    # THEN a header, one row per image, labels shown as text, components as numbers
    written = list(csv.reader(io.StringIO(out.getvalue())))
    assert rows == 3
    assert written[0] == ["key", "label", "pc_1", "pc_2"]
    assert [row[1] for row in written[1:]] == ["Apple", "'=cmd()", "Pear"]
    assert [len(row) for row in written[1:]] == [4, 4, 4]
    assert np.isfinite([float(value) for row in written[1:] for value in row[2:]]).all()


def test_features_are_flattened_to_a_matrix_across_chunks() -> None:
    # GIVEN a features column in two chunks, the second a slice, as a concatenated read gives
    x = np.arange(15, dtype=np.float32).reshape(5, 3)
    first = pa.array(list(x[:2]), pa.list_(pa.float32()))
    second = pa.array(list(x), pa.list_(pa.float32())).slice(2)

    matrix = features_matrix(pa.chunked_array([first, second]))

    assert matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix, x)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        pytest.param(
            [[1.0, 2.0], [3.0], [4.0, 5.0], []],
            r"expected 2 feature values .* found \[0, 1\] in 2 row\(s\), the first at row 1",
            id="ragged",
        ),
        pytest.param(
            [[1.0, 2.0], None], r"expected features in every row, found 1 row\(s\) without", id="null"
        ),
    ],
)
def test_rows_without_the_same_number_of_features_are_refused(
    rows: list[list[float] | None], message: str
) -> None:
    with pytest.raises(PomonaError, match=message):
        features_matrix(pa.chunked_array([pa.array(rows, pa.list_(pa.float32()))]))
