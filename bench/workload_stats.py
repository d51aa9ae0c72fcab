"""A level's statistics with what workloads add: per-turn figures and requested vs counted prompt tokens.

Used for every level by the runner and by `bench merge`, which recomputes it from requests.jsonl, so a
merged run's per-turn figures are as exact as its pooled ones.
"""

from __future__ import annotations

from bench.stats import LevelStats, Slo

TURN_KEYS = ("requests", "succeeded", "failed", "ttft_ms", "tpot_ms", "itl_ms", "e2e_ms")


class WorkloadLevelStats(LevelStats):
    """LevelStats plus `turns` (one LevelStats per turn number, for sessions) and `prompt_tokens_check`."""

    def __init__(self, level: int, concurrency: int, rate: float | None, slo: Slo, price_per_hour: float | None):
        super().__init__(level, concurrency, rate, slo, price_per_hour)
        self.turns: dict[int, LevelStats] = {}
        self.start_unix_s: float | None = None
        self.requested_tokens = 0
        self.counted_tokens = 0
        self.compared = 0
        self.counted_min: int | None = None
        self.counted_max: int | None = None

    def add(self, rec: dict) -> None:
        super().add(rec)
        if rec.get("warmup"):
            return
        turn = rec.get("turn")
        if turn is not None:
            if turn not in self.turns:
                self.turns[turn] = LevelStats(self.level, self.concurrency, self.rate, self.slo, None)
            self.turns[turn].add(rec)
        target, counted = rec.get("prompt_tokens_target"), rec.get("prompt_tokens")
        if rec.get("ok") and isinstance(target, int) and isinstance(counted, int):
            self.compared += 1
            self.requested_tokens += target
            self.counted_tokens += counted
            self.counted_min = counted if self.counted_min is None else min(self.counted_min, counted)
            self.counted_max = counted if self.counted_max is None else max(self.counted_max, counted)

    def summary(self) -> dict:
        out = super().summary()
        out["start_unix_s"] = self.start_unix_s
        out["prompt_tokens_check"] = (
            {
                "requests": self.compared,
                "requested_mean": round(self.requested_tokens / self.compared, 2),
                "server_mean": round(self.counted_tokens / self.compared, 2),
                "server_min": self.counted_min,
                "server_max": self.counted_max,
            }
            if self.compared
            else None
        )
        if self.turns:
            out["turns"] = {}
            for turn in sorted(self.turns):
                stats = self.turns[turn]
                full = stats.summary()
                row = {key: full[key] for key in TURN_KEYS}
                row["prompt_tokens_mean"] = round(stats.prompt_tokens / stats.succeeded, 1) if stats.succeeded else None
                out["turns"][str(turn)] = row
        return out


def _f(value, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _label(lv: dict) -> str:
    return f"c={lv['concurrency']}" if lv["rate"] is None else f"{lv['rate']:g} req/s (cap {lv['concurrency']})"


def workload_lines(summary: dict) -> list[str]:
    """report.md's workload sections: the workload, shards merged, per-turn figures, prompt tokens."""
    cfg, levels, lines = summary["config"], summary["levels"], []
    parts = []
    if cfg.get("shared_prefix_tokens"):
        parts.append(f"{cfg['prefix_groups']} shared system prompt(s) of {cfg['shared_prefix_tokens']} tokens")
    if (cfg.get("turns") or 1) > 1:
        parts.append(f"sessions of {cfg['turns']} turns, think time {cfg.get('think_time_s') or 0:g} s")
    if cfg.get("tokenizer"):
        parts.append(f"lengths exact for {cfg['tokenizer']}")
    if cfg.get("dataset_output_lengths"):
        parts.append("max_tokens = the dataset's reply lengths")
    shard = cfg.get("shard")
    if shard and shard.get("count", 1) > 1:
        parts.append(f"shard {shard['index']}/{shard['count']} of a run (merge with `python -m bench merge`)")
    if summary.get("shards"):
        hosts = ", ".join(f"{s['dir']} ({s['records']} records, {s['status']})" for s in summary["shards"])
        parts.append(f"merged from {len(summary['shards'])} shard(s): {hosts}")
    if parts:
        lines += ["## Workload", "", *[f"- {p}" for p in parts], ""]
    if any(lv.get("turns") for lv in levels):
        lines += [
            "## Per turn",
            "",
            "Turn t resends the whole history, so its prompt grows with t; TTFT growth shows what that costs.",
            "",
            "| level | turn | ok / all | prompt tokens (server, mean) | TTFT p50 | TTFT p95 | TPOT p50 | E2E p50 |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for lv in levels:
            for turn, row in (lv.get("turns") or {}).items():
                lines.append(
                    f"| {_label(lv)} | {turn} | {row['succeeded']} / {row['requests']} | {_f(row['prompt_tokens_mean'])} "
                    f"| {_f(row['ttft_ms']['p50'])} | {_f(row['ttft_ms']['p95'])} | {_f(row['tpot_ms']['p50'])} | "
                    f"{_f(row['e2e_ms']['p50'], '.0f')} |"
                )
        lines.append("")
    if any(lv.get("prompt_tokens_check") for lv in levels):
        lines += [
            "## Prompt tokens: requested vs counted by the server",
            "",
            "Requested: the length the bench made (exact with --tokenizer). Counted: the server's",
            "`usage.prompt_tokens`, which adds the chat template's tokens.",
            "",
            "| level | requests | requested (mean) | server (mean) | server min to max |",
            "|---|---|---|---|---|",
        ]
        for lv in levels:
            c = lv.get("prompt_tokens_check")
            if c:
                lines.append(f"| {_label(lv)} | {c['requests']} | {c['requested_mean']:.1f} | {c['server_mean']:.1f} | "
                             f"{c['server_min']} to {c['server_max']} |")
        lines.append("")
    return lines
