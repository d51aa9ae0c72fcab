"""Waivers, rule options and the public check functions."""

from __future__ import annotations

import pytest

from policy import RULES, Waiver, check_graph, check_resource, rule
from policy._model import Node

UNTAGGED_GROUP = ("aws:cloudwatch/logGroup:LogGroup", "llm-logs", {"retentionInDays": 30})


def test_every_rule_has_checks_description_and_remediation():
    names = [r.name for r in RULES]
    assert len(names) == len(set(names)) == 8
    for r in RULES:
        assert r.resource_checks or r.graph_checks
        assert len(r.description) > 20 and len(r.remediation) > 20


def test_waiver_silences_only_its_rule_type_and_name():
    waiver = Waiver("required-tags", "aws:cloudwatch/*", "llm-*", "test: tags come from elsewhere")
    assert [v.rule for v in check_resource(*UNTAGGED_GROUP)] == ["required-tags"]
    assert check_resource(*UNTAGGED_GROUP, waivers=[waiver]) == []
    other_name = ("aws:cloudwatch/logGroup:LogGroup", "gateway-logs", {"retentionInDays": 30})
    assert check_resource(*other_name, waivers=[waiver])
    other_rule = Waiver("log-retention", "aws:cloudwatch/*", "llm-*", "test")
    assert check_resource(*UNTAGGED_GROUP, waivers=[other_rule])


def test_waiver_needs_a_reason():
    with pytest.raises(ValueError, match="needs a reason"):
        Waiver("required-tags", "*", "*", "  ")


def test_graph_waiver():
    endpoint = Node("aws:sagemaker/endpoint:Endpoint", "llm-endpoint", {"name": "e", "tags": {}})
    assert [v.rule for v in rule("log-retention").check_graph([endpoint])] == ["log-retention"]
    waiver = Waiver("log-retention", "aws:sagemaker/endpoint:Endpoint", "llm-*", "test")
    assert rule("log-retention").check_graph([endpoint], waivers=[waiver]) == []


def test_check_graph_runs_resource_and_graph_checks_with_urns():
    endpoint = Node("aws:sagemaker/endpoint:Endpoint", "llm-endpoint", {"name": "e"}, urn="urn:e")
    found = {(v.rule, v.urn) for v in check_graph([endpoint])}
    assert found == {("required-tags", "urn:e"), ("log-retention", "urn:e")}


def test_unknown_rule_name():
    with pytest.raises(KeyError, match="rules: iam-least-privilege"):
        rule("no-such-rule")
