"""Run a stack's real program under Pulumi mocks and hand back its whole resource graph.

What `pulumi up` would send the providers, without a cloud: the tests assert on it, and the local harness
starts the engine from it (the SageMaker Model's environment, the GKE pod spec, the Azure VM's cloud-init),
so what runs here is what the stack deploys, never a second copy. `tests/pulumi_harness.py` re-exports it.

The program runs for real (config parsing, validation, component code, provider SDK input types);
only the engine and the providers are replaced: `GraphMocks.new_resource` echoes a resource's
inputs as its state and adds the few outputs the cloud would compute (ids, ARNs, IPs), so
downstream `apply`s see realistic values. Each run gets its own event loop and fresh runtime
settings, and the outputs come back resolved, so a test asserts on plain values and every
assertion runs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime.settings import SETTINGS, reset_options
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

ROOT = Path(__file__).resolve().parent.parent
PROJECT = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["name"]
ACCOUNT = "123456789012"
DUMMY_SECRET = "dummy-secret-value"  # pragma: allowlist secret (test fixture)


@dataclass
class Resource:
    type: str
    name: str
    inputs: dict[str, Any]
    parent: str
    custom: bool
    urn: str = ""
    state: dict[str, Any] = field(default_factory=dict)
    # Input paths ("primaryContainer", "environment.HF_TOKEN") whose value was a Pulumi secret; the
    # values in `inputs` are unwrapped.
    secret_paths: set[str] = field(default_factory=set)
    # URNs this registration waited for: its inputs' resources and explicit depends_on.
    dependencies: list[str] = field(default_factory=list)


@dataclass
class StackRun:
    stack: str
    config: dict[str, str]
    outputs: dict[str, Any]
    secret_outputs: set[str]
    resources: list[Resource]

    def of_type(self, type_: str) -> list[Resource]:
        return [r for r in self.resources if r.type == type_]

    def one(self, type_: str) -> Resource:
        found = self.of_type(type_)
        assert len(found) == 1, f"expected one {type_}, found {[r.name for r in found]}"
        return found[0]

    def named(self, name: str) -> Resource:
        found = [r for r in self.resources if r.name == name]
        assert len(found) == 1, f"expected one resource named {name}, found {len(found)}"
        return found[0]

    def type_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.resources:
            counts[r.type] = counts.get(r.type, 0) + 1
        return dict(sorted(counts.items()))

    def children_of(self, parent: Resource) -> list[Resource]:
        return [r for r in self.resources if r.parent == parent.urn]


def _aws_arn(args: pulumi_mocks.MockResourceArgs, name: str) -> str:
    # aws:sagemaker/endpoint:Endpoint -> service "sagemaker", kind "endpoint"
    module = args.typ.split(":")[1].split("/")[0]
    kind = args.typ.split(":")[-1].lower()
    return f"arn:aws:{module}:us-east-1:{ACCOUNT}:{kind}/{name}"


def _aws_state(args: pulumi_mocks.MockResourceArgs, name: str) -> dict[str, Any]:
    state = {"arn": _aws_arn(args, name), "name": name}
    if args.typ == "aws:lambda/function:Function":
        arn = state["arn"]
        state["invokeArn"] = f"arn:aws:apigateway:us-east-1:lambda:path/2015-03-31/functions/{arn}/invocations"
        state["responseStreamingInvokeArn"] = (
            f"arn:aws:apigateway:us-east-1:lambda:path/2021-11-15/functions/{arn}/response-streaming-invocations"
        )
    if args.typ == "aws:lambda/functionUrl:FunctionUrl":
        state["functionUrl"] = f"https://{name}.lambda-url.us-east-1.on.aws/"
    if args.typ == "aws:apigateway/restApi:RestApi":
        state["rootResourceId"] = "rootres"
        state["executionArn"] = f"arn:aws:execute-api:us-east-1:{ACCOUNT}:{name}"
    if args.typ == "aws:apigateway/stage:Stage":
        # The stage's ARN as API Gateway forms it (what WAF's AssociateWebACL takes), not the generic one.
        state["arn"] = f"arn:aws:apigateway:us-east-1::/restapis/{args.inputs.get('restApi')}/stages/{args.inputs.get('stageName')}"
        state["invokeUrl"] = f"https://{name}.execute-api.us-east-1.amazonaws.com/{args.inputs.get('stageName', 'prod')}"
    if args.typ == "aws:kms/key:Key":
        state["keyId"] = f"{name}-key-id"
        state["arn"] = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/{state['keyId']}"
    if args.typ == "aws:apigateway/apiKey:ApiKey":
        state["value"] = args.inputs.get("value") or "mock-api-key-value-0123456789"
    if args.typ == "aws:s3/bucket:Bucket":
        # Pulumi auto-names a bucket: its resource name and a random suffix; the bucket's id is that name.
        bucket = args.inputs.get("bucket") or f"{args.name}-0a1b2c3"
        state.update(bucket=bucket, arn=f"arn:aws:s3:::{bucket}", bucketDomainName=f"{bucket}.s3.amazonaws.com",
                     bucketRegionalDomainName=f"{bucket}.s3.us-east-1.amazonaws.com")
    if args.typ == "aws:cloudfront/distribution:Distribution":
        state.update(domainName="d111111abcdef8.cloudfront.net", hostedZoneId="Z2FDTNDATAQYW2",
                     arn=f"arn:aws:cloudfront::{ACCOUNT}:distribution/EDFDVBD6EXAMPLE")
    return state


# The input that names each azure-native resource (its `name` output), where it is not `name`.
_AZURE_NAME_INPUTS = {
    "azure-native:resources:ResourceGroup": "resourceGroupName",
    "azure-native:keyvault:Vault": "vaultName",
    "azure-native:keyvault:Secret": "secretName",  # pragma: allowlist secret (property name)
    "azure-native:managedidentity:UserAssignedIdentity": "resourceName",
    "azure-native:network:NetworkSecurityGroup": "networkSecurityGroupName",
    "azure-native:network:VirtualNetwork": "virtualNetworkName",
    "azure-native:network:Subnet": "subnetName",
    "azure-native:network:PublicIPAddress": "publicIpAddressName",
    "azure-native:network:NetworkInterface": "networkInterfaceName",
    "azure-native:compute:VirtualMachine": "vmName",
    "azure-native:compute:VirtualMachineExtension": "vmExtensionName",
    "azure-native:consumption:Budget": "budgetName",
}


def _azure_state(args: pulumi_mocks.MockResourceArgs, name: str) -> dict[str, Any]:
    name = args.inputs.get(_AZURE_NAME_INPUTS.get(args.typ, "name")) or name
    group = args.inputs.get("resourceGroupName") or "rg"
    state: dict[str, Any] = {
        "id": f"/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/{group}/providers/{args.typ}/{name}",
        "name": name,
    }
    if args.typ == "azure-native:network:PublicIPAddress":
        state["ipAddress"] = "203.0.113.30"
        label = (args.inputs.get("dnsSettings") or {}).get("domainNameLabel")
        if label:
            state["dnsSettings"] = {"fqdn": f"{label}.{args.inputs.get('location', 'eastus')}.cloudapp.azure.com"}
    if args.typ == "azure-native:managedidentity:UserAssignedIdentity":
        state["principalId"] = "44444444-4444-4444-4444-444444444444"
        state["clientId"] = "55555555-5555-5555-5555-555555555555"
        state["tenantId"] = "33333333-3333-3333-3333-333333333333"
    if args.typ == "azure-native:keyvault:Vault":
        state["properties"] = {"vaultUri": f"https://{name}.vault.azure.net/"}
    if args.typ == "azure-native:compute:VirtualMachine" and args.inputs.get("identity"):
        # Given as a list of identity ids, returned as a map id -> identity.
        ids = args.inputs["identity"].get("userAssignedIdentities") or []
        state["identity"] = {"userAssignedIdentities": {i: {"principalId": "44444444-4444-4444-4444-444444444444"} for i in ids}}
    return state


# Outputs the cloud computes, by provider prefix; components may rely on them.
def _computed_state(args: pulumi_mocks.MockResourceArgs, name: str) -> dict[str, Any]:
    if args.typ.startswith("aws:"):
        return _aws_state(args, name)
    if args.typ.startswith("azure-native:"):
        return _azure_state(args, name)
    if args.typ.startswith("gcp:"):
        state: dict[str, Any] = {"name": name, "selfLink": f"https://www.googleapis.com/mock/{name}"}
        if args.typ == "gcp:container/cluster:Cluster":
            state["endpoint"] = "10.0.0.2"
            state["masterAuth"] = {"clusterCaCertificate": "bW9jay1jYQ=="}
        if args.typ == "gcp:compute/address:Address":
            state["address"] = "203.0.113.10"
        if args.typ == "gcp:serviceaccount/account:Account":
            state["email"] = f"{args.inputs.get('accountId', name)}@mock-project.iam.gserviceaccount.com"
        return state
    if args.typ.startswith("random:"):
        # RandomPassword/RandomString: a value of the asked length, as the provider would generate.
        length = int(args.inputs.get("length") or 16)
        return {"result": ("mockrandom0123456789" * (length // 20 + 1))[:length]}
    if args.typ.startswith("kubernetes:core/v1:Service"):
        return {"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.20"}]}}}
    return {}


class GraphMocks(pulumi.runtime.Mocks):
    def __init__(self, invokes: Mapping[str, Callable[[dict], dict]] | None = None):
        self.invokes = dict(DEFAULT_INVOKES)
        self.invokes.update(invokes or {})

    def new_resource(self, args: pulumi_mocks.MockResourceArgs):
        name = args.inputs.get("name") or args.name
        state = dict(args.inputs)
        for key, value in _computed_state(args, name).items():
            if isinstance(value, dict) and isinstance(state.get(key), dict):
                state[key] = {**state[key], **value}  # the cloud's view of fields inside an input object
            else:
                state.setdefault(key, value)
        # Azure resources are known by their ARM id, the one their `id` output and references carry.
        resource_id = state["id"] if args.typ.startswith("azure-native:") else f"{args.name}-id"
        if args.typ == "aws:s3/bucket:Bucket":
            resource_id = state["bucket"]
        return [resource_id, state]

    def call(self, args: pulumi_mocks.MockCallArgs):
        handler = self.invokes.get(args.token)
        if handler is None:
            raise AssertionError(f"no mock for invoke {args.token}: add one to DEFAULT_INVOKES in stacks/rendered.py")
        return handler(args.args)


DEFAULT_INVOKES: dict[str, Callable[[dict], dict]] = {
    "aws:index/getCallerIdentity:getCallerIdentity": lambda a: {
        "accountId": ACCOUNT,
        "arn": f"arn:aws:iam::{ACCOUNT}:user/test",
        "userId": "AIDTEST",
        "id": ACCOUNT,
    },
    "aws:index/getRegion:getRegion": lambda a: {"name": "us-east-1", "region": "us-east-1", "id": "us-east-1"},
    "aws:index/getPartition:getPartition": lambda a: {"partition": "aws", "dnsSuffix": "amazonaws.com", "id": "aws"},
    "aws:index/getAvailabilityZones:getAvailabilityZones": lambda a: {
        "names": ["us-east-1a", "us-east-1b", "us-east-1c"],
        "zoneIds": ["use1-az1", "use1-az2", "use1-az4"],
        "id": "us-east-1",
    },
    "azure-native:authorization:getClientConfig": lambda a: {
        "clientId": "11111111-1111-1111-1111-111111111111",
        "objectId": "22222222-2222-2222-2222-222222222222",
        "subscriptionId": "00000000-0000-0000-0000-000000000000",
        "tenantId": "33333333-3333-3333-3333-333333333333",
    },
    "gcp:organizations/getProject:getProject": lambda a: {"number": "123456789", "projectId": "mock-project", "id": "mock-project"},
    "gcp:organizations/getClientConfig:getClientConfig": lambda a: {"project": "mock-project", "region": "us-central1", "accessToken": "x"},
}


class RecordingMonitor(pulumi_mocks.MockMonitor):
    """The SDK's mock monitor, also keeping each registration's parent and inputs."""

    def __init__(self, mocks: GraphMocks):
        super().__init__(mocks)
        self.recorded: list[Resource] = []

    def RegisterResource(self, request):
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            from pulumi.runtime import rpc

            secret_paths: set[str] = set()
            inputs = _unwrap_secrets(rpc, _sync_await(_deserialize(rpc, request.object)), "", secret_paths)
            self.recorded.append(
                Resource(
                    type=request.type,
                    name=request.name,
                    inputs=inputs,
                    parent=request.parent,
                    custom=bool(request.custom),
                    urn=response.urn,
                    secret_paths=secret_paths,
                    dependencies=list(request.dependencies),
                )
            )
        return response


async def _deserialize(rpc, obj):
    return rpc.deserialize_properties(obj)


def _unwrap_secrets(rpc, value: Any, path: str, secret_paths: set[str]) -> Any:
    if rpc.is_rpc_secret(value):
        secret_paths.add(path)
        return _unwrap_secrets(rpc, rpc.unwrap_rpc_secret(value), path, secret_paths)
    if isinstance(value, dict):
        return {k: _unwrap_secrets(rpc, v, f"{path}.{k}" if path else k, secret_paths) for k, v in value.items()}
    if isinstance(value, list):
        return [_unwrap_secrets(rpc, v, f"{path}[{i}]", secret_paths) for i, v in enumerate(value)]
    return value


# The example stack files hold placeholders the stacks refuse (stacks/config.py: a project id that is not
# the user's, documentation address ranges); mock runs put these stand-ins in their place, as a user would.
# 198.18.0.0/15 is the benchmarking range (RFC 2544): not a documentation range, and no one's network.
EXAMPLE_STAND_INS: dict[str, dict[str, Any]] = {
    "azure": {"llm-inference:apiSourceCidrs": ["198.18.0.0/24"]},
    "gcp": {"gcp:project": "mock-project", "llm-inference:gkeServiceSourceRanges": ["198.18.0.0/24"]},
}


def stack_config(
    stack: str, overrides: Mapping[str, Any] | None = None, *, stand_ins: bool = True
) -> tuple[dict[str, str], list[str]]:
    """Pulumi.yaml defaults, then Pulumi.<stack>.yaml, then its EXAMPLE_STAND_INS (unless `stand_ins` is
    False: the example as shipped), then overrides (None removes a key).

    Secure values are replaced by a dummy and marked secret, as the CLI would decrypt them.
    Keys may be given short (`maxInstances`) for the project namespace.
    """
    project_file = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    values: dict[str, str] = {}
    secret_keys: list[str] = []
    for key, spec in (project_file.get("config") or {}).items():
        if isinstance(spec, dict) and "default" in spec:
            values[f"{PROJECT}:{key}"] = _as_config_string(spec["default"])
    stack_file = ROOT / f"Pulumi.{stack}.yaml"
    if stack_file.exists():
        for key, value in ((yaml.safe_load(stack_file.read_text()) or {}).get("config") or {}).items():
            if isinstance(value, dict) and "secure" in value:
                values[key] = DUMMY_SECRET
                secret_keys.append(key)
            else:
                values[key] = _as_config_string(value)
    if stand_ins:
        values.update({key: _as_config_string(value) for key, value in EXAMPLE_STAND_INS.get(stack, {}).items()})
    for key, value in (overrides or {}).items():
        full = key if ":" in key else f"{PROJECT}:{key}"
        if value is None:
            values.pop(full, None)
        elif isinstance(value, Secret):
            values[full] = _as_config_string(value.value)
            secret_keys.append(full)
        else:
            values[full] = _as_config_string(value)
    return values, secret_keys


@dataclass(frozen=True)
class Secret:
    """Wrap an override value to set it as `pulumi config set --secret` would."""

    value: Any


def _as_config_string(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def run_program(
    program: Callable[[], Mapping[str, Any]],
    *,
    stack: str,
    config: Mapping[str, str] | None = None,
    secret_keys: list[str] | None = None,
    invokes: Mapping[str, Callable[[dict], dict]] | None = None,
) -> StackRun:
    """Run `program` (which returns the stack outputs) in a fresh mocked Pulumi runtime."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        reset_options(project=PROJECT, stack=stack, preview=False)
        mocks = GraphMocks(invokes)
        monitor = RecordingMonitor(mocks)
        pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=False, monitor=monitor)
        pulumi.runtime.set_all_config(dict(config or {}), list(secret_keys or []))
        SETTINGS.rpc_manager.clear()
        SETTINGS.outputs.clear()
        result: dict[str, Any] = {}

        def body():
            outputs = dict(program())
            result["outputs"] = _sync_await(pulumi.Output.from_input(outputs).future())
            result["secret"] = {
                name for name, value in outputs.items() if _sync_await(pulumi.Output.from_input(value).is_secret())
            }

        _sync_await(run_pulumi_func(body))
        for registration in monitor.recorded:
            stored = monitor.resources.get(registration.urn)
            if stored is not None:
                registration.state = stored.state
        return StackRun(
            stack=stack,
            config=dict(config or {}),
            outputs=result["outputs"],
            secret_outputs=result["secret"],
            resources=list(monitor.recorded),
        )
    finally:
        pulumi.runtime.set_all_config({}, [])
        loop.close()
        asyncio.set_event_loop(None)


def run_stack(stack: str, overrides: Mapping[str, Any] | None = None, **kwargs: Any) -> StackRun:
    """Run the project's real program for `stack` with its real stack file (plus overrides)."""
    from stacks import build

    config, secret_keys = stack_config(stack, overrides)
    return run_program(lambda: build(stack), stack=stack, config=config, secret_keys=secret_keys, **kwargs)


def refused_stack(stack: str, overrides: Mapping[str, Any] | None = None, *, stand_ins: bool = True):
    """Run `stack` expecting exactly one ConfigError; hand back the error and what was registered."""
    from stacks import build
    from stacks.config import ConfigError

    config, secret_keys = stack_config(stack, overrides, stand_ins=stand_ins)
    caught: list[ConfigError] = []

    def program():
        try:
            build(stack)
        except ConfigError as err:
            caught.append(err)
        return {}

    run = run_program(program, stack=stack, config=config, secret_keys=secret_keys)
    assert len(caught) == 1, caught
    return caught[0], run
