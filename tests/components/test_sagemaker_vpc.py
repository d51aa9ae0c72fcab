"""sagemakerVpc: the private network of the SageMaker model, its subnet/route/endpoint graph, and the stack wiring."""

from __future__ import annotations

import ipaddress
import json

import pytest

from components import InvalidArgs
from components.sagemaker_vpc import SageMakerVpc, SageMakerVpcArgs
from policy import Node, check_graph
from stacks.config import ConfigError
from tests.pulumi_harness import refused_stack, run_program, run_stack

SUBNET = "aws:ec2/subnet:Subnet"
ROUTE = "aws:ec2/route:Route"
ENDPOINT = "aws:ec2/vpcEndpoint:VpcEndpoint"
SG = "aws:ec2/securityGroup:SecurityGroup"
EC2_TYPES = (SUBNET, ROUTE, ENDPOINT, SG, "aws:ec2/vpc:Vpc", "aws:ec2/natGateway:NatGateway",
             "aws:ec2/internetGateway:InternetGateway", "aws:ec2/eip:Eip")


def vpc_graph(**changes):
    def program():
        made = SageMakerVpc("net", SageMakerVpcArgs(region="us-east-1", tags={"owner": "o"}, **changes))
        return {"subnets": made.private_subnet_ids, "sg": made.model_security_group_id, "vpc": made.vpc_id}

    return run_program(program, stack="dev")


@pytest.fixture(scope="module")
def net():
    return vpc_graph()


def by_name(run, type_):
    return {r.name: r for r in run.of_type(type_)}


def test_two_private_subnets_in_two_zones_inside_the_vpc(net):
    vpc = net.one("aws:ec2/vpc:Vpc")
    assert vpc.inputs["enableDnsSupport"] and vpc.inputs["enableDnsHostnames"]  # private DNS of the endpoints
    subnets = by_name(net, SUBNET)
    private = [subnets["net-private-0"], subnets["net-private-1"]]
    assert [s.inputs["availabilityZone"] for s in private] == ["us-east-1a", "us-east-1b"]
    network = ipaddress.IPv4Network(vpc.inputs["cidrBlock"])
    cidrs = [ipaddress.IPv4Network(s.inputs["cidrBlock"]) for s in subnets.values()]
    assert all(c.subnet_of(network) for c in cidrs)
    assert not any(a.overlaps(b) for i, a in enumerate(cidrs) for b in cidrs[i + 1:])
    assert all(s.inputs["vpcId"] == "net-vpc-id" and not s.inputs["mapPublicIpOnLaunch"] for s in subnets.values())
    assert net.outputs["subnets"] == ["net-private-0-id", "net-private-1-id"]


def test_private_subnets_route_to_the_nat_and_the_nat_to_the_internet_gateway(net):
    associations = {(a.inputs["subnetId"], a.inputs["routeTableId"])
                    for a in net.of_type("aws:ec2/routeTableAssociation:RouteTableAssociation")}
    assert {("net-private-0-id", "net-private-routes-id"), ("net-private-1-id", "net-private-routes-id"),
            ("net-public-0-id", "net-public-routes-id"), ("net-public-1-id", "net-public-routes-id")} == associations
    routes = {r.inputs["routeTableId"]: r.inputs for r in net.of_type(ROUTE)}
    assert routes["net-private-routes-id"] == {"routeTableId": "net-private-routes-id",
                                               "destinationCidrBlock": "0.0.0.0/0", "natGatewayId": "net-nat-id"}
    assert routes["net-public-routes-id"]["gatewayId"] == "net-igw-id"
    nat = net.one("aws:ec2/natGateway:NatGateway")
    assert nat.inputs["subnetId"] == "net-public-0-id" and nat.inputs["allocationId"] == "net-nat-ip-id"
    assert net.one("aws:ec2/internetGateway:InternetGateway").urn in nat.dependencies


def test_the_model_security_group_admits_nothing_and_lets_out_https(net):
    groups = by_name(net, SG)
    model = groups["net-model-sg"].inputs
    assert model.get("ingress", []) == []
    assert [(e["protocol"], e["fromPort"], e["toPort"], e["cidrBlocks"]) for e in model["egress"]] == [
        ("tcp", 443, 443, ["0.0.0.0/0"])]
    endpoints = groups["net-endpoints-sg"].inputs
    assert [(i["fromPort"], i["toPort"], i["securityGroups"]) for i in endpoints["ingress"]] == [
        (443, 443, ["net-model-sg-id"])]
    assert net.outputs["sg"] == "net-model-sg-id"


def test_s3_gateway_and_interface_endpoints_for_ecr_and_logs(net):
    endpoints = {e.inputs["serviceName"]: e.inputs for e in net.of_type(ENDPOINT)}
    assert set(endpoints) == {"com.amazonaws.us-east-1.s3", "com.amazonaws.us-east-1.ecr.api",
                              "com.amazonaws.us-east-1.ecr.dkr", "com.amazonaws.us-east-1.logs"}
    s3 = endpoints.pop("com.amazonaws.us-east-1.s3")
    assert s3["vpcEndpointType"] == "Gateway" and s3["routeTableIds"] == ["net-private-routes-id"]
    for name, endpoint in endpoints.items():
        assert endpoint["vpcEndpointType"] == "Interface" and endpoint["privateDnsEnabled"] is True, name
        assert endpoint["subnetIds"] == ["net-private-0-id", "net-private-1-id"], name
        assert endpoint["securityGroupIds"] == ["net-endpoints-sg-id"], name


def test_without_egress_there_is_no_way_out():
    run = vpc_graph(egress="none", interface_services=("ecr.api", "ecr.dkr", "logs", "sagemaker.runtime"))
    for type_ in ("aws:ec2/natGateway:NatGateway", "aws:ec2/internetGateway:InternetGateway", "aws:ec2/eip:Eip", ROUTE):
        assert run.of_type(type_) == [], type_
    assert sorted(r.name for r in run.of_type(SUBNET)) == ["net-private-0", "net-private-1"]
    assert "com.amazonaws.us-east-1.sagemaker.runtime" in {e.inputs["serviceName"] for e in run.of_type(ENDPOINT)}


def test_children_are_parented_and_named(net):
    component = net.one("llminfer:aws:SageMakerVpc")
    for resource in net.resources:
        if resource.custom:
            assert resource.parent == component.urn, resource.name
            if resource.type not in (ROUTE, "aws:ec2/routeTableAssociation:RouteTableAssociation"):  # untaggable
                assert resource.inputs["tags"] == {"owner": "o", "Name": resource.name}, resource.name


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"cidr_block": "10.40.0.1/16"}, "cidr_block", "not an IPv4 CIDR block"),
        ({"cidr_block": "10.40.0.0/24"}, "cidr_block", "between /16 and /22"),
        ({"cidr_block": "8.8.0.0/16"}, "cidr_block", "not a private range"),
        ({"egress": "igw"}, "egress", "'igw' is not one of: nat, none"),
        ({"interface_services": ("ecr.api", "s3")}, "interface_services", "'s3' is not one of"),
        ({"interface_services": ("logs", "logs")}, "interface_services", "twice"),
    ],
)
def test_args_refuse(changes, field, words):
    with pytest.raises(InvalidArgs, match=words) as err:
        SageMakerVpcArgs(region="us-east-1", **changes).validate()
    assert err.value.field == field


# --------------------------------------------------------------------------------------------- stack


@pytest.fixture(scope="module")
def private_stack():
    return run_stack("aws", {"sagemakerVpc": True})


def test_the_model_runs_in_the_private_subnets(private_stack):
    model = private_stack.one("aws:sagemaker/model:Model")
    assert model.inputs["vpcConfig"] == {"subnets": ["llm-vpc-private-0-id", "llm-vpc-private-1-id"],
                                         "securityGroupIds": ["llm-vpc-model-sg-id"]}
    policy = json.loads(private_stack.named("llm-role-policy").inputs["policy"])
    statements = {s["Sid"]: s for s in policy["Statement"]}
    assert "ec2:CreateNetworkInterface" in statements["AttachToVpc"]["Action"]
    assert statements["AttachToVpc"]["Resource"][0] == "arn:aws:ec2:us-east-1:123456789012:network-interface/*"
    assert statements["DescribeVpc"]["Resource"] == "*"


def test_the_private_stack_passes_the_policy(private_stack):
    nodes = [Node(r.type, r.name, {**r.inputs, **r.state}, r.urn) for r in private_stack.resources]
    assert check_graph(nodes, {r.urn: r.inputs for r in private_stack.resources}) == []


def test_off_by_default():
    run = run_stack("aws")
    assert not any(run.of_type(t) for t in EC2_TYPES)
    assert "vpcConfig" not in run.one("aws:sagemaker/model:Model").inputs
    policy = json.loads(run.named("llm-role-policy").inputs["policy"])
    assert not {"AttachToVpc", "DescribeVpc"} & {s["Sid"] for s in policy["Statement"]}


@pytest.mark.parametrize(
    ("overrides", "key", "words"),
    [
        ({"sagemakerVpc": True, "sagemakerVpcCidr": "10.40.0.0/24"}, "sagemakerVpcCidr", "between /16 and /22"),
        ({"sagemakerVpc": True, "sagemakerVpcEgress": "internet"}, "sagemakerVpcEgress", "not one of: nat, none"),
        ({"sagemakerVpc": "yes"}, "sagemakerVpc", "true or false"),
    ],
)
def test_bad_vpc_config_is_refused_before_anything_exists(overrides, key, words):
    err, run = refused_stack("aws", overrides)
    assert isinstance(err, ConfigError) and err.key == f"llm-inference:{key}" and words in str(err)
    assert not run.resources
