"""`python -m bench compare DIR...`: one cross-platform report from several runs' summary.json.

Each DIR is a `python -m bench` results directory (or a summary.json path); a run is named by
`--labels`, else its --label, else the directory name. Writes compare.md and PNG charts into --out.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.report import _f


class CompareError(ValueError):
    pass


def load_run(path: str) -> dict:
    p = Path(path)
    file = p / "summary.json" if p.is_dir() else p
    try:
        summary = json.loads(file.read_text())
    except FileNotFoundError:
        raise CompareError(f"{path}: no summary.json there; pass a `python -m bench` results directory") from None
    except json.JSONDecodeError as exc:
        raise CompareError(f"{file}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("levels"), list) or "target" not in summary:
        raise CompareError(f"{file}: not a bench summary (needs 'target' and 'levels')")
    if not summary["levels"]:
        raise CompareError(f"{file}: the run has no completed level")
    return summary


def _peak(summary: dict) -> dict:
    return max(summary["levels"], key=lambda lv: lv["output_throughput_tok_s"])


def _level_name(lv: dict) -> str:
    return f"c={lv['concurrency']}" if lv["rate"] is None else f"{lv['rate']:g}/s"


def render(runs: list[tuple[str, dict]], charts: list[Path]) -> str:
    lines = [
        "# Cross-platform comparison",
        "",
        "Runs: " + ", ".join(f"**{label}** ({s['target']['url']}, model `{s['target']['model']}`)" for label, s in runs),
        "",
        "## Peak throughput per run",
        "",
        "The level with the highest output tokens/s. Cost is per 1M output tokens at that level.",
        "",
        "| run | level | output tok/s | req/s | TTFT p50 | TTFT p95 | E2E p50 | E2E p95 | $ / 1M tok | SLO | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, s in runs:
        lv = _peak(s)
        cost = lv.get("cost_per_1k_tokens_usd")
        slo = lv.get("slo_attainment")
        lines.append(
            f"| {label} | {_level_name(lv)} | {lv['output_throughput_tok_s']:.1f} | {lv['request_throughput_rps']:.2f} | "
            f"{_f(lv['ttft_ms']['p50'])} | {_f(lv['ttft_ms']['p95'])} | {_f(lv['e2e_ms']['p50'], '.0f')} | "
            f"{_f(lv['e2e_ms']['p95'], '.0f')} | {_f(None if cost is None else cost * 1000, '.2f')} | "
            f"{_f(None if slo is None else 100 * slo, '.0f')}% | {lv['failed']} |"
        )
    lines += [
        "",
        "## Every level",
        "",
        "| run | level | ok / all | output tok/s | req/s | TTFT p50 | TTFT p95 | E2E p50 | E2E p95 | goodput | SLO | $ / 1M tok |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, s in runs:
        for lv in s["levels"]:
            cost = lv.get("cost_per_1k_tokens_usd")
            slo = lv.get("slo_attainment")
            lines.append(
                f"| {label} | {_level_name(lv)} | {lv['succeeded']} / {lv['requests']} | "
                f"{lv['output_throughput_tok_s']:.1f} | {lv['request_throughput_rps']:.2f} | {_f(lv['ttft_ms']['p50'])} | "
                f"{_f(lv['ttft_ms']['p95'])} | {_f(lv['e2e_ms']['p50'], '.0f')} | {_f(lv['e2e_ms']['p95'], '.0f')} | "
                f"{lv['goodput_rps']:.2f} | {_f(None if slo is None else 100 * slo, '.0f')}% | "
                f"{_f(None if cost is None else cost * 1000, '.2f')} |"
            )
    slos = {label: s["config"].get("slo") for label, s in runs}
    if len({json.dumps(v, sort_keys=True) for v in slos.values()}) > 1:
        lines += ["", "Note: the runs used different SLOs: " + "; ".join(f"{k}: {v}" for k, v in slos.items())]
    prompts = {label: (s["config"].get("prompt_tokens"), s["config"].get("max_tokens")) for label, s in runs}
    if len(set(prompts.values())) > 1:
        lines += ["", "Note: the runs used different prompt/output lengths: " + "; ".join(f"{k}: {v}" for k, v in prompts.items())]
    if charts:
        lines += ["", "## Charts", ""] + [f"![{p.stem}]({p.name})" for p in charts]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    from bench.cli_base import ArgParser

    p = ArgParser(prog="python -m bench compare", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="DIR", help="results directories of `python -m bench`")
    p.add_argument("--labels", help="comma-separated names, one per DIR (e.g. aws,azure,gcp,local)")
    p.add_argument("--out", default="results/compare", help="output directory (default results/compare)")
    p.add_argument("--no-charts", action="store_true")
    gate = p.add_argument_group("regression gate (bench.gate): compare DIR with --baseline, exit 1 on a breach")
    gate.add_argument("--baseline", metavar="DIR", help="results directory the one RUN is judged against")
    gate.add_argument("--fail-on", metavar="RULES", help="e.g. 'ttft_p95>+10%%,tokens_per_s<-5%%' (see docs/bench.md)")
    gate.add_argument("--confidence", type=float, default=0.95, help="bootstrap interval (default 0.95)")
    gate.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    gate.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0: the same verdict every time)")
    args = p.parse_args(argv)
    if args.baseline is not None or args.fail_on is not None:
        return _gate(p, args)
    labels = [x.strip() for x in args.labels.split(",")] if args.labels else None
    if labels is not None and len(labels) != len(args.runs):
        p.error(f"--labels has {len(labels)} names for {len(args.runs)} runs")
    try:
        summaries = [load_run(r) for r in args.runs]
    except CompareError as exc:
        p.error(str(exc))
    runs = []
    for i, (path, s) in enumerate(zip(args.runs, summaries, strict=True)):
        label = labels[i] if labels else (s["target"].get("label") or Path(path).resolve().name)
        runs.append((label, s))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    charts = []
    if not args.no_charts:
        from bench.charts import compare_charts

        charts = compare_charts(runs, out)
    (out / "compare.md").write_text(render(runs, charts))
    print(f"wrote {out / 'compare.md'}" + (f" and {len(charts)} chart(s)" if charts else ""))
    return 0


def _gate(p, args) -> int:
    """`compare --baseline DIR RUN --fail-on RULES`: 0 no breach, 1 a breach, 2 bad input (one line)."""
    from bench import gate

    if args.baseline is None or args.fail_on is None:
        p.error("the regression gate needs both --baseline DIR and --fail-on RULES")
    if len(args.runs) != 1:
        p.error(f"with --baseline give one run to judge, not {len(args.runs)}")
    if not 0.5 <= args.confidence < 1:
        p.error(f"--confidence {args.confidence:g}: expected a fraction in [0.5, 1), e.g. 0.95")
    if args.resamples < 100:
        p.error(f"--resamples {args.resamples}: at least 100 for a usable interval")
    try:
        rules = gate.parse_rules(args.fail_on)
        verdicts = gate.run_gate(args.baseline, args.runs[0], rules, seed=args.seed, resamples=args.resamples,
                                 confidence=args.confidence)
    except (gate.GateError, CompareError) as exc:
        p.error(str(exc))
    for line in gate.render(verdicts, args.confidence):
        print(line)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gate.json").write_text(json.dumps(gate.as_json(verdicts), indent=2) + "\n")
    return 1 if any(v.outcome == "breach" for v in verdicts) else 0
