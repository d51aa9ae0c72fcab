"""LMI's environment -> engine arguments mapping and its model server's request routing, without an engine.

Expected values are literal, read off djl-serving 0.33.0-dlc (`ModelInfo.java`, `ModelStore.java`,
`vllm_rb_properties.py`, `vllm_async_service.py`); the real-engine tests run the same mapping against vLLM.
"""

from __future__ import annotations

import json

import pytest

from local.lmi import (
    LmiConfigError,
    argument_list,
    engine_arguments,
    lmi_properties,
    served_names,
    serving_arguments,
)
from local.sagemaker_runtime import LmiVllm, ServiceError
from stacks.rendered import run_stack

# A subset of vLLM's EngineArgs fields, enough for these cases.
FIELDS = {"model", "tensor_parallel_size", "pipeline_parallel_size", "max_num_seqs", "dtype", "revision",
          "max_loras", "enable_lora", "trust_remote_code", "cpu_offload_gb", "quantization", "max_model_len",
          "gpu_memory_utilization", "served_model_name", "enforce_eager", "max_num_batched_tokens"}


def args_for(env: dict[str, str], gpus: int = 1) -> list[str]:
    return argument_list(engine_arguments(lmi_properties(env), FIELDS, gpu_count=gpus, log=lambda _: None))


def test_the_aws_stacks_model_environment_maps_to_these_engine_arguments():
    env = run_stack("aws").one("aws:sagemaker/model:Model").inputs["primaryContainer"]["environment"]
    argv = args_for(env, gpus=4)
    # LMI's fixed base first, in its order; then the pass-through options, in the environment's order.
    assert argv[:7] == [
        "--model=hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4",
        "--tensor_parallel_size=4",  # TENSOR_PARALLEL_DEGREE=max: every GPU of the instance
        "--pipeline_parallel_size=1",
        "--max_num_seqs=64",  # OPTION_MAX_ROLLING_BATCH_SIZE
        "--dtype=auto",
        "--max_loras=4",
        "--cpu_offload_gb=0",
    ]
    assert sorted(argv[7:]) == [
        "--gpu_memory_utilization=0.9",
        "--max_model_len=8192",
        "--served_model_name=hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4",
    ]
    assert served_names(lmi_properties(env)) == ["hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4"]


def test_without_a_served_name_lmi_serves_lmi():
    assert served_names(lmi_properties({"HF_MODEL_ID": "org/m"})) == ["lmi"]
    assert served_names(lmi_properties({"HF_MODEL_ID": "org/m", "OPTION_SERVED_MODEL_NAME": "a,b"})) == ["a,b"]


def test_hf_model_id_wins_over_option_model_id():
    assert lmi_properties({"HF_MODEL_ID": "org/hub", "OPTION_MODEL_ID": "s3://bucket/x"})["model_id"] == "org/hub"
    assert lmi_properties({"OPTION_MODEL_ID": "s3://bucket/x"})["model_id"] == "s3://bucket/x"
    assert lmi_properties({"HF_MODEL_ID": "org/m", "HF_REVISION": "abc"})["revision"] == "abc"


def test_options_become_lower_case_properties_and_empty_ones_are_ignored():
    props = lmi_properties({"OPTION_MAX_MODEL_LEN": "4096", "OPTION_ENTRYPOINT": "x.y", "OPTION_DTYPE": "",
                            "OPTION_CamelCase": "1", "OTHER": "z"})
    assert props == {"max_model_len": "4096", "entryPoint": "x.y", "CamelCase": "1"}


def test_true_flags_stand_alone_false_ones_are_left_out_and_non_engine_options_dropped():
    argv = args_for({"HF_MODEL_ID": "m", "OPTION_ENFORCE_EAGER": "true", "OPTION_TRUST_REMOTE_CODE": "false",
                     "OPTION_NOT_AN_ENGINE_ARG": "1", "OPTION_ASYNC_MODE": "true"})
    assert "--enforce_eager" in argv
    assert not any("trust_remote_code" in a or "not_an_engine_arg" in a or "async_mode" in a for a in argv)


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"OPTION_MAX_NUM_SEQS": "32"}, "OPTION_MAX_NUM_SEQS is set"),  # even equal to the default 32
        ({"OPTION_TENSOR_PARALLEL_SIZE": "1"}, "OPTION_TENSOR_PARALLEL_SIZE is set"),
        ({"PIPELINE_PARALLEL_DEGREE": "2"}, "supports only 1"),
        ({"OPTION_DTYPE": "half"}, "not one of LMI's dtypes"),
        ({"TENSOR_PARALLEL_DEGREE": "max", "HF_MODEL_ID": ""}, "no model"),
    ],
)
def test_what_lmi_refuses_at_start_up_is_refused(env, needle):
    with pytest.raises(LmiConfigError, match=needle):
        args_for({"HF_MODEL_ID": "m", **env})


def test_dtype_aliases_and_batch_token_alias():
    argv = args_for({"HF_MODEL_ID": "m", "OPTION_DTYPE": "bf16", "OPTION_MAX_ROLLING_BATCH_PREFILL_TOKENS": "2048"})
    assert "--dtype=bfloat16" in argv and "--max_num_batched_tokens=2048" in argv


def test_serving_options_go_to_the_server_not_the_engine():
    props = lmi_properties({"OPTION_CHAT_TEMPLATE": "/t.jinja", "OPTION_ENABLE_AUTO_TOOL_CHOICE": "true",
                            "OPTION_TOOL_CALL_PARSER": "llama3_json"})
    assert serving_arguments(props) == ["--chat-template", "/t.jinja", "--enable-auto-tool-choice",
                                        "--tool-call-parser", "llama3_json"]


@pytest.mark.parametrize(
    ("body", "path", "model"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "/chat/completions", "served"),
        ({"messages": [], "model": "other"}, "/chat/completions", "other"),
        ({"prompt": "x"}, "/completions", "served"),
    ],
)
def test_lmi_routes_by_payload_and_fills_in_the_model(body, path, model):
    routed, payload = LmiVllm("http://127.0.0.1:9/v1", "served")._route(json.dumps(body).encode())
    assert routed == path and json.loads(payload)["model"] == model


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{}", "invalid payload. must contain prompt, inputs, or messages"),
        (b'{"inputs": "x"}', "TGI schema is not emulated"),
        (b"[1]", "Input parsing failed"),
        (b"not json", "Input parsing failed"),
    ],
)
def test_lmi_refuses_other_payloads_with_424(body, needle):
    with pytest.raises(ServiceError) as refused:
        LmiVllm("http://127.0.0.1:9/v1", "served")._route(body)
    err = refused.value
    assert (err.code, err.status, err.fields["OriginalStatusCode"]) == ("ModelError", 424, 424)
    assert json.loads(err.fields["OriginalMessage"])["code"] == 424
    assert needle in json.loads(err.fields["OriginalMessage"])["error"]


def test_a_5xx_from_the_model_reads_as_a_server_error():
    assert "Received server error (500)" in ServiceError.model_error(500, "boom").message
    assert "Received client error (404)" in ServiceError.model_error(404, "no").message
