"""A regional WAFv2 web ACL in front of the gateway's API Gateway stage: per-IP rate limit, AWS managed rules.

Usage plans limit per API key; a leaked or shared key, or a flood of unauthenticated requests, still reaches
the authorizer and the Lambda. The web ACL counts requests per source IP over 5 minutes and blocks an IP
above the limit; AWS's common and known-bad-inputs rule groups run in count mode first (override_action
count: they label and count, never block), so their false positives on LLM prompts (large bodies, code,
SQL-looking text) show in the dashboard and the logs before anyone switches them to block.

Logs go to a CloudWatch log group whose name must start with `aws-waf-logs-` (WebAclLoggingConfiguration's
log_destination_configs, pulumi_aws/wafv2/web_acl_logging_configuration.py), with retention. The group needs a
resource policy letting delivery.logs.amazonaws.com write (CloudWatch Logs User Guide, "Logs sent to CloudWatch
Logs"); WAF would otherwise add one to a shared account-wide `AWSWAF-LOGS` policy that can outgrow its size
limit (the provider's warning), so the stack manages its own, scoped to this group.

Only the REST API stage is covered: a Lambda Function URL (gatewayMode function_url, or the URL of both) does not pass
through WAF.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
from pulumi_aws import cloudwatch, get_caller_identity_output, get_partition_output, wafv2

from components._args import require, require_choice, require_text
from components.aws_common import LOG_RETENTION_DAYS, _service_model, policy_document

_COMPONENT = "ApiWaf"
# WAF's reserved metric names (VisibilityConfig.MetricName: "can't contain ... All and Default_Action").
_RESERVED_METRIC_NAMES = ("All", "Default_Action")
# VisibilityConfig.MetricName: "only the characters A-Z, a-z, 0-9, - (hyphen), and _ (underscore)", 1-128.
_METRIC_NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
# The rate-based rule counts over this window (RateBasedStatement.EvaluationWindowSec: 60, 120, 300, 600).
EVALUATION_WINDOW_SECONDS = 300
MANAGED_RULE_GROUPS = ("AWSManagedRulesCommonRuleSet", "AWSManagedRulesKnownBadInputsRuleSet")
MANAGED_RULE_ACTIONS = ("count", "none")  # none: the group's own actions (block)
WAF_LOG_GROUP_PREFIX = "aws-waf-logs-"
# A blocked IP gets what an OpenAI client expects of a rate limit (429, OpenAI's error shape, Retry-After: it
# backs off and retries) instead of WAF's default 403, which the client would take for a bad key.
RATE_LIMITED_STATUS = 429
RATE_LIMITED_BODY_KEY = "ip-rate-limited"
RETRY_AFTER_SECONDS = 60
METRICS_NAMESPACE = "AWS/WAFV2"


def rate_limit_bounds() -> tuple[int, int]:
    """RateBasedStatement.Limit's range, from botocore's wafv2 model (10 since 2024; it was 100)."""
    shape = _service_model("wafv2").shape_for("RateLimit")
    return int(shape.metadata["min"]), int(shape.metadata["max"])


def stage_arn(partition: str, region: str, rest_api_id: str, stage_name: str) -> str:
    """An API Gateway REST stage as WAF wants it: `arn:<partition>:apigateway:<region>::/restapis/<id>/stages/<name>`
    (botocore wafv2 AssociateWebACL, ResourceArn)."""
    return f"arn:{partition}:apigateway:{region}::/restapis/{rest_api_id}/stages/{stage_name}"


@dataclass(frozen=True)
class ApiWafArgs:
    # The REST API stage to protect (StreamingGateway.stage_arn).
    stage_arn: pulumi.Input[str]
    region: str
    # Requests one source IP may make in 5 minutes before WAF blocks it (answers 403).
    rate_limit_per_ip: int
    log_retention_days: int = 30
    # count (default): the managed groups only count; none: they block what they match.
    managed_rule_action: str = "count"
    # Name of the web ACL and its metrics (the dashboard and the alarm read the same).
    name: str = "llm-gateway"
    # The blocked-requests alarm: more than this many blocked requests in 5 minutes.
    blocked_alarm_threshold: int = 100
    alarm_topic_arn: pulumi.Input[str] | None = None
    # The demo page's origin (demoUi): a blocked IP's 429 must carry it, or the browser hides the body and the
    # page sees a network error. WAF sends custom response headers as named (only inserted request headers
    # get the x-amzn-waf- prefix; WAF guide, "Custom responses for Block actions").
    cors_origin: pulumi.Input[str] | None = None
    tags: Mapping[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        require_text(_COMPONENT, "region", self.region)
        low, high = rate_limit_bounds()
        limit = self.rate_limit_per_ip
        require(_COMPONENT, "rate_limit_per_ip",
                isinstance(limit, int) and not isinstance(limit, bool) and low <= limit <= high,
                f"must be a whole number of requests per 5 minutes per IP between {low} and {high:,} (WAF's "
                f"RateBasedStatement.Limit), got {limit!r}; 0 turns WAF off")
        require(_COMPONENT, "log_retention_days", self.log_retention_days in LOG_RETENTION_DAYS,
                f"{self.log_retention_days!r} is not a CloudWatch retention period; use one of {LOG_RETENTION_DAYS}")
        require_choice(_COMPONENT, "managed_rule_action", self.managed_rule_action, MANAGED_RULE_ACTIONS,
                       hint=" (count: the managed rules only count, the safe start; none: they block)")
        require(_COMPONENT, "name", isinstance(self.name, str) and _METRIC_NAME.fullmatch(self.name) is not None
                and self.name not in _RESERVED_METRIC_NAMES and len(self.name) <= 100,
                f"{self.name!r} is not a WAF web ACL/metric name (letters, digits, - and _, at most 100; not "
                f"{' or '.join(_RESERVED_METRIC_NAMES)})")
        require(_COMPONENT, "blocked_alarm_threshold",
                isinstance(self.blocked_alarm_threshold, int) and self.blocked_alarm_threshold >= 0,
                f"must be a whole number >= 0, got {self.blocked_alarm_threshold!r}")

    @property
    def log_group_name(self) -> str:
        return f"{WAF_LOG_GROUP_PREFIX}{self.name}"


def _visibility(metric_name: str) -> wafv2.WebAclRuleVisibilityConfigArgs:
    return wafv2.WebAclRuleVisibilityConfigArgs(
        cloudwatch_metrics_enabled=True, metric_name=metric_name, sampled_requests_enabled=True)


def rate_limited_body(args: ApiWafArgs) -> str:
    """The JSON a client blocked by the per-IP rule reads (the gateway's own 429 has the same type)."""
    return json.dumps({"error": {
        "message": f"Too many requests from this IP address (more than {args.rate_limit_per_ip} in 5 minutes); "
                   f"retry after {RETRY_AFTER_SECONDS} s",
        "type": "rate_limit_error", "param": None, "code": "ip_rate_limit_exceeded",
    }}, sort_keys=True)


def _rate_limited_headers(args: ApiWafArgs) -> list[wafv2.WebAclRuleActionBlockCustomResponseResponseHeaderArgs]:
    header = wafv2.WebAclRuleActionBlockCustomResponseResponseHeaderArgs
    headers = [header(name="Retry-After", value=str(RETRY_AFTER_SECONDS))]
    if args.cors_origin is not None:
        headers += [header(name="Access-Control-Allow-Origin", value=args.cors_origin), header(name="Vary", value="Origin")]
    return headers


def web_acl_rules(args: ApiWafArgs) -> list[wafv2.WebAclRuleArgs]:
    """The rate-based rule first (priority 0), then the managed groups in MANAGED_RULE_GROUPS order.

    Built from the SDK's own input classes, so a misspelt field fails here (the mocks accept anything)."""
    rules = [wafv2.WebAclRuleArgs(
        name="rate-limit-per-ip",
        priority=0,
        action=wafv2.WebAclRuleActionArgs(block=wafv2.WebAclRuleActionBlockArgs(
            custom_response=wafv2.WebAclRuleActionBlockCustomResponseArgs(
                response_code=RATE_LIMITED_STATUS,
                custom_response_body_key=RATE_LIMITED_BODY_KEY,
                response_headers=_rate_limited_headers(args),
            ))),
        statement=wafv2.WebAclRuleStatementArgs(rate_based_statement=wafv2.WebAclRuleStatementRateBasedStatementArgs(
            aggregate_key_type="IP",  # the connection's source IP: an X-Forwarded-For header can be forged
            limit=args.rate_limit_per_ip,
            evaluation_window_sec=EVALUATION_WINDOW_SECONDS,
        )),
        visibility_config=_visibility(f"{args.name}-rate-limit-per-ip"),
    )]
    override = (wafv2.WebAclRuleOverrideActionArgs(count=wafv2.WebAclRuleOverrideActionCountArgs())
                if args.managed_rule_action == "count"
                else wafv2.WebAclRuleOverrideActionArgs(none=wafv2.WebAclRuleOverrideActionNoneArgs()))
    for priority, group in enumerate(MANAGED_RULE_GROUPS, start=1):
        rules.append(wafv2.WebAclRuleArgs(
            name=group,
            priority=priority,
            override_action=override,
            statement=wafv2.WebAclRuleStatementArgs(
                managed_rule_group_statement=wafv2.WebAclRuleStatementManagedRuleGroupStatementArgs(
                    vendor_name="AWS", name=group)),
            visibility_config=_visibility(f"{args.name}-{group}"),
        ))
    return rules


def log_delivery_policy(partition: str, region: str, account: str, log_group_name: str) -> str:
    """What AWS documents for vended logs into a log group (CloudWatch Logs User Guide, "Logs sent to
    CloudWatch Logs", log group resource policy), on this one group."""
    return policy_document([{
        "Sid": "AWSLogDeliveryWrite",
        "Effect": "Allow",
        "Principal": {"Service": "delivery.logs.amazonaws.com"},
        "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
        "Resource": f"arn:{partition}:logs:{region}:{account}:log-group:{log_group_name}:log-stream:*",
        "Condition": {
            "StringEquals": {"aws:SourceAccount": account},
            "ArnLike": {"aws:SourceArn": f"arn:{partition}:logs:{region}:{account}:*"},
        },
    }])


def acl_dimensions(args: ApiWafArgs) -> dict[str, str]:
    """The web ACL's totals in AWS/WAFV2 (WAF Developer Guide, metrics and dimensions): Rule ALL."""
    return {"WebACL": args.name, "Region": args.region, "Rule": "ALL"}


class ApiWaf(pulumi.ComponentResource):
    """Web ACL, its association with the stage, its logs (group, resource policy, logging configuration) and an
    alarm on blocked requests."""

    web_acl_arn: pulumi.Output[str]
    web_acl_name: pulumi.Output[str]
    log_group_name: pulumi.Output[str]
    alarm_name: pulumi.Output[str]

    def __init__(self, name: str, args: ApiWafArgs, opts: pulumi.ResourceOptions | None = None):
        args.validate()
        super().__init__(f"llminfer:aws:{_COMPONENT}", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = dict(args.tags)

        acl = wafv2.WebAcl(
            f"{name}-acl",
            name=args.name,
            description=f"Per-IP rate limit ({args.rate_limit_per_ip} requests / 5 min) and AWS managed rules "
                        f"({args.managed_rule_action} mode) for the LLM gateway",
            scope="REGIONAL",  # API Gateway stages take regional web ACLs (CLOUDFRONT is for distributions)
            default_action=wafv2.WebAclDefaultActionArgs(allow=wafv2.WebAclDefaultActionAllowArgs()),
            rules=web_acl_rules(args),
            custom_response_bodies=[wafv2.WebAclCustomResponseBodyArgs(
                key=RATE_LIMITED_BODY_KEY, content=rate_limited_body(args), content_type="APPLICATION_JSON")],
            visibility_config=wafv2.WebAclVisibilityConfigArgs(
                cloudwatch_metrics_enabled=True, metric_name=args.name, sampled_requests_enabled=True),
            tags=tags,
            opts=child,
        )
        association = wafv2.WebAclAssociation(
            f"{name}-association", resource_arn=args.stage_arn, web_acl_arn=acl.arn, opts=child)

        log_group = cloudwatch.LogGroup(
            f"{name}-logs", name=args.log_group_name, retention_in_days=args.log_retention_days, tags=tags, opts=child)
        invoke = pulumi.InvokeOutputOptions(parent=self)
        account = get_caller_identity_output(opts=invoke).account_id
        partition = get_partition_output(opts=invoke).partition
        delivery = cloudwatch.LogResourcePolicy(
            f"{name}-log-delivery",
            policy_name=f"{args.log_group_name}-delivery",
            policy_document=pulumi.Output.all(partition, account).apply(
                lambda v: log_delivery_policy(v[0], args.region, v[1], args.log_group_name)),
            opts=child,
        )
        wafv2.WebAclLoggingConfiguration(
            f"{name}-logging",
            resource_arn=acl.arn,
            log_destination_configs=[log_group.arn],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[delivery]),
        )

        actions = [args.alarm_topic_arn] if args.alarm_topic_arn is not None else []
        alarm = cloudwatch.MetricAlarm(
            f"{name}-blocked",
            alarm_description=(f"WAF blocked more than {args.blocked_alarm_threshold} requests in 5 minutes "
                               f"(per-IP limit {args.rate_limit_per_ip} / 5 min): a flood, or a client to "
                               f"raise the limit for; see the {args.log_group_name} logs"),
            namespace=METRICS_NAMESPACE,
            metric_name="BlockedRequests",
            dimensions=acl_dimensions(args),
            statistic="Sum",
            period=EVALUATION_WINDOW_SECONDS,
            evaluation_periods=1,
            threshold=args.blocked_alarm_threshold,
            comparison_operator="GreaterThanThreshold",
            treat_missing_data="notBreaching",  # no blocked requests: no datapoints
            alarm_actions=actions,
            tags=tags,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[association]),
        )

        self.web_acl_arn = acl.arn
        self.web_acl_name = acl.name
        self.log_group_name = log_group.name
        self.alarm_name = alarm.name
        self.register_outputs({
            "web_acl_arn": self.web_acl_arn,
            "web_acl_name": self.web_acl_name,
            "log_group_name": self.log_group_name,
            "alarm_name": self.alarm_name,
        })
