"""The `aws` stack against what the vendors do, for the defects of issue 13 that plain mocks cannot see.

Each test states the vendor behaviour it models and where that is written down (LMI 0.33.0's source,
the AWS docs, pulumi-aws 7.51.1, botocore's models).
"""

from __future__ import annotations

import json
import math
import re
import sys
import zipfile
from contextlib import contextmanager

import pytest
import yaml

from components import InvalidArgs
from components.endpoint_monitoring import at_max_instances_threshold, e2e_per_token_queries
from stacks.config import ConfigError
from tests import aws_api, pulumi_harness
from tests.pulumi_harness import ROOT, StackRun, run_program, run_stack, stack_config

MODEL_ID = "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4"


@pytest.fixture(scope="module")
def aws() -> StackRun:
    return run_stack("aws")


def _env(run: StackRun) -> dict[str, str]:
    return run.one("aws:sagemaker/model:Model").inputs["primaryContainer"]["environment"]


# ----------------------------------------------------------------------------- served model name


def lmi_served_model_name(environment: dict[str, str]) -> str:
    """The name LMI 0.33.0's vLLM handler serves, from the container environment: DJL turns each
    OPTION_<X> into the property <x> (lowercase), which reaches vLLM's EngineArgs
    (properties_manager/vllm_rb_properties.py); lmi_vllm/vllm_async_service.py, initialize():
    `model_names = self.vllm_engine_args.served_model_name or "lmi"`."""
    properties = {key[len("OPTION_"):].lower(): value for key, value in environment.items() if key.startswith("OPTION_")}
    return properties.get("served_model_name") or "lmi"


def test_engine_gateway_and_v1_models_agree_on_the_model_name(aws):
    from starlette.testclient import TestClient

    from gateway.app import create_app
    from gateway.chat_request import parse_chat_request
    from gateway.settings import Settings

    served = lmi_served_model_name(_env(aws))
    gateway_env = aws.named("llm-gateway-fn").inputs["environment"]["variables"]
    settings = Settings.from_env({k: v for k, v in gateway_env.items() if k.startswith("GATEWAY_")})
    # The gateway accepts only its model id as `model` and passes it on; vLLM answers 404 to any name
    # other than the one it serves.
    assert served == settings.model_id == MODEL_ID
    request = parse_chat_request(json.dumps({"model": served, "messages": [{"role": "user", "content": "hi"}]}).encode(),
                                 model_id=settings.model_id, max_model_len=settings.max_model_len)
    assert request.body["model"] == served
    listed = TestClient(create_app(settings)).get("/v1/models").json()
    assert [m["id"] for m in listed["data"]] == [served]


def test_a_custom_model_id_is_the_served_name_too():
    run = run_stack("aws", {"modelId": "my-org/my-custom-model"})
    assert lmi_served_model_name(_env(run)) == "my-org/my-custom-model"
    assert run.named("llm-gateway-fn").inputs["environment"]["variables"]["GATEWAY_MODEL_ID"] == "my-org/my-custom-model"


# ---------------------------------------------------------------------------- Function URL modes


def _url_permissions(run: StackRun) -> list[dict]:
    return [p.inputs for p in run.of_type("aws:lambda/permission:Permission") if p.inputs.get("principal") == "*"]


@pytest.mark.parametrize("mode", ["function_url", "both"])
def test_a_function_url_with_auth_none_is_publicly_invokable_through_the_url_only(mode):
    # "your function's resource-based policy is always in effect and must grant public access before your
    # function URL can receive requests"; since October 2025 also lambda:InvokeFunction (Lambda
    # Developer Guide, urls-auth). Both only through the URL.
    run = run_stack("aws", {"gatewayMode": mode, "wafRateLimitPerIp": 0 if mode == "function_url" else 2000})
    function = run.named("llm-gateway-fn").state["name"]
    assert run.one("aws:lambda/functionUrl:FunctionUrl").inputs["authorizationType"] == "NONE"
    by_action = {p["action"]: p for p in _url_permissions(run)}
    assert set(by_action) == {"lambda:InvokeFunctionUrl", "lambda:InvokeFunction"}
    assert by_action["lambda:InvokeFunctionUrl"]["functionUrlAuthType"] == "NONE"
    assert by_action["lambda:InvokeFunction"]["invokedViaFunctionUrl"] is True
    for permission in by_action.values():
        assert permission["function"] == function
        aws_api.validate("lambda", "AddPermission", {
            "FunctionName": permission["function"], "StatementId": "s", "Action": permission["action"],
            "Principal": "*", **({"FunctionUrlAuthType": permission["functionUrlAuthType"]}
                                 if "functionUrlAuthType" in permission else {}),
            **({"InvokedViaFunctionUrl": permission["invokedViaFunctionUrl"]}
               if "invokedViaFunctionUrl" in permission else {}),
        })
    # The app then refuses requests without the key.
    assert run.named("llm-gateway-fn").inputs["environment"]["variables"]["GATEWAY_API_KEY_SECRET_ARN"]


def test_iam_auth_and_the_rest_api_grant_nobody_public_access():
    iam = run_stack("aws", {"gatewayMode": "function_url", "gatewayFunctionUrlAuth": "AWS_IAM", "wafRateLimitPerIp": 0})
    assert _url_permissions(iam) == []
    assert _url_permissions(run_stack("aws")) == []


def test_docs_say_what_iam_auth_callers_need():
    text = (ROOT / "docs" / "gateway.md").read_text()
    assert "lambda:InvokeFunctionUrl" in text and "lambda:InvokeFunction" in text
    assert "lambda:FunctionUrlAuthType" in text


# ---------------------------------------------------------------- API Gateway's account-wide role


@contextmanager
def retained_on_delete(monkeypatch):
    """Resource name -> the retainOnDelete its registration asked for (the harness keeps no options)."""
    seen: dict[str, bool] = {}
    original = pulumi_harness.RecordingMonitor.RegisterResource

    def register(self, request):
        seen[request.name] = bool(request.retainOnDelete)
        return original(self, request)

    monkeypatch.setattr(pulumi_harness.RecordingMonitor, "RegisterResource", register)
    yield seen


def test_the_region_wide_cloudwatch_role_is_left_alone_by_default(aws):
    spec = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]["gatewayManageAccountLogRole"]
    assert spec["default"] is False
    assert not aws.of_type("aws:apigateway/account:Account")
    from components.streaming_gateway import StreamingGatewayArgs

    assert StreamingGatewayArgs.__dataclass_fields__["manage_account_log_role"].default is False


def test_a_managed_cloudwatch_role_is_never_reset_by_destroy(monkeypatch):
    # pulumi-aws 7 = terraform-provider-aws 6: "reset_on_delete has been removed. The destroy operation will
    # now always reset the API Gateway account settings" (v6 upgrade guide). retain_on_delete keeps the
    # setting, and the role it names, as they are.
    with retained_on_delete(monkeypatch) as retained:
        run = run_stack("aws", {"gatewayManageAccountLogRole": True})
    account = run.one("aws:apigateway/account:Account")
    attachment = run.named("llm-gateway-apigw-logs-policy")
    role = run.named("llm-gateway-apigw-logs-role")
    assert account.inputs["cloudwatchRoleArn"] == role.state["arn"]
    assert retained["llm-gateway-apigw-account"] and retained["llm-gateway-apigw-logs-role"]
    assert retained["llm-gateway-apigw-logs-policy"]
    assert not retained["llm-gateway-fn"], "only the shared setting is kept"
    # API Gateway checks the role can write logs when the setting is made: after the policy attachment.
    assert attachment.urn in account.dependencies


# ---------------------------------------------------------------------------------- depends_on


def test_model_and_endpoint_wait_for_the_execution_roles_policy(aws):
    policy = aws.named("llm-role-policy")
    assert policy.urn in aws.one("aws:sagemaker/model:Model").dependencies
    endpoint = aws.one("aws:sagemaker/endpoint:Endpoint")
    assert policy.urn in endpoint.dependencies
    assert aws.named("llm-logs").urn in endpoint.dependencies


# ------------------------------------------------------------------------------------ partitions

AWS_FILES = ("components/sagemaker_endpoint.py", "components/streaming_gateway.py",
             "components/endpoint_monitoring.py", "components/token_autoscaling.py", "components/aws_common.py",
             "stacks/aws.py")


def test_no_arn_is_written_for_the_aws_partition_alone():
    for path in AWS_FILES:
        text = (ROOT / path).read_text()
        assert "arn:aws:" not in text, f"{path} writes a literal arn:aws: (China and GovCloud are other partitions)"


def test_in_china_every_arn_the_stack_builds_is_in_its_partition(monkeypatch):
    china = {"aws:index/getPartition:getPartition":
             lambda a: {"partition": "aws-cn", "dnsSuffix": "amazonaws.com.cn", "id": "aws-cn"}}
    config, secrets = stack_config("aws", {"aws:region": "cn-north-1", "gatewayManageAccountLogRole": True,
                                           "lmiImageAccount": "727897471807"})
    from stacks import build

    run = run_program(lambda: build("aws"), stack="aws", config=config, secret_keys=secrets, invokes=china)
    role = run.named("llm-role")
    (trust,) = json.loads(role.inputs["assumeRolePolicy"])["Statement"]
    assert trust["Condition"]["ArnLike"]["aws:SourceArn"].startswith("arn:aws-cn:sagemaker:cn-north-1:")
    built = [s["Resource"] for s in json.loads(run.named("llm-role-policy").inputs["policy"])["Statement"]
             if s["Resource"] != "*"]
    arns = [a for r in built for a in (r if isinstance(r, list) else [r])]
    assert arns and all(a.startswith("arn:aws-cn:") for a in arns), arns
    image = run.one("aws:sagemaker/model:Model").inputs["primaryContainer"]["image"]
    assert image.startswith("727897471807.dkr.ecr.cn-north-1.amazonaws.com.cn/")
    assert run.named("llm-gateway-apigw-logs-policy").inputs["policyArn"].startswith("arn:aws-cn:iam::aws:policy/")
    assert run.named("llm-gateway-fn").inputs["layers"][0].startswith("arn:aws-cn:lambda:cn-north-1:")
    assert "arn:aws-cn:cloudwatch:" in run.one("aws:kms/key:Key").inputs["policy"]


# ------------------------------------------------------------------------------- endpoint name


@pytest.mark.parametrize("stack", ["dev_1", "team.dev"])
def test_a_stack_name_sagemaker_cannot_take_is_refused_before_anything_exists(stack):
    from stacks import build

    config, secrets = stack_config("aws")
    caught: list[Exception] = []

    def program():
        try:
            build(stack)
        except (InvalidArgs, ConfigError) as err:
            caught.append(err)
        return {}

    run = run_program(program, stack=stack, config=config, secret_keys=secrets)
    (err,) = caught
    assert isinstance(err, InvalidArgs) and err.field == "endpoint_name"
    assert f"llm-{stack}" in str(err) and f"stack name {stack!r}" in str(err)
    assert "pulumi stack rename" in str(err)
    assert run.resources == []
    pattern = aws_api._SESSION.get_service_model("sagemaker").shape_for("EndpointName").metadata["pattern"]
    assert re.fullmatch(pattern, f"llm-{stack}") is None, "SageMaker would refuse it too"


def test_a_long_stack_name_is_cut_to_sagemakers_63_characters():
    stack = "a" * 70
    config, secrets = stack_config("aws")
    from stacks import build

    run = run_program(lambda: build(stack), stack=stack, config=config, secret_keys=secrets)
    name = run.one("aws:sagemaker/endpoint:Endpoint").inputs["name"]
    assert len(name) == 63 and name.startswith("llm-aaa")


# ---------------------------------------------------------------------------------- latency alarms


def test_no_alarm_watches_model_latency_which_spans_a_whole_stream(aws):
    # AWS: ModelLatency includes "the time taken to ... fetch the response from the container of a model and
    # the time taken to complete the inference in the container" (API reference, ScalingPolicyMetric):
    # for InvokeEndpointWithResponseStream the whole stream, seconds for a normal reply.
    from gateway.metrics import METRIC_UNITS

    alarms = {a.name: a.inputs for a in aws.of_type("aws:cloudwatch/metricAlarm:MetricAlarm")}
    assert not [n for n, a in alarms.items() if a.get("metricName") == "ModelLatency"]
    for percentile, slo in (("p95", 2000), ("p99", 4000)):
        ttft = alarms[f"llm-monitoring-ttft-{percentile}"]
        assert (ttft["namespace"], ttft["metricName"], ttft["extendedStatistic"]) == ("LLMInference", "TTFTMs", percentile)
        assert ttft["threshold"] == slo and METRIC_UNITS["TTFTMs"] == "Milliseconds"
    e2e = alarms["llm-monitoring-e2e-per-token-p95"]
    (metric,) = [q["metric"] for q in e2e["metricQueries"] if "metric" in q]
    assert (metric["namespace"], metric["metricName"], metric["stat"]) == ("LLMInference", "TokensPerSecond", "p5")
    assert metric["dimensions"] == {"EndpointName": "llm-aws"}
    assert [q["expression"] for q in e2e["metricQueries"] if q.get("returnData")] == ["1000 / tps_p5"]
    assert e2e["threshold"] == 100 and METRIC_UNITS["TokensPerSecond"] == "Count/Second"


def test_the_e2e_per_token_query_is_a_valid_put_metric_alarm_and_its_percentile_holds():
    queries = e2e_per_token_queries("LLMInference", "llm-aws")
    metrics = []
    for q in queries:
        if "metric" in q:
            m = q["metric"]
            metrics.append({"Id": q["id"], "ReturnData": q["return_data"], "MetricStat": {
                "Metric": {"Namespace": m["namespace"], "MetricName": m["metric_name"],
                           "Dimensions": [{"Name": k, "Value": v} for k, v in m["dimensions"].items()]},
                "Period": m["period"], "Stat": m["stat"]}})
        else:
            metrics.append({"Id": q["id"], "Expression": q["expression"], "Label": q["label"],
                            "ReturnData": q["return_data"]})
    aws_api.validate("cloudwatch", "PutMetricAlarm", {
        "AlarmName": "a", "EvaluationPeriods": 5, "Threshold": 100.0,
        "ComparisonOperator": "GreaterThanThreshold", "Metrics": metrics})

    # p95 of (E2E ms / output tokens) = 1000 / p5 of tokens/s, per request (nearest rank).
    def rank(values, p):
        ordered = sorted(values)
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]

    tps = [5 + (i * 37) % 90 + i / 1000 for i in range(200)]
    assert math.isclose(rank([1000 / x for x in tps], 95), 1000 / rank(tps, 5), rel_tol=0.02)


# ----------------------------------------------------------------------------- at max instances


def test_the_at_max_instances_threshold_tolerates_the_float_instance_count():
    """CloudWatch's count is invocations / sum of 1/N per invocation (InvocationsPerInstance)."""
    for instances in range(1, 33):
        for invocations in range(1, 120):
            per_instance = 0.0
            for _ in range(invocations):
                per_instance += 1 / instances
            count = invocations / per_instance
            assert count >= at_max_instances_threshold(instances), (instances, invocations, count)
            assert count < at_max_instances_threshold(instances + 1), "one fewer instance must not alarm"


# ------------------------------------------------------------------------------------ the bundle


def test_bundle_entries_are_unix_made_with_modes_even_on_windows(tmp_path, monkeypatch):
    from components import streaming_gateway

    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\n")
    module = tmp_path / "app.py"
    module.write_text("x = 1\n")
    # zipfile.ZipInfo takes create_system from sys.platform (0, MS-DOS, on Windows): unzip then ignores
    # the Unix mode and run.sh is not executable on Lambda.
    monkeypatch.setattr(sys, "platform", "win32")
    streaming_gateway._write_zip(tmp_path / "b.zip", [("run.sh", script), ("gateway/app.py", module)])
    monkeypatch.undo()
    with zipfile.ZipFile(tmp_path / "b.zip") as archive:
        modes = {i.filename: (i.create_system, (i.external_attr >> 16) & 0o777) for i in archive.infolist()}
    assert modes == {"run.sh": (3, 0o755), "gateway/app.py": (3, 0o644)}


# --------------------------------------------------------------------------------- token target


def test_bench_recommend_proposes_the_token_target_the_stack_reads():
    from planning.recommend import AUTOSCALING_KEYS

    declared = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    assert "targetTokensPerMinutePerInstance" in AUTOSCALING_KEYS["aws"]
    for key in AUTOSCALING_KEYS["aws"]:
        assert key in declared, key
    run = run_stack("aws", {"targetTokensPerMinutePerInstance": 61234})
    targets = {p.inputs["targetTrackingScalingPolicyConfiguration"]["targetValue"]
               for p in run.of_type("aws:appautoscaling/policy:Policy")}
    assert 61234 in targets


def test_readme_says_what_the_token_target_means():
    readme = (ROOT / "README.md").read_text()
    aws_section = readme.split("### What the AWS stack builds", 1)[1].split("### ", 1)[0]
    assert "54,000" in aws_section and "saturat" in aws_section and "bench recommend" in aws_section


# ------------------------------------------------------------------------------------- HF token


def test_where_the_hf_token_is_set_it_says_sagemaker_shows_it_in_clear():
    # botocore's sagemaker model, ContainerDefinition.Environment: "Don't include any sensitive data in
    # your environment variables" (no secret references exist there).
    for path in ("README.md", "Pulumi.yaml", "Pulumi.aws.yaml"):
        text = (ROOT / path).read_text()
        assert "DescribeModel" in text, path
    hf_line = next(line for line in (ROOT / "README.md").read_text().splitlines() if "hfToken" in line)
    assert "clear" in hf_line or "DescribeModel" in hf_line


def test_the_hf_token_stays_a_pulumi_secret_in_the_model():
    run = run_stack("aws", {"hfToken": pulumi_harness.Secret("hf_abc")})
    model = run.one("aws:sagemaker/model:Model")
    assert "primaryContainer" in model.secret_paths
