"""public-entry-auth: every public entry point requires auth; ingress limited to named CIDRs."""

from __future__ import annotations

import pytest

from policy import Node, rule

ACCESS = rule("public-entry-auth")


def messages(type_: str, inputs: dict) -> list[str]:
    return [v.message for v in ACCESS.check_resource(type_, "r", inputs)]


def graph(*nodes: Node) -> list[str]:
    return [f"{v.name}: {v.message}" for v in ACCESS.check_graph(list(nodes))]


METHOD = "aws:apigateway/method:Method"


def test_api_gateway_method_needs_key_or_authorizer():
    assert messages(METHOD, {"httpMethod": "POST", "authorization": "NONE", "apiKeyRequired": True}) == []
    assert messages(METHOD, {"httpMethod": "POST", "authorization": "AWS_IAM"}) == []
    assert messages(METHOD, {"httpMethod": "POST", "authorization": "NONE"})
    assert messages(METHOD, {"httpMethod": "POST", "authorization": "NONE", "apiKeyRequired": False})


def test_cors_preflight_is_exempt():
    assert messages(METHOD, {"httpMethod": "OPTIONS", "authorization": "NONE"}) == []


def test_function_url_needs_iam_auth():
    assert messages("aws:lambda/functionUrl:FunctionUrl", {"authorizationType": "AWS_IAM"}) == []
    assert messages("aws:lambda/functionUrl:FunctionUrl", {"authorizationType": "NONE"})


def test_lambda_permission_for_everyone_fails():
    assert messages("aws:lambda/permission:Permission", {"principal": "apigateway.amazonaws.com", "sourceArn": "arn:x"}) == []
    assert messages("aws:lambda/permission:Permission", {"principal": "*"})


NSG = "azure-native:network:NetworkSecurityGroup"


def nsg_rule(source: str, port: str = "8000") -> dict:
    return {"name": "in", "direction": "Inbound", "access": "Allow", "protocol": "Tcp",
            "sourceAddressPrefix": source, "destinationPortRange": port}


@pytest.mark.parametrize("source", ["*", "0.0.0.0/0", "Internet", "Any"])
def test_nsg_open_to_the_world_fails(source):
    assert messages(NSG, {"securityRules": [nsg_rule(source)]})


def test_nsg_limited_to_cidr_passes_and_outbound_is_ignored():
    assert messages(NSG, {"securityRules": [nsg_rule("203.0.113.0/24"), nsg_rule("AzureLoadBalancer")]}) == []
    outbound = {**nsg_rule("*"), "direction": "Outbound"}
    assert messages(NSG, {"securityRules": [outbound]}) == []


def test_ssh_from_anywhere_is_named():
    found = messages("azure-native:network:SecurityRule", nsg_rule("*", "22"))
    assert found and "SSH" in found[0]
    found = messages("azure-native:network:SecurityRule", {**nsg_rule("Internet", ""), "destinationPortRanges": ["20-30"]})
    assert found and "SSH" in found[0]


def test_aws_security_group_and_gcp_firewall():
    sg = "aws:ec2/securityGroup:SecurityGroup"
    assert messages(sg, {"ingress": [{"protocol": "tcp", "fromPort": 22, "toPort": 22, "cidrBlocks": ["0.0.0.0/0"]}]})
    assert messages(sg, {"ingress": [{"protocol": "tcp", "fromPort": 443, "toPort": 443, "cidrBlocks": ["10.0.0.0/8"]}]}) == []
    fw = "gcp:compute/firewall:Firewall"
    assert "SSH" in messages(fw, {"sourceRanges": ["0.0.0.0/0"], "allows": [{"protocol": "tcp", "ports": ["22"]}]})[0]
    assert messages(fw, {"sourceRanges": ["35.191.0.0/16", "130.211.0.0/22"], "allows": [{"protocol": "tcp", "ports": ["8000"]}]}) == []
    assert messages(fw, {"direction": "EGRESS", "destinationRanges": ["0.0.0.0/0"], "sourceRanges": ["0.0.0.0/0"],
                         "allows": [{"protocol": "tcp"}]}) == []


def test_public_gcp_iam_member_fails():
    assert messages("gcp:cloudrunv2/serviceIamMember:ServiceIamMember", {"role": "roles/run.invoker", "member": "allUsers"})
    assert messages("gcp:cloudrunv2/serviceIamMember:ServiceIamMember", {"role": "roles/run.invoker", "member": "serviceAccount:a@b"}) == []


def test_azure_vm_password_login_fails():
    vm = "azure-native:compute:VirtualMachine"
    keys = {"linuxConfiguration": {"disablePasswordAuthentication": True, "ssh": {"publicKeys": [{"keyData": "ssh-ed25519 AAAA"}]}}}
    assert messages(vm, {"osProfile": {"adminUsername": "azureuser", **keys}}) == []
    assert messages(vm, {"osProfile": {"adminUsername": "azureuser", "adminPassword": "x", "linuxConfiguration": {}}})


SERVICE = "kubernetes:core/v1:Service"


def lb(ranges: list[str] | None = None, annotations: dict | None = None) -> dict:
    spec: dict = {"type": "LoadBalancer", "selector": {"app": "vllm"}, "ports": [{"port": 80}]}
    if ranges is not None:
        spec["loadBalancerSourceRanges"] = ranges
    return {"metadata": {"name": "vllm", "namespace": "llm", "annotations": annotations or {}}, "spec": spec}


def test_load_balancer_needs_source_ranges():
    assert messages(SERVICE, lb(["203.0.113.0/24"])) == []
    assert messages(SERVICE, lb())
    assert messages(SERVICE, lb(["0.0.0.0/0"]))
    assert messages(SERVICE, lb(annotations={"networking.gke.io/load-balancer-type": "Internal"})) == []
    assert messages(SERVICE, {"spec": {"type": "ClusterIP"}}) == []


def deployment(container: dict) -> Node:
    return Node("kubernetes:apps/v1:Deployment", "vllm", {
        "metadata": {"namespace": "llm"},
        "spec": {"template": {"metadata": {"labels": {"app": "vllm"}}, "spec": {"containers": [container]}}},
    })


KEY_ENV = {"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": "vllm-api-key", "key": "key"}}}


def test_pods_behind_a_load_balancer_need_the_api_key():
    service = Node(SERVICE, "vllm-lb", lb(["203.0.113.0/24"]))
    assert graph(service, deployment({"name": "vllm", "env": [KEY_ENV]})) == []
    assert graph(service, deployment({"name": "vllm", "args": ["--api-key", "$(API_KEY)"],
                                      "env": [{**KEY_ENV, "name": "API_KEY"}]})) == []
    found = graph(service, deployment({"name": "vllm", "args": ["--model", "m"]}))
    assert found and "without an API key" in found[0]
    # A workload in another namespace is not behind this Service.
    elsewhere = deployment({"name": "vllm", "env": [KEY_ENV]})
    elsewhere = Node(elsewhere.type, elsewhere.name, {**elsewhere.props, "metadata": {"namespace": "other"}})
    assert graph(service, elsewhere)
