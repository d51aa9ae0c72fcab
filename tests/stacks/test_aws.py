"""The `aws` stack's real program on its real Pulumi.aws.yaml, run under Pulumi mocks."""

from __future__ import annotations

import json

import pytest

from stacks.config import ConfigError
from tests import aws_api
from tests.pulumi_harness import (
    DUMMY_SECRET,
    Secret,
    StackRun,
    refused_stack,
    run_stack,
)

EXPECTED_LMI_ENV = {
    "HF_MODEL_ID": "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4",
    "OPTION_ASYNC_MODE": "true",
    "OPTION_ROLLING_BATCH": "disable",
    "OPTION_ENTRYPOINT": "djl_python.lmi_vllm.vllm_async_service",
    "TENSOR_PARALLEL_DEGREE": "max",
    "OPTION_MAX_MODEL_LEN": "8192",
    "OPTION_MAX_ROLLING_BATCH_SIZE": "64",
    "OPTION_GPU_MEMORY_UTILIZATION": "0.9",
    # The name vLLM serves: the model id, which the gateway accepts as `model` (LMI's default is "lmi").
    "OPTION_SERVED_MODEL_NAME": "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4",
}


@pytest.fixture(scope="module")
def aws():
    return run_stack("aws")


def test_endpoint_core_graph(aws):
    counts = aws.type_counts()
    expected = {
        "llminfer:aws:SageMakerEndpoint": 1,
        "llminfer:aws:TokenAwareAutoscaling": 1,
        "llminfer:aws:EndpointMonitoring": 1,
        "aws:iam/role:Role": None,  # the gateway adds its own role
        "aws:sagemaker/model:Model": 1,
        "aws:sagemaker/endpointConfiguration:EndpointConfiguration": 1,
        "aws:sagemaker/endpoint:Endpoint": 1,
        "aws:appautoscaling/target:Target": 1,
        "aws:appautoscaling/policy:Policy": 2,
        "aws:cloudwatch/metricAlarm:MetricAlarm": 7,  # 6 of the monitoring + WAF's blocked requests
        # Pulumi.aws.yaml sets wafRateLimitPerIp: one web ACL on the stage (tests/components/test_waf.py).
        "llminfer:aws:ApiWaf": 1,
        "aws:wafv2/webAcl:WebAcl": 1,
        "aws:wafv2/webAclAssociation:WebAclAssociation": 1,
        "aws:cloudwatch/dashboard:Dashboard": 1,
        "aws:sns/topic:Topic": 1,
        "aws:sns/topicPolicy:TopicPolicy": 1,
        "aws:kms/key:Key": 1,
        "aws:kms/alias:Alias": 1,
        # The cost guard is off unless budgetMonthlyUsd is set.
        "aws:budgets/budget:Budget": 0,
    }
    for type_, count in expected.items():
        if count is None:
            assert counts.get(type_, 0) >= 1, type_
        else:
            assert counts.get(type_, 0) == count, (type_, counts)
    # Every resource of the endpoint and its autoscaling/monitoring hangs under a component.
    components = {r.urn for r in aws.resources if r.type.startswith("llminfer:")}
    for resource in aws.resources:
        if resource.type.startswith("aws:") and resource.type not in ("aws:apigateway/account:Account",):
            assert resource.parent in components, f"{resource.type} {resource.name} is not parented to a component"


def test_model_runs_lmi_vllm_with_the_seed_env(aws):
    model = aws.one("aws:sagemaker/model:Model")
    container = model.inputs["primaryContainer"]
    assert container["image"] == "763104351884.dkr.ecr.us-east-1.amazonaws.com/djl-inference:0.33.0-lmi15.0.0-cu128"
    assert container["environment"] == EXPECTED_LMI_ENV
    # A pre-quantized AWQ model must not be re-quantized (that disables the Marlin kernels).
    assert "OPTION_QUANTIZE" not in container["environment"]
    assert "HF_TOKEN" not in container["environment"]


def test_endpoint_config_is_a_valid_create_endpoint_config_call(aws):
    config = aws.one("aws:sagemaker/endpointConfiguration:EndpointConfiguration")
    (variant,) = config.inputs["productionVariants"]
    assert variant["instanceType"] == "ml.g5.2xlarge"
    assert variant["instanceType"] in aws_api.enum("sagemaker", "ProductionVariantInstanceType")
    assert variant["initialInstanceCount"] == 1
    # The HF download of an 8B model counts against the startup health check (default 5 min).
    assert variant["containerStartupHealthCheckTimeoutInSeconds"] >= 1200
    aws_api.validate("sagemaker", "CreateEndpointConfig", {
        "EndpointConfigName": config.name,
        "ProductionVariants": aws_api.pascal([variant]),
        "Tags": aws_api.tag_list(config.inputs.get("tags")),
    })
    endpoint = aws.one("aws:sagemaker/endpoint:Endpoint")
    assert endpoint.inputs["name"] == "llm-aws"


def test_scalable_target_is_the_variant_instance_count(aws):
    target = aws.one("aws:appautoscaling/target:Target")
    assert target.inputs["serviceNamespace"] == "sagemaker"
    assert target.inputs["resourceId"] == "endpoint/llm-aws/variant/AllTraffic"
    assert target.inputs["scalableDimension"] == "sagemaker:variant:DesiredInstanceCount"
    assert (target.inputs["minCapacity"], target.inputs["maxCapacity"]) == (1, 4)
    aws_api.validate("application-autoscaling", "RegisterScalableTarget", aws_api.pascal({
        k: v for k, v in target.inputs.items() if k != "tags"
    }))


def _policies(aws):
    policies = {}
    for policy in aws.of_type("aws:appautoscaling/policy:Policy"):
        config = policy.inputs["targetTrackingScalingPolicyConfiguration"]
        kind = "tokens" if "customizedMetricSpecification" in config else "concurrency"
        policies[kind] = policy
    return policies


def test_token_policy_tracks_tokens_per_minute_per_instance(aws):
    policy = _policies(aws)["tokens"]
    config = policy.inputs["targetTrackingScalingPolicyConfiguration"]
    assert config["targetValue"] == 54000
    assert (config["scaleOutCooldown"], config["scaleInCooldown"]) == (300, 300)
    metrics = config["customizedMetricSpecification"]["metrics"]
    by_id = {m["id"]: m for m in metrics}
    # Only the final expression returns data: tokens x (invocations per instance / invocations).
    assert [m["id"] for m in metrics if m["returnData"]] == ["tokens_per_instance"]
    tokens = by_id["tokens"]["metricStat"]
    assert tokens["metric"]["metricName"] == "CompletionTokens"
    assert tokens["metric"]["namespace"] == "LLMInference"
    assert tokens["metric"]["dimensions"] == [{"name": "EndpointName", "value": "llm-aws"}]
    assert tokens["stat"] == "Sum"
    assert by_id["invocations"]["metricStat"]["metric"]["metricName"] == "Invocations"
    assert by_id["invocations_per_instance"]["metricStat"]["metric"]["metricName"] == "InvocationsPerInstance"
    expression = by_id["tokens_per_instance"]["expression"]
    for metric_id in ("tokens", "invocations", "invocations_per_instance"):
        assert metric_id in expression
    # The whole call is a valid PutScalingPolicy request.
    aws_api.validate("application-autoscaling", "PutScalingPolicy", {
        "PolicyName": policy.name,
        **aws_api.pascal({k: v for k, v in policy.inputs.items() if k not in ("name",)}),
    })


def test_token_metric_falls_as_instances_are_added(aws):
    """The stack's own policy queries, evaluated with CloudWatch's metric-math semantics
    (tests/components/metric_math.py): per instance, falling as instances are added, 0 when idle."""
    from tests.components.test_token_autoscaling_math import tokens_per_instance

    config = _policies(aws)["tokens"].inputs["targetTrackingScalingPolicyConfiguration"]
    queries = config["customizedMetricSpecification"]["metrics"]
    values = [tokens_per_instance(queries, 120_000, 600, n) for n in (1, 2, 3, 4)]
    assert values == pytest.approx([120_000, 60_000, 40_000, 30_000])
    assert tokens_per_instance(queries, 0, 0, 3) == 0


def test_fast_policy_uses_the_high_resolution_concurrency_metric(aws):
    policy = _policies(aws)["concurrency"]
    config = policy.inputs["targetTrackingScalingPolicyConfiguration"]
    metric_type = config["predefinedMetricSpecification"]["predefinedMetricType"]
    assert metric_type == "SageMakerVariantConcurrentRequestsPerModelHighResolution"
    assert metric_type in aws_api.enum("application-autoscaling", "MetricType")
    assert config["targetValue"] == 24


def test_alarms_watch_latency_slo_errors_and_capacity(aws):
    alarms = {a.name: a.inputs for a in aws.of_type("aws:cloudwatch/metricAlarm:MetricAlarm")}
    assert set(alarms) == {
        "llm-monitoring-ttft-p95",
        "llm-monitoring-ttft-p99",
        "llm-monitoring-e2e-per-token-p95",
        "llm-monitoring-5xx-rate",
        "llm-monitoring-model-errors",
        "llm-monitoring-at-max-instances",
        "llm-waf-blocked",  # Pulumi.aws.yaml sets wafRateLimitPerIp
    }
    # Time to first token at the gateway (ms): 2000 ms p95 / 4000 ms p99 SLOs.
    assert alarms["llm-monitoring-ttft-p95"]["threshold"] == 2000
    assert alarms["llm-monitoring-ttft-p95"]["extendedStatistic"] == "p95"
    assert alarms["llm-monitoring-ttft-p99"]["threshold"] == 4000
    assert alarms["llm-monitoring-e2e-per-token-p95"]["threshold"] == 100
    # Half an instance below the maximum of 4: a float instance count of 3.9999... still counts.
    assert alarms["llm-monitoring-at-max-instances"]["threshold"] == 3.5
    operators = aws_api.enum("cloudwatch", "ComparisonOperator")
    topic = aws.one("aws:sns/topic:Topic")
    for name, alarm in alarms.items():
        assert alarm["comparisonOperator"] in operators, name
        assert alarm["alarmActions"] == [topic.state["arn"]], name
        if "metricQueries" in alarm:
            assert [q["id"] for q in alarm["metricQueries"] if q.get("returnData")], name
        elif alarm["namespace"] == "LLMInference":  # the gateway's EMF metrics
            assert alarm["dimensions"] == {"EndpointName": "llm-aws"}
        elif alarm["namespace"] == "AWS/WAFV2":  # the web ACL's totals
            assert alarm["dimensions"] == {"WebACL": "llm-gateway-aws", "Region": "us-east-1", "Rule": "ALL"}
        else:
            assert alarm["namespace"] == "AWS/SageMaker"
            assert alarm["dimensions"] == {"EndpointName": "llm-aws", "VariantName": "AllTraffic"}


def test_alarm_topic_is_encrypted_with_a_key_cloudwatch_may_use(aws):
    # CloudWatch cannot publish to a topic under the AWS-managed alias/aws/sns key: notifications
    # would be dropped. The topic has a customer-managed key whose policy lets CloudWatch use it.
    key = aws.one("aws:kms/key:Key")
    topic = aws.one("aws:sns/topic:Topic")
    assert topic.inputs["kmsMasterKeyId"] == key.state["arn"] != "alias/aws/sns"
    assert key.inputs["enableKeyRotation"] is True
    assert 7 <= key.inputs["deletionWindowInDays"] <= 30
    assert {"project", "stack", "owner"} <= set(key.inputs["tags"])
    alias = aws.one("aws:kms/alias:Alias")
    assert alias.inputs["targetKeyId"] == key.state["keyId"]
    assert alias.inputs["name"] == "alias/llm-inference/aws/llm-monitoring-alarms"
    source = {"StringEquals": {"aws:SourceAccount": "123456789012"},
              "ArnLike": {"aws:SourceArn": "arn:aws:cloudwatch:us-east-1:123456789012:alarm:*"}}
    statements = {s["Sid"]: s for s in json.loads(key.inputs["policy"])["Statement"]}
    assert statements == {
        "AccountAdministersTheKey": {
            "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"}, "Action": "kms:*", "Resource": "*",
            "Sid": "AccountAdministersTheKey"},
        "CloudWatchAlarmsPublishToTheEncryptedTopic": {
            "Effect": "Allow", "Principal": {"Service": "cloudwatch.amazonaws.com"},
            "Action": ["kms:Decrypt", "kms:GenerateDataKey*"], "Resource": "*", "Condition": source,
            "Sid": "CloudWatchAlarmsPublishToTheEncryptedTopic"},
    }
    (publish,) = json.loads(aws.one("aws:sns/topicPolicy:TopicPolicy").inputs["policy"])["Statement"]
    assert aws.one("aws:sns/topicPolicy:TopicPolicy").inputs["arn"] == topic.state["arn"]
    assert publish == {"Sid": "CloudWatchAlarmsPublish", "Effect": "Allow", "Principal": {"Service": "cloudwatch.amazonaws.com"},
                       "Action": "sns:Publish", "Resource": topic.state["arn"], "Condition": source}
    aws_api.validate("kms", "CreateKey", {"Policy": key.inputs["policy"], "Description": key.inputs["description"],
                                          "Tags": [{"TagKey": k, "TagValue": v} for k, v in key.inputs["tags"].items()]})


def test_dashboard_shows_tokens_ttft_cost_instances_errors(aws):
    dashboard = aws.one("aws:cloudwatch/dashboard:Dashboard")
    body = json.loads(dashboard.inputs["dashboardBody"])
    titles = [w["properties"]["title"] for w in body["widgets"]]
    for wanted in ("tokens/s", "TTFT", "Cost per 1k", "Instances", "Errors"):
        assert any(wanted.lower() in t.lower() for t in titles), (wanted, titles)
    cost = next(w for w in body["widgets"] if w["properties"]["title"].startswith("Cost"))
    expressions = [m[0]["expression"] for m in cost["properties"]["metrics"] if isinstance(m[0], dict)]
    assert any(e.startswith("1.515 *") for e in expressions), expressions


def test_log_group_exists_with_retention_before_the_endpoint(aws):
    (group,) = [g for g in aws.of_type("aws:cloudwatch/logGroup:LogGroup") if "sagemaker" in g.inputs["name"]]
    assert group.inputs["name"] == "/aws/sagemaker/Endpoints/llm-aws"
    assert group.inputs["retentionInDays"] == 30


def test_execution_role_is_least_privilege(aws):
    endpoint_component = aws.one("llminfer:aws:SageMakerEndpoint")
    (role,) = [r for r in aws.children_of(endpoint_component) if r.type == "aws:iam/role:Role"]
    trust = json.loads(role.inputs["assumeRolePolicy"])
    (statement,) = trust["Statement"]
    assert statement["Principal"] == {"Service": "sagemaker.amazonaws.com"}
    # AWS's template for real-time inference (confused-deputy prevention): aws:SourceArn, not SourceAccount.
    assert statement["Condition"] == {"ArnLike": {"aws:SourceArn": "arn:aws:sagemaker:us-east-1:123456789012:*"}}
    (policy,) = [r for r in aws.children_of(endpoint_component) if r.type == "aws:iam/rolePolicy:RolePolicy"]
    statements = json.loads(policy.inputs["policy"])["Statement"]
    actions = sorted(a for s in statements for a in s["Action"])
    assert actions == sorted([
        "ecr:GetAuthorizationToken", "ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage",
        "ecr:GetDownloadUrlForLayer", "logs:CreateLogGroup", "logs:CreateLogStream", "logs:DescribeLogStreams",
        "logs:PutLogEvents",
        "cloudwatch:PutMetricData",
    ])
    for s in statements:
        if s["Resource"] == "*":
            # Only the two actions that have no resource-level permissions.
            assert s["Action"] in (["ecr:GetAuthorizationToken"], ["cloudwatch:PutMetricData"]), s
    assert not any(managed for managed in role.inputs.get("managedPolicyArns", []) or [])


def test_outputs(aws):
    out = aws.outputs
    assert out["endpointName"] == "llm-aws"
    assert out["region"] == "us-east-1"
    assert out["instanceType"] == "ml.g5.2xlarge"
    assert out["pricePerHour"] == 1.515
    assert out["dashboardUrl"].startswith("https://us-east-1.console.aws.amazon.com/cloudwatch/")


def test_every_taggable_resource_is_tagged(aws):
    for resource in aws.resources:
        if resource.type.startswith("aws:sagemaker/") or resource.type in (
            "aws:cloudwatch/metricAlarm:MetricAlarm", "aws:sns/topic:Topic", "aws:cloudwatch/logGroup:LogGroup",
            "aws:appautoscaling/target:Target", "aws:kms/key:Key",
        ):
            tags = resource.inputs.get("tags") or {}
            assert {"project", "stack", "owner"} <= set(tags), (resource.type, resource.name, tags)
            assert tags["stack"] == "aws"


def test_price_override_and_hf_token_secret():
    run = run_stack("aws", {"pricePerHour": "2.5", "hfToken": Secret("hf_abc")})
    assert run.outputs["pricePerHour"] == 2.5
    model = run.one("aws:sagemaker/model:Model")
    assert model.inputs["primaryContainer"]["environment"]["HF_TOKEN"] == "hf_abc"
    # The token taints the container definition: Pulumi encrypts it in state and hides it in diffs.
    assert "primaryContainer" in model.secret_paths


@pytest.mark.parametrize(
    ("overrides", "key", "words"),
    [
        ({"sagemakerInstanceType": "ml.g5.2xlarg"}, "llm-inference:sagemakerInstanceType", "is not one of"),
        ({"minInstances": 5, "maxInstances": 2}, "llm-inference:minInstances", "must not exceed"),
        ({"targetTokensPerMinutePerInstance": 0}, "llm-inference:targetTokensPerMinutePerInstance", "positive"),
        ({"targetTokensPerMinutePerInstance": -5}, "llm-inference:targetTokensPerMinutePerInstance", "positive"),
        ({"modelId": ""}, "llm-inference:modelId", "must not be empty"),
        ({"modelId": None}, "llm-inference:modelId", "missing"),
        ({"logRetentionDays": 31}, "llm-inference:logRetentionDays", "retention period"),
        ({"maxInstances": "four"}, "llm-inference:maxInstances", "whole number"),
        ({"gpuMemoryUtilization": "1.5"}, "llm-inference:gpuMemoryUtilization", "between"),
        ({"minInstances": 0}, "llm-inference:minInstances", "at least 1"),
        ({"hfToken": "hf_in_clear_text"}, "llm-inference:hfToken", "clear text"),
        ({"cloud": "oracle"}, "llm-inference:cloud", "names no cloud"),
        ({"budgetMonthlyUsd": 100}, "llm-inference:budgetAlertEmail", "needs a recipient"),
        ({"budgetMonthlyUsd": 100, "budgetAlertEmail": "ops"}, "llm-inference:budgetAlertEmail", "not an email"),
        ({"budgetMonthlyUsd": -1}, "llm-inference:budgetMonthlyUsd", "at least 0"),
    ],
)
def test_bad_config_names_the_key(overrides, key, words):
    with pytest.raises(ConfigError) as err:
        run_stack("aws", overrides)
    assert key in str(err.value) and words in str(err.value), str(err.value)


def test_secret_values_never_reach_plain_outputs(aws):
    assert DUMMY_SECRET not in json.dumps(aws.outputs, default=str)


# ------------------------------------------------------------------------------- fit check

FP16_70B = "meta-llama/Llama-3.1-70B-Instruct"


def refused(overrides: dict) -> tuple[ConfigError, StackRun]:
    return refused_stack("aws", overrides)


def served_model(run: StackRun) -> str:
    return run.one("aws:sagemaker/model:Model").inputs["primaryContainer"]["environment"]["HF_MODEL_ID"]


def test_an_fp16_70b_that_cannot_fit_the_a10g_is_refused_with_the_numbers_before_anything_exists():
    err, run = refused({"modelId": FP16_70B})
    assert err.key == "llm-inference:modelId" and err.value == FP16_70B
    message = str(err)
    assert message.startswith(f"config llm-inference:modelId='{FP16_70B}': ")
    # GB needed vs GB available.
    assert "llama-3.1-70b fp16 needs 141.1 GB of weights" in message
    assert "ml.g5.2xlarge has 1x A10G 24 GB" in message
    assert "21.7 GB usable at gpuMemoryUtilization 0.9" in message
    # The fix is an instance type SageMaker takes, under the key that sets it.
    assert "`pulumi config set llm-inference:sagemakerInstanceType ml.g5.48xlarge`" in message
    assert run.resources == []


def test_a_context_the_kv_cache_cannot_hold_is_refused_under_max_model_len():
    err, run = refused({"maxModelLen": 131072})
    assert err.key == "llm-inference:maxModelLen" and err.value == 131072
    assert "KV cache of one 131,072-token sequence needs 17.2 GB" in str(err)
    assert "lower llm-inference:maxModelLen to 112,560 or less" in str(err)
    assert run.resources == []


def test_fit_check_model_sizes_a_custom_id_and_off_skips_the_check():
    # A custom id the catalog cannot map passes (the check does not guess its size)...
    custom = run_stack("aws", {"modelId": "my-org/my-custom-model"})
    assert served_model(custom) == "my-org/my-custom-model"
    # ... unless fitCheckModel names the catalog model to size it as.
    err, run = refused({"modelId": "my-org/my-custom-model", "fitCheckModel": "llama-3.1-70b"})
    assert err.key == "llm-inference:modelId" and "llama-3.1-70b fp16 needs 141.1 GB of weights" in str(err)
    assert "--model llama-3.1-70b --instance ml.g5.2xlarge" in str(err)
    assert run.resources == []
    # off deploys what it is told.
    off = run_stack("aws", {"modelId": FP16_70B, "fitCheckModel": "off"})
    assert served_model(off) == FP16_70B


@pytest.mark.parametrize(
    ("overrides", "key", "words"),
    [
        ({"fitCheckQuantization": "int3"}, "llm-inference:fitCheckQuantization", "is not one of: fp16"),
        ({"fitCheckModel": "llama-9b"}, "llm-inference:fitCheckModel", "is not a catalog model"),
    ],
)
def test_bad_fit_check_settings_are_refused_naming_the_key(overrides, key, words):
    err, run = refused(overrides)
    assert err.key == key and key in str(err) and words in str(err), str(err)
    assert run.resources == []


def test_fit_check_quantization_overrides_the_id():
    # The default 8B AWQ id, sized as 16-bit: 16.1 GB of weights leave the KV cache too little for 64k.
    err, _ = refused({"fitCheckQuantization": "fp16", "maxModelLen": 65536})
    assert err.key == "llm-inference:maxModelLen" and "llama-3.1-8b fp16" in str(err)
    assert "--quantization fp16" in str(err)
    run_stack("aws", {"fitCheckQuantization": "awq-int4", "maxModelLen": 65536})


# ------------------------------------------------------------------------ gateway outputs


def test_apigateway_mode_exports_no_function_url(aws):
    assert aws.outputs["url"].endswith(".execute-api.us-east-1.amazonaws.com/prod/v1")
    assert "functionUrl" not in aws.outputs
    assert not aws.of_type("aws:lambda/functionUrl:FunctionUrl")


def test_function_url_mode_exports_the_function_url_as_url_and_function_url():
    # No REST API stage, so no WAF (which the example stack sets): refused unless turned off.
    run = run_stack("aws", {"gatewayMode": "function_url", "wafRateLimitPerIp": 0})
    function_url = run.one("aws:lambda/functionUrl:FunctionUrl").state["functionUrl"]
    assert function_url.endswith(".lambda-url.us-east-1.on.aws/")
    assert run.outputs["functionUrl"] == function_url + "v1"
    assert run.outputs["url"] == run.outputs["functionUrl"]
    assert not run.of_type("aws:apigateway/restApi:RestApi")
    assert "functionUrl" not in run.secret_outputs


def test_both_mode_keeps_url_on_the_rest_api_and_exports_the_function_url():
    run = run_stack("aws", {"gatewayMode": "both"})
    stage = run.one("aws:apigateway/stage:Stage").state["invokeUrl"]
    function_url = run.one("aws:lambda/functionUrl:FunctionUrl").state["functionUrl"]
    assert run.outputs["url"] == stage + "/v1"
    assert run.outputs["functionUrl"] == function_url.rstrip("/") + "/v1"
    assert run.outputs["url"] != run.outputs["functionUrl"]
