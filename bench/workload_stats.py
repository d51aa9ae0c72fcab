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
