"""The StreamingGateway component under Pulumi mocks: what it would create, resolved to plain values."""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pytest

from components import InvalidArgs
from components.streaming_gateway import GatewayLimits, StreamingGateway, StreamingGatewayArgs
from gateway.settings import ENVIRONMENT_VARIABLES, Settings
from tests.pulumi_harness import run_program

ENDPOINT_ARN = "arn:aws:sagemaker:us-east-1:123456789012:endpoint/llm-endpoint"


def args(**overrides: Any) -> StreamingGatewayArgs:
    values: dict[str, Any] = dict(
        endpoint_name="llm-endpoint", endpoint_arn=ENDPOINT_ARN, region="us-east-1", price_per_hour=1.515,
        model_id="org/model", max_model_len=8192, code=pulumi.FileArchive("build/lambda/gateway.zip"),
        limits=GatewayLimits(rate_per_second=5, burst=10, quota=10000, quota_period="WEEK", timeout_seconds=600),
        log_retention_days=14, tags={"project": "llm-inference", "owner": "me"},
    )
    values.update(overrides)
    return StreamingGatewayArgs(**values)


def build(**overrides: Any):
    def program():
        gateway = StreamingGateway("gw", args(**overrides))
        return {"url": gateway.url, "apiKey": gateway.api_key, "functionUrl": gateway.function_url}

    return run_program(program, stack="aws")


@pytest.fixture(scope="module")
def run():
    return build()


def test_outputs_url_ending_in_v1_and_a_secret_api_key(run):
    assert run.outputs["url"] == "https://gw-stage.execute-api.us-east-1.amazonaws.com/prod/v1"
    assert run.outputs["apiKey"]
    assert "apiKey" in run.secret_outputs and "url" not in run.secret_outputs
    assert run.outputs["functionUrl"] is None


def test_graph(run):
    counts = run.type_counts()
    assert counts["aws:lambda/function:Function"] == 2  # the app and the authorizer
    assert counts["aws:apigateway/integration:Integration"] == 1
    assert counts["aws:cloudwatch/logGroup:LogGroup"] == 4  # app, authorizer, access, execution
    assert "aws:lambda/functionUrl:FunctionUrl" not in counts
    assert "aws:secretsmanager/secret:Secret" not in counts
    component = run.one("llminfer:streaming_gateway:StreamingGateway")
    assert len(run.resources) - 1 == len(run.children_of(component)), "every resource is the component's child"


def test_integration_streams_from_the_response_streaming_invoke_arn(run):
    integration = run.one("aws:apigateway/integration:Integration").inputs
    assert integration["type"] == "AWS_PROXY"
    assert integration["responseTransferMode"] == "STREAM"
    assert integration["uri"].endswith("/response-streaming-invocations")
    assert integration["timeoutMilliseconds"] == 600_000 > 29_000
    function = run.named("gw-fn").inputs
    assert function["timeout"] == 600


def test_api_key_is_required_and_bearer_tokens_are_the_key(run):
    method = run.one("aws:apigateway/method:Method").inputs
    assert method["apiKeyRequired"] is True
    assert method["authorization"] == "CUSTOM" and method["authorizerId"]
    assert run.one("aws:apigateway/restApi:RestApi").inputs["apiKeySource"] == "AUTHORIZER"  # pragma: allowlist secret (setting value)
    authorizer = run.one("aws:apigateway/authorizer:Authorizer").inputs
    assert authorizer["type"] == "REQUEST"
    assert authorizer["identitySource"] == "method.request.header.Authorization"
    assert run.named("gw-authorizer-fn").inputs["handler"] == "authorizer.handler"
    plan_key = run.one("aws:apigateway/usagePlanKey:UsagePlanKey").inputs
    assert plan_key["keyType"] == "API_KEY"


def test_header_key_source_needs_no_authorizer():
    run = build(api_key_source="HEADER")
    method = run.one("aws:apigateway/method:Method").inputs
    assert method["apiKeyRequired"] is True and method["authorization"] == "NONE"
    assert run.one("aws:apigateway/restApi:RestApi").inputs["apiKeySource"] == "HEADER"  # pragma: allowlist secret (setting value)
    assert not run.of_type("aws:apigateway/authorizer:Authorizer")
    assert len(run.of_type("aws:lambda/function:Function")) == 1


def test_usage_plan_limits(run):
    plan = run.one("aws:apigateway/usagePlan:UsagePlan").inputs
    assert plan["throttleSettings"] == {"rateLimit": 5, "burstLimit": 10}
    assert plan["quotaSettings"] == {"limit": 10000, "period": "WEEK"}
    assert plan["apiStages"][0]["stage"] == "prod"
    settings = run.one("aws:apigateway/methodSettings:MethodSettings").inputs["settings"]
    assert settings["throttlingRateLimit"] == 5 and settings["throttlingBurstLimit"] == 10
    assert settings["dataTraceEnabled"] is False


def test_role_may_only_invoke_this_endpoint_and_write_its_own_logs(run):
    policy = json.loads(run.named("gw-role-policy").inputs["policy"])
    statements = policy["Statement"]
    sagemaker = [s for s in statements if any(a.startswith("sagemaker:") for a in s["Action"])]
    assert sagemaker == [{"Sid": "InvokeThisEndpoint", "Effect": "Allow", "Action": ["sagemaker:InvokeEndpoint"],
                          "Resource": [ENDPOINT_ARN]}]
    logs = [s for s in statements if s["Sid"] == "WriteOwnLogs"][0]
    app_logs = run.named("gw-logs")
    assert all(r.startswith(app_logs.state["arn"]) for r in logs["Resource"])
    assert {a for s in statements for a in s["Action"]} == {"sagemaker:InvokeEndpoint", "logs:CreateLogStream",
                                                            "logs:PutLogEvents"}
    assert not run.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment") or all(
        r.inputs["role"] != run.named("gw-role").state["name"]
        for r in run.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
    ), "no managed policy (such as AWSLambdaBasicExecutionRole's logs on *) on the app's role"


def test_log_groups_have_retention_and_the_stage_logs_access(run):
    groups = run.of_type("aws:cloudwatch/logGroup:LogGroup")
    assert {g.inputs["retentionInDays"] for g in groups} == {14}
    function = run.named("gw-fn").inputs
    assert function["loggingConfig"]["logGroup"] == run.named("gw-logs").inputs["name"]
    stage = run.one("aws:apigateway/stage:Stage").inputs
    access = json.loads(stage["accessLogSettings"]["format"])
    assert access["requestId"] == "$context.requestId"
    assert "$context.identity.apiKey" not in access.values(), "the key's id, never the key itself"
    assert access["apiKeyId"] == "$context.identity.apiKeyId"
    assert stage["accessLogSettings"]["destinationArn"] == run.named("gw-access-logs").state["arn"]
    execution = run.named("gw-execution-logs").inputs["name"]
    assert execution.startswith("API-Gateway-Execution-Logs_") and execution.endswith("/prod")


def test_function_runs_the_app_under_the_web_adapter_without_the_key(run):
    function = run.named("gw-fn").inputs
    env = function["environment"]["variables"]
    assert function["handler"] == "run.sh" and function["runtime"] == "python3.12"
    assert function["layers"] == ["arn:aws:lambda:us-east-1:753240598075:layer:LambdaAdapterLayerX86:27"]
    assert env["AWS_LAMBDA_EXEC_WRAPPER"] == "/opt/bootstrap"
    assert env["AWS_LWA_INVOKE_MODE"] == "response_stream"
    api_key = run.outputs["apiKey"]
    assert api_key not in json.dumps(env)
    assert not any("KEY" in name and "ARN" not in name for name in env)
    app_env = {k: v for k, v in env.items() if k.startswith("GATEWAY_")}
    assert set(app_env) <= set(ENVIRONMENT_VARIABLES.values()), "every variable is one the app reads"
    settings = Settings.from_env(app_env)  # and the app accepts them
    assert (settings.endpoint_name, settings.model_id, settings.price_per_hour) == ("llm-endpoint", "org/model", 1.515)
    assert function["tags"] == {"project": "llm-inference", "owner": "me"}


def test_gateway_errors_are_openai_shaped(run):
    responses = {r.inputs["responseType"]: r.inputs for r in run.of_type("aws:apigateway/response:Response")}
    throttled = responses["THROTTLED"]
    assert throttled["statusCode"] == "429"
    assert throttled["responseParameters"] == {"gatewayresponse.header.Retry-After": "'1'"}
    template = throttled["responseTemplates"]["application/json"]
    assert template.startswith('{"error": {"message": $context.error.messageString')
    assert responses["UNAUTHORIZED"]["statusCode"] == "401" and responses["INVALID_API_KEY"]["statusCode"] == "403"


def test_function_url_fallback_checks_the_key_from_secrets_manager():
    run = build(mode="function_url")
    assert run.outputs["url"] == "https://gw-url.lambda-url.us-east-1.on.aws/v1"
    assert run.outputs["functionUrl"] == run.outputs["url"]
    url = run.one("aws:lambda/functionUrl:FunctionUrl").inputs
    assert url["invokeMode"] == "RESPONSE_STREAM" and url["authorizationType"] == "NONE"
    assert not run.of_type("aws:apigateway/restApi:RestApi")
    env = run.named("gw-fn").inputs["environment"]["variables"]
    secret = run.one("aws:secretsmanager/secret:Secret")
    assert env["GATEWAY_API_KEY_SECRET_ARN"] == secret.state["arn"]
    assert run.one("aws:secretsmanager/secretVersion:SecretVersion").inputs["secretString"] == run.outputs["apiKey"]
    policy = json.loads(run.named("gw-role-policy").inputs["policy"])
    (read,) = [s for s in policy["Statement"] if s["Sid"] == "ReadApiKey"]
    assert read["Action"] == ["secretsmanager:GetSecretValue"] and read["Resource"] == [secret.state["arn"]]


def test_both_keeps_the_rest_api_as_url_and_iam_auth_needs_no_secret():
    run = build(mode="both", function_url_auth="AWS_IAM")
    assert run.outputs["url"].endswith("/prod/v1")
    assert run.outputs["functionUrl"].endswith(".on.aws/v1")
    assert run.one("aws:lambda/functionUrl:FunctionUrl").inputs["authorizationType"] == "AWS_IAM"
    assert not run.of_type("aws:secretsmanager/secret:Secret")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"mode": "alb"}, "mode"),
        ({"api_key_source": "QUERY"}, "api_key_source"),  # pragma: allowlist secret (setting value)
        ({"limits": GatewayLimits(timeout_seconds=29)}, "limits.timeout_seconds"),
        ({"limits": GatewayLimits(timeout_seconds=901)}, "limits.timeout_seconds"),
        ({"limits": GatewayLimits(rate_per_second=0)}, "limits.rate_per_second"),
        ({"limits": GatewayLimits(quota_period="YEAR")}, "limits.quota_period"),
        ({"log_retention_days": 10}, "log_retention_days"),
        ({"price_per_hour": -1}, "price_per_hour"),
        ({"code": "lambda/"}, "code"),
        ({"stage_name": "a b"}, "stage_name"),
        ({"lwa_layer_arn": "layer27"}, "lwa_layer_arn"),
    ],
)
def test_bad_args_fail_before_anything_is_created(overrides, field):
    with pytest.raises(InvalidArgs) as raised:
        args(**overrides).validate()
    assert raised.value.field == field


# --- what a deployment serves -------------------------------------------------------------------------


def _trigger(run) -> str:
    return run.one("aws:apigateway/deployment:Deployment").inputs["triggers"]["redeployment"]


def test_the_deployment_trigger_is_stable_for_the_same_api(run):
    assert _trigger(run) == _trigger(build())


@pytest.mark.parametrize(
    "change",
    ["authorizer_ttl", "identity_source", "gateway_response", "method_settings", "integration_timeout"],
)
def test_an_in_place_change_of_what_the_stage_serves_makes_a_new_deployment(run, change, monkeypatch):
    """A deployment is a snapshot: an in-place update keeps every ID, so only a fingerprint of the
    contents sees it (and the stage would serve the old configuration)."""
    from components import streaming_gateway

    overrides: dict[str, Any] = {}
    if change == "authorizer_ttl":
        monkeypatch.setattr(streaming_gateway, "AUTHORIZER_TTL_SECONDS", 60)
    elif change == "identity_source":
        monkeypatch.setattr(streaming_gateway, "AUTHORIZER_IDENTITY_SOURCE",
                            "method.request.header.Authorization,context.httpMethod")
    elif change == "gateway_response":
        first, *rest = streaming_gateway.GATEWAY_RESPONSES
        monkeypatch.setattr(streaming_gateway, "GATEWAY_RESPONSES", ((first[0], "403", *first[2:]), *rest))
    elif change == "method_settings":
        overrides["limits"] = GatewayLimits(rate_per_second=50, burst=10, quota=10000, quota_period="WEEK",
                                            timeout_seconds=600)
    else:
        overrides["limits"] = GatewayLimits(rate_per_second=5, burst=10, quota=10000, quota_period="WEEK",
                                            timeout_seconds=300)
    changed = build(**overrides)
    ids = {r.name: r.state.get("id") for r in changed.resources}
    assert ids == {r.name: r.state.get("id") for r in run.resources}, "the same resources, in place"
    assert _trigger(changed) != _trigger(run), change


def test_the_authorizer_is_built_from_what_the_trigger_hashes(run):
    from components.streaming_gateway import AUTHORIZER_TTL_SECONDS

    authorizer = run.one("aws:apigateway/authorizer:Authorizer").inputs
    assert authorizer["authorizerResultTtlInSeconds"] == AUTHORIZER_TTL_SECONDS
    assert authorizer["identitySource"] == "method.request.header.Authorization"


# --- Function URL permissions -------------------------------------------------------------------------


def test_function_url_with_the_apps_key_check_is_public_through_the_url_only():
    run = build(mode="function_url")
    permissions = {p.inputs["action"]: p.inputs for p in run.of_type("aws:lambda/permission:Permission")
                   if p.inputs["principal"] == "*"}
    assert permissions == {
        "lambda:InvokeFunctionUrl": {"action": "lambda:InvokeFunctionUrl", "function": "gw-fn", "principal": "*",
                                     "functionUrlAuthType": "NONE"},
        "lambda:InvokeFunction": {"action": "lambda:InvokeFunction", "function": "gw-fn", "principal": "*",
                                  "invokedViaFunctionUrl": True},
    }


def test_function_url_with_iam_auth_grants_nobody():
    run = build(mode="function_url", function_url_auth="AWS_IAM")
    assert not [p for p in run.of_type("aws:lambda/permission:Permission") if p.inputs["principal"] == "*"]
