"""The client's round trip to the endpoint (bench.rtt), against a real listening socket and a closed port."""

from __future__ import annotations

import json

import bench
from bench.rtt import connect_rtt
from local.engine import free_port


def test_connect_rtt_to_a_listening_server(mock_server):
    server = mock_server()
    rtt = connect_rtt(server.url, samples=3)
    assert rtt["host"] == "127.0.0.1" and rtt["port"] == server.port and rtt["samples"] == 3
    assert 0 < rtt["min_ms"] <= rtt["median_ms"]


def test_a_closed_port_is_reported_not_raised():
    rtt = connect_rtt(f"http://127.0.0.1:{free_port()}/v1")
    assert rtt["error"].startswith("ConnectionRefusedError") and "median_ms" not in rtt
    assert connect_rtt("https://host.invalid/v1")["port"] == 443


def test_the_run_records_the_rtt_in_summary_json_and_the_report(tmp_path, mock_server):
    server = mock_server()
    out = tmp_path / "run"
    assert bench.run([server.url, "--model", "mock-model", "--workers", "0", "--concurrency", "1", "--requests", "2",
                      "--warmup", "0", "--max-tokens", "2", "--out", str(out), "--no-progress", "--no-charts"]) == 0
    rtt = json.loads((out / "summary.json").read_text())["client"]["rtt_to_endpoint"]
    assert rtt["port"] == server.port and rtt["median_ms"] > 0
    assert f"round trip to the endpoint {rtt['median_ms']:.1f} ms" in (out / "report.md").read_text()
