"""The regression gate (bench.gate via `bench compare --baseline DIR RUN --fail-on ...`).

Runs are written here as results directories with literal per-request records, so every point estimate
is known by hand; the verdicts come from the seeded bootstrap over those records."""

import json

import numpy as np
import pytest

from bench.cli import main as bench_main
from bench.gate import GateError, Rule, load_levels, parse_rules, point, run_gate


def write_run(directory, ttfts, tokens=10, e2e_extra=100.0, concurrency=4, rate=None, failures=0, spacing=0.05):
    """A results directory: one level, request i starting at i x spacing and lasting its E2E (in s / 1000)."""
    directory.mkdir(parents=True)
    records = [{"level": 0, "warmup": True, "ok": True, "ttft_ms": 1.0, "e2e_ms": 2.0, "output_tokens": 1,
                "start_s": 0.0, "end_s": 0.002}]
    for i, ttft in enumerate(ttfts):
        e2e = ttft + e2e_extra
        records.append({"level": 0, "warmup": False, "ok": True, "ttft_ms": ttft, "e2e_ms": e2e,
                        "tpot_ms": e2e_extra / (tokens - 1), "output_tokens": tokens,
                        "start_s": i * spacing, "end_s": i * spacing + e2e / 1000})
    for j in range(failures):
        records.append({"level": 0, "warmup": False, "ok": False, "error": "http_5xx", "start_s": j * spacing,
                        "end_s": j * spacing + 0.01})
    (directory / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = {"target": {"url": "http://h/v1", "model": "m"}, "config": {},
               "levels": [{"concurrency": concurrency, "rate": rate}]}
    (directory / "summary.json").write_text(json.dumps(summary))
    return directory


# 200 TTFTs spread 80..120 ms in a fixed order (no RNG in the data).
BASE = [80.0 + (i * 37) % 41 for i in range(200)]


def test_rules_parse_with_their_direction_and_unit():
    assert parse_rules("ttft_p95>+10%, tokens_per_s<-5%,error_rate>+0.01") == [
        Rule("ttft_p95", True, 0.10, True), Rule("tokens_per_s", False, -0.05, True),
        Rule("error_rate", True, 0.01, False),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ttft_p95>-10%", "--fail-on 'ttft_p95>-10%': '>' takes a rise (+N), '<' a fall (-N); e.g. "
                          "ttft_p95>+10% or ttft_p95<-5%"),
        ("ttfb_p95>+10%", "--fail-on 'ttfb_p95>+10%': unknown metric 'ttfb_p95'; one of ttft_p50,"),
        ("ttft_p95 10%", "--fail-on 'ttft_p95 10%': expected METRIC>+N% or METRIC<-N%, e.g. ttft_p95>+10%"),
        (" , ", "--fail-on: no rule given; e.g. --fail-on 'ttft_p95>+10%,tokens_per_s<-5%'"),
    ],
)
def test_bad_rules_are_refused_naming_the_fix(text, message):
    with pytest.raises(GateError) as exc:
        parse_rules(text)
    assert str(exc.value).startswith(message)


def test_point_estimates_are_the_summary_figures(tmp_path):
    run = write_run(tmp_path / "r", [float(x) for x in range(1, 101)], tokens=10, spacing=0.1, failures=5)
    level = load_levels(str(run))[(4, None)]
    assert len(level.ok) == 105  # the warmup record is left out
    assert point(level, "ttft_p95") == pytest.approx(95.05)  # numpy's linear interpolation over 1..100
    assert point(level, "ttft_mean") == pytest.approx(50.5)
    assert point(level, "e2e_p50") == pytest.approx(150.5)
    assert point(level, "error_rate") == pytest.approx(5 / 105)
    # Little's law: tokens / request time x mean in flight = 1000 tokens / the level's 10.099 s.
    assert point(level, "tokens_per_s") == pytest.approx(1000 / (9.9 + 0.2))
    assert point(level, "req_per_s") == pytest.approx(100 / (9.9 + 0.2))


def compare_main(argv):
    """`python -m bench compare ...` as the shell sees it (usage errors are exit 2, not SystemExit)."""
    return bench_main(["compare", *argv])


def gate(tmp_path, base, run, rules):
    return run_gate(str(base), str(run), parse_rules(rules), seed=0, resamples=500)


def test_a_30_percent_slower_ttft_breaches_and_2_percent_passes(tmp_path):
    base = write_run(tmp_path / "base", BASE)
    slow = write_run(tmp_path / "slow", [1.3 * x for x in BASE])
    near = write_run(tmp_path / "near", [1.02 * x for x in BASE])
    (breach,) = gate(tmp_path, base, slow, "ttft_p95>+10%")
    assert breach.outcome == "breach" and breach.delta == pytest.approx(0.30)
    assert 0.10 < breach.low <= 0.30 <= breach.high
    (fine,) = gate(tmp_path, base, near, "ttft_p95>+10%")
    assert fine.outcome == "pass" and fine.delta == pytest.approx(0.02) and fine.high < 0.10


def test_past_the_threshold_on_few_noisy_requests_is_inconclusive_not_a_breach(tmp_path):
    # 12 requests spread 50..150 ms: +15 % at p50 is within the noise of so few.
    spread = [50.0, 150.0, 60.0, 140.0, 70.0, 130.0, 80.0, 120.0, 90.0, 110.0, 100.0, 100.0]
    base = write_run(tmp_path / "base", spread)
    run = write_run(tmp_path / "run", [1.15 * x for x in spread])
    (v,) = gate(tmp_path, base, run, "ttft_p50>+10%")
    assert v.delta == pytest.approx(0.15) and v.outcome == "inconclusive"
    assert v.low < 0.10 < v.high


def test_a_throughput_fall_breaches_a_lower_bound_rule(tmp_path):
    base = write_run(tmp_path / "base", BASE, tokens=10)
    half = write_run(tmp_path / "half", BASE, tokens=5)
    rise = write_run(tmp_path / "rise", BASE, tokens=12)
    (fall,) = gate(tmp_path, base, half, "tokens_per_s<-5%")
    assert fall.outcome == "breach" and fall.delta == pytest.approx(-0.5) and fall.high < -0.05
    (up,) = gate(tmp_path, base, rise, "tokens_per_s<-5%")
    assert up.outcome == "pass" and up.delta == pytest.approx(0.2)


def test_an_absolute_error_rate_rule(tmp_path):
    base = write_run(tmp_path / "base", BASE)
    failing = write_run(tmp_path / "failing", BASE, failures=40)  # 40 of 240: +16.7 points
    (v,) = gate(tmp_path, base, failing, "error_rate>+0.01")
    assert v.outcome == "breach" and v.delta == pytest.approx(40 / 240) and v.low > 0.01


def test_the_same_seed_gives_the_same_interval(tmp_path):
    base = write_run(tmp_path / "base", BASE)
    run = write_run(tmp_path / "run", [1.1 * x for x in BASE])
    first, again = gate(tmp_path, base, run, "ttft_mean>+5%"), gate(tmp_path, base, run, "ttft_mean>+5%")
    assert (first[0].low, first[0].high) == (again[0].low, again[0].high)
    other = run_gate(str(base), str(run), parse_rules("ttft_mean>+5%"), seed=1, resamples=500)
    assert (other[0].low, other[0].high) != (first[0].low, first[0].high)


def test_compare_exits_1_on_a_breach_and_prints_every_figure(tmp_path, capsys):
    base = write_run(tmp_path / "base", BASE)
    slow = write_run(tmp_path / "slow", [1.3 * x for x in BASE])
    out = tmp_path / "gate"
    code = compare_main([str(slow), "--baseline", str(base), "--fail-on", "ttft_p95>+10%,tokens_per_s<-5%",
                         "--out", str(out), "--resamples", "300"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 1
    assert lines[0].split() == ["rule", "level", "baseline", "run", "delta", "95%", "CI", "verdict"]
    ttft = lines[1].split()
    assert ttft[:5] == ["ttft_p95>+10%", "c=4", "118", "153.5", "+30.0%"] and ttft[-1] == "BREACH"
    assert lines[-1].startswith("gate: FAILED: 1 breach(es), 0 inconclusive")
    saved = json.loads((out / "gate.json").read_text())
    assert saved["breaches"] == 1 and saved["checks"][0]["delta"] == pytest.approx(0.3)
    assert compare_main([str(base), "--baseline", str(base), "--fail-on", "ttft_p95>+10%", "--out", str(out),
                         "--resamples", "300"]) == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--baseline", "{base}"], "the regression gate needs both --baseline DIR and --fail-on RULES"),
        (["{base}", "--baseline", "{base}", "--fail-on", "ttft_p95>+10%"], "with --baseline give one run to judge, not 2"),
        (["--baseline", "{base}", "--fail-on", "ttft_p95>10%"], "--fail-on 'ttft_p95>10%': expected METRIC>+N%"),
        (["--baseline", "{other}", "--fail-on", "ttft_p95>+10%"], "no load level in both runs: baseline has c=8, "
                                                                  "the run has c=4"),
        (["--baseline", "{bare}", "--fail-on", "ttft_p95>+10%"], "requests.jsonl: missing; the gate decides from "
                                                                 "the per-request records"),
    ],
)
def test_bad_gate_input_exits_2_with_one_line(tmp_path, capsys, argv, message):
    dirs = {"base": write_run(tmp_path / "base", BASE), "other": write_run(tmp_path / "other", BASE, concurrency=8)}
    dirs["bare"] = write_run(tmp_path / "bare", BASE)
    (dirs["bare"] / "requests.jsonl").unlink()
    args = [str(dirs["base"])] + [a.format(**{k: str(v) for k, v in dirs.items()}) for a in argv]
    assert compare_main(args + ["--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in err


def test_the_gate_on_real_runs_against_the_mock(tmp_path, mock_server):
    """Two real bench runs (in-process, 60 requests at c=4): 10 ms vs 40 ms TTFT breaches; the same passes."""
    from bench.cli import main

    def bench(ttft_ms, out):
        server = mock_server(ttft_ms=ttft_ms, itl_ms=1, output_tokens=4)
        assert main([server.url, "--model", "m", "--concurrency", "4", "--requests", "60", "--workers", "0",
                     "--no-progress", "--no-charts", "--no-server-metrics", "--out", str(out)]) == 0
        return out

    fast, slow = bench(10, tmp_path / "fast"), bench(40, tmp_path / "slow")
    (v,) = run_gate(str(fast), str(slow), parse_rules("ttft_p50>+50%"), resamples=300)
    assert v.outcome == "breach" and v.delta > 1.0  # 4x the scripted TTFT, whatever the machine adds
    assert np.isfinite(v.low) and v.low > 0.5
