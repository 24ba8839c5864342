"""The stack's Glue database of the Iceberg tables, and who may commit to them: the driver alone, to its two
tables, never deleting one or writing elsewhere."""

from __future__ import annotations

import pytest
from template_stack import ACCOUNT, BUCKET_ARN, OUTPUT_PREFIXES, allowed, may, stack

from pomona.core.resources import describe
from pomona.core.settings import Settings
from pomona.featurize.tables import SCHEMAS

GLUE = f"arn:aws:glue:us-east-1:{ACCOUNT}"
# What pyiceberg's Glue catalog calls to create, load and commit a table (pomona.featurize.tables).
COMMIT_ACTIONS = ["glue:GetDatabase", "glue:GetTable", "glue:CreateTable", "glue:UpdateTable"]
ROLES = ["JobRole", "ExecutorRole", "IngestRole", "ClassifyRole", "TriggerRole"]


@pytest.mark.parametrize("name", ["pomona", "fruits-eu-prod"])
def test_the_database_is_the_resources_one_and_lives_with_the_outputs(name: str) -> None:
    template = stack(Name=name, OutputPrefix="runs/2025/")
    database = template["Resources"]["TablesDatabase"]

    assert database["DeletionPolicy"] == database["UpdateReplacePolicy"] == "Retain"
    assert database["Properties"]["DatabaseInput"]["Name"] == describe(name).glue_database
    assert database["Properties"]["DatabaseInput"]["LocationUri"] == f"s3://{name}-images/runs/2025/iceberg/"
    assert template["Outputs"]["TablesDatabaseName"]["Value"] == "<TablesDatabase>"
    assert describe().glue_database == Settings().glue_database


@pytest.mark.parametrize("table", sorted(SCHEMAS))
@pytest.mark.parametrize("action", COMMIT_ACTIONS)
def test_the_driver_may_create_load_and_commit_its_tables(action: str, table: str) -> None:
    template = stack()
    for resource in (
        f"{GLUE}:catalog",
        f"{GLUE}:database/<TablesDatabase>",
        f"{GLUE}:table/<TablesDatabase>/{table}",
    ):
        assert may(template, "JobRole", action, resource) == "allow"


@pytest.mark.parametrize(
    ("action", "resource"),
    [
        ("glue:DeleteTable", "table/<TablesDatabase>/features"),
        ("glue:DeleteDatabase", "database/<TablesDatabase>"),
        ("glue:CreateDatabase", "database/<TablesDatabase>"),
        ("glue:UpdateTable", "table/<TablesDatabase>/other"),
        ("glue:UpdateTable", "table/another_database/features"),
        ("glue:GetTable", "table/another_database/features"),
        ("glue:CreateTable", "database/another_database"),
    ],
)
def test_the_driver_may_not_delete_tables_or_touch_any_other(action: str, resource: str) -> None:
    assert may(stack(), "JobRole", action, f"{GLUE}:{resource}") == "implicit deny"


@pytest.mark.parametrize("role", ROLES[1:])
def test_no_other_role_has_any_glue_permission(role: str) -> None:
    assert [action for action in allowed(stack(), role) if action.startswith("glue:")] == []


@OUTPUT_PREFIXES
def test_the_driver_writes_table_metadata_under_its_prefix_and_deletes_none(prefix: str) -> None:
    template = stack(OutputPrefix=prefix)
    metadata = f"{BUCKET_ARN}/{prefix}iceberg/features/metadata/00001-x.metadata.json"

    assert may(template, "JobRole", "s3:PutObject", metadata) == "allow"
    assert may(template, "JobRole", "s3:GetObject", metadata) == "allow"
    assert may(template, "JobRole", "s3:DeleteObject", metadata) == "implicit deny"
    # and the part files it registers, read for their footers
    assert (
        may(
            template,
            "JobRole",
            "s3:GetObject",
            f"{BUCKET_ARN}/{prefix}features/batch_id=b/part-00000.parquet",
        )
        == "allow"
    )
    # the executors never touch the tables' metadata
    assert may(template, "ExecutorRole", "s3:PutObject", metadata) == "implicit deny"
