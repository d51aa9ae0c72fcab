"""Storage and volumes are encrypted at rest, with a key where the service takes one.

Checked where encryption is off unless asked for (EBS, RDS, EFS, SageMaker's EBS-backed ML volumes,
unmanaged Azure VHDs) or where traffic could be clear text (Azure storage). Not checked, because the
service always encrypts at rest and offers no "off": S3 (SSE-S3 default since 2023), DynamoDB, Secrets
Manager, SQS (SSE-SQS default), CloudWatch Logs, Lambda environment (aws/lambda key), Azure managed
disks (SSE with platform keys), every GCP storage service (Google-managed keys), GKE etcd.

SNS topics are transport, not storage; the graph check here instead catches the opposite mistake: a
topic encrypted with the AWS-managed alias/aws/sns key, whose key policy CloudWatch alarms and AWS
Budgets cannot use, so their notifications are silently dropped.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from policy._model import Node, Rule, as_list, get, is_map, truthy

# SageMaker instance families whose ML storage is local NVMe instance store. That storage is
# encrypted by a hardware module on the instance, and CreateEndpointConfig REJECTS a KmsKeyId when
# any variant uses one of them ("You can't request a KmsKeyId when using an instance type with local
# storage"). Families from EC2's instance-store table; the GPU ones this project deploys are g5/g6.
NVME_INSTANCE_STORE_FAMILIES = frozenset({
    "c5d", "c6id", "m5d", "m6id", "r5d", "r6id",
    "g4ad", "g4dn", "g5", "g6", "g6e",
    "p3dn", "p4d", "p4de", "p5", "p5e", "p5en",
    "trn1", "trn1n",
})
_AWS_MANAGED_SNS_KEY = "alias/aws/sns"


def sagemaker_family(instance_type: str) -> str:
    """'ml.g5.2xlarge' -> 'g5'."""
    parts = str(instance_type).split(".")
    return parts[1] if len(parts) == 3 and parts[0] == "ml" else ""


def _sagemaker_problems(inputs: Mapping[str, Any]) -> Iterator[str]:
    if inputs.get("kmsKeyArn"):
        return
    variants = [v for v in as_list(inputs.get("productionVariants")) if is_map(v)]
    ebs_backed = sorted({
        str(v.get("instanceType"))
        for v in variants
        if v.get("instanceType") and sagemaker_family(v["instanceType"]) not in NVME_INSTANCE_STORE_FAMILIES
    })
    if ebs_backed:
        yield (
            f"variants on {', '.join(ebs_backed)} use an EBS ML volume; set kmsKeyArn "
            "(instance types with NVMe instance store take no key: see NVME_INSTANCE_STORE_FAMILIES)"
        )


def _unencrypted_block_devices(devices: Any, path: tuple[str, ...], label: str) -> Iterator[str]:
    for index, device in enumerate(as_list(devices)):
        ebs = get(device, *path) if path else device
        if is_map(ebs) and not truthy(ebs.get("encrypted")) and not ebs.get("snapshotId"):
            yield f"{label} {get(device, 'deviceName', default=index)} is not encrypted; set encrypted=True"


def at_rest(type_: str, name: str, inputs: Mapping[str, Any]) -> Iterator[str]:
    if type_ == "aws:sagemaker/endpointConfiguration:EndpointConfiguration":
        yield from _sagemaker_problems(inputs)
    elif type_ == "aws:ebs/volume:Volume":
        if not truthy(inputs.get("encrypted")):
            yield "EBS volume is not encrypted; set encrypted=True (and kmsKeyId for a customer key)"
    elif type_ == "aws:ec2/instance:Instance":
        root = inputs.get("rootBlockDevice")
        if not is_map(root) or not truthy(root.get("encrypted")):
            yield "root volume is not encrypted; set rootBlockDevice.encrypted=True"
        yield from _unencrypted_block_devices(inputs.get("ebsBlockDevices"), (), "EBS device")
    elif type_ == "aws:ec2/launchTemplate:LaunchTemplate":
        yield from _unencrypted_block_devices(inputs.get("blockDeviceMappings"), ("ebs",), "block device")
    elif type_ in ("aws:rds/instance:Instance", "aws:rds/cluster:Cluster"):
        if not truthy(inputs.get("storageEncrypted")):
            yield "database storage is not encrypted; set storageEncrypted=True"
    elif type_ == "aws:efs/fileSystem:FileSystem":
        if not truthy(inputs.get("encrypted")):
            yield "file system is not encrypted; set encrypted=True"
    elif type_ == "azure-native:storage:StorageAccount":
        if inputs.get("enableHttpsTrafficOnly") is False:
            yield "storage account accepts plain HTTP; leave enableHttpsTrafficOnly on"
        if str(inputs.get("minimumTlsVersion", "TLS1_2")) not in ("TLS1_2", "TLS1_3"):
            yield "storage account accepts TLS below 1.2; set minimumTlsVersion=TLS1_2"
    elif type_ in ("azure-native:compute:VirtualMachine", "azure-native:compute:VirtualMachineScaleSet"):
        profile = inputs.get("storageProfile") or get(inputs, "virtualMachineProfile", "storageProfile")
        disks = [get(profile, "osDisk"), *as_list(get(profile, "dataDisks"))]
        if any(is_map(d) and get(d, "vhd", "uri") for d in disks):
            yield "uses an unmanaged VHD disk; use managed disks (always encrypted at rest)"


def alarm_topics_usable(nodes: Sequence[Node]) -> Iterator[tuple[Node, str]]:
    """A topic under alias/aws/sns cannot receive CloudWatch alarm or AWS Budgets notifications."""
    managed_key_topics = {
        str(n.props.get("arn")): n
        for n in nodes
        if n.type == "aws:sns/topic:Topic" and n.props.get("kmsMasterKeyId") == _AWS_MANAGED_SNS_KEY and n.props.get("arn")
    }
    for node in nodes:
        targets: list[Any] = []
        if node.type == "aws:cloudwatch/metricAlarm:MetricAlarm":
            targets = [*as_list(node.props.get("alarmActions")), *as_list(node.props.get("okActions")),
                       *as_list(node.props.get("insufficientDataActions"))]
        elif node.type == "aws:budgets/budget:Budget":
            for notification in as_list(node.props.get("notifications")):
                targets += as_list(get(notification, "subscriberSnsTopicArns"))
        for arn in sorted({str(t) for t in targets if str(t) in managed_key_topics}):
            yield node, (
                f"notifies topic {managed_key_topics[arn].name!r}, encrypted with the AWS-managed {_AWS_MANAGED_SNS_KEY} "
                "whose key policy this service cannot use: the notification is dropped. Use a customer-managed "
                "key that grants the service kms:GenerateDataKey*/kms:Decrypt, or no topic encryption"
            )


RULE = Rule(
    name="encryption-at-rest",
    description="Storage and volumes are encrypted at rest, with a KMS key where the service takes one.",
    remediation="Turn on encryption (EBS/RDS/EFS encrypted, SageMaker kmsKeyArn on EBS-backed instance types, managed disks on Azure).",
    resource_checks=(at_rest,),
    graph_checks=(alarm_topics_usable,),
)
