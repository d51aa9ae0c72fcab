"""components.endpoint_monitoring: every alarm's inputs and the dashboard as literals, the metric-math
expressions evaluated (tests/components/metric_math.py), the key and topic policies, the args' refusals."""

from __future__ import annotations

import json

import pytest

from components import InvalidArgs
from components.endpoint_monitoring import (
    EndpointMonitoring,
    EndpointMonitoringArgs,
    alarm_key_policy,
    alarm_topic_policy,
    at_max_instances_threshold,
    dashboard_body,
    e2e_per_token_queries,
)
from tests.components.metric_math import evaluate, evaluate_queries
from tests.pulumi_harness import run_program

TOPIC = "arn:aws:sns:us-east-1:123456789012:topic/w-alarms"  # the harness's mock ARN for the topic
ARGS = dict(endpoint_name="ep", region="eu-west-1", price_per_hour=1.5, max_instances=4, slo_latency_p95_ms=1500,
            slo_latency_p99_ms=3000, slo_e2e_per_token_p95_ms=80, error_rate_percent=2.5, variant_name="V1",
            metrics_namespace="NS/x", tags={"a": "b"})
SM_DIMS = {"EndpointName": "ep", "VariantName": "V1"}


def sm_metric(name):
    return {"dimensions": SM_DIMS, "metricName": name, "namespace": "AWS/SageMaker", "period": 60.0, "stat": "Sum"}


def monitoring(**changes):
    def program():
        watch = EndpointMonitoring("w", EndpointMonitoringArgs(**{**ARGS, **changes}))
        return {"topic": watch.topic_arn, "key": watch.key_arn, "dashboard": watch.dashboard_name,
                "url": watch.dashboard_url, "alarms": watch.alarm_names}

    return run_program(program, stack="dev")


def test_every_alarm_with_its_inputs():
    run = monitoring()
    alarms = {r.name: r.inputs for r in run.of_type("aws:cloudwatch/metricAlarm:MetricAlarm")}
    common = {"alarmActions": [TOPIC], "comparisonOperator": "GreaterThanThreshold", "tags": {"a": "b"},
              "treatMissingData": "notBreaching", "evaluationPeriods": 5.0, "datapointsToAlarm": 3.0}
    ttft = {**common, "okActions": [TOPIC], "dimensions": {"EndpointName": "ep"}, "metricName": "TTFTMs",
            "namespace": "NS/x", "period": 60.0}
    assert alarms == {
        "w-ttft-p95": {**ttft, "extendedStatistic": "p95", "threshold": 1500.0, "alarmDescription":
                       "Time to first token p95 (at the gateway) above the 1500 ms SLO for 3 of 5 minutes"},
        "w-ttft-p99": {**ttft, "extendedStatistic": "p99", "threshold": 3000.0, "alarmDescription":
                       "Time to first token p99 (at the gateway) above the 3000 ms SLO for 3 of 5 minutes"},
        "w-e2e-per-token-p95": {
            **common, "okActions": [TOPIC], "threshold": 80.0,
            "alarmDescription": "End-to-end time per output token p95 (at the gateway) above the 80 ms SLO for "
                                "3 of 5 minutes",
            "metricQueries": [
                {"id": "tps_p5", "returnData": False, "metric": {
                    "dimensions": {"EndpointName": "ep"}, "metricName": "TokensPerSecond", "namespace": "NS/x",
                    "period": 60.0, "stat": "p5"}},
                {"expression": "1000 / tps_p5", "id": "e2e_per_token_p95",
                 "label": "End-to-end ms per output token (p95)", "returnData": True}]},
        "w-5xx-rate": {
            **common, "okActions": [TOPIC], "threshold": 2.5,
            "alarmDescription": "More than 2.5% of invocations failed with 5xx over 5 minutes",
            "metricQueries": [
                {"id": "errors", "metric": sm_metric("Invocation5XXErrors"), "returnData": False},
                {"id": "invocations", "metric": sm_metric("Invocations"), "returnData": False},
                {"expression": "100 * FILL(errors, 0) / IF(FILL(invocations, 0) > 0, invocations, 1)",
                 "id": "error_rate", "label": "5xx responses (% of invocations)", "returnData": True}]},
        "w-model-errors": {
            **common, "datapointsToAlarm": 2.0, "threshold": 0.0, "dimensions": SM_DIMS,
            "metricName": "InvocationModelErrors", "namespace": "AWS/SageMaker", "period": 60.0, "statistic": "Sum",
            "alarmDescription": "The model container returned errors (InvocationModelErrors)"},
        "w-at-max-instances": {
            **common, "comparisonOperator": "GreaterThanOrEqualToThreshold", "evaluationPeriods": 15.0,
            "datapointsToAlarm": 15.0, "threshold": 3.5,
            "alarmDescription": "The endpoint has run at its maximum of 4 instances for 15 minutes: the autoscaler "
                                "can add no more; raise maxInstances or shed load",
            "metricQueries": [
                {"id": "invocations", "metric": sm_metric("Invocations"), "returnData": False},
                {"id": "per_instance", "metric": sm_metric("InvocationsPerInstance"), "returnData": False},
                {"expression": "invocations / per_instance", "id": "instances", "label": "Instances in service",
                 "returnData": True}]},
    }


def test_topic_key_dashboard_and_outputs():
    run = monitoring()
    key = run.one("aws:kms/key:Key")
    assert {k: v for k, v in key.inputs.items() if k != "policy"} == {
        "enableKeyRotation": True, "tags": {"a": "b"}, "deletionWindowInDays": 30.0,
        "description": "Encrypts the w alarm topic; CloudWatch alarms of this account may use it"}
    assert json.loads(key.inputs["policy"]) == json.loads(alarm_key_policy("aws", "eu-west-1", "123456789012"))
    assert run.one("aws:sns/topic:Topic").inputs == {"kmsMasterKeyId": key.state["arn"], "tags": {"a": "b"}}
    assert run.one("aws:kms/alias:Alias").inputs == {"name": "alias/llm-inference/dev/w-alarms",
                                                      "targetKeyId": key.state["keyId"]}
    policy = run.one("aws:sns/topicPolicy:TopicPolicy").inputs
    assert policy["arn"] == TOPIC
    assert json.loads(policy["policy"]) == json.loads(alarm_topic_policy(TOPIC, "aws", "eu-west-1", "123456789012"))
    assert run.of_type("aws:sns/topicSubscription:TopicSubscription") == []  # no email, no subscription
    dashboard = run.one("aws:cloudwatch/dashboard:Dashboard").inputs
    assert dashboard["dashboardName"] == "ep-llm"
    assert dashboard["dashboardBody"] == dashboard_body(EndpointMonitoringArgs(**ARGS), "ep")
    assert run.outputs == {
        "topic": TOPIC, "key": key.state["arn"], "dashboard": "ep-llm",
        "url": "https://eu-west-1.console.aws.amazon.com/cloudwatch/home?region=eu-west-1#dashboards:name=ep-llm",
        "alarms": ["w-ttft-p95", "w-ttft-p99", "w-e2e-per-token-p95", "w-5xx-rate", "w-model-errors",
                   "w-at-max-instances"],
    }
    (component,) = [r for r in run.resources if r.type == "llminfer:aws:EndpointMonitoring"]
    assert component.name == "w"
    assert all(r.parent == component.urn for r in run.resources if r.custom)
    email = monitoring(alarm_email="oncall@example.com").one("aws:sns/topicSubscription:TopicSubscription")
    assert email.inputs == {"topic": TOPIC, "protocol": "email", "endpoint": "oncall@example.com"}


def test_policies_let_only_this_accounts_alarms_use_the_key_and_topic():
    key = json.loads(alarm_key_policy("aws-cn", "cn-north-1", "111122223333"))
    condition = {"StringEquals": {"aws:SourceAccount": "111122223333"},
                 "ArnLike": {"aws:SourceArn": "arn:aws-cn:cloudwatch:cn-north-1:111122223333:alarm:*"}}
    assert key["Statement"] == [
        {"Sid": "AccountAdministersTheKey", "Effect": "Allow", "Principal": {"AWS": "arn:aws-cn:iam::111122223333:root"},
         "Action": "kms:*", "Resource": "*"},
        {"Sid": "CloudWatchAlarmsPublishToTheEncryptedTopic", "Effect": "Allow",
         "Principal": {"Service": "cloudwatch.amazonaws.com"}, "Action": ["kms:Decrypt", "kms:GenerateDataKey*"],
         "Resource": "*", "Condition": condition},
    ]
    topic = json.loads(alarm_topic_policy("arn:t", "aws-cn", "cn-north-1", "111122223333"))
    assert topic["Statement"] == [{"Sid": "CloudWatchAlarmsPublish", "Effect": "Allow",
                                   "Principal": {"Service": "cloudwatch.amazonaws.com"}, "Action": "sns:Publish",
                                   "Resource": "arn:t", "Condition": condition}]


def test_the_alarm_expressions_evaluated():
    # e2e per token: 1000 / p5 of tokens/s; 20 tokens/s is 50 ms a token.
    assert evaluate_queries(e2e_per_token_queries("NS", "ep"), {"TokensPerSecond": [20.0, 8.0, None]}) == [
        50.0, 125.0, None]
    assert at_max_instances_threshold(4) == 3.5 and at_max_instances_threshold(1) == 0.5


def widgets(**changes) -> list[dict]:
    return json.loads(dashboard_body(EndpointMonitoringArgs(**{**ARGS, **changes}), "ep"))["widgets"]


def test_the_dashboard_body_is_stable_json():
    # Keys sorted: the same config renders the same body, so `pulumi up` shows no dashboard diff.
    body = dashboard_body(EndpointMonitoringArgs(**ARGS), "ep")
    assert body == json.dumps(json.loads(body), sort_keys=True)
    assert body.startswith('{"widgets": [{"height": 6, "properties": {"metrics": [["NS/x", "CompletionTokens"')


def test_the_dashboard_layout_and_metrics():
    board = widgets()
    assert [(w["x"], w["y"], w["width"], w["height"], w["type"]) for w in board] == [
        (0, 0, 12, 6, "metric"), (12, 0, 12, 6, "metric"), (0, 6, 12, 6, "metric"), (12, 6, 12, 6, "metric"),
        (0, 12, 12, 6, "metric"), (12, 12, 12, 6, "metric"), (0, 18, 12, 6, "metric")]
    props = [w["properties"] for w in board]
    assert [(p["title"], p["stat"], p["period"], p["region"], p["view"]) for p in props] == [
        ("Output tokens/s", "Sum", 60, "eu-west-1", "timeSeries"),
        ("TTFT (ms, at the gateway)", "p50", 60, "eu-west-1", "timeSeries"),
        ("Cost per 1k output tokens (USD)", "Sum", 60, "eu-west-1", "timeSeries"),
        ("Instances in service", "Sum", 60, "eu-west-1", "timeSeries"),
        ("Errors", "Sum", 60, "eu-west-1", "timeSeries"),
        ("Model latency (ms; whole stream when streamed)", "p50", 60, "eu-west-1", "timeSeries"),
        ("End-to-end ms per output token (at the gateway)", "p50", 60, "eu-west-1", "timeSeries")]
    assert [p.get("annotations") for p in props] == [
        None, {"horizontal": [{"label": "SLO p95", "value": 1500}]}, None,
        {"horizontal": [{"label": "max", "value": 4}]}, None, None,
        {"horizontal": [{"label": "SLO p95", "value": 80}]}]
    sm = ["AWS/SageMaker"]
    variant = ["EndpointName", "ep", "VariantName", "V1"]
    gateway = ["EndpointName", "ep"]
    assert [p["metrics"] for p in props] == [
        [["NS/x", "CompletionTokens", *gateway, {"id": "tokens", "visible": False}],
         [{"expression": "tokens / 60", "id": "tps", "label": "tokens/s"}]],
        [["NS/x", "TTFTMs", *gateway, {"label": "p50", "stat": "p50"}],
         ["NS/x", "TTFTMs", *gateway, {"label": "p95", "stat": "p95"}]],
        [["NS/x", "CompletionTokens", *gateway, {"id": "tokens", "visible": False}],
         [*sm, "Invocations", *variant, {"id": "invocations", "visible": False}],
         [*sm, "InvocationsPerInstance", *variant, {"id": "per_instance", "visible": False}],
         [{"expression": "1.5 * (invocations / per_instance) / ((tokens / 60) * 3.6)", "id": "cost",
           "label": "fleet cost per 1k tokens"}],
         ["NS/x", "CostPer1kTokensUSD", *gateway, {"label": "per request (gateway)", "stat": "Average"}]],
        [[*sm, "Invocations", *variant, {"id": "invocations", "visible": False}],
         [*sm, "InvocationsPerInstance", *variant, {"id": "per_instance", "visible": False}],
         [{"expression": "invocations / per_instance", "id": "instances", "label": "instances"}]],
        [[*sm, "Invocation4XXErrors", *variant], [*sm, "Invocation5XXErrors", *variant],
         [*sm, "InvocationModelErrors", *variant]],
        [[*sm, "ModelLatency", *variant, {"id": "lp50", "stat": "p50", "visible": False}],
         [*sm, "ModelLatency", *variant, {"id": "lp95", "stat": "p95", "visible": False}],
         [*sm, "ModelLatency", *variant, {"id": "lp99", "stat": "p99", "visible": False}],
         [{"expression": "lp50 / 1000", "label": "p50"}], [{"expression": "lp95 / 1000", "label": "p95"}],
         [{"expression": "lp99 / 1000", "label": "p99"}]],
        [["NS/x", "TokensPerSecond", *gateway, {"id": "tps_p5", "stat": "p5", "visible": False}],
         ["NS/x", "TokensPerSecond", *gateway, {"id": "tps_p50", "stat": "p50", "visible": False}],
         [{"expression": "1000 / tps_p50", "label": "p50"}], [{"expression": "1000 / tps_p5", "label": "p95"}]],
    ]


def test_the_dashboard_expressions_give_the_figures_they_name():
    board = widgets()
    cost = board[2]["properties"]["metrics"][3][0]["expression"]
    # 3 instances at $1.5/h make 6000 tokens a minute (100 tokens/s): $4.5/h / 360,000 tokens/h = $0.0125 per 1k.
    (value,) = evaluate(cost, {"invocations": [30.0], "per_instance": [10.0], "tokens": [6000.0]})
    assert value == pytest.approx(0.0125)
    assert evaluate(board[0]["properties"]["metrics"][1][0]["expression"], {"tokens": [600.0]}) == [10.0]
    # ModelLatency is in microseconds: the widget shows ms.
    assert evaluate(board[5]["properties"]["metrics"][3][0]["expression"], {"lp50": [2_500_000.0]}) == [2500.0]


def test_the_waf_widget_only_with_a_web_acl():
    assert len(widgets()) == 7
    waf = widgets(waf_web_acl_name="acl")[7]
    assert (waf["x"], waf["y"], waf["width"], waf["height"]) == (12, 18, 12, 6)
    props = waf["properties"]
    assert (props["title"], props["period"], props["stat"]) == ("WAF requests (per 5 minutes)", 300, "Sum")
    acl = ["WebACL", "acl", "Region", "eu-west-1", "Rule"]
    assert props["metrics"] == [
        ["AWS/WAFV2", "AllowedRequests", *acl, "ALL", {"label": "allowed"}],
        ["AWS/WAFV2", "BlockedRequests", *acl, "ALL", {"label": "blocked"}],
        ["AWS/WAFV2", "BlockedRequests", *acl, "acl-rate-limit-per-ip", {"label": "blocked by the per-IP rate limit"}],
        ["AWS/WAFV2", "CountedRequests", *acl, "ALL", {"label": "counted (managed rules)"}],
    ]


@pytest.mark.parametrize(("changes", "field", "words"), [
    ({"region": ""}, "region", ""),
    ({"price_per_hour": 0}, "price_per_hour", ""),
    ({"max_instances": 0}, "max_instances", ""),
    ({"slo_latency_p95_ms": 0, "slo_latency_p99_ms": 10}, "slo_latency_p95_ms", ""),
    ({"slo_latency_p99_ms": 0}, "slo_latency_p99_ms", ""),
    ({"slo_latency_p95_ms": 3000, "slo_latency_p99_ms": 2000}, "slo_latency_p99_ms",
     "(2000) must not be below slo_latency_p95_ms (3000)"),
    ({"slo_e2e_per_token_p95_ms": 0}, "slo_e2e_per_token_p95_ms", ""),
    ({"metrics_namespace": ""}, "metrics_namespace", ""),
    ({"error_rate_percent": 0.001}, "error_rate_percent", ""),
    ({"error_rate_percent": 101}, "error_rate_percent", ""),
    ({"alarm_email": "oncall.example.com"}, "alarm_email", "'oncall.example.com' is not an email address"),
    ({"alarm_email": "on call@example.com"}, "alarm_email", "is not an email address"),
])
def test_args_are_refused_with_the_field_and_why(changes, field, words):
    with pytest.raises(InvalidArgs) as err:
        EndpointMonitoringArgs(**{**ARGS, **changes}).validate()
    assert err.value.field == field and words in str(err.value)
    assert "EndpointMonitoring" in str(err.value)


def test_limits_are_accepted_at_their_edges():
    EndpointMonitoringArgs(**{**ARGS, "error_rate_percent": 0.01, "slo_latency_p95_ms": 2000,
                              "slo_latency_p99_ms": 2000}).validate()
    EndpointMonitoringArgs(**{**ARGS, "error_rate_percent": 100, "alarm_email": "a@b"}).validate()


def test_the_options_given_reach_the_component():
    import pulumi

    def program():
        outer = pulumi.ComponentResource("test:index:Outer", "outer")
        EndpointMonitoring("w", EndpointMonitoringArgs(**ARGS), opts=pulumi.ResourceOptions(parent=outer))
        return {}

    run = run_program(program, stack="dev")
    (outer,) = [r for r in run.resources if r.type == "test:index:Outer"]
    (component,) = [r for r in run.resources if r.type == "llminfer:aws:EndpointMonitoring"]
    assert component.parent == outer.urn
