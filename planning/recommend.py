"""From a bench run to the autoscaling target: `python -m bench recommend RESULTS_DIR --slo-...`.

Reads the run's summary.json, checks every load level against the SLO (at a percentile, p95 by
default; errors count against it), takes the highest per-instance load that met it, and turns that
into the target the stack's autoscaling policy should hold: output tokens per minute per instance
(and, for the stacks that scale on it, concurrent requests per instance), minus a headroom for the
time a scale-out takes. It prints the `pulumi config set` lines for the stack, and, per level, what
the planner predicted against what was measured.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from planning import catalog, planner

PERCENTILES = ("p50", "p90", "p95", "p99", "max", "mean")
PROJECT = "llm-inference"

# What each stack's autoscaler holds per instance (keys of Pulumi.yaml) and which measure feeds it.
# The azure stack is one VM without an autoscaler: it gets the capacity figure, no config line.
AUTOSCALING_KEYS: dict[str, dict[str, str]] = {
    "aws": {
        "targetTokensPerMinutePerInstance": "tokens_per_minute",
        "targetConcurrentRequestsPerInstance": "concurrent_requests",
    },
    "azure": {},
    "gcp": {"gkeTargetTokensPerSecondPerPod": "tokens_per_second", "gkeTargetWaitingRequestsPerPod": "waiting_requests"},
}
# The server's own view of a level (bench.server_metrics scrapes vLLM's /metrics while it runs).
WAITING_METRIC = "vllm:num_requests_waiting"
GENERATION_METRIC = "vllm:generation_tokens_total"


class RecommendError(ValueError):
    """Input that cannot be used: one line, exit 2."""


@dataclass(frozen=True)
class SloTargets:
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None
    percentile: str = "p95"
    max_error_rate: float = 0.01

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.ttft_ms, self.tpot_ms, self.e2e_ms))

    def describe(self) -> str:
        parts = [
            f"{name} {self.percentile} <= {value:g} ms"
            for name, value in (("TTFT", self.ttft_ms), ("TPOT", self.tpot_ms), ("E2E", self.e2e_ms))
            if value is not None
        ]
        return ", ".join(parts) + f", errors <= {self.max_error_rate:.1%}"


@dataclass
class LevelVerdict:
    index: int
    label: str
    concurrency: float  # per instance: slots (closed loop) or rate x mean E2E (open loop)
    rate: float | None
    requests: int
    error_rate: float
    tokens_per_s: float  # per instance
    requests_per_s: float  # per instance
    prompt_tokens: float  # per request
    output_tokens: float  # per request
    measured: dict[str, float | None]  # ttft/tpot/e2e at the percentile
    misses: list[str] = field(default_factory=list)
    predicted: planner.Estimate | None = None
    waiting: float | None = None  # mean requests in the server's queue (its /metrics), None when not scraped
    server_tokens_per_s: float | None = None  # the server's generation tokens/s (its /metrics)

    @property
    def met(self) -> bool:
        return not self.misses

    def to_dict(self) -> dict[str, Any]:
        out = {
            "level": self.index,
            "label": self.label,
            "concurrency_per_instance": round(self.concurrency, 3),
            "rate": self.rate,
            "requests": self.requests,
            "error_rate": round(self.error_rate, 4),
            "output_tokens_per_s_per_instance": round(self.tokens_per_s, 3),
            "requests_per_s_per_instance": round(self.requests_per_s, 4),
            "prompt_tokens_per_request": round(self.prompt_tokens, 1),
            "output_tokens_per_request": round(self.output_tokens, 1),
            "measured_ms": self.measured,
            "met_slo": self.met,
            "misses": self.misses,
            "server_waiting_requests_mean": self.waiting,
            "server_generation_tokens_per_s": self.server_tokens_per_s,
        }
        if self.predicted is not None:
            p = self.predicted
            out["predicted"] = p.to_dict()
            out["measured_over_predicted_throughput"] = (
                round(self.tokens_per_s / p.output_tokens_per_s, 4) if p.problem is None else None
            )
        return out


@dataclass
class Recommendation:
    summary_path: Path
    model: str
    slo: SloTargets
    headroom: float
    instance_count: int
    instance: str | None
    stack: str | None
    cloud: str | None
    levels: list[LevelVerdict]
    chosen: LevelVerdict | None
    tokens_per_minute: int | None
    tokens_per_second: int | None
    concurrent_requests: int | None
    waiting_requests: int | None
    notes: list[str]
    plan_note: str | None

    def config_lines(self) -> list[str]:
        if self.chosen is None or self.cloud is None or self.stack is None:
            return []
        values = {
            "tokens_per_minute": self.tokens_per_minute,
            "tokens_per_second": self.tokens_per_second,
            "concurrent_requests": self.concurrent_requests,
            "waiting_requests": self.waiting_requests,
        }
        return [
            f"pulumi config set {PROJECT}:{key} {values[measure]} -s {self.stack}"
            for key, measure in AUTOSCALING_KEYS[self.cloud].items()
            if values[measure] is not None  # not measured (no server metrics): the stack's value stays
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": str(self.summary_path),
            "model": self.model,
            "instance": self.instance,
            "instance_count": self.instance_count,
            "stack": self.stack,
            "cloud": self.cloud,
            "slo": {**self.slo.__dict__},
            "headroom": self.headroom,
            "levels": [lv.to_dict() for lv in self.levels],
            "chosen_level": self.chosen.index if self.chosen else None,
            "target_tokens_per_minute_per_instance": self.tokens_per_minute,
            "target_tokens_per_second_per_instance": self.tokens_per_second,
            "target_concurrent_requests_per_instance": self.concurrent_requests,
            "target_waiting_requests_per_instance": self.waiting_requests,
            "formula": {
                "target_waiting_requests_per_instance": "max(1, floor(server's mean waiting requests x (1 - headroom)))",
                "target_tokens_per_minute_per_instance":
                    "output tok/s per instance x 60 x (1 - headroom), rounded down to 2 significant figures",
                "target_tokens_per_second_per_instance":
                    "output tok/s per instance x (1 - headroom), rounded down to 2 significant figures",
                "target_concurrent_requests_per_instance": "max(1, floor(concurrency per instance x (1 - headroom)))",
            },
            "pulumi_config": self.config_lines(),
            "notes": self.notes,
            "planner": self.plan_note,
        }


# ------------------------------------------------------------------------------------------ reading


def load_summary(results: str | Path) -> tuple[Path, dict[str, Any]]:
    """The summary.json of a results directory (or the file itself)."""
    path = Path(results)
    if path.is_dir():
        path = path / "summary.json"
    if not path.exists():
        raise RecommendError(f"{path}: no such file; give a bench results directory (it holds summary.json)")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise RecommendError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("levels"), list):
        raise RecommendError(f"{path}: not a bench summary (no 'levels' list)")
    if not data["levels"]:
        raise RecommendError(f"{path}: the run measured no load level (status {data.get('status', '?')!r})")
    return path, data


def _number(level: Mapping[str, Any], key: str, where: str) -> float:
    value = level.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value) or value < 0:
        raise RecommendError(f"{where}: {key!r} must be a number >= 0, got {value!r}")
    return float(value)


def _percentile(level: Mapping[str, Any], metric: str, percentile: str) -> float | None:
    stats = level.get(metric)
    if not isinstance(stats, Mapping):
        return None
    value = stats.get(percentile)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def judge_level(index: int, level: Mapping[str, Any], slo: SloTargets, instance_count: int, fixed_prompt: int | None) -> LevelVerdict:
    where = f"level {index}"
    requests = int(_number(level, "requests", where))
    succeeded = int(_number(level, "succeeded", where))
    failed = requests - succeeded
    tokens_per_s = _number(level, "output_throughput_tok_s", where)
    rps = _number(level, "request_throughput_rps", where)
    rate = level.get("rate")
    mean_e2e = _percentile(level, "e2e_ms", "mean")
    if rate is not None:
        # Open loop: the load is the arrival rate; Little's law gives the requests in flight.
        in_flight = rps * (mean_e2e or 0) / 1000
        label = f"rate={float(rate):g}/s"
    else:
        in_flight = _number(level, "concurrency", where)
        label = f"c={int(in_flight)}"
    measured = {m: _percentile(level, f"{m}_ms", slo.percentile) for m in ("ttft", "tpot", "e2e")}
    error_rate = failed / requests if requests else 1.0
    misses = []
    if requests == 0 or succeeded == 0:
        misses.append("no request succeeded")
    elif error_rate > slo.max_error_rate:
        misses.append(f"errors {error_rate:.1%} > {slo.max_error_rate:.1%}")
    for metric, limit in (("ttft", slo.ttft_ms), ("tpot", slo.tpot_ms), ("e2e", slo.e2e_ms)):
        if limit is None or not succeeded:
            continue
        value = measured[metric]
        if value is None:
            misses.append(f"no {metric.upper()} measured")
        elif value > limit:
            misses.append(f"{metric.upper()} {slo.percentile} {value:,.0f} > {limit:g} ms")
    prompt = (level.get("prompt_tokens") or 0) / succeeded if succeeded else 0.0
    if not prompt and fixed_prompt:
        prompt = float(fixed_prompt)
    output = (level.get("output_tokens") or 0) / succeeded if succeeded else 0.0
    server = level.get("server_metrics") if isinstance(level.get("server_metrics"), Mapping) else {}
    waiting = (server.get(WAITING_METRIC) or {}).get("mean")
    generation = (server.get(GENERATION_METRIC) or {}).get("rate_per_s")
    return LevelVerdict(
        index=index,
        label=label,
        concurrency=in_flight / instance_count,
        rate=float(rate) if rate is not None else None,
        requests=requests,
        error_rate=error_rate,
        tokens_per_s=tokens_per_s / instance_count,
        requests_per_s=rps / instance_count,
        prompt_tokens=prompt,
        output_tokens=output,
        measured=measured,
        misses=misses,
        waiting=float(waiting) if isinstance(waiting, int | float) else None,
        server_tokens_per_s=float(generation) if isinstance(generation, int | float) else None,
    )


def _cloud_of(stack: str | None, url: str | None) -> str | None:
    if stack in catalog.DEFAULT_REGIONS:
        return stack
    host = urlparse(url or "").hostname or ""
    if host.endswith("amazonaws.com") or host.endswith(".on.aws"):
        return "aws"
    if host.endswith("azure.com") or host.endswith("azure-api.net"):
        return "azure"
    if host.endswith("googleapis.com") or host.endswith(".run.app"):
        return "gcp"
    return None


def significant_floor(value: float, digits: int = 2) -> int:
    """`value` rounded down to `digits` significant figures (48,480 -> 48,000; 808 -> 800; 19 -> 19): a run's
    noise is larger than the last digits, and rounding down keeps the headroom."""
    if value < 10 ** digits:
        return int(value)
    scale = 10 ** (int(math.log10(value)) + 1 - digits)
    return int(value // scale * scale)


def _is_local(url: str) -> bool:
    host = urlparse(url or "").hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_link_local


def _normal_url(url: str | None) -> str:
    return (url or "").rstrip("/").removesuffix("/chat/completions")


def pulumi_stack_url(stack: str) -> str | None:
    """The stack's `url` output (`pulumi stack output url -s STACK`), or None when it cannot be read."""
    exe = shutil.which("pulumi")
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, "stack", "output", "url", "-s", stack], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def check_target(run_url: str | None, run_stack: str | None, stack: str, stack_url: str | None) -> str | None:
    """Why the run's figures are not stack `stack`'s (None when they are, or a note when that cannot be read).

    Raises RecommendError when the run measured another endpoint: a local CPU run's capacity turned into a
    cloud stack's autoscaling target would set it off by orders of magnitude."""
    run_url = _normal_url(run_url)
    fix = (f"bench the stack itself (`python -m bench --stack {stack}`) and recommend from that run, or pass "
           "--any-target to take these figures anyway")
    if stack_url is not None and run_url != _normal_url(stack_url):
        where = "a local endpoint" if _is_local(run_url) else "another endpoint"
        raise RecommendError(f"the run measured {run_url or '?'} ({where}), not stack {stack}'s url {stack_url}: "
                             f"its capacity is not that stack's; {fix}")
    if stack_url is None:
        if _is_local(run_url):
            raise RecommendError(f"the run measured {run_url} (a local endpoint), not stack {stack}: {fix}")
        if run_stack != stack:
            raise RecommendError(f"the run measured {run_url or '?'} without --stack {stack}, and the stack's url "
                                 f"could not be read to compare (pass --stack-url URL): {fix}")
        return f"the stack's url could not be read; trusting the run's --stack {stack} for its target {run_url}"
    return None


def _instance_from(config: Mapping[str, Any]) -> str | None:
    source = str(config.get("price_source") or "")
    if source.startswith("catalog "):
        return source.split(" ", 1)[1].strip() or None
    return None


def recommend(
    results: str | Path,
    slo: SloTargets,
    *,
    headroom: float = 0.2,
    stack: str | None = None,
    cloud: str | None = None,
    instance: str | None = None,
    instance_count: int | None = None,
    model: str | None = None,
    quantization: str | None = None,
    prompt_tokens: int | None = None,
    engine: planner.Engine | None = None,
    stack_url: str | None = None,
    read_stack_url: Callable[[str], str | None] | None = None,
    any_target: bool = False,
) -> Recommendation:
    """`stack_url` (or `read_stack_url(stack)`) is the stack's `url` output, checked against the run's target;
    `any_target` turns a mismatch into a loud note instead of a refusal."""
    path, summary = load_summary(results)
    config = summary.get("config") if isinstance(summary.get("config"), Mapping) else {}
    target = summary.get("target") if isinstance(summary.get("target"), Mapping) else {}
    if not slo.any:
        recorded = config.get("slo") if isinstance(config.get("slo"), Mapping) else {}
        slo = SloTargets(
            recorded.get("ttft_ms"), recorded.get("tpot_ms"), recorded.get("e2e_ms"), slo.percentile, slo.max_error_rate
        )
        if not slo.any:
            raise RecommendError(
                "no SLO: give at least one of --slo-ttft-ms, --slo-tpot-ms, --slo-e2e-ms (the run recorded none)"
            )
    if not 0 <= headroom < 1:
        raise RecommendError(f"--headroom must be in [0, 1), got {headroom:g}")
    count = instance_count or int(config.get("instance_count") or 1)
    if count < 1:
        raise RecommendError(f"instance count must be >= 1, got {count}")
    run_stack = config.get("stack") or None
    stack = stack or run_stack
    target_notes: list[str] = []
    if stack is not None:
        if stack_url is None and read_stack_url is not None:
            stack_url = read_stack_url(stack)
        try:
            note = check_target(target.get("url") or config.get("url"), run_stack, stack, stack_url)
        except RecommendError as err:
            if not any_target:
                raise
            note = f"WARNING, --any-target: {err}"
        if note:
            target_notes.append(note)
    cloud = cloud or _cloud_of(stack, target.get("url") or config.get("url"))
    if cloud is not None and cloud not in AUTOSCALING_KEYS:
        raise RecommendError(f"--cloud {cloud!r} is not one of: {', '.join(AUTOSCALING_KEYS)}")
    instance = instance or _instance_from(config) or (catalog.STACK_INSTANCES.get(cloud) if cloud else None)
    if instance is not None and instance not in catalog.INSTANCES:
        raise catalog.UnknownInstance(instance)
    model = model or target.get("model") or config.get("model") or ""
    configured_prompt = str(config.get("prompt_tokens") or "")
    fixed_prompt = prompt_tokens or (int(configured_prompt) if configured_prompt.isdigit() else None)

    levels = [judge_level(i, lv, slo, count, fixed_prompt) for i, lv in enumerate(summary["levels"])]
    notes: list[str] = target_notes
    plan_note = _predict(levels, model, quantization, instance, engine)

    passing = [lv for lv in levels if lv.met]
    chosen = max(passing, key=lambda lv: lv.tokens_per_s) if passing else None
    tokens_per_minute = tokens_per_second = concurrent = waiting = None
    if chosen is not None:
        tokens_per_minute = significant_floor(chosen.tokens_per_s * 60 * (1 - headroom))
        tokens_per_second = significant_floor(chosen.tokens_per_s * (1 - headroom))
        concurrent = max(1, int(chosen.concurrency * (1 - headroom)))
        if chosen.waiting is not None:
            # One /metrics answer is one pod's queue: per pod as measured, whatever the instance count.
            waiting = max(1, int(chosen.waiting * (1 - headroom)))
        elif cloud == "gcp":
            notes.append(
                f"{chosen.label} has no server metrics (the run did not scrape vLLM's /metrics): "
                "gkeTargetWaitingRequestsPerPod keeps the stack's value; rerun without --no-server-metrics"
            )
        heavier = [lv for lv in levels if lv.tokens_per_s > chosen.tokens_per_s or lv.concurrency > chosen.concurrency]
        if not heavier:
            notes.append(
                f"the heaviest level measured ({chosen.label}) still met the SLO: capacity may be higher; "
                "rerun with higher --concurrency/--rate levels to find the knee"
            )
        lighter_failed = [lv for lv in levels if not lv.met and lv.concurrency < chosen.concurrency]
        if lighter_failed:
            notes.append(
                f"{', '.join(lv.label for lv in lighter_failed)} missed the SLO although {chosen.label} met it: "
                "the run is noisy; repeat it before trusting the target"
            )
        if tokens_per_minute < 1:
            notes.append("the chosen level produced almost no tokens: check the run")
    if count > 1:
        notes.append(f"per-instance figures divide the endpoint's by {count} instances, assuming even balancing")
    sources = {lv.get("token_count_source") for lv in summary["levels"]}
    if sources & {"chunks", "mixed"}:
        notes.append("output tokens were counted as stream chunks for some replies (no usage): tokens/min may be off")
    if summary.get("status") not in (None, "complete"):
        notes.append(f"the run ended with status {summary.get('status')!r}: later levels are missing")
    if cloud is None or stack is None:
        notes.append("pass --stack NAME (and --cloud aws|azure|gcp when the name is neither) for the config lines")
    elif not AUTOSCALING_KEYS[cloud]:
        notes.append(
            f"the {cloud} stack runs one VM without an autoscaler: there is no target to set; plan on the "
            "tokens/min per VM below, or a larger vmSize"
        )
    return Recommendation(
        summary_path=path,
        model=model,
        slo=slo,
        headroom=headroom,
        instance_count=count,
        instance=instance,
        stack=stack,
        cloud=cloud,
        levels=levels,
        chosen=chosen,
        tokens_per_minute=tokens_per_minute,
        tokens_per_second=tokens_per_second,
        concurrent_requests=concurrent,
        waiting_requests=waiting,
        notes=notes,
        plan_note=plan_note,
    )


def _predict(
    levels: list[LevelVerdict],
    model: str,
    quantization: str | None,
    instance: str | None,
    engine: planner.Engine | None,
) -> str | None:
    """Attach the planner's estimate to each level; a note when no prediction can be made."""
    spec = catalog.resolve_model(model, quantization) if model else None
    if spec is None:
        return f"no prediction: the catalog cannot size model {model!r} (pass --model with a catalog name)"
    if instance is None:
        return "no prediction: unknown instance type (pass --instance)"
    memory = planner.plan_memory(spec, catalog.instance(instance), engine or planner.Engine())
    if not memory.fits:
        return f"no prediction: {memory.problem}"
    for lv in levels:
        if lv.output_tokens < 1 or lv.concurrency <= 0:
            continue
        workload = planner.Workload(
            prompt_tokens=max(1, round(lv.prompt_tokens)),
            output_tokens=max(1, round(lv.output_tokens)),
            concurrency=max(1, round(lv.concurrency)),
        )
        lv.predicted = planner.estimate(memory, workload)
    return f"predicted: {spec.label} on {instance}, roofline at 100% of peak (python -m bench plan)"


# ---------------------------------------------------------------------------------------------- CLI


def parser() -> argparse.ArgumentParser:
    p = planner._Parser(
        prog="python -m bench recommend",
        description="The highest per-instance load of a bench run that meets the SLO, as the autoscaling "
        "target of the stack (pulumi config set lines), with the planner's prediction next to each level.",
    )
    p.add_argument("results", help="bench results directory (holding summary.json) or the summary.json itself")
    p.add_argument("--slo-ttft-ms", type=_positive_float, help="TTFT limit at the percentile")
    p.add_argument("--slo-tpot-ms", type=_positive_float, help="TPOT limit at the percentile")
    p.add_argument("--slo-e2e-ms", type=_positive_float, help="E2E limit at the percentile")
    p.add_argument("--slo-percentile", choices=PERCENTILES, default="p95", help="default p95")
    p.add_argument("--max-error-rate", type=_fraction, default=0.01,
                   help="failed fraction a level may have and still pass (default 0.01)")
    p.add_argument("--headroom", type=_fraction, default=0.2,
                   help="fraction kept free below the measured capacity for scale-out time (default 0.2)")
    p.add_argument("--stack", help="stack the lines are for (default: the run's --stack)")
    p.add_argument("--cloud", choices=list(AUTOSCALING_KEYS), help="when the stack name is not the cloud")
    p.add_argument("--instance", help="instance type benchmarked (default: from the run's price, else the stack's)")
    p.add_argument("--instances", type=planner._arg_positive_int,
                   help="instances behind the endpoint during the run (default: the run's --instance-count)")
    p.add_argument("--model", help="model for the prediction (default: the run's; a catalog name or HF id)")
    p.add_argument("--quantization", choices=list(catalog.QUANTIZATIONS))
    p.add_argument("--prompt-tokens", type=planner._arg_positive_int,
                   help="prompt tokens per request when the server reported none")
    p.add_argument("--max-model-len", type=planner._arg_positive_int, default=planner.Engine.max_model_len)
    p.add_argument("--max-batch-size", type=planner._arg_positive_int, default=planner.Engine.max_batch_size)
    p.add_argument("--gpu-memory-utilization", type=planner._arg_fraction,
                   default=planner.Engine.gpu_memory_utilization)
    p.add_argument("--stack-url", help="the stack's url output (default: read with `pulumi stack output url`)")
    p.add_argument("--any-target", action="store_true",
                   help="recommend even when the run did not measure the stack's url (a loud note instead of exit 2)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return p


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _fraction(text: str) -> float:
    text = text.strip()
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1) (or a percentage), got {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        rec = recommend(
            args.results,
            SloTargets(args.slo_ttft_ms, args.slo_tpot_ms, args.slo_e2e_ms, args.slo_percentile, args.max_error_rate),
            headroom=args.headroom,
            stack=args.stack,
            cloud=args.cloud,
            instance=args.instance,
            instance_count=args.instances,
            model=args.model,
            quantization=args.quantization,
            prompt_tokens=args.prompt_tokens,
            engine=planner.Engine(
                max_model_len=args.max_model_len,
                max_batch_size=args.max_batch_size,
                gpu_memory_utilization=args.gpu_memory_utilization,
            ),
            stack_url=args.stack_url,
            read_stack_url=pulumi_stack_url,
            any_target=args.any_target,
        )
    except (KeyError, ValueError) as err:
        print(f"python -m bench recommend: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rec.to_dict(), indent=2))
    else:
        render(rec)
    return 0 if rec.chosen is not None else 1


def render(rec: Recommendation, console: Any = None) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=None if sys.stdout.isatty() else 200)
    per = f" per instance (endpoint figures / {rec.instance_count})" if rec.instance_count > 1 else " per instance"
    console.print(f"[bold]{rec.summary_path}[/bold]: {rec.model or '?'} on {rec.instance or '?'}; SLO {rec.slo.describe()}")
    table = Table(title=f"Load levels{per}: measured vs predicted", box=box.SIMPLE_HEAVY, title_justify="left")
    pct = rec.slo.percentile
    for col in ("level", "conc.", "req", "err", f"TTFT {pct}", f"TPOT {pct}", f"E2E {pct}", "tok/s",
                "pred. tok/s", "meas./pred.", "pred. TTFT", "pred. TPOT", "SLO"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("level", "SLO") else "right")
    for lv in rec.levels:
        p = lv.predicted if lv.predicted is not None and lv.predicted.problem is None else None
        mark = "[green]met[/green]" if lv.met else f"[red]missed[/red]: {'; '.join(lv.misses)}"
        if lv is rec.chosen:
            mark = "[bold green]met, chosen[/bold green]"
        table.add_row(
            lv.label,
            f"{lv.concurrency:.3g}",
            str(lv.requests),
            f"{lv.error_rate:.1%}",
            _ms(lv.measured["ttft"]),
            _ms(lv.measured["tpot"]),
            _ms(lv.measured["e2e"]),
            f"{lv.tokens_per_s:,.0f}",
            f"{p.output_tokens_per_s:,.0f}" if p else "-",
            f"{lv.tokens_per_s / p.output_tokens_per_s:.0%}" if p else "-",
            _ms(p.ttft_ms) if p else "-",
            _ms(p.tpot_ms) if p else "-",
            mark,
        )
    console.print(table)
    if rec.plan_note:
        console.print(f"  {rec.plan_note}")
    for note in rec.notes:
        console.print(f"  [yellow]note[/yellow]: {note}")
    if rec.chosen is None:
        console.print("[red]No level met the SLO[/red]: measure lighter loads, relax the SLO, or use a bigger instance.")
        return
    lv = rec.chosen
    console.print(
        f"\nHighest load meeting the SLO: [bold]{lv.label}[/bold] = {lv.tokens_per_s:,.0f} output tok/s and "
        f"{lv.concurrency:.1f} concurrent requests per instance"
    )
    console.print(
        f"Target with {rec.headroom:.0%} headroom: [bold]{rec.tokens_per_minute:,}[/bold] tokens/min "
        f"({lv.tokens_per_s:,.0f} x 60 x {1 - rec.headroom:g}, rounded down to 2 significant figures) = "
        f"{rec.tokens_per_second:,} tokens/s, and [bold]{rec.concurrent_requests}[/bold] concurrent requests, "
        "per instance"
    )
    if rec.waiting_requests is not None:
        console.print(
            f"Queue target: [bold]{rec.waiting_requests}[/bold] waiting requests per pod (the server's mean queue "
            f"{lv.waiting:.2f} at {lv.label} x {1 - rec.headroom:g}, at least 1)"
        )
    p = lv.predicted
    if p is not None and p.problem is None and p.output_tokens_per_s > 0:
        ratio = lv.tokens_per_s / p.output_tokens_per_s
        eff = f"{min(1.0, max(0.01, ratio)):.2f}"
        console.print(
            f"Measured throughput is {ratio:.0%} of the roofline at this load; `python -m bench plan "
            f"--bandwidth-efficiency {eff} --compute-efficiency {eff}` reproduces it"
        )
    lines = rec.config_lines()
    if lines:
        console.print("")
        for line in lines:
            console.print(line, highlight=False, soft_wrap=True)


def _ms(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.1f}" if abs(value) < 10 else f"{value:,.0f}"  # a 0.9 ms TPOT is not "1"


if __name__ == "__main__":
    raise SystemExit(main())
