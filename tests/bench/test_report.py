"""report.md, the PNG charts and `python -m bench compare`, from real runs against the mock server."""

import json
from pathlib import Path

import pytest

import bench
from bench.mock_server import MockConfig, MockServer
from bench.report import headline, percentile_warnings

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert data[12:16] == b"IHDR" and len(data) > 5_000, path
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width >= 300 and height >= 200, (path, width, height)


def run(url, out, *args):
    argv = [url, "--model", "mock-model", "--workers", "0", "--warmup", "0", "--max-tokens", "6",
            "--requests", "8", "--out", str(out), "--no-progress", *args]
    return bench.run(argv)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two results directories, made once: one with errors, a price and an SLO; one clean, without a price.

    Tests only read them (compare writes elsewhere)."""
    tmp = tmp_path_factory.mktemp("runs")
    a, b = tmp / "aws", tmp / "local"
    with MockServer(MockConfig(ttft_ms=5, itl_ms=1, faults={"http_503": 0.25})) as faulty:
        assert run(faulty, a, "--concurrency", "1,2", "--price-per-hour", "1.5", "--slo-ttft-ms", "1000",
                   "--label", "run-a", "--allow-errors") == 0  # 25 % 503s: exit 4 without the flag
    with MockServer(MockConfig(ttft_ms=5, itl_ms=1)) as clean:
        assert run(clean, b, "--concurrency", "2,4", "--no-charts") == 0
    return a, b


def test_report_has_definitions_levels_errors_and_charts(two_runs):
    out = two_runs[0]
    report = (out / "report.md").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert report.startswith("# Benchmark: run-a")
    assert "status **complete**" in report
    # Definitions live once, in docs/bench.md (checked to hold them below), not in every report.
    assert "## Metric definitions" in report and "`docs/bench.md#metric-definitions`" in report
    assert "**TPOT**" not in report
    docs = (ROOT / "docs" / "bench.md").read_text()
    assert "## Metric definitions" in docs and "## How to read the report" in docs
    for needle in ("**TTFT**", "**ITL**", "**TPOT**", "**E2E**", "**Goodput**", "**SLO attainment**",
                   "**Cost per 1k output tokens**", "**Client lag**"):
        assert needle in docs
    # The headline comes first; an SLO was given, so the column is the SLO's.
    assert report.splitlines()[2].startswith("**Peak**: ")
    assert "| SLO % |" in report and "success %" not in report
    results = report.split("## Results")[1].split("##")[0]
    rows = [line for line in results.splitlines() if line.startswith("| c=")]
    assert [row.split("|")[1].strip() for row in rows] == ["c=1", "c=2"]
    for row, lv in zip(rows, summary["levels"], strict=True):
        assert f"| {lv['succeeded']} / {lv['requests']} |" in row
    # Errors are listed by kind and level, with their kinds explained.
    assert "## Errors" in report and "| c=1 | http_5xx | 2 |" in report and "| c=2 | http_5xx | 2 |" in report
    assert "Error kinds:" in report
    assert "SLO: ttft <= 1000 ms" in report and "$1.5/h x 1 (--price-per-hour)" in report
    for name in ("latency", "throughput", "throughput_latency", "ttft_cdf"):
        assert_png(out / f"{name}.png")
        assert f"![{name}]({name}.png)" in report
    # Every file is parseable; requests.jsonl has one record per request.
    records = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    assert len(records) == sum(lv["requests"] for lv in summary["levels"]) == 16
    assert summary["levels"][0]["cost_per_1k_tokens_usd"] > 0


def test_no_charts_writes_the_report_only(two_runs):
    out = two_runs[1]
    assert (out / "report.md").exists() and not list(out.glob("*.png"))
    report = (out / "report.md").read_text()
    assert "## Charts" not in report and "## Errors" not in report
    assert "not given (no cost figures)" in report and "SLO: none given" in report
    assert "| success % |" in report and "SLO %" not in report


def test_report_and_charts_survive_a_run_where_everything_failed(tmp_path, mock_server):
    server = mock_server(faults={"http_500": 1.0})
    out = tmp_path / "run"
    assert run(server.url, out, "--concurrency", "1,2") == 1
    report = (out / "report.md").read_text()
    assert "| c=1 | 0 / 8 |" in report and "| c=2 | http_5xx | 8 |" in report
    summary = json.loads((out / "summary.json").read_text())
    assert all(lv["ttft_ms"]["n"] == 0 for lv in summary["levels"])
    assert not (out / "ttft_cdf.png").exists()  # no successful request to plot
    assert not (out / "throughput_latency.png").exists()
    assert report.splitlines()[2] == "**No level had a successful request**: see Errors below."


def test_compare_writes_one_report_naming_every_run(two_runs, tmp_path, capsys):
    a, b = two_runs
    out = tmp_path / "compare"
    assert bench.run(["compare", str(a), str(b), "--labels", "a,b", "--out", str(out)]) == 0
    assert "compare.md" in capsys.readouterr().out
    text = (out / "compare.md").read_text()
    assert text.startswith("# Cross-platform comparison")
    assert "**a**" in text and "**b**" in text
    peak = text.split("## Peak throughput per run")[1].split("## Every level")[0]
    assert [line.split("|")[1].strip() for line in peak.splitlines() if line.startswith(("| a ", "| b "))] == ["a", "b"]
    every = text.split("## Every level")[1]
    levels = [tuple(cell.strip() for cell in line.split("|")[1:3]) for line in every.splitlines()
              if line.startswith(("| a ", "| b "))]
    assert levels == [("a", "c=1"), ("a", "c=2"), ("b", "c=2"), ("b", "c=4")]
    assert "different SLOs" in text  # run a had a TTFT SLO, run b none
    assert_png(out / "compare_load.png")
    assert_png(out / "compare_cost.png")  # only run a has a price, and that is enough for the chart
    assert "![compare_load](compare_load.png)" in text


def test_compare_names_runs_by_their_label_without_labels(two_runs, tmp_path):
    a, b = two_runs
    out = tmp_path / "compare"
    assert bench.run(["compare", str(a / "summary.json"), str(b), "--out", str(out), "--no-charts"]) == 0
    text = (out / "compare.md").read_text()
    assert "**run-a**" in text and "**127.0.0.1**" in text and not list(out.glob("*.png"))


@pytest.mark.parametrize("case", ["no_summary", "bad_json", "label_count"])
def test_compare_bad_input_exits_2_with_one_line(two_runs, tmp_path, capsys, case):
    a, _ = two_runs
    empty = tmp_path / "empty"
    empty.mkdir()
    if case == "bad_json":
        (empty / "summary.json").write_text("{not json")
    argv = ["compare", str(a), str(empty), "--out", str(tmp_path / "c")]
    if case == "label_count":
        argv = ["compare", str(a), "--labels", "x,y", "--out", str(tmp_path / "c")]
    assert bench.run(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    needle = {"no_summary": "no summary.json there", "bad_json": "not valid JSON", "label_count": "--labels"}[case]
    assert err.startswith("python -m bench compare: error:") and needle in err
    assert not (tmp_path / "c" / "compare.md").exists()


def level(concurrency, tok_s, attainment, n, cost=None):
    return {"concurrency": concurrency, "rate": None, "succeeded": n, "requests": n, "output_throughput_tok_s": tok_s,
            "slo_attainment": attainment, "cost_per_1m_tokens_usd": cost, "ttft_ms": {"n": n}}


def summary_of(levels, slo_ttft_ms=None):
    return {"config": {"slo": {"ttft_ms": slo_ttft_ms, "tpot_ms": None, "e2e_ms": None}}, "levels": levels}


def test_headline_peak_and_the_highest_level_meeting_the_slo_with_its_cost():
    levels = [level(6, 400.0, 1.0, 200, 0.52), level(12, 700.0, 0.96, 200, 0.3),
              level(24, 900.0, 0.94, 200, 0.234), level(32, 880.0, 0.5, 200, 0.24)]
    assert headline(summary_of(levels, 500)) == [
        "**Peak**: 900 output tok/s at c=24, $0.23 per 1M output tokens.",
        "**Highest level meeting the SLO** (95% of requests within the SLO): c=12, 700 output tok/s, "
        "$0.30 per 1M output tokens.",
    ]
    assert headline(summary_of([level(6, 400.0, 0.9, 200)], 500))[1].startswith("**SLO**: no level met it")


def test_without_an_slo_nothing_is_judged_and_the_column_is_the_success_rate():
    summary = summary_of([level(6, 400.0, 1.0, 200)])
    assert headline(summary)[1].startswith("**SLO**: none given, so no level is judged")
    assert "cost" not in headline(summary)[0] and "per 1M" not in headline(summary)[0]  # no price, no cost


def test_the_report_says_when_a_level_has_too_few_requests_for_its_percentiles():
    levels = [level(1, 10.0, 1.0, 24), level(2, 20.0, 1.0, 60), level(4, 30.0, 1.0, 100), level(8, 0.0, 0.0, 0)]
    warned = {lv["concurrency"]: text for lv, text in percentile_warnings(levels)}
    assert set(warned) == {1, 2}  # 100 is enough; a level with no success has no percentiles to warn about
    assert warned[1].startswith("only 24 successful requests: its p99 is the max or next to it (a p99 needs >= 100)")
    assert "p95" not in warned[1] and "p95" not in warned[2]
    assert percentile_warnings([level(1, 1.0, 1.0, 19)])[0][1].startswith("only 19 successful requests: its p95/p99")
