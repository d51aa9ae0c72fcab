"""public-entry-auth: every public entry point requires auth; ingress limited to named CIDRs."""

from __future__ import annotations

import pytest

from policy import Node, rule
from policy._access import APP_KEY_CHECK_VARIABLE

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


FUNCTION_URL = "aws:lambda/functionUrl:FunctionUrl"
FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:gateway"


def function(variables: dict) -> Node:
    return Node("aws:lambda/function:Function", "gateway-fn",
                {"name": "gateway", "arn": FUNCTION_ARN, "environment": {"variables": variables}})


def function_url(auth: str, function_name: str = "gateway") -> Node:
    return Node(FUNCTION_URL, "gateway-url", {"functionName": function_name, "authorizationType": auth})


CHECKS_KEY = {APP_KEY_CHECK_VARIABLE: "arn:aws:secretsmanager:us-east-1:123456789012:secret:key"}  # pragma: allowlist secret (an ARN)


def test_function_url_with_iam_auth_passes():
    assert messages(FUNCTION_URL, {"authorizationType": "AWS_IAM"}) == []
    assert graph(function_url("AWS_IAM"), function({})) == []


def test_function_url_without_iam_auth_needs_a_function_that_checks_the_key():
    # Auth NONE is judged with the function, which one resource cannot show.
    assert messages(FUNCTION_URL, {"authorizationType": "NONE"}) == []
    assert graph(function_url("NONE"), function(CHECKS_KEY)) == []
    assert graph(function_url("NONE", FUNCTION_ARN), function(CHECKS_KEY)) == []
    assert graph(function_url("NONE", f"{FUNCTION_ARN}:live"), function(CHECKS_KEY)) == []
    found = graph(function_url("NONE"), function({"GATEWAY_MODEL_ID": "m"}))
    assert found and found[0].startswith("gateway-url:") and APP_KEY_CHECK_VARIABLE in found[0]
    assert graph(function_url("NONE"), function({APP_KEY_CHECK_VARIABLE: ""}))
    # A function outside the stack cannot be seen to check anything.
    assert graph(function_url("NONE", "someone-elses-function"), function(CHECKS_KEY))
    assert graph(function_url("NONE"))


def test_the_key_check_variable_is_the_gateway_apps():
    from gateway.settings import ENVIRONMENT_VARIABLES

    assert ENVIRONMENT_VARIABLES["api_key_secret_arn"] == APP_KEY_CHECK_VARIABLE


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
    # 0.0.0.0/0 is a choice written down; whether the pods behind it require the key is the graph's.
    assert messages(SERVICE, lb(["0.0.0.0/0"])) == []
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


def test_load_balancer_open_to_the_internet_passes_only_behind_the_api_key():
    open_service = Node(SERVICE, "vllm-lb", lb(["0.0.0.0/0"]))
    assert graph(open_service, deployment({"name": "vllm", "args": ["--api-key", "$(VLLM_API_KEY)"], "env": [KEY_ENV]})) == []
    found = graph(open_service, deployment({"name": "vllm", "args": ["--model", "m"]}))
    assert any(f.startswith("vllm-lb:") and "0.0.0.0/0" in f for f in found)
    assert any(f.startswith("vllm:") and "without an API key" in f for f in found)
    # Every pod behind it must require the key, and it must select pods the policy can see.
    keyless = Node("kubernetes:apps/v1:Deployment", "sidecar", deployment({"name": "other"}).props)
    found = graph(open_service, deployment({"name": "vllm", "env": [KEY_ENV]}), keyless)
    assert any(f.startswith("vllm-lb:") and "0.0.0.0/0" in f for f in found)
    assert any(f.startswith("vllm-lb:") and "0.0.0.0/0" in f for f in graph(open_service))
    # An internal load balancer admits no one from the internet, whatever its ranges say.
    internal = Node(SERVICE, "vllm-lb", lb(["0.0.0.0/0"], {"networking.gke.io/load-balancer-type": "Internal"}))
    assert graph(internal, deployment({"name": "vllm", "args": ["--model", "m"]})) == []
