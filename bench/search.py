"""Find the operating point: the highest load whose probe meets the SLO (`--find-max-rate`, `--find-max-concurrency`).

The decision logic here does no I/O: `Search` says which load to probe next and `judge` says whether a
measured level met the SLO, so both are tested on literal numbers. `SearchPlan` ties them to the runner,
which measures each probe as an ordinary level (same workers, records, summary and report).

The search grows the load geometrically from `start` until a probe misses the SLO (or shrinks it when the
first probe already misses), then bisects between the highest load that met it and the lowest that did
not, until the two are within `precision` of each other (relative; concurrencies are integers, so at
least 1 apart). It always ends: the load stays within [lower, upper] and at most `max_probes` are run.
The answer is the highest load that met the SLO; the load between it and the first miss is unknown.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

PERCENTILES = ("p50", "p90", "p95", "p99")
KINDS = ("max_rate", "max_concurrency")
GROWTH = 2.0
DEFAULT_MAX_PROBES = 16
DEFAULT_MAX_ERROR_RATE = 0.01  # as `bench recommend`
DEFAULTS = {  # kind -> (start, lower, upper)
    "max_rate": (1.0, 0.01, 10_000.0),
    "max_concurrency": (1, 1, 4096),
}


@dataclass(frozen=True)
class SearchSlo:
    """What a probe must meet: each latency limit at `percentile`, and at most `max_error_rate` failed."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None
    percentile: str = "p95"
    max_error_rate: float = DEFAULT_MAX_ERROR_RATE

    def __post_init__(self):
        if self.percentile not in PERCENTILES:
            raise ValueError(f"SLO percentile {self.percentile!r}: expected one of {', '.join(PERCENTILES)}")
        if not any(v is not None for v in (self.ttft_ms, self.tpot_ms, self.e2e_ms)):
            raise ValueError("the search needs an SLO: give --slo-ttft-ms, --slo-tpot-ms and/or --slo-e2e-ms")
        for name in ("ttft_ms", "tpot_ms", "e2e_ms"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"--slo-{name.replace('_', '-')} {value!r}: must be > 0")
        if not 0 <= self.max_error_rate < 1:
            raise ValueError(f"max error rate {self.max_error_rate!r}: must be in [0, 1)")

    def limits(self) -> list[tuple[str, float]]:
        return [(m, v) for m, v in (("ttft", self.ttft_ms), ("tpot", self.tpot_ms), ("e2e", self.e2e_ms)) if v is not None]

    def public(self) -> dict:
        return {"ttft_ms": self.ttft_ms, "tpot_ms": self.tpot_ms, "e2e_ms": self.e2e_ms,
                "percentile": self.percentile, "max_error_rate": self.max_error_rate}

    def describe(self) -> str:
        parts = [f"{m.upper()} {self.percentile} <= {v:g} ms" for m, v in self.limits()]
        return ", ".join(parts) + f", errors <= {self.max_error_rate:.1%}"


@dataclass(frozen=True)
class Verdict:
    met: bool
    why: str  # what missed, or "met"
    figures: dict  # the percentile figures and the error rate judged


def judge(level: Mapping[str, Any], slo: SearchSlo) -> Verdict:
    """Whether one measured level (a summary["levels"] entry) met the SLO, and why not."""
    pct = slo.percentile
    requests = level.get("requests") or 0
    failed = level.get("failed") or 0
    error_rate = failed / requests if requests else None
    figures: dict = {f"{m}_ms_{pct}": (level.get(f"{m}_ms") or {}).get(pct) for m in ("ttft", "tpot", "e2e")}
    figures["error_rate"] = None if error_rate is None else round(error_rate, 4)
    misses = []
    if not requests:
        misses.append("no request measured")
    elif failed >= requests:
        misses.append("every request failed")
    else:
        if error_rate > slo.max_error_rate:
            misses.append(f"errors {error_rate:.1%} > {slo.max_error_rate:.1%}")
        for metric, limit in slo.limits():
            value = figures[f"{metric}_ms_{pct}"]
            if value is None:
                misses.append(f"no {metric.upper()} measured")
            elif value > limit:
                misses.append(f"{metric.upper()} {pct} {value:,.1f} > {limit:g} ms")
    if level.get("stopped_early") and not misses:
        misses.append(f"stopped early: {level['stopped_early']}")
    return Verdict(not misses, "; ".join(misses) or "met", figures)


@dataclass
class Search:
    """Which load to probe next; fed back whether each probe met the SLO. No I/O."""

    kind: str
    start: float
    precision: float = 0.05
    lower: float | None = None
    upper: float | None = None
    max_probes: int = DEFAULT_MAX_PROBES
    growth: float = GROWTH
    met_at: float | None = field(default=None, init=False)  # highest load that met the SLO
    missed_at: float | None = field(default=None, init=False)  # lowest load above it that missed
    probes: list[tuple[float, bool]] = field(default_factory=list, init=False)
    stop_reason: str | None = field(default=None, init=False)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"search kind {self.kind!r}: expected one of {', '.join(KINDS)}")
        start, lower, upper = DEFAULTS[self.kind]
        self.lower = lower if self.lower is None else self.lower
        self.upper = upper if self.upper is None else self.upper
        name = "rate" if self.kind == "max_rate" else "concurrency"
        if self.integer:
            for label, value in (("start", self.start), ("lower", self.lower), ("upper", self.upper)):
                if value != int(value):
                    raise ValueError(f"search {label} {value!r}: a concurrency is a whole number")
            self.start, self.lower, self.upper = int(self.start), int(self.lower), int(self.upper)
        if not 0 < self.lower <= self.start <= self.upper:
            raise ValueError(
                f"search {name}: need 0 < lower <= start <= upper, got lower {self.lower:g}, start {self.start:g}, "
                f"upper {self.upper:g}"
            )
        if not 0 < self.precision < 1:
            raise ValueError(f"--search-precision {self.precision!r}: must be a fraction in (0, 1), e.g. 5%")
        if self.max_probes < 1:
            raise ValueError(f"--search-max-probes {self.max_probes}: must be >= 1")
        if not self.growth > 1:
            raise ValueError(f"search growth {self.growth!r}: must be > 1")

    @property
    def integer(self) -> bool:
        return self.kind == "max_concurrency"

    def _round(self, x: float) -> float:
        return int(round(x)) if self.integer else float(f"{x:.4g}")

    def _close_enough(self, lo: float, hi: float) -> bool:
        step = 1 if self.integer else 0
        return hi - lo <= max(step, self.precision * lo)

    def next(self) -> float | None:
        """The next load to probe, or None when the search is over (see stop_reason)."""
        if self.stop_reason is not None:
            return None
        if len(self.probes) >= self.max_probes:
            self.stop_reason = f"max probes ({self.max_probes}) reached before the precision"
            return None
        if not self.probes:
            return self._round(self.start)
        lo, hi = self.met_at, self.missed_at
        if hi is None:  # every probe so far met: grow
            if lo >= self.upper:
                self.stop_reason = f"the upper bound {self.upper:g} met the SLO: capacity is at least that"
                return None
            return self._round(min(self.upper, lo * self.growth))
        if lo is None:  # every probe so far missed: shrink
            if hi <= self.lower:
                self.stop_reason = f"even the lower bound {self.lower:g} missed the SLO"
                return None
            return self._round(max(self.lower, hi / self.growth))
        if self._close_enough(lo, hi):
            self.stop_reason = "precision reached"
            return None
        mid = self._round((lo + hi) / 2)
        if not lo < mid < hi:  # rounding (4 significant digits) cannot split them any more
            self.stop_reason = "precision reached"
            return None
        return mid

    def record(self, load: float, met: bool) -> None:
        self.probes.append((load, met))
        # A noisy run can meet above a miss or miss below a met load: the answer stays below every miss.
        if met:
            if (self.met_at is None or load > self.met_at) and (self.missed_at is None or load < self.missed_at):
                self.met_at = load
            return
        if self.missed_at is None or load < self.missed_at:
            self.missed_at = load
        if self.met_at is not None and self.met_at >= load:
            self.met_at = max((x for x, ok in self.probes if ok and x < load), default=None)

    @property
    def answer(self) -> float | None:
        return self.met_at


def parse_kind(find_max_rate: bool, find_max_concurrency: bool) -> str | None:
    if find_max_rate and find_max_concurrency:
        raise ValueError("give --find-max-rate or --find-max-concurrency, not both")
    return "max_rate" if find_max_rate else "max_concurrency" if find_max_concurrency else None


@dataclass(frozen=True)
class SearchSpec:
    """The validated search settings of a run (BenchConfig.search)."""

    kind: str
    slo: SearchSlo
    precision: float = 0.05
    start: float | None = None
    lower: float | None = None
    upper: float | None = None
    max_probes: int = DEFAULT_MAX_PROBES

    def new_search(self) -> Search:
        start = DEFAULTS[self.kind][0] if self.start is None else self.start
        lower = self.lower if self.lower is not None else min(DEFAULTS[self.kind][1], start)
        upper = self.upper if self.upper is not None else max(DEFAULTS[self.kind][2], start)
        return Search(self.kind, start, self.precision, lower, upper, self.max_probes)

    def describe(self) -> str:
        what = "rate (req/s)" if self.kind == "max_rate" else "concurrency"
        return f"search: the highest {what} meeting {self.slo.describe()}, to {self.precision:.0%}"


class SearchPlan:
    """The runner's levels for a search: iterate `levels()`, call `record()` with each level's summary."""

    def __init__(self, cfg, spec: SearchSpec):
        self.cfg = cfg
        self.spec = spec
        self.search = spec.new_search()
        self.probes: list[dict] = []
        self._levels: list[dict] = []

    def levels(self) -> Iterator:
        cap = self.cfg.concurrency[0]
        index = 0
        while (load := self.search.next()) is not None:
            if self.spec.kind == "max_rate":
                yield self.cfg.level(index, cap, load)
            else:
                yield self.cfg.level(index, int(load), None)
            index += 1

    def record(self, level: dict) -> None:
        rate_search = self.spec.kind == "max_rate"
        load = level["rate"] if rate_search else level["concurrency"]
        verdict = judge(level, self.spec.slo)
        self.search.record(load, verdict.met)
        self._levels.append(level)
        self.probes.append({
            "rate" if rate_search else "concurrency": load,
            "level": len(self._levels) - 1,
            "met": verdict.met,
            **verdict.figures,
            "requests": level.get("requests"),
            "goodput_rps": level.get("goodput_rps"),
            "why": verdict.why,
            # bench.stats: where the client was the bottleneck the figures are partly the client's. The
            # probe is still judged on them (a busy client adds milliseconds, not a knee), and said so.
            "valid": level.get("valid") is not False,
            "invalid_why": level.get("why") or None if level.get("valid") is False else None,
        })

    def result(self, run_status: str | None = None) -> dict:
        """The search so far; `run_status` other than complete says why it ended early."""
        s = self.search
        stopped = s.stop_reason or ("running" if run_status in (None, "complete") else f"run stopped: {run_status}")
        answer = s.answer
        best = None
        if answer is not None:
            best = next(p for p in reversed(self.probes) if p["met"] and p.get("rate", p.get("concurrency")) == answer)
        point = self._levels[best["level"]] if best else {}
        key = "max_rate_rps" if self.spec.kind == "max_rate" else "max_concurrency"
        return {
            "kind": self.spec.kind,
            key: answer,
            "first_miss": s.missed_at,
            "slo": self.spec.slo.public(),
            "precision": self.spec.precision,
            "bounds": [s.lower, s.upper],
            "max_probes": s.max_probes,
            "stopped": stopped,
            "level": best["level"] if best else None,
            "goodput_rps": point.get("goodput_rps"),
            "output_throughput_tok_s": point.get("output_throughput_tok_s"),
            "cost_per_1k_tokens_usd": point.get("cost_per_1k_tokens_usd"),
            "cost_per_1m_tokens_usd": point.get("cost_per_1m_tokens_usd"),
            "warnings": self._warnings(answer, s.missed_at),
            "probes": list(self.probes),
        }

    def _warnings(self, answer, missed_at) -> list[str]:
        key = "rate" if self.spec.kind == "max_rate" else "concurrency"
        out = []
        for p in self.probes:
            if key == "concurrency" and p["requests"] is not None and p["requests"] < p[key]:
                out.append(f"the probe at concurrency {p[key]} measured {p['requests']} requests, fewer than its "
                           "concurrency: the server never held that many at once; give --requests of at least "
                           "the concurrency, or --duration")
            if not p["valid"] and p[key] in (answer, missed_at):
                where = "the answer" if p[key] == answer else "the first miss"
                out.append(f"{where} ({key} {p[key]:g}) was measured with the client as a bottleneck "
                           f"({'; '.join(p['invalid_why'] or [])}): raise --workers or use a quieter client machine")
        return out


def describe_result(search: Mapping[str, Any]) -> list[str]:
    """Plain lines for the console and the report."""
    rate = search["kind"] == "max_rate"
    answer = search.get("max_rate_rps" if rate else "max_concurrency")
    unit = " req/s" if rate else " concurrent requests"
    slo = search["slo"]
    parts = [f"{m.upper()} {slo['percentile']} <= {slo[f'{m}_ms']:g} ms" for m in ("ttft", "tpot", "e2e")
             if slo.get(f"{m}_ms") is not None]
    slo_text = ", ".join(parts) + f", errors <= {slo['max_error_rate']:.1%}"
    if answer is None:
        head = f"No {'rate' if rate else 'concurrency'} probed met the SLO ({slo_text}); {search['stopped']}"
        return [head]
    miss = search.get("first_miss")
    bound = f"; {miss:g} missed" if miss is not None else ""
    lines = [f"Highest {'rate' if rate else 'concurrency'} meeting {slo_text}: {answer:g}{unit}{bound} "
             f"({search['stopped']}, {len(search['probes'])} probes)"]
    at = f"at that point: goodput {search['goodput_rps']:.2f} req/s, {search['output_throughput_tok_s']:.0f} output tok/s"
    if search.get("cost_per_1k_tokens_usd") is not None:
        at += f", ${search['cost_per_1k_tokens_usd']:.5f} per 1k tokens (${search['cost_per_1m_tokens_usd']:.2f} per 1M)"
    lines.append(at)
    return lines + [f"warning: {w}" for w in search.get("warnings") or []]


def probe_rows(search: Mapping[str, Any]) -> list[list[str]]:
    """One row per probe: load, met, the percentile figures, error rate, why."""
    pct = search["slo"]["percentile"]
    rows = []
    for p in search["probes"]:
        load = p.get("rate", p.get("concurrency"))
        err = p.get("error_rate")
        rows.append([
            f"{load:g}", "yes" if p["met"] else "no",
            *(_ms(p.get(f"{m}_ms_{pct}")) for m in ("ttft", "tpot", "e2e")),
            "-" if err is None else f"{err:.1%}", p["why"],
        ])
    return rows


def _ms(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:,.1f}"


# ------------------------------------------------------------------------------------------- flags


def add_arguments(parser) -> None:
    g = parser.add_argument_group("find the operating point (bench.search)")
    g.add_argument("--find-max-rate", action="store_true",
                   help="search the highest Poisson rate meeting the SLO (grow x2, then bisect); each probe a level")
    g.add_argument("--find-max-concurrency", action="store_true",
                   help="search the highest closed-loop concurrency meeting the SLO")
    g.add_argument("--slo-percentile", choices=PERCENTILES, default="p95", help="where the SLO holds (default p95)")
    g.add_argument("--search-precision", default="5%",
                   help="stop when the highest met and lowest missed load are this close (default 5%%)")
    g.add_argument("--search-start", type=float, help="first load probed (default 1 req/s or concurrency 1)")
    g.add_argument("--search-min", type=float, help="lowest load probed (default 0.01 req/s or 1)")
    g.add_argument("--search-max", type=float, help="highest load probed (default 10000 req/s or 4096)")
    g.add_argument("--search-max-probes", type=int, default=DEFAULT_MAX_PROBES,
                   help=f"most probes (levels) the search runs (default {DEFAULT_MAX_PROBES})")


def from_args(args, parse_fraction, rate_cap: int) -> tuple[SearchSpec | None, tuple[int, ...] | None]:
    """(the search, the levels' concurrency: the in-flight cap for a rate search) or (None, None)."""
    from bench.config import UsageError

    try:
        kind = parse_kind(args.find_max_rate, args.find_max_concurrency)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if kind is None:
        return None, None
    flag = "--find-max-rate" if kind == "max_rate" else "--find-max-concurrency"
    if args.rate:
        raise UsageError(f"{flag} chooses the rates itself: drop --rate")
    if kind == "max_concurrency" and args.concurrency:
        raise UsageError("--find-max-concurrency chooses the concurrency itself: drop --concurrency "
                         "(--search-start/--search-min/--search-max bound it)")
    if getattr(args, "shard", None):
        raise UsageError(f"{flag} decides each probe from the one before: it cannot run as a --shard")
    cap = rate_cap
    if kind == "max_rate" and args.concurrency:
        try:
            cap = int(args.concurrency)
        except ValueError:
            raise UsageError(f"--concurrency {args.concurrency!r}: with {flag} it is the in-flight cap, "
                             "one number") from None
        if cap < 1:
            raise UsageError(f"--concurrency {cap}: must be >= 1")
    if args.requests is None and args.duration is None:
        raise UsageError(f"{flag}: give each probe's length, --requests N or --duration 30s "
                         "(a search runs up to --search-max-probes of them)")
    max_error_rate = parse_fraction(args.max_error_rate, "--max-error-rate") if args.max_error_rate else None
    try:
        slo = SearchSlo(args.slo_ttft_ms, args.slo_tpot_ms, args.slo_e2e_ms, args.slo_percentile,
                        DEFAULT_MAX_ERROR_RATE if max_error_rate is None else min(max_error_rate, 0.9999))
        spec = SearchSpec(kind, slo, parse_fraction(args.search_precision, "--search-precision"),
                          args.search_start, args.search_min, args.search_max, args.search_max_probes)
        spec.new_search()  # the bounds checked now, before any request
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return spec, (cap,) if kind == "max_rate" else (1,)


# ------------------------------------------------------------------------------------------ report


def report_lines(summary: Mapping[str, Any]) -> list[str]:
    """The report's "Operating point" section (nothing for a run without a search)."""
    search = summary.get("search")
    if not search:
        return []
    pct = search["slo"]["percentile"]
    what = "rate (req/s)" if search["kind"] == "max_rate" else "concurrency"
    lines = ["## Operating point", "", *describe_result(search), "",
             f"Probes in the order run (precision {search['precision']:.0%}, bounds {search['bounds'][0]:g} to "
             f"{search['bounds'][1]:g}, at most {search['max_probes']} probes); times in ms at {pct}:", "",
             f"| {what} | met | TTFT {pct} | TPOT {pct} | E2E {pct} | errors | why |", "|---|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in probe_rows(search)]
    return lines + [""]


def by_load(summary: Mapping[str, Any]) -> Mapping[str, Any]:
    """A search's levels sorted by load (it probes out of order), for charts drawn as lines."""
    if not summary.get("search"):
        return summary
    key = "rate" if summary["search"]["kind"] == "max_rate" else "concurrency"
    return {**summary, "levels": sorted(summary["levels"], key=lambda lv: lv[key])}
