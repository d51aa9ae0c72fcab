"""LMI (DJL Serving) with the vLLM async handler, as the pinned image runs it, on this machine.

Written from deepjavalibrary/djl-serving at the 0.33.0-dlc branch, the source of the LMI v15 image the aws
stack deploys (`0.33.0-lmi15.0.0-cu128`):

- `wlm/src/main/java/ai/djl/serving/wlm/ModelInfo.java`: every non-empty `OPTION_<X>` environment variable
  becomes the property `option.<x>` (lower-cased when snake case; ENTRYPOINT -> entryPoint, ENGINE -> engine);
  `serving/.../ModelStore.java` takes `HF_MODEL_ID` as the model id; `engines/python/.../PyEnv.java` turns
  `TENSOR_PARALLEL_DEGREE=max` into the number of GPUs.
- `engines/python/setup/djl_python/properties_manager/vllm_rb_properties.py`: `VllmRbProperties` builds the
  engine arguments from a fixed base (model, tensor_parallel_size, pipeline_parallel_size, max_num_seqs =
  max_rolling_batch_size, dtype, revision, max_loras, enable_lora, trust_remote_code, cpu_offload_gb,
  use_v2_block_manager, quantization, device) plus every other property that is a field of vLLM's
  `EngineArgs` (the rest are dropped silently), rendered by `construct_vllm_args_list` as `--key=value`
  (`--key` alone for a true flag, nothing for false) and parsed by vLLM's own argument parser.
- `engines/python/setup/djl_python/lmi_vllm/vllm_async_service.py`: the served model name is
  `served_model_name or "lmi"`; a request without `model` gets the served name; `messages` -> chat
  completions, `prompt` -> completions, `inputs` -> the TGI schema; anything else, or a body the request
  model refuses, -> 424 "Input parsing failed: ...".
- `.../lmi_vllm/request_response_utils.py` + `djl_python/async_utils.py` + `engines/python/.../Request.java`:
  a stream is JSON lines (vLLM's `data: ` cut off, `[DONE]` becomes a last empty line); an error is HTTP
  `code` with the body `{"code": N, "error": "message"}`, which SageMaker hands the caller as ModelError.

The engine is the real vLLM: `engine_command()` runs `python -m local.lmi` in the vLLM venv, which maps the
container environment to engine arguments with vLLM's real `EngineArgs` and parser, exactly as LMI does, and
starts vLLM's OpenAI server on a local port. `LmiVllm` is the model-server side for the SageMaker-runtime
emulator: LMI's request handling and output format in front of that server.

What is substituted on this machine, and only here (`LocalSubstitution`): the model (a local directory for
`HF_MODEL_ID`), the GPU count behind `TENSOR_PARALLEL_DEGREE=max` (1: the CPU), the KV cache size, and the
two base arguments LMI v15 sets for vLLM 0.8.4 that the local vLLM no longer has (`device`,
`use_v2_block_manager`), which are dropped with a log line, as are base values of None (vLLM's defaults).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_SERVED_NAME = "lmi"
_SNAKE_CASE = re.compile(r"^[A-Z0-9_]+$")  # ModelInfo.SNAKE_CASE
# Fields of LMI's Properties/VllmRbProperties: consumed by LMI, never passed through as engine arguments.
_LMI_FIELDS = frozenset({
    "model_id_or_path", "model_dir", "rolling_batch", "tensor_parallel_degree", "cluster_size",
    "trust_remote_code", "enable_streaming", "batch_size", "max_rolling_batch_size", "dtype", "revision",
    "output_formatter", "input_formatter", "waiting_steps", "mpi_mode", "tgi_compat", "bedrock_compat",
    "enable_lora", "draft_model_id", "spec_length", "engine", "pipeline_parallel_degree", "quantize",
    "quantization", "max_rolling_batch_prefill_tokens", "max_num_batched_tokens", "cpu_offload_gb_per_gpu",
    "cpu_offload_gb", "max_loras", "task", "long_lora_scaling_factors", "use_v2_block_manager",
    "enable_auto_tool_choice", "tool_call_parser", "enable_reasoning", "reasoning_parser", "device",
    "preloaded_model", "override_neuron_config", "chat_template", "chat_template_content_format",
})  # fmt: skip
# VllmRbProperties.DTYPE_MAPPER
_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
           "bfloat16": "bfloat16", "bf16": "bfloat16", "auto": "auto"}
# LMI properties that are options of vLLM's OpenAI serving layer, not of the engine.
_SERVING_OPTIONS = ("chat_template", "chat_template_content_format", "enable_auto_tool_choice", "tool_call_parser")


class LmiConfigError(ValueError):
    """LMI would refuse this container environment at start-up."""


def lmi_properties(environment: Mapping[str, str]) -> dict[str, str]:
    """The model properties LMI reads from the container environment.

    `HF_MODEL_ID` (with `HF_REVISION`, `HF_TASK`) is written into the model's serving.properties, which is
    loaded first (ModelStore.java); the environment's `OPTION_*` only fill what is still absent
    (ModelInfo.java, `putIfAbsent`), so `HF_MODEL_ID` wins over `OPTION_MODEL_ID`.
    """
    properties: dict[str, str] = {}
    if environment.get("HF_MODEL_ID"):
        properties["model_id"] = environment["HF_MODEL_ID"]
        for variable, name in (("HF_REVISION", "revision"), ("HF_TASK", "task")):
            if environment.get(variable):
                properties[name] = environment[variable]
    for key, value in environment.items():
        if not value:
            continue
        if key.startswith("OPTION_"):
            name = key[len("OPTION_"):]
            if _SNAKE_CASE.match(name):
                name = name.lower()
            if name == "entrypoint":
                name = "entryPoint"
            properties.setdefault(name, value)
    for variable, name in (("TENSOR_PARALLEL_DEGREE", "tensor_parallel_degree"),
                           ("PIPELINE_PARALLEL_DEGREE", "pipeline_parallel_degree")):
        if environment.get(variable):
            properties.setdefault(name, environment[variable])
    return properties


def engine_arguments(properties: Mapping[str, str], engine_fields: Iterable[str], *, gpu_count: int,
                     log=print) -> dict[str, Any]:
    """`VllmRbProperties.generate_vllm_engine_arg_dict` over `properties`; `engine_fields` are the names of
    the local vLLM's EngineArgs fields."""
    fields = set(engine_fields)
    model = properties.get("model_id") or properties.get("model_dir")
    if not model:
        raise LmiConfigError("no model: set HF_MODEL_ID (or OPTION_MODEL_ID)")
    degree = properties.get("tensor_parallel_degree", "1")
    tensor_parallel = gpu_count if degree == "max" else int(degree)
    extras = {k: v for k, v in properties.items() if k not in _LMI_FIELDS and k != "model_id" and k in fields}
    # handle_lmi_vllm_config_conflicts compares LMI's parsed int with the environment's string, so any value
    # of the vLLM name refuses to start, equal or not: refused here too.
    for lmi_name, vllm_name in (("TENSOR_PARALLEL_DEGREE", "tensor_parallel_size"),
                                ("pipeline_parallel_degree", "pipeline_parallel_size"),
                                ("OPTION_MAX_ROLLING_BATCH_SIZE", "max_num_seqs")):
        if vllm_name in extras:
            raise LmiConfigError(f"OPTION_{vllm_name.upper()} is set: LMI refuses it at start-up; use {lmi_name} instead")
    batch = properties.get("max_rolling_batch_size", "32")
    pipeline = int(properties.get("pipeline_parallel_degree", "1"))
    if pipeline != 1:
        raise LmiConfigError(f"pipeline_parallel_degree={pipeline}: LMI's vLLM handler supports only 1")
    dtype = properties.get("dtype", "auto")
    if dtype not in _DTYPES:
        raise LmiConfigError(f"OPTION_DTYPE={dtype!r} is not one of LMI's dtypes {sorted(_DTYPES)}")
    base: dict[str, Any] = {
        "model": model,
        "tensor_parallel_size": tensor_parallel,
        "pipeline_parallel_size": pipeline,
        "max_num_seqs": int(batch),
        "dtype": _DTYPES[dtype],
        "revision": properties.get("revision"),
        "max_loras": int(properties.get("max_loras", "4")),
        "enable_lora": properties.get("enable_lora", "false"),
        "trust_remote_code": properties.get("trust_remote_code", "false"),
        "cpu_offload_gb": properties.get("cpu_offload_gb_per_gpu", properties.get("cpu_offload_gb", "0")),
        "use_v2_block_manager": properties.get("use_v2_block_manager", "true"),
        "quantization": properties.get("quantize", properties.get("quantization")),
        "device": properties.get("device", "auto"),
    }
    if properties.get("max_rolling_batch_prefill_tokens") or properties.get("max_num_batched_tokens"):
        base["max_num_batched_tokens"] = properties.get("max_rolling_batch_prefill_tokens") or properties["max_num_batched_tokens"]
    for key in [k for k, v in base.items() if v is None or k not in fields]:
        log(f"lmi: not passing {key}={base[key]!r} (vLLM's default, or not an engine argument of this vLLM)")
        del base[key]
    return {**base, **extras}


def argument_list(engine_args: Mapping[str, Any], store_boolean: Iterable[str] = ()) -> list[str]:
    """`construct_vllm_args_list`: `--key=value`, a true flag as `--key`, a false one left out."""
    store_boolean = set(store_boolean)
    argv = []
    for key, value in engine_args.items():
        if str(value).lower() in {"true", "false"} and key not in store_boolean:
            if str(value).lower() == "true":
                argv.append(f"--{key}")
        else:
            argv.append(f"--{key}={value}")
    return argv


def serving_arguments(properties: Mapping[str, str]) -> list[str]:
    """The LMI properties LMI hands OpenAIServingChat, as the equivalent flags of vLLM's OpenAI server."""
    argv = []
    for key in _SERVING_OPTIONS:
        value = properties.get(key)
        if value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if str(value).lower() in {"true", "false"}:
            argv += [flag] if str(value).lower() == "true" else []
        else:
            argv += [flag, value]
    return argv


def served_names(properties: Mapping[str, str]) -> list[str]:
    """vllm_async_service: `served_model_name or "lmi"`. LMI passes `--served_model_name=<value>` as one
    argument, so the value is one name, commas and all."""
    name = properties.get("served_model_name")
    return [name] if name else [DEFAULT_SERVED_NAME]


@dataclass(frozen=True)
class LocalSubstitution:
    """Everything that differs from the cloud on this machine, in one place."""

    model_dir: Path
    host: str = "127.0.0.1"
    port: int = 8000
    gpu_count: int = 1
    kv_cache_gib: int = 1

    def environment(self, container_environment: Mapping[str, str]) -> dict[str, str]:
        env = dict(container_environment)
        env["HF_MODEL_ID"] = str(self.model_dir)
        return env

    def engine_environment(self) -> dict[str, str]:
        """What every local vLLM gets on top of the deployment's environment: the KV cache size, no telemetry."""
        return {"VLLM_CPU_KVCACHE_SPACE": str(self.kv_cache_gib), "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}


def inherited_environment() -> dict[str, str]:
    """This process's environment less what would change the engine: a developer's VLLM_* (VLLM_API_KEY would
    lock the engine), HF_* and OPTION_* settings are not the deployment's."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "HF_", "OPTION_"))}


def engine_command(python: Path, container_environment: Mapping[str, str], local: LocalSubstitution) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that start vLLM as LMI would, for `python -m local.lmi` in the vLLM venv."""
    env = {
        **inherited_environment(),
        **local.environment(container_environment),
        "LMI_LOCAL_HOST": local.host,
        "LMI_LOCAL_PORT": str(local.port),
        "LMI_LOCAL_GPU_COUNT": str(local.gpu_count),
        **local.engine_environment(),
    }
    return [str(python), "-m", "local.lmi"], env


def main() -> None:  # pragma: no cover - runs in the vLLM venv, exercised by the real-engine tests
    """In the vLLM venv: map the container environment to engine args with vLLM's own classes, then serve."""
    import runpy

    from vllm import AsyncEngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = AsyncEngineArgs.add_cli_args(FlexibleArgumentParser())
    store_boolean = {a.dest for a in parser._actions if type(a).__name__ == "StoreBoolean"}
    properties = lmi_properties(os.environ)
    args = engine_arguments(properties, AsyncEngineArgs.__dataclass_fields__, gpu_count=int(os.environ["LMI_LOCAL_GPU_COUNT"]),
                            log=lambda m: print(m, file=sys.stderr))
    argv = argument_list(args, store_boolean)
    if "served_model_name" not in args:
        argv.append(f"--served-model-name={DEFAULT_SERVED_NAME}")
    argv += serving_arguments(properties)
    argv += ["--host", os.environ["LMI_LOCAL_HOST"], "--port", os.environ["LMI_LOCAL_PORT"]]
    print("lmi: vLLM engine arguments: " + json.dumps(argv), file=sys.stderr, flush=True)
    sys.argv = ["vllm.entrypoints.openai.api_server", *argv]
    runpy.run_module("vllm.entrypoints.openai.api_server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
