"""The one error wrapper of every `pomona` command: an error Pomona, AWS or the Kubernetes API raises is one line on
stderr and exit code 1; any other error is a bug and keeps its traceback."""

from __future__ import annotations

import pytest
import typer
from botocore.exceptions import ClientError
from kubernetes.client.exceptions import ApiException
from typer.testing import CliRunner

from pomona.cli.errors import one_line_errors
from pomona.core.errors import ContractError


def _command_raising(err: Exception) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    def fail() -> None:
        with one_line_errors():
            raise err

    return app


def _not_found() -> ApiException:
    err = ApiException(status=404, reason="Not Found")
    err.body = '{"kind": "Status", "message": "scheduledsparkapplications \\"x\\" not found"}'
    return err


@pytest.mark.parametrize(
    ("err", "line"),
    [
        pytest.param(
            ContractError("label: expected text, got None"),
            "error: label: expected text, got None",
            id="pomona",
        ),
        pytest.param(
            ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "GetObject"),
            "error: AWS said: An error occurred (AccessDenied) when calling the GetObject operation: no. Check "
            "AWS_ENDPOINT_URL (`pomona local up` prints it), the credentials and the POMONA_* settings.",
            id="aws",
        ),
        pytest.param(
            _not_found(),
            'error: Kubernetes API: 404 Not Found: scheduledsparkapplications "x" not found',
            id="k8s",
        ),
    ],
)
def test_an_expected_error_is_one_line_and_exit_1_at_any_width(err: Exception, line: str) -> None:
    result = CliRunner().invoke(_command_raising(err), [], env={"COLUMNS": "40"})

    assert result.exit_code == 1
    assert result.stderr.splitlines() == [line]


def test_any_other_error_is_raised_as_it_is() -> None:
    result = CliRunner().invoke(_command_raising(KeyError("bug")), [])

    assert isinstance(result.exception, KeyError)
