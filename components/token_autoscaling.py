"""Token-aware autoscaling of a SageMaker endpoint variant (Application Auto Scaling).

Target tracking needs a metric that FALLS when capacity is added. Fleet-wide completion tokens per
minute do not (more instances serve the same tokens), so a policy on them would scale out without
end. The policy tracks tokens per minute PER INSTANCE instead, built with metric math from metrics
that exist: the gateway's `CompletionTokens` (EMF) and SageMaker's `Invocations` and
`InvocationsPerInstance` (invocations normalised by the variant's instance count), since
tokens x invocations_per_instance / invocations = tokens / instances.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
from pulumi_aws import appautoscaling

from components._args import require, require_min_max, require_positive, require_text
from components.aws_common import METRICS_DIMENSION, METRICS_NAMESPACE

_COMPONENT = "TokenAwareAutoscaling"
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
# IF/FILL keep the series defined when the endpoint is idle (no datapoints -> 0 tokens per instance),
# so the policy can scale in; a division by zero would leave gaps instead.
TOKENS_PER_INSTANCE_EXPRESSION = (
    "IF(FILL(invocations, 0) > 0, FILL(tokens, 0) * FILL(invocations_per_instance, 0) / FILL(invocations, 0), 0)"
)


@dataclass(frozen=True)
class TokenAwareAutoscalingArgs:
    endpoint_name: pulumi.Input[str]
    min_instances: int
    max_instances: int
    target_tokens_per_minute_per_instance: int
    variant_name: str = "AllTraffic"
    metrics_namespace: str = METRICS_NAMESPACE
    scale_out_cooldown_seconds: int = 300
    scale_in_cooldown_seconds: int = 300
    # A second policy on SageMaker's 10-second concurrency metric reacts to bursts long before a
    # one-minute token sum does. Application Auto Scaling scales out when ANY policy asks, and in only
    # when ALL agree.
    concurrency_scale_out: bool = True
    target_concurrent_requests_per_instance: int = 24
    # The scalable target takes tags (the scaling policies do not).
    tags: Mapping[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        require_min_max(_COMPONENT, "min_instances", self.min_instances, "max_instances", self.max_instances)
        require(_COMPONENT, "min_instances", self.min_instances >= 1,
                "must be at least 1 (a SageMaker real-time endpoint variant cannot scale to zero)")
        require_positive(_COMPONENT, "target_tokens_per_minute_per_instance", self.target_tokens_per_minute_per_instance)
        require_text(_COMPONENT, "metrics_namespace", self.metrics_namespace)
        require_text(_COMPONENT, "variant_name", self.variant_name)
        for field_name in ("scale_out_cooldown_seconds", "scale_in_cooldown_seconds"):
            value = getattr(self, field_name)
            require(_COMPONENT, field_name, isinstance(value, int) and 0 <= value <= 3600,
                    f"must be 0-3600 seconds, got {value!r}")
        if self.concurrency_scale_out:
            require_positive(_COMPONENT, "target_concurrent_requests_per_instance",
                             self.target_concurrent_requests_per_instance)


def tokens_per_instance_queries(endpoint_name: str, variant_name: str, namespace: str) -> list[dict]:
    """The metric-math queries (plain dicts in the API's shape) whose last one is tokens/min/instance."""
    variant_dims = [
        {"name": "EndpointName", "value": endpoint_name},
        {"name": "VariantName", "value": variant_name},
    ]
    return [
        {
            "id": "tokens",
            "label": "Completion tokens per minute (gateway EMF)",
            "metric_stat": {
                "metric": {
                    "namespace": namespace,
                    "metric_name": "CompletionTokens",
                    "dimensions": [{"name": METRICS_DIMENSION, "value": endpoint_name}],
                },
                "stat": "Sum",
            },
            "return_data": False,
        },
        {
            "id": "invocations",
            "label": "Invocations per minute",
            "metric_stat": {
                "metric": {"namespace": "AWS/SageMaker", "metric_name": "Invocations", "dimensions": variant_dims},
                "stat": "Sum",
            },
            "return_data": False,
        },
        {
            "id": "invocations_per_instance",
            "label": "Invocations per instance per minute",
            "metric_stat": {
                "metric": {
                    "namespace": "AWS/SageMaker",
                    "metric_name": "InvocationsPerInstance",
                    "dimensions": variant_dims,
                },
                "stat": "Sum",
            },
            "return_data": False,
        },
        {
            "id": "tokens_per_instance",
            "label": "Completion tokens per minute per instance",
            "expression": TOKENS_PER_INSTANCE_EXPRESSION,
            "return_data": True,
        },
    ]


class TokenAwareAutoscaling(pulumi.ComponentResource):
    """Scalable target on the variant, a token policy and an optional fast concurrency policy."""

    resource_id: pulumi.Output[str]
    token_policy_name: pulumi.Output[str]
    concurrency_policy_name: pulumi.Output[str | None]

    def __init__(self, name: str, args: TokenAwareAutoscalingArgs, opts: pulumi.ResourceOptions | None = None):
        args.validate()
        super().__init__(f"llminfer:aws:{_COMPONENT}", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        resource_id = pulumi.Output.from_input(args.endpoint_name).apply(
            lambda endpoint: f"endpoint/{endpoint}/variant/{args.variant_name}"
        )
        target = appautoscaling.Target(
            f"{name}-target",
            service_namespace="sagemaker",
            resource_id=resource_id,
            scalable_dimension=SCALABLE_DIMENSION,
            min_capacity=args.min_instances,
            max_capacity=args.max_instances,
            tags=dict(args.tags),
            opts=child,
        )
        queries = pulumi.Output.from_input(args.endpoint_name).apply(
            lambda endpoint: tokens_per_instance_queries(endpoint, args.variant_name, args.metrics_namespace)
        )
        token_policy = appautoscaling.Policy(
            f"{name}-tokens",
            policy_type="TargetTrackingScaling",
            service_namespace=target.service_namespace,
            resource_id=target.resource_id,
            scalable_dimension=target.scalable_dimension,
            target_tracking_scaling_policy_configuration=appautoscaling.PolicyTargetTrackingScalingPolicyConfigurationArgs(
                target_value=float(args.target_tokens_per_minute_per_instance),
                customized_metric_specification=appautoscaling.PolicyTargetTrackingScalingPolicyConfigurationCustomizedMetricSpecificationArgs(
                    metrics=queries,
                ),
                scale_out_cooldown=args.scale_out_cooldown_seconds,
                scale_in_cooldown=args.scale_in_cooldown_seconds,
            ),
            opts=child,
        )
        concurrency_policy_name: pulumi.Output[str | None] = pulumi.Output.from_input(None)
        if args.concurrency_scale_out:
            concurrency_policy = appautoscaling.Policy(
                f"{name}-concurrency",
                policy_type="TargetTrackingScaling",
                service_namespace=target.service_namespace,
                resource_id=target.resource_id,
                scalable_dimension=target.scalable_dimension,
                target_tracking_scaling_policy_configuration=appautoscaling.PolicyTargetTrackingScalingPolicyConfigurationArgs(
                    target_value=float(args.target_concurrent_requests_per_instance),
                    predefined_metric_specification=appautoscaling.PolicyTargetTrackingScalingPolicyConfigurationPredefinedMetricSpecificationArgs(
                        predefined_metric_type="SageMakerVariantConcurrentRequestsPerModelHighResolution",
                    ),
                    scale_out_cooldown=args.scale_out_cooldown_seconds,
                    scale_in_cooldown=args.scale_in_cooldown_seconds,
                ),
                opts=child,
            )
            concurrency_policy_name = concurrency_policy.name

        self.resource_id = target.resource_id
        self.token_policy_name = token_policy.name
        self.concurrency_policy_name = concurrency_policy_name
        self.register_outputs({
            "resource_id": self.resource_id,
            "token_policy_name": self.token_policy_name,
            "concurrency_policy_name": self.concurrency_policy_name,
        })
