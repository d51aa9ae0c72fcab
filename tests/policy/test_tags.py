"""required-tags: project, stack and owner on every taggable resource, read from the provider SDKs."""

from __future__ import annotations

import pytest

from policy import rule
from policy._tags import tag_path

TAGS = rule("required-tags")
GOOD = {"project": "llm-inference", "stack": "aws", "owner": "platform-team", "cloud": "aws"}


def messages(type_: str, inputs: dict) -> list[str]:
    return [v.message for v in TAGS.check_resource(type_, "r", inputs)]


@pytest.mark.parametrize(
    ("type_", "path"),
    [
        ("aws:sagemaker/endpoint:Endpoint", ("tags",)),
        ("aws:cloudwatch/logGroup:LogGroup", ("tags",)),
        ("aws:iam/rolePolicy:RolePolicy", None),  # inline policies take no tags
        ("aws:cloudwatch/dashboard:Dashboard", None),
        ("aws:lambda/function:Function", ("tags",)),  # module "lambda" is pulumi_aws.lambda_
        ("azure-native:compute:VirtualMachine", ("tags",)),
        ("azure-native:network:SecurityRule", None),
        ("azure-native:consumption:Budget", None),
        ("gcp:compute/address:Address", ("labels",)),
        ("gcp:compute/firewall:Firewall", None),
        ("gcp:container/cluster:Cluster", ("resourceLabels",)),
        ("gcp:container/nodePool:NodePool", ("nodeConfig", "resourceLabels")),
        ("gcp:monitoring/notificationChannel:NotificationChannel", ("userLabels",)),  # `labels` is its config
        ("kubernetes:apps/v1:Deployment", ("metadata", "labels")),
        ("kubernetes:core/v1:ConfigMapPatch", None),
        ("llminfer:aws:SageMakerEndpoint", None),  # components are not cloud resources
        ("pulumi:providers:aws", None),
    ],
)
def test_where_tags_live(type_, path):
    assert tag_path(type_) == path


def test_tagged_resource_passes_untagged_fails():
    assert messages("aws:sagemaker/endpoint:Endpoint", {"tags": GOOD}) == []
    assert "has no tags" in messages("aws:sagemaker/endpoint:Endpoint", {})[0]
    found = messages("aws:sagemaker/endpoint:Endpoint", {"tags": {"project": "llm-inference"}})
    assert found == ["tags lacks stack, owner; pass standard_tags(...)"]


def test_non_taggable_resource_is_not_asked():
    assert messages("aws:iam/rolePolicy:RolePolicy", {"policy": "{}"}) == []


def test_gcp_label_values_must_be_valid():
    labels = {**GOOD, "stack": "gcp", "owner": "Platform Team"}
    found = messages("gcp:compute/address:Address", {"labels": labels})
    assert found and "not a valid GCP label value" in found[0]
    assert messages("gcp:compute/address:Address", {"labels": {**GOOD, "stack": "gcp"}}) == []


def test_node_pool_labels_live_in_node_config():
    assert messages("gcp:container/nodePool:NodePool", {"nodeConfig": {"resourceLabels": GOOD}}) == []
    assert messages("gcp:container/nodePool:NodePool", {"nodeConfig": {"labels": GOOD}})


def test_kubernetes_metadata_labels():
    assert messages("kubernetes:core/v1:Service", {"metadata": {"labels": GOOD}}) == []
    assert messages("kubernetes:core/v1:Service", {"metadata": {"name": "x"}})
    bad = {**GOOD, "owner": "platform team!"}
    assert "Kubernetes label value" in messages("kubernetes:core/v1:Service", {"metadata": {"labels": bad}})[0]


def test_auto_scaling_group_tag_list():
    tags = [{"key": k, "value": v, "propagateAtLaunch": True} for k, v in GOOD.items()]
    assert messages("aws:autoscaling/group:Group", {"tags": tags}) == []
    assert messages("aws:autoscaling/group:Group", {"tags": tags[:1]})
