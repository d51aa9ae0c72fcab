"""`pulumi up -s aws`: SageMaker LMI/vLLM endpoint with token-aware autoscaling and monitoring."""

from __future__ import annotations

import re
from typing import Any

import pulumi

from components.aws_common import sagemaker_instance_types
from components.cost_budget import create_budget
from components.demo_ui import DemoUi, DemoUiArgs, DemoUiConfig, DemoUiConfigArgs
from components.endpoint_monitoring import EndpointMonitoring, EndpointMonitoringArgs
from components.sagemaker_endpoint import SageMakerEndpoint, SageMakerEndpointArgs, derived_endpoint_name
from components.sagemaker_vpc import SageMakerVpc, SageMakerVpcArgs
from components.streaming_gateway import GatewayLimits, StreamingGateway, StreamingGatewayArgs, gateway_bundle
from components.token_autoscaling import TokenAwareAutoscaling, TokenAwareAutoscalingArgs
from components.waf import ApiWaf, ApiWafArgs
from planning import catalog
from stacks.budget import budget_args_from_config
from stacks.config import ConfigError, StackConfig, config_keys, standard_tags
from stacks.fit import check_stack_fit

# Component field -> config key, so a bad value is reported under the key the user set.
CONFIG_KEYS = {
    "model_id": "modelId",
    "image_tag": "lmiImageTag",
    "image_account": "lmiImageAccount",
    "instance_type": "sagemakerInstanceType",
    "initial_instance_count": "minInstances",
    "max_model_len": "maxModelLen",
    "max_batch_size": "maxBatchSize",
    "gpu_memory_utilization": "gpuMemoryUtilization",
    "startup_health_check_timeout_seconds": "startupHealthCheckTimeoutSeconds",
    "model_download_timeout_seconds": "modelDownloadTimeoutSeconds",
    "inference_ami_version": "inferenceAmiVersion",
    "log_retention_days": "logRetentionDays",
    "min_instances": "minInstances",
    "max_instances": "maxInstances",
    "target_tokens_per_minute_per_instance": "targetTokensPerMinutePerInstance",
    "scale_out_cooldown_seconds": "scaleOutCooldownSeconds",
    "scale_in_cooldown_seconds": "scaleInCooldownSeconds",
    "target_concurrent_requests_per_instance": "targetConcurrentRequestsPerInstance",
    "slo_latency_p95_ms": "sloLatencyP95Ms",
    "slo_latency_p99_ms": "sloLatencyP99Ms",
    "slo_e2e_per_token_p95_ms": "sloE2ePerTokenP95Ms",
    "alarm_email": "alarmEmail",
    "price_per_hour": "pricePerHour",
    # the streaming gateway
    "mode": "gatewayMode",
    "api_key_source": "gatewayApiKeySource",  # pragma: allowlist secret (config key name)
    "function_url_auth": "gatewayFunctionUrlAuth",
    "limits.rate_per_second": "gatewayRateLimit",
    "limits.burst": "gatewayBurstLimit",
    "limits.quota": "gatewayQuota",
    "limits.quota_period": "gatewayQuotaPeriod",
    "limits.timeout_seconds": "gatewayTimeoutSeconds",
    "limits.memory_mb": "gatewayMemoryMb",
    "limits.max_body_bytes": "gatewayMaxBodyBytes",
    "stage_name": "gatewayStageName",
    "lwa_layer_arn": "gatewayLwaLayerArn",
    # the WAF web ACL (wafRateLimitPerIp > 0)
    "rate_limit_per_ip": "wafRateLimitPerIp",
    "managed_rule_action": "wafManagedRulesAction",
    "blocked_alarm_threshold": "wafBlockedAlarmThreshold",
    # the private network (sagemakerVpc)
    "cidr_block": "sagemakerVpcCidr",
    "egress": "sagemakerVpcEgress",
}


def waf_args_from_config(cfg: StackConfig, region: str, tags: dict[str, str]) -> ApiWafArgs | None:
    """The web ACL's args (checked now, before anything exists), or None when wafRateLimitPerIp is 0."""
    limit = cfg.integer("wafRateLimitPerIp", minimum=0)
    if limit == 0:
        return None
    mode = cfg.text("gatewayMode")
    if mode == "function_url":
        raise ConfigError(cfg.key("wafRateLimitPerIp"), limit,
                          "WAF attaches to the API Gateway stage and gatewayMode function_url has none "
                          "(a Lambda Function URL cannot take a web ACL)",
                          f"set {cfg.key('gatewayMode')} to apigateway (or both), or {cfg.key('wafRateLimitPerIp')} to 0")
    args = ApiWafArgs(
        stage_arn="",  # set once the gateway's stage exists
        region=region,
        rate_limit_per_ip=limit,
        log_retention_days=cfg.integer("logRetentionDays"),
        managed_rule_action=cfg.text("wafManagedRulesAction"),
        name=re.sub(r"[^A-Za-z0-9_-]+", "-", f"llm-gateway-{pulumi.get_stack()}")[:100].strip("-"),
        blocked_alarm_threshold=cfg.integer("wafBlockedAlarmThreshold", minimum=0),
        tags=tags,
    )
    args.validate()
    return args


def hourly_price(cfg: StackConfig, instance_type: str) -> float:
    """`pricePerHour` when set, else the catalog's on-demand price of the instance type."""
    configured = cfg.number("pricePerHour", minimum=0)
    if configured > 0:
        return configured
    try:
        return catalog.hourly_price(instance_type)
    except catalog.UnknownInstance:
        raise ConfigError(
            cfg.key("pricePerHour"),
            configured,
            f"the catalog has no price for {instance_type}",
            f"set it: `pulumi config set {cfg.key('pricePerHour')} <USD per hour>`",
        ) from None


def build() -> dict[str, Any]:
    cfg = StackConfig()
    region = pulumi.Config("aws").require("region")
    tags = standard_tags(cfg, "aws")
    instance_type = cfg.text("sagemakerInstanceType", choices=sagemaker_instance_types())
    min_instances = cfg.integer("minInstances")
    max_instances = cfg.integer("maxInstances")
    price = hourly_price(cfg, instance_type)
    # The cost guard (optional: budgetMonthlyUsd 0 creates none), checked before anything is created.
    budget_args = budget_args_from_config(cfg, "aws", tags=tags)

    with config_keys(cfg, CONFIG_KEYS):
        # Scaling first: its args check min/max before anything is created.
        scaling_args = TokenAwareAutoscalingArgs(
            endpoint_name="",  # set below, once the endpoint exists
            min_instances=min_instances,
            max_instances=max_instances,
            target_tokens_per_minute_per_instance=cfg.integer("targetTokensPerMinutePerInstance"),
            scale_out_cooldown_seconds=cfg.integer("scaleOutCooldownSeconds"),
            scale_in_cooldown_seconds=cfg.integer("scaleInCooldownSeconds"),
            concurrency_scale_out=cfg.boolean("concurrencyScaleOut"),
            target_concurrent_requests_per_instance=cfg.integer("targetConcurrentRequestsPerInstance"),
            tags=tags,
        )
        scaling_args.validate()
        waf_args = waf_args_from_config(cfg, region, tags)
        vpc_args = None
        if cfg.boolean("sagemakerVpc"):
            vpc_args = SageMakerVpcArgs(region=region, cidr_block=cfg.text("sagemakerVpcCidr"),
                                        egress=cfg.text("sagemakerVpcEgress"), tags=tags)
            vpc_args.validate()
        endpoint_args = SageMakerEndpointArgs(
            model_id=cfg.text("modelId"),
            region=region,
            image_tag=cfg.text("lmiImageTag"),
            image_account=cfg.text("lmiImageAccount"),
            instance_type=instance_type,
            initial_instance_count=min_instances,
            max_model_len=cfg.integer("maxModelLen"),
            max_batch_size=cfg.integer("maxBatchSize"),
            gpu_memory_utilization=cfg.number("gpuMemoryUtilization"),
            startup_health_check_timeout_seconds=cfg.integer("startupHealthCheckTimeoutSeconds"),
            model_download_timeout_seconds=cfg.integer("modelDownloadTimeoutSeconds"),
            inference_ami_version=cfg.text("inferenceAmiVersion", allow_empty=True),
            log_retention_days=cfg.integer("logRetentionDays"),
            # Named after the stack, and checked against SageMaker's pattern before anything exists.
            endpoint_name=derived_endpoint_name("llm", pulumi.get_stack()),
            # In clear in the SageMaker model (DescribeModel shows it): see hfToken in Pulumi.yaml.
            hf_token=cfg.secret("hfToken"),
            tags=tags,
        )
        endpoint_args.validate()
        # The model must fit the instance's GPUs (weights + one max-length sequence of KV cache): refused
        # here, with the numbers, before the endpoint is created. LMI has no quantization key here: the
        # checkpoint's own (AWQ for the default model) is what vLLM loads.
        check_stack_fit(
            cfg,
            instance_key="sagemakerInstanceType",
            instance_type=instance_type,
            instance_choices=sagemaker_instance_types(),
        )
        if vpc_args is not None:
            vpc = SageMakerVpc("llm-vpc", vpc_args)
            endpoint_args = SageMakerEndpointArgs(**{
                **endpoint_args.__dict__,
                "vpc_subnet_ids": vpc.private_subnet_ids,
                "vpc_security_group_ids": vpc.model_security_group_id.apply(lambda sg: [sg]),
            })
        endpoint = SageMakerEndpoint("llm", endpoint_args)
        TokenAwareAutoscaling(
            "llm-scaling",
            TokenAwareAutoscalingArgs(**{**scaling_args.__dict__, "endpoint_name": endpoint.endpoint_name}),
        )
        monitoring = EndpointMonitoring(
            "llm-monitoring",
            EndpointMonitoringArgs(
                endpoint_name=endpoint.endpoint_name,
                region=region,
                price_per_hour=price,
                max_instances=max_instances,
                slo_latency_p95_ms=cfg.integer("sloLatencyP95Ms"),
                slo_latency_p99_ms=cfg.integer("sloLatencyP99Ms"),
                slo_e2e_per_token_p95_ms=cfg.integer("sloE2ePerTokenP95Ms"),
                alarm_email=cfg.text("alarmEmail", allow_empty=True),
                waf_web_acl_name=waf_args.name if waf_args else "",
                tags=tags,
            ),
        )
        # demoUi: the chat playground on S3 + CloudFront; the gateway answers CORS for its origin alone.
        demo = (DemoUi("demo-ui", DemoUiArgs(log_retention_days=cfg.integer("logRetentionDays"), tags=tags))
                if cfg.boolean("demoUi") else None)
        # OpenAI-compatible streaming front door; its EMF metrics feed the autoscaling policy above.
        gateway = StreamingGateway(
            "llm-gateway",
            StreamingGatewayArgs(
                endpoint_name=endpoint.endpoint_name,
                endpoint_arn=endpoint.endpoint_arn,
                region=region,
                price_per_hour=price,
                model_id=cfg.text("modelId"),
                max_model_len=cfg.integer("maxModelLen"),
                code=pulumi.FileArchive(str(gateway_bundle())),
                mode=cfg.text("gatewayMode"),
                api_key_source=cfg.text("gatewayApiKeySource"),
                function_url_auth=cfg.text("gatewayFunctionUrlAuth"),
                limits=GatewayLimits(
                    rate_per_second=cfg.number("gatewayRateLimit"),
                    burst=cfg.integer("gatewayBurstLimit"),
                    quota=cfg.integer("gatewayQuota"),
                    quota_period=cfg.text("gatewayQuotaPeriod"),
                    timeout_seconds=cfg.integer("gatewayTimeoutSeconds"),
                    memory_mb=cfg.integer("gatewayMemoryMb"),
                    max_body_bytes=cfg.integer("gatewayMaxBodyBytes"),
                ),
                log_retention_days=cfg.integer("logRetentionDays"),
                stage_name=cfg.text("gatewayStageName"),
                lwa_layer_arn=cfg.text("gatewayLwaLayerArn", allow_empty=True),
                manage_account_log_role=cfg.boolean("gatewayManageAccountLogRole"),
                cors_origin=demo.origin if demo is not None else None,
                tags=tags,
            ),
        )
        if demo is not None:
            DemoUiConfig("demo-ui-config", DemoUiConfigArgs(bucket_name=demo.bucket_name, api_url=gateway.url,
                                                            model=cfg.text("modelId"), tags=tags))

        waf = None
        if waf_args is not None:
            waf = ApiWaf("llm-waf", ApiWafArgs(**{**waf_args.__dict__, "stage_arn": gateway.stage_arn,
                                                  "alarm_topic_arn": monitoring.topic_arn,
                                                  "cors_origin": demo.origin if demo is not None else None}))

    budget = create_budget("cost", budget_args) if budget_args is not None else None

    outputs: dict[str, Any] = {
        "url": gateway.url,
        "apiKey": gateway.api_key,
        "endpointName": endpoint.endpoint_name,
        "region": region,
        "instanceType": instance_type,
        "pricePerHour": price,
        "dashboardUrl": monitoring.dashboard_url,
        "alarmTopicArn": monitoring.topic_arn,
        # What `python -m bench --stack --profile ...` polls (bench/capacity.py): DescribeEndpoint's
        # Current/DesiredInstanceCount of this variant.
        "capacity": pulumi.Output.all(endpoint.endpoint_name, endpoint.variant_name).apply(
            lambda v: {"kind": "sagemaker", "endpointName": v[0], "variantName": v[1], "region": region}),
    }
    if gateway.function_url is not None:
        # gatewayMode function_url or both: the Lambda Function URL's OpenAI base URL (ending in /v1).
        # With function_url alone, `url` is this same URL; with both, `url` stays the REST API's.
        outputs["functionUrl"] = gateway.function_url
    if budget is not None:
        outputs["budgetName"] = budget.budget_name
    if waf is not None:
        outputs["wafWebAclArn"] = waf.web_acl_arn
        outputs["wafLogGroup"] = waf.log_group_name
    if demo is not None:
        outputs["demoUiUrl"] = demo.url  # open it, paste `pulumi stack output apiKey --show-secrets`
    return outputs
