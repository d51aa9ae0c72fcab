"""The WAF web ACL on the gateway's REST API stage: args, its graph on its own and in the aws stack, the policy."""

from __future__ import annotations

import json

import pytest

from components import InvalidArgs
from components.endpoint_monitoring import EndpointMonitoringArgs, dashboard_body
from components.waf import ApiWaf, ApiWafArgs, acl_dimensions, rate_limit_bounds, stage_arn
from policy import Node, check_graph, rule
from stacks.config import ConfigError
from tests.pulumi_harness import refused_stack, run_program, run_stack

STAGE = stage_arn("aws", "eu-west-1", "abc123", "prod")
BASE = dict(stage_arn=STAGE, region="eu-west-1", rate_limit_per_ip=1000)
WAF_TYPES = ("aws:wafv2/webAcl:WebAcl", "aws:wafv2/webAclAssociation:WebAclAssociation",
             "aws:wafv2/webAclLoggingConfiguration:WebAclLoggingConfiguration")


def test_the_stage_arn_has_api_gateways_form():
    # botocore wafv2 AssociateWebACL, ResourceArn: arn:partition:apigateway:region::/restapis/api-id/stages/stage-name
    assert STAGE == "arn:aws:apigateway:eu-west-1::/restapis/abc123/stages/prod"


def test_the_rate_limit_bounds_are_wafs():
    # botocore's wafv2 RateLimit: min 10 (lowered from 100 in 2024), max 2,000,000,000.
    assert rate_limit_bounds() == (10, 2_000_000_000)
    ApiWafArgs(**{**BASE, "rate_limit_per_ip": 10}).validate()


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"rate_limit_per_ip": 9}, "rate_limit_per_ip", "between 10 and 2,000,000,000"),
        ({"rate_limit_per_ip": 0}, "rate_limit_per_ip", "0 turns WAF off"),
        ({"rate_limit_per_ip": True}, "rate_limit_per_ip", "whole number"),
        ({"rate_limit_per_ip": 100.5}, "rate_limit_per_ip", "whole number"),
        ({"log_retention_days": 45}, "log_retention_days", "not a CloudWatch retention period"),
        ({"managed_rule_action": "block"}, "managed_rule_action", "'block' is not one of: count, none"),
        ({"name": "All"}, "name", "not a WAF web ACL/metric name"),
        ({"name": "llm.prod"}, "name", "letters, digits"),
        ({"blocked_alarm_threshold": -1}, "blocked_alarm_threshold", ">= 0"),
    ],
)
def test_args_refuse(changes, field, words):
    with pytest.raises(InvalidArgs, match=words) as err:
        ApiWafArgs(**{**BASE, **changes}).validate()
    assert err.value.field == field


@pytest.fixture(scope="module")
def waf():
    def program():
        made = ApiWaf("edge", ApiWafArgs(**BASE, name="chat", alarm_topic_arn="arn:aws:sns:eu-west-1:123456789012:t",
                                         tags={"project": "p", "stack": "dev", "owner": "o"}))
        return {"acl": made.web_acl_arn, "logs": made.log_group_name}

    return run_program(program, stack="dev")


def test_the_acl_is_regional_and_attached_to_the_stage(waf):
    acl = waf.one("aws:wafv2/webAcl:WebAcl")
    assert acl.inputs["scope"] == "REGIONAL" and acl.inputs["defaultAction"] == {"allow": {}}
    association = waf.one("aws:wafv2/webAclAssociation:WebAclAssociation")
    assert association.inputs == {"resourceArn": STAGE, "webAclArn": acl.state["arn"]}


def test_rate_rule_first_then_the_managed_groups_in_count_mode(waf):
    rules = waf.one("aws:wafv2/webAcl:WebAcl").inputs["rules"]
    assert [(r["name"], r["priority"]) for r in rules] == [
        ("rate-limit-per-ip", 0), ("AWSManagedRulesCommonRuleSet", 1), ("AWSManagedRulesKnownBadInputsRuleSet", 2)]
    rate = rules[0]
    assert rate["action"] == {"block": {"customResponse": {
        "responseCode": 429, "customResponseBodyKey": "ip-rate-limited",
        "responseHeaders": [{"name": "Retry-After", "value": "60"}]}}} and "overrideAction" not in rate
    assert rate["statement"] == {"rateBasedStatement": {"aggregateKeyType": "IP", "limit": 1000, "evaluationWindowSec": 300}}
    for managed in rules[1:]:
        assert managed["overrideAction"] == {"count": {}} and "action" not in managed
        assert managed["statement"] == {"managedRuleGroupStatement": {"vendorName": "AWS", "name": managed["name"]}}
    names = [r["visibilityConfig"]["metricName"] for r in rules]
    assert names == ["chat-rate-limit-per-ip", "chat-AWSManagedRulesCommonRuleSet", "chat-AWSManagedRulesKnownBadInputsRuleSet"]
    assert all(r["visibilityConfig"]["cloudwatchMetricsEnabled"] for r in rules)


def test_a_blocked_ip_gets_an_openai_shaped_429(waf):
    (body,) = waf.one("aws:wafv2/webAcl:WebAcl").inputs["customResponseBodies"]
    assert body["key"] == "ip-rate-limited" and body["contentType"] == "APPLICATION_JSON"
    error = json.loads(body["content"])["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "ip_rate_limit_exceeded"
    assert "more than 1000 in 5 minutes" in error["message"] and error["param"] is None


def test_the_managed_groups_block_when_asked():
    def program():
        ApiWaf("edge", ApiWafArgs(**BASE, managed_rule_action="none"))
        return {}

    rules = run_program(program, stack="dev").one("aws:wafv2/webAcl:WebAcl").inputs["rules"]
    assert [r["overrideAction"] for r in rules[1:]] == [{"none": {}}, {"none": {}}]


def test_logs_go_to_a_bounded_aws_waf_logs_group_with_its_own_delivery_policy(waf):
    group = waf.one("aws:cloudwatch/logGroup:LogGroup")
    assert group.inputs["name"] == "aws-waf-logs-chat" and group.inputs["retentionInDays"] == 30
    logging = waf.one("aws:wafv2/webAclLoggingConfiguration:WebAclLoggingConfiguration")
    assert logging.inputs["logDestinationConfigs"] == [group.state["arn"]]
    assert logging.inputs["resourceArn"] == waf.one("aws:wafv2/webAcl:WebAcl").state["arn"]
    policy = waf.one("aws:cloudwatch/logResourcePolicy:LogResourcePolicy")
    assert policy.urn in logging.dependencies  # the group is writable before WAF is told to write
    (statement,) = json.loads(policy.inputs["policyDocument"])["Statement"]
    assert statement["Principal"] == {"Service": "delivery.logs.amazonaws.com"}
    assert statement["Action"] == ["logs:CreateLogStream", "logs:PutLogEvents"]
    assert statement["Resource"] == "arn:aws:logs:eu-west-1:123456789012:log-group:aws-waf-logs-chat:log-stream:*"
    assert statement["Condition"]["StringEquals"] == {"aws:SourceAccount": "123456789012"}


def test_the_blocked_alarm_and_the_dashboard_read_the_same_metric(waf):
    alarm = waf.one("aws:cloudwatch/metricAlarm:MetricAlarm")
    assert (alarm.inputs["namespace"], alarm.inputs["metricName"]) == ("AWS/WAFV2", "BlockedRequests")
    assert alarm.inputs["dimensions"] == {"WebACL": "chat", "Region": "eu-west-1", "Rule": "ALL"}
    assert alarm.inputs["threshold"] == 100 and alarm.inputs["comparisonOperator"] == "GreaterThanThreshold"
    assert alarm.inputs["alarmActions"] == ["arn:aws:sns:eu-west-1:123456789012:t"]
    body = json.loads(dashboard_body(EndpointMonitoringArgs(
        endpoint_name="e", region="eu-west-1", price_per_hour=1.0, max_instances=1, waf_web_acl_name="chat"), "e"))
    (widget,) = [w for w in body["widgets"] if w["properties"]["title"].startswith("WAF")]
    metrics = widget["properties"]["metrics"]
    dims = acl_dimensions(ApiWafArgs(**BASE, name="chat"))
    blocked = ["AWS/WAFV2", "BlockedRequests", "WebACL", dims["WebACL"], "Region", dims["Region"], "Rule", dims["Rule"]]
    assert blocked in [m[:-1] for m in metrics]
    assert {m[1] for m in metrics} == {"AllowedRequests", "BlockedRequests", "CountedRequests"}
    # The rate rule's own blocks, under its visibility metric name.
    assert "chat-rate-limit-per-ip" in [m[7] for m in metrics]
    without = json.loads(dashboard_body(EndpointMonitoringArgs(
        endpoint_name="e", region="eu-west-1", price_per_hour=1.0, max_instances=1), "e"))
    assert not [w for w in without["widgets"] if w["properties"]["title"].startswith("WAF")]


def test_children_are_parented_and_tagged(waf):
    component = waf.one("llminfer:aws:ApiWaf")
    for resource in waf.resources:
        if resource.custom:
            assert resource.parent == component.urn, resource.name
    for type_ in ("aws:wafv2/webAcl:WebAcl", "aws:cloudwatch/logGroup:LogGroup", "aws:cloudwatch/metricAlarm:MetricAlarm"):
        assert waf.one(type_).inputs["tags"]["owner"] == "o"


# --------------------------------------------------------------------------------------------- stack


def test_the_example_stack_puts_waf_on_the_rest_api_stage():
    run = run_stack("aws")
    stage = run.one("aws:apigateway/stage:Stage")
    association = run.one("aws:wafv2/webAclAssociation:WebAclAssociation")
    assert association.inputs["resourceArn"] == stage.state["arn"]
    assert stage.state["arn"].startswith("arn:aws:apigateway:us-east-1::/restapis/")
    acl = run.one("aws:wafv2/webAcl:WebAcl")
    assert acl.inputs["rules"][0]["statement"]["rateBasedStatement"]["limit"] == 2000  # Pulumi.aws.yaml
    topic = run.one("aws:sns/topic:Topic")
    assert run.named("llm-waf-blocked").inputs["alarmActions"] == [topic.state["arn"]]
    dashboard = json.loads(run.one("aws:cloudwatch/dashboard:Dashboard").inputs["dashboardBody"])
    assert any(w["properties"]["title"].startswith("WAF") for w in dashboard["widgets"])
    assert run.outputs["wafLogGroup"] == "aws-waf-logs-llm-gateway-aws"


def test_zero_turns_waf_off():
    run = run_stack("aws", {"wafRateLimitPerIp": 0})
    assert not any(run.of_type(t) for t in WAF_TYPES) and "wafWebAclArn" not in run.outputs
    dashboard = json.loads(run.one("aws:cloudwatch/dashboard:Dashboard").inputs["dashboardBody"])
    assert not any(w["properties"]["title"].startswith("WAF") for w in dashboard["widgets"])


@pytest.mark.parametrize(
    ("overrides", "key", "words"),
    [
        ({"wafRateLimitPerIp": 5}, "wafRateLimitPerIp", "between 10 and"),
        ({"wafRateLimitPerIp": -1}, "wafRateLimitPerIp", ""),
        ({"gatewayMode": "function_url"}, "wafRateLimitPerIp", "gatewayMode function_url has none"),
        ({"wafManagedRulesAction": "block"}, "wafManagedRulesAction", "not one of: count, none"),
    ],
)
def test_bad_waf_config_is_refused_before_anything_exists(overrides, key, words):
    err, run = refused_stack("aws", overrides)
    assert isinstance(err, ConfigError) and err.key == f"llm-inference:{key}"
    assert words in str(err)
    assert not run.resources


# -------------------------------------------------------------------------------------------- policy


def test_policy_wants_every_web_acl_logged_to_a_bounded_aws_waf_logs_group():
    logs = rule("log-retention")
    acl = Node("aws:wafv2/webAcl:WebAcl", "acl", {"arn": "arn:acl"})
    group = Node("aws:cloudwatch/logGroup:LogGroup", "g", {"arn": "arn:g", "name": "aws-waf-logs-x", "retentionInDays": 30})
    logging = Node("aws:wafv2/webAclLoggingConfiguration:WebAclLoggingConfiguration", "l",
                   {"resourceArn": "arn:acl", "logDestinationConfigs": ["arn:g"]})

    def problems(*nodes):
        return [v.message for v in logs.check_graph(list(nodes))]

    assert problems(acl, group, logging) == []
    assert problems(acl, group) == ["web ACL has no WebAclLoggingConfiguration: blocked requests leave no trace; "
                                    "log to aws-waf-logs-*"]
    misnamed = Node(group.type, "g", {**group.props, "name": "/waf/x"})
    assert "must be named aws-waf-logs-" in problems(acl, misnamed, logging)[0]
    assert "not a log group of this stack" in problems(acl, logging)[0]


def test_the_example_stacks_waf_passes_the_whole_policy():
    run = run_stack("aws")
    nodes = [Node(r.type, r.name, {**r.inputs, **r.state}, r.urn) for r in run.resources]
    waf_names = {r.name for r in run.resources if r.parent == run.one("llminfer:aws:ApiWaf").urn}
    assert [v for v in check_graph(nodes) if v.name in waf_names] == []
