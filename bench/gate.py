"""The regression gate: `python -m bench compare --baseline DIR RUN --fail-on "ttft_p95>+10%,tokens_per_s<-5%"`.

Each rule is decided per load level (levels paired by concurrency and rate) from the per-request records
(requests.jsonl), not from the two summary numbers: both runs' requests are resampled with replacement
(a seeded bootstrap), the metric is computed on every resample, and the rule breaches only when the whole
confidence interval of the change (95 % by default) lies past the threshold. A change whose point estimate
is past it but whose interval is not is "inconclusive": reported, not failed (more requests narrow it).
A check that cannot be decided is refused (GateError, exit 2), not passed: a latency metric where one run has
no successful request, or a relative rule against a baseline of 0 (error_rate>+10% over a clean baseline).

Rules: METRIC>+N% (fails on a rise of more than N %), METRIC<-N% (a fall of more than N %); without `%`
the threshold is in the metric's own unit (error_rate>+0.01: one percentage point more errors).
Metrics: ttft_, e2e_, tpot_ + p50/p90/p95/p99/mean (ms, successful requests, as in summary.json);
tokens_per_s and req_per_s (successful output tokens / requests per second); error_rate (failed / all).
Throughput on a resample is (its tokens / its request time) x the level's mean requests in flight
(Little's law, from the whole level), which equals the summary's figure on the original records.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LATENCY = {"ttft": "ttft_ms", "e2e": "e2e_ms", "tpot": "tpot_ms"}
STATS = {"p50": 50, "p90": 90, "p95": 95, "p99": 99, "mean": None}
RATES = ("tokens_per_s", "req_per_s", "error_rate")
RESAMPLES = 2000
CONFIDENCE = 0.95
CHUNK_VALUES = 4_000_000  # resampled values held at once (memory stays ~32 MB at any level size)
RULE = re.compile(r"\s*([a-z0-9_]+)\s*([<>])\s*([+-])\s*(\d+(?:\.\d+)?)\s*(%?)\s*")


class GateError(ValueError):
    """A bad --fail-on rule or a run the gate cannot read; the message says what to fix."""


def metric_names() -> list[str]:
    return [f"{m}_{s}" for m in LATENCY for s in STATS] + list(RATES)


@dataclass(frozen=True)
class Rule:
    metric: str
    rising: bool  # '>': a rise past the threshold breaches; '<': a fall
    threshold: float  # signed: +0.10 for >+10%, -0.05 for <-5%
    relative: bool

    def text(self) -> str:
        amount = f"{100 * self.threshold:+g}%" if self.relative else f"{self.threshold:+g}"
        return f"{self.metric}{'>' if self.rising else '<'}{amount}"


def parse_rules(text: str) -> list[Rule]:
    rules = []
    for part in (p for p in text.split(",") if p.strip()):
        m = RULE.fullmatch(part)
        if not m:
            raise GateError(f"--fail-on {part.strip()!r}: expected METRIC>+N% or METRIC<-N%, e.g. ttft_p95>+10%")
        metric, op, sign, number, percent = m.groups()
        if metric not in metric_names():
            raise GateError(f"--fail-on {part.strip()!r}: unknown metric {metric!r}; one of {', '.join(metric_names())}")
        if (op == ">") != (sign == "+"):
            raise GateError(
                f"--fail-on {part.strip()!r}: '>' takes a rise (+N), '<' a fall (-N); e.g. {metric}>+10% or {metric}<-5%"
            )
        value = float(number) / (100 if percent else 1)
        rules.append(Rule(metric, op == ">", value if op == ">" else -value, bool(percent)))
    if not rules:
        raise GateError("--fail-on: no rule given; e.g. --fail-on 'ttft_p95>+10%,tokens_per_s<-5%'")
    return rules


@dataclass
class LevelRecords:
    """One level's measured requests as arrays (warmup left out), and its duration."""

    ok: np.ndarray  # bool
    values: dict[str, np.ndarray]  # per latency field, NaN where the request failed or has none
    tokens: np.ndarray
    latency_s: np.ndarray  # end - start, every request
    duration_s: float

    @property
    def in_flight(self) -> float:
        return float(self.latency_s.sum()) / self.duration_s if self.duration_s > 0 else 0.0


def load_levels(run_dir: str) -> dict[tuple, LevelRecords]:
    """(concurrency, rate) -> the level's records, from summary.json and requests.jsonl in `run_dir`."""
    from bench.compare import load_run

    directory = Path(run_dir)
    if not directory.is_dir():
        raise GateError(f"{run_dir}: not a directory; the gate needs a `python -m bench` results directory")
    summary = load_run(run_dir)
    path = directory / "requests.jsonl"
    if not path.is_file():
        raise GateError(f"{path}: missing; the gate decides from the per-request records a bench run writes")
    by_level: dict[int, list[dict]] = {}
    with path.open("rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise GateError(f"{path}:{number}: not a JSON record ({exc.msg})") from None
            if not rec.get("warmup"):
                by_level.setdefault(rec.get("level", 0), []).append(rec)
    levels = {}
    for index, records in sorted(by_level.items()):
        if not 0 <= index < len(summary["levels"]):
            continue  # a level that never finished (no summary): not compared
        lv = summary["levels"][index]
        ok = np.array([bool(r.get("ok")) for r in records])
        values = {
            field: np.array([r[field] if r.get("ok") and r.get(field) is not None else np.nan for r in records], float)
            for field in LATENCY.values()
        }
        tokens = np.array([r.get("output_tokens") or 0 if r.get("ok") else 0 for r in records], float)
        latency = np.array([max(0.0, r["end_s"] - r["start_s"]) for r in records], float)
        duration = max(r["end_s"] for r in records) - min(r["start_s"] for r in records)
        levels[(lv["concurrency"], lv["rate"])] = LevelRecords(ok, values, tokens, latency, duration)
    if not levels:
        raise GateError(f"{path}: no measured request of a finished level")
    return levels


def _statistic(level: LevelRecords, metric: str, idx: np.ndarray) -> np.ndarray:
    """The metric on each resample: `idx` is (resamples, n) indices into the level's requests."""
    if metric == "error_rate":
        return 1.0 - level.ok[idx].mean(axis=1)
    if metric in ("tokens_per_s", "req_per_s"):
        amount = level.tokens[idx] if metric == "tokens_per_s" else level.ok[idx].astype(float)
        busy = level.latency_s[idx].sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(busy > 0, amount.sum(axis=1) / busy * level.in_flight, 0.0)
    name, stat = metric.rsplit("_", 1)
    values = level.values[LATENCY[name]][idx]
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a resample without one success: NaN
            if STATS[stat] is None:
                return np.nanmean(values, axis=1)
            return np.nanpercentile(values, STATS[stat], axis=1)


def point(level: LevelRecords, metric: str) -> float:
    return float(_statistic(level, metric, np.arange(len(level.ok))[None, :])[0])


def bootstrap(level: LevelRecords, metric: str, rng: np.random.Generator, resamples: int) -> np.ndarray:
    n = len(level.ok)
    rows = max(1, CHUNK_VALUES // max(1, n))
    out = []
    for start in range(0, resamples, rows):
        idx = rng.integers(0, n, size=(min(rows, resamples - start), n))
        out.append(_statistic(level, metric, idx))
    return np.concatenate(out)


@dataclass
class Verdict:
    rule: Rule
    level: tuple
    baseline: float
    run: float
    delta: float  # relative (0.12 = +12 %) or absolute, as the rule
    low: float
    high: float
    outcome: str  # "pass", "breach", "inconclusive"


def _change(base, run, relative: bool):
    if not relative:
        return run - base
    with np.errstate(divide="ignore", invalid="ignore"):
        return (run - base) / base


def decide(rule: Rule, level: tuple, base: LevelRecords, run: LevelRecords, rng, resamples: int,
           confidence: float) -> Verdict:
    b, r = point(base, rule.metric), point(run, rule.metric)
    # Undecidable checks are refused, not passed: a NaN or infinite change past no threshold would let a run
    # whose every request failed, or errors rising from none, pass the gate (a zero baseline raised ZeroDivisionError).
    for side, value in (("baseline", b), ("run", r)):
        if np.isnan(value):
            raise GateError(f"{rule.text()} at {level_name(level)}: the {side} has no successful request to measure "
                            f"{rule.metric} on; did every request fail?")
    if rule.relative and b == 0:
        raise GateError(f"{rule.text()} at {level_name(level)}: the baseline's {rule.metric} is 0, so a change "
                        f"relative to it has no size; give the threshold in the metric's unit, e.g. "
                        f"{rule.metric}{'>+0.01' if rule.rising else '<-0.01'}")
    delta = float(_change(b, r, rule.relative))
    changes = _change(bootstrap(base, rule.metric, rng, resamples), bootstrap(run, rule.metric, rng, resamples),
                      rule.relative)
    changes = changes[np.isfinite(changes)]
    tail = (1 - confidence) / 2
    low, high = (float(np.quantile(changes, tail)), float(np.quantile(changes, 1 - tail))) if len(changes) else (
        float("nan"), float("nan"))
    past = (lambda x: x > rule.threshold) if rule.rising else (lambda x: x < rule.threshold)
    if past(low if rule.rising else high):
        outcome = "breach"  # the whole interval is past the threshold
    elif np.isfinite(delta) and past(delta):
        outcome = "inconclusive"
    else:
        outcome = "pass"
    return Verdict(rule, level, b, r, delta, low, high, outcome)


def run_gate(baseline_dir: str, run_dir: str, rules: list[Rule], *, seed: int = 0, resamples: int = RESAMPLES,
             confidence: float = CONFIDENCE) -> list[Verdict]:
    base_levels, run_levels = load_levels(baseline_dir), load_levels(run_dir)
    common = [key for key in base_levels if key in run_levels]
    if not common:
        raise GateError(
            f"no load level in both runs: baseline has {_names(base_levels)}, the run has {_names(run_levels)}; "
            "bench both at the same --concurrency/--rate"
        )
    rng = np.random.default_rng(seed)
    return [decide(rule, key, base_levels[key], run_levels[key], rng, resamples, confidence)
            for key in common for rule in rules]


def _names(levels) -> str:
    return ", ".join(level_name(k) for k in levels)


def level_name(key: tuple) -> str:
    concurrency, rate = key
    return f"c={concurrency}" if rate is None else f"{rate:g}/s"


def _fmt(value: float, rule: Rule) -> str:
    if not np.isfinite(value):
        return "-"
    return f"{100 * value:+.1f}%" if rule.relative else f"{value:+.4g}"


def render(verdicts: list[Verdict], confidence: float = CONFIDENCE) -> list[str]:
    ci = f"{100 * confidence:g}% CI"
    rows = [("rule", "level", "baseline", "run", "delta", ci, "verdict")]
    for v in verdicts:
        rows.append((v.rule.text(), level_name(v.level), f"{v.baseline:.4g}", f"{v.run:.4g}", _fmt(v.delta, v.rule),
                     f"[{_fmt(v.low, v.rule)}, {_fmt(v.high, v.rule)}]", v.outcome.upper()))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    breaches = sum(v.outcome == "breach" for v in verdicts)
    unsure = sum(v.outcome == "inconclusive" for v in verdicts)
    lines.append(
        f"gate: {'FAILED' if breaches else 'passed'}: {breaches} breach(es), {unsure} inconclusive "
        f"(past the threshold, but the {ci} is not wholly past it), {len(verdicts)} check(s)"
    )
    return lines


def as_json(verdicts: list[Verdict]) -> dict:
    def num(x):
        return float(x) if np.isfinite(x) else None

    return {"checks": [{"rule": v.rule.text(), "level": level_name(v.level), "baseline": num(v.baseline),
                        "run": num(v.run), "delta": num(v.delta), "ci": [num(v.low), num(v.high)],
                        "outcome": v.outcome} for v in verdicts],
            "breaches": sum(v.outcome == "breach" for v in verdicts)}
