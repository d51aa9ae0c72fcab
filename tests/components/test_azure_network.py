"""AzureNetwork: argument checks, NSG rules, and the resources it creates (under Pulumi mocks)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from components import InvalidArgs
from components.azure_network import AzureNetwork, AzureNetworkArgs, azure_name, security_rules
from tests.pulumi_harness import run_program

ARGS = AzureNetworkArgs(
    resource_group_name="rg-test",
    location="eastus",
    api_source_cidrs=("203.0.113.0/24", "198.51.100.7"),
    tags={"project": "llm-inference"},
)


def rules_by_name(args: AzureNetworkArgs) -> dict[str, object]:
    return {rule.name: rule for rule in security_rules(args)}


@pytest.mark.parametrize(
    "changes, field, message",
    [
        ({"api_source_cidrs": ()}, "api_source_cidrs", "no source CIDR"),
        ({"api_source_cidrs": ("203.0.113.0/33",)}, "api_source_cidrs", "not an IPv4 CIDR"),
        ({"api_source_cidrs": ("10.0.0.5/24",)}, "api_source_cidrs", "host bits set"),
        ({"api_source_cidrs": ("Internet",)}, "api_source_cidrs", "service tags"),
        ({"api_source_cidrs": ("*",)}, "api_source_cidrs", "service tags"),
        ({"api_source_cidrs": ("2001:db8::/32",)}, "api_source_cidrs", "IPv6"),
        ({"api_source_cidrs": ("203.0.113.7", "203.0.113.7/32")}, "api_source_cidrs", "listed twice"),
        ({"ssh_source_cidrs": ("0.0.0.0/0",)}, "ssh_source_cidrs", "whole Internet"),
        ({"ssh_source_cidrs": ("Internet",)}, "ssh_source_cidrs", "service tags"),
        ({"api_port": 22}, "api_port", "reserved"),
        ({"api_port": 70000}, "api_port", "1-65535"),
        ({"dns_label": "Bad_Label"}, "dns_label", "not a DNS label"),
        ({"dns_label": "9starts-with-digit"}, "dns_label", "not a DNS label"),
        ({"subnet_prefix": "10.41.1.0/24"}, "subnet_prefix", "not inside"),
        ({"subnet_prefix": "10.40.1.0/30"}, "subnet_prefix", "/29 or larger"),
        ({"address_space": "8.8.0.0/16"}, "address_space", "private IPv4"),
        ({"location": ""}, "location", "non-empty"),
    ],
)
def test_bad_args_name_the_field(changes, field, message):
    with pytest.raises(InvalidArgs, match=message) as err:
        replace(ARGS, **changes).validate()
    assert err.value.field == field


def test_valid_args_pass_and_bare_addresses_become_host_cidrs():
    ARGS.validate()
    assert ARGS.api_cidrs() == ("203.0.113.0/24", "198.51.100.7/32")


def test_the_api_may_be_opened_to_the_internet_on_purpose_but_ssh_may_not():
    replace(ARGS, api_source_cidrs=("0.0.0.0/0",)).validate()
    with pytest.raises(InvalidArgs):
        replace(ARGS, ssh_source_cidrs=("0.0.0.0/0",)).validate()


def test_only_the_api_port_is_open_by_default():
    rules = rules_by_name(ARGS)
    assert list(rules) == ["allow-api"]
    api = rules["allow-api"]
    assert (api.direction, api.access, api.protocol) == ("Inbound", "Allow", "Tcp")
    assert api.destination_port_range == "8000"
    assert api.source_address_prefixes == ["203.0.113.0/24", "198.51.100.7/32"]
    assert api.source_address_prefix is None


def test_ssh_opens_only_to_the_listed_cidrs():
    rules = rules_by_name(replace(ARGS, ssh_source_cidrs=("192.0.2.10/32",)))
    ssh = rules["allow-ssh"]
    assert ssh.destination_port_range == "22"
    assert ssh.source_address_prefixes == ["192.0.2.10/32"]
    assert ssh.source_address_prefix is None


def test_acme_challenge_opens_port_80_and_nothing_else_to_the_internet():
    rules = rules_by_name(replace(ARGS, api_port=443, acme_http_challenge=True))
    assert set(rules) == {"allow-api", "allow-acme-http"}
    assert rules["allow-acme-http"].source_address_prefix == "Internet"
    assert rules["allow-acme-http"].destination_port_range == "80"
    assert rules["allow-api"].destination_port_range == "443"
    assert len({rule.priority for rule in rules.values()}) == len(rules)


@pytest.mark.parametrize(
    "text, expected", [("llm-azure", "llm-azure"), ("LLM_prod.eu", "llm-prod-eu"), ("a--b--", "a-b")]
)
def test_azure_name(text, expected):
    assert azure_name(text) == expected


def test_the_component_creates_a_guarded_subnet_and_a_named_public_ip():
    def program():
        net = AzureNetwork("llm-dev", replace(ARGS, ssh_source_cidrs=("192.0.2.10/32",)))
        return {"fqdn": net.fqdn, "ip": net.public_ip_address, "subnet": net.subnet_id}

    run = run_program(program, stack="dev")
    assert run.type_counts() == {
        "azure-native:network:NetworkSecurityGroup": 1,
        "azure-native:network:PublicIPAddress": 1,
        "azure-native:network:Subnet": 1,
        "azure-native:network:VirtualNetwork": 1,
        "llminfer:azure:AzureNetwork": 1,
        "random:index/randomString:RandomString": 1,
    }
    component = run.one("llminfer:azure:AzureNetwork")
    assert all(r.parent == component.urn for r in run.resources if r is not component)
    nsg = run.one("azure-native:network:NetworkSecurityGroup")
    subnet = run.one("azure-native:network:Subnet")
    assert subnet.inputs["networkSecurityGroup"]["id"] == nsg.state["id"]
    assert subnet.inputs["addressPrefix"] == "10.40.1.0/24"
    assert subnet.inputs["defaultOutboundAccess"] is False
    assert [r["name"] for r in nsg.inputs["securityRules"]] == ["allow-api", "allow-ssh"]
    pip = run.one("azure-native:network:PublicIPAddress")
    assert pip.inputs["sku"] == {"name": "Standard", "tier": "Regional"}
    assert pip.inputs["publicIPAllocationMethod"] == "Static"
    assert pip.inputs["dnsSettings"]["domainNameLabel"] == "llm-dev-mockra"
    assert run.outputs["fqdn"] == "llm-dev-mockra.eastus.cloudapp.azure.com"
    assert run.outputs["ip"] == "203.0.113.30"
    for resource in (nsg, pip, run.one("azure-native:network:VirtualNetwork")):
        assert resource.inputs["tags"] == {"project": "llm-inference"}


def test_a_given_dns_label_needs_no_random_suffix():
    run = run_program(
        lambda: {"fqdn": AzureNetwork("n", replace(ARGS, dns_label="my-llm")).fqdn}, stack="dev"
    )
    assert run.of_type("random:index/randomString:RandomString") == []
    assert run.outputs["fqdn"] == "my-llm.eastus.cloudapp.azure.com"


def test_invalid_args_create_nothing():
    caught = []

    def program():
        try:
            AzureNetwork("n", replace(ARGS, api_source_cidrs=()))
        except InvalidArgs as err:
            caught.append(err)
        return {}

    run = run_program(program, stack="dev")
    assert len(caught) == 1
    assert run.resources == []  # refused before the component or any child registered
