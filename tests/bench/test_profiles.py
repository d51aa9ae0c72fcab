"""--profile: parsing, the inhomogeneous arrival schedule, and the scheduler following it."""

import random
import re

import pytest

from bench.config import BenchConfig, split_level
from bench.profiles import ProfileError, Segment, from_public, parse_profile

# a scheduler that never returns fails the test within seconds (tests/bench/conftest.py)
pytestmark = pytest.mark.usefixtures("time_limit")


def test_forms_parse_into_back_to_back_segments():
    p = parse_profile("step:2@30s,8@1m,0@500ms")
    assert p.segments == (Segment(0, 30, 2, 2), Segment(30, 60, 8, 8), Segment(90, 0.5, 0, 0))
    assert p.duration_s == 90.5 and p.peak == 8 and not p.closed_loop
    ramp = parse_profile("ramp:1..9@80s,9@20s")
    assert ramp.segments == (Segment(0, 80, 1, 9), Segment(80, 20, 9, 9))
    assert parse_profile("cstep:4@10s,32@2m").closed_loop
    assert parse_profile(ramp.describe()) == ramp


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("steps:2@30s", "expected step:RATE@DURATION"),
        ("step:2", "needs LOAD@DURATION"),
        ("step:2@0s", "positive duration"),
        ("step:x@10s", "'x' is not a number"),
        ("step:1..4@10s", "FROM..TO is for ramp:"),
        ("step:-1@10s", "must be >= 0"),
        ("step:0@10s,0@5s", "every rate is 0"),
        ("cstep:2.5@10s", "whole number >= 1"),
        ("cstep:0@10s", "whole number >= 1"),
    ],
)
def test_bad_profiles_are_named(text, words):
    with pytest.raises(ProfileError, match=re.escape(words)):
        parse_profile(text)


def test_cumulative_and_inverse_agree_through_a_ramp_and_steps():
    p = parse_profile("ramp:0..10@10s,10@5s,2@5s")
    assert p.cumulative(10) == pytest.approx(50)  # the ramp's triangle
    assert p.cumulative(15) == pytest.approx(100)
    assert p.cumulative(20) == pytest.approx(110)
    for t in (0.5, 3, 9.99, 10, 12.5, 17, 19.9):
        assert p.inverse(p.cumulative(t)) == pytest.approx(t, abs=1e-9)
    assert p.inverse(111) is None
    assert p.load_at(5) == pytest.approx(5) and p.load_at(12) == 10 and p.load_at(25) == 0


def test_constant_arrivals_follow_the_rate_exactly():
    p = parse_profile("step:2@5s,10@2s")
    times = list(p.arrival_times("constant", random.Random(0)))
    assert times[:10] == pytest.approx([0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5])
    assert times[10:] == pytest.approx([5 + k / 10 for k in range(20)])


def test_poisson_arrivals_count_per_segment_matches_the_rate():
    p = parse_profile("step:20@50s,100@50s")
    times = list(p.arrival_times("poisson", random.Random(1)))
    first = sum(1 for t in times if t < 50)
    second = len(times) - first
    # 1000 and 5000 expected; 4 standard deviations (sqrt(n)) either way.
    assert abs(first - 1000) < 4 * 1000**0.5 and abs(second - 5000) < 4 * 5000**0.5


def test_load_rises_are_the_steps_up_and_rising_ramps():
    p = parse_profile("step:2@10s,8@10s,4@10s,6@10s")
    assert p.load_rises() == [(0, 0, 2), (10, 2, 8), (30, 4, 6)]
    assert parse_profile("ramp:1..5@10s").load_rises() == [(0, 0, 5)]


def test_split_over_workers_keeps_the_whole_load():
    cfg = BenchConfig(url="http://x/v1/chat/completions", base_url="http://x/v1", model="m", concurrency=(64,),
                      profile=parse_profile("step:3@10s,9@10s"), arrival="constant")
    level = cfg.levels()[0]
    assert (level.rate, level.warmup, level.concurrency) == (9, 0, 64)
    specs = split_level(cfg, level, 3, 0)
    rates = [from_public(s.profile).segments[1].begin for s in specs]
    assert sum(rates) == pytest.approx(9)
    assert [s.phase for s in specs] == pytest.approx([0, 1 / 3, 2 / 3])
    assert all(s.duration_s == 20 for s in specs)
    closed = BenchConfig(url="http://x/v1/chat/completions", base_url="http://x/v1", model="m",
                         profile=parse_profile("cstep:5@10s,2@10s"))
    specs = split_level(closed, closed.levels()[0], 2, 0)
    assert [[seg.begin for seg in from_public(s.profile).segments] for s in specs] == [[3, 1], [2, 1]]


@pytest.mark.time_limit(20)
def test_cstep_holds_c_in_flight_per_step(mock_server, tmp_path):
    import orjson

    from bench.runner import run_benchmark

    server = mock_server(ttft_ms=40, itl_ms=1, output_tokens=2)
    cfg = BenchConfig(url=server.url + "/chat/completions", base_url=server.url, model="mock-model", workers=0,
                      progress=False, profile=parse_profile("cstep:2@1.5s,6@1.5s,1@1s"), window_s=0.5,
                      out_dir=tmp_path)
    assert cfg.levels()[0].concurrency == 6
    run_benchmark(cfg)
    recs = [orjson.loads(line) for line in (tmp_path / "requests.jsonl").read_bytes().splitlines()]

    def in_flight(t):
        return sum(1 for r in recs if r["start_s"] <= t < r["end_s"])

    for lo, c in ((0.2, 2), (1.7, 6), (3.3, 1)):
        counts = [in_flight(lo + k * 0.1) for k in range(10)]
        assert max(counts) == c, (lo, counts)
    assert max(r["start_s"] for r in recs) < 4.0  # nothing sent after the profile's end


@pytest.mark.time_limit(20)
def test_open_profile_sends_on_its_schedule(mock_server, tmp_path):
    import orjson

    from bench.runner import run_benchmark

    server = mock_server(ttft_ms=2, itl_ms=1, output_tokens=2)
    cfg = BenchConfig(url=server.url + "/chat/completions", base_url=server.url, model="mock-model", workers=0,
                      progress=False, profile=parse_profile("step:10@1s,40@1s"), arrival="constant",
                      window_s=0.5, out_dir=tmp_path, concurrency=(64,))
    run_benchmark(cfg)
    recs = [orjson.loads(line) for line in (tmp_path / "requests.jsonl").read_bytes().splitlines()]
    scheduled = sorted(r["scheduled_s"] for r in recs)
    assert len(recs) == 10 + 40
    assert scheduled[:3] == pytest.approx([0, 0.1, 0.2], abs=1e-6)
    assert scheduled[10:13] == pytest.approx([1.0, 1.025, 1.05], abs=1e-6)
    assert not any(r["warmup"] for r in recs)


# -- the flags --------------------------------------------------------------------------------------------

URL = "http://127.0.0.1:9/v1"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--profile", "steps:1@1s"], "expected step:RATE@DURATION"),
        (["--profile", "step:1@10s", "--rate", "2"], "--rate does not go with --profile"),
        (["--profile", "step:1@10s", "--duration", "5s"], "--duration does not go with --profile"),
        (["--profile", "step:1@10s", "--requests", "5"], "--requests does not go with --profile"),
        (["--profile", "step:1@10s", "--warmup", "3"], "--warmup does not go with --profile"),
        (["--profile", "cstep:2@10s", "--concurrency", "4"], "the profile sets C"),
        (["--profile", "step:1@10s", "--concurrency", "4,8"], "one in-flight cap"),
        (["--profile", "step:1@10s", "--window", "20s"], "longer than the profile"),
        (["--profile", "step:1@10s", "--slo-target", "2"], "--slo-target"),
        (["--profile", "step:1@10s", "--capacity", "azure"], "expected mock, fixed:N"),
        (["--capacity", "mock"], "--capacity is for a --profile run"),
        (["--window", "5s"], "--window is for a --profile run"),
    ],
)
def test_profile_flags_are_checked(argv, needle, capsys):
    import bench

    assert bench.run([URL, "--model", "m", *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1


def test_profile_flags_make_the_config():
    from bench.cli import build_parser, config_from_args

    args = build_parser().parse_args([URL, "--model", "m", "--profile", "ramp:1..5@1m", "--window", "5s",
                                      "--slo-target", "90%", "--capacity", "sagemaker:ep/AllTraffic@us-east-1"])
    cfg = config_from_args(args)
    assert (cfg.window_s, cfg.slo_target, cfg.duration_s, cfg.concurrency) == (5, 0.9, 60, (256,))
    assert cfg.capacity == {"kind": "sagemaker", "endpointName": "ep", "variantName": "AllTraffic",
                            "region": "us-east-1"}
    assert cfg.public()["profile"]["spec"] == "ramp:1..5@60s"
    cfg = config_from_args(build_parser().parse_args([URL, "--model", "m", "--profile", "cstep:3@5s,9@5s"]))
    assert cfg.concurrency == (9,) and cfg.levels()[0].rate is None


@pytest.mark.time_limit(20)
def test_stack_capacity_without_credentials_is_a_note_not_a_failure(tmp_path, monkeypatch, mock_server, capsys,
                                                                     no_aws_credentials):
    import json

    import bench
    from tests.bench.test_cli import fake_pulumi

    server = mock_server()
    outputs = {"url": server.url, "pricePerHour": 1.515, "capacity": {
        "kind": "sagemaker", "endpointName": "llm-ep", "variantName": "AllTraffic", "region": "us-east-1"}}
    fake_pulumi(tmp_path, monkeypatch, json.dumps(outputs))
    out = tmp_path / "run"
    code = bench.run(["--stack", "aws", "--workers", "0", "--profile", "step:20@1s", "--window", "0.5s",
                      "--max-tokens", "4", "--out", str(out), "--no-progress", "--no-charts"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    auto = summary["autoscaler"]
    assert summary["config"]["capacity"]["endpointName"] == "llm-ep"
    assert "no AWS credentials for DescribeEndpoint" in auto["capacity_note"]
    assert auto["instance_hours_source"] == "--instance-count 1 for the whole run"
    assert "capacity: no AWS credentials for DescribeEndpoint" in capsys.readouterr().err
    assert auto["cost_usd"] == pytest.approx(1.515 / 3600, rel=1e-3)
    assert sum(r["rps"] * r["window_s"] for r in summary["timeline"]) == summary["levels"][0]["requests"]
