"""The local demo: its option checks and summaries, and end to end: vLLM started from the aws stack's rendered
Model environment, through the gateway, and the llama.cpp baseline.

`make test` installs vLLM (`make vllm`) and builds llama-server (about 7 minutes on 2 cores, then cached
outside the clone) before the tests, so the e2e test never skips: a machine without them fails here with
the command that installs them.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from local import demo
from local._sources import LocalSetupError
from local.demo import DemoOptions, count_emf_lines, gateway_environment, overhead_table, run_demo
from local.engine import free_port, port_in_use


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"size": "huge"}, "--size 'huge': choose one of"),
        ({"requests": 0}, "--requests 0: must be >= 1"),
        ({"max_tokens": -1}, "--max-tokens -1"),
        ({"gateway_port": 70000}, "--gateway-port 70000"),
        ({"baseline": "sometimes"}, "--baseline 'sometimes': choose one of auto, always, never"),
    ],
)
def test_bad_options_name_the_flag(fields, needle):
    with pytest.raises(LocalSetupError, match=needle.replace("(", r"\(")):
        DemoOptions(**fields)


def test_each_bench_run_is_labelled_by_its_path(tmp_path):
    argv = demo.bench_argv("http://127.0.0.1:1/v1", DemoOptions(), tmp_path / demo.LABELS[1], "k", model="m")
    assert argv[argv.index("--label") + 1] == "vllm-gateway"
    assert demo.bench_argv("http://x/v1", DemoOptions(), tmp_path / "x", label="llamacpp")[4] == "llamacpp"
    assert "--metrics-url" not in argv
    scraped = demo.bench_argv("http://g/v1", DemoOptions(), tmp_path / "g", "k", metrics_url="http://e:1/metrics")
    assert scraped[scraped.index("--metrics-url") + 1] == "http://e:1/metrics"


def test_slots_fit_prompt_and_reply():
    assert DemoOptions().ctx_per_slot == 512
    assert DemoOptions(prompt_tokens=512, max_tokens=256).ctx_per_slot >= 2 * (512 + 256)


def test_a_port_in_use_stops_the_demo_before_any_build(tmp_path, monkeypatch):
    monkeypatch.setattr("local.engine.build_engine", lambda *a, **k: pytest.fail("must stop before building"))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        with pytest.raises(LocalSetupError, match=f"Port {taken} on 127.0.0.1 is already in use"):
            run_demo(DemoOptions(out=tmp_path, gateway_port=taken), say=lambda _: None)


def test_gateway_environment_is_the_lambdas_pointed_at_the_emulator_with_dummy_credentials(monkeypatch):
    from local.deployed import gateway_lambda_environment
    from stacks.rendered import run_stack

    monkeypatch.setenv("AWS_PROFILE", "production")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "real-looking")
    monkeypatch.setenv("GATEWAY_MODEL_ID", "stale-from-the-shell")
    lambda_env = gateway_lambda_environment(run_stack("aws"))
    env = gateway_environment(lambda_env, "http://127.0.0.1:9999", "k" * 32)
    assert env["GATEWAY_SAGEMAKER_ENDPOINT_URL"] == "http://127.0.0.1:9999"
    assert env["GATEWAY_API_KEY"] == "k" * 32
    # Everything else the gateway reads is what the stack gives the Lambda.
    assert {k: v for k, v in env.items() if k.startswith("GATEWAY_") and k not in (
        "GATEWAY_SAGEMAKER_ENDPOINT_URL", "GATEWAY_API_KEY")} == {
        k: v for k, v in lambda_env.items() if k.startswith("GATEWAY_")}
    assert env["GATEWAY_MODEL_ID"] == "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4"
    assert env["AWS_ACCESS_KEY_ID"] == "local"
    assert "AWS_PROFILE" not in env and "AWS_SESSION_TOKEN" not in env
    assert env["PYTHONPATH"].split(":")[0].endswith("lambda")


def test_emf_lines_are_counted_and_other_lines_ignored(tmp_path):
    log = tmp_path / "gateway.log"
    emf = {"_aws": {"Timestamp": 1, "CloudWatchMetrics": []}, "CompletionTokens": 3}
    log.write_text("\n".join([json.dumps(emf), "INFO: started", "{not json", json.dumps({"a": 1}), json.dumps(emf)]))
    assert count_emf_lines(log) == 2


def _summary(path: Path, levels: list[dict]) -> Path:
    path.mkdir()
    (path / "summary.json").write_text(json.dumps({"levels": levels}))
    return path


def test_overhead_table_pairs_levels_and_subtracts(tmp_path):
    direct = _summary(tmp_path / "d", [
        {"concurrency": 1, "ttft_ms": {"p50": 10.0}, "output_throughput_tok_s": 100.0, "failed": 0},
        {"concurrency": 4, "ttft_ms": {"p50": 20.0}, "output_throughput_tok_s": 300.0, "failed": 0},
    ])
    gateway = _summary(tmp_path / "g", [
        {"concurrency": 1, "ttft_ms": {"p50": 13.5}, "output_throughput_tok_s": 95.0, "failed": 1},
        {"concurrency": 4, "ttft_ms": None, "output_throughput_tok_s": 0.0, "failed": 8},
    ])
    rows = overhead_table(direct, gateway)
    assert rows[0] == {"concurrency": 1, "direct_ttft_p50_ms": 10.0, "gateway_ttft_p50_ms": 13.5,
                       "direct_tok_s": 100.0, "gateway_tok_s": 95.0, "direct_failed": 0, "gateway_failed": 1,
                       "added_ttft_p50_ms": 3.5}
    assert rows[1]["gateway_ttft_p50_ms"] is None and "added_ttft_p50_ms" not in rows[1]


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "requests.jsonl").read_text().splitlines() if line]


@pytest.mark.e2e
def test_demo_end_to_end_through_the_gateway(tmp_path):
    ports = {name: free_port() for name in ("engine_port", "emulator_port", "gateway_port")}
    options = DemoOptions(out=tmp_path, concurrency="2", requests=6, max_tokens=16, prompt_tokens=32,
                          parallel=4, progress=False, baseline="always", **ports)
    result = run_demo(options, say=lambda _: None)

    assert result.exit_code == 0
    servers = {}
    for run_dir in (result.direct, result.gateway, result.baseline):
        summary = json.loads((run_dir / "summary.json").read_text())
        (level,) = summary["levels"]
        assert (level["requests"], level["succeeded"], level["failed"]) == (6, 6, 0), level.get("errors")
        assert level["token_count_source"] == "usage"
        if run_dir != result.baseline:  # vLLM's own /metrics, read directly or beside the gateway
            assert "vllm:num_requests_running" in level["server_metrics"], summary.get("server_metrics")
        measured = [r for r in _records(run_dir) if not r["warmup"]]
        assert len(measured) == 6
        for record in measured:
            assert record["ok"] and record["token_count_source"] == "usage"
            # Real token counts from the engine's usage chunk: at least one, at most what was asked.
            assert 1 <= record["output_tokens"] <= 16
            assert record["prompt_tokens"] > 0
            # Equal only when a busy client read the whole reply at once (the report flags single_read).
            assert 0 < record["ttft_ms"] <= record["e2e_ms"]
        assert level["output_tokens"] == sum(r["output_tokens"] for r in measured)
        assert 0 < level["ttft_ms"]["p50"] < level["e2e_ms"]["p50"]
        servers[run_dir.name] = summary["target"]["server"]
    # What each run measured, from the server's own answer; the gateway does not say.
    assert servers["vllm-direct"] == {"engine": "vllm", "version": "0.32.0"}
    assert servers["vllm-gateway"] is None
    assert servers["llamacpp"]["engine"] == "llama.cpp" and servers["llamacpp"]["version"].startswith("b")
    # The gateway measured every request it served (warmup included) and said so in EMF.
    served = len(_records(result.gateway))
    assert result.gateway_metric_lines == served
    compared = (result.comparison / "compare.md").read_text()
    assert all(label in compared for label in ("vllm-direct", "vllm-gateway", "llamacpp"))
    # Everything the demo started is stopped: its ports are free again.
    for port in ports.values():
        assert not port_in_use("127.0.0.1", port)


def test_an_interrupted_bench_stops_the_demo(monkeypatch):
    monkeypatch.setattr("bench.run", lambda argv: 130)
    with pytest.raises(KeyboardInterrupt):
        demo._bench(["http://127.0.0.1:9/v1"])
    monkeypatch.setattr("bench.run", lambda argv: 1)
    assert demo._bench(["http://127.0.0.1:9/v1"]) == 1
