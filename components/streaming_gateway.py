"""The streaming gateway: the OpenAI-compatible app (lambda/gateway) on Lambda, in front of a SageMaker
endpoint, reached through an API Gateway REST API that streams, or a Lambda Function URL.

- Lambda: python3.12 with the Lambda Web Adapter layer in `response_stream` mode running `run.sh`
  (uvicorn + the app), its own log group, and a role that may only call InvokeEndpoint on this endpoint
  and write to that log group (plus read the API-key secret when the app checks the key itself).
- API Gateway (mode apigateway|both): REST API, `/v1/{proxy+}` ANY -> AWS_PROXY integration with
  `response_transfer_mode="STREAM"` on the function's response-streaming invoke ARN and a timeout above
  the 29 s default; API key required, usage plan (rate, burst, quota), JSON access logs and execution
  logs in retention-bound log groups, OpenAI-style bodies on API Gateway's own errors.
  With the API key source set to AUTHORIZER (default) a small REQUEST authorizer hands the
  `Authorization: Bearer <key>` that the stock OpenAI client sends to the usage plan as the API key.
- Function URL (mode function_url|both): `invoke_mode=RESPONSE_STREAM`, the fallback for when the REST
  API's streaming does not suit; auth by the app's own key check (key from Secrets Manager) or AWS_IAM.

Outputs: `url` (OpenAI base URL, ending in /v1) and `api_key` (a Pulumi secret). The key is never in a
Lambda environment variable. `gateway_bundle()` builds the app's code archive with its dependencies.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pulumi
from pulumi_aws import apigateway, cloudwatch, get_partition_output, iam, lambda_, secretsmanager

from components._args import (
    InvalidArgs,
    require,
    require_between,
    require_choice,
    require_positive,
    require_text,
)
from components.aws_common import LOG_RETENTION_DAYS, METRICS_NAMESPACE, policy_document

_COMPONENT = "StreamingGateway"
MODES = ("apigateway", "function_url", "both")
API_KEY_SOURCES = ("AUTHORIZER", "HEADER")
FUNCTION_URL_AUTHS = ("API_KEY", "AWS_IAM")
QUOTA_PERIODS = ("DAY", "WEEK", "MONTH")
LAMBDA_RUNTIME = "python3.12"
# Lambda Web Adapter, published by AWS in every commercial region (REFERENCE.md); other partitions
# (aws-cn, aws-us-gov) publish it under other accounts: set lwa_layer_arn there.
LWA_LAYER = "arn:{partition}:lambda:{region}:753240598075:layer:LambdaAdapterLayerX86:27"
# API Gateway's managed policy for its account-wide CloudWatch role.
APIGW_LOGS_POLICY = "arn:{partition}:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs"
# The REQUEST authorizer: where it reads the key, how long API Gateway caches its answer per key.
AUTHORIZER_IDENTITY_SOURCE = "method.request.header.Authorization"
AUTHORIZER_TTL_SECONDS = 300
APP_PORT = "8080"
LAMBDA_DIR = Path(__file__).resolve().parent.parent / "lambda"


@dataclass(frozen=True)
class GatewayLimits:
    # Usage plan: steady requests/s, burst, and a request quota per period (0: no quota).
    rate_per_second: float = 10.0
    burst: int = 20
    quota: int = 0
    quota_period: str = "DAY"
    # A stream's longest life: the integration's timeout and the function's (API Gateway allows 900 s).
    timeout_seconds: int = 600
    memory_mb: int = 512
    max_body_bytes: int = 1_048_576

    def validate(self) -> None:
        require_positive(_COMPONENT, "limits.rate_per_second", self.rate_per_second)
        require(_COMPONENT, "limits.burst", isinstance(self.burst, int) and not isinstance(self.burst, bool)
                and self.burst >= 1, f"must be a whole number >= 1, got {self.burst!r}")
        require(_COMPONENT, "limits.quota", isinstance(self.quota, int) and not isinstance(self.quota, bool)
                and self.quota >= 0, f"must be a whole number >= 0 (0: no quota), got {self.quota!r}")
        require_choice(_COMPONENT, "limits.quota_period", self.quota_period, QUOTA_PERIODS)
        # Above the 29 s default (the point of streaming), at most the 15-minute stream limit.
        require_between(_COMPONENT, "limits.timeout_seconds", self.timeout_seconds, 30, 900)
        require_between(_COMPONENT, "limits.memory_mb", self.memory_mb, 128, 10240)
        # Lambda's request payload limit is 6 MB.
        require_between(_COMPONENT, "limits.max_body_bytes", self.max_body_bytes, 1024, 6 * 1024 * 1024)


@dataclass(frozen=True)
class StreamingGatewayArgs:
    endpoint_name: pulumi.Input[str]
    endpoint_arn: pulumi.Input[str]
    region: str
    price_per_hour: float
    model_id: str
    max_model_len: int
    # The app's code with its dependencies: `pulumi.FileArchive(str(gateway_bundle()))`.
    code: pulumi.Archive
    mode: str = "apigateway"
    api_key_source: str = "AUTHORIZER"
    function_url_auth: str = "API_KEY"
    limits: GatewayLimits = field(default_factory=GatewayLimits)
    log_retention_days: int = 30
    metrics_namespace: str = METRICS_NAMESPACE
    stage_name: str = "prod"
    # Empty: the published Lambda Web Adapter layer (x86_64) in `region`.
    lwa_layer_arn: str = ""
    # Access and execution logs need API Gateway's CloudWatch role, one setting per account and region that
    # every REST API there logs with. Off by default: turning it on replaces what is set (and `pulumi destroy`
    # then leaves the stack's role in place rather than resetting the region's setting).
    manage_account_log_role: bool = False
    # A browser origin allowed to call the API (the demo UI's CloudFront origin, `https://<domain>`): the app
    # answers CORS for it alone (GATEWAY_CORS_ORIGINS), an unauthenticated OPTIONS method passes preflights
    # to it, and API Gateway's own errors carry Access-Control-Allow-Origin so the page can read them.
    cors_origin: pulumi.Input[str] | None = None
    tags: Mapping[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        require_text(_COMPONENT, "region", self.region)
        require_text(_COMPONENT, "model_id", self.model_id)
        require(_COMPONENT, "price_per_hour", isinstance(self.price_per_hour, int | float)
                and not isinstance(self.price_per_hour, bool) and self.price_per_hour >= 0,
                f"must be a number of USD per hour >= 0, got {self.price_per_hour!r}")
        require_positive(_COMPONENT, "max_model_len", self.max_model_len)
        require(_COMPONENT, "code", isinstance(self.code, pulumi.Archive),
                f"must be a pulumi.Archive (build it with gateway_bundle()), got {type(self.code).__name__}")
        require_choice(_COMPONENT, "mode", self.mode, MODES,
                       hint=" (apigateway: REST API streaming; function_url: Lambda URL only; both)")
        require_choice(_COMPONENT, "api_key_source", self.api_key_source, API_KEY_SOURCES,
                       hint=" (AUTHORIZER: `Authorization: Bearer <key>`, what OpenAI clients send; HEADER: x-api-key)")
        require_choice(_COMPONENT, "function_url_auth", self.function_url_auth, FUNCTION_URL_AUTHS)
        if not isinstance(self.limits, GatewayLimits):
            raise InvalidArgs(_COMPONENT, "limits", f"must be a GatewayLimits, got {type(self.limits).__name__}")
        self.limits.validate()
        require(_COMPONENT, "log_retention_days", self.log_retention_days in LOG_RETENTION_DAYS,
                f"{self.log_retention_days!r} is not a CloudWatch retention period ({', '.join(map(str, LOG_RETENTION_DAYS))})")
        require_text(_COMPONENT, "metrics_namespace", self.metrics_namespace)
        require(_COMPONENT, "stage_name", isinstance(self.stage_name, str)
                and re.fullmatch(r"[A-Za-z0-9_-]{1,128}", self.stage_name) is not None,
                f"must be letters, digits, - or _ (1-128), got {self.stage_name!r}")
        require(_COMPONENT, "lwa_layer_arn", self.lwa_layer_arn == "" or re.fullmatch(
            r"arn:aws[a-z-]*:lambda:[a-z0-9-]+:\d{12}:layer:[A-Za-z0-9_-]+:\d+", self.lwa_layer_arn) is not None,
                f"must be empty or a Lambda layer version ARN, got {self.lwa_layer_arn!r}")
        if isinstance(self.cors_origin, str):  # an Output (a distribution's domain) is checked by the app at start
            require(_COMPONENT, "cors_origin", re.fullmatch(r"https://[a-z0-9.-]+(:[0-9]{1,5})?", self.cors_origin) is not None,
                    f"must be an https origin such as https://d111111abcdef8.cloudfront.net (no path, no "
                    f"trailing slash, no wildcard), got {self.cors_origin!r}")

    @property
    def uses_api_gateway(self) -> bool:
        return self.mode in ("apigateway", "both")

    @property
    def uses_function_url(self) -> bool:
        return self.mode in ("function_url", "both")

    @property
    def uses_authorizer(self) -> bool:
        return self.api_key_source == "AUTHORIZER"  # pragma: allowlist secret (setting value)

    @property
    def app_checks_key(self) -> bool:
        return self.uses_function_url and self.function_url_auth == "API_KEY"


class StreamingGateway(pulumi.ComponentResource):
    url: pulumi.Output[str]
    api_key: pulumi.Output[str]
    function_name: pulumi.Output[str]
    function_url: pulumi.Output[str] | None
    rest_api_id: pulumi.Output[str] | None
    # The REST API stage (arn:<partition>:apigateway:<region>::/restapis/<id>/stages/<name>), what a WAF web
    # ACL attaches to; None without API Gateway.
    stage_arn: pulumi.Output[str] | None
    log_group_name: pulumi.Output[str]

    def __init__(self, name: str, args: StreamingGatewayArgs, opts: pulumi.ResourceOptions | None = None):
        args.validate()
        super().__init__(f"llminfer:streaming_gateway:{_COMPONENT}", name, None, opts)
        self._name = name
        self._args = args
        child = pulumi.ResourceOptions(parent=self)
        tags = dict(args.tags)
        log_prefix = f"/llm-inference/{pulumi.get_stack()}/{name}"

        app_logs = cloudwatch.LogGroup(f"{name}-logs", name=f"{log_prefix}/app",
                                       retention_in_days=args.log_retention_days, tags=tags, opts=child)
        # The key clients present. API Gateway generates it (a stable random value); the app reads the
        # same value from Secrets Manager where it checks the key itself.
        api_key = apigateway.ApiKey(f"{name}-key", description=f"Client key of the {name} LLM gateway",
                                    enabled=True, tags=tags, opts=child)
        secret = None
        if args.app_checks_key:
            secret = secretsmanager.Secret(f"{name}-key-secret", description=f"API key the {name} gateway app checks",
                                           tags=tags, opts=child)
            secretsmanager.SecretVersion(f"{name}-key-secret-value", secret_id=secret.id,
                                         secret_string=api_key.value, opts=child)

        role = self._app_role(args, app_logs, secret, tags)
        self._partition = get_partition_output(opts=pulumi.InvokeOutputOptions(parent=self)).partition
        layer = args.lwa_layer_arn or self._partition.apply(lambda p: LWA_LAYER.format(partition=p, region=args.region))
        function = lambda_.Function(
            f"{name}-fn",
            description=f"OpenAI-compatible streaming gateway to SageMaker endpoint (model {args.model_id})",
            runtime=LAMBDA_RUNTIME,
            architectures=["x86_64"],
            handler="run.sh",
            code=args.code,
            role=role.arn,
            layers=[layer],
            memory_size=args.limits.memory_mb,
            timeout=args.limits.timeout_seconds,
            environment={"variables": self._environment(args, secret)},
            logging_config={"log_format": "Text", "log_group": app_logs.name},
            tags=tags,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[app_logs]),
        )

        self.function_url = None
        self.rest_api_id = None
        self.stage_arn = None
        url: pulumi.Output[str] | None = None
        if args.uses_api_gateway:
            rest_api, stage = self._rest_api(args, function, api_key, log_prefix, tags)
            self.rest_api_id = rest_api.id
            self.stage_arn = stage.arn
            url = stage.invoke_url.apply(lambda u: u.rstrip("/") + "/v1")
        if args.uses_function_url:
            function_url = lambda_.FunctionUrl(
                f"{name}-url",
                function_name=function.name,
                authorization_type="AWS_IAM" if args.function_url_auth == "AWS_IAM" else "NONE",
                invoke_mode="RESPONSE_STREAM",
                opts=child,
            )
            if args.function_url_auth != "AWS_IAM":
                self._public_url_permissions(function)
            self.function_url = function_url.function_url.apply(lambda u: u.rstrip("/") + "/v1")
            url = url or self.function_url

        self.url = url
        self.api_key = pulumi.Output.secret(api_key.value)
        self.function_name = function.name
        self.log_group_name = app_logs.name
        self.register_outputs({
            "url": self.url,
            "api_key": self.api_key,
            "function_name": self.function_name,
            "function_url": self.function_url,
            "rest_api_id": self.rest_api_id,
            "stage_arn": self.stage_arn,
            "log_group_name": self.log_group_name,
        })

    # --- the function ---

    def _public_url_permissions(self, function: lambda_.Function) -> None:
        """Auth NONE: "your function's resource-based policy is always in effect and must grant public
        access before your function URL can receive requests"; and "starting in October 2025, new function
        URLs will require both lambda:InvokeFunctionUrl and lambda:InvokeFunction permissions" (Lambda
        Developer Guide, urls-auth). Both are limited to calls through a function URL: the first by
        FunctionUrlAuthType NONE, the second by lambda:InvokedViaFunctionUrl (AddPermission, Oct 2025).
        The app itself refuses requests without the API key (read from Secrets Manager)."""
        child = pulumi.ResourceOptions(parent=self)
        lambda_.Permission(f"{self._name}-url-public", action="lambda:InvokeFunctionUrl", function=function.name,
                           principal="*", function_url_auth_type="NONE", opts=child)
        lambda_.Permission(f"{self._name}-url-public-invoke", action="lambda:InvokeFunction", function=function.name,
                           principal="*", invoked_via_function_url=True, opts=child)

    @staticmethod
    def _environment(args: StreamingGatewayArgs, secret: secretsmanager.Secret | None) -> dict[str, pulumi.Input[str]]:
        env: dict[str, pulumi.Input[str]] = {
            # Lambda Web Adapter: run.sh serves HTTP on AWS_LWA_PORT; stream responses as they are written.
            "AWS_LAMBDA_EXEC_WRAPPER": "/opt/bootstrap",
            "AWS_LWA_INVOKE_MODE": "response_stream",
            "AWS_LWA_PORT": APP_PORT,
            "AWS_LWA_READINESS_CHECK_PATH": "/health",
            # The app (lambda/gateway/settings.py).
            "GATEWAY_ENDPOINT_NAME": args.endpoint_name,
            "GATEWAY_REGION": args.region,
            "GATEWAY_MODEL_ID": args.model_id,
            "GATEWAY_MAX_MODEL_LEN": str(args.max_model_len),
            "GATEWAY_PRICE_PER_HOUR": repr(float(args.price_per_hour)),
            "GATEWAY_METRICS_NAMESPACE": args.metrics_namespace,
            "GATEWAY_MAX_BODY_BYTES": str(args.limits.max_body_bytes),
            "GATEWAY_READ_TIMEOUT_SECONDS": str(args.limits.timeout_seconds),
        }
        if secret is not None:
            env["GATEWAY_API_KEY_SECRET_ARN"] = secret.arn  # the secret's name, never its value
        if args.cors_origin is not None:
            env["GATEWAY_CORS_ORIGINS"] = args.cors_origin
        return env

    def _app_role(self, args: StreamingGatewayArgs, logs: cloudwatch.LogGroup,
                  secret: secretsmanager.Secret | None, tags: Mapping[str, str]) -> iam.Role:
        name = self._name
        role = iam.Role(f"{name}-role", assume_role_policy=_assume_role("lambda.amazonaws.com"),
                        description=f"The {name} gateway: invoke one SageMaker endpoint, write its own logs",
                        tags=tags, opts=pulumi.ResourceOptions(parent=self))
        secret_arn = secret.arn if secret is not None else None

        def document(values: list) -> str:
            endpoint_arn, log_group_arn, secret_value = values
            statements = [
                {"Sid": "InvokeThisEndpoint", "Effect": "Allow", "Action": ["sagemaker:InvokeEndpoint"],
                 "Resource": [endpoint_arn]},
                {"Sid": "WriteOwnLogs", "Effect": "Allow", "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                 "Resource": [log_group_arn, f"{log_group_arn}:*"]},
            ]
            if secret_value:
                statements.append({"Sid": "ReadApiKey", "Effect": "Allow", "Action": ["secretsmanager:GetSecretValue"],
                                   "Resource": [secret_value]})
            return policy_document(statements)

        iam.RolePolicy(f"{name}-role-policy", role=role.id,
                       policy=pulumi.Output.all(args.endpoint_arn, logs.arn, secret_arn).apply(document),
                       opts=pulumi.ResourceOptions(parent=self))
        return role

    # --- API Gateway ---

    def _rest_api(self, args: StreamingGatewayArgs, function: lambda_.Function, api_key: apigateway.ApiKey,
                  log_prefix: str, tags: Mapping[str, str]) -> tuple[apigateway.RestApi, apigateway.Stage]:
        name = self._name
        child = pulumi.ResourceOptions(parent=self)
        api = apigateway.RestApi(
            f"{name}-api",
            description=f"OpenAI-compatible streaming API for model {args.model_id}",
            api_key_source=args.api_key_source,
            endpoint_configuration={"types": "REGIONAL"},
            tags=tags,
            opts=child,
        )
        v1 = apigateway.Resource(f"{name}-v1", rest_api=api.id, parent_id=api.root_resource_id, path_part="v1",
                                 opts=child)
        proxy = apigateway.Resource(f"{name}-proxy", rest_api=api.id, parent_id=v1.id, path_part="{proxy+}",
                                    opts=child)
        authorizer: apigateway.Authorizer | None = None
        authorizer_content: dict | None = None
        if args.uses_authorizer:
            authorizer, authorizer_content = self._authorizer(args, api, log_prefix, tags)
        method_content = {
            "http_method": "ANY",
            "authorization": "CUSTOM" if authorizer is not None else "NONE",
            "api_key_required": True,
            "request_parameters": {"method.request.path.proxy": True},
        }
        method = apigateway.Method(
            f"{name}-method",
            rest_api=api.id,
            resource_id=proxy.id,
            authorizer_id=authorizer.id if authorizer is not None else None,
            opts=child,
            **method_content,
        )
        integration_content = {
            "type": "AWS_PROXY",
            "integration_http_method": "POST",
            "uri": function.response_streaming_invoke_arn,
            "response_transfer_mode": "STREAM",
            "timeout_milliseconds": args.limits.timeout_seconds * 1000,
        }
        integration = apigateway.Integration(
            f"{name}-integration",
            rest_api=api.id,
            resource_id=proxy.id,
            http_method=method.http_method,
            opts=child,
            **integration_content,
        )
        preflight_content = None
        preflight: list[pulumi.Resource] = []
        if args.cors_origin is not None:
            preflight_content, preflight = self._preflight(api, proxy, integration_content)
        lambda_.Permission(f"{name}-invoke-from-api", action="lambda:InvokeFunction", function=function.name,
                           principal="apigateway.amazonaws.com",
                           source_arn=api.execution_arn.apply(lambda arn: f"{arn}/*/*/v1/*"), opts=child)
        responses, responses_content = self._gateway_responses(api, args.cors_origin)
        method_settings = {
            "metrics_enabled": True,
            "logging_level": "ERROR",
            "data_trace_enabled": False,  # full request logging would write the key and prompts
            "throttling_rate_limit": args.limits.rate_per_second,
            "throttling_burst_limit": args.limits.burst,
        }

        # A new deployment whenever what it serves changes. A deployment is a snapshot of the API's
        # configuration: an in-place change of a method, the integration, the authorizer or a gateway
        # response keeps every ID, so the fingerprint is of the contents (IDs would miss those changes).
        fingerprint = pulumi.Output.from_input({
            "paths": ["v1", "{proxy+}"],
            "method": method_content,
            "integration": integration_content,
            "authorizer": authorizer_content,
            "responses": responses_content,
            "method_settings": method_settings,
            "preflight": preflight_content,
        }).apply(deployment_fingerprint)
        deployment = apigateway.Deployment(
            f"{name}-deployment", rest_api=api.id, triggers={"redeployment": fingerprint},
            opts=pulumi.ResourceOptions(parent=self, depends_on=[method, integration, *responses, *preflight]),
        )

        access_logs = cloudwatch.LogGroup(f"{name}-access-logs", name=f"{log_prefix}/access",
                                          retention_in_days=args.log_retention_days, tags=tags, opts=child)
        # API Gateway writes execution logs to a group of this fixed name; made here so it has a retention.
        execution_logs = cloudwatch.LogGroup(
            f"{name}-execution-logs",
            name=api.id.apply(lambda api_id: f"API-Gateway-Execution-Logs_{api_id}/{args.stage_name}"),
            retention_in_days=args.log_retention_days, tags=tags, opts=child,
        )
        stage_depends: list[pulumi.Resource] = [execution_logs]
        if args.manage_account_log_role:
            stage_depends.append(self._account_log_role(tags))
        stage = apigateway.Stage(
            f"{name}-stage",
            rest_api=api.id,
            deployment=deployment.id,
            stage_name=args.stage_name,
            access_log_settings={"destination_arn": access_logs.arn, "format": json.dumps(ACCESS_LOG_FORMAT)},
            tags=tags,
            opts=pulumi.ResourceOptions(parent=self, depends_on=stage_depends),
        )
        apigateway.MethodSettings(
            f"{name}-method-settings",
            rest_api=api.id,
            stage_name=stage.stage_name,
            method_path="*/*",
            settings=method_settings,
            opts=child,
        )
        plan = apigateway.UsagePlan(
            f"{name}-usage-plan",
            description=f"Limits of the {name} LLM gateway's clients",
            api_stages=[{"api_id": api.id, "stage": stage.stage_name}],
            throttle_settings={"rate_limit": args.limits.rate_per_second, "burst_limit": args.limits.burst},
            quota_settings=({"limit": args.limits.quota, "period": args.limits.quota_period}
                            if args.limits.quota else None),
            tags=tags,
            opts=child,
        )
        apigateway.UsagePlanKey(f"{name}-usage-plan-key", key_id=api_key.id, key_type="API_KEY",
                                usage_plan_id=plan.id, opts=child)
        return api, stage

    def _authorizer(self, args: StreamingGatewayArgs, api: apigateway.RestApi, log_prefix: str,
                    tags: Mapping[str, str]) -> tuple[apigateway.Authorizer, dict]:
        """A REQUEST authorizer that turns `Authorization: Bearer <key>` into the usage plan's API key;
        with what the deployment's fingerprint needs of it."""
        name = self._name
        child = pulumi.ResourceOptions(parent=self)
        logs = cloudwatch.LogGroup(f"{name}-authorizer-logs", name=f"{log_prefix}/authorizer",
                                   retention_in_days=args.log_retention_days, tags=tags, opts=child)
        role = iam.Role(f"{name}-authorizer-role", assume_role_policy=_assume_role("lambda.amazonaws.com"),
                        description=f"The {name} gateway's authorizer: write its own logs", tags=tags, opts=child)
        iam.RolePolicy(
            f"{name}-authorizer-role-policy", role=role.id,
            policy=logs.arn.apply(lambda arn: policy_document([
                {"Sid": "WriteOwnLogs", "Effect": "Allow", "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                 "Resource": [arn, f"{arn}:*"]},
            ])),
            opts=child,
        )
        function = lambda_.Function(
            f"{name}-authorizer-fn",
            description=f"Bearer token -> API key for the {name} gateway's usage plan",
            runtime=LAMBDA_RUNTIME,
            architectures=["x86_64"],
            handler="authorizer.handler",
            code=pulumi.AssetArchive({"authorizer.py": pulumi.FileAsset(str(LAMBDA_DIR / "gateway" / "authorizer.py"))}),
            role=role.arn,
            memory_size=128,
            timeout=5,
            logging_config={"log_format": "Text", "log_group": logs.name},
            tags=tags,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[logs]),
        )
        content = {
            "type": "REQUEST",
            "authorizer_uri": function.invoke_arn,
            "identity_source": AUTHORIZER_IDENTITY_SOURCE,
            # Cached per Authorization header value: one authorizer call per key per TTL.
            "authorizer_result_ttl_in_seconds": AUTHORIZER_TTL_SECONDS,
        }
        authorizer = apigateway.Authorizer(f"{name}-authorizer", rest_api=api.id, opts=child, **content)
        lambda_.Permission(f"{name}-authorizer-invoke", action="lambda:InvokeFunction", function=function.name,
                           principal="apigateway.amazonaws.com",
                           source_arn=pulumi.Output.all(api.execution_arn, authorizer.id).apply(
                               lambda v: f"{v[0]}/authorizers/{v[1]}"),
                           opts=child)
        return authorizer, content

    def _preflight(self, api: apigateway.RestApi, proxy: apigateway.Resource,
                   integration_content: Mapping) -> tuple[dict, list[pulumi.Resource]]:
        """OPTIONS on /v1/{proxy+}, with no authorizer and no key (a browser's preflight carries neither),
        proxied to the app, which answers it for the allowed origin only (lambda/gateway/app.py). An explicit
        OPTIONS method is the one API Gateway picks over ANY for that verb (developer guide, "Set up a
        proxy integration with a proxy resource"; CORS for REST APIs: the backend of a proxy integration
        returns the CORS headers)."""
        child = pulumi.ResourceOptions(parent=self)
        method_content = {"http_method": "OPTIONS", "authorization": "NONE", "api_key_required": False,
                          "request_parameters": {"method.request.path.proxy": True}}
        method = apigateway.Method(f"{self._name}-preflight", rest_api=api.id, resource_id=proxy.id, opts=child,
                                   **method_content)
        integration = apigateway.Integration(f"{self._name}-preflight-integration", rest_api=api.id,
                                             resource_id=proxy.id, http_method=method.http_method, opts=child,
                                             **integration_content)
        return {"method": method_content, "integration": dict(integration_content)}, [method, integration]

    def _gateway_responses(self, api: apigateway.RestApi,
                           cors_origin: pulumi.Input[str] | None = None) -> tuple[list[apigateway.Response], list[dict]]:
        """API Gateway's own refusals (no key, over the limits) in the OpenAI error shape clients parse; with
        a CORS origin, readable by that origin's page (else the browser shows a 401 or 429 as a network error)."""
        responses, contents = [], []
        for response_type, status, error_type, code, headers in GATEWAY_RESPONSES:
            template = json.dumps({"error": {"message": "MESSAGE", "type": error_type, "param": None, "code": code}})
            parameters: dict[str, pulumi.Input[str]] = {f"gatewayresponse.header.{k}": f"'{v}'" for k, v in headers.items()}
            if cors_origin is not None:
                parameters["gatewayresponse.header.Access-Control-Allow-Origin"] = pulumi.Output.concat("'", cors_origin, "'")
                parameters["gatewayresponse.header.Vary"] = "'Origin'"
            content = {
                "response_type": response_type,
                "status_code": status,
                "response_templates": {"application/json": template.replace('"MESSAGE"', "$context.error.messageString")},
                "response_parameters": parameters or None,
            }
            responses.append(apigateway.Response(
                f"{self._name}-response-{response_type.lower().replace('_', '-')}",
                rest_api_id=api.id,
                opts=pulumi.ResourceOptions(parent=self),
                **content,
            ))
            contents.append(content)
        return responses, contents

    def _account_log_role(self, tags: Mapping[str, str]) -> apigateway.Account:
        """API Gateway's CloudWatch role: one setting per account and region, shared by every REST API there.

        pulumi-aws 7 (terraform-provider-aws 6) always resets it on delete ("reset_on_delete has been
        removed. The destroy operation will now always reset the API Gateway account settings": the v6
        upgrade guide, resource/aws_api_gateway_account), which would cut the other APIs' logs. So the
        setting and the role it names are retained on delete: `pulumi destroy` leaves them as they are.
        """
        name = self._name
        # retain_on_delete: Pulumi's counterpart of the `removed` block the upgrade guide points to.
        kept = pulumi.ResourceOptions(parent=self, retain_on_delete=True)
        role = iam.Role(f"{name}-apigw-logs-role", assume_role_policy=_assume_role("apigateway.amazonaws.com"),
                        description="API Gateway (account-wide setting): write access and execution logs",
                        tags=tags, opts=kept)
        attachment = iam.RolePolicyAttachment(
            f"{name}-apigw-logs-policy", role=role.name,
            policy_arn=self._partition.apply(lambda p: APIGW_LOGS_POLICY.format(partition=p)), opts=kept,
        )
        # API Gateway checks the role can write to CloudWatch when the setting is made: after the attachment.
        return apigateway.Account(
            f"{name}-apigw-account", cloudwatch_role_arn=role.arn,
            opts=pulumi.ResourceOptions.merge(kept, pulumi.ResourceOptions(depends_on=[attachment])),
        )


def deployment_fingerprint(content: Mapping) -> str:
    """The hash of what a deployment snapshots (plain values: resolved outputs, no resource IDs)."""
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


# Access log record (JSON). The key's id, never the key.
ACCESS_LOG_FORMAT = {
    "requestId": "$context.requestId",
    "ip": "$context.identity.sourceIp",
    "requestTime": "$context.requestTime",
    "method": "$context.httpMethod",
    "path": "$context.path",
    "status": "$context.status",
    "responseLength": "$context.responseLength",
    "responseLatencyMs": "$context.responseLatency",
    "integrationLatencyMs": "$context.integration.latency",
    "integrationStatus": "$context.integration.status",
    "apiKeyId": "$context.identity.apiKeyId",
    "error": "$context.error.message",
    "authorizerError": "$context.authorizer.error",
}

# (gateway response type, status, OpenAI error type, code, extra headers)
GATEWAY_RESPONSES = (
    ("UNAUTHORIZED", "401", "invalid_request_error", "missing_api_key", {}),
    ("MISSING_AUTHENTICATION_TOKEN", "404", "invalid_request_error", "not_found", {}),
    ("INVALID_API_KEY", "403", "invalid_request_error", "invalid_api_key", {}),
    ("ACCESS_DENIED", "403", "invalid_request_error", "invalid_api_key", {}),
    ("THROTTLED", "429", "rate_limit_error", "rate_limit_exceeded", {"Retry-After": "1"}),
    ("QUOTA_EXCEEDED", "429", "rate_limit_error", "quota_exceeded", {}),
    ("DEFAULT_4XX", None, "invalid_request_error", "gateway_error", {}),
    ("DEFAULT_5XX", None, "server_error", "gateway_error", {}),
)


def _assume_role(service: str) -> str:
    return policy_document([{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}])


# --- the code bundle ---------------------------------------------------------------------------------

# The target: Lambda python3.12 on x86_64. Environment markers of dependencies are judged for it.
_TARGET_MARKERS = {
    "python_version": "3.12", "python_full_version": "3.12.0", "sys_platform": "linux", "platform_system": "Linux",
    "platform_machine": "x86_64", "os_name": "posix", "implementation_name": "cpython",
    "platform_python_implementation": "CPython", "extra": "",
}
# botocore ships the models of every AWS service (most of its size); the app calls two.
_BOTOCORE_SERVICES = ("sagemaker-runtime", "secretsmanager")
_BUNDLE_FORMAT = "2"  # 2: entries made on Unix (create_system 3) on every OS


class BundleError(RuntimeError):
    pass


def gateway_bundle(cache_dir: str | os.PathLike | None = None) -> Path:
    """The gateway's Lambda code archive (zip): `run.sh`, `gateway/`, and the dependencies of
    lambda/requirements.txt for python3.12 x86_64. Built once per content, then reused from `cache_dir`
    (default: build/lambda/ in the repo).

    Dependencies come from this virtualenv when it holds exactly the pinned, pure-Python versions (no
    network: the usual case, as pyproject.toml pins the same), else from `pip install --platform
    manylinux2014_x86_64 --only-binary=:all: --python-version 3.12` (needs PyPI).
    """
    cache = Path(cache_dir) if cache_dir else LAMBDA_DIR.parent / "build" / "lambda"
    requirements = _requirements()
    sources = _app_sources()
    digest = hashlib.sha256(_BUNDLE_FORMAT.encode())
    for line in requirements:
        digest.update(line.encode())
    for relative, path in sources:
        digest.update(relative.encode() + b"\0" + path.read_bytes())
    target = cache / f"gateway-{digest.hexdigest()[:16]}.zip"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gateway-bundle-") as scratch:
        files = _local_dependencies(requirements)
        if files is None:
            files = _pip_dependencies(Path(scratch) / "deps")
        partial = target.with_suffix(".zip.partial")
        _write_zip(partial, [*sources, *files])
        partial.replace(target)
    return target


def _requirements() -> list[str]:
    lines = (LAMBDA_DIR / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _app_sources() -> list[tuple[str, Path]]:
    sources = [("run.sh", LAMBDA_DIR / "run.sh")]
    for path in sorted((LAMBDA_DIR / "gateway").rglob("*.py")):
        sources.append((path.relative_to(LAMBDA_DIR).as_posix(), path))
    return sources


def _local_dependencies(requirements: list[str]) -> list[tuple[str, Path]] | None:
    """The files of the requirements' closure from this environment, or None when it cannot serve it."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found: dict[str, metadata.Distribution] = {}
    pending = [Requirement(line) for line in requirements]
    while pending:
        requirement = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate(_TARGET_MARKERS):
            continue
        key = canonicalize_name(requirement.name)
        if key in found:
            continue
        try:
            dist = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            return None
        if not requirement.specifier.contains(dist.version, prereleases=True):
            return None
        if "Root-Is-Purelib: true" not in (dist.read_text("WHEEL") or ""):
            return None  # compiled for this machine, not for Lambda
        found[key] = dist
        pending.extend(Requirement(spec) for spec in dist.requires or ())
    files: list[tuple[str, Path]] = []
    for dist in found.values():
        for entry in dist.files or ():
            relative = entry.as_posix()
            if relative.startswith("..") or "__pycache__" in relative or relative.endswith(".pyc"):
                continue
            path = Path(dist.locate_file(entry))
            if path.is_file() and _wanted(relative):
                files.append((relative, path))
    return sorted(files)


def _pip_dependencies(target: Path) -> list[tuple[str, Path]]:
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--target", str(target),
        "--platform", "manylinux2014_x86_64", "--only-binary=:all:", "--python-version", "3.12",
        "--implementation", "cp", "-r", str(LAMBDA_DIR / "requirements.txt"),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise BundleError(
            "could not install the gateway's dependencies for Lambda (python3.12, x86_64):\n"
            f"  {' '.join(command)}\n{result.stderr.strip()[-2000:]}\n"
            "Check PyPI access, or install the versions of lambda/requirements.txt into this virtualenv."
        )
    files = []
    for path in sorted(target.rglob("*")):
        relative = path.relative_to(target).as_posix()
        if path.is_file() and "__pycache__" not in relative and not relative.startswith("bin/") and _wanted(relative):
            files.append((relative, path))
    return files


def _wanted(relative: str) -> bool:
    if relative.startswith("botocore/data/"):
        parts = relative.split("/")
        return len(parts) == 3 or parts[2] in _BOTOCORE_SERVICES
    return True


def _write_zip(path: Path, files: Iterable[tuple[str, Path]]) -> None:
    """A reproducible zip (fixed timestamps, sorted), with run.sh executable.

    Every entry says it was made on Unix (create_system 3): zipfile writes 0 (MS-DOS) on Windows, and an
    unzip then ignores the Unix mode in external_attr, so run.sh would lose its execute bit.
    """
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for relative, source in sorted(files):
            info = zipfile.ZipInfo(relative, date_time=(2020, 1, 1, 0, 0, 0))
            info.create_system = 3
            mode = 0o755 if relative == "run.sh" else 0o644
            info.external_attr = (stat.S_IFREG | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(source, "rb") as handle:
                archive.writestr(info, handle.read())


__all__ = [
    "BundleError",
    "GatewayLimits",
    "StreamingGateway",
    "StreamingGatewayArgs",
    "gateway_bundle",
]
