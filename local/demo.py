"""The local demo: the whole AWS data path on this machine, measured (`make demo` / `python -m local.demo`).

    bench -> gateway app (uvicorn, the Lambda's Starlette app) -> boto3 InvokeEndpointWithResponseStream
          -> SageMaker-runtime emulator (real event-stream wire format) -> llama-server (random-weight Llama)

It builds llama-server (cached outside the clone), writes the model (cached), starts the engine, the
emulator and the gateway on free loopback ports, runs the bench at a few concurrency levels against the
engine directly and through the gateway, writes `<out>/local-direct/`, `<out>/local-gateway/` and
`<out>/comparison/`, prints what the gateway adds, and stops everything it started (also on Ctrl-C or
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

from local._sources import LocalSetupError
from local.engine import EngineBuild, LlamaServer, ServerOptions, free_port, require_free_port, wait_healthy
from local.model import SIZES

ROOT = Path(__file__).resolve().parent.parent
ENDPOINT_NAME = "local-llm"
MODEL_ALIAS = "local-llama"
LABELS = ("local-direct", "local-gateway")


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
    progress: bool = True

    def __post_init__(self) -> None:
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


def gateway_environment(emulator_url: str, api_key: str) -> dict[str, str]:
    """What the Lambda gets from the gateway component, pointed at the emulator; dummy AWS credentials."""
    from gateway.settings import Settings  # lambda/ is on sys.path (see _lambda_on_path)

    settings = Settings(
        endpoint_name=ENDPOINT_NAME,
        region="us-east-1",
        model_id=MODEL_ALIAS,
        sagemaker_endpoint_url=emulator_url,
        api_key=api_key,
        read_timeout_seconds=120.0,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GATEWAY_"))}
    env.update(settings.environment())
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


def bench_argv(url: str, options: DemoOptions, out_dir: Path, api_key: str | None = None) -> list[str]:
    argv = [
        url, "--model", MODEL_ALIAS,
        "--concurrency", options.concurrency,
        "--requests", str(options.requests),
        "--max-tokens", str(options.max_tokens),
        "--prompt-tokens", str(options.prompt_tokens),
        "--out", str(out_dir),
    ]
    if api_key:
        argv += ["--api-key", api_key]
    if not options.progress:
        argv.append("--no-progress")
    return argv


def run_demo(options: DemoOptions, say: Callable[[str], None] = print, console=None) -> DemoResult:
    """Start engine, emulator and gateway, bench both paths, compare; stop everything on the way out."""
    import bench
    from local.engine import build_with_progress
    from local.model import ensure_model

    _lambda_on_path()
    out = options.out
    logs = out / "logs"
    # Ports first: a port in use is the user's to fix before a long build starts.
    engine_port = _port(options.engine_port, "llama-server")
    emulator_port = _port(options.emulator_port, "the SageMaker-runtime emulator")
    gateway_port = _port(options.gateway_port, "the gateway")

    started = time.monotonic()
    if console is not None:
        binary = build_with_progress(EngineBuild(portable=not options.native), console)
    else:
        from local.engine import build_engine

        binary = build_engine(EngineBuild(portable=not options.native), log=say)
    model = ensure_model(options.size, options.seed)
    say(f"engine {binary} ({time.monotonic() - started:.1f}s), model {model.name}")

    api_key = secrets.token_urlsafe(24)
    codes: list[int] = []
    with ExitStack() as stack:
        engine = stack.enter_context(LlamaServer.start(
            binary,
            ServerOptions(model=model, port=engine_port, parallel=options.parallel, threads=options.threads,
                          ctx_per_slot=options.ctx_per_slot, alias=MODEL_ALIAS),
            logs / "llama-server.log",
            ready_timeout_s=options.ready_timeout_s,
        ))
        say(f"llama-server  {engine.openai_url}  ({options.parallel} slots, {options.threads} threads)")

        emulator_log = logs / "sagemaker-emulator.log"
        emulator = stack.enter_context(child_process(
            [sys.executable, "-m", "local.sagemaker_runtime", "--forward", engine.openai_url,
             "--endpoint-name", ENDPOINT_NAME, "--port", str(emulator_port)],
            emulator_log,
        ))
        emulator_url = f"http://127.0.0.1:{emulator_port}"
        wait_healthy(emulator_url + "/ping", emulator, emulator_log, "the SageMaker-runtime emulator", 30)
        say(f"SageMaker runtime emulator  {emulator_url}  (endpoint {ENDPOINT_NAME})")

        # The gateway's stdout is its EMF metric lines, as CloudWatch Logs would receive them.
        gateway_log = logs / "gateway.log"
        gateway = stack.enter_context(child_process(
            [sys.executable, "-m", "uvicorn", "gateway.app:app", "--host", "127.0.0.1", "--port", str(gateway_port),
             "--no-access-log", "--log-level", "warning"],
            gateway_log,
            env=gateway_environment(emulator_url, api_key),
        ))
        gateway_url = f"http://127.0.0.1:{gateway_port}"
        wait_healthy(gateway_url + "/health", gateway, gateway_log, "the gateway", 30)
        say(f"gateway  {gateway_url}/v1  (API key required)")

        direct, through = out / LABELS[0], out / LABELS[1]
        say("\n[1/2] bench -> llama-server")
        codes.append(_bench(bench_argv(engine.openai_url, options, direct)))
        say("\n[2/2] bench -> gateway -> boto3 -> emulator -> llama-server")
        codes.append(_bench(bench_argv(gateway_url + "/v1", options, through, api_key)))
        metric_lines = count_emf_lines(gateway_log)

    comparison = out / "comparison"
    codes.append(bench.run(["compare", str(direct), str(through), "--labels", ",".join(LABELS),
                            "--out", str(comparison)]))
    return DemoResult(direct, through, comparison, max(codes), metric_lines)


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
        description="Run llama.cpp, the gateway app and a SageMaker-runtime emulator here, and benchmark them.",
    )
    parser.add_argument("--out", type=Path, default=Path("results"), help="results folder (default results/)")
    parser.add_argument("--size", default="tiny", choices=sorted(SIZES), help="random-weight model size")
    parser.add_argument("--seed", type=int, default=0, help="model weights seed")
    parser.add_argument("--concurrency", default="1,4,8", help="bench concurrency levels (default 1,4,8)")
    parser.add_argument("--requests", type=int, default=24, help="requests per level (default 24)")
    parser.add_argument("--max-tokens", type=int, default=32, help="completion tokens per request (default 32)")
    parser.add_argument("--prompt-tokens", type=int, default=64, help="prompt tokens per request (default 64)")
    parser.add_argument("--parallel", type=int, default=8, help="llama-server slots (default 8)")
    parser.add_argument("--threads", type=int, default=DemoOptions.threads,
                        help=f"llama-server compute threads (default {DemoOptions.threads}: half the cores)")
    parser.add_argument("--native", action="store_true", help="build llama-server tuned for this CPU")
    parser.add_argument("--engine-port", type=int, default=0, help="llama-server port (default: a free one)")
    parser.add_argument("--emulator-port", type=int, default=0, help="emulator port (default: a free one)")
    parser.add_argument("--gateway-port", type=int, default=0, help="gateway port (default: a free one)")
    parser.add_argument("--no-progress", action="store_true", help="no live progress display")
    args = parser.parse_args(argv)

    from rich.console import Console

    console = Console(stderr=True)
    from bench.cli import interruptible

    started = time.monotonic()
    # SIGTERM (CI, a supervisor) and Ctrl-C, even when started in the background, take the clean-up path.
    try:
        options = DemoOptions(
            out=args.out, size=args.size, seed=args.seed, concurrency=args.concurrency, requests=args.requests,
            max_tokens=args.max_tokens, prompt_tokens=args.prompt_tokens, parallel=args.parallel,
            threads=args.threads, native=args.native, engine_port=args.engine_port, emulator_port=args.emulator_port,
            gateway_port=args.gateway_port, progress=not args.no_progress,
        )
        with interruptible():
            result = run_demo(options, say=console.print, console=console)
    except LocalSetupError as error:
        console.print(f"[red]error:[/red] {error}")
        return 1
    except KeyboardInterrupt:
        console.print("[yellow]interrupted:[/yellow] stopped the engine, emulator and gateway; "
                      f"results so far are under {args.out}/")
        return 130
    console.print()
    print_overhead(overhead_table(result.direct, result.gateway), console)
    console.print(
        f"gateway wrote {result.gateway_metric_lines} EMF metric records ({options.out / 'logs' / 'gateway.log'})\n"
        f"results: {result.direct}/, {result.gateway}/, {result.comparison}/compare.md  "
        f"({time.monotonic() - started:.0f}s in all)"
    )
    return result.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
