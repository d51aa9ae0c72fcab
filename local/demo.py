"""The local demo: the whole AWS data path on this machine, measured (`make demo` / `python -m local.demo`).

    bench -> gateway app (uvicorn, the Lambda's Starlette app) -> boto3 InvokeEndpointWithResponseStream
          -> SageMaker-runtime emulator (real event-stream wire format) -> LMI's model server (local/lmi.py)
          -> vLLM (CPU build) started from the aws stack's rendered Model environment

What runs is what `pulumi up -s aws` deploys: the aws stack's program runs under Pulumi mocks
(`stacks/rendered.py`), and the engine starts from its SageMaker Model's container environment, mapped to
vLLM engine arguments as LMI does; the gateway gets the Lambda function's environment. Only the model (a
random-weight Llama 3 with the real tokenizer), the ports, the GPU count and the KV cache size differ.

It benches vLLM directly and through the gateway, then the llama.cpp baseline (`llama-server`, the seeds'
local baseline) when it is built (`make engine`, about 7 minutes on 2 cores; `--baseline always` builds it,
`--baseline never` leaves it out), writes `<out>/vllm-direct/`, `<out>/vllm-gateway/`, `<out>/llamacpp/`
and `<out>/comparison/`, prints what the gateway adds, and stops everything it started (also on Ctrl-C or
failure). Every process gets its own log under `<out>/logs/`.

The gateway and the emulator run as processes of their own, as they do in the cloud: sharing the bench
client's event loop or GIL would charge their work to the measured latency.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from local._sources import LocalSetupError
from local.engine import EngineBuild, LlamaServer, ServerOptions, free_port, require_free_port, wait_healthy
from local.model import SIZES

ROOT = Path(__file__).resolve().parent.parent
MODEL_ALIAS = "local-llama"  # the llama.cpp baseline's model name
LABELS = ("vllm-direct", "vllm-gateway")
BASELINE_LABEL = "llamacpp"
BASELINES = ("auto", "always", "never")
# llama-server's build from source, measured on the 2-core machine the project is built on (build_seconds in
# ~/.cache/llm-inference/llama-server-*/build-info.json: 395 s); the one figure the docs and messages give.
BASELINE_BUILD_TIME = "about 7 minutes on 2 cores"
# Why the demo's figures are not a deployment's, said before and after the runs.
WHAT_THE_NUMBERS_ARE = (
    "the figures come from a tiny random-weight Llama 3 on this machine's CPU: they show how the data path "
    "behaves (what the gateway adds, that streaming works), never what a GPU endpoint delivers"
)


@dataclass(frozen=True)
class DemoOptions:
    out: Path = Path("results")
    size: str = "tiny"
    seed: int = 0
    concurrency: str = "1,4,8"
    requests: int = 24
    max_tokens: int = 32
    prompt_tokens: int = 64
    parallel: int = 8
    # llama.cpp's threads spin at a barrier every layer: one descheduled thread stalls the whole step
    # (100x slower decode seen here with 2 threads on 2 busy cores). Leave half the cores to the bench,
    # the gateway and the emulator.
    threads: int = max(1, (os.cpu_count() or 2) // 2)
    native: bool = False
    engine_port: int = 0
    emulator_port: int = 0
    gateway_port: int = 0
    ready_timeout_s: float = 120.0
    vllm_ready_timeout_s: float = 900.0
    baseline: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.baseline not in BASELINES:
            raise LocalSetupError(f"--baseline {self.baseline!r}: choose one of {', '.join(BASELINES)}")
        if self.size not in SIZES:
            raise LocalSetupError(f"--size {self.size!r}: choose one of {', '.join(sorted(SIZES))}")
        for name in ("requests", "max_tokens", "prompt_tokens", "parallel", "threads"):
            if getattr(self, name) < 1:
                raise LocalSetupError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be >= 1")
        for name in ("engine_port", "emulator_port", "gateway_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise LocalSetupError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be 0 (any) or 1..65535")

    @property
    def ctx_per_slot(self) -> int:
        # The prompt (chat template included) plus the reply must fit one slot; round up generously.
        return max(512, 2 * (self.prompt_tokens + self.max_tokens) + 64)


@dataclass(frozen=True)
class DemoResult:
    direct: Path
    gateway: Path
    comparison: Path
    exit_code: int
    gateway_metric_lines: int
    baseline: Path | None = None


# --------------------------------------------------------------------------------- child processes


def _port(requested: int, what: str) -> int:
    if requested:
        require_free_port("127.0.0.1", requested, what)
        return requested
    return free_port()


@contextmanager
def child_process(argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """A child in its own session, its output in `log_path`; terminated (then killed) on exit."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log_file:
        process = subprocess.Popen(list(argv), cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def gateway_environment(lambda_environment: dict[str, str], emulator_url: str, api_key: str) -> dict[str, str]:
    """The Lambda function's environment as the aws stack sets it, pointed at the emulator, with the key the
    app checks itself (as in function-URL mode; behind API Gateway the usage plan checks it) and dummy AWS
    credentials."""
    from gateway.settings import Settings  # lambda/ is on sys.path (see _lambda_on_path)

    variables = {**lambda_environment, "GATEWAY_SAGEMAKER_ENDPOINT_URL": emulator_url, "GATEWAY_API_KEY": api_key}
    Settings.from_env(variables)  # refuses here what the app would refuse at start
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GATEWAY_"))}
    env.update({k: v for k, v in variables.items() if k.startswith("GATEWAY_")})
    env.update({
        "PYTHONPATH": os.pathsep.join([str(ROOT / "lambda"), str(ROOT)]),
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",  # pragma: allowlist secret (dummy credential for the local endpoint)
        "AWS_EC2_METADATA_DISABLED": "true",
    })
    return env


def _lambda_on_path() -> None:
    path = str(ROOT / "lambda")
    if path not in sys.path:
        sys.path.insert(0, path)


# ------------------------------------------------------------------------------------------- the run


def bench_argv(url: str, options: DemoOptions, out_dir: Path, api_key: str | None = None,
               model: str = MODEL_ALIAS, label: str | None = None, metrics_url: str | None = None) -> list[str]:
    argv = [
        url, "--model", model, "--label", label or out_dir.name,
        "--concurrency", options.concurrency,
        "--requests", str(options.requests),
        "--max-tokens", str(options.max_tokens),
        "--prompt-tokens", str(options.prompt_tokens),
        "--out", str(out_dir),
    ]
    if api_key:
        argv += ["--api-key", api_key]
    if metrics_url:  # through the gateway: the engine's own /metrics (the gateway serves none)
        argv += ["--metrics-url", metrics_url]
    if not options.progress:
        argv.append("--no-progress")
    return argv


@dataclass(frozen=True)
class RunningPath:
    """vLLM, the SageMaker-runtime emulator and the gateway, started as the aws stack renders them."""

    engine: Any  # local.vllm_engine.VllmServer
    gateway_url: str  # the OpenAI base URL, ending in /v1
    api_key: str
    model_id: str
    gateway_log: Path


@dataclass(frozen=True)
class _Ports:
    engine: int
    emulator: int
    gateway: int


def _ports(options: DemoOptions) -> _Ports:
    # Ports first: a port in use is the user's to fix before a long build starts.
    return _Ports(_port(options.engine_port, "vLLM"), _port(options.emulator_port, "the SageMaker-runtime emulator"),
                  _port(options.gateway_port, "the gateway"))


def start_aws_path(stack: ExitStack, options: DemoOptions, ports: _Ports, say: Callable[[str], None],
                   started: float, cors_origins: Sequence[str] = ()) -> RunningPath:
    """Start vLLM, the emulator and the gateway (with CORS for `cors_origins`); `stack` stops them."""
    from local.deployed import aws_lmi_environment, gateway_lambda_environment
    from local.vllm_engine import VllmServer
    from stacks.rendered import run_stack

    graph = run_stack("aws")  # what `pulumi up -s aws` would create, rendered under Pulumi mocks
    model_environment = aws_lmi_environment(graph)
    lambda_environment = gateway_lambda_environment(graph)
    endpoint_name = lambda_environment["GATEWAY_ENDPOINT_NAME"]
    model_id = lambda_environment["GATEWAY_MODEL_ID"]
    say(f"aws stack rendered: endpoint {endpoint_name}, model {model_id} ({time.monotonic() - started:.1f}s)")
    if cors_origins:
        # What the stack sets with demoUi (the CloudFront origin); here the local page's origin.
        lambda_environment = {**lambda_environment, "GATEWAY_CORS_ORIGINS": ",".join(cors_origins)}

    api_key = secrets.token_urlsafe(24)
    logs = options.out / "logs"
    engine = VllmServer.from_lmi_environment(model_environment, logs / "vllm.log", port=ports.engine)
    say(f"starting vLLM as LMI would from the Model's environment (log {engine.log_path}) ...")
    stack.enter_context(engine.start(options.vllm_ready_timeout_s))
    say(f"vLLM {engine.version()}  {engine.base_url}/v1  serving {engine.served_name} "
        f"({time.monotonic() - started:.0f}s)")

    emulator_log = logs / "sagemaker-emulator.log"
    emulator = stack.enter_context(child_process(
        [sys.executable, "-m", "local.sagemaker_runtime", "--forward", engine.base_url + "/v1",
         "--lmi-served-name", engine.served_name, "--endpoint-name", endpoint_name, "--port", str(ports.emulator)],
        emulator_log,
    ))
    emulator_url = f"http://127.0.0.1:{ports.emulator}"
    wait_healthy(emulator_url + "/ping", emulator, emulator_log, "the SageMaker-runtime emulator", 30)
    say(f"SageMaker runtime emulator  {emulator_url}  (endpoint {endpoint_name}, LMI model server)")

    # The gateway's stdout is its EMF metric lines, as CloudWatch Logs would receive them.
    gateway_log = logs / "gateway.log"
    gateway = stack.enter_context(child_process(
        [sys.executable, "-m", "uvicorn", "gateway.app:app", "--host", "127.0.0.1", "--port", str(ports.gateway),
         "--no-access-log", "--log-level", "warning"],
        gateway_log,
        env=gateway_environment(lambda_environment, emulator_url, api_key),
    ))
    gateway_url = f"http://127.0.0.1:{ports.gateway}"
    wait_healthy(gateway_url + "/health", gateway, gateway_log, "the gateway", 30)
    say(f"gateway  {gateway_url}/v1  (API key required)")
    return RunningPath(engine, gateway_url + "/v1", api_key, model_id, gateway_log)


def run_demo(options: DemoOptions, say: Callable[[str], None] = print, console=None) -> DemoResult:
    """Start vLLM, emulator and gateway, bench both paths, then the llama.cpp baseline; compare; stop all."""
    import bench
    from local.vllm_engine import vllm_python

    _lambda_on_path()
    out = options.out
    logs = out / "logs"
    ports = _ports(options)
    vllm_python()  # not installed: say so before anything starts
    baseline_binary = _baseline_binary(options, say, console)

    started = time.monotonic()
    say(f"Note: {WHAT_THE_NUMBERS_ARE}.")
    say(f"Workload: {options.prompt_tokens} prompt + {options.max_tokens} output tokens, {options.requests} requests "
        f"at each of {options.concurrency} in flight (the bench's default, 128 + 64 at 6,12,24,32, is sized for a "
        "GPU: a CPU engine would take an hour)")
    codes: list[int] = []
    direct, through = out / LABELS[0], out / LABELS[1]
    with ExitStack() as stack:
        path = start_aws_path(stack, options, ports, say, started)
        say(f"\n[1/3] {LABELS[0]}: bench -> vLLM")
        codes.append(_bench(bench_argv(path.engine.base_url + "/v1", options, direct, model=path.model_id)))
        say(f"\n[2/3] {LABELS[1]}: bench -> gateway -> boto3 -> emulator -> LMI -> vLLM")
        codes.append(_bench(bench_argv(path.gateway_url, options, through, path.api_key, model=path.model_id,
                                        metrics_url=path.engine.base_url + "/metrics")))
        metric_lines = count_emf_lines(path.gateway_log)

    runs, labels = [direct, through], list(LABELS)
    baseline = None
    if baseline_binary is not None:
        baseline = out / BASELINE_LABEL
        say(f"\n[3/3] {BASELINE_LABEL}: bench -> llama.cpp (the local baseline)")
        codes.append(_bench_baseline(baseline_binary, options, baseline, logs, say))
        runs.append(baseline)
        labels.append(BASELINE_LABEL)
    else:
        say(f"\n[3/3] {BASELINE_LABEL} left out: llama-server is not built (`make engine` builds it, "
            f"{BASELINE_BUILD_TIME}; then run again)")

    comparison = out / "comparison"
    codes.append(bench.run(["compare", *map(str, runs), "--labels", ",".join(labels), "--out", str(comparison)]))
    return DemoResult(direct, through, comparison, max(codes), metric_lines, baseline)


def serve_playground(options: DemoOptions, say: Callable[[str], None] = print, playground_port: int = 0,
                     wait: Callable[[], None] | None = None) -> None:
    """`--serve`: start vLLM, emulator and gateway, serve the chat playground with the gateway filled in,
    and keep everything up until Ctrl-C (or SIGTERM); then stop it all. `wait` (tests) replaces the wait."""
    from local.playground import PlaygroundConfig, PlaygroundServer
    from local.vllm_engine import vllm_python

    _lambda_on_path()
    ports = _ports(options)
    page_port = _port(playground_port, "the playground page")
    vllm_python()
    started = time.monotonic()
    page_origin = f"http://127.0.0.1:{page_port}"
    with ExitStack() as stack:
        # The page is on its own origin, as on AWS (CloudFront vs API Gateway): the gateway answers CORS for it.
        path = start_aws_path(stack, options, ports, say, started, cors_origins=[page_origin])
        config = PlaygroundConfig(base_url=path.gateway_url, api_key=path.api_key, model=path.model_id,
                                  max_tokens=options.max_tokens)
        page = stack.enter_context(PlaygroundServer(config, port=page_port))
        say(f"playground {page.url}  (gateway {path.gateway_url} and its key filled in; Ctrl-C stops everything)")
        say(f"API key for other clients: {path.api_key}")
        if wait is not None:
            wait()
        else:
            while True:
                time.sleep(3600)


def _baseline_binary(options: DemoOptions, say, console) -> Path | None:
    """llama-server when the baseline runs: the cached build, built first with --baseline always."""
    from local.engine import build_engine, build_with_progress, built_binary

    if options.baseline == "never":
        return None
    build = EngineBuild(portable=not options.native)
    binary = built_binary(build)
    if binary is None and options.baseline == "always":
        binary = build_with_progress(build, console) if console is not None else build_engine(build, log=say)
    return binary


def _bench_baseline(binary: Path, options: DemoOptions, out_dir: Path, logs: Path, say) -> int:
    from local.model import ensure_model

    model = ensure_model(options.size, options.seed)
    port = free_port()
    with LlamaServer.start(
        binary,
        ServerOptions(model=model, port=port, parallel=options.parallel, threads=options.threads,
                      ctx_per_slot=options.ctx_per_slot, alias=MODEL_ALIAS),
        logs / "llama-server.log",
        ready_timeout_s=options.ready_timeout_s,
    ) as engine:
        say(f"llama-server  {engine.openai_url}  ({options.parallel} slots, {options.threads} threads, {model.name})")
        return _bench(bench_argv(engine.openai_url, options, out_dir))


def _bench(argv: list[str]) -> int:
    """One bench run; an interrupted one (Ctrl-C, SIGTERM: it kept its partial results) stops the demo."""
    import bench
    from bench.runner import EXIT_INTERRUPTED

    code = bench.run(argv)
    if code == EXIT_INTERRUPTED:
        raise KeyboardInterrupt
    return code


def count_emf_lines(log_path: Path) -> int:
    """EMF records the gateway wrote (one per completed request)."""
    count = 0
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"_aws"' in line:
            try:
                count += "_aws" in json.loads(line)
            except ValueError:
                pass
    return count


def overhead_table(direct_dir: Path, gateway_dir: Path) -> list[dict]:
    """Per concurrency level: TTFT p50 and tokens/s direct vs through the gateway, and the difference."""
    direct = {lv["concurrency"]: lv for lv in json.loads((direct_dir / "summary.json").read_text())["levels"]}
    through = {lv["concurrency"]: lv for lv in json.loads((gateway_dir / "summary.json").read_text())["levels"]}
    rows = []
    for level in sorted(set(direct) & set(through)):
        d, g = direct[level], through[level]

        def p50(lv: dict, metric: str) -> float | None:
            return (lv.get(metric) or {}).get("p50")

        row = {
            "concurrency": level,
            "direct_ttft_p50_ms": p50(d, "ttft_ms"),
            "gateway_ttft_p50_ms": p50(g, "ttft_ms"),
            "direct_tok_s": d.get("output_throughput_tok_s"),
            "gateway_tok_s": g.get("output_throughput_tok_s"),
            "direct_failed": d.get("failed"),
            "gateway_failed": g.get("failed"),
        }
        if row["direct_ttft_p50_ms"] is not None and row["gateway_ttft_p50_ms"] is not None:
            row["added_ttft_p50_ms"] = round(row["gateway_ttft_p50_ms"] - row["direct_ttft_p50_ms"], 2)
        rows.append(row)
    return rows


def print_overhead(rows: list[dict], console) -> None:
    from rich.table import Table

    table = Table(title="direct vs through the gateway (TTFT p50 in ms, output tokens/s)")
    for column in ("c", "TTFT direct", "TTFT gateway", "added", "tok/s direct", "tok/s gateway", "failed"):
        table.add_column(column, justify="right")

    def fmt(value: float | None, digits: int = 1) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    for row in rows:
        table.add_row(
            str(row["concurrency"]), fmt(row["direct_ttft_p50_ms"]), fmt(row["gateway_ttft_p50_ms"]),
            fmt(row.get("added_ttft_p50_ms")), fmt(row["direct_tok_s"], 0), fmt(row["gateway_tok_s"], 0),
            f"{row['direct_failed']}/{row['gateway_failed']}",
        )
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m local.demo",
        description="Run vLLM as the aws stack deploys it, the gateway app and a SageMaker-runtime emulator here, "
                    "benchmark them, and compare with the llama.cpp baseline.",
    )
    parser.add_argument("--out", type=Path, default=Path("results"), help="results folder (default results/)")
    parser.add_argument("--size", default="tiny", choices=sorted(SIZES), help="random-weight model size")
    parser.add_argument("--seed", type=int, default=0, help="model weights seed")
    parser.add_argument("--concurrency", default="1,4,8", help="bench concurrency levels (default 1,4,8)")
    parser.add_argument("--requests", type=int, default=24, help="requests per level (default 24)")
    parser.add_argument("--max-tokens", type=int, default=32, help="completion tokens per request (default 32)")
    parser.add_argument("--prompt-tokens", type=int, default=64, help="prompt tokens per request (default 64)")
    parser.add_argument("--baseline", default="auto", choices=BASELINES,
                        help="the llama.cpp baseline: auto (when built), always (build it first), never")
    parser.add_argument("--parallel", type=int, default=8, help="llama-server slots (default 8)")
    parser.add_argument("--threads", type=int, default=DemoOptions.threads,
                        help=f"llama-server compute threads (default {DemoOptions.threads}: half the cores)")
    parser.add_argument("--native", action="store_true", help="build llama-server tuned for this CPU")
    parser.add_argument("--engine-port", type=int, default=0, help="vLLM port (default: a free one)")
    parser.add_argument("--emulator-port", type=int, default=0, help="emulator port (default: a free one)")
    parser.add_argument("--gateway-port", type=int, default=0, help="gateway port (default: a free one)")
    parser.add_argument("--no-progress", action="store_true", help="no live progress display")
    parser.add_argument("--serve", action="store_true",
                        help="no benchmark: keep vLLM, emulator and gateway up and serve the chat playground "
                             "until Ctrl-C")
    parser.add_argument("--playground-port", type=int, default=0,
                        help="with --serve: the playground page's port (default: a free one)")
    args = parser.parse_args(argv)

    from rich.console import Console

    # soft_wrap: rich never breaks a line (a path) mid-word; the terminal wraps long lines, copy-paste stays whole.
    console = Console(stderr=True, soft_wrap=True)
    from bench.cli_base import interruptible

    started = time.monotonic()
    # SIGTERM (CI, a supervisor) and Ctrl-C, even when started in the background, take the clean-up path.
    try:
        options = DemoOptions(
            out=args.out, size=args.size, seed=args.seed, concurrency=args.concurrency, requests=args.requests,
            max_tokens=args.max_tokens, prompt_tokens=args.prompt_tokens, parallel=args.parallel,
            threads=args.threads, native=args.native, engine_port=args.engine_port, emulator_port=args.emulator_port,
            gateway_port=args.gateway_port, baseline=args.baseline, progress=not args.no_progress,
        )
        if not 0 <= args.playground_port <= 65535:
            raise LocalSetupError(f"--playground-port {args.playground_port}: must be 0 (any) or 1..65535")
        with interruptible():
            if args.serve:
                serve_playground(options, say=console.print, playground_port=args.playground_port)
                return 0
            result = run_demo(options, say=console.print, console=console)
    except LocalSetupError as error:
        console.print(f"[red]error:[/red] {error}")
        return 1
    except KeyboardInterrupt:
        if args.serve:
            console.print("stopped the playground, gateway, emulator and vLLM")
            return 0
        console.print("[yellow]interrupted:[/yellow] stopped the engines, emulator and gateway; "
                      f"results so far are under {args.out}/")
        return 130
    console.print()
    print_overhead(overhead_table(result.direct, result.gateway), console)
    console.print(f"gateway wrote {result.gateway_metric_lines} EMF metric records to")
    console.print(f"  {options.out / 'logs' / 'gateway.log'}", highlight=False)
    console.print(f"results ({time.monotonic() - started:.0f}s in all), one folder per run:")
    for label, path in ((LABELS[0], result.direct), (LABELS[1], result.gateway), (BASELINE_LABEL, result.baseline),
                        ("comparison", result.comparison / "compare.md")):
        console.print(f"  {label:<13} {path if path is not None else '(not built: make engine)'}", highlight=False)
    console.print(f"Note: {WHAT_THE_NUMBERS_ARE}.")
    return result.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
