"""The validated settings of one benchmark run (built by bench.cli from flags, env and a Pulumi stack)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from bench.profiles import Profile
from bench.prompts import Distribution
from bench.scheduler import LevelSpec
from bench.search import SearchSpec
from bench.stats import Slo

DEFAULT_RATE_CAP = 256


class UsageError(ValueError):
    """A bad flag or input: the CLI prints it on one line and exits 2."""


@dataclass(frozen=True)
class Level:
    index: int
    concurrency: int  # slots (closed loop) or in-flight cap (rate)
    rate: float | None
    warmup: int

    @property
    def label(self) -> str:
        return f"c={self.concurrency}" if self.rate is None else f"rate={self.rate:g}/s"


@dataclass(frozen=True)
class BenchConfig:
    url: str  # the chat-completions endpoint
    base_url: str
    model: str
    api_key: str | None = field(repr=False, default=None)
    concurrency: tuple[int, ...] = (6, 12, 24, 32)
    rates: tuple[float, ...] | None = None
    arrival: str = "poisson"
    requests: int | None = None
    duration_s: float | None = 60.0
    warmup: int | None = None  # None: one request per slot (closed) / about one second of arrivals (rate)
    input_tokens: Distribution = Distribution("fixed", 128)
    output_tokens: Distribution = Distribution("fixed", 64)
    dataset: str | None = None
    price_per_hour: float | None = None
    price_source: str | None = None
    instance_count: int = 1
    slo: Slo = Slo()
    timeout_s: float = 120.0
    workers: int = 1
    http2: bool = False
    out_dir: Path = Path("bench-results")
    stack: str | None = None
    sigv4: dict | None = None
    extra_headers: dict = field(default_factory=dict)
    extra_body: dict | None = None
    include_usage: bool = True
    allow_buffered: bool = False
    max_error_rate: float | None = None
    allow_errors: bool = False  # exit 0 even past stats.ERROR_SHARE_LIMIT failures (still counted, warned)
    strict: bool = False  # exit non-zero when a level is invalid (the client was the bottleneck)
    seed: int = 0
    stamping: str = "protocol"
    loop: str = "auto"
    progress: bool = True
    label: str | None = None
    # --find-max-rate / --find-max-concurrency (bench.search): the levels are the search's probes.
    search: SearchSpec | None = None
    # Scrape the server's Prometheus text while each level runs (bench.server_metrics); the CLI turns it on.
    server_metrics: bool = False
    metrics_url: str | None = None  # default: /metrics on the base URL's host
    metrics_interval_s: float = 1.0
    # Workloads (bench.workloads): shared system prompts, multi-turn sessions, exact token counts.
    shared_prefix_tokens: int = 0
    prefix_groups: int = 1
    turns: int = 1
    think_time_s: float = 0.0
    tokenizer: str | None = None
    dataset_output_lengths: bool = False
    # Load from many machines: this run is share `shard[0]` of `shard[1]` (bench.shard), started at
    # `start_at` (Unix seconds) when given.
    shard: tuple[int, int] = (0, 1)
    start_at: float | None = None
    # --profile (bench.profiles): one continuous level whose load changes over time, a timeline per
    # `window_s` (bench.timeline), capacity polled by `capacity` (bench.capacity reader spec).
    profile: Profile | None = None
    window_s: float = 10.0
    slo_target: float = 0.95  # a window is in SLO violation when fewer of its requests meet the SLO
    capacity: dict | None = None
    capacity_interval_s: float = 5.0

    @property
    def total_price_per_hour(self) -> float | None:
        return None if self.price_per_hour is None else self.price_per_hour * self.instance_count

    def levels(self) -> list[Level]:
        """This run's levels; with --shard I/N, shard I's part of each (bench.shard.shard_levels)."""
        if self.profile is not None:  # one continuous level, no warmup (it would shift the time line)
            if self.profile.closed_loop:
                levels = [Level(0, int(self.profile.peak), None, 0)]
            else:
                levels = [Level(0, self.concurrency[0], self.profile.peak, 0)]
        elif self.rates:
            cap = self.concurrency[0]
            levels = [
                Level(i, cap, r, self.warmup if self.warmup is not None else min(cap, math.ceil(r)))
                for i, r in enumerate(self.rates)
            ]
        else:
            levels = [
                Level(i, c, None, self.warmup if self.warmup is not None else c)
                for i, c in enumerate(self.concurrency)
            ]
        if self.shard[1] == 1:
            return levels
        from bench.shard import shard_levels

        return shard_levels(levels, *self.shard)

    @property
    def shard_requests(self) -> int | None:
        """Measured requests per level for this shard (its share of --requests)."""
        if self.requests is None or self.shard[1] == 1:
            return self.requests
        return _share(self.requests, [1] * self.shard[1])[self.shard[0]]

    @property
    def shard_seed(self) -> int:
        """Each shard its own seed (shard 0 of 1 keeps --seed); shared prefixes stay on --seed."""
        return self.seed * self.shard[1] + self.shard[0]

    def level(self, index: int, concurrency: int, rate: float | None) -> Level:
        """One level with this run's warmup rule (the search makes its probes with it)."""
        auto = concurrency if rate is None else min(concurrency, math.ceil(rate))
        return Level(index, concurrency, rate, self.warmup if self.warmup is not None else auto)

    def request_headers(self) -> dict:
        headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            "User-Agent": "llm-inference-bench/0.1",
        }
        if self.api_key and not self.sigv4:
            # API Gateway API keys travel in x-api-key; OpenAI-compatible servers read the bearer token.
            headers["Authorization"] = f"Bearer {self.api_key}"
            headers["x-api-key"] = self.api_key
        headers.update(self.extra_headers)
        return headers

    def worker_config(self, run_tag: str) -> dict:
        if self.dataset:
            prompts = {"kind": "dataset", "path": self.dataset}
        else:
            prompts = {"kind": "synthetic", "input": _dist(self.input_tokens)}
        tag = run_tag if self.shard[1] == 1 else f"{run_tag}.s{self.shard[0]}"
        prompts.update(output=_dist(self.output_tokens), seed=self.shard_seed, tag=tag, base_seed=self.seed,
                       prefix_tokens=self.shared_prefix_tokens, prefix_groups=self.prefix_groups, turns=self.turns,
                       think_time_s=self.think_time_s, tokenizer=self.tokenizer,
                       output_lengths=self.dataset_output_lengths)
        return {
            "url": self.url,
            "headers": self.request_headers(),
            "timeout_s": self.timeout_s,
            "http2": self.http2,
            "sigv4": self.sigv4,
            "stamping": self.stamping,
            "loop": self.loop,
            "prompts": prompts,
            "options": {
                "model": self.model,
                "include_usage": self.include_usage,
                "extra_body": self.extra_body,
                "allow_buffered": self.allow_buffered,
            },
        }

    def public(self) -> dict:
        """The config as written to summary.json: no secrets, header names only."""
        return {
            "url": self.url,
            "model": self.model,
            "label": self.label,
            "mode": "rate" if self.rates else "concurrency",
            "concurrency": list(self.concurrency),
            "rates": list(self.rates) if self.rates else None,
            "arrival": self.arrival if self.rates else None,
            "requests_per_level": self.requests,
            "duration_s_per_level": self.duration_s,
            "warmup": self.warmup if self.warmup is not None else "auto",
            "prompt_tokens": None if self.dataset else self.input_tokens.describe(),
            "max_tokens": self.output_tokens.describe(),
            "dataset": self.dataset,
            "price_per_hour_usd": self.price_per_hour,
            "price_source": self.price_source,
            "instance_count": self.instance_count,
            "slo": {"ttft_ms": self.slo.ttft_ms, "tpot_ms": self.slo.tpot_ms, "e2e_ms": self.slo.e2e_ms},
            "timeout_s": self.timeout_s,
            "workers": self.workers,
            "http2": self.http2,
            "stack": self.stack,
            "sigv4": self.sigv4,
            "api_key": "set" if self.api_key else None,  # pragma: allowlist secret (redaction marker, not the key)
            "extra_headers": sorted(self.extra_headers),
            "extra_body": self.extra_body,
            "include_usage": self.include_usage,
            "allow_buffered": self.allow_buffered,
            "max_error_rate": self.max_error_rate,
            "allow_errors": self.allow_errors,
            "strict": self.strict,
            "search": None if self.search is None else {
                "kind": self.search.kind, "slo": self.search.slo.public(), "precision": self.search.precision,
                "start": self.search.start, "lower": self.search.lower, "upper": self.search.upper,
                "max_probes": self.search.max_probes},
            "server_metrics": self.server_metrics,
            "metrics_url": self.metrics_url,
            "metrics_interval_s": self.metrics_interval_s if self.server_metrics else None,
            "seed": self.seed,
            "stamping": self.stamping,
            "loop": self.loop,
            "shared_prefix_tokens": self.shared_prefix_tokens,
            "prefix_groups": self.prefix_groups if self.shared_prefix_tokens else None,
            "turns": self.turns,
            "think_time_s": self.think_time_s if self.turns > 1 else None,
            "tokenizer": self.tokenizer,
            "dataset_output_lengths": self.dataset_output_lengths,
            "shard": {"index": self.shard[0], "count": self.shard[1]},
            "start_at": self.start_at,
            "profile": None if self.profile is None else self.profile.public(),
            "window_s": self.window_s if self.profile is not None else None,
            "slo_target": self.slo_target if self.profile is not None else None,
            "capacity": self.capacity,
        }


def _dist(d: Distribution) -> tuple:
    return (d.kind, d.a, d.b, d.values)


def _share(total: int, weights: list[int]) -> list[int]:
    """Split an integer in proportion to weights, exactly (largest remainders)."""
    wsum = sum(weights)
    if wsum == 0:
        return [0] * len(weights)
    raw = [total * w / wsum for w in weights]
    out = [int(x) for x in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - out[i], reverse=True)[: total - sum(out)]:
        out[i] += 1
    return out


def split_level(cfg: BenchConfig, level: Level, workers: int, start_at_ns: int) -> list[LevelSpec]:
    """One LevelSpec per worker; their union is the level."""
    slots = _share(level.concurrency, [1] * workers)
    requests = _share(cfg.shard_requests, slots) if cfg.requests is not None else [None] * workers
    warmups = _share(level.warmup, slots)
    active = sum(1 for s in slots if s)
    profiles: list = [None] * workers
    if cfg.profile is not None:
        shares = cfg.profile.shared([1] * workers) if cfg.profile.closed_loop else None
        profiles = [(shares[w] if shares else cfg.profile.scaled(1 / active)).public() if slots[w] else None
                    for w in range(workers)]
    specs = []
    rank = 0
    for w in range(workers):
        rate = None
        phase = 0.0
        if level.rate is not None and slots[w]:
            rate = level.rate / active
            phase = rank / active
            rank += 1
        specs.append(
            LevelSpec(
                level=level.index,
                mode="closed" if level.rate is None else "rate",
                concurrency=slots[w],
                rate=rate,
                arrival=cfg.arrival,
                requests=requests[w],
                warmup=warmups[w],
                duration_s=cfg.profile.duration_s if cfg.profile is not None else cfg.duration_s,
                start_at_ns=start_at_ns,
                seed=cfg.shard_seed,
                phase=phase,
                profile=profiles[w],
            )
        )
    return specs
