"""The AWS data path on the real engine: what users send, through the gateway, botocore, the SageMaker-runtime
emulator and LMI's model server, into vLLM started from the aws stack's rendered Model environment.

These fail the way production would: with no OPTION_SERVED_MODEL_NAME, LMI serves `lmi`, vLLM answers the
users' `model` with 404 and every request below fails.
"""

from __future__ import annotations

import json
import subprocess
import sys

import botocore.exceptions
import httpx
import pytest
from openai import OpenAI

pytestmark = pytest.mark.e2e

KEY = "k" * 32  # API Gateway checks the key in front of the Lambda; the app itself does not in this mode


def client(path) -> OpenAI:
    return OpenAI(base_url=path.gateway_url, api_key=KEY, max_retries=0, timeout=120)


def test_openai_client_streams_with_usage_through_the_gateway(aws_path):
    stream = client(aws_path).chat.completions.create(
        model=aws_path.model_id,
        messages=[{"role": "user", "content": "Say hello in five words."}],
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = [c.usage for c in chunks if c.usage is not None]
    assert text.strip(), "no content came back"
    assert len(usage) == 1
    # The prompt goes through Llama 3's tokenizer and chat template: 12 tokens of message plus the headers.
    assert usage[0].prompt_tokens > 12
    assert 0 < usage[0].completion_tokens <= 12
    assert {c.model for c in chunks} == {aws_path.model_id}


def test_openai_client_without_streaming_gets_the_usage(aws_path):
    reply = client(aws_path).chat.completions.create(
        model=aws_path.model_id, messages=[{"role": "user", "content": "Hi"}], max_tokens=5)
    assert reply.choices[0].message.content
    assert reply.usage.completion_tokens == 5 or reply.choices[0].finish_reason == "stop"
    assert reply.model == aws_path.model_id


def test_v1_models_names_what_the_engine_serves(aws_path):
    through_gateway = [m.id for m in client(aws_path).models.list()]
    served = [m["id"] for m in httpx.get(aws_path.engine.base_url + "/v1/models", timeout=10).json()["data"]]
    assert through_gateway == served == [aws_path.model_id]


def test_the_gateway_reports_server_side_metrics_for_real_replies(aws_path):
    aws_path.records.clear()
    list(client(aws_path).chat.completions.create(
        model=aws_path.model_id, messages=[{"role": "user", "content": "Count."}], max_tokens=8, stream=True,
        stream_options={"include_usage": True}))
    text = json.dumps(aws_path.records)
    assert "CompletionTokens" in text and "TTFTMs" in text, aws_path.records


def test_lmi_fills_in_the_served_name_and_refuses_another(aws_path, aws_engine):
    """Straight at the emulator (as any SageMaker client): no `model` is LMI's default; a wrong one is vLLM's 404."""
    runtime = aws_path.emulator.client()
    endpoint = aws_path.lambda_env["GATEWAY_ENDPOINT_NAME"]
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True}
    reply = runtime.invoke_endpoint_with_response_stream(EndpointName=endpoint, Body=json.dumps(body),
                                                          ContentType="application/json")
    data = b"".join(e["PayloadPart"]["Bytes"] for e in reply["Body"] if "PayloadPart" in e)
    lines = data.split(b"\n")
    assert lines[-2:] == [b"", b""], "LMI ends the stream with an empty line, no [DONE]"
    chunks = [json.loads(line) for line in lines if line]
    assert not any(line.startswith(b"data:") for line in lines)
    assert {c["model"] for c in chunks} == {aws_path.model_id}
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        runtime.invoke_endpoint_with_response_stream(EndpointName=endpoint, ContentType="application/json",
                                                      Body=json.dumps({**body, "model": "lmi"}))
    error = refused.value.response
    assert error["Error"]["Code"] == "ModelError"
    assert error["OriginalStatusCode"] == 404
    assert json.loads(error["OriginalMessage"])["code"] == 404


def test_bench_measures_the_gateway_with_no_failed_request(aws_path, tmp_path):
    out = tmp_path / "bench"
    done = subprocess.run(
        [sys.executable, "-m", "bench", aws_path.gateway_url, "--model", aws_path.model_id, "--api-key", KEY,
         "--concurrency", "2", "--requests", "6", "--max-tokens", "16", "--prompt-tokens", "32",
         "--no-progress", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    (level,) = summary["levels"]
    assert (level["requests"], level["succeeded"], level["failed"]) == (6, 6, 0), level.get("errors")
    assert level["token_count_source"] == "usage"
    records = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    measured = [r for r in records if not r["warmup"]]
    assert len(measured) == 6
    assert all(r["ok"] and 1 <= r["output_tokens"] <= 16 and 0 < r["ttft_ms"] <= r["e2e_ms"] for r in measured)
