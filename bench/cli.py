"""`python -m bench URL [flags]` and its subcommands: compare, mock-server, plan, recommend.

Exit codes: 0 done; 1 every request failed (or a worker crashed); 2 bad arguments or input (one line on
stderr); 3 stopped by --max-error-rate; 4 over 1% of a level's requests failed (--allow-errors: 0);
5 a level was invalid, the client the bottleneck (only with --strict); 130 interrupted (partial results written).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
from pathlib import Path

from bench.cli_base import USAGE_EXIT, ArgParser, interruptible
from bench.config import DEFAULT_RATE_CAP, BenchConfig, UsageError

SUBCOMMANDS = ("compare", "mock-server", "plan", "recommend", "merge", "k8s-job", "wait")


def parse_duration(text: str, flag: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise UsageError(f"{flag} {text!r}: expected a positive duration like 90, 90s, 5m, 1h or 500ms")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


def parse_int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        values = ()
    if not values or any(v < 1 for v in values):
        raise UsageError(f"{flag} {text!r}: expected positive integers separated by commas, e.g. 6,12,24,32")
    return values


def parse_rates(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        values = ()
    if not values or any(not v > 0 for v in values):
        raise UsageError(f"--rate {text!r}: expected request rates (req/s) > 0 separated by commas, e.g. 2,4,8")
    return values


def parse_fraction(text: str, flag: str) -> float:
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        value = -1
    if not 0 < value <= 1:
        raise UsageError(f"{flag} {text!r}: expected a fraction in (0, 1] or a percentage like 5%")
    return value


def _positive(value: float | None, flag: str) -> float | None:
    if value is not None and not value > 0:
        raise UsageError(f"{flag} {value!r}: must be > 0")
    return value


def build_parser() -> ArgParser:
    p = ArgParser(
        prog="python -m bench",
        description="Benchmark an OpenAI-compatible streaming endpoint: TTFT, ITL, TPOT, E2E, throughput, "
        "goodput and cost per 1k tokens, per load level. Subcommands: compare DIR..., mock-server, plan, "
        "recommend, wait (run `python -m bench SUBCOMMAND --help`).",
    )
    p.add_argument("url", nargs="?", help="OpenAI base URL (https://host/v1) or a full .../chat/completions URL")
    t = p.add_argument_group("target")
    t.add_argument("--api-key", help="API key (default: $BENCH_API_KEY, then $OPENAI_API_KEY)")
    t.add_argument("--model", help="model name (default: the first one GET /models lists)")
    t.add_argument("--stack", help="read url, apiKey, pricePerHour from `pulumi stack output -s NAME`")
    t.add_argument("--stack-cwd", help="directory of the Pulumi project for --stack (default: here)")
    t.add_argument(
        "--sigv4",
        nargs="?",
        const="auto",
        metavar="REGION",
        help="sign requests with AWS SigV4 (IAM-auth Lambda Function URLs); region from the URL by default",
    )
    t.add_argument("--sigv4-service", default="lambda", help="SigV4 service name (default lambda)")
    t.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'", help="extra request header")
    t.add_argument("--http2", action="store_true", help="use HTTP/2 (httpx + h2) instead of HTTP/1.1 (aiohttp)")
    t.add_argument("--timeout", default="120s", help="per-request limit, whole reply (default 120s)")

    load = p.add_argument_group("load")
    load.add_argument("--concurrency", help="closed-loop levels (default 6,12,24,32); with --rate: the in-flight cap")
    load.add_argument("--rate", help="open-loop arrival rates in req/s, one level each, e.g. 1,2,4")
    load.add_argument("--arrival", choices=("poisson", "constant"), default="poisson", help="with --rate")
    load.add_argument("--requests", type=int, help="measured requests per level")
    load.add_argument("--duration", help="per level, e.g. 60s or 5m (default 60s unless --requests)")
    load.add_argument("--warmup", type=int, help="unmeasured requests first (default: one per concurrency slot)")
    load.add_argument("--workers", type=int, default=1, help="load processes (default 1; 0 = in this process)")
    load.add_argument("--max-error-rate", help="stop when more than this fraction fails, e.g. 0.2 or 20%%")
    load.add_argument("--allow-errors", action="store_true",
                      help="exit 0 even when over 1%% of a level's requests failed (exit 4 otherwise); "
                      "they are still counted and warned about")
    load.add_argument("--strict", action="store_true",
                      help="exit 5 when a level is invalid: the client (lag, send delay, CPU) was the bottleneck")

    prompts = p.add_argument_group("prompts")
    prompts.add_argument("--prompt-tokens", default="128",
                         help="N, normal:MEAN,STDEV, uniform:LOW,HIGH or lengths:SHAREGPT_FILE (default 128)")
    prompts.add_argument("--max-tokens", default="64", help="output tokens asked for, same forms (default 64)")
    prompts.add_argument("--dataset", help="JSONL, one {\"prompt\": ...} or {\"messages\": [...]} per line")
    prompts.add_argument("--extra-body", help="JSON object merged into every request, e.g. '{\"ignore_eos\": true}'")
    prompts.add_argument("--no-usage", action="store_true", help="do not send stream_options.include_usage")
    prompts.add_argument("--seed", type=int, default=0)
    from bench import workload_cli

    workload_cli.add_arguments(p)
    from bench import profile_cli

    profile_cli.add_arguments(p)

    cost = p.add_argument_group("cost and SLO")
    cost.add_argument("--price-per-hour", type=float, help="USD per hour of one instance")
    cost.add_argument("--instance", help="look the hourly price up in the catalog, e.g. ml.g5.2xlarge")
    cost.add_argument("--instance-count", type=int, default=1, help="instances behind the endpoint (default 1)")
    cost.add_argument("--slo-ttft-ms", type=float)
    cost.add_argument("--slo-tpot-ms", type=float)
    cost.add_argument("--slo-e2e-ms", type=float)

    out = p.add_argument_group("output")
    out.add_argument("--out", help="results directory (default results/bench-<UTC time>)")
    out.add_argument("--label", help="name of this run in reports and `compare` (default: stack or host)")
    out.add_argument("--no-progress", action="store_true", help="no live display")
    out.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    out.add_argument("--allow-buffered", action="store_true", help="measure non-streamed JSON replies (TTFT = E2E)")

    adv = p.add_argument_group("client internals (for checking the client itself)")
    adv.add_argument("--stamping", choices=("protocol", "task"), default="protocol", help=argparse.SUPPRESS)
    adv.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto", help="worker event loop")
    from bench import search, server_metrics

    search.add_arguments(p)
    server_metrics.add_arguments(p)
    return p


def _headers(items: list[str]) -> dict:
    headers = {}
    for item in items:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise UsageError(f"--header {item!r}: expected 'Name: value'")
        headers[name.strip()] = value.strip()
    return headers


def config_from_args(args: argparse.Namespace, env_key=None) -> BenchConfig:
    """Validate everything before a single request goes out; raises UsageError naming the flag."""
    from bench import target
    from bench.stats import Slo

    url, api_key, price, price_source = args.url, args.api_key, None, None
    stack_capacity = level_capacity = None
    if args.stack:
        stack = target.from_stack(args.stack, args.stack_cwd)
        stack_capacity = stack.get("capacity")
        level_capacity = stack.get("level_capacity")  # instances per level (bench.level_capacity)
        url = url or stack["url"]
        api_key = api_key or stack["api_key"]
        if stack["price_per_hour"] is not None:
            price, price_source = stack["price_per_hour"], f"stack {args.stack} pricePerHour"
    if not url:
        raise UsageError("no URL: give the endpoint's base URL (https://host/v1) or --stack NAME")
    base_url, endpoint = target.endpoints(url)
    api_key = api_key or (env_key() if env_key else target.api_key_from_env())

    if args.price_per_hour is not None and args.instance:
        raise UsageError("give --price-per-hour or --instance, not both")
    if args.price_per_hour is not None:
        price, price_source = _positive(args.price_per_hour, "--price-per-hour"), "--price-per-hour"
    elif args.instance:
        from planning import catalog

        try:
            price, price_source = catalog.hourly_price(args.instance), f"catalog {args.instance}"
        except catalog.UnknownInstance as exc:
            raise UsageError(f"--instance: {exc.args[0]}") from None
    if args.instance_count < 1:
        raise UsageError(f"--instance-count {args.instance_count}: must be >= 1")

    rates = parse_rates(args.rate) if args.rate else None
    if rates:
        conc = parse_int_list(args.concurrency, "--concurrency") if args.concurrency else (DEFAULT_RATE_CAP,)
        if len(conc) != 1:
            raise UsageError("with --rate, --concurrency is the in-flight cap: give one number")
    else:
        conc = parse_int_list(args.concurrency or "6,12,24,32", "--concurrency")
    from bench import search as search_flags
    from bench import server_metrics

    search, search_concurrency = search_flags.from_args(args, parse_fraction, DEFAULT_RATE_CAP)
    if search is not None:
        conc = search_concurrency
    metrics_settings = server_metrics.settings(args, parse_duration)
    if args.requests is not None and args.requests < 1:
        raise UsageError(f"--requests {args.requests}: must be >= 1")
    duration = parse_duration(args.duration, "--duration") if args.duration else None
    if duration is None and args.requests is None:
        duration = 60.0
    if args.warmup is not None and args.warmup < 0:
        raise UsageError(f"--warmup {args.warmup}: must be >= 0")
    from bench import profile_cli

    profile = profile_cli.settings(args, parse_duration, parse_fraction, stack_capacity)  # --profile & co
    if profile:
        conc, duration = profile.pop("concurrency"), profile["profile"].duration_s
    elif level_capacity:
        profile = {"capacity": level_capacity}
    if args.workers < 0:
        raise UsageError(f"--workers {args.workers}: must be >= 0 (0 runs the load in this process)")

    from bench import workload_cli

    workload = workload_cli.settings(args, parse_duration)  # the dataset is read now: errors name the line

    extra_body = None
    if args.extra_body:
        try:
            extra_body = json.loads(args.extra_body)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--extra-body: not valid JSON ({exc.msg})") from None
        if not isinstance(extra_body, dict):
            raise UsageError("--extra-body: must be a JSON object")

    sigv4 = None
    if args.sigv4:
        region = args.sigv4 if args.sigv4 != "auto" else (
            target.lambda_region(endpoint) or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        )
        if not region:
            raise UsageError("--sigv4: no region in the URL or AWS_REGION; pass it: --sigv4 us-east-1")
        sigv4 = {"region": region, "service": args.sigv4_service}
        from bench.backend import SigV4Signer

        try:
            SigV4Signer(**sigv4)
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    slo = Slo(
        _positive(args.slo_ttft_ms, "--slo-ttft-ms"),
        _positive(args.slo_tpot_ms, "--slo-tpot-ms"),
        _positive(args.slo_e2e_ms, "--slo-e2e-ms"),
    )
    timeout_s = parse_duration(args.timeout, "--timeout")
    max_error_rate = parse_fraction(args.max_error_rate, "--max-error-rate") if args.max_error_rate else None
    headers = _headers(args.header)
    out_dir = Path(args.out) if args.out else Path("results") / dt.datetime.now(dt.UTC).strftime("bench-%Y%m%d-%H%M%S")

    model = args.model
    if not model:
        probe = BenchConfig(url=endpoint, base_url=base_url, model="", api_key=api_key, sigv4=sigv4, extra_headers=headers)
        model = target.discover_model(base_url, probe.request_headers())

    return BenchConfig(
        url=endpoint,
        base_url=base_url,
        model=model,
        api_key=api_key,
        concurrency=conc,
        rates=rates,
        arrival=args.arrival,
        requests=args.requests,
        duration_s=duration,
        warmup=args.warmup,
        dataset=args.dataset,
        price_per_hour=price,
        price_source=price_source,
        instance_count=args.instance_count,
        slo=slo,
        timeout_s=timeout_s,
        workers=args.workers,
        http2=args.http2,
        out_dir=out_dir,
        stack=args.stack,
        sigv4=sigv4,
        extra_headers=headers,
        extra_body=extra_body,
        include_usage=not args.no_usage,
        allow_buffered=args.allow_buffered,
        max_error_rate=max_error_rate,
        allow_errors=args.allow_errors,
        strict=args.strict,
        seed=args.seed,
        stamping="task" if args.http2 else args.stamping,
        loop=args.loop,
        progress=not args.no_progress,
        label=args.label or args.stack or (urlparse_host(base_url)),
        search=search,
        **metrics_settings,
        **workload,
        **profile,
    )


def urlparse_host(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).hostname or url


def run_bench(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from bench.prompts import PromptError

    try:
        cfg = config_from_args(args)
    except (UsageError, PromptError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return USAGE_EXIT
    from bench.progress import Display
    from bench.report import write_outputs
    from bench.runner import run_benchmark

    display = Display(enabled=cfg.progress)
    display.banner(cfg)
    with interruptible():
        result = run_benchmark(cfg, display)
    display.close()
    write_outputs(result.summary, cfg.out_dir, charts=not args.no_charts)
    display.final(result.summary, cfg.out_dir, result.exit_code)
    return result.exit_code


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m bench` and `bench.run`; returns the exit code (argparse exits become codes)."""
    try:
        return _dispatch(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else USAGE_EXIT)


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] in SUBCOMMANDS:
        command, rest = argv[0], argv[1:]
        if command == "compare":
            from bench.compare import main as compare_main

            return compare_main(rest)
        if command == "merge":
            from bench.merge import main as merge_main

            return merge_main(rest)
        if command == "k8s-job":
            from bench.k8s_job import main as k8s_job_main

            return k8s_job_main(rest)
        if command == "wait":
            from bench.wait import main as wait_main

            return wait_main(rest)
        if command == "mock-server":
            from bench.mock_server import main as mock_main

            return mock_main(rest)
        if command == "plan":
            from planning.planner import main as plan_main

            return plan_main(rest)
        from planning.recommend import main as recommend_main

        return recommend_main(rest)
    try:
        return run_bench(argv)
    except KeyboardInterrupt:
        return 130
