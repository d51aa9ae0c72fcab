"""Levels that cannot be trusted say so: throttled (429), failing past 1 %, or client-bound (invalid),
in summary.json, the console and the exit code (4 for failures unless --allow-errors, 5 with --strict)."""

import json

import pytest

from bench.config import BenchConfig
from bench.runner import EXIT_ERRORS, EXIT_INVALID, EXIT_OK, _exit_code
from bench.stats import LevelStats, Slo
from tests.bench.test_stats import failed, ok


def closed_level(n=10, lag=0.1, e2e=100.0, ttft=50.0, send=None, concurrency=8) -> LevelStats:
    lv = LevelStats(0, concurrency, None, Slo(), None)
    for i in range(n):
        extra = {} if send is None else {"send_delay_ms": send}
        lv.add({**ok(ttft, e2e, 5, start=i * 0.1, end=i * 0.1 + 0.1), "client_lag_ms": lag, **extra})
    return lv


def test_a_clean_level_is_valid():
    s = closed_level(lag=0.5, send=1.0).summary()
    assert (s["valid"], s["why"]) == (True, [])


def test_closed_loop_slots_waiting_on_the_client_make_the_level_invalid():
    # mean lag 10 ms per 90 ms request: the slots were idle 10 % of the time, c=8 ran as 7.2.
    s = closed_level(lag=10.0, e2e=90.0).summary()
    assert s["valid"] is False
    assert s["why"] == [
        "client lag: the slots waited for the client 10% of the time (mean 10.0 ms per request, limit 5%), "
        "so the server saw about 7.2 requests in flight, not 8"
    ]
    # 4 ms per 96 ms: 4 %, under the limit.
    assert closed_level(lag=4.0, e2e=96.0).summary()["valid"] is True


def test_open_loop_lag_past_50_ms_at_p99_makes_the_level_invalid():
    def level(lag):
        lv = LevelStats(0, 64, 20.0, Slo(), None)
        for i in range(20):
            lv.add({**ok(50, 100, 5), "client_lag_ms": lag if i == 19 else 1.0})
        return lv.summary()

    # p99 of nineteen 1 ms lags and one L: rank 18.81 -> 1 + 0.81 x (L - 1).
    s = level(70.0)
    assert s["why"] == ["client lag p99 57 ms (limit 50 ms): requests left later than their arrival schedule, "
                        "so the offered rate was lower"]
    assert level(60.0)["valid"] is True  # p99 48.8 ms


@pytest.mark.parametrize(
    ("ttft", "send", "valid"),
    [(100.0, 10.5, False), (100.0, 9.5, True),  # limit 10 % of TTFT p50 = 10 ms
     (20.0, 5.5, False), (20.0, 4.9, True)],  # 10 % would be 2 ms: the 5 ms floor holds
)
def test_send_delay_past_a_tenth_of_ttft_makes_the_level_invalid(ttft, send, valid):
    s = closed_level(ttft=ttft, send=send).summary()
    assert s["valid"] is valid, s["why"]


def test_send_delay_message_word_for_word():
    assert closed_level(ttft=100.0, send=12.0).summary()["why"] == [
        "send delay p95 12.0 ms (limit 10.0 ms: 10% of TTFT p50, at least 5 ms): the client's event loop was "
        "busy, and the same loop stamps the replies"
    ]


def test_client_cpu_past_90_percent_of_its_processes_makes_the_level_invalid():
    lv = closed_level()  # 10 requests over 1.0 s
    lv.client_cpu_s = 0.95
    s = lv.summary()
    assert s["client_cpu_share"] == 0.95
    assert s["why"] == ["client CPU 95% of 1 process(es) over the level (limit 90%): the load generator was saturated"]
    lv.client_processes = 2  # the same CPU over two processes: 47.5 %
    assert lv.summary()["valid"] is True
    lv.client_cpu_s, lv.client_processes = 0.89, 1
    assert lv.summary()["valid"] is True


def test_too_few_requests_are_not_judged():
    s = closed_level(n=9, lag=50.0).summary()
    assert (s["valid"], s["why"]) == (True, [])


def test_a_throttled_level_counts_its_429s_and_names_the_usage_plan():
    lv = closed_level(n=6)
    for _ in range(2):
        lv.add(failed("http_429"))
    s = lv.summary()
    assert s["throttled"] == {"count": 2, "share": 0.25}
    assert s["warnings"][0].startswith("throttled: 2 of 8 requests (25.0%) got HTTP 429, the gateway's usage plan")
    assert "pulumi config set llm-inference:gatewayRateLimit" in s["warnings"][0]
    assert closed_level().summary()["throttled"] == {"count": 0, "share": 0.0}


def config(**kw) -> BenchConfig:
    return BenchConfig(url="http://h/v1/chat/completions", base_url="http://h/v1", model="m", **kw)


def summary_of(*levels: LevelStats) -> dict:
    return {"levels": [lv.summary() for lv in levels]}


def with_failures(failures: int, n: int = 100) -> LevelStats:
    lv = closed_level(n=n - failures)
    for _ in range(failures):
        lv.add(failed("http_5xx"))
    return lv


def test_failures_past_one_percent_exit_4_unless_allowed():
    assert _exit_code(summary_of(with_failures(1)), "complete", config()) == EXIT_OK  # 1 % exactly: not over
    assert _exit_code(summary_of(closed_level(), with_failures(2)), "complete", config()) == EXIT_ERRORS == 4
    assert _exit_code(summary_of(with_failures(2)), "complete", config(allow_errors=True)) == EXIT_OK


def test_an_invalid_level_exits_5_only_with_strict():
    invalid = summary_of(closed_level(), closed_level(lag=10.0, e2e=90.0))
    assert _exit_code(invalid, "complete", config()) == EXIT_OK
    assert _exit_code(invalid, "complete", config(strict=True)) == EXIT_INVALID == 5
    assert _exit_code(summary_of(closed_level()), "complete", config(strict=True)) == EXIT_OK


def test_a_run_throttled_by_the_mock_exits_4_and_says_so(tmp_path, mock_server, capsys):
    from bench.cli import main

    server = mock_server(ttft_ms=2, itl_ms=1, faults={"http_429": 0.25})
    argv = [server.url, "--model", "m", "--concurrency", "2", "--requests", "40", "--warmup", "0", "--workers", "0",
            "--no-charts", "--no-server-metrics", "--max-tokens", "4"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == EXIT_ERRORS
    err = capsys.readouterr().err
    assert "got HTTP 429, the gateway's usage plan limit" in err and "exit 4" in err
    level = json.loads((tmp_path / "a" / "summary.json").read_text())["levels"][0]
    assert level["throttled"]["count"] == level["errors"]["http_429"] == level["failed"] > 0
    assert "Can these numbers be trusted" in (tmp_path / "a" / "report.md").read_text()
    assert main([*argv, "--out", str(tmp_path / "b"), "--allow-errors"]) == EXIT_OK


def test_exit_codes_a_ci_script_branches_on():
    # From the mutation run of runner._exit_code: each status and the search's own error limit.
    from bench.runner import EXIT_ERROR_RATE, EXIT_FAILED, EXIT_INTERRUPTED
    from bench.search import SearchSlo, SearchSpec

    failing = summary_of(with_failures(5))
    assert _exit_code(failing, "interrupted", config()) == EXIT_INTERRUPTED == 130
    assert _exit_code(failing, "worker_error", config()) == EXIT_FAILED == 1
    assert _exit_code(failing, "max_error_rate", config()) == EXIT_ERROR_RATE == 3
    assert _exit_code(summary_of(with_failures(10, n=10)), "complete", config()) == EXIT_FAILED  # none succeeded
    assert _exit_code({"levels": []}, "complete", config()) == EXIT_FAILED  # nothing sent
    # A search's probes past the breaking point fail by design: not exit 4. Without a config, judged as a run.
    search = config(search=SearchSpec("max_rate", SearchSlo(ttft_ms=200)))
    assert _exit_code(failing, "complete", search) == EXIT_OK
    assert _exit_code(failing, "complete") == EXIT_ERRORS
