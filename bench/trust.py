"""report.md's "Can these numbers be trusted" section: throttling, failures, client-bound levels, and the
percentiles a user's SLO sees (failed requests as infinitely slow). The figures come from bench.stats."""

from __future__ import annotations

from bench.stats import ERROR_SHARE_LIMIT


def _label(lv: dict) -> str:
    return f"c={lv['concurrency']}" if lv["rate"] is None else f"{lv['rate']:g} req/s"


def _p(value) -> str:
    return "failed" if value is None else f"{value:.1f}"


def report_lines(summary: dict) -> list[str]:
    levels = summary["levels"]
    throttled = [lv for lv in levels if (lv.get("throttled") or {}).get("count")]
    failing = [lv for lv in levels if lv.get("failed")]
    invalid = [lv for lv in levels if lv.get("valid") is False]
    if not (throttled or failing or invalid):
        return []
    lines = ["## Can these numbers be trusted", ""]
    for lv in throttled:
        t = lv["throttled"]
        lines.append(
            f"- **{_label(lv)} was throttled**: {t['count']} of {lv['requests']} requests ({100 * t['share']:.1f} %) "
            "got HTTP 429. On the aws stack that is the API Gateway usage plan (10 req/s, burst 20 by default), "
            "not the model: for a capacity run raise `llm-inference:gatewayRateLimit` and "
            "`llm-inference:gatewayBurstLimit` (`pulumi config set`, then `pulumi up`; docs/bench.md)."
        )
    for lv in invalid:
        lines.append(f"- **{_label(lv)} is invalid** (the client was the bottleneck): " + "; ".join(lv["why"]) + ".")
    over = [lv for lv in failing if lv.get("error_share", 0) > ERROR_SHARE_LIMIT]
    if over:
        lines.append(
            f"- Over {ERROR_SHARE_LIMIT:.0%} of the requests failed at "
            + ", ".join(f"{_label(lv)} ({100 * lv['error_share']:.1f} %)" for lv in over)
            + ": the success-only percentiles above describe only the requests that got through."
        )
    if failing:
        lines += [
            "",
            "With failures counted as infinitely slow (what a user's SLO sees; \"failed\": the percentile falls on a "
            "failed request):",
            "",
            "| level | failed / all | TTFT p50 | TTFT p90 | TTFT p95 | TTFT p99 | E2E p50 | E2E p90 | E2E p95 | E2E p99 |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for lv in failing:
            ttft, e2e = lv["ttft_ms_all"], lv["e2e_ms_all"]
            cells = [_p(ttft[k]) for k in ("p50", "p90", "p95", "p99")] + [_p(e2e[k]) for k in ("p50", "p90", "p95", "p99")]
            lines.append(f"| {_label(lv)} | {lv['failed']} / {lv['requests']} | " + " | ".join(cells) + " |")
    return lines + [""]
