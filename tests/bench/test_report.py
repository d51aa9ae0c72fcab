"""report.md, the PNG charts and `python -m bench compare`, from real runs against the mock server."""

import json

import pytest

import bench
from bench.mock_server import MockConfig, MockServer
from bench.report import METRIC_DEFINITIONS

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
                   "--label", "run-a") == 0
    with MockServer(MockConfig(ttft_ms=5, itl_ms=1)) as clean:
        assert run(clean, b, "--concurrency", "2,4", "--no-charts") == 0
    return a, b


def test_report_has_definitions_levels_errors_and_charts(two_runs):
    out = two_runs[0]
    report = (out / "report.md").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert report.startswith("# Benchmark: run-a")
    assert "status **complete**" in report
    assert "## Metric definitions" in report and METRIC_DEFINITIONS.strip() in report
    for needle in ("**TTFT**", "**ITL**", "**TPOT**", "**E2E**", "**Goodput**", "**SLO attainment**",
                   "**Cost per 1k output tokens**", "**Client lag**"):
        assert needle in report
    results = report.split("## Results")[1].split("##")[0]
    rows = [line for line in results.splitlines() if line.startswith("| c=")]
    assert [row.split("|")[1].strip() for row in rows] == ["c=1", "c=2"]
    for row, lv in zip(rows, summary["levels"], strict=True):
        assert f"| {lv['succeeded']} / {lv['requests']} |" in row
    # Errors are listed by kind and level, with their kinds explained.
    assert "## Errors" in report and "| c=1 | http_5xx | 2 |" in report and "| c=2 | http_5xx | 2 |" in report
    assert "Error kinds:" in report
    assert "SLO: ttft <= 1000 ms" in report and "$1.5/h x 1 (--price-per-hour)" in report
    for name in ("latency", "throughput", "ttft_cdf"):
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


def test_report_and_charts_survive_a_run_where_everything_failed(tmp_path, mock_server):
    server = mock_server(faults={"http_500": 1.0})
    out = tmp_path / "run"
    assert run(server.url, out, "--concurrency", "1,2") == 1
    report = (out / "report.md").read_text()
    assert "| c=1 | 0 / 8 |" in report and "| c=2 | http_5xx | 8 |" in report
    summary = json.loads((out / "summary.json").read_text())
    assert all(lv["ttft_ms"]["n"] == 0 for lv in summary["levels"])
    assert not (out / "ttft_cdf.png").exists()  # no successful request to plot


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
