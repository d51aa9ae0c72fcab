"""bench.cli: argument validation (one line, exit 2), targets from --stack / env, subcommand dispatch."""

import json
import os
import stat
import sys
import types

import pytest

import bench
from bench.cli import build_parser, config_from_args

URL = "http://127.0.0.1:9/v1"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        ([], "no URL"),
        (["ftp://host/v1"], "not an http(s) URL"),
        ([URL, "--concurrency", "0"], "--concurrency"),
        ([URL, "--concurrency", "a,b"], "--concurrency"),
        ([URL, "--rate", "-1"], "--rate"),
        ([URL, "--rate", "1", "--concurrency", "1,2"], "in-flight cap"),
        ([URL, "--duration", "5x"], "--duration"),
        ([URL, "--requests", "0"], "--requests"),
        ([URL, "--timeout", "0"], "--timeout"),
        ([URL, "--price-per-hour", "1", "--instance", "ml.g5.2xlarge"], "not both"),
        ([URL, "--price-per-hour", "-2"], "--price-per-hour"),
        ([URL, "--instance", "x9.mega"], "known: aws: "),
        ([URL, "--max-error-rate", "2"], "--max-error-rate"),
        ([URL, "--extra-body", "[1]"], "JSON object"),
        ([URL, "--extra-body", "{bad"], "not valid JSON"),
        ([URL, "--dataset", "/nonexistent.jsonl"], "cannot read"),
        ([URL, "--max-tokens", "0"], "--max-tokens"),
        ([URL, "--prompt-tokens", "normal:5"], "--prompt-tokens"),
        ([URL, "--header", "novalue"], "--header"),
        ([URL, "--workers", "-1"], "--workers"),
        ([URL, "--slo-ttft-ms", "0"], "--slo-ttft-ms"),
        ([URL, "--instance-count", "0"], "--instance-count"),
        ([URL, "--warmup", "-1"], "--warmup"),
        ([URL, "--no-such-flag"], "unrecognized arguments"),
        ([URL, "--arrival", "bursty"], "--arrival"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(capsys, argv, needle):
    model = [] if not argv or argv[0] != URL else ["--model", "m"]
    assert bench.run(argv + model) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert needle in err


def test_unreachable_url_without_model_points_at_bench_wait(capsys):
    # No answer is an endpoint not serving yet (Azure's `pulumi up` returns before vLLM), not a missing --model.
    assert bench.run([URL]) == 2
    err = capsys.readouterr().err
    assert "the endpoint may not be serving yet: `python -m bench wait" in err and "pass --model" not in err


def test_sigv4_needs_a_region(capsys, monkeypatch):
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    assert bench.run([URL, "--model", "m", "--sigv4"]) == 2
    assert "--sigv4" in capsys.readouterr().err


def test_sigv4_region_from_function_url(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("BENCH_API_KEY", "k")
    args = build_parser().parse_args(["https://abc.lambda-url.ap-south-1.on.aws/v1", "--model", "m", "--sigv4"])
    cfg = config_from_args(args)
    assert cfg.sigv4 == {"region": "ap-south-1", "service": "lambda"}
    assert "Authorization" not in cfg.request_headers()  # the signature is the authorization


def test_api_key_from_env_goes_in_both_headers(monkeypatch):
    monkeypatch.delenv("BENCH_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "from-openai")
    cfg = config_from_args(build_parser().parse_args([URL, "--model", "m"]))
    assert cfg.request_headers()["Authorization"] == "Bearer from-openai"
    monkeypatch.setenv("BENCH_API_KEY", "from-bench")
    headers = config_from_args(build_parser().parse_args([URL, "--model", "m", "--header", "X-Team: a"])).request_headers()
    assert headers["Authorization"] == "Bearer from-bench" and headers["x-api-key"] == "from-bench"
    assert headers["X-Team"] == "a"
    assert "from-bench" not in json.dumps(config_from_args(build_parser().parse_args([URL, "--model", "m"])).public())


def test_instance_price_from_catalog_and_full_endpoint_url():
    cfg = config_from_args(
        build_parser().parse_args([URL + "/chat/completions/", "--model", "m", "--instance", "ml.g5.2xlarge",
                                   "--instance-count", "2"])
    )
    assert cfg.url == URL + "/chat/completions" and cfg.base_url == URL
    assert cfg.price_per_hour == 1.515 and cfg.total_price_per_hour == pytest.approx(3.03)
    assert cfg.price_source == "catalog ml.g5.2xlarge"


def fake_pulumi(tmp_path, monkeypatch, stdout: str, code: int = 0, stderr: str = ""):
    """A `pulumi` executable first on PATH that records its argv and prints the given outputs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "pulumi"
    script.write_text(
        f"#!{sys.executable}\nimport sys, pathlib\n"
        f"pathlib.Path({str(tmp_path / 'argv.json')!r}).write_text(__import__('json').dumps(sys.argv[1:]))\n"
        f"sys.stdout.write({stdout!r})\nsys.stderr.write({stderr!r})\nsys.exit({code})\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / "argv.json"


def test_stack_outputs_drive_url_key_and_price(tmp_path, monkeypatch, mock_server):
    server = mock_server(api_key="stack-key")
    outputs = {"url": server.url, "apiKey": "stack-key", "pricePerHour": 2.5, "other": 1}  # pragma: allowlist secret (test fixture)
    argv_file = fake_pulumi(tmp_path, monkeypatch, json.dumps(outputs))
    out = tmp_path / "run"
    code = bench.run(["--stack", "dev", "--workers", "0", "--concurrency", "2", "--requests", "4", "--warmup", "0",
                      "--max-tokens", "4", "--out", str(out), "--no-progress", "--no-charts"])
    assert code == 0
    assert json.loads(argv_file.read_text()) == ["stack", "output", "--json", "--show-secrets", "-s", "dev"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["target"]["url"] == server.url and summary["target"]["model"] == "mock-model"
    assert summary["config"]["price_source"] == "stack dev pricePerHour"
    assert summary["config"]["api_key"] == "set" and "stack-key" not in (out / "summary.json").read_text()  # pragma: allowlist secret (test fixture)
    level = summary["levels"][0]
    assert level["succeeded"] == 4 and level["cost_per_1k_tokens_usd"] > 0


@pytest.mark.parametrize(
    ("stdout", "code", "stderr", "needle"),
    [
        ("", 255, "error: no stack named 'dev' found\n", "no stack named 'dev' found"),
        ('{"apiKey": "k"}', 0, "", "has no `url` output"),
        ("not json", 0, "", "did not print JSON"),
        ('{"url": "http://h/v1", "pricePerHour": "cheap"}', 0, "", "pricePerHour"),
    ],
)
def test_stack_problems_exit_2(tmp_path, monkeypatch, capsys, stdout, code, stderr, needle):
    fake_pulumi(tmp_path, monkeypatch, stdout, code, stderr)
    assert bench.run(["--stack", "dev", "--model", "m"]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1


def test_stack_without_pulumi_cli(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert bench.run(["--stack", "dev", "--model", "m"]) == 2
    assert "pulumi CLI is not on PATH" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["plan", "recommend"])
def test_planner_subcommands_are_dispatched_lazily(monkeypatch, name):
    seen = {}
    module = types.ModuleType(f"planning.{'planner' if name == 'plan' else 'recommend'}")
    module.main = lambda argv: seen.setdefault("argv", argv) and 7
    monkeypatch.setitem(sys.modules, module.__name__, module)
    assert bench.run([name, "--x", "1"]) == 7
    assert seen["argv"] == ["--x", "1"]


def test_help_exits_0(capsys):
    assert bench.run(["--help"]) == 0
    assert "--concurrency" in capsys.readouterr().out


def test_import_bench_stays_light():
    import subprocess

    code = "import sys, bench, planning.catalog, planning.planner, planning.recommend; heavy = {'aiohttp', 'httpx', 'matplotlib', 'rich', 'numpy'} & set(sys.modules); print(sorted(heavy))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
