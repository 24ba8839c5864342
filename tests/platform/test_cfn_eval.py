"""The CloudFormation evaluator the template's tests read it with (`cfn_eval`): each function, or a refusal."""

from __future__ import annotations

from typing import Any

import pytest
from cfn_eval import UnsupportedFunctionError, evaluate, parameter_values, resolve

# A template using every function the evaluator knows, and a condition on a parameter.
TEMPLATE: dict[str, Any] = {
    "Parameters": {"Name": {"Type": "String"}, "Topic": {"Type": "String", "Default": ""}},
    "Conditions": {"HasTopic": {"Fn::Not": [{"Fn::Equals": [{"Ref": "Topic"}, ""]}]}},
    "Resources": {
        "Queue": {
            "Type": "AWS::SQS::Queue",
            "Properties": {
                "QueueName": {"Fn::Sub": "${Name}-images"},
                "Tags": [{"Fn::If": ["HasTopic", {"Key": "topic"}, {"Ref": "AWS::NoValue"}]}],
            },
        },
        "Alarm": {
            "Type": "AWS::CloudWatch::Alarm",
            "Condition": "HasTopic",
            "Properties": {
                "AlarmActions": [{"Ref": "Topic"}],
                "Dimensions": [{"Value": {"Fn::GetAtt": ["Queue", "QueueName"]}}],
                "Region": {"Fn::Select": [3, {"Fn::Split": [":", {"Ref": "Topic"}]}]},
                "Namespace": {"Fn::Join": ["_", {"Fn::Split": ["-", {"Ref": "Name"}]}]},
            },
        },
    },
    "Outputs": {"QueueUrl": {"Value": {"Fn::Sub": ["${Url}/x", {"Url": {"Ref": "Queue"}}]}}},
}
TOPIC = "arn:aws:sns:eu-west-1:123456789012:alarms"


def _stack(**given: str) -> dict[str, Any]:
    return evaluate(TEMPLATE, parameter_values(TEMPLATE, given))


def test_parameters_take_their_defaults_unless_given() -> None:
    assert parameter_values(TEMPLATE, {"Name": "p"}) == {"Name": "p", "Topic": ""}
    assert parameter_values(TEMPLATE, {"Name": "p", "Topic": TOPIC})["Topic"] == TOPIC


def test_a_condition_that_holds_keeps_its_resource_and_chooses_its_branch() -> None:
    stack = _stack(Name="my-pomona", Topic=TOPIC)

    assert stack["Resources"]["Queue"]["Properties"] == {
        "QueueName": "my-pomona-images",
        "Tags": [{"Key": "topic"}],
    }
    assert stack["Resources"]["Alarm"]["Properties"] == {
        "AlarmActions": [TOPIC],
        "Dimensions": [{"Value": "<Queue.QueueName>"}],
        "Region": "eu-west-1",
        "Namespace": "my_pomona",
    }


def test_a_condition_that_does_not_hold_drops_its_resource_and_no_value_items() -> None:
    stack = _stack(Name="pomona")

    assert set(stack["Resources"]) == {"Queue"}
    assert stack["Resources"]["Queue"]["Properties"]["Tags"] == []


def test_references_to_resources_name_their_logical_id() -> None:
    assert _stack(Name="pomona")["Outputs"]["QueueUrl"]["Value"] == "<Queue>/x"


def test_unknown_functions_are_refused_not_passed_through() -> None:
    with pytest.raises(UnsupportedFunctionError, match="got Fn::FindInMap"):
        resolve({"Fn::FindInMap": ["Map", "a", "b"]}, TEMPLATE, {})


def test_unknown_conditions_are_refused() -> None:
    template = {"Conditions": {"Either": {"Fn::Or": [{"Fn::Equals": ["a", "a"]}]}}}

    with pytest.raises(UnsupportedFunctionError, match="got Fn::Or"):
        resolve({"Fn::If": ["Either", "yes", "no"]}, template, {})
