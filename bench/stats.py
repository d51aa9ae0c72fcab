"""Accumulate request records into one level's statistics, in bounded memory.

Samples are kept exactly up to EXACT_LIMIT values per metric (percentiles then interpolate linearly
between order statistics, as numpy does); past that the metric folds into a log histogram with 0.1%
relative resolution, so a long run's memory stays flat. Failed requests never enter the success-only
latency statistics (`ttft_ms`, `e2e_ms`, ...); they count in `requests`, `failed`, `errors`, against goodput
and SLO attainment, and in the error-inclusive percentiles (`ttft_ms_all`, `e2e_ms_all`), where a failed
request is infinitely slow, as a user's SLO sees it. JSON has no infinity: a percentile that falls on a
failed request is `null` there (n > 0 tells it from "no data"), and the console and report print "failed".

A level also says whether its figures can be trusted (`valid`, `why`): see the thresholds below.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from dataclasses import dataclass

import numpy as np

EXACT_LIMIT = 100_000
QUANTILES = {"p50": 50, "p90": 90, "p95": 95, "p99": 99}
# More failures than this share and the bench warns and exits non-zero (unless --allow-errors): past 1 %
# the highest percentile it prints (p99) falls on a failed request, so the success-only p99 describes a
# request the failed ones never got to be.
ERROR_SHARE_LIMIT = 0.01
# A level is invalid (the client, not the server, set the figures) when any of these is passed:
# closed loop, the slots waited for the client more than this share of the time (mean lag / (mean lag +
# mean E2E)): the server saw a concurrency that much lower than the level's;
CLOSED_LOOP_IDLE_LIMIT = 0.05
# open loop, the arrivals were sent this late at p99 (the lag warning's threshold): the offered rate was
# not the schedule's;
OPEN_LOOP_LAG_P99_MS = 50.0
# the request bytes reached the socket this long after the send began (p95): the same event loop stamps
# the reply's reads, so TTFT and ITL carry delays of this order; judged against TTFT p50, with a floor;
SEND_DELAY_SHARE_OF_TTFT = 0.10
SEND_DELAY_FLOOR_MS = 5.0
# the load processes were busy more than this share of the level's wall time: a saturated event loop
# queues callbacks (a queue's wait grows as 1 / (1 - utilisation): 9x the service time at 0.9).
CLIENT_CPU_LIMIT = 0.90
MIN_REQUESTS_TO_JUDGE = 10  # fewer and a p95/p99 is one request's value
_LOG_STEP = math.log1p(0.002)  # bucket width: 0.2% => a bucket's midpoint is within 0.1%
_FLOOR = 1e-3  # values at or below 1 µs (in ms) share one bucket


class Sample:
    __slots__ = ("values", "hist", "count", "total", "min", "max")

    def __init__(self):
        self.values: array | None = array("d")
        self.hist: Counter | None = None
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf

    def add(self, x: float) -> None:
        self.count += 1
        self.total += x
        if x < self.min:
            self.min = x
        if x > self.max:
            self.max = x
        if self.values is not None:
            self.values.append(x)
            if len(self.values) > EXACT_LIMIT:
                self.hist = Counter(map(_bucket, self.values))
                self.values = None
        else:
            self.hist[_bucket(x)] += 1

    def extend(self, xs) -> None:
        for x in xs:
            self.add(x)

    def percentile(self, q: float) -> float | None:
        if not self.count:
            return None
        if self.values is not None:
            return float(np.percentile(np.frombuffer(self.values, dtype=np.float64), q))
        rank = q / 100 * (self.count - 1)
        seen = 0
        for key in sorted(self.hist):
            seen += self.hist[key]
            if seen > rank:
                return min(max(_bucket_value(key), self.min), self.max)
        return self.max

    def summary(self, digits: int = 3) -> dict:
        if not self.count:
            return {"mean": None, **{k: None for k in QUANTILES}, "max": None, "min": None, "n": 0}
        out = {"mean": round(self.total / self.count, digits)}
        for key, q in QUANTILES.items():
            out[key] = round(self.percentile(q), digits)
        out["max"] = round(self.max, digits)
        out["min"] = round(self.min, digits)
        out["n"] = self.count
        return out

    def summary_with_failures(self, failed: int, digits: int = 3) -> dict:
        """Percentiles over successes plus `failed` requests counted as infinitely slow; `None` (JSON
        null) where a percentile falls on a failed one. Linear interpolation as in `percentile`: between
        the slowest success and a failure it is a failure."""
        n = self.count + failed
        out: dict = {}
        for key, q in QUANTILES.items():
            if not n:
                out[key] = None
                continue
            rank = q / 100 * (n - 1)
            if math.ceil(rank) >= self.count:
                out[key] = None
            elif self.count == 1:
                out[key] = round(self.percentile(0), digits)
            else:  # the same order statistics as the successes alone, at the rank among all
                out[key] = round(self.percentile(100 * rank / (self.count - 1)), digits)
        out["n"] = n
        out["failed"] = failed
        return out

    def cdf(self, points: int = 400) -> tuple[list[float], list[float]]:
        """(values, cumulative fractions) for plotting."""
        if not self.count:
            return [], []
        qs = np.linspace(0, 100, points)
        return [self.percentile(q) for q in qs], list(qs / 100)


def _bucket(x: float) -> int:
    return -1 if x <= _FLOOR else int(math.log(x / _FLOOR) / _LOG_STEP)


def _bucket_value(key: int) -> float:
    return 0.0 if key < 0 else _FLOOR * math.exp((key + 0.5) * _LOG_STEP)


@dataclass(frozen=True)
class Slo:
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.ttft_ms, self.tpot_ms, self.e2e_ms))

    def met(self, rec: dict) -> bool:
        if not rec.get("ok"):
            return False
        if self.ttft_ms is not None and rec["ttft_ms"] > self.ttft_ms:
            return False
        if self.tpot_ms is not None and rec.get("tpot_ms") is not None and rec["tpot_ms"] > self.tpot_ms:
            return False
        return not (self.e2e_ms is not None and rec["e2e_ms"] > self.e2e_ms)


class LevelStats:
    """Everything one level's summary needs, fed record by record."""

    def __init__(self, level: int, concurrency: int, rate: float | None, slo: Slo, price_per_hour: float | None):
        self.level = level
        self.concurrency = concurrency
        self.rate = rate
        self.slo = slo
        self.price_per_hour = price_per_hour
        self.requests = 0
        self.succeeded = 0
        self.warmup = 0
        self.errors: Counter = Counter()
        self.error_examples: dict[str, str] = {}
        self.slo_met = 0
        self.output_tokens = 0
        self.prompt_tokens = 0
        self.token_sources: Counter = Counter()
        self.single_read = 0
        self.first_start = math.inf
        self.last_end = -math.inf
        self.ttft = Sample()
        self.itl = Sample()
        self.tpot = Sample()
        self.e2e = Sample()
        self.lag = Sample()
        self.send_delay = Sample()  # post() called -> request written to the socket (client overhead)
        self.retried = 0
        self.server_ttft = Sample()
        self.gateway_share = Sample()  # client TTFT minus the server-reported TTFT, per request
        self.ttft_over_e2e = Sample()
        self.client_cpu_s = 0.0
        self.client_processes = 1  # the load processes that shared the level (the runner sets it)
        self.stopped_early: str | None = None

    def add(self, rec: dict) -> None:
        if rec.get("warmup"):
            self.warmup += 1
            return
        self.requests += 1
        self.first_start = min(self.first_start, rec["start_s"])
        self.last_end = max(self.last_end, rec["end_s"])
        self.lag.add(rec["client_lag_ms"])
        if rec.get("retried"):
            self.retried += 1
        if not rec["ok"]:
            kind = rec["error"] or "unknown"
            self.errors[kind] += 1
            self.error_examples.setdefault(kind, rec.get("error_detail") or "")
            return
        self.succeeded += 1
        if self.slo.met(rec):
            self.slo_met += 1
        self.output_tokens += rec["output_tokens"]
        self.prompt_tokens += rec.get("prompt_tokens") or 0
        self.token_sources[rec["token_count_source"]] += 1
        self.ttft.add(rec["ttft_ms"])
        self.e2e.add(rec["e2e_ms"])
        if rec.get("send_delay_ms") is not None:
            self.send_delay.add(rec["send_delay_ms"])
        self.itl.extend(rec["itl_ms"])
        if rec.get("tpot_ms") is not None:
            self.tpot.add(rec["tpot_ms"])
        if rec["e2e_ms"] > 0:
            self.ttft_over_e2e.add(rec["ttft_ms"] / rec["e2e_ms"])
        if rec.get("single_read") and rec["output_tokens"] > 1:
            self.single_read += 1
        server_ttft = rec.get("server_ttft_ms")
        if isinstance(server_ttft, int | float):
            self.server_ttft.add(server_ttft)
            self.gateway_share.add(rec["ttft_ms"] - server_ttft)

    @property
    def failed(self) -> int:
        return self.requests - self.succeeded

    @property
    def duration_s(self) -> float:
        return max(0.0, self.last_end - self.first_start) if self.requests else 0.0

    def token_count_source(self) -> str | None:
        if not self.token_sources:
            return None
        return next(iter(self.token_sources)) if len(self.token_sources) == 1 else "mixed"

    @property
    def throttled(self) -> int:
        return self.errors.get("http_429", 0)

    def error_share(self) -> float:
        return self.failed / self.requests if self.requests else 0.0

    def client_cpu_share(self) -> float | None:
        wall = self.duration_s * max(1, self.client_processes)
        return self.client_cpu_s / wall if wall > 0 and self.client_cpu_s else None

    def invalid_because(self) -> list[str]:
        """Why the client, not the server, may have set this level's figures (empty: valid)."""
        why = []
        if self.requests < MIN_REQUESTS_TO_JUDGE:
            return why
        if self.rate is None:
            lag, e2e = self.lag.total / self.lag.count, self.e2e.total / self.e2e.count if self.e2e.count else 0.0
            idle = lag / (lag + e2e) if lag > 0 else 0.0
            if idle > CLOSED_LOOP_IDLE_LIMIT:
                why.append(
                    f"client lag: the slots waited for the client {idle:.0%} of the time (mean {lag:.1f} ms per "
                    f"request, limit {CLOSED_LOOP_IDLE_LIMIT:.0%}), so the server saw about "
                    f"{self.concurrency * (1 - idle):.1f} requests in flight, not {self.concurrency}"
                )
        elif (self.lag.percentile(99) or 0) > OPEN_LOOP_LAG_P99_MS:
            why.append(
                f"client lag p99 {self.lag.percentile(99):.0f} ms (limit {OPEN_LOOP_LAG_P99_MS:.0f} ms): "
                "requests left later than their arrival schedule, so the offered rate was lower"
            )
        ttft_p50 = self.ttft.percentile(50)
        if self.send_delay.count and ttft_p50 is not None:
            limit = max(SEND_DELAY_FLOOR_MS, SEND_DELAY_SHARE_OF_TTFT * ttft_p50)
            send_p95 = self.send_delay.percentile(95)
            if send_p95 > limit:
                why.append(
                    f"send delay p95 {send_p95:.1f} ms (limit {limit:.1f} ms: {SEND_DELAY_SHARE_OF_TTFT:.0%} of TTFT "
                    f"p50, at least {SEND_DELAY_FLOOR_MS:g} ms): the client's event loop was busy, and the same "
                    "loop stamps the replies"
                )
        cpu = self.client_cpu_share()
        if cpu is not None and cpu > CLIENT_CPU_LIMIT:
            why.append(
                f"client CPU {cpu:.0%} of {self.client_processes} process(es) over the level (limit "
                f"{CLIENT_CPU_LIMIT:.0%}): the load generator was saturated"
            )
        return why

    def warnings(self) -> list[str]:
        out = []
        if self.throttled:
            out.append(
                f"throttled: {self.throttled} of {self.requests} requests ({self.throttled / self.requests:.1%}) got "
                "HTTP 429, the gateway's usage plan limit (aws stack: 10 req/s, burst 20 by default), not the "
                "model's capacity; for a capacity run raise it: pulumi config set llm-inference:gatewayRateLimit "
                "<req/s> and llm-inference:gatewayBurstLimit <n> (docs/bench.md)"
            )
        if self.requests and self.error_share() > ERROR_SHARE_LIMIT:
            out.append(
                f"errors: {self.failed} of {self.requests} requests failed ({self.error_share():.1%}, over "
                f"{ERROR_SHARE_LIMIT:.0%}): the success-only percentiles leave them out; see *_all for the "
                "error-inclusive ones"
            )

        if self.succeeded >= 3:
            if self.single_read / self.succeeded >= 0.5:
                out.append(
                    f"buffering: {self.single_read}/{self.succeeded} replies arrived whole in one network read; "
                    "a gateway or proxy is buffering the stream, so TTFT here is really E2E"
                )
            elif (self.ttft_over_e2e.percentile(50) or 0) >= 0.9:
                out.append(
                    "buffering: median TTFT is over 90% of E2E; the stream is probably buffered on the way"
                )
        if self.token_count_source() in ("chunks", "mixed"):
            out.append(
                "output tokens are counted as content chunks for some/all replies (no `usage` from the "
                "server); throughput and TPOT are only exact if each chunk carries one token"
            )
        if self.rate is not None and self.requests >= 10 and (self.lag.percentile(99) or 0) > 50:
            out.append(
                f"client lag p99 {self.lag.percentile(99):.0f} ms: the client or the concurrency cap could not "
                "keep the arrival schedule; raise --concurrency or --workers"
            )
        if self.stopped_early:
            out.append(f"level stopped early: {self.stopped_early}")
        return out

    def summary(self) -> dict:
        duration = self.duration_s
        tok_s = self.output_tokens / duration if duration > 0 else 0.0
        cost_1k = None
        if self.price_per_hour is not None and tok_s > 0:
            cost_1k = self.price_per_hour / (tok_s * 3600) * 1000
        met = self.slo_met if self.slo.any else self.succeeded
        return {
            "concurrency": self.concurrency,
            "rate": self.rate,
            "requests": self.requests,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "errors": dict(self.errors),
            "error_examples": dict(self.error_examples),
            "duration_s": round(duration, 4),
            "request_throughput_rps": round(self.succeeded / duration, 4) if duration > 0 else 0.0,
            "output_tokens": self.output_tokens,
            "prompt_tokens": self.prompt_tokens,
            "output_throughput_tok_s": round(tok_s, 3),
            "token_count_source": self.token_count_source(),
            "ttft_ms": self.ttft.summary(),
            "itl_ms": self.itl.summary(),
            "tpot_ms": self.tpot.summary(),
            "e2e_ms": self.e2e.summary(),
            "ttft_ms_all": self.ttft.summary_with_failures(self.failed),
            "e2e_ms_all": self.e2e.summary_with_failures(self.failed),
            "throttled": {"count": self.throttled,
                          "share": round(self.throttled / self.requests, 4) if self.requests else 0.0},
            "error_share": round(self.error_share(), 4),
            "valid": not (why := self.invalid_because()),
            "why": why,
            "goodput_rps": round(met / duration, 4) if duration > 0 else 0.0,
            "slo_attainment": round(met / self.requests, 4) if self.requests else None,
            "cost_per_1k_tokens_usd": round(cost_1k, 6) if cost_1k is not None else None,
            "cost_per_1m_tokens_usd": round(cost_1k * 1000, 4) if cost_1k is not None else None,
            "client_lag_ms": self.lag.summary(),
            "client_send_delay_ms": self.send_delay.summary() if self.send_delay.count else None,
            "retried": self.retried,
            "server_ttft_ms": self.server_ttft.summary() if self.server_ttft.count else None,
            "gateway_share_ttft_ms": self.gateway_share.summary() if self.gateway_share.count else None,
            "warmup_requests": self.warmup,
            "client_cpu_s": round(self.client_cpu_s, 3),
            "client_cpu_share": None if (cpu := self.client_cpu_share()) is None else round(cpu, 4),
            "client_cpu_ms_per_request": round(1000 * self.client_cpu_s / max(1, self.requests + self.warmup), 3),
            "stopped_early": self.stopped_early,
            "warnings": self.warnings(),
        }
