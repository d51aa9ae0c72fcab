"""encryption-at-rest: volumes encrypted, a KMS key where the service takes one."""

from __future__ import annotations

import pytest

from policy import Node, rule

ENCRYPTION = rule("encryption-at-rest")
CONFIG = "aws:sagemaker/endpointConfiguration:EndpointConfiguration"


def messages(type_: str, inputs: dict) -> list[str]:
    return [v.message for v in ENCRYPTION.check_resource(type_, "r", inputs)]


def variants(*instance_types: str) -> dict:
    return {"productionVariants": [{"variantName": f"v{i}", "instanceType": t, "initialInstanceCount": 1}
                                   for i, t in enumerate(instance_types)]}


@pytest.mark.parametrize("instance_type", ["ml.g5.2xlarge", "ml.g6.xlarge", "ml.p4d.24xlarge"])
def test_nvme_instance_store_types_take_no_key(instance_type):
    # CreateEndpointConfig rejects a KmsKeyId for these; their local storage is hardware-encrypted.
    assert messages(CONFIG, variants(instance_type)) == []


def test_ebs_backed_types_need_a_key():
    found = messages(CONFIG, variants("ml.g5.2xlarge", "ml.inf2.xlarge"))
    assert found and "ml.inf2.xlarge" in found[0] and "ml.g5" not in found[0]
    assert messages(CONFIG, {**variants("ml.inf2.xlarge"), "kmsKeyArn": "arn:aws:kms:us-east-1:1:key/k"}) == []


def test_ebs_volumes_and_instances():
    assert messages("aws:ebs/volume:Volume", {"size": 100})
    assert messages("aws:ebs/volume:Volume", {"size": 100, "encrypted": True}) == []
    assert messages("aws:ec2/instance:Instance", {"rootBlockDevice": {"encrypted": True}}) == []
    assert messages("aws:ec2/instance:Instance", {"rootBlockDevice": {"volumeSize": 100}})
    template = "aws:ec2/launchTemplate:LaunchTemplate"
    assert messages(template, {"blockDeviceMappings": [{"deviceName": "/dev/xvda", "ebs": {"volumeSize": 100}}]})
    assert messages(template, {"blockDeviceMappings": [{"deviceName": "/dev/xvda", "ebs": {"encrypted": "true"}}]}) == []


def test_azure_storage_in_transit_and_unmanaged_disks():
    account = "azure-native:storage:StorageAccount"
    assert messages(account, {"minimumTlsVersion": "TLS1_2"}) == []
    assert messages(account, {"minimumTlsVersion": "TLS1_0"})
    assert messages(account, {"enableHttpsTrafficOnly": False})
    vm = "azure-native:compute:VirtualMachine"
    assert messages(vm, {"storageProfile": {"osDisk": {"createOption": "FromImage", "managedDisk": {"storageAccountType": "Premium_LRS"}}}}) == []
    assert messages(vm, {"storageProfile": {"osDisk": {"createOption": "FromImage", "vhd": {"uri": "https://a.blob.core.windows.net/v/os.vhd"}}}})


def test_alarm_topic_under_aws_managed_key_drops_notifications():
    topic_arn = "arn:aws:sns:us-east-1:123456789012:topic/alarms"
    alarm = Node("aws:cloudwatch/metricAlarm:MetricAlarm", "p95", {"alarmActions": [topic_arn]})
    managed = Node("aws:sns/topic:Topic", "alarms", {"arn": topic_arn, "kmsMasterKeyId": "alias/aws/sns"})
    found = ENCRYPTION.check_graph([alarm, managed])
    assert [v.name for v in found] == ["p95"] and "dropped" in found[0].message
    customer_key = Node("aws:sns/topic:Topic", "alarms", {"arn": topic_arn, "kmsMasterKeyId": "arn:aws:kms:us-east-1:1:key/k"})
    assert ENCRYPTION.check_graph([alarm, customer_key]) == []
    budget = Node("aws:budgets/budget:Budget", "b", {"notifications": [{"subscriberSnsTopicArns": [topic_arn]}]})
    assert [v.name for v in ENCRYPTION.check_graph([budget, managed])] == ["b"]
