"""The real engine in the loop: vLLM's CPU build started from what each stack's program renders.

Every engine here is started from the stack's own resource graph (`stacks/rendered.py` runs the real
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

from local.sagemaker_runtime import LmiVllm, SageMakerRuntimeEmulator
from local.vllm_engine import VllmServer
from stacks.rendered import StackRun, run_stack
from tests.conftest import RunningGateway, serve

LOGS = Path(os.environ.get("LLM_INFERENCE_TEST_LOGS", "/tmp/llm-inference-test-logs"))


@pytest.fixture(scope="session")
def aws_graph() -> StackRun:
    return run_stack("aws")


def lmi_environment(graph: StackRun) -> dict[str, str]:
    return dict(graph.one("aws:sagemaker/model:Model").inputs["primaryContainer"]["environment"])


def gateway_lambda_environment(graph: StackRun) -> dict[str, str]:
    """The gateway function's environment variables, as the stack sets them."""
    functions = [f for f in graph.of_type("aws:lambda/function:Function")
                 if "GATEWAY_ENDPOINT_NAME" in ((f.inputs.get("environment") or {}).get("variables") or {})]
    assert len(functions) == 1, [f.name for f in functions]
    return dict(functions[0].inputs["environment"]["variables"])


@pytest.fixture(scope="session")
def aws_engine(aws_graph) -> Iterator[VllmServer]:
    """vLLM started as the LMI image starts it from the aws stack's Model environment."""
    with VllmServer.from_lmi_environment(lmi_environment(aws_graph), LOGS / "vllm-aws.log") as server:
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


@pytest.fixture(scope="session")
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
