"""The CrossGuard pack serves exactly policy.RULES, as `pulumi preview --policy-pack policy` drives it.

The end-to-end test starts the pack the way the Pulumi CLI does (`python -m pulumi.policy <engine>
policy`, reading the gRPC port from its first line) and calls it as the engine would.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2, struct_pb2
from pulumi.runtime import proto
from pulumi_policy import ResourceValidationPolicy, StackValidationPolicy
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE

from policy import RULES
from policy.pack import PACK_NAME, policies

ROOT = Path(__file__).resolve().parents[2]
TAGS = {"project": "llm-inference", "stack": "aws", "owner": "platform-team"}


def test_one_policy_per_rule_and_per_graph_check():
    built = policies()
    names = [p.name for p in built]
    assert len(names) == len(set(names))
    assert {p.name for p in built if isinstance(p, ResourceValidationPolicy)} == {r.name for r in RULES}
    assert {p.name for p in built if isinstance(p, StackValidationPolicy)} == {
        f"{r.name}-graph" for r in RULES if r.graph_checks
    }


def struct(value: dict) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(value)
    return message


@pytest.fixture(scope="module")
def pack():
    """The pack process and a stub talking to it, as the engine starts and calls it."""
    process = subprocess.Popen(
        [sys.executable, "-u", "-m", "pulumi.policy", "127.0.0.1:1", "policy"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        port = process.stdout.readline().strip()
        assert port.isdigit(), f"pack did not start: {port!r} {process.stderr.read() if process.poll() is not None else ''}"
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        yield proto.AnalyzerStub(channel)
        channel.close()
    finally:
        process.terminate()
        process.wait(timeout=10)


def analyze(stub, type_: str, props: dict) -> list:
    request = proto.AnalyzeRequest(type=type_, properties=struct(props), urn=f"urn:pulumi:aws::llm-inference::{type_}::r", name="r")
    return list(stub.Analyze(request).diagnostics)


def test_pack_lists_the_rules(pack):
    info = pack.GetAnalyzerInfo(empty_pb2.Empty())
    assert info.name == PACK_NAME
    assert {p.name for p in info.policies} == {p.name for p in policies()}
    assert all(p.enforcementLevel == proto.MANDATORY for p in info.policies)
    capacity = next(p for p in info.policies if p.name == "gpu-capacity-max")
    assert "ceiling" in capacity.configSchema.properties


def test_pack_reports_violations_and_passes_good_resources(pack):
    bad = analyze(pack, "aws:cloudwatch/logGroup:LogGroup", {"name": "/aws/lambda/x"})
    assert sorted(d.policyName for d in bad) == ["log-retention", "required-tags"]
    assert all(d.enforcementLevel == proto.MANDATORY for d in bad)
    assert analyze(pack, "aws:cloudwatch/logGroup:LogGroup", {"retentionInDays": 30, "tags": TAGS}) == []


def test_values_unknown_during_preview_are_advisory(pack):
    found = analyze(pack, "aws:cloudwatch/logGroup:LogGroup", {"retentionInDays": 30, "tags": UNKNOWN_STRING_VALUE})
    assert [d.policyName for d in found] == ["required-tags"]
    assert found[0].enforcementLevel == proto.ADVISORY and "during preview" in found[0].message


def test_pack_runs_graph_checks(pack):
    function = proto.AnalyzerResource(type="aws:lambda/function:Function", name="gateway",
                                      urn="urn:pulumi:aws::llm-inference::aws:lambda/function:Function::gateway",
                                      properties=struct({"name": "gateway-fn", "tags": TAGS}))
    found = pack.AnalyzeStack(proto.AnalyzeStackRequest(resources=[function])).diagnostics
    assert [d.policyName for d in found] == ["log-retention-graph"]
    assert found[0].urn == function.urn and "/aws/lambda/gateway-fn" in found[0].message


def test_pack_config_raises_the_ceiling(pack):
    target = {"minCapacity": 1, "maxCapacity": 40, "tags": TAGS}
    assert [d.policyName for d in analyze(pack, "aws:appautoscaling/target:Target", target)] == ["gpu-capacity-max"]
    config = proto.PolicyConfig(enforcementLevel=proto.MANDATORY, properties=struct({"ceiling": 64}))
    pack.Configure(proto.ConfigureAnalyzerRequest(policyConfig={"gpu-capacity-max": config}))
    assert analyze(pack, "aws:appautoscaling/target:Target", target) == []


def test_pack_judges_a_function_url_with_its_function(pack):
    def resource(type_: str, name: str, props: dict) -> proto.AnalyzerResource:
        return proto.AnalyzerResource(type=type_, name=name, urn=f"urn:pulumi:aws::llm-inference::{type_}::{name}",
                                      properties=struct(props))

    def access_findings(variables: dict) -> list:
        function = resource("aws:lambda/function:Function", "gateway",
                            {"name": "gateway-fn", "tags": TAGS, "environment": {"variables": variables}})
        url = resource("aws:lambda/functionUrl:FunctionUrl", "gateway-url",
                       {"functionName": "gateway-fn", "authorizationType": "NONE"})
        found = pack.AnalyzeStack(proto.AnalyzeStackRequest(resources=[function, url])).diagnostics
        return [d for d in found if d.policyName == "public-entry-auth-graph"]

    checks_key = {"GATEWAY_API_KEY_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:k"}  # pragma: allowlist secret (an ARN)
    assert access_findings(checks_key) == []
    (finding,) = access_findings({})
    assert finding.urn.endswith("::gateway-url") and "AWS_IAM" in finding.message
