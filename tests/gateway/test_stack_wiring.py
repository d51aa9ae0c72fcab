"""The gateway inside the real AWS stack (`pulumi up -s aws`), under mocks."""

from __future__ import annotations

import json

import pytest

from stacks.config import ConfigError
from tests.pulumi_harness import run_stack


@pytest.fixture(scope="module")
def run():
    return run_stack("aws")


def test_stack_outputs_the_openai_url_and_a_secret_key(run):
    assert run.outputs["url"].endswith("/prod/v1")
    assert run.outputs["apiKey"] and "apiKey" in run.secret_outputs


def test_gateway_calls_the_stacks_endpoint_and_reports_metrics_the_autoscaler_reads(run):
    endpoint = run.one("aws:sagemaker/endpoint:Endpoint")
    policy = json.loads(run.named("llm-gateway-role-policy").inputs["policy"])
    (invoke,) = [s for s in policy["Statement"] if s["Sid"] == "InvokeThisEndpoint"]
    assert invoke["Resource"] == [endpoint.state["arn"]]
    env = run.named("llm-gateway-fn").inputs["environment"]["variables"]
    assert env["GATEWAY_ENDPOINT_NAME"] == endpoint.state["name"]
    assert float(env["GATEWAY_PRICE_PER_HOUR"]) == run.outputs["pricePerHour"]
    # The autoscaling policy's CompletionTokens: same namespace, dimension EndpointName = this endpoint.
    metrics = [
        m["metricStat"]["metric"]
        for p in run.of_type("aws:appautoscaling/policy:Policy")
        for m in ((p.inputs["targetTrackingScalingPolicyConfiguration"].get("customizedMetricSpecification") or {})
                  .get("metrics") or [])
        if m.get("metricStat", {}).get("metric", {}).get("metricName") == "CompletionTokens"
    ]
    assert metrics, "the autoscaling policy reads the gateway's CompletionTokens"
    for metric in metrics:
        assert metric["namespace"] == env["GATEWAY_METRICS_NAMESPACE"]
        assert metric["dimensions"] == [{"name": "EndpointName", "value": env["GATEWAY_ENDPOINT_NAME"]}]


def test_function_url_mode_from_config():
    run = run_stack("aws", {"gatewayMode": "function_url", "wafRateLimitPerIp": 0})  # WAF needs the stage
    assert run.outputs["url"].endswith(".on.aws/v1")
    assert not run.of_type("aws:apigateway/restApi:RestApi")


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [("gatewayTimeoutSeconds", 20, "between 30 and 900"), ("gatewayMode", "alb", "not one of"),
     ("gatewayQuotaPeriod", "YEAR", "not one of"), ("gatewayRateLimit", "0", "positive")],
)
def test_bad_gateway_config_names_the_key(key, value, words):
    with pytest.raises(ConfigError) as raised:
        run_stack("aws", {key: value})
    assert raised.value.key == f"llm-inference:{key}"
    assert words in str(raised.value)
