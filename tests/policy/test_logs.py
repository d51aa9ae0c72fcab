"""log-retention: log groups, workspaces, buckets and sinks keep logs for a set time."""

from __future__ import annotations

import pytest

from policy import Node, rule

LOGS = rule("log-retention")


def messages(type_: str, inputs: dict) -> list[str]:
    return [v.message for v in LOGS.check_resource(type_, "r", inputs)]


def graph(*nodes: Node) -> list[str]:
    return [f"{v.name}: {v.message}" for v in LOGS.check_graph(list(nodes))]


@pytest.mark.parametrize(("days", "ok"), [(30, True), (30.0, True), (None, False), (0, False), (45, False)])
def test_cloudwatch_log_group_retention(days, ok):
    inputs = {} if days is None else {"retentionInDays": days}
    assert (messages("aws:cloudwatch/logGroup:LogGroup", inputs) == []) is ok


def test_azure_workspace_and_gcp_bucket_retention():
    assert messages("azure-native:operationalinsights:Workspace", {"retentionInDays": 30}) == []
    assert messages("azure-native:operationalinsights:Workspace", {"sku": {"name": "PerGB2018"}})
    assert messages("gcp:logging/projectBucketConfig:ProjectBucketConfig", {"retentionDays": 30}) == []
    assert messages("gcp:logging/projectBucketConfig:ProjectBucketConfig", {"bucketId": "b"})


def test_lambda_needs_its_log_group():
    fn = Node("aws:lambda/function:Function", "gateway", {"name": "gateway-fn"})
    assert graph(fn) and "/aws/lambda/gateway-fn" in graph(fn)[0]
    group = Node("aws:cloudwatch/logGroup:LogGroup", "gateway-logs", {"name": "/aws/lambda/gateway-fn"})
    assert graph(fn, group) == []
    routed = Node("aws:lambda/function:Function", "gateway", {"name": "f", "loggingConfig": {"logGroup": "/custom", "logFormat": "JSON"}})
    assert graph(routed) == []


def test_sagemaker_endpoint_needs_its_log_group():
    endpoint = Node("aws:sagemaker/endpoint:Endpoint", "llm-endpoint", {"name": "llm-aws"})
    assert graph(endpoint)
    group = Node("aws:cloudwatch/logGroup:LogGroup", "llm-logs", {"name": "/aws/sagemaker/Endpoints/llm-aws"})
    assert graph(endpoint, group) == []


def test_gcp_sink_destination_must_be_bounded():
    sink = Node("gcp:logging/projectSink:ProjectSink", "sink",
                {"destination": "logging.googleapis.com/projects/p/locations/global/buckets/llm-logs"})
    assert graph(sink)
    bucket = Node("gcp:logging/projectBucketConfig:ProjectBucketConfig", "b", {"bucketId": "llm-logs", "retentionDays": 14})
    assert graph(sink, bucket) == []
    to_storage = Node("gcp:logging/projectSink:ProjectSink", "sink", {"destination": "storage.googleapis.com/archive"})
    kept_forever = Node("gcp:storage/bucket:Bucket", "archive", {"name": "archive"})
    assert graph(to_storage, kept_forever)
    expiring = Node("gcp:storage/bucket:Bucket", "archive", {"name": "archive", "lifecycleRules": [
        {"action": {"type": "Delete"}, "condition": {"age": 30}}]})
    assert graph(to_storage, expiring) == []
    to_bigquery = Node("gcp:logging/projectSink:ProjectSink", "sink", {"destination": "bigquery.googleapis.com/projects/p/datasets/d"})
    assert graph(to_bigquery)
