"""The live display (stderr) and the end-of-run summary table (stdout).

The display runs in the parent process, never in a load worker; it redraws at most 4 times a second
from the parent's receive loop (no refresh thread). Without a terminal it prints one line per level.
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text


def _fmt(value, spec: str = ".0f", none: str = "-") -> str:
    return none if value is None else format(value, spec)


class Display:
    def __init__(self, enabled: bool = True, out=None, err=None):
        self.err = Console(file=err or sys.stderr, highlight=False)
        self.out = Console(file=out or sys.stdout, highlight=False)
        for console in (self.err, self.out):
            if not console.is_terminal:
                console.width = 160  # logs and CI: don't wrap the table at 80 columns
        self.live_enabled = enabled and self.err.is_terminal
        self.quiet = not enabled
        self._live: Live | None = None
        self._level = None
        self._cfg = None

    def banner(self, cfg) -> None:
        if self.quiet:
            return
        price = f"${cfg.total_price_per_hour:g}/h ({cfg.price_source})" if cfg.price_per_hour else "no price"
        search = getattr(cfg, "search", None)
        levels = search.describe() if search else ", ".join(level.label for level in cfg.levels())
        bound = (f"{cfg.requests} requests" if cfg.requests else "") + (
            f"{' or ' if cfg.requests else ''}{cfg.duration_s:g}s" if cfg.duration_s else ""
        )
        self.err.print(
            f"[bold]bench[/] {cfg.url}  model={cfg.model}  levels: {levels}  ({bound} each, "
            f"{cfg.workers or 'in-process'} worker(s))  {price}  -> {cfg.out_dir}"
        )

    def start_level(self, level, cfg) -> None:
        self._level, self._cfg = level, cfg
        if self.live_enabled:
            self._live = Live(self._render(None), console=self.err, auto_refresh=False, transient=True)
            self._live.start()

    def _render(self, stats) -> Text:
        cfg, level = self._cfg, self._level
        if stats is None:
            return Text(f"{level.label}: starting")
        done = stats.requests
        if cfg.requests:
            progress = f"{done}/{cfg.requests}"
        else:
            progress = f"{done} req"
        elapsed = stats.duration_s
        if cfg.duration_s:
            progress += f"  {elapsed:.0f}/{cfg.duration_s:.0f}s"
        ttft = stats.ttft.percentile(50)
        tok_s = stats.output_tokens / elapsed if elapsed > 0 else 0
        rps = stats.succeeded / elapsed if elapsed > 0 else 0
        line = (
            f"{level.label:>14}  {progress}  ok {stats.succeeded}  err {stats.failed}  "
            f"{rps:.2f} req/s  {tok_s:.0f} tok/s  TTFT p50 {_fmt(ttft)} ms"
        )
        if stats.warmup and not done:
            line += f"  (warmup {stats.warmup})"
        return Text(line)

    def update(self, stats) -> None:
        if self._live is not None:
            self._live.update(self._render(stats), refresh=True)

    def end_level(self, stats) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        if not self.quiet:
            s = stats.summary()
            errors = ", ".join(f"{k} {v}" for k, v in sorted(s["errors"].items())) or "none"
            self.err.print(
                f"{self._level.label:>14}  {s['succeeded']}/{s['requests']} ok  {s['request_throughput_rps']:.2f} req/s  "
                f"{s['output_throughput_tok_s']:.0f} tok/s  TTFT p50 {_fmt(s['ttft_ms']['p50'])} ms  "
                f"p95 {_fmt(s['ttft_ms']['p95'])} ms  errors: {errors}"
            )
            for warning in s["warnings"]:
                self.err.print(f"[yellow]  warning:[/] {warning}")
            for why in s.get("why", []):
                self.err.print(f"[red]  invalid level:[/] {why}")
            if s["failed"] and s["ttft_ms_all"]["n"]:
                self.err.print("  with failures as infinitely slow: TTFT " + format_all(s["ttft_ms_all"]) + " ms")

    def note(self, text: str) -> None:
        """One line after a level (server metrics, or why there are none)."""
        if not self.quiet:
            self.err.print(f"  {text}", highlight=False, markup=False)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def final(self, summary: dict, out_dir, exit_code: int) -> None:
        if summary["levels"]:
            from bench.report import headline

            self.out.print(summary_table(summary))
            for line in headline(summary):
                self.out.print(line.replace("**", ""), highlight=False, markup=False)
        if summary.get("search"):
            from bench.search import describe_result

            for line in describe_result(summary["search"]):
                self.out.print(line, highlight=False, markup=False)
        status = summary["status"]
        note = {
            "complete": "",
            "interrupted": " (interrupted: partial results)",
            "max_error_rate": " (stopped: --max-error-rate)",
            "worker_error": f" (worker error: {summary.get('error')})",
        }.get(status, f" ({status})")
        self.err.print(f"results in {out_dir}/ (summary.json, requests.jsonl, report.md){note}")
        if exit_code == 1 and status != "worker_error":
            self.err.print("[red]every request failed[/]: see the errors above and requests.jsonl")
        from bench.runner import EXIT_ERRORS, EXIT_INVALID
        from bench.stats import ERROR_SHARE_LIMIT

        if exit_code == EXIT_ERRORS:
            self.err.print(
                f"[red]exit {EXIT_ERRORS}[/]: over {ERROR_SHARE_LIMIT:.0%} of a level's requests failed (see the "
                "warnings above); --allow-errors accepts them"
            )
        if exit_code == EXIT_INVALID:
            self.err.print(f"[red]exit {EXIT_INVALID}[/] (--strict): a level is invalid, the client was the bottleneck")


def format_all(dist: dict) -> str:
    """Error-inclusive percentiles, a failed one as "failed": 'p50 812.0  p90 1204.5  p95 failed  p99 failed'."""
    return "  ".join(f"{k} {'failed' if dist[k] is None else format(dist[k], '.1f')}" for k in ("p50", "p90", "p95", "p99"))


def summary_table(summary: dict) -> Table:
    from bench.report import slo_given

    table = Table(title=f"{summary['target']['url']}  model {summary['target']['model']}", title_justify="left")
    for header in (
        "level", "ok/all", "req/s", "tok/s", "TTFT p50", "TTFT p95", "ITL p50", "TPOT p50", "E2E p95",
        "goodput", "SLO %" if slo_given(summary) else "success %", "$/1M tok",
    ):  # fmt: skip
        table.add_column(header, justify="right")
    for lv in summary["levels"]:
        label = f"c={lv['concurrency']}" if lv["rate"] is None else f"{lv['rate']:g}/s"
        if lv.get("valid") is False:
            label += " (invalid)"  # the client was the bottleneck: `why` in the warnings and summary.json
        cost = lv.get("cost_per_1m_tokens_usd")
        table.add_row(
            label,
            f"{lv['succeeded']}/{lv['requests']}",
            f"{lv['request_throughput_rps']:.2f}",
            f"{lv['output_throughput_tok_s']:.0f}",
            _fmt(lv["ttft_ms"]["p50"], ".1f"),
            _fmt(lv["ttft_ms"]["p95"], ".1f"),
            _fmt(lv["itl_ms"]["p50"], ".1f"),
            _fmt(lv["tpot_ms"]["p50"], ".1f"),
            _fmt(lv["e2e_ms"]["p95"], ".0f"),
            f"{lv['goodput_rps']:.2f}",
            _fmt(None if lv["slo_attainment"] is None else 100 * lv["slo_attainment"], ".0f"),
            _fmt(cost, ".2f"),
        )
    table.caption = "times in ms; tokens from " + ", ".join(
        sorted({lv["token_count_source"] or "-" for lv in summary["levels"]})
    )
    return table
