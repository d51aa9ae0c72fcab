"""See inside the server: scrape its Prometheus `/metrics` while each level runs.

A `Scraper` thread in the parent process GETs the text every `interval_s` (default 1 s) with the run's
auth headers; the load workers never see it (they are other processes, or with --workers 0 another
thread that only shares the GIL for the microseconds a parse takes). Per level it keeps
  gauges      {"mean", "max", "last"} over the scrapes taken while the level ran,
  counters    {"rate_per_s", "increase"} between the scrape at the level's start and one after its end,
  histograms  {"mean", "count"}: the mean of what was observed during the level (delta sum / delta count),
summed over label sets (engines, finish reasons), except usage fractions (`*_perc`, `*usage*`), averaged.
For vLLM (v1/metrics/loggers.py, 0.32): vllm:num_requests_running / vllm:num_requests_waiting (gauges),
vllm:kv_cache_usage_perc (0..1; vllm:gpu_cache_usage_perc before 0.10), vllm:num_preemptions_total,
vllm:prompt_tokens_total, vllm:generation_tokens_total (counters), vllm:request_queue_time_seconds.

A server without /metrics (404), one that refuses (connection refused, 401/403) or that answers
something else than Prometheus text is reported once (`problem`) and no longer asked; it never fails a run.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

DEFAULT_INTERVAL_S = 1.0
SKIP_PREFIXES = ("python_", "process_")  # the client library's own metrics, not the server's work
# The ones the report, the chart and `bench recommend` read (the summary keeps every gauge and counter).
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
PREEMPTIONS = "vllm:num_preemptions_total"
PROMPT_TOKENS = "vllm:prompt_tokens_total"
GENERATION_TOKENS = "vllm:generation_tokens_total"


class MetricsError(RuntimeError):
    """Why a scrape got no metrics: one line for the summary and the console."""


def metrics_url(base_url: str) -> str:
    """http://host:port/v1 -> http://host:port/metrics (vLLM serves it at the root)."""
    parts = urlsplit(base_url)
    return urlunsplit((parts.scheme, parts.netloc, "/metrics", "", ""))


def _averaged(name: str) -> bool:
    return name.endswith("_perc") or "usage" in name


def parse(text: str) -> dict[str, tuple[str, float]]:
    """Prometheus text -> {sample name: (kind, value)}, kind gauge|counter|hist_sum|hist_count."""
    from prometheus_client.parser import text_string_to_metric_families

    sums: dict[str, list] = {}
    try:
        for family in text_string_to_metric_families(text):
            if family.name.startswith(SKIP_PREFIXES) or family.name.endswith("_created"):
                continue
            for sample in family.samples:
                kind = _kind(family.type, family.name, sample.name)
                if kind is None or sample.value is None or math.isnan(sample.value):
                    continue
                entry = sums.setdefault(sample.name, [kind, 0.0, 0])
                entry[1] += sample.value
                entry[2] += 1
    except ValueError as exc:  # prometheus_client's parser raises ValueError on anything else
        raise MetricsError(f"not Prometheus text ({exc})") from None
    return {name: (kind, total / n if kind == "gauge" and _averaged(name) else total)
            for name, (kind, total, n) in sums.items()}


def _kind(family_type: str, family: str, sample: str) -> str | None:
    if family_type in ("gauge", "untyped", "unknown"):
        return "gauge" if sample == family else None
    if family_type == "counter":
        return "counter" if sample in (family + "_total", family) else None
    if family_type in ("histogram", "summary"):
        if sample == family + "_sum":
            return "hist_sum"
        if sample == family + "_count":
            return "hist_count"
    return None


class LevelSeries:
    """The scrapes of one level; `summary()` turns them into gauges, counter rates and histogram means."""

    def __init__(self):
        self.scrapes: list[tuple[float, bool, dict]] = []  # (monotonic s, edge: at the start or after the end)

    def add(self, t: float, values: dict, edge: bool = False) -> None:
        self.scrapes.append((t, edge, values))

    def summary(self) -> dict:
        if not self.scrapes:
            return {}
        inside = [values for _t, edge, values in self.scrapes if not edge] or [v for _t, _e, v in self.scrapes]
        out: dict = {}
        gauges = sorted({name for values in inside for name, (kind, _v) in values.items() if kind == "gauge"})
        for name in gauges:
            series = [values[name][1] for values in inside if name in values]
            out[name] = {"mean": round(sum(series) / len(series), 4), "max": round(max(series), 4),
                         "last": round(series[-1], 4)}
        (t0, _e0, first), (t1, _e1, last) = self.scrapes[0], self.scrapes[-1]
        elapsed = t1 - t0
        # A series absent from the first scrape was created after it, at 0 (servers that make a labelled series
        # on its first use, TGI's metrics-rs for one): it counts from 0 instead of being left out of the level.
        for name, (kind, value) in sorted(last.items()):
            if kind != "counter":
                continue
            increase = value - first.get(name, (kind, 0.0))[1]
            if increase < 0:  # the server restarted during the level: its counters began again
                out[name] = {"rate_per_s": None, "increase": None, "reset": True}
            else:
                out[name] = {"rate_per_s": round(increase / elapsed, 4) if elapsed > 0 else None,
                             "increase": round(increase, 4)}
        for name, (kind, value) in sorted(last.items()):
            if kind != "hist_count":
                continue
            base = name[: -len("_count")]
            total = last.get(base + "_sum", (None, None))[1]
            if name not in first and base + "_sum" not in first:  # created in the level: both from 0
                count0, total0 = 0.0, 0.0
            else:
                count0, total0 = first.get(name, (None, None))[1], first.get(base + "_sum", (None, None))[1]
            if total is None or count0 is None or total0 is None or value < count0:
                continue
            count = value - count0
            out[base] = {"mean": round((total - total0) / count, 6) if count > 0 else None, "count": round(count)}
        return out


class Scraper:
    """GETs /metrics on its own thread; `begin_level()` / `end_level()` bracket each level."""

    def __init__(self, url: str, headers: Mapping[str, str] | None = None, interval_s: float = DEFAULT_INTERVAL_S,
                 timeout_s: float | None = None):
        if not interval_s > 0:
            raise ValueError(f"--metrics-interval {interval_s!r}: must be > 0 seconds")
        self.url = url
        self.interval_s = interval_s
        self.timeout_s = timeout_s if timeout_s is not None else max(1.0, min(5.0, 2 * interval_s))
        self.headers = {k: v for k, v in (headers or {}).items() if k.lower() not in ("content-type", "accept")}
        self.headers["Accept"] = "text/plain"
        self.problem: str | None = None  # why there are no metrics (reported once)
        self.scrapes = 0
        self.failed_scrapes = 0  # failures after the first success (counted, the series goes on)
        self._series: LevelSeries | None = None
        self._ending = False  # the next scrape is the one after the level's end
        self._waiters: list[threading.Event] = []  # set once a scrape begun after they asked is done
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def available(self) -> bool:
        return self.problem is None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="bench-metrics-scraper", daemon=True)
        self._thread.start()

    def begin_level(self) -> None:
        """Waits for the scrape at the level's start, so the counters' base is before its first request."""
        with self._lock:
            self._series = LevelSeries()
        self._scrape_now()

    def end_level(self) -> dict | None:
        """The level's metrics (None when the server has none); waits for one scrape after the level."""
        with self._lock:
            self._ending = True
        self._scrape_now()
        with self._lock:
            series, self._series, self._ending = self._series, None, False
        if series is None or not series.scrapes:
            return None
        return series.summary()

    def _scrape_now(self) -> None:
        done = threading.Event()
        with self._lock:
            self._waiters.append(done)
        self._wake.set()
        if self._thread is not None and self._thread.is_alive() and self.available:
            done.wait(self.timeout_s + 1)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(self.timeout_s + 1)

    def public(self) -> dict:
        return {"url": self.url, "interval_s": self.interval_s, "available": self.available,
                "problem": self.problem, "scrapes": self.scrapes, "failed_scrapes": self.failed_scrapes}

    # -- the thread ------------------------------------------------------------------------------------
    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=self.timeout_s, headers=self.headers, follow_redirects=True) as client:
            while not self._stop.is_set() and self.available:
                self._wake.clear()
                with self._lock:
                    waiters, self._waiters = self._waiters, []
                    active, ending = self._series is not None, self._ending
                if active:
                    self._scrape(client, ending)
                for done in waiters:
                    done.set()
                self._wake.wait(self.interval_s)
        with self._lock:  # stopped or given up: nobody waits for a scrape that will not come
            for done in self._waiters:
                done.set()
            self._waiters = []

    def _scrape(self, client, ending: bool) -> None:
        t_sent = time.monotonic()
        try:
            values = parse(self._get(client))
        except MetricsError as exc:
            if self.scrapes == 0:
                self.problem = f"{self.url}: {exc}"
            else:
                self.failed_scrapes += 1
            return
        t = (t_sent + time.monotonic()) / 2
        self.scrapes += 1
        with self._lock:
            if self._series is not None:
                edge = ending or not self._series.scrapes
                self._series.add(t, values, edge=edge)

    def _get(self, client) -> str:
        import httpx

        try:
            resp = client.get(self.url)
        except httpx.ConnectError as exc:
            raise MetricsError(f"connection refused or unreachable ({exc})") from None
        except httpx.HTTPError as exc:
            raise MetricsError(f"{type(exc).__name__}: {exc}") from None
        if resp.status_code in (401, 403):
            raise MetricsError(f"HTTP {resp.status_code}: the run's API key is not accepted for /metrics; "
                               "pass --metrics-url for an endpoint that serves it, or --no-server-metrics")
        if resp.status_code == 404:
            raise MetricsError("HTTP 404: the server has no /metrics here; pass --metrics-url (vLLM serves it "
                               "at the root of its port) or --no-server-metrics")
        if resp.status_code != 200:
            raise MetricsError(f"HTTP {resp.status_code}")
        text = resp.text
        if text.lstrip().startswith(("{", "[", "<")):
            raise MetricsError(f"not Prometheus text (starts with {text.lstrip()[:20]!r})")
        return text


# ------------------------------------------------------------------------------------ report and chart


def kv_usage(metrics: Mapping) -> dict | None:
    return next((metrics[name] for name in KV_USAGE if name in metrics), None)


def report_lines(summary: Mapping) -> list[str]:
    """The report's "Inside the server" section: a table per level, or why there is none."""
    info = summary.get("server_metrics")
    if not info:
        return []
    lines = ["## Inside the server", ""]
    if not info.get("available"):
        return lines + [f"No server metrics: {info.get('problem')}.", ""]
    lines += [
        f"Scraped from `{info['url']}` every {info['interval_s']:g} s ({info['scrapes']} scrapes"
        + (f", {info['failed_scrapes']} failed" if info.get("failed_scrapes") else "") + "). Gauges: mean / max "
        "while the level ran; counters: per second over the level (warmup included).",
        "",
        "| level | running mean / max | waiting mean / max | KV cache mean / max | preemptions/s | "
        "prompt tok/s | generation tok/s | client output tok/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for lv in summary["levels"]:
        m = lv.get("server_metrics")
        label = f"c={lv['concurrency']}" if lv["rate"] is None else f"{lv['rate']:g} req/s"
        if not m:
            lines.append(f"| {label} | - | - | - | - | - | - | {lv['output_throughput_tok_s']:.1f} |")
            continue
        kv = kv_usage(m)
        lines.append(
            f"| {label} | {_pair(m.get(RUNNING))} | {_pair(m.get(WAITING))} | {_pair(kv, percent=True)} | "
            f"{_rate(m.get(PREEMPTIONS))} | {_rate(m.get(PROMPT_TOKENS))} | {_rate(m.get(GENERATION_TOKENS))} | "
            f"{lv['output_throughput_tok_s']:.1f} |"
        )
    return lines + [""]


def _pair(gauge: Mapping | None, percent: bool = False) -> str:
    if not gauge:
        return "-"
    if percent:
        return f"{100 * gauge['mean']:.3g}% / {100 * gauge['max']:.3g}%"  # vLLM on a CPU: 0.01%
    return f"{gauge['mean']:.1f} / {gauge['max']:g}"


def _rate(counter: Mapping | None) -> str:
    if not counter or counter.get("rate_per_s") is None:
        return "-"
    return f"{counter['rate_per_s']:.1f}"


def console_line(level: Mapping) -> str | None:
    m = level.get("server_metrics")
    if not m:
        return None
    parts = []
    if RUNNING in m:
        parts.append(f"running {_pair(m[RUNNING])}")
    if WAITING in m:
        parts.append(f"waiting {_pair(m[WAITING])}")
    kv = kv_usage(m)
    if kv:
        parts.append(f"KV cache {_pair(kv, percent=True)}")
    if m.get(GENERATION_TOKENS, {}).get("rate_per_s") is not None:
        parts.append(f"server {m[GENERATION_TOKENS]['rate_per_s']:.0f} gen tok/s")
    return "server: " + ", ".join(parts) + " (mean / max)" if parts else None


def chart(summary: Mapping, path):
    """Running/waiting requests, KV-cache usage and token rates against the load; None without metrics."""
    levels = [lv for lv in summary["levels"] if lv.get("server_metrics")]
    if not levels:
        return None
    from bench.charts import _pyplot

    rate = levels[0]["rate"] is not None
    levels = sorted(levels, key=lambda lv: lv["rate"] if rate else lv["concurrency"])  # a search probes out of order
    x = [lv["rate"] if rate else lv["concurrency"] for lv in levels]
    xlabel = "offered rate (req/s)" if rate else "concurrency"

    def series(name, stat):
        return [(lv["server_metrics"].get(name) or {}).get(stat) for lv in levels]

    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name, label in ((RUNNING, "running"), (WAITING, "waiting")):
        axes[0].plot(x, series(name, "mean"), marker="o", label=f"{label} mean")
        axes[0].plot(x, series(name, "max"), marker="^", linestyle="--", label=f"{label} max")
    axes[0].set_title("requests in the server")
    kv = [kv_usage(lv["server_metrics"]) or {} for lv in levels]
    axes[1].plot(x, [k.get("mean") for k in kv], marker="o", label="mean")
    axes[1].plot(x, [k.get("max") for k in kv], marker="^", linestyle="--", label="max")
    axes[1].set_ylim(0, 1.05)
    axes[1].set_title("KV-cache usage (1 = full)")
    axes[2].plot(x, series(GENERATION_TOKENS, "rate_per_s"), marker="o", label="server generation tok/s")
    axes[2].plot(x, series(PROMPT_TOKENS, "rate_per_s"), marker="s", label="server prompt tok/s")
    axes[2].plot(x, [lv["output_throughput_tok_s"] for lv in levels], marker="x", linestyle=":",
                 label="client output tok/s")
    axes[2].set_title("tokens/s")
    for ax in axes:
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Inside the server: {summary['target'].get('label') or summary['target']['url']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------ the runner's hooks


def start_scraper(cfg) -> Scraper | None:
    """The run's scraper (started), or None with --no-server-metrics."""
    if not cfg.server_metrics:
        return None
    # SigV4 signs each request for one URL; a Lambda Function URL has no /metrics to sign for.
    headers = {} if cfg.sigv4 else cfg.request_headers()
    scraper = Scraper(cfg.metrics_url or metrics_url(cfg.base_url), headers, cfg.metrics_interval_s)
    scraper.start()
    return scraper


def attach(level: dict, scraper: Scraper, summary: dict, display=None) -> None:
    """After a level: its metrics into the level's summary; the first problem told once on the console."""
    told = (summary.get("server_metrics") or {}).get("problem")
    metrics = scraper.end_level()
    if metrics is not None:
        level["server_metrics"] = metrics
    summary["server_metrics"] = scraper.public()
    note = getattr(display, "note", None)
    if note is None:
        return
    if scraper.problem and not told:
        note(f"no server metrics: {scraper.problem}")
    line = console_line(level)
    if line:
        note(line)


def add_arguments(parser) -> None:
    g = parser.add_argument_group("server metrics (bench.server_metrics)")
    g.add_argument("--metrics-url", help="Prometheus text to scrape (default: /metrics on the URL's host)")
    g.add_argument("--metrics-interval", default="1s", help="scrape every (default 1s)")
    g.add_argument("--no-server-metrics", action="store_true", help="do not scrape the server's /metrics")


def settings(args, parse_duration) -> dict:
    """BenchConfig's server-metrics fields from the flags."""
    return {"server_metrics": not args.no_server_metrics, "metrics_url": args.metrics_url,
            "metrics_interval_s": parse_duration(args.metrics_interval, "--metrics-interval")}
