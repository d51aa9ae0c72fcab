"""report.md and the charts of one run, written from summary.json and requests.jsonl."""

from __future__ import annotations

from pathlib import Path

ERROR_KINDS = """\
`connect` (no connection), `disconnected` (closed before the response), `timeout` (`--timeout` passed,
e.g. a stalled stream), `http_401/403/404/408/413/429`, `http_4xx`, `http_5xx`, `stream_cut` (the
connection or stream ended early), `malformed_sse` (a line that is not SSE/JSON), `stream_error` (an
in-band `{"error": ...}` event), `not_streaming` (a JSON reply instead of a stream; `--allow-buffered`
measures it), `malformed_response`, `no_content`, `client_error` (a bug or local problem; see detail)."""


DEFINITIONS_LINK = "docs/bench.md#metric-definitions"  # one place for them, not a copy in every report
SLO_MET_SHARE = 0.95  # a level meets the SLO when this share of its requests met every SLO given
# Fewest successful requests for a percentile of its own: below them pXX is (an interpolation between) the
# top one or two values, i.e. the max (p99 of 24 requests is the max).
PERCENTILE_MIN_REQUESTS = {"p95": 20, "p99": 100}


def slo_given(summary: dict) -> bool:
    return any(v is not None for v in (summary["config"].get("slo") or {}).values())


def headline(summary: dict) -> list[str]:
    """Peak output tokens/s, the highest level meeting the SLO, and $ per 1M output tokens there."""
    levels = [lv for lv in summary["levels"] if lv.get("succeeded")]
    if not levels:
        return ["**No level had a successful request**: see Errors below."]
    peak = max(levels, key=lambda lv: lv["output_throughput_tok_s"])
    lines = [f"**Peak**: {peak['output_throughput_tok_s']:,.0f} output tok/s at {_label(peak)}{_cost(peak)}."]
    if not slo_given(summary):
        lines.append("**SLO**: none given, so no level is judged (pass --slo-ttft-ms / --slo-tpot-ms / "
                     "--slo-e2e-ms to find the highest level that meets yours).")
        return lines
    meeting = [lv for lv in levels if (lv.get("slo_attainment") or 0) >= SLO_MET_SHARE]
    share = f"{SLO_MET_SHARE:.0%} of requests within the SLO"
    if not meeting:
        lines.append(f"**SLO**: no level met it ({share}); the lightest level measured is already past it.")
    else:
        best = max(meeting, key=lambda lv: (lv["rate"] or lv["concurrency"], lv["output_throughput_tok_s"]))
        lines.append(f"**Highest level meeting the SLO** ({share}): {_label(best)}, "
                     f"{best['output_throughput_tok_s']:,.0f} output tok/s{_cost(best)}.")
    return lines


def _rtt(rtt: dict | None) -> str:
    if not rtt:
        return ""
    if rtt.get("error"):
        return f"; round trip to the endpoint not measured ({rtt['error']})"
    # Far more than a few ms: the client is not in the endpoint's region, and every TTFT carries the distance.
    return f"; round trip to the endpoint {rtt['median_ms']:.1f} ms (TCP connect, median of {rtt['samples']})"


def _cost(lv: dict) -> str:
    cost = lv.get("cost_per_1m_tokens_usd")
    return "" if cost is None else f", ${cost:,.2f} per 1M output tokens"


def percentile_warnings(levels: list[dict]) -> list[tuple[dict, str]]:
    """Levels with too few successful requests for the percentiles the report prints."""
    out = []
    for lv in levels:
        n = (lv.get("ttft_ms") or {}).get("n") or lv.get("succeeded") or 0
        short = [p for p, need in PERCENTILE_MIN_REQUESTS.items() if 0 < n < need]
        if short:
            needs = ", ".join(f"a {p} needs >= {PERCENTILE_MIN_REQUESTS[p]}" for p in short)
            out.append((lv, f"only {n} successful requests: its {'/'.join(short)} is the max or next to it "
                            f"({needs}); raise --requests or --duration"))
    return out


def _f(value, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _label(lv: dict) -> str:
    return f"c={lv['concurrency']}" if lv["rate"] is None else f"{lv['rate']:g} req/s (cap {lv['concurrency']})"


def results_table(levels: list[dict], slo: bool = True) -> list[str]:
    # With no SLO every successful request "meets" it: the column is then the success rate, and says so.
    share = "SLO %" if slo else "success %"
    lines = [
        "| level | ok / all | req/s | output tok/s | TTFT p50 | TTFT p95 | TTFT p99 | ITL p50 | TPOT p50 | "
        f"E2E p50 | E2E p95 | goodput req/s | {share} | $ / 1k tok | $ / 1M tok |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for lv in levels:
        slo = lv["slo_attainment"]
        lines.append(
            f"| {_label(lv)} | {lv['succeeded']} / {lv['requests']} | {lv['request_throughput_rps']:.2f} | "
            f"{lv['output_throughput_tok_s']:.1f} | {_f(lv['ttft_ms']['p50'])} | {_f(lv['ttft_ms']['p95'])} | "
            f"{_f(lv['ttft_ms']['p99'])} | {_f(lv['itl_ms']['p50'])} | {_f(lv['tpot_ms']['p50'])} | "
            f"{_f(lv['e2e_ms']['p50'], '.0f')} | {_f(lv['e2e_ms']['p95'], '.0f')} | {lv['goodput_rps']:.2f} | "
            f"{_f(None if slo is None else slo * 100, '.0f')}% | {_f(lv['cost_per_1k_tokens_usd'], '.5f')} | "
            f"{_f(lv.get('cost_per_1m_tokens_usd'), '.2f')} |"
        )
    return lines


def render_report(summary: dict, charts: list[Path]) -> str:
    cfg = summary["config"]
    target = summary["target"]
    client = summary.get("client", {})
    levels = summary["levels"]
    slo = cfg["slo"]
    slo_text = ", ".join(f"{k.replace('_ms', '')} <= {v:g} ms" for k, v in slo.items() if v is not None) or "none given"
    price = (
        f"${cfg['price_per_hour_usd']:g}/h x {cfg['instance_count']} ({cfg['price_source']})"
        if cfg["price_per_hour_usd"] is not None
        else "not given (no cost figures)"
    )
    bound = " or ".join(
        x
        for x in (
            f"{cfg['requests_per_level']} requests" if cfg["requests_per_level"] else "",
            f"{cfg['duration_s_per_level']:g} s" if cfg["duration_s_per_level"] else "",
        )
        if x
    )
    lines = [
        f"# Benchmark: {target.get('label') or target['url']}",
        "",
        *headline(summary),
        "",
        f"- Endpoint: `{target.get('endpoint', target['url'])}`, model `{target['model']}`",
        f"- Run {summary.get('run_id')}: {summary.get('started_at')} to {summary.get('finished_at')}, "
        f"status **{summary['status']}**",
        f"- Load: {cfg['mode']} "
        + (f"levels {cfg['concurrency']}" if cfg["mode"] == "concurrency" else f"rates {cfg['rates']} req/s "
           f"({cfg['arrival']} arrivals, at most {cfg['concurrency'][0]} in flight)")
        + f", {bound} per level, warmup {cfg['warmup']}, {cfg['workers']} worker process(es), "
        f"{'HTTP/2' if cfg['http2'] else 'HTTP/1.1'}",
        f"- Prompts: {cfg['dataset'] or ('synthetic, ' + str(cfg['prompt_tokens']) + ' tokens')}, "
        f"max_tokens {cfg['max_tokens']}",
        f"- Price: {price}; SLO: {slo_text}",
        f"- Client: {client.get('host')} ({client.get('cpus')} CPUs, load average at start "
        f"{client.get('load_average_at_start')}){_rtt(client.get('rtt_to_endpoint'))}",
        "",
        "## Results",
        "",
        "Times in ms. Tokens counted from: "
        + ", ".join(sorted({str(lv['token_count_source']) for lv in levels}) or ["-"])
        + ".",
        "",
        *results_table(levels, slo_given(summary)),
        "",
    ]
    lines += break_even_lines(summary)
    from bench.trust import report_lines as trust_lines

    lines += trust_lines(summary)
    from bench.search import report_lines as search_lines

    lines += search_lines(summary)
    from bench.autoscaler import report_lines as autoscaler_lines

    lines += autoscaler_lines(summary)
    if charts:
        lines += ["## Charts", ""] + [f"![{p.stem}]({p.name})" for p in charts] + [""]
    warnings = [(lv, w) for lv in levels for w in lv.get("warnings", [])] + percentile_warnings(levels)
    if warnings:
        lines += ["## Warnings", ""] + [f"- {_label(lv)}: {w}" for lv, w in warnings] + [""]
    if any(lv["errors"] for lv in levels):
        lines += ["## Errors", "", "| level | kind | count | example |", "|---|---|---|---|"]
        for lv in levels:
            for kind, count in sorted(lv["errors"].items()):
                example = (lv.get("error_examples", {}).get(kind) or "").replace("|", "\\|").replace("\n", " ")
                lines.append(f"| {_label(lv)} | {kind} | {count} | {example[:160]} |")
        lines += ["", "Error kinds: " + ERROR_KINDS, ""]
    if any(lv.get("server_ttft_ms") for lv in levels):
        lines += [
            "## Client vs server TTFT",
            "",
            "The server (gateway) reports its own TTFT in a `: metrics` SSE comment or X-TTFT-MS; the rest of the",
            "client's TTFT is the network, the TLS/HTTP front door and the gateway's own overhead.",
            "",
            "| level | client TTFT p50 | server TTFT p50 | difference p50 | difference p95 |",
            "|---|---|---|---|---|",
        ]
        for lv in levels:
            server, share = lv.get("server_ttft_ms"), lv.get("gateway_share_ttft_ms")
            if server:
                lines.append(
                    f"| {_label(lv)} | {_f(lv['ttft_ms']['p50'])} | {_f(server['p50'])} | {_f(share['p50'])} | "
                    f"{_f(share['p95'])} |"
                )
        lines.append("")
    from bench.workload_stats import workload_lines

    lines += workload_lines(summary)
    from bench.server_metrics import report_lines as server_lines

    lines += server_lines(summary)
    lines += [
        "## The client's own overhead",
        "",
        "| level | client lag p50 | client lag p99 | send delay p50 | send delay p99 | client CPU ms / request "
        "| retried |",
        "|---|---|---|---|---|---|---|",
    ]
    for lv in levels:
        lag = lv["client_lag_ms"]
        send = lv.get("client_send_delay_ms") or {}
        lines.append(
            f"| {_label(lv)} | {_f(lag['p50'], '.2f')} | {_f(lag['p99'], '.2f')} | {_f(send.get('p50'), '.2f')} | "
            f"{_f(send.get('p99'), '.2f')} | {_f(lv.get('client_cpu_ms_per_request'), '.2f')} | "
            f"{lv.get('retried', 0)} |"
        )
    lines += ["", "## Metric definitions", "",
              f"TTFT, ITL, TPOT, E2E, goodput, SLO attainment, cost and client lag are defined once, in the "
              f"project's `{DEFINITIONS_LINK}`, next to how to read this report.", ""]
    return "\n".join(lines)


def break_even_lines(summary: dict) -> list[str]:
    """Self-hosted $ per 1M tokens at the run's best level (planning/breakeven.py); only for a priced run."""
    from planning import breakeven

    try:
        throughput, fleet_price = breakeven.measured_throughput_of(summary, "this run")
    except breakeven.BreakEvenError:
        return []  # no level produced tokens: nothing to price
    if fleet_price is None:
        return []
    lines = ["## Self-host or buy tokens", "", "```"]
    for utilization in (1.0, 0.5):
        lines += breakeven.lines(breakeven.compare(fleet_price, throughput, utilization, None))[1:2]
    return lines + [
        "```",
        "",
        "Against a hosted API's prices: `python -m bench plan --from <this directory> --api-price IN,OUT` "
        "(USD per 1M input,output tokens; see docs/planner.md).",
        "",
    ]


def write_outputs(summary: dict, out_dir: Path, charts: bool = True) -> list[Path]:
    """report.md plus PNG charts; a chart that fails is reported, never fatal."""
    from bench.charts import latency_chart, throughput_chart, ttft_cdf_chart

    out_dir = Path(out_dir)
    paths: list[Path] = []
    if charts and summary["levels"]:
        try:
            from bench.search import by_load
            from bench.server_metrics import chart as server_chart

            paths.append(latency_chart(by_load(summary), out_dir / "latency.png"))
            paths.append(throughput_chart(by_load(summary), out_dir / "throughput.png"))
            from bench.charts import throughput_latency_chart

            knee = throughput_latency_chart(by_load(summary), out_dir / "throughput_latency.png")
            if knee is not None:
                paths.append(knee)
            cdf = ttft_cdf_chart(summary, out_dir / "requests.jsonl", out_dir / "ttft_cdf.png")
            if cdf is not None:
                paths.append(cdf)
            server = server_chart(summary, out_dir / "server_metrics.png")
            if server is not None:
                paths.append(server)
            from bench.charts import timeline_chart

            timeline = timeline_chart(summary, out_dir / "timeline.png")
            if timeline is not None:
                paths.append(timeline)
        except Exception as exc:  # the numbers matter more than the pictures
            summary.setdefault("warnings", []).append(f"charts failed: {type(exc).__name__}: {exc}")
    (out_dir / "report.md").write_text(render_report(summary, paths))
    return paths
