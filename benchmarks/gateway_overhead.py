"""What the streaming gateway adds: relay latency per streamed token and per request, and start-up cost.

Three processes on this machine: the SageMaker-runtime emulator (a synthetic model that stamps each
chunk with `time.monotonic_ns()` as it sends it), the gateway under uvicorn pointed at it through the
real botocore client, and this client (aiohttp, one process). CLOCK_MONOTONIC is system-wide, so
"received - stamped" is the latency of each chunk from the emulator writing it to the client parsing it.

The same is measured reading the emulator directly with botocore (no gateway): the difference is what the
gateway adds (its event-stream read, thread hop, line split, JSON parse, SSE write, and one more hop).

    .venv/bin/python benchmarks/gateway_overhead.py [--requests 64] [--tokens 64] [--json out.json]

Figures on a shared machine are noisy: the script prints the load average beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
STAMP = "x_emitted_ns"
ENDPOINT = "bench"
MODEL = "bench-model"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 30.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def start_emulator(port: int, interval: float, first_token_delay: float) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "local.sagemaker_runtime", "--port", str(port), "--endpoint-name", ENDPOINT,
         "--interval", str(interval), "--first-token-delay", str(first_token_delay), "--stamp-field", STAMP],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    process.stdout.readline()  # the "listening" line
    return process


def gateway_env(emulator_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'lambda'}",
        "GATEWAY_ENDPOINT_NAME": ENDPOINT,
        "GATEWAY_REGION": "us-east-1",
        "GATEWAY_MODEL_ID": MODEL,
        "GATEWAY_PRICE_PER_HOUR": "1.515",
        "GATEWAY_SAGEMAKER_ENDPOINT_URL": emulator_url,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",  # pragma: allowlist secret (dummy credential for the local endpoint)
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def start_gateway(port: int, env: dict[str, str]) -> subprocess.Popen:
    # The EMF lines go to /dev/null here: writing them is part of the cost, reading them is not.
    return subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "gateway.app:app", "--host", "127.0.0.1", "--port", str(port),
         "--no-access-log", "--log-level", "warning"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
    )


def request_body(tokens: int, salt: int) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": f"request {salt}"}], "max_tokens": tokens,
            "stream": True, "stream_options": {"include_usage": True}}


async def via_gateway(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> dict[str, Any]:
    sent = time.monotonic_ns()
    delays, first = [], None
    async with session.post(url, json=body) as response:
        assert response.status == 200, await response.text()
        async for raw in response.content:
            received = time.monotonic_ns()
            if not raw.startswith(b"data: {"):
                continue
            chunk = json.loads(raw[6:])
            choices = chunk.get("choices") or []
            if choices and choices[0]["delta"].get("content"):
                if first is None:
                    first, arrived = received, chunk[f"{STAMP}_request"]
                delays.append(received - chunk[STAMP])
    return {"ttft_ns": first - sent, "request_ns": arrived - sent, "delays_ns": delays}


def via_botocore(client, body: dict[str, Any]) -> dict[str, Any]:
    sent = time.monotonic_ns()
    response = client.invoke_endpoint_with_response_stream(EndpointName=ENDPOINT, Body=json.dumps(body))
    delays, first, pending = [], None, b""
    for event in response["Body"]:
        pending += event["PayloadPart"]["Bytes"]
        *lines, pending = pending.split(b"\n")
        received = time.monotonic_ns()
        for line in lines:
            chunk = json.loads(line)
            choices = chunk.get("choices") or []
            if choices and choices[0]["delta"].get("content"):
                if first is None:
                    first, arrived = received, chunk[f"{STAMP}_request"]
                delays.append(received - chunk[STAMP])
    return {"ttft_ns": first - sent, "request_ns": arrived - sent, "delays_ns": delays}


async def run_level(concurrency: int, requests: int, tokens: int, gateway_url: str, emulator_url: str) -> dict:
    import botocore.config
    import botocore.session

    bodies = [request_body(tokens, i) for i in range(requests)]
    results: dict[str, list[dict[str, Any]]] = {"gateway": [], "direct": []}

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, trust_env=False,
                                     timeout=aiohttp.ClientTimeout(total=300)) as session:
        semaphore = asyncio.Semaphore(concurrency)

        async def one(body):
            async with semaphore:
                results["gateway"].append(await via_gateway(session, f"{gateway_url}/chat/completions", body))

        await asyncio.gather(*(one(body) for body in bodies))

    client = botocore.session.get_session().create_client(
        "sagemaker-runtime", region_name="us-east-1", endpoint_url=emulator_url, aws_access_key_id="b",
        aws_secret_access_key="b",
        config=botocore.config.Config(max_pool_connections=concurrency, retries={"total_max_attempts": 1}))
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda body: via_botocore(client, body), [request_body(4, -1)] * concurrency))  # warm-up
        results["direct"] = list(pool.map(lambda body: via_botocore(client, body), bodies))

    summary = {}
    for path, runs in results.items():
        summary[path] = {
            # every content chunk: emulator sent it -> client parsed it
            "token_ms": percentiles([d / 1e6 for run in runs for d in run["delays_ns"]]),
            # per request, the way in (client sent -> emulator got the call) and the first token's way out
            "request_ms": percentiles([run["request_ns"] / 1e6 for run in runs]),
            "first_token_ms": percentiles([run["delays_ns"][0] / 1e6 for run in runs]),
            "ttft_ms": percentiles([run["ttft_ns"] / 1e6 for run in runs]),
            "tokens": sum(len(run["delays_ns"]) for run in runs),
        }
    summary["added"] = {
        kind: {q: round(summary["gateway"][kind][q] - summary["direct"][kind][q], 2) for q in ("p50", "p99")}
        for kind in ("token_ms", "request_ms", "first_token_ms")
    }
    return summary


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    quantiles = statistics.quantiles(ordered, n=100, method="inclusive")
    return {"p50": round(statistics.median(ordered), 2), "p99": round(quantiles[98], 2), "max": round(ordered[-1], 2)}


def cold_start(env: dict[str, str], repeats: int = 5) -> dict[str, float]:
    """Median seconds: interpreter alone, + `import gateway.app`, + building the app from the
    environment, spawn -> first /health answer, and (at the first request) building the botocore client."""
    def timed(code: str) -> float:
        out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout
        return float(out.strip().splitlines()[-1])

    prelude = "import time; t = time.perf_counter(); "
    interpreter = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
        interpreter.append(time.perf_counter() - start)
    imports = [timed(prelude + "import gateway.app; print(time.perf_counter() - t)") for _ in range(repeats)]
    builds = [timed(prelude + "import gateway.app; gateway.app.app; print(time.perf_counter() - t)")
              for _ in range(repeats)]
    clients = [timed("import gateway.sagemaker as s, gateway.settings as g, time; c = g.Settings.from_env(); "
                     "t = time.perf_counter(); s.runtime_client(c); print(time.perf_counter() - t)")
               for _ in range(repeats)]
    to_health = []
    for _ in range(3):
        port = free_port()
        start = time.perf_counter()
        process = start_gateway(port, env)
        try:
            wait_http(f"http://127.0.0.1:{port}/health")
            to_health.append(time.perf_counter() - start)
        finally:
            process.terminate()
            process.wait()
    return {
        "python_startup_s": round(statistics.median(interpreter), 3),
        "import_gateway_app_s": round(statistics.median(imports), 3),
        "import_and_build_app_s": round(statistics.median(builds), 3),
        "spawn_to_first_health_s": round(statistics.median(to_health), 3),
        "first_request_botocore_client_s": round(statistics.median(clients), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64, help="streams per concurrency level")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per stream")
    parser.add_argument("--interval", type=float, default=0.01, help="seconds between tokens (emulator)")
    parser.add_argument("--first-token-delay", type=float, default=0.05, help="seconds to the first token (emulator)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    emulator_port, gateway_port = free_port(), free_port()
    emulator = start_emulator(emulator_port, args.interval, args.first_token_delay)
    emulator_url = f"http://127.0.0.1:{emulator_port}"
    env = gateway_env(emulator_url)
    gateway = start_gateway(gateway_port, env)
    results: dict[str, Any] = {"load_average_before": os.getloadavg(), "cpus": os.cpu_count(),
                               "settings": vars(args) | {"json": str(args.json)}}
    try:
        wait_http(f"http://127.0.0.1:{gateway_port}/health")
        gateway_url = f"http://127.0.0.1:{gateway_port}/v1"
        asyncio.run(run_level(1, 4, 8, gateway_url, emulator_url))  # warm-up: connections, clients
        for concurrency in args.concurrency:
            requests = args.requests if concurrency > 1 else max(8, args.requests // 4)
            summary = asyncio.run(run_level(concurrency, requests, args.tokens, gateway_url, emulator_url))
            results[f"c{concurrency}"] = summary
            print(f"concurrency {concurrency:>3} ({requests} streams x {args.tokens} tokens): "
                  f"per token emit->client p50/p99 gateway {summary['gateway']['token_ms']['p50']}/"
                  f"{summary['gateway']['token_ms']['p99']} ms, direct {summary['direct']['token_ms']['p50']}/"
                  f"{summary['direct']['token_ms']['p99']} ms, added {summary['added']['token_ms']['p50']}/"
                  f"{summary['added']['token_ms']['p99']} ms; per request: way in added "
                  f"{summary['added']['request_ms']['p50']}/{summary['added']['request_ms']['p99']} ms, "
                  f"first token added {summary['added']['first_token_ms']['p50']}/"
                  f"{summary['added']['first_token_ms']['p99']} ms", flush=True)
    finally:
        gateway.terminate()
        emulator.terminate()
        gateway.wait()
        emulator.wait()
    results["cold_start"] = cold_start(env)
    results["load_average_after"] = os.getloadavg()
    print("cold start (median s):", json.dumps(results["cold_start"]))
    print("load average before/after:", results["load_average_before"], results["load_average_after"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
