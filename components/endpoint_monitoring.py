"""Alarms and a dashboard for an LLM endpoint on SageMaker and its gateway's metrics.

Latency is alarmed on from the gateway's own metrics, not on SageMaker's ModelLatency: AWS defines
ModelLatency as the time "to send the request and to fetch the response from the container of a model
and the time taken to complete the inference in the container" (SageMaker API reference,
ScalingPolicyMetric; the same text in the CloudWatch metrics page), which for
InvokeEndpointWithResponseStream is the whole stream: a normal 200-token reply takes several seconds and
would keep a 2 s p95 alarm firing. The alarms watch time to first token (TTFTMs) and end-to-end time per
output token (1000 / TokensPerSecond, both per request, from the gateway's EMF lines) instead.

The alarm topic is encrypted with a customer-managed KMS key of its own. CloudWatch alarms cannot
publish to a topic under the AWS-managed `alias/aws/sns` key (its key policy cannot be changed to let
cloudwatch.amazonaws.com use it, so every notification is silently dropped); this key's policy lets
the account administer the key and CloudWatch alarms of this account use it, and nothing else.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
from pulumi_aws import cloudwatch, get_caller_identity_output, get_partition_output, kms, sns

from components._args import require, require_between, require_positive, require_text
from components.aws_common import METRICS_DIMENSION, METRICS_NAMESPACE, policy_document

_COMPONENT = "EndpointMonitoring"


@dataclass(frozen=True)
class EndpointMonitoringArgs:
    endpoint_name: pulumi.Input[str]
    region: str
    price_per_hour: float
    max_instances: int
    # Time-to-first-token SLOs (ms, at the gateway).
    slo_latency_p95_ms: int = 2000
    slo_latency_p99_ms: int = 4000
    # End-to-end time per output token (ms, p95): a stream slower than 1000/this tokens/s misses it.
    slo_e2e_per_token_p95_ms: int = 100
    # Share of invocations answered with a 5xx that pages (percent over 5 minutes).
    error_rate_percent: float = 1.0
    variant_name: str = "AllTraffic"
    metrics_namespace: str = METRICS_NAMESPACE
    alarm_email: str = ""
    # The gateway's WAF web ACL (its metric name), shown on the dashboard; "" when there is none.
    waf_web_acl_name: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        require_text(_COMPONENT, "region", self.region)
        require_positive(_COMPONENT, "price_per_hour", self.price_per_hour)
        require_positive(_COMPONENT, "max_instances", self.max_instances)
        require_positive(_COMPONENT, "slo_latency_p95_ms", self.slo_latency_p95_ms)
        require_positive(_COMPONENT, "slo_latency_p99_ms", self.slo_latency_p99_ms)
        require(_COMPONENT, "slo_latency_p99_ms", self.slo_latency_p99_ms >= self.slo_latency_p95_ms,
                f"({self.slo_latency_p99_ms}) must not be below slo_latency_p95_ms ({self.slo_latency_p95_ms})")
        require_positive(_COMPONENT, "slo_e2e_per_token_p95_ms", self.slo_e2e_per_token_p95_ms)
        require_text(_COMPONENT, "metrics_namespace", self.metrics_namespace)
        require_between(_COMPONENT, "error_rate_percent", self.error_rate_percent, 0.01, 100)
        if self.alarm_email:
            require(_COMPONENT, "alarm_email", "@" in self.alarm_email and " " not in self.alarm_email,
                    f"{self.alarm_email!r} is not an email address")


# Days KMS waits before deleting the key after `pulumi destroy` (7-30): time to notice a mistake.
KEY_DELETION_WINDOW_DAYS = 30


def _alarm_source(partition: str, region: str, account: str) -> dict:
    """Conditions that limit the CloudWatch service principal to this account's alarms in this region."""
    return {
        "StringEquals": {"aws:SourceAccount": account},
        "ArnLike": {"aws:SourceArn": f"arn:{partition}:cloudwatch:{region}:{account}:alarm:*"},
    }


def alarm_key_policy(partition: str, region: str, account: str) -> str:
    """Key policy of the alarm topic's key: the account administers it (through IAM, as in AWS's default
    key policy), CloudWatch alarms of this account may use it to publish. In a key policy, Resource "*"
    means this key."""
    return policy_document([
        {
            "Sid": "AccountAdministersTheKey",
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:{partition}:iam::{account}:root"},
            "Action": "kms:*",
            "Resource": "*",
        },
        {
            "Sid": "CloudWatchAlarmsPublishToTheEncryptedTopic",
            "Effect": "Allow",
            "Principal": {"Service": "cloudwatch.amazonaws.com"},
            "Action": ["kms:Decrypt", "kms:GenerateDataKey*"],
            "Resource": "*",
            "Condition": _alarm_source(partition, region, account),
        },
    ])


def alarm_topic_policy(topic_arn: str, partition: str, region: str, account: str) -> str:
    """Topic policy: CloudWatch alarms of this account publish (principals of the account keep their IAM
    permissions; a resource policy only adds to them)."""
    return policy_document([
        {
            "Sid": "CloudWatchAlarmsPublish",
            "Effect": "Allow",
            "Principal": {"Service": "cloudwatch.amazonaws.com"},
            "Action": "sns:Publish",
            "Resource": topic_arn,
            "Condition": _alarm_source(partition, region, account),
        },
    ])


def _variant_metric(endpoint: str, variant: str, name: str, stat: str) -> dict:
    return {
        "namespace": "AWS/SageMaker",
        "metric_name": name,
        "period": 60,
        "stat": stat,
        "dimensions": {"EndpointName": endpoint, "VariantName": variant},
    }


def instance_count_queries(endpoint: str, variant: str) -> list[dict]:
    """Instances in service = invocations / invocations per instance (SageMaker publishes no count)."""
    return [
        {"id": "invocations", "metric": _variant_metric(endpoint, variant, "Invocations", "Sum"), "return_data": False},
        {
            "id": "per_instance",
            "metric": _variant_metric(endpoint, variant, "InvocationsPerInstance", "Sum"),
            "return_data": False,
        },
        {"id": "instances", "expression": "invocations / per_instance", "label": "Instances in service", "return_data": True},
    ]


# The instance count is a float sum of 1/N per request divided into the request count: 3 requests on 5
# instances give 3 / (0.2 + 0.2 + 0.2) = 4.999999999999999, never >= 5. Half an instance below the
# maximum tolerates any such rounding and no real count lies between.
def at_max_instances_threshold(max_instances: int) -> float:
    return max_instances - 0.5


def e2e_per_token_queries(namespace: str, endpoint: str) -> list[dict]:
    """p95 of end-to-end ms per output token = 1000 / p5 of the gateway's per-request TokensPerSecond
    (completion tokens / seconds from the call to the last content chunk): x -> 1000/x reverses the
    order, so the 95th percentile of one is the transform of the 5th of the other."""
    return [
        {
            "id": "tps_p5",
            "metric": {"namespace": namespace, "metric_name": "TokensPerSecond", "period": 60, "stat": "p5",
                       "dimensions": {METRICS_DIMENSION: endpoint}},
            "return_data": False,
        },
        {"id": "e2e_per_token_p95", "expression": "1000 / tps_p5",
         "label": "End-to-end ms per output token (p95)", "return_data": True},
    ]


def error_rate_queries(endpoint: str, variant: str) -> list[dict]:
    return [
        {"id": "errors", "metric": _variant_metric(endpoint, variant, "Invocation5XXErrors", "Sum"), "return_data": False},
        {"id": "invocations", "metric": _variant_metric(endpoint, variant, "Invocations", "Sum"), "return_data": False},
        {
            "id": "error_rate",
            "expression": "100 * FILL(errors, 0) / IF(FILL(invocations, 0) > 0, invocations, 1)",
            "label": "5xx responses (% of invocations)",
            "return_data": True,
        },
    ]


def dashboard_body(args: EndpointMonitoringArgs, endpoint: str) -> str:
    """CloudWatch dashboard JSON: tokens/s, TTFT p50/p95, cost per 1k tokens, instances, errors, latency."""
    ns, dim, variant = args.metrics_namespace, METRICS_DIMENSION, args.variant_name
    sm = ["AWS/SageMaker", "Invocations", "EndpointName", endpoint, "VariantName", variant]

    def widget(x: int, y: int, title: str, metrics: list, stat: str = "Sum", **extra) -> dict:
        props = {"title": title, "region": args.region, "metrics": metrics, "period": 60, "stat": stat, "view": "timeSeries"}
        props.update(extra)
        return {"type": "metric", "x": x, "y": y, "width": 12, "height": 6, "properties": props}

    widgets = [
        widget(0, 0, "Output tokens/s", [
            [ns, "CompletionTokens", dim, endpoint, {"id": "tokens", "visible": False}],
            [{"expression": "tokens / 60", "label": "tokens/s", "id": "tps"}],
        ]),
        widget(12, 0, "TTFT (ms, at the gateway)", [
            [ns, "TTFTMs", dim, endpoint, {"stat": "p50", "label": "p50"}],
            [ns, "TTFTMs", dim, endpoint, {"stat": "p95", "label": "p95"}],
        ], stat="p50", annotations={"horizontal": [{"label": "SLO p95", "value": args.slo_latency_p95_ms}]}),
        widget(0, 6, "Cost per 1k output tokens (USD)", [
            [ns, "CompletionTokens", dim, endpoint, {"id": "tokens", "visible": False}],
            [*sm, {"id": "invocations", "visible": False}],
            ["AWS/SageMaker", "InvocationsPerInstance", "EndpointName", endpoint, "VariantName", variant,
             {"id": "per_instance", "visible": False}],
            # fleet $/h / (tokens/s * 3600) * 1000, with the fleet = instances in service
            [{"expression": f"{args.price_per_hour} * (invocations / per_instance) / ((tokens / 60) * 3.6)",
              "label": "fleet cost per 1k tokens", "id": "cost"}],
            [ns, "CostPer1kTokensUSD", dim, endpoint, {"stat": "Average", "label": "per request (gateway)"}],
        ]),
        widget(12, 6, "Instances in service", [
            [*sm, {"id": "invocations", "visible": False}],
            ["AWS/SageMaker", "InvocationsPerInstance", "EndpointName", endpoint, "VariantName", variant,
             {"id": "per_instance", "visible": False}],
            [{"expression": "invocations / per_instance", "label": "instances", "id": "instances"}],
        ], annotations={"horizontal": [{"label": "max", "value": args.max_instances}]}),
        widget(0, 12, "Errors", [
            ["AWS/SageMaker", "Invocation4XXErrors", "EndpointName", endpoint, "VariantName", variant],
            ["AWS/SageMaker", "Invocation5XXErrors", "EndpointName", endpoint, "VariantName", variant],
            ["AWS/SageMaker", "InvocationModelErrors", "EndpointName", endpoint, "VariantName", variant],
        ]),
        # The whole stream for streamed requests (see the module docstring): shown, not alarmed on.
        widget(12, 12, "Model latency (ms; whole stream when streamed)", [
            ["AWS/SageMaker", "ModelLatency", "EndpointName", endpoint, "VariantName", variant,
             {"stat": stat, "id": f"l{stat}", "visible": False}]
            for stat in ("p50", "p95", "p99")
        ] + [
            [{"expression": f"l{stat} / 1000", "label": stat}] for stat in ("p50", "p95", "p99")
        ], stat="p50"),
        widget(0, 18, "End-to-end ms per output token (at the gateway)", [
            [ns, "TokensPerSecond", dim, endpoint, {"stat": "p5", "id": "tps_p5", "visible": False}],
            [ns, "TokensPerSecond", dim, endpoint, {"stat": "p50", "id": "tps_p50", "visible": False}],
            [{"expression": "1000 / tps_p50", "label": "p50"}],
            [{"expression": "1000 / tps_p5", "label": "p95"}],
        ], stat="p50", annotations={"horizontal": [{"label": "SLO p95", "value": args.slo_e2e_per_token_p95_ms}]}),
    ]
    if args.waf_web_acl_name:
        # The web ACL's totals (Rule ALL) and the rate rule's own blocks; the managed groups in count mode
        # show as counted (AWS/WAFV2, WAF Developer Guide: metrics and dimensions).
        waf = ["AWS/WAFV2"]
        acl = ["WebACL", args.waf_web_acl_name, "Region", args.region]
        widgets.append(widget(12, 18, "WAF requests (per 5 minutes)", [
            [*waf, "AllowedRequests", *acl, "Rule", "ALL", {"label": "allowed"}],
            [*waf, "BlockedRequests", *acl, "Rule", "ALL", {"label": "blocked"}],
            [*waf, "BlockedRequests", *acl, "Rule", f"{args.waf_web_acl_name}-rate-limit-per-ip",
             {"label": "blocked by the per-IP rate limit"}],
            [*waf, "CountedRequests", *acl, "Rule", "ALL", {"label": "counted (managed rules)"}],
        ], period=300))
    return json.dumps({"widgets": widgets}, sort_keys=True)


class EndpointMonitoring(pulumi.ComponentResource):
    """Alarm topic, latency/error/capacity alarms and a dashboard."""

    topic_arn: pulumi.Output[str]
    key_arn: pulumi.Output[str]
    dashboard_name: pulumi.Output[str]
    dashboard_url: pulumi.Output[str]
    alarm_names: pulumi.Output[list[str]]

    def __init__(self, name: str, args: EndpointMonitoringArgs, opts: pulumi.ResourceOptions | None = None):
        args.validate()
        super().__init__(f"llminfer:aws:{_COMPONENT}", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = dict(args.tags)
        endpoint = pulumi.Output.from_input(args.endpoint_name)
        variant = args.variant_name

        invoke = pulumi.InvokeOutputOptions(parent=self)
        account = get_caller_identity_output(opts=invoke).account_id
        partition = get_partition_output(opts=invoke).partition
        key = kms.Key(
            f"{name}-alarms-key",
            description=f"Encrypts the {name} alarm topic; CloudWatch alarms of this account may use it",
            enable_key_rotation=True,
            deletion_window_in_days=KEY_DELETION_WINDOW_DAYS,
            policy=pulumi.Output.all(partition, account).apply(
                lambda v: alarm_key_policy(v[0], args.region, v[1])
            ),
            tags=tags,
            opts=child,
        )
        kms.Alias(
            f"{name}-alarms-key-alias",
            name=f"alias/{pulumi.get_project()}/{pulumi.get_stack()}/{name}-alarms",
            target_key_id=key.key_id,
            opts=child,
        )
        topic = sns.Topic(f"{name}-alarms", kms_master_key_id=key.arn, tags=tags, opts=child)
        sns.TopicPolicy(
            f"{name}-alarms-policy",
            arn=topic.arn,
            policy=pulumi.Output.all(topic.arn, partition, account).apply(
                lambda v: alarm_topic_policy(v[0], v[1], args.region, v[2])
            ),
            opts=child,
        )
        if args.alarm_email:
            sns.TopicSubscription(f"{name}-alarms-email", topic=topic.arn, protocol="email",
                                  endpoint=args.alarm_email, opts=child)
        actions = [topic.arn]

        gateway_dims = {METRICS_DIMENSION: endpoint}

        def ttft_alarm(percentile: str, slo_ms: int) -> cloudwatch.MetricAlarm:
            return cloudwatch.MetricAlarm(
                f"{name}-ttft-{percentile}",
                alarm_description=(f"Time to first token {percentile} (at the gateway) above the {slo_ms} ms SLO "
                                   "for 3 of 5 minutes"),
                namespace=args.metrics_namespace,
                metric_name="TTFTMs",
                dimensions=gateway_dims,
                extended_statistic=percentile,
                period=60,
                evaluation_periods=5,
                datapoints_to_alarm=3,
                threshold=slo_ms,  # TTFTMs is in milliseconds
                comparison_operator="GreaterThanThreshold",
                treat_missing_data="notBreaching",
                alarm_actions=actions,
                ok_actions=actions,
                tags=tags,
                opts=child,
            )

        alarms = [
            ttft_alarm("p95", args.slo_latency_p95_ms),
            ttft_alarm("p99", args.slo_latency_p99_ms),
            cloudwatch.MetricAlarm(
                f"{name}-e2e-per-token-p95",
                alarm_description=(f"End-to-end time per output token p95 (at the gateway) above the "
                                   f"{args.slo_e2e_per_token_p95_ms} ms SLO for 3 of 5 minutes"),
                metric_queries=endpoint.apply(lambda e: e2e_per_token_queries(args.metrics_namespace, e)),
                evaluation_periods=5,
                datapoints_to_alarm=3,
                threshold=args.slo_e2e_per_token_p95_ms,
                comparison_operator="GreaterThanThreshold",
                treat_missing_data="notBreaching",
                alarm_actions=actions,
                ok_actions=actions,
                tags=tags,
                opts=child,
            ),
            cloudwatch.MetricAlarm(
                f"{name}-5xx-rate",
                alarm_description=f"More than {args.error_rate_percent}% of invocations failed with 5xx over 5 minutes",
                metric_queries=endpoint.apply(lambda e: error_rate_queries(e, variant)),
                evaluation_periods=5,
                datapoints_to_alarm=3,
                threshold=args.error_rate_percent,
                comparison_operator="GreaterThanThreshold",
                treat_missing_data="notBreaching",
                alarm_actions=actions,
                ok_actions=actions,
                tags=tags,
                opts=child,
            ),
            cloudwatch.MetricAlarm(
                f"{name}-model-errors",
                alarm_description="The model container returned errors (InvocationModelErrors)",
                namespace="AWS/SageMaker",
                metric_name="InvocationModelErrors",
                dimensions={"EndpointName": endpoint, "VariantName": variant},
                statistic="Sum",
                period=60,
                evaluation_periods=5,
                datapoints_to_alarm=2,
                threshold=0,
                comparison_operator="GreaterThanThreshold",
                treat_missing_data="notBreaching",
                alarm_actions=actions,
                tags=tags,
                opts=child,
            ),
            cloudwatch.MetricAlarm(
                f"{name}-at-max-instances",
                alarm_description=(
                    f"The endpoint has run at its maximum of {args.max_instances} instances for 15 minutes: "
                    "the autoscaler can add no more; raise maxInstances or shed load"
                ),
                metric_queries=endpoint.apply(lambda e: instance_count_queries(e, variant)),
                evaluation_periods=15,
                datapoints_to_alarm=15,
                threshold=at_max_instances_threshold(args.max_instances),
                comparison_operator="GreaterThanOrEqualToThreshold",
                treat_missing_data="notBreaching",
                alarm_actions=actions,
                tags=tags,
                opts=child,
            ),
        ]
        dashboard = cloudwatch.Dashboard(
            f"{name}-dashboard",
            dashboard_name=endpoint.apply(lambda e: f"{e}-llm"),
            dashboard_body=endpoint.apply(lambda e: dashboard_body(args, e)),
            opts=child,
        )

        self.topic_arn = topic.arn
        self.key_arn = key.arn
        self.dashboard_name = dashboard.dashboard_name
        self.dashboard_url = dashboard.dashboard_name.apply(
            lambda d: f"https://{args.region}.console.aws.amazon.com/cloudwatch/home?region={args.region}#dashboards:name={d}"
        )
        self.alarm_names = pulumi.Output.all(*[a.name for a in alarms])
        self.register_outputs({
            "topic_arn": self.topic_arn,
            "key_arn": self.key_arn,
            "dashboard_name": self.dashboard_name,
            "dashboard_url": self.dashboard_url,
            "alarm_names": self.alarm_names,
        })
