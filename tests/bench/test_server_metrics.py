"""bench.server_metrics: parsing vLLM's Prometheus text, per-level gauges/rates, the scrape against a real
local HTTP server (absent, refused, 401), and a run that keeps going without metrics."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

import bench
from bench import server_metrics
from bench.server_metrics import LevelSeries, MetricsError, Scraper, parse


class VllmMetrics:
    """vLLM 0.32's own metric definitions (vllm/v1/metrics/loggers.py: names, documentation, labelnames
    [model_name, engine], one child per engine), exposed by prometheus_client as vLLM's server does."""

    def __init__(self, engines=("0",), model="m"):
        self.registry = CollectorRegistry()
        labels = ["model_name", "engine"]

        def per_engine(metric):
            return [metric.labels(model, e) for e in engines]

        r = self.registry
        self.running = per_engine(Gauge("vllm:num_requests_running", "Number of requests in model execution batches.",
                                        labels, registry=r))
        self.waiting = per_engine(Gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
                                        labels, registry=r))
        self.kv = per_engine(Gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
                                   labels, registry=r))
        self.preemptions = per_engine(Counter("vllm:num_preemptions", "Cumulative number of preemption from the "
                                              "engine.", labels, registry=r))
        self.prompt = per_engine(Counter("vllm:prompt_tokens", "Number of prefill tokens processed.", labels,
                                         registry=r))
        self.generation = per_engine(Counter("vllm:generation_tokens", "Number of generation tokens processed.",
                                             labels, registry=r))
        self.queue_time = per_engine(Histogram("vllm:request_queue_time_seconds",
                                               "Histogram of time spent in WAITING phase for request.", labels,
                                               registry=r, buckets=[0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0]))
        Gauge("python_gc_objects_collected", "the client library's own", registry=r).set(7)

    def text(self) -> str:
        return generate_latest(self.registry).decode()


class MetricsServer:
    """A real HTTP server on 127.0.0.1 serving /metrics from a VllmMetrics (or a fixed status/body).

    `redirect`: /metrics answers 307 to /metrics/ (a Starlette mount does that) and /metrics/ serves the text;
    `hold`: an Event each answer waits for (at most 5 s), a server that hangs."""

    def __init__(self, metrics: VllmMetrics | None = None, status: int = 200, body: str | None = None,
                 api_key: str | None = None, redirect: bool = False, hold: threading.Event | None = None):
        self.metrics, self.status, self.body, self.api_key = metrics, status, body, api_key
        self.requests: list[dict] = []
        self.statuses: list[int] = []  # what each answer was
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                outer.requests.append({"path": self.path, **dict(self.headers),
                                       "accept_all": self.headers.get_all("Accept")})
                if hold is not None:
                    hold.wait(5)
                if redirect and self.path == "/metrics":
                    self.send_response(307)
                    self.send_header("Location", "/metrics/")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = outer.status
                if outer.api_key and self.headers.get("Authorization") != f"Bearer {outer.api_key}":
                    status = 401
                body = (outer.body if outer.body is not None else outer.metrics.text()).encode()
                outer.statuses.append(status)
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/metrics"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def wait_until(condition, what: str, limit_s: float = 10.0) -> None:
    """Wait for the scraper thread to get somewhere; a scraper that never does fails the test, not hangs it."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        threading.Event().wait(0.01)


@pytest.fixture
def metrics_server():
    servers = []

    def start(**kwargs) -> MetricsServer:
        servers.append(MetricsServer(**kwargs))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------- parse


def test_parse_vllm_text_sums_engines_and_averages_usage():
    m = VllmMetrics(engines=("0", "1"))
    m.running[0].set(3)
    m.running[1].set(5)
    m.kv[0].set(0.2)
    m.kv[1].set(0.6)
    m.prompt[0].inc(100)
    m.prompt[1].inc(28)
    m.queue_time[0].observe(0.5)
    m.queue_time[1].observe(1.5)
    values = parse(m.text())
    assert values["vllm:num_requests_running"] == ("gauge", 8.0)  # requests add up over engines
    assert values["vllm:kv_cache_usage_perc"][0] == "gauge"
    assert values["vllm:kv_cache_usage_perc"][1] == pytest.approx(0.4)  # a fraction is averaged
    assert values["vllm:prompt_tokens_total"] == ("counter", 128.0)
    assert values["vllm:num_preemptions_total"] == ("counter", 0.0)
    assert values["vllm:request_queue_time_seconds_count"] == ("hist_count", 2.0)
    assert values["vllm:request_queue_time_seconds_sum"] == ("hist_sum", 2.0)
    # prometheus_client's *_created timestamps, buckets and the library's own metrics are not the server's work
    assert not [name for name in values if name.endswith(("_created", "_bucket")) or name.startswith("python_")]


def test_parse_refuses_what_is_not_prometheus_text():
    with pytest.raises(MetricsError, match="not Prometheus text"):
        parse("vllm:num_requests_running{engine=0} three\n")


# ------------------------------------------------------------------------------------- level series


def values(running, waiting, generation, prompt=0.0, queue_sum=0.0, queue_count=0.0):
    return {"vllm:num_requests_running": ("gauge", running), "vllm:num_requests_waiting": ("gauge", waiting),
            "vllm:generation_tokens_total": ("counter", generation), "vllm:prompt_tokens_total": ("counter", prompt),
            "vllm:request_queue_time_seconds_sum": ("hist_sum", queue_sum),
            "vllm:request_queue_time_seconds_count": ("hist_count", queue_count)}


def test_gauges_over_the_level_counters_as_rates_histograms_as_means():
    s = LevelSeries()
    s.add(10.0, values(0, 0, 1000, 50, 1.0, 2), edge=True)  # at the start: before the load
    s.add(11.0, values(4, 2, 1300, 150, 1.0, 2))
    s.add(12.0, values(4, 6, 1600, 250, 4.0, 6))
    s.add(13.0, values(3, 1, 1900, 350, 5.0, 10))
    s.add(14.0, values(0, 0, 2000, 400, 5.5, 12), edge=True)  # after the end: drained
    out = s.summary()
    assert out["vllm:num_requests_running"] == {"mean": pytest.approx(11 / 3, abs=1e-4), "max": 4, "last": 3}
    assert out["vllm:num_requests_waiting"] == {"mean": 3.0, "max": 6, "last": 1}
    assert out["vllm:generation_tokens_total"] == {"rate_per_s": 250.0, "increase": 1000}  # 1000 over 4 s
    assert out["vllm:prompt_tokens_total"] == {"rate_per_s": 87.5, "increase": 350}
    assert out["vllm:request_queue_time_seconds"] == {"mean": 0.45, "count": 10}  # 4.5 s over 10 requests


def test_a_level_without_inner_scrapes_uses_the_edges_and_a_reset_counter_has_no_rate():
    s = LevelSeries()
    s.add(0.0, values(2, 0, 500), edge=True)
    s.add(1.0, values(1, 0, 20), edge=True)  # the server restarted: its counter began again
    out = s.summary()
    assert out["vllm:num_requests_running"] == {"mean": 1.5, "max": 2, "last": 1}
    assert out["vllm:generation_tokens_total"] == {"rate_per_s": None, "increase": None, "reset": True}
    assert LevelSeries().summary() == {}


# ----------------------------------------------------------------------------------------- the scrape


def test_scraper_reads_a_real_server_per_level_with_the_runs_auth(metrics_server):
    m = VllmMetrics()
    server = metrics_server(metrics=m, api_key="sk-test")  # pragma: allowlist secret
    m.generation[0].inc(100)
    scraper = Scraper(server.url, {"Authorization": "Bearer sk-test", "Content-Type": "application/json",
                                   "accept": "text/event-stream"}, interval_s=0.05)
    scraper.start()
    try:
        began = time.monotonic()
        scraper.begin_level()
        inside_from = time.monotonic()
        wait_until(lambda: scraper.scrapes >= 1, "the scrape at the start of the level")
        m.running[0].set(4)
        m.waiting[0].set(2)
        m.generation[0].inc(300)
        seen = scraper.scrapes
        wait_until(lambda: scraper.scrapes >= seen + 2, "a scrape that sees the load")
        m.running[0].set(0)
        m.waiting[0].set(0)
        inside_to = time.monotonic()
        level = scraper.end_level()
        ended = time.monotonic()
        # the next level: its first scrape is its start edge (9 running, left from before), then the load (3)
        m.running[0].set(9)
        scraper.begin_level()
        m.running[0].set(3)
        seen = scraper.scrapes
        wait_until(lambda: scraper.scrapes >= seen + 2, "a scrape in the second level")
        m.running[0].set(0)
        second = scraper.end_level()
    finally:
        scraper.close()
    assert scraper.available and scraper.problem is None
    assert not scraper._thread.is_alive()  # close() waits for the thread
    assert level["vllm:num_requests_running"]["max"] == 4 and level["vllm:num_requests_waiting"]["max"] == 2
    assert level["vllm:generation_tokens_total"]["increase"] == 300  # begin -> a scrape after the end
    # the rate is over the time between the level's first and last scrape, which lie inside these readings
    elapsed = 300 / level["vllm:generation_tokens_total"]["rate_per_s"]
    assert inside_to - inside_from <= elapsed * 1.001 and elapsed <= (ended - began) * 1.001
    assert level["vllm:num_requests_running"]["last"] == 4  # the last scrape while the level ran, not after it
    assert second["vllm:num_requests_running"]["max"] == 3  # its edges (9 at the start, 0 after) are not "inside"
    assert second["vllm:generation_tokens_total"]["increase"] == 0
    assert all(r["path"] == "/metrics" and r["accept_all"] == ["text/plain"] for r in server.requests)
    assert "Content-Type" not in server.requests[0]
    assert scraper.scrapes == len(server.requests) == server.statuses.count(200)  # one count per scrape
    assert scraper.public() == {"url": server.url, "interval_s": 0.05, "available": True, "problem": None,
                                "scrapes": scraper.scrapes, "failed_scrapes": 0}


@pytest.mark.parametrize(
    ("server_kwargs", "needle"),
    [
        ({"status": 404, "body": "Not Found"}, "HTTP 404: the server has no /metrics here; pass --metrics-url"),
        ({"api_key": "other"}, "HTTP 401: the run's API key is not accepted for /metrics"),  # pragma: allowlist secret
        ({"status": 200, "body": '{"object": "list"}'}, "not Prometheus text"),
        ({"status": 503, "body": "busy"}, "HTTP 503"),
    ],
)
def test_absent_or_refused_metrics_are_one_problem_and_no_more_asking(metrics_server, server_kwargs, needle):
    server = metrics_server(metrics=VllmMetrics(), **server_kwargs)
    scraper = Scraper(server.url, {"Authorization": "Bearer sk-test"}, interval_s=0.05)
    scraper.start()
    try:
        for _ in range(3):
            scraper.begin_level()
            assert scraper.end_level() is None
        wait_until(lambda: not scraper._thread.is_alive(), "the thread to give up")
        scraper.begin_level()  # a level long after it gave up (real levels take seconds)
        assert scraper.end_level() is None
    finally:
        scraper.close()
    assert not scraper.available and needle in scraper.problem and scraper.problem.startswith(server.url)
    assert len(server.requests) == 1  # asked once, then left alone


def test_connection_refused_is_a_problem_not_an_error():
    url = f"http://127.0.0.1:{free_port()}/metrics"
    scraper = Scraper(url, interval_s=0.05)
    scraper.start()
    scraper.begin_level()
    assert scraper.end_level() is None
    scraper.close()
    assert "connection refused or unreachable" in scraper.problem


def test_metrics_url_is_the_base_urls_root():
    assert server_metrics.metrics_url("http://10.0.0.5:8000/v1") == "http://10.0.0.5:8000/metrics"
    assert server_metrics.metrics_url("https://h.example/prod/v1") == "https://h.example/metrics"


# ----------------------------------------------------------------------------------- in a whole run


def run(url, out, *args):
    return bench.run([url, "--workers", "0", "--warmup", "0", "--max-tokens", "8", "--out", str(out),
                      "--no-progress", "--requests", "12", "--concurrency", "1,4", *args])


def test_a_run_scrapes_the_mocks_metrics_into_each_level_report_and_chart(tmp_path, mock_server):
    server = mock_server(ttft_ms=5, itl_ms=20, max_concurrent=2)
    assert run(server.url, tmp_path / "run", "--metrics-interval", "50ms") == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    info = summary["server_metrics"]
    assert info["available"] and info["url"] == server.url.rsplit("/v1", 1)[0] + "/metrics" and info["scrapes"] >= 4
    c1, c4 = (lv["server_metrics"] for lv in summary["levels"])
    assert c1["vllm:num_requests_running"]["max"] == 1 and c1["vllm:num_requests_waiting"]["max"] == 0
    assert c4["vllm:num_requests_running"]["max"] == 2 and c4["vllm:num_requests_waiting"]["max"] >= 1
    # every generated token counted between the level's first and last scrape: 12 requests x 8 tokens
    assert c1["vllm:generation_tokens_total"]["increase"] == 96 == c4["vllm:generation_tokens_total"]["increase"]
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Inside the server" in report and "![server_metrics](server_metrics.png)" in report
    assert (tmp_path / "run" / "server_metrics.png").stat().st_size > 10_000


def test_a_run_without_metrics_says_so_once_and_measures_as_usual(tmp_path, mock_server, capsys):
    server = mock_server()
    refused = f"http://127.0.0.1:{free_port()}/metrics"
    out = tmp_path / "run"
    code = bench.run([server.url, "--workers", "0", "--warmup", "0", "--max-tokens", "8", "--out", str(out),
                      "--requests", "6", "--concurrency", "1,2", "--metrics-url", refused, "--no-charts"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and [lv["succeeded"] for lv in summary["levels"]] == [6, 6]
    assert summary["server_metrics"]["available"] is False
    assert "connection refused" in summary["server_metrics"]["problem"]
    assert all("server_metrics" not in lv for lv in summary["levels"])
    assert capsys.readouterr().err.count("no server metrics:") == 1
    assert "No server metrics: " + refused in (out / "report.md").read_text()


def test_no_server_metrics_asks_nothing(tmp_path, mock_server):
    server = mock_server()
    assert run(server.url, tmp_path / "run", "--no-server-metrics", "--no-charts") == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert "server_metrics" not in summary and summary["config"]["server_metrics"] is False


def test_report_rows_and_console_line_from_literal_levels():
    metrics = {"vllm:num_requests_running": {"mean": 7.5, "max": 8, "last": 8},
               "vllm:num_requests_waiting": {"mean": 2.25, "max": 5, "last": 0},
               "vllm:kv_cache_usage_perc": {"mean": 0.0001, "max": 0.4123, "last": 0.3},
               "vllm:num_preemptions_total": {"rate_per_s": 0.5, "increase": 15},
               "vllm:prompt_tokens_total": {"rate_per_s": 830.04, "increase": 25000},
               "vllm:generation_tokens_total": {"rate_per_s": 166.89, "increase": 5000}}
    summary = {"server_metrics": {"url": "http://h/metrics", "interval_s": 1.0, "available": True, "problem": None,
                                  "scrapes": 9, "failed_scrapes": 2},
               "levels": [{"concurrency": 8, "rate": None, "output_throughput_tok_s": 125.0, "server_metrics": metrics},
                          {"concurrency": 256, "rate": 4.0, "output_throughput_tok_s": 60.0}]}
    lines = server_metrics.report_lines(summary)
    assert "(9 scrapes, 2 failed)" in lines[2]
    assert lines[-3] == "| c=8 | 7.5 / 8 | 2.2 / 5 | 0.01% / 41.2% | 0.5 | 830.0 | 166.9 | 125.0 |"
    assert lines[-2] == "| 4 req/s | - | - | - | - | - | - | 60.0 |"
    assert server_metrics.console_line(summary["levels"][0]) == (
        "server: running 7.5 / 8, waiting 2.2 / 5, KV cache 0.01% / 41.2%, server 167 gen tok/s (mean / max)")
    assert server_metrics.console_line(summary["levels"][1]) is None
    absent = {"server_metrics": {"available": False, "problem": "http://h/metrics: HTTP 404"}, "levels": []}
    assert server_metrics.report_lines(absent) == ["## Inside the server", "", "No server metrics: http://h/metrics: HTTP 404.", ""]


# ------------------------------------------------------- edges the mutation run found unchecked (bench.server_metrics)


def test_parse_what_other_servers_export():
    text = "\n".join([
        "# TYPE vllm:num_requests_running gauge",
        'vllm:num_requests_running{engine="0"} 2',
        'vllm:num_requests_running{engine="1"} NaN',  # a NaN sample is left out, not summed
        "queue_depth 3",  # no TYPE line: prometheus_client calls it unknown; read as a gauge
        "# TYPE sglang:token_usage gauge",  # SGLang's KV-cache fraction: averaged over its data-parallel ranks
        'sglang:token_usage{dp="0"} 0.25',
        'sglang:token_usage{dp="1"} 0.75',
        "# TYPE prefix_hit_perc gauge",  # any *_perc is a fraction: averaged
        'prefix_hit_perc{engine="0"} 0.5',
        'prefix_hit_perc{engine="1"} 0.25',
        "# TYPE tgi_request_duration summary",  # a summary's _sum and _count, as a histogram's
        'tgi_request_duration{quantile="0.5"} 1.0',
        "tgi_request_duration_sum 6.0",
        "tgi_request_duration_count 4",
        "# TYPE only_nan gauge",
        "only_nan NaN",
        "",
    ])
    assert parse(text) == {
        "vllm:num_requests_running": ("gauge", 2.0), "queue_depth": ("gauge", 3.0),
        "sglang:token_usage": ("gauge", 0.5), "prefix_hit_perc": ("gauge", 0.375),
        "tgi_request_duration_sum": ("hist_sum", 6.0), "tgi_request_duration_count": ("hist_count", 4.0),
    }


def test_summary_rounds_figures_and_reports_zero_and_fractional_counts():
    s = LevelSeries()
    edge0 = {"vllm:kv_cache_usage_perc": ("gauge", 0.0), "vllm:generation_tokens_total": ("counter", 1000.0),
             "vllm:prompt_tokens_total": ("counter", 50.0), "busy_seconds_total": ("counter", 10.0),
             "vllm:request_queue_time_seconds_sum": ("hist_sum", 1.0),
             "vllm:request_queue_time_seconds_count": ("hist_count", 2.0),
             "vllm:e2e_request_latency_seconds_sum": ("hist_sum", 0.0),
             "vllm:e2e_request_latency_seconds_count": ("hist_count", 0.0),
             "vllm:time_to_first_token_seconds_sum": ("hist_sum", 3.0),
             "vllm:time_to_first_token_seconds_count": ("hist_count", 4.0)}
    s.add(0.0, edge0, edge=True)
    for t, kv in ((1.0, 0.412345), (2.0, 0.1), (2.5, 0.123456)):
        s.add(t, {**edge0, "vllm:kv_cache_usage_perc": ("gauge", kv)})
    s.add(3.0, {**edge0, "vllm:kv_cache_usage_perc": ("gauge", 0.0),
                "vllm:generation_tokens_total": ("counter", 2000.0),
                "busy_seconds_total": ("counter", 10.123456),
                "vllm:request_queue_time_seconds_sum": ("hist_sum", 2.0),
                "vllm:request_queue_time_seconds_count": ("hist_count", 5.0),
                "vllm:e2e_request_latency_seconds_sum": ("hist_sum", 2.5),
                "vllm:e2e_request_latency_seconds_count": ("hist_count", 1.0)}, edge=True)
    out = s.summary()
    assert out["vllm:kv_cache_usage_perc"] == {"mean": 0.2119, "max": 0.4123, "last": 0.1235}  # 4 digits, fractions kept
    assert out["vllm:generation_tokens_total"] == {"rate_per_s": 333.3333, "increase": 1000}
    assert out["vllm:prompt_tokens_total"] == {"rate_per_s": 0.0, "increase": 0}  # no prompt: zero, not a reset
    assert out["busy_seconds_total"] == {"rate_per_s": 0.0412, "increase": 0.1235}  # a counter that grew by < 1
    assert out["vllm:request_queue_time_seconds"] == {"mean": 0.333333, "count": 3}  # 6 digits
    assert out["vllm:e2e_request_latency_seconds"] == {"mean": 2.5, "count": 1}  # one request is a mean
    assert out["vllm:time_to_first_token_seconds"] == {"mean": None, "count": 0}  # none observed in the level


def test_summary_of_one_scrape_has_increases_but_no_rates():
    s = LevelSeries()  # the scrape after the level failed: only the start is known
    s.add(5.0, values(2, 1, 700, 10, 1.0, 3), edge=True)
    out = s.summary()
    assert out["vllm:generation_tokens_total"] == {"rate_per_s": None, "increase": 0}
    assert out["vllm:request_queue_time_seconds"] == {"mean": None, "count": 0}


def test_histograms_that_are_incomplete_or_reset_are_left_out_and_the_others_kept():
    first = {"a_seconds_sum": ("hist_sum", 9.0), "a_seconds_count": ("hist_count", 9.0),  # resets: count falls
             "b_seconds_count": ("hist_count", 1.0),  # no _sum at the start
             "c_seconds_sum": ("hist_sum", 1.0), "c_seconds_count": ("hist_count", 1.0),  # no _sum at the end
             "e_seconds_sum": ("hist_sum", 1.0), "e_seconds_count": ("hist_count", 1.0),
             "f_seconds_sum": ("hist_sum", 1.0)}  # no _count at the start
    last = {"a_seconds_sum": ("hist_sum", 1.0), "a_seconds_count": ("hist_count", 2.0),
            "b_seconds_sum": ("hist_sum", 2.0), "b_seconds_count": ("hist_count", 2.0),
            "c_seconds_count": ("hist_count", 2.0),
            "d_seconds_sum": ("hist_sum", 2.0), "d_seconds_count": ("hist_count", 2.0),  # new in the level
            "e_seconds_sum": ("hist_sum", 4.0), "e_seconds_count": ("hist_count", 3.0),
            "f_seconds_sum": ("hist_sum", 3.0), "f_seconds_count": ("hist_count", 2.0)}
    s = LevelSeries()
    s.add(0.0, first, edge=True)
    s.add(1.0, last, edge=True)
    # d was created in the level (a server that makes a series on its first use): counted from 0
    assert s.summary() == {"d_seconds": {"mean": 1.0, "count": 2}, "e_seconds": {"mean": 1.5, "count": 2}}


def test_a_counter_created_during_the_level_counts_from_zero():
    s = LevelSeries()  # TGI's metrics-rs, for one, makes a series on its first use: absent at the level's start
    s.add(0.0, {"tgi_request_count": ("counter", 7.0)}, edge=True)
    s.add(2.0, {"tgi_request_count": ("counter", 11.0), "tgi_request_success": ("counter", 3.0)}, edge=True)
    out = s.summary()
    assert out["tgi_request_count"] == {"rate_per_s": 2.0, "increase": 4}
    assert out["tgi_request_success"] == {"rate_per_s": 1.5, "increase": 3}


def test_scraper_settings_interval_and_timeout():
    with pytest.raises(ValueError, match="--metrics-interval 0"):
        Scraper("http://h/metrics", interval_s=0)
    # a scrape may take twice the interval, at least 1 s and at most 5 s, unless told
    assert [Scraper("http://h/metrics", interval_s=i).timeout_s for i in (0.05, 1.0, 2.0, 10.0)] == [1.0, 2.0, 4.0, 5.0]
    assert Scraper("http://h/metrics", interval_s=1.0, timeout_s=0.3).timeout_s == 0.3


def test_a_scraper_never_started_does_not_block_a_level():
    scraper = Scraper("http://127.0.0.1:9/metrics", interval_s=0.05)
    scraper.begin_level()
    assert scraper.end_level() is None and scraper.scrapes == 0
    scraper.close()


def test_the_scraper_thread_is_a_daemon_so_an_unclosed_scraper_never_keeps_the_run_alive(metrics_server):
    server = metrics_server(metrics=VllmMetrics())
    scraper = Scraper(server.url, interval_s=0.05)
    scraper.start()
    try:
        assert scraper._thread.daemon and scraper._thread.name == "bench-metrics-scraper"
        threading.Event().wait(0.2)  # the runner starts it well before the first level (the warmup runs first)
        scraper.begin_level()
        assert "vllm:num_requests_running" in scraper.end_level()
    finally:
        scraper.close()
    assert not scraper._thread.is_alive()


def test_a_redirected_metrics_path_is_followed(metrics_server):
    # A Starlette mount at /metrics answers 307 to /metrics/ (older vLLM servers do)
    m = VllmMetrics()
    server = metrics_server(metrics=m, redirect=True)
    scraper = Scraper(server.url, interval_s=0.05)
    scraper.start()
    try:
        scraper.begin_level()
        m.generation[0].inc(40)
        level = scraper.end_level()
    finally:
        scraper.close()
    assert scraper.problem is None and level["vllm:generation_tokens_total"]["increase"] == 40
    assert [r["path"] for r in server.requests][:2] == ["/metrics", "/metrics/"]


def test_a_server_that_hangs_is_a_timeout_problem(metrics_server):
    hold = threading.Event()
    server = metrics_server(metrics=VllmMetrics(), hold=hold)
    scraper = Scraper(server.url, interval_s=0.05, timeout_s=0.2)
    scraper.start()
    try:
        scraper.begin_level()  # waits at most timeout + 1 s for its scrape
        assert scraper.end_level() is None
        assert scraper.problem == f"{server.url}: ReadTimeout: timed out"
    finally:
        hold.set()
        scraper.close()


def test_failed_scrapes_after_the_first_success_are_counted_and_the_series_goes_on(metrics_server):
    m = VllmMetrics()
    server = metrics_server(metrics=m)
    scraper = Scraper(server.url, interval_s=0.05)
    scraper.start()
    try:
        scraper.begin_level()
        server.status = 503
        wait_until(lambda: server.statuses.count(503) >= 2, "two failed scrapes")
        server.status = 200
        m.generation[0].inc(5)
        level = scraper.end_level()
    finally:
        scraper.close()
    assert scraper.available and level["vllm:generation_tokens_total"]["increase"] == 5
    assert scraper.failed_scrapes == server.statuses.count(503) and scraper.scrapes == server.statuses.count(200)
    assert scraper.public()["failed_scrapes"] == scraper.failed_scrapes


def problem_after_one_level(url: str) -> str | None:
    """The problem a scraper of `url` reports after one level with nothing in it."""
    scraper = Scraper(url, interval_s=0.05)
    scraper.start()
    try:
        scraper.begin_level()
        scraper.end_level()
    finally:
        scraper.close()
    return scraper.problem


@pytest.mark.parametrize(
    ("body", "quoted"),
    [
        ('\n{"object": "list", "data": []}', "'{\"object\": \"list\", \"'"),  # JSON: the first 20 characters
        ("[1, 2, 3]", "'[1, 2, 3]'"),
        ("  <html><body>502 Bad Gateway</body></html>", "'<html><body>502 Bad '"),  # a proxy's error page
    ],
)
def test_a_body_that_is_not_prometheus_text_is_quoted(metrics_server, body, quoted):
    server = metrics_server(status=200, body=body)
    assert problem_after_one_level(server.url) == f"{server.url}: not Prometheus text (starts with {quoted})"


@pytest.mark.parametrize(("server_kwargs", "flags"), [({"status": 404, "body": "Not Found"}, "HTTP 404"),
                                                      ({"api_key": "other"}, "HTTP 401")])  # pragma: allowlist secret
def test_refused_metrics_name_the_flags_that_fix_it(metrics_server, server_kwargs, flags):
    server = metrics_server(metrics=VllmMetrics(), **server_kwargs)
    problem = problem_after_one_level(server.url)
    assert flags in problem and "--metrics-url" in problem and "--no-server-metrics" in problem


def _cfg(tmp_path, **kwargs):
    from bench.config import BenchConfig

    fields = {"url": "http://127.0.0.1:9/v1/chat/completions", "base_url": "http://127.0.0.1:9/v1", "model": "m",
              "out_dir": tmp_path, "server_metrics": True, **kwargs}
    return BenchConfig(**fields)


def test_start_scraper_uses_the_runs_url_key_and_interval(metrics_server, tmp_path):
    server = metrics_server(metrics=VllmMetrics(), api_key="sk-run")  # pragma: allowlist secret
    root = server.url.removesuffix("/metrics")
    scraper = server_metrics.start_scraper(_cfg(tmp_path, base_url=root + "/v1", api_key="sk-run",  # pragma: allowlist secret (test key)
                                                extra_headers={"X-Team": "bench"}, metrics_interval_s=0.05))
    try:
        scraper.begin_level()
        level = scraper.end_level()
    finally:
        scraper.close()
    assert (scraper.url, scraper.interval_s, scraper.problem) == (server.url, 0.05, None)
    assert "vllm:num_requests_running" in level and server.requests[0]["X-Team"] == "bench"
    assert server_metrics.start_scraper(_cfg(tmp_path, server_metrics=False)) is None


def test_start_scraper_with_sigv4_sends_none_of_the_runs_headers(metrics_server, tmp_path):
    server = metrics_server(metrics=VllmMetrics())
    scraper = server_metrics.start_scraper(_cfg(tmp_path, metrics_url=server.url, sigv4={"region": "us-east-1"},
                                                extra_headers={"X-Team": "bench"}, metrics_interval_s=0.05))
    try:
        scraper.begin_level()
        scraper.end_level()
    finally:
        scraper.close()
    assert scraper.problem is None and "X-Team" not in server.requests[0]


def test_metrics_flags_make_the_settings():
    from bench.cli import build_parser, parse_duration
    from bench.config import UsageError

    def settings(*argv):
        return server_metrics.settings(build_parser().parse_args(["http://h/v1", *argv]), parse_duration)

    assert settings() == {"server_metrics": True, "metrics_url": None, "metrics_interval_s": 1.0}
    assert settings("--metrics-url", "http://h:8000/metrics", "--metrics-interval", "250ms") == {
        "server_metrics": True, "metrics_url": "http://h:8000/metrics", "metrics_interval_s": 0.25}
    assert settings("--no-server-metrics")["server_metrics"] is False
    with pytest.raises(UsageError, match="--metrics-interval '0'"):
        settings("--metrics-interval", "0")


def test_report_and_console_for_a_server_with_few_metrics():
    # A server with no KV-cache gauge, no preemption counter and a generation counter that reset
    sparse = {"vllm:num_requests_running": {"mean": 1.0, "max": 2, "last": 1},
              "vllm:generation_tokens_total": {"rate_per_s": None, "increase": None, "reset": True}}
    summary = {"server_metrics": {"url": "http://h/metrics", "interval_s": 0.5, "available": True, "problem": None,
                                  "scrapes": 4, "failed_scrapes": 0},
               "levels": [{"concurrency": 1, "rate": None, "output_throughput_tok_s": 10.0},
                          {"concurrency": 2, "rate": None, "output_throughput_tok_s": 20.0, "server_metrics": sparse}]}
    assert server_metrics.report_lines(summary) == [
        "## Inside the server", "",
        "Scraped from `http://h/metrics` every 0.5 s (4 scrapes). Gauges: mean / max while the level ran; counters: "
        "per second over the level (warmup included).", "",
        "| level | running mean / max | waiting mean / max | KV cache mean / max | preemptions/s | prompt tok/s | "
        "generation tok/s | client output tok/s |",
        "|---|---|---|---|---|---|---|---|",
        "| c=1 | - | - | - | - | - | - | 10.0 |",
        "| c=2 | 1.0 / 2 | - | - | - | - | - | 20.0 |",
        "",
    ]
    assert server_metrics.console_line(summary["levels"][1]) == "server: running 1.0 / 2 (mean / max)"
    assert server_metrics.console_line({"server_metrics": {"other_gauge": {"mean": 1, "max": 1, "last": 1}}}) is None


class _Display:
    def __init__(self):
        self.notes: list[str] = []

    def note(self, line):
        self.notes.append(line)


class _StubScraper:
    def __init__(self, metrics, problem=None):
        self.metrics, self.problem = metrics, problem

    def end_level(self):
        return self.metrics

    def public(self):
        return {"available": self.problem is None, "problem": self.problem}


def test_attach_puts_the_metrics_in_the_level_and_tells_a_problem_once():
    metrics = {"vllm:num_requests_running": {"mean": 2.0, "max": 3, "last": 2}}
    level, summary, display = {}, {}, _Display()
    server_metrics.attach(level, _StubScraper(metrics), summary, display)
    assert level == {"server_metrics": metrics} and summary["server_metrics"] == {"available": True, "problem": None}
    assert display.notes == ["server: running 2.0 / 3 (mean / max)"]
    absent = _StubScraper(None, problem="http://h/metrics: HTTP 404")
    first, second, summary, display = {}, {}, {}, _Display()
    server_metrics.attach(first, absent, summary, display)
    assert display.notes == ["no server metrics: http://h/metrics: HTTP 404"]  # told after the first level
    server_metrics.attach(second, absent, summary, display)
    assert first == second == {} and summary["server_metrics"]["problem"] == "http://h/metrics: HTTP 404"
    assert display.notes == ["no server metrics: http://h/metrics: HTTP 404"]  # once, not per level
    server_metrics.attach({}, _StubScraper(metrics), {}, None)  # no display: nothing to tell
