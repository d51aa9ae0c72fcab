"""Metrics: the meter's definitions, and one valid CloudWatch EMF record per request."""

from __future__ import annotations

import json

import httpx
import pytest

from gateway.metrics import METRIC_UNITS, StreamMeter, emf_record

# https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html
EMF_UNITS = {
    "Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes", "Gigabytes", "Terabytes", "Bits",
    "Kilobits", "Megabits", "Gigabits", "Terabits", "Percent", "Count", "Bytes/Second", "Kilobytes/Second",
    "Megabytes/Second", "Gigabytes/Second", "Terabytes/Second", "Bits/Second", "Kilobits/Second", "Megabits/Second",
    "Gigabits/Second", "Terabits/Second", "Count/Second", "None",
}


def validate_emf(line: str) -> dict:
    """Checks a log line against the EMF specification; returns the parsed record."""
    record = json.loads(line)
    assert isinstance(record, dict)
    meta = record["_aws"]
    assert isinstance(meta["Timestamp"], int) and meta["Timestamp"] > 1_600_000_000_000
    directives = meta["CloudWatchMetrics"]
    assert isinstance(directives, list) and directives
    for directive in directives:
        assert isinstance(directive["Namespace"], str) and 1 <= len(directive["Namespace"]) <= 1024
        assert isinstance(directive["Dimensions"], list)
        for dimension_set in directive["Dimensions"]:
            assert isinstance(dimension_set, list) and len(dimension_set) <= 30
            for dimension in dimension_set:
                assert isinstance(record[dimension], str) and record[dimension], f"dimension {dimension} needs a value"
        metrics = directive["Metrics"]
        assert 1 <= len(metrics) <= 100
        for metric in metrics:
            assert set(metric) <= {"Name", "Unit", "StorageResolution"}
            assert isinstance(metric["Name"], str) and 1 <= len(metric["Name"]) <= 1024
            assert metric.get("Unit", "None") in EMF_UNITS
            value = record[metric["Name"]]
            assert isinstance(value, int | float) and not isinstance(value, bool), f"{metric['Name']}={value!r}"
    return record


def test_meter_definitions():
    meter = StreamMeter(price_per_hour=3.6, started=100.0)
    meter.observe({"choices": [{"delta": {"role": "assistant", "content": ""}}]})
    assert meter.ttft_ms is None, "the role-only chunk is not the first token"
    meter.first_content = 100.25
    meter.last_content = 102.0
    meter.content_chunks = 10
    meter.observe({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 20}})
    assert meter.ttft_ms == pytest.approx(250.0)
    assert meter.completion_tokens == 20 and meter.tokens_counted_from == "usage"
    assert meter.tokens_per_second == pytest.approx(10.0)  # 20 tokens / 2 s since the call was sent
    assert meter.cost_per_1k_usd == pytest.approx(3.6 / (10.0 * 3600) * 1000)
    assert meter.sse_comment() == b': metrics {"ttft_ms": 250.0, "tokens_per_second": 10.0, "cost_per_1k_usd": 0.1, ' \
                                  b'"completion_tokens": 20}\n\n'


def test_without_usage_tokens_are_counted_from_chunks_and_a_zero_price_gives_no_cost():
    meter = StreamMeter(price_per_hour=0.0)
    for text in ("a", "b", "c"):
        meter.observe({"choices": [{"delta": {"content": text}}]})
    assert meter.completion_tokens == 3 and meter.tokens_counted_from == "chunks"
    assert meter.cost_per_1k_usd is None
    record = emf_record(namespace="NS", endpoint_name="ep", meter=meter, properties={})
    names = [m["Name"] for m in record["_aws"]["CloudWatchMetrics"][0]["Metrics"]]
    assert "CostPer1kTokensUSD" not in names and "PromptTokens" not in names
    validate_emf(json.dumps(record))


def test_each_request_logs_one_valid_emf_line(gateways):
    gateway = gateways("scripted", metrics_namespace="Custom/NS")
    httpx.post(f"{gateway.url}/chat/completions", json={"messages": [{"role": "user", "content": "x"}], "stream": True})
    (record,) = gateway.records
    record = validate_emf(json.dumps(record, separators=(",", ":")))
    (directive,) = record["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "Custom/NS"
    assert directive["Dimensions"] == [["EndpointName"]]
    assert record["EndpointName"] == "scripted"  # the autoscaling policy's dimension
    assert {m["Name"]: m["Unit"] for m in directive["Metrics"]} == METRIC_UNITS
    assert record["CompletionTokens"] == 4 and record["PromptTokens"] == 7
    assert record["Outcome"] == "ok" and record["Status"] == 200 and record["Stream"] is True
    assert record["ModelId"] == "test-org/test-model"


def test_stdout_emitter_writes_one_json_line(capsys):
    from gateway.metrics import stdout_emitter

    meter = StreamMeter(price_per_hour=1.0)
    meter.observe({"choices": [{"delta": {"content": "a"}}]})
    stdout_emitter()(emf_record(namespace="LLMInference", endpoint_name="ep", meter=meter, properties={"Status": 200}))
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    validate_emf(out)
