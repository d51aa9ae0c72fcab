"""Self-host or buy tokens: one always-on instance against a hosted API's price per 1M tokens.

The instance costs its hourly price whether busy or not; the API costs per token. At full load the instance
serves `input_tokens_per_s` and `output_tokens_per_s` (the roofline's estimate or a bench run's measurement,
in the workload's own mix of prompt and output tokens); at utilization u it serves u times that.

- API bill of one fully loaded instance's traffic, per hour:
  `api_usd_per_hour = 3600 x (input_tok_s x api_in + output_tok_s x api_out) / 1e6`
- break-even utilization: `price_per_hour / api_usd_per_hour` (above 1: one instance never beats the API)
- break-even volume, tokens per day (input + output, in the same mix):
  `break_even_utilization x 86400 x (input_tok_s + output_tok_s)`
- self-hosted $ per 1M tokens at utilization u: the hour's price over the tokens served in it. It is split
  between input and output in the API's own price ratio (`ratio = price_per_hour / (u x api_usd_per_hour)`,
  self-hosted in = ratio x api_in, out = ratio x api_out), so each pair reads side by side and the ratio
  says by how much self-hosting is cheaper (< 1) or dearer (> 1). Without an API price there is no ratio to
  split by: the blended $ per 1M tokens (input and output together) and the $ per 1M output tokens (input
  served free) are given.

No hosted-API prices ship with the project: none could be cited with a date and a source
(../shared/REFERENCE.md and the seeds hold none), so the user gives them: `--api-price IN,OUT`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SECONDS_PER_HOUR = 3600
# sagemakerVpc's private network (components/sagemaker_vpc.py), AWS list prices in us-east-1 to verify for your
# region (Amazon VPC pricing: NAT gateway per hour; AWS PrivateLink pricing: interface endpoint per AZ-hour).
# Data processed (per GB through the NAT and the endpoints) is extra and not counted: the model download once
# per instance start is most of it.
NAT_GATEWAY_PER_HOUR = 0.045
INTERFACE_ENDPOINT_PER_AZ_HOUR = 0.01
SECONDS_PER_DAY = 86400
PER_MILLION = 1_000_000


class BreakEvenError(ValueError):
    """An input the comparison cannot use; the message says which and how to fix it."""


@dataclass(frozen=True)
class ApiPrice:
    """A hosted API's list price, USD per 1M input and per 1M output tokens."""

    input_per_1m: float
    output_per_1m: float

    def __post_init__(self) -> None:
        for name, value in (("input", self.input_per_1m), ("output", self.output_per_1m)):
            if not (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
                    and value >= 0):
                raise BreakEvenError(f"--api-price: the {name} price must be a number >= 0 (USD per 1M tokens), "
                                     f"got {value!r}")
        if self.input_per_1m == 0 and self.output_per_1m == 0:
            raise BreakEvenError("--api-price 0,0: a free API always wins; give its USD per 1M input,output tokens")


def parse_api_price(text: str) -> ApiPrice:
    """`IN,OUT` in USD per 1M tokens, e.g. `0.15,0.60`."""
    parts = [p.strip().lstrip("$") for p in text.split(",")]
    if len(parts) != 2:
        raise BreakEvenError(f"--api-price {text!r}: give two prices, USD per 1M input and output tokens: IN,OUT "
                             "(e.g. --api-price 0.15,0.60)")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise BreakEvenError(f"--api-price {text!r}: both prices must be numbers (USD per 1M tokens), "
                             "e.g. --api-price 0.15,0.60") from None
    return ApiPrice(*values)


@dataclass(frozen=True)
class Throughput:
    """Tokens per second one deployment serves at full load, and where the figure comes from."""

    input_tokens_per_s: float
    output_tokens_per_s: float
    source: str  # "roofline ..." or "measured: <run dir>, level ..."

    def __post_init__(self) -> None:
        if not (self.input_tokens_per_s >= 0 and self.output_tokens_per_s > 0):
            raise BreakEvenError(f"throughput ({self.source}) must have output tokens/s > 0 and input tokens/s >= 0, "
                                 f"got {self.input_tokens_per_s!r} in, {self.output_tokens_per_s!r} out")

    @property
    def tokens_per_s(self) -> float:
        return self.input_tokens_per_s + self.output_tokens_per_s


@dataclass(frozen=True)
class BreakEven:
    price_per_hour: float
    utilization: float
    throughput: Throughput
    api: ApiPrice | None
    # self-hosted at `utilization`
    self_usd_per_1m_tokens: float  # blended, input and output together
    self_usd_per_1m_output: float  # input served free
    self_input_per_1m: float | None  # split in the API's price ratio
    self_output_per_1m: float | None
    cost_ratio: float | None  # self-hosted / API at `utilization`; < 1: self-hosting is cheaper
    api_usd_per_hour_at_full_load: float | None
    break_even_utilization: float | None  # > 1: never with one instance
    break_even_tokens_per_day: float | None

    @property
    def beats_api(self) -> bool | None:
        return None if self.cost_ratio is None else self.cost_ratio < 1

    @property
    def reachable(self) -> bool | None:
        return None if self.break_even_utilization is None else self.break_even_utilization <= 1

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["beats_api"] = self.beats_api
        out["break_even_reachable"] = self.reachable
        return out


def compare(price_per_hour: float, throughput: Throughput, utilization: float, api: ApiPrice | None) -> BreakEven:
    if not (isinstance(price_per_hour, int | float) and price_per_hour > 0):
        raise BreakEvenError(f"the instance's price must be > 0 USD/h, got {price_per_hour!r}: give it with --price")
    if not (0 < utilization <= 1):
        raise BreakEvenError(f"--utilization must be in (0, 1] (the share of the hour at full load), got {utilization!r}")
    served_per_hour = utilization * SECONDS_PER_HOUR  # seconds of full load per hour
    blended = price_per_hour / (served_per_hour * throughput.tokens_per_s) * PER_MILLION
    per_output = price_per_hour / (served_per_hour * throughput.output_tokens_per_s) * PER_MILLION
    if api is None:
        return BreakEven(price_per_hour, utilization, throughput, None, blended, per_output,
                         None, None, None, None, None, None)
    api_per_hour = SECONDS_PER_HOUR * (
        throughput.input_tokens_per_s * api.input_per_1m + throughput.output_tokens_per_s * api.output_per_1m
    ) / PER_MILLION
    ratio = price_per_hour / (utilization * api_per_hour)
    break_even_u = price_per_hour / api_per_hour
    return BreakEven(
        price_per_hour=price_per_hour,
        utilization=utilization,
        throughput=throughput,
        api=api,
        self_usd_per_1m_tokens=blended,
        self_usd_per_1m_output=per_output,
        self_input_per_1m=ratio * api.input_per_1m,
        self_output_per_1m=ratio * api.output_per_1m,
        cost_ratio=ratio,
        api_usd_per_hour_at_full_load=api_per_hour,
        break_even_utilization=break_even_u,
        break_even_tokens_per_day=break_even_u * SECONDS_PER_DAY * throughput.tokens_per_s,
    )


# --------------------------------------------------------------------------------------- a bench run


def measured_throughput(results: str | Path) -> tuple[Throughput, float | None]:
    """The highest-throughput level of a bench run (its summary.json), and the run's fleet price per hour
    (price x instances) if the run was given one.

    Input tokens/s is the level's prompt tokens over its duration, output tokens/s its measured output
    throughput; only succeeded requests count tokens, failed ones lower the figure as they should.
    """
    path = Path(results)
    summary_path = path / "summary.json" if path.is_dir() else path
    if not summary_path.is_file():
        raise BreakEvenError(f"--from {results}: no summary.json there; give a `python -m bench` results directory "
                             "(the one holding summary.json and report.md)")
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError) as err:
        raise BreakEvenError(f"--from {results}: {summary_path} is not a bench summary ({err})") from None
    return measured_throughput_of(summary, str(summary_path), f"--from {results}: ")


def measured_throughput_of(summary: Any, where: str, prefix: str = "") -> tuple[Throughput, float | None]:
    """`measured_throughput` of a summary already read; `where` names it in the source."""
    try:
        levels = list(summary["levels"])
        config = summary.get("config") or {}
    except (KeyError, TypeError, AttributeError) as err:
        raise BreakEvenError(f"{prefix}{where} is not a bench summary (no {err})") from None
    usable = [lv for lv in levels if (lv.get("output_throughput_tok_s") or 0) > 0 and (lv.get("duration_s") or 0) > 0]
    if not usable:
        raise BreakEvenError(f"{prefix}no level of that run produced output tokens; rerun the benchmark")
    best = max(usable, key=lambda lv: lv["output_throughput_tok_s"])
    label = f"c={best['concurrency']}" if best.get("rate") is None else f"{best['rate']:g} req/s"
    throughput = Throughput(
        input_tokens_per_s=(best.get("prompt_tokens") or 0) / best["duration_s"],
        output_tokens_per_s=best["output_throughput_tok_s"],
        source=f"measured: {where}, level {label}",
    )
    price = config.get("price_per_hour_usd")
    fleet_price = price * (config.get("instance_count") or 1) if price else None
    return throughput, fleet_price


# ---------------------------------------------------------------------------------------------- text


def _usd(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"${value:,.{digits}f}"


def lines(result: BreakEven, name: str = "") -> list[str]:
    """The comparison in a few lines of text (the plan and the report print these)."""
    t = result.throughput
    head = f"{name}: " if name else ""
    out = [
        f"{head}${result.price_per_hour:g}/h, {t.input_tokens_per_s:,.1f} input + {t.output_tokens_per_s:,.1f} output "
        f"tokens/s at full load ({t.source})",
        f"  self-hosted at {result.utilization:.0%} utilization: {_usd(result.self_usd_per_1m_tokens)} per 1M tokens "
        f"(input and output together), {_usd(result.self_usd_per_1m_output)} per 1M output tokens (input free)",
    ]
    if result.api is None:
        out.append("  hosted API: no price given (--api-price IN,OUT in USD per 1M tokens compares the two)")
        return out
    api = result.api
    verdict = "cheaper" if result.beats_api else "dearer"
    out.append(
        f"  per 1M input / output tokens: self-hosted {_usd(result.self_input_per_1m)} / "
        f"{_usd(result.self_output_per_1m)}, API {_usd(api.input_per_1m)} / {_usd(api.output_per_1m)} "
        f"(self-hosted is {verdict}: {result.cost_ratio:.2f}x the API)"
    )
    if result.reachable:
        out.append(
            f"  break-even: {result.break_even_utilization:.1%} utilization = "
            f"{result.break_even_tokens_per_day:,.0f} tokens/day; above it one instance beats the API"
        )
    else:
        out.append(
            f"  break-even: never with one instance (it would need {result.break_even_utilization:.0%} "
            f"utilization; fully loaded it serves {SECONDS_PER_DAY * t.tokens_per_s:,.0f} tokens/day, which the "
            f"API sells for {_usd(24 * result.api_usd_per_hour_at_full_load, 2)}/day against "
            f"{_usd(24 * result.price_per_hour, 2)}/day)"
        )
    return out


# ------------------------------------------------------------------------------------ `bench plan` glue


def private_network_hourly(nat_gateways: int = 1, interface_endpoints: int = 3, zones: int = 2) -> float:
    """USD per hour of sagemakerVpc's network: its NAT gateway(s) and interface endpoints in each zone (the S3
    gateway endpoint is free). The default: 1 NAT + 3 endpoints (ecr.api, ecr.dkr, logs) x 2 AZs = $0.105/h."""
    return nat_gateways * NAT_GATEWAY_PER_HOUR + interface_endpoints * zones * INTERFACE_ENDPOINT_PER_AZ_HOUR


def for_plan(plan: Any, api: ApiPrice | None, utilization: float,
             sagemaker_vpc: bool = False) -> dict[str, BreakEven]:
    """Per priced instance of a roofline plan: the comparison at its best estimated throughput (the
    highest-throughput concurrency level that fits); instances without a price or a fitting level are left out.
    With `sagemaker_vpc` a SageMaker type's price carries the private network's hourly price too (one
    instance bears it all: the break-even of the smallest deployment)."""
    out: dict[str, BreakEven] = {}
    for memory in plan.memory:
        name = memory.instance.name
        price = plan.prices.get(name)
        if price and sagemaker_vpc and name.startswith("ml."):
            price += private_network_hourly()
            name = f"{name} + sagemakerVpc network (${private_network_hourly():.3f}/h)"
        fitting = [e for e in plan.estimates
                   if e.instance == memory.instance.name and e.problem is None and e.output_tokens_per_s > 0]
        if not price or not fitting:
            continue
        best = max(fitting, key=lambda e: e.output_tokens_per_s)
        throughput = Throughput(
            input_tokens_per_s=best.requests_per_s * best.prompt_tokens,
            output_tokens_per_s=best.output_tokens_per_s,
            source=f"roofline, concurrency {best.concurrency}, {best.prompt_tokens} prompt + "
                   f"{best.output_tokens} output tokens",
        )
        out[name] = compare(price, throughput, utilization, api)
    return out


def from_results(results: str, *, instance: str | None, price_overrides: dict[str, float],
                 api: ApiPrice | None, utilization: float, region: str | None = None,
                 prices_file: str | None = None) -> tuple[str, BreakEven]:
    """`bench plan --from RESULTS`: the run's measured throughput, at the run's own price (price x instances)
    or, when it had none, the one `--instance` type's price (catalog or `--price`)."""
    from planning import catalog

    throughput, fleet_price = measured_throughput(results)
    if instance:
        price = catalog.hourly_price(instance, region, overrides=price_overrides, prices_file=prices_file)
        return instance, compare(price, throughput, utilization, api)
    if fleet_price is None:
        raise BreakEvenError(f"--from {results}: the run had no price (--price-per-hour); name the instance it ran "
                             "on with --instance TYPE (and --price TYPE=USD if the catalog has none)")
    return "measured deployment", compare(fleet_price, throughput, utilization, api)
