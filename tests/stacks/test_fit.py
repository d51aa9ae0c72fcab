"""The stacks' preview-time fit check (stacks/fit.py) over a real StackConfig."""

from __future__ import annotations

import pulumi
import pytest

from stacks.config import ConfigError, StackConfig
from stacks.fit import check_stack_fit

FP16_70B = "meta-llama/Llama-3.1-70B-Instruct"
AWQ_8B = "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4"


@pytest.fixture
def stack_config():
    """A real StackConfig over a given project config (what the stacks pass to check_stack_fit)."""

    def make(**values):
        defaults = {
            "modelId": AWQ_8B,
            "maxModelLen": "8192",
            "maxBatchSize": "64",
            "gpuMemoryUtilization": "0.9",
            "fitCheckModel": "",
            "fitCheckQuantization": "",
            "vllmQuantization": "",
            "sagemakerInstanceType": "ml.g5.2xlarge",
        }
        defaults.update(values)
        pulumi.runtime.set_all_config({f"llm-inference:{k}": str(v) for k, v in defaults.items()}, [])
        return StackConfig()

    yield make
    pulumi.runtime.set_all_config({}, [])


def test_stack_fit_check_names_the_config_key_and_the_fix(stack_config):
    with pytest.raises(ConfigError) as err:
        check_stack_fit(stack_config(modelId=FP16_70B), instance_key="sagemakerInstanceType")
    assert err.value.key == "llm-inference:modelId"
    message = str(err.value)
    assert "141.1 GB of weights" in message and "21.7 GB usable at gpuMemoryUtilization 0.9" in message
    assert "`pulumi config set llm-inference:sagemakerInstanceType ml.g5.48xlarge`" in message

    with pytest.raises(ConfigError) as err:
        check_stack_fit(stack_config(maxModelLen="131072"), instance_key="sagemakerInstanceType")
    assert err.value.key == "llm-inference:maxModelLen" and err.value.value == 131072
    assert "lower llm-inference:maxModelLen to 112,560 or less" in str(err.value)


def test_stack_fit_check_overrides_and_off_switch(stack_config):
    assert check_stack_fit(stack_config(), instance_key="sagemakerInstanceType").fits
    custom = dict(modelId="my-org/big-custom")
    assert check_stack_fit(stack_config(**custom), instance_key="sagemakerInstanceType") is None
    with pytest.raises(ConfigError, match="llama-3.1-70b fp16 needs 141.1 GB"):
        check_stack_fit(stack_config(fitCheckModel="llama-3.1-70b", **custom), instance_key="sagemakerInstanceType")
    off = stack_config(modelId=FP16_70B, fitCheckModel="off")
    assert check_stack_fit(off, instance_key="sagemakerInstanceType") is None
    with pytest.raises(ConfigError, match="fitCheckModel='llama-9b': is not a catalog model"):
        check_stack_fit(stack_config(fitCheckModel="llama-9b"), instance_key="sagemakerInstanceType")
    with pytest.raises(ConfigError, match="fitCheckQuantization='int3'"):
        check_stack_fit(stack_config(fitCheckQuantization="int3"), instance_key="sagemakerInstanceType")


def test_stack_fit_check_reads_the_engine_quantization(stack_config):
    # Llama-3.1-8B in 16 bits leaves an L4 KV room for ~33k tokens, not 64k; vLLM's on-load fp8 halves
    # the linear weights and makes room.
    cfg = dict(modelId="meta-llama/Llama-3.1-8B-Instruct", maxModelLen="65536", gpuMachineType="g2-standard-8")
    with pytest.raises(ConfigError):
        check_stack_fit(stack_config(**cfg), instance_key="gpuMachineType", quantization_key="vllmQuantization")
    fits = check_stack_fit(
        stack_config(vllmQuantization="fp8", **cfg), instance_key="gpuMachineType", quantization_key="vllmQuantization"
    )
    assert fits is not None and fits.spec.quantization.name == "fp8"

