"""The network in front of one inference VM: VNet, subnet, NSG and a public IP with a DNS name.

The NSG opens the API port to the configured source CIDRs and nothing else: SSH only from CIDRs given
explicitly (never from anywhere), and port 80 from the Internet only when asked, for Let's Encrypt's
HTTP-01 challenge in front of TLS. Everything else inbound falls to Azure's default DenyAllInBound.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_random as random
from pulumi_azure_native import network

from components._args import InvalidArgs, require, require_text

_COMPONENT = "AzureNetwork"
# Azure DNS label of a public IP: <label>.<region>.cloudapp.azure.com.
_DNS_LABEL = re.compile(r"^[a-z][a-z0-9-]{1,61}[a-z0-9]$")
SSH_PORT = 22
ACME_HTTP_PORT = 80


def azure_name(text: str) -> str:
    """`text` as lowercase letters, digits and single hyphens: valid in every Azure resource name."""
    return re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-")


def ipv4_cidrs(field_name: str, values: Sequence[str], *, allow_anywhere: bool) -> tuple[str, ...]:
    """Normalized IPv4 CIDRs (a bare address becomes /32), or InvalidArgs naming `field_name`."""
    cidrs: list[str] = []
    for value in values:
        text = str(value).strip()
        try:
            net = ipaddress.ip_network(text, strict=True)
        except ValueError as err:
            hint = (
                " (Azure service tags such as Internet or * are not accepted: give CIDRs)"
                if "/" not in text
                else ""
            )
            raise InvalidArgs(
                _COMPONENT, field_name, f"{text!r} is not an IPv4 CIDR such as 203.0.113.7/32: {err}{hint}"
            ) from None
        if net.version != 4:
            raise InvalidArgs(
                _COMPONENT, field_name, f"{text!r} is IPv6; the VM has an IPv4 public address only"
            )
        if net.prefixlen == 0 and not allow_anywhere:
            raise InvalidArgs(
                _COMPONENT, field_name, f"{text!r} opens the port to the whole Internet; list your own CIDRs"
            )
        if str(net) in cidrs:
            raise InvalidArgs(_COMPONENT, field_name, f"{text!r} is listed twice")
        cidrs.append(str(net))
    return tuple(cidrs)


@dataclass(frozen=True)
class AzureNetworkArgs:
    resource_group_name: pulumi.Input[str]
    location: str
    # Where clients may reach the API from. 0.0.0.0/0 is allowed (the API key still guards it).
    api_source_cidrs: Sequence[str]
    api_port: int = 8000
    # SSH (key auth only, on the VM) from these CIDRs only; empty keeps port 22 closed.
    ssh_source_cidrs: Sequence[str] = ()
    # Opens port 80 to the Internet: Let's Encrypt validates from addresses it does not publish.
    acme_http_challenge: bool = False
    # "" picks <component name>-<6 random characters>.
    dns_label: str = ""
    address_space: str = "10.40.0.0/16"
    subnet_prefix: str = "10.40.1.0/24"
    tags: Mapping[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        require_text(_COMPONENT, "location", self.location)
        require(
            _COMPONENT,
            "api_port",
            isinstance(self.api_port, int) and 1 <= self.api_port <= 65535,
            f"must be a TCP port (1-65535), got {self.api_port!r}",
        )
        require(
            _COMPONENT,
            "api_port",
            self.api_port not in (SSH_PORT, ACME_HTTP_PORT),
            f"{self.api_port} is reserved here (22 is SSH, 80 the ACME challenge); pick another, e.g. 8000",
        )
        require(
            _COMPONENT,
            "api_source_cidrs",
            len(self.api_source_cidrs) > 0,
            "lists no source CIDR, so nobody could reach the API; give at least one, e.g. your-ip/32",
        )
        self.api_cidrs()
        self.ssh_cidrs()
        if self.dns_label:
            require(
                _COMPONENT,
                "dns_label",
                _DNS_LABEL.fullmatch(self.dns_label) is not None,
                f"{self.dns_label!r} is not a DNS label: 3-63 lowercase letters, digits and hyphens, "
                "starting with a letter",
            )
        space = self._network("address_space", self.address_space)
        subnet = self._network("subnet_prefix", self.subnet_prefix)
        require(
            _COMPONENT,
            "subnet_prefix",
            subnet.subnet_of(space),
            f"{subnet} is not inside the VNet's address space {space}",
        )
        require(
            _COMPONENT,
            "subnet_prefix",
            subnet.prefixlen <= 29,
            f"{subnet} is too small: Azure subnets are /29 or larger",
        )

    def api_cidrs(self) -> tuple[str, ...]:
        return ipv4_cidrs("api_source_cidrs", self.api_source_cidrs, allow_anywhere=True)

    def ssh_cidrs(self) -> tuple[str, ...]:
        return ipv4_cidrs("ssh_source_cidrs", self.ssh_source_cidrs, allow_anywhere=False)

    @staticmethod
    def _network(field_name: str, value: str) -> ipaddress.IPv4Network:
        try:
            net = ipaddress.ip_network(value, strict=True)
        except ValueError as err:
            raise InvalidArgs(_COMPONENT, field_name, f"{value!r} is not a CIDR: {err}") from None
        if not isinstance(net, ipaddress.IPv4Network) or not net.is_private:
            raise InvalidArgs(
                _COMPONENT, field_name, f"{value!r} must be a private IPv4 range, e.g. 10.40.0.0/16"
            )
        return net


def security_rules(args: AzureNetworkArgs) -> list[network.SecurityRuleArgs]:
    """The NSG's inbound allow rules; Azure's DenyAllInBound (priority 65500) drops the rest."""

    def allow(
        name: str, priority: int, port: int, sources: Sequence[str], why: str
    ) -> network.SecurityRuleArgs:
        return network.SecurityRuleArgs(
            name=name,
            description=why,
            priority=priority,
            direction="Inbound",
            access="Allow",
            protocol="Tcp",
            source_address_prefixes=list(sources),
            source_port_range="*",
            destination_address_prefix="*",
            destination_port_range=str(port),
        )

    rules = [
        allow(
            "allow-api",
            100,
            args.api_port,
            args.api_cidrs(),
            "OpenAI-compatible API, configured sources only",
        )
    ]
    if args.ssh_source_cidrs:
        rules.append(
            allow("allow-ssh", 110, SSH_PORT, args.ssh_cidrs(), "SSH (key auth only) from explicit CIDRs")
        )
    if args.acme_http_challenge:
        # A service tag, not a CIDR list: Let's Encrypt validates from addresses it does not publish.
        rules.append(
            network.SecurityRuleArgs(
                name="allow-acme-http",
                description="Let's Encrypt HTTP-01 challenge for the TLS certificate; Caddy redirects the rest to HTTPS",
                priority=120,
                direction="Inbound",
                access="Allow",
                protocol="Tcp",
                source_address_prefix="Internet",
                source_port_range="*",
                destination_address_prefix="*",
                destination_port_range=str(ACME_HTTP_PORT),
            )
        )
    return rules


class AzureNetwork(pulumi.ComponentResource):
    """VNet + subnet guarded by an NSG, and a static Standard public IP with a DNS label."""

    vnet_id: pulumi.Output[str]
    subnet_id: pulumi.Output[str]
    nsg_id: pulumi.Output[str]
    public_ip_id: pulumi.Output[str]
    public_ip_address: pulumi.Output[str]
    fqdn: pulumi.Output[str]

    def __init__(self, name: str, args: AzureNetworkArgs, opts: pulumi.ResourceOptions | None = None):
        args.validate()
        super().__init__(f"llminfer:azure:{_COMPONENT}", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        base = azure_name(name)
        tags = dict(args.tags)
        common = {"resource_group_name": args.resource_group_name, "location": args.location, "tags": tags}

        nsg = network.NetworkSecurityGroup(
            f"{name}-nsg",
            network_security_group_name=f"{base}-nsg",
            security_rules=security_rules(args),
            opts=child,
            **common,
        )
        vnet = network.VirtualNetwork(
            f"{name}-vnet",
            virtual_network_name=f"{base}-vnet",
            address_space=network.AddressSpaceArgs(address_prefixes=[args.address_space]),
            # The subnet is its own resource below: an update of the VNet must not try to reconcile it.
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["subnets"]),
            **common,
        )
        subnet = network.Subnet(
            f"{name}-subnet",
            subnet_name=f"{base}-subnet",
            resource_group_name=args.resource_group_name,
            virtual_network_name=vnet.name,
            address_prefix=args.subnet_prefix,
            network_security_group=network.NetworkSecurityGroupArgs(id=nsg.id),
            # The VM reaches out through its own public IP; nothing else in the subnet may.
            default_outbound_access=False,
            opts=child,
        )

        if args.dns_label:
            dns_label: pulumi.Input[str] = args.dns_label
        else:
            # DNS labels are unique per region across all of Azure: add a random suffix.
            suffix = random.RandomString(
                f"{name}-dns-suffix",
                length=6,
                upper=False,
                special=False,
                lower=True,
                numeric=True,
                opts=child,
            )
            prefix = (base if base[:1].isalpha() else f"llm-{base}".rstrip("-"))[:55].rstrip("-")
            dns_label = suffix.result.apply(lambda s: f"{prefix}-{s}")
        public_ip = network.PublicIPAddress(
            f"{name}-pip",
            public_ip_address_name=f"{base}-pip",
            sku=network.PublicIPAddressSkuArgs(name="Standard", tier="Regional"),
            public_ip_allocation_method="Static",
            public_ip_address_version="IPv4",
            dns_settings=network.PublicIPAddressDnsSettingsArgs(domain_name_label=dns_label),
            opts=child,
            **common,
        )

        self.vnet_id = vnet.id
        self.subnet_id = subnet.id
        self.nsg_id = nsg.id
        self.public_ip_id = public_ip.id
        self.public_ip_address = public_ip.ip_address.apply(lambda ip: ip or "")
        self.fqdn = public_ip.dns_settings.apply(lambda dns: (dns.fqdn if dns else None) or "")
        self.register_outputs(
            {
                "vnet_id": self.vnet_id,
                "subnet_id": self.subnet_id,
                "nsg_id": self.nsg_id,
                "public_ip_id": self.public_ip_id,
                "public_ip_address": self.public_ip_address,
                "fqdn": self.fqdn,
            }
        )
