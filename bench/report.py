"""report.md and the charts of one run, written from summary.json and requests.jsonl."""

from __future__ import annotations

from pathlib import Path

METRIC_DEFINITIONS = """\
- **TTFT** (time to first token): from sending the request (its last byte handed to the socket) to the
  first streamed event that carries non-empty content. The role-only first chunk many servers send at once
  does not count. Arrival times are taken where the socket is read, before any parsing.
- **ITL** (inter-token latency): every gap between consecutive content events, pooled over all requests.
  An event can carry several tokens, so ITL is per event, not per token.
- **TPOT** (time per output token): per request, (E2E - TTFT) / (output tokens - 1); requests with one
  output token have none.
- **E2E**: from sending the request to the last content event.
- **Output tokens**: the server's `usage.completion_tokens` (requested with `stream_options.include_usage`);
  when a server sends no usage, the number of content events, and `token_count_source` says `chunks`.
- **Request / output throughput**: successful requests and their output tokens divided by the level's
  duration (first measured request sent to last one finished).
- **Goodput**: requests that met every SLO given (TTFT, TPOT, E2E) per second; failed requests never
  meet it. **SLO attainment**: those requests / all measured requests. With no SLO, every successful
  request counts.
- **Cost per 1k output tokens**: price per hour / (output tokens/s x 3600) x 1000 (x 1000 again per 1M);
  the price covers all instances (`--instance-count`), and is only as right as the price given.
- **Client lag**: how late the client sent each request compared with its schedule (closed loop: after the
  previous request in its slot ended; open loop: its arrival time). Large values mean the client, or the
  concurrency cap, was the bottleneck, not the server. **Send delay**: from the client starting a request
  to its bytes reaching the socket (the HTTP library's own queueing); it is not charged to TTFT or E2E.
- **Retried**: requests sent once more on a new connection because the kept-alive one was closed under
  them before any reply (servers close idle connections after a few seconds); their times count from the
  first try. A request that fails again is counted as an error.
- **Errors** are counted by kind and kept out of every latency statistic. Warmup requests are recorded in
  requests.jsonl with `"warmup": true` and kept out of everything else.
- Percentiles interpolate linearly between order statistics (numpy's default); above 100,000 values per
  metric a log histogram with 0.1% resolution takes over.
- Times are taken when the bytes are read from the socket (aiohttp protocol callback), before any parsing.
"""

ERROR_KINDS = """\
`connect` (no connection), `disconnected` (closed before the response), `timeout` (`--timeout` passed,
e.g. a stalled stream), `http_401/403/404/408/413/429`, `http_4xx`, `http_5xx`, `stream_cut` (the
connection or stream ended early), `malformed_sse` (a line that is not SSE/JSON), `stream_error` (an
in-band `{"error": ...}` event), `not_streaming` (a JSON reply instead of a stream; `--allow-buffered`
measures it), `malformed_response`, `no_content`, `client_error` (a bug or local problem; see detail)."""


def _f(value, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _label(lv: dict) -> str:
    return f"c={lv['concurrency']}" if lv["rate"] is None else f"{lv['rate']:g} req/s (cap {lv['concurrency']})"


def results_table(levels: list[dict]) -> list[str]:
    lines = [
        "| level | ok / all | req/s | output tok/s | TTFT p50 | TTFT p95 | TTFT p99 | ITL p50 | TPOT p50 | "
        "E2E p50 | E2E p95 | goodput req/s | SLO | $ / 1k tok | $ / 1M tok |",
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
        f"{client.get('load_average_at_start')})",
        "",
        "## Results",
        "",
        "Times in ms. Tokens counted from: "
        + ", ".join(sorted({str(lv['token_count_source']) for lv in levels}) or ["-"])
        + ".",
        "",
        *results_table(levels),
        "",
    ]
    lines += break_even_lines(summary)
    from bench.search import report_lines as search_lines

    lines += search_lines(summary)
    if charts:
        lines += ["## Charts", ""] + [f"![{p.stem}]({p.name})" for p in charts] + [""]
    warnings = [(lv, w) for lv in levels for w in lv.get("warnings", [])]
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
    lines += ["", "## Metric definitions", "", METRIC_DEFINITIONS]
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
            cdf = ttft_cdf_chart(summary, out_dir / "requests.jsonl", out_dir / "ttft_cdf.png")
            if cdf is not None:
                paths.append(cdf)
            server = server_chart(summary, out_dir / "server_metrics.png")
            if server is not None:
                paths.append(server)
        except Exception as exc:  # the numbers matter more than the pictures
            summary.setdefault("warnings", []).append(f"charts failed: {type(exc).__name__}: {exc}")
    (out_dir / "report.md").write_text(render_report(summary, paths))
    return paths
