"""The stack's own VPC for a private SageMaker endpoint (`sagemakerVpc`): the model's network interfaces live in
private subnets of two AZs, behind a security group that admits nothing.

SageMaker attaches the model containers to these subnets through the Model's VpcConfig; "you must create at
least two subnets in different availability zones in your private VPC, even if you have only one hosting
instance" (SageMaker Developer Guide, host-vpc). Inside AWS the traffic stays on endpoints:

- S3, a gateway endpoint on the private route table (free; ECR keeps image layers in S3, and host-vpc asks for
  one so containers reach S3 without the internet);
- ECR (api and dkr), CloudWatch Logs: interface endpoints with private DNS, so the usual host names resolve to
  them (ECR's "Amazon ECR interface VPC endpoints" guide lists exactly these with the S3 gateway);
- the SageMaker runtime endpoint is left out by default: it serves callers inside the VPC, and the gateway's
  Lambda is not in it (add "sagemaker.runtime" to interface_services for VPC clients).

The Hugging Face download still needs the internet: the container fetches HF_MODEL_ID when it starts. Built
here: one NAT gateway (in a public subnet with the internet gateway) that the private subnets route 0.0.0.0/0
to, and the security group lets out HTTPS only. The alternative, the weights pre-staged in S3 and read over
the gateway endpoint, needs a copy job outside Pulumi and a second model-source path in the stack; the NAT
keeps `modelId` a config change, costs an hourly price (the planner shows it: `bench plan --sagemaker-vpc`),
and can be removed later with egress="none" once a model comes from S3. One NAT, not one per AZ: the model
downloads only at start, so an AZ outage costs a restart, not traffic.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
from pulumi_aws import ec2, get_availability_zones_output

from components._args import InvalidArgs, require, require_choice, require_text

_COMPONENT = "SageMakerVpc"
# What the model container needs inside AWS (see the module docstring); others may be added.
DEFAULT_INTERFACE_SERVICES = ("ecr.api", "ecr.dkr", "logs")
KNOWN_INTERFACE_SERVICES = ("ecr.api", "ecr.dkr", "logs", "sagemaker.runtime", "sts", "monitoring")
EGRESS_CHOICES = ("nat", "none")  # none: no internet at all (the model must come from S3)
AZ_COUNT = 2
HTTPS = 443


@dataclass(frozen=True)
class SageMakerVpcArgs:
    region: str
    cidr_block: str = "10.40.0.0/16"
    egress: str = "nat"
    interface_services: tuple[str, ...] = DEFAULT_INTERFACE_SERVICES
    tags: Mapping[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        require_text(_COMPONENT, "region", self.region)
        try:
            network = ipaddress.IPv4Network(self.cidr_block, strict=True)
        except (ValueError, TypeError) as err:
            raise InvalidArgs(_COMPONENT, "cidr_block", f"{self.cidr_block!r} is not an IPv4 CIDR block like "
                                                        f"10.40.0.0/16 ({err})") from None
        # VPC CIDRs are /16 to /28 (VPC User Guide); four /20-or-smaller subnets must fit: at most /22.
        require(_COMPONENT, "cidr_block", 16 <= network.prefixlen <= 22,
                f"{self.cidr_block} must be between /16 and /22 (two private and two public subnets are cut from it)")
        require(_COMPONENT, "cidr_block", network.is_private,
                f"{self.cidr_block} is not a private range (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16)")
        require_choice(_COMPONENT, "egress", self.egress, EGRESS_CHOICES,
                       hint=" (nat: the Hugging Face download goes out through a NAT gateway)")
        require(_COMPONENT, "interface_services", isinstance(self.interface_services, tuple),
                f"must be a tuple of service names, got {self.interface_services!r}")
        for service in self.interface_services:
            require_choice(_COMPONENT, "interface_services", service, KNOWN_INTERFACE_SERVICES)
        require(_COMPONENT, "interface_services", len(set(self.interface_services)) == len(self.interface_services),
                f"names a service twice: {self.interface_services}")

    def subnet_cidrs(self) -> tuple[list[str], list[str]]:
        """(private, public): the network cut in four equal parts, private subnets in the first two, public
        ones (the NAT gateway only) in the next two."""
        parts = [str(n) for n in ipaddress.IPv4Network(self.cidr_block).subnets(prefixlen_diff=2)]
        return parts[:AZ_COUNT], parts[AZ_COUNT:2 * AZ_COUNT]

    def service_name(self, service: str) -> str:
        return f"com.amazonaws.{self.region}.{service}"


def _named(tags: Mapping[str, str], name: str) -> dict[str, str]:
    return {**tags, "Name": name}


class SageMakerVpc(pulumi.ComponentResource):
    """VPC, two private subnets (and with NAT egress two public ones), routes, security groups and endpoints."""

    vpc_id: pulumi.Output[str]
    private_subnet_ids: pulumi.Output[list[str]]
    model_security_group_id: pulumi.Output[str]

    def __init__(self, name: str, args: SageMakerVpcArgs, opts: pulumi.ResourceOptions | None = None):
        args.validate()
        super().__init__(f"llminfer:aws:{_COMPONENT}", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = dict(args.tags)
        zones = get_availability_zones_output(state="available", opts=pulumi.InvokeOutputOptions(parent=self)).names
        private_cidrs, public_cidrs = args.subnet_cidrs()

        # DNS support and host names: interface endpoints' private DNS needs both (PrivateLink guide).
        vpc = ec2.Vpc(f"{name}-vpc", cidr_block=args.cidr_block, enable_dns_support=True,
                      enable_dns_hostnames=True, tags=_named(tags, f"{name}-vpc"), opts=child)
        private_subnets = [
            ec2.Subnet(f"{name}-private-{i}", vpc_id=vpc.id, cidr_block=cidr, availability_zone=zones[i],
                       map_public_ip_on_launch=False, tags=_named(tags, f"{name}-private-{i}"), opts=child)
            for i, cidr in enumerate(private_cidrs)
        ]
        private_routes = ec2.RouteTable(f"{name}-private-routes", vpc_id=vpc.id,
                                        tags=_named(tags, f"{name}-private-routes"), opts=child)
        for i, subnet in enumerate(private_subnets):
            ec2.RouteTableAssociation(f"{name}-private-{i}-routes", subnet_id=subnet.id,
                                      route_table_id=private_routes.id, opts=child)

        if args.egress == "nat":
            self._nat_egress(name, args, vpc, zones, public_cidrs, private_routes, tags)

        model_sg = ec2.SecurityGroup(
            f"{name}-model-sg",
            vpc_id=vpc.id,
            description="SageMaker model containers: no inbound; HTTPS out (AWS endpoints, Hugging Face via NAT)",
            ingress=[],  # nothing connects to the model: SageMaker reaches it on its own network
            egress=[ec2.SecurityGroupEgressArgs(protocol="tcp", from_port=HTTPS, to_port=HTTPS,
                                                cidr_blocks=["0.0.0.0/0"], description="HTTPS")],
            tags=_named(tags, f"{name}-model-sg"),
            opts=child,
        )
        endpoint_sg = ec2.SecurityGroup(
            f"{name}-endpoints-sg",
            vpc_id=vpc.id,
            description="Interface endpoints: HTTPS from the model containers only",
            ingress=[ec2.SecurityGroupIngressArgs(protocol="tcp", from_port=HTTPS, to_port=HTTPS,
                                                  security_groups=[model_sg.id], description="model containers")],
            egress=[],
            tags=_named(tags, f"{name}-endpoints-sg"),
            opts=child,
        )
        ec2.VpcEndpoint(f"{name}-s3", vpc_id=vpc.id, service_name=args.service_name("s3"),
                        vpc_endpoint_type="Gateway", route_table_ids=[private_routes.id],
                        tags=_named(tags, f"{name}-s3"), opts=child)
        for service in args.interface_services:
            endpoint_name = f"{name}-{service.replace('.', '-')}"
            ec2.VpcEndpoint(
                endpoint_name,
                vpc_id=vpc.id,
                service_name=args.service_name(service),
                vpc_endpoint_type="Interface",
                private_dns_enabled=True,
                subnet_ids=[s.id for s in private_subnets],
                security_group_ids=[endpoint_sg.id],
                tags=_named(tags, endpoint_name),
                opts=child,
            )

        self.vpc_id = vpc.id
        self.private_subnet_ids = pulumi.Output.all(*[s.id for s in private_subnets])
        self.model_security_group_id = model_sg.id
        self.register_outputs({
            "vpc_id": self.vpc_id,
            "private_subnet_ids": self.private_subnet_ids,
            "model_security_group_id": self.model_security_group_id,
        })

    def _nat_egress(self, name: str, args: SageMakerVpcArgs, vpc: ec2.Vpc, zones: pulumi.Output,
                    public_cidrs: list[str], private_routes: ec2.RouteTable, tags: dict[str, str]) -> None:
        child = pulumi.ResourceOptions(parent=self)
        gateway = ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, tags=_named(tags, f"{name}-igw"), opts=child)
        public_routes = ec2.RouteTable(f"{name}-public-routes", vpc_id=vpc.id,
                                       tags=_named(tags, f"{name}-public-routes"), opts=child)
        ec2.Route(f"{name}-public-default", route_table_id=public_routes.id, destination_cidr_block="0.0.0.0/0",
                  gateway_id=gateway.id, opts=child)
        public_subnets = []
        for i, cidr in enumerate(public_cidrs):
            # Only the NAT gateway lives here; nothing gets a public IP by default.
            subnet = ec2.Subnet(f"{name}-public-{i}", vpc_id=vpc.id, cidr_block=cidr, availability_zone=zones[i],
                                map_public_ip_on_launch=False, tags=_named(tags, f"{name}-public-{i}"), opts=child)
            ec2.RouteTableAssociation(f"{name}-public-{i}-routes", subnet_id=subnet.id,
                                      route_table_id=public_routes.id, opts=child)
            public_subnets.append(subnet)
        address = ec2.Eip(f"{name}-nat-ip", domain="vpc", tags=_named(tags, f"{name}-nat-ip"), opts=child)
        nat = ec2.NatGateway(f"{name}-nat", allocation_id=address.id, subnet_id=public_subnets[0].id,
                             tags=_named(tags, f"{name}-nat"),
                             opts=pulumi.ResourceOptions(parent=self, depends_on=[gateway]))
        ec2.Route(f"{name}-private-default", route_table_id=private_routes.id, destination_cidr_block="0.0.0.0/0",
                  nat_gateway_id=nat.id, opts=child)
