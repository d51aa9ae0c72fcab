"""Log retention: every log group, workspace, bucket or sink destination keeps logs for a set time; every WAF
web ACL logs, to a bounded group of this stack.

Services that create their log group on first write (Lambda, SageMaker endpoints) create it with
"never expire": the graph check asks that the stack create that group first, with retention.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from policy._model import Node, Rule, as_list, get, number

# CloudWatch Logs' PutRetentionPolicy accepts only these.
CLOUDWATCH_RETENTION_DAYS = frozenset(
    {1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653}
)


def _positive_days(value: Any) -> float | None:
    days = number(value)
    return days if days is not None and days > 0 else None


def retention(type_: str, name: str, inputs: Mapping[str, Any]) -> Iterator[str]:
    if type_ == "aws:cloudwatch/logGroup:LogGroup":
        days = _positive_days(inputs.get("retentionInDays"))
        if days is None:
            yield "log group has no retentionInDays (CloudWatch keeps it forever); set logRetentionDays"
        elif int(days) not in CLOUDWATCH_RETENTION_DAYS:
            yield f"retentionInDays={int(days)} is not a period CloudWatch accepts: {sorted(CLOUDWATCH_RETENTION_DAYS)}"
    elif type_ == "azure-native:operationalinsights:Workspace":
        if _positive_days(inputs.get("retentionInDays")) is None:
            yield "Log Analytics workspace has no retentionInDays; set it explicitly"
    elif type_ == "gcp:logging/projectBucketConfig:ProjectBucketConfig":
        if _positive_days(inputs.get("retentionDays")) is None:
            yield "log bucket has no retentionDays; set it explicitly"


def _storage_bucket_expires(props: Mapping[str, Any]) -> bool:
    for rule in as_list(props.get("lifecycleRules")):
        if get(rule, "action", "type") == "Delete" and number(get(rule, "condition", "age")):
            return True
    return bool(number(get(props, "retentionPolicy", "retentionPeriod")))


def _names(nodes: Sequence[Node], type_: str) -> set[str]:
    return {str(n.props.get("name")) for n in nodes if n.type == type_ and n.props.get("name")}


def implicit_log_groups(nodes: Sequence[Node]) -> Iterator[tuple[Node, str]]:
    """Lambda functions and SageMaker endpoints write to groups they create without retention."""
    groups = _names(nodes, "aws:cloudwatch/logGroup:LogGroup")
    for node in nodes:
        if node.type == "aws:lambda/function:Function":
            if get(node.props, "loggingConfig", "logGroup"):
                continue
            function = node.props.get("name") or node.name
            if f"/aws/lambda/{function}" not in groups:
                yield node, (
                    f"no log group /aws/lambda/{function} in the stack and no loggingConfig.logGroup: "
                    "Lambda would create one that never expires"
                )
        elif node.type == "aws:sagemaker/endpoint:Endpoint":
            endpoint = node.props.get("name") or node.name
            if f"/aws/sagemaker/Endpoints/{endpoint}" not in groups:
                yield node, (
                    f"no log group /aws/sagemaker/Endpoints/{endpoint} in the stack: SageMaker would create "
                    "one that never expires (create it first, with retention, and name the endpoint)"
                )


def sink_destinations(nodes: Sequence[Node]) -> Iterator[tuple[Node, str]]:
    """A GCP log sink's retention is its destination's: it must be a bucket this stack keeps bounded."""
    log_buckets = {
        str(n.props.get("bucketId")): n
        for n in nodes
        if n.type == "gcp:logging/projectBucketConfig:ProjectBucketConfig"
    }
    storage = {str(n.props.get("name")): n for n in nodes if n.type == "gcp:storage/bucket:Bucket"}
    for node in nodes:
        if node.type not in ("gcp:logging/projectSink:ProjectSink", "gcp:logging/organizationSink:OrganizationSink"):
            continue
        destination = str(node.props.get("destination", ""))
        if destination.startswith("logging.googleapis.com/"):
            bucket = log_buckets.get(destination.rstrip("/").rsplit("/", 1)[-1])
            if bucket is None or _positive_days(bucket.props.get("retentionDays")) is None:
                yield node, f"destination {destination} is not a log bucket of this stack with retentionDays"
        elif destination.startswith("storage.googleapis.com/"):
            bucket = storage.get(destination.split("/", 1)[1])
            if bucket is None or not _storage_bucket_expires(bucket.props):
                yield node, f"destination {destination} is not a bucket of this stack with an age-based delete rule"
        else:
            yield node, f"destination {destination!r}: the policy cannot see its retention; send logs to a log bucket with retentionDays"


def waf_logging(nodes: Sequence[Node]) -> Iterator[tuple[Node, str]]:
    """Every WAF web ACL logs, to a log group of this stack named aws-waf-logs-* (WAF refuses any other
    CloudWatch destination) that has retention (checked above)."""
    groups = {str(n.props.get("arn")): n for n in nodes if n.type == "aws:cloudwatch/logGroup:LogGroup" and n.props.get("arn")}
    logged: set[str] = set()
    for node in nodes:
        if node.type != "aws:wafv2/webAclLoggingConfiguration:WebAclLoggingConfiguration":
            continue
        logged.add(str(node.props.get("resourceArn")))
        for destination in as_list(node.props.get("logDestinationConfigs")):
            group = groups.get(str(destination))
            if group is None:
                yield node, f"WAF log destination {destination} is not a log group of this stack (its retention is unseen)"
            elif not str(group.props.get("name", "")).startswith("aws-waf-logs-"):
                yield node, f"WAF log group {group.props.get('name')!r} must be named aws-waf-logs-... (WAF refuses others)"
    for node in nodes:
        if node.type == "aws:wafv2/webAcl:WebAcl" and str(node.props.get("arn")) not in logged:
            yield node, "web ACL has no WebAclLoggingConfiguration: blocked requests leave no trace; log to aws-waf-logs-*"


RULE = Rule(
    name="log-retention",
    description="Every log group, workspace and log sink destination has a retention period.",
    remediation="Set retention (logRetentionDays) on the log group/workspace/bucket; create the log groups that Lambda and SageMaker would otherwise create without one.",
    resource_checks=(retention,),
    graph_checks=(implicit_log_groups, sink_destinations, waf_logging),
)
