"""A run's time line: its records and the polled capacity, per window (`--window`, default 10 s).

Each request belongs to the window in which it was sent (`start_s`): its latency, its error and whether it
met the SLO are what a user arriving then got, so a scale-out shows as the windows between the load step
and the new capacity. Its output tokens count where it finished (`end_s`), as a server's throughput does.
Rows (timeline.jsonl): `{"t_s", "window_s", "rps", "output_tok_s", "ttft_ms": {"p50", "p95"},
"e2e_ms": {"p50", "p95"}, "errors", "slo_attainment", "capacity"}`; `rps` is requests sent per second,
`slo_attainment` requests meeting every SLO / requests sent (errors never meet it; with no SLO given,
succeeding is meeting it, as in the level summary), `capacity` the last value polled by the window's end
(`{"current", "desired"}`, instances) or null.

`add()` runs in the parent for every record: it only appends to the window's lists.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from bench.stats import Slo


class Timeline:
    def __init__(self, window_s: float, slo: Slo, duration_s: float | None = None):
        if not window_s > 0:
            raise ValueError(f"window {window_s!r}: must be > 0 seconds")
        self.window_s = window_s
        self.slo = slo
        self.duration_s = duration_s
        self._sent: dict[int, int] = defaultdict(int)
        self._errors: dict[int, int] = defaultdict(int)
        self._met: dict[int, int] = defaultdict(int)
        self._tokens: dict[int, int] = defaultdict(int)
        self._ttft: dict[int, list] = defaultdict(list)
        self._e2e: dict[int, list] = defaultdict(list)
        self.failures: list[tuple[float, str]] = []  # (start_s, error kind) of every failed request
        self.capacity: list[tuple[float, int | None, int | None]] = []  # (t_s, current, desired)
        self.output_tokens = 0
        self.last_end_s = 0.0

    def _index(self, t_s: float) -> int:
        return max(0, int(t_s // self.window_s))

    def add(self, rec: dict) -> None:
        if rec.get("warmup"):
            return
        w = self._index(rec["start_s"])
        self._sent[w] += 1
        self.last_end_s = max(self.last_end_s, rec["end_s"])
        if not rec["ok"]:
            self._errors[w] += 1
            self.failures.append((rec["start_s"], rec.get("error") or "unknown"))
            return
        self._ttft[w].append(rec["ttft_ms"])
        self._e2e[w].append(rec["e2e_ms"])
        self._tokens[self._index(rec["end_s"])] += rec["output_tokens"]
        self.output_tokens += rec["output_tokens"]
        if self.slo.met(rec):
            self._met[w] += 1

    def add_capacity(self, t_s: float, current: int | None, desired: int | None) -> None:
        self.capacity.append((t_s, current, desired))

    def capacity_at(self, t_s: float) -> dict | None:
        """The last capacity polled at or before t_s."""
        last = None
        for t, current, desired in self.capacity:
            if t > t_s:
                break
            last = {"current": current, "desired": desired}
        return last

    def windows(self) -> int:
        span = max(self.duration_s or 0.0, max((k + 1) * self.window_s for k in self._sent) if self._sent else 0.0)
        return math.ceil(span / self.window_s - 1e-9)

    def rows(self) -> list[dict]:
        out = []
        count = self.windows()
        for w in range(count):
            t_s = w * self.window_s
            # The last window of a run that is not a whole number of windows is as long as what is left.
            width = min(self.window_s, self.duration_s - t_s) if self.duration_s and self.duration_s > t_s \
                else self.window_s
            sent = self._sent.get(w, 0)
            out.append({
                "t_s": round(t_s, 3),
                "window_s": round(width, 3),
                "rps": round(sent / width, 3),
                "output_tok_s": round(self._tokens.get(w, 0) / width, 3),
                "ttft_ms": _percentiles(self._ttft.get(w)),
                "e2e_ms": _percentiles(self._e2e.get(w)),
                "errors": self._errors.get(w, 0),
                "slo_attainment": round(self._met.get(w, 0) / sent, 4) if sent else None,
                "capacity": self.capacity_at(t_s + width),
            })
        return out


def _percentiles(values) -> dict:
    if not values:
        return {"p50": None, "p95": None}
    p50, p95 = np.percentile(np.asarray(values, dtype=float), [50, 95])
    return {"p50": round(float(p50), 3), "p95": round(float(p95), 3)}
