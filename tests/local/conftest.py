"""The real engine in the loop: vLLM's CPU build started from what each stack's program renders.

Engines are module-scoped, so one module's engines are stopped before the next module's start (each
vLLM holds about 2 GB). Every engine here is started from the stack's own resource graph (`stacks/rendered.py` runs the real
program under Pulumi mocks): the SageMaker Model's container environment, the GKE Deployment's vLLM
container, the Azure VM's cloud-init. Only `local.lmi.LocalSubstitution` differs (model directory, host and
port, GPU count, KV cache size). `make test` installs vLLM first (`make vllm`), so these never skip: a
machine without it fails with the command that installs it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from local.deployed import (
    FrontedVllm,
    aws_lmi_environment,
    azure_fronted,
    gateway_lambda_environment,
    gke_fronted,
)
from local.engine import free_port
from local.front import CaddyFront, with_ports
from local.sagemaker_runtime import LmiVllm, SageMakerRuntimeEmulator
from local.vllm_engine import VllmServer
from stacks.rendered import StackRun, run_stack
from tests.conftest import RunningGateway, serve

LOGS = Path(os.environ.get("LLM_INFERENCE_TEST_LOGS", "/tmp/llm-inference-test-logs"))


@pytest.fixture(scope="session")
def aws_graph() -> StackRun:
    return run_stack("aws")


@pytest.fixture(scope="module")
def aws_engine(aws_graph) -> Iterator[VllmServer]:
    """vLLM started as the LMI image starts it from the aws stack's Model environment."""
    with VllmServer.from_lmi_environment(aws_lmi_environment(aws_graph), LOGS / "vllm-aws.log") as server:
        yield server


@dataclass
class AwsPath:
    engine: VllmServer
    emulator: SageMakerRuntimeEmulator
    gateway: RunningGateway
    lambda_env: dict[str, str]

    @property
    def gateway_url(self) -> str:
        return self.gateway.url

    @property
    def records(self) -> list[dict[str, Any]]:
        return self.gateway.records

    @property
    def model_id(self) -> str:
        return self.lambda_env["GATEWAY_MODEL_ID"]


@pytest.fixture(scope="module")
def aws_path(aws_graph, aws_engine) -> Iterator[AwsPath]:
    """gateway app (the Lambda's, with the Lambda's environment) -> botocore -> emulator -> LMI -> vLLM."""
    from gateway.settings import Settings

    lambda_env = gateway_lambda_environment(aws_graph)
    endpoint = aws_graph.one("aws:sagemaker/endpoint:Endpoint").inputs["name"]
    assert lambda_env["GATEWAY_ENDPOINT_NAME"] == endpoint
    with SageMakerRuntimeEmulator({endpoint: LmiVllm(aws_engine.base_url + "/v1", aws_engine.served_name)}) as emulator:
        # The one substitution: the SageMaker runtime's URL (the Lambda reaches the regional one).
        gateway = serve(Settings.from_env({**lambda_env, "GATEWAY_SAGEMAKER_ENDPOINT_URL": emulator.endpoint_url}))
        try:
            yield AwsPath(aws_engine, emulator, gateway, lambda_env)
        finally:
            gateway.stop()


# --- GKE and Azure: vLLM behind the front, both as the stack renders them ---------------------------------

API_KEY = "test-key-" + "x" * 24  # pragma: allowlist secret (stands in for the Secret / Key Vault value)


@dataclass
class RunningFronted:
    deployed: FrontedVllm
    engine: VllmServer
    front: CaddyFront
    front_url: str  # http://127.0.0.1:PORT, the address clients reach
    metrics_url: str | None
    port_moves: dict[str, str]  # rendered address -> local address


def _fronted(deployed: FrontedVllm, name: str) -> Iterator[RunningFronted]:
    engine_port, front_port = free_port(), free_port()
    api_port = deployed.api_listen.rsplit(":", 1)[1]
    moves = {deployed.vllm_address: f"127.0.0.1:{engine_port}", deployed.api_listen: deployed.api_listen.replace(f":{api_port}", f":{front_port}")}
    metrics_port = None
    if deployed.metrics_listen:
        metrics_port = free_port()
        old = deployed.metrics_listen.rsplit(":", 1)[1]
        moves[deployed.metrics_listen] = deployed.metrics_listen.replace(f":{old}", f":{metrics_port}")
    with VllmServer.from_arguments(deployed.vllm_args, LOGS / f"vllm-{name}.log", environment=deployed.vllm_env,
                                   port=engine_port) as engine:
        with CaddyFront(with_ports(deployed.caddyfile, moves), LOGS / f"front-{name}") as front:
            front.wait_listening(front_port)
            if metrics_port:
                front.wait_listening(metrics_port)
            yield RunningFronted(deployed, engine, front, f"http://127.0.0.1:{front_port}",
                                 f"http://127.0.0.1:{metrics_port}" if metrics_port else None, moves)


@pytest.fixture(scope="session")
def gcp_graph() -> StackRun:
    return run_stack("gcp")


@pytest.fixture(scope="session")
def azure_graph() -> StackRun:
    from tests.ssh_keys import ed25519_public_key

    return run_stack("azure", {"sshPublicKey": ed25519_public_key()})


@pytest.fixture(scope="module")
def gke_fronted_engine(gcp_graph) -> Iterator[RunningFronted]:
    yield from _fronted(gke_fronted(gcp_graph, API_KEY), "gcp")


@pytest.fixture(scope="module")
def azure_fronted_engine(azure_graph) -> Iterator[RunningFronted]:
    yield from _fronted(azure_fronted(azure_graph, API_KEY), "azure")
