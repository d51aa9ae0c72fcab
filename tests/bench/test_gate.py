"""The regression gate (bench.gate via `bench compare --baseline DIR RUN --fail-on ...`).

Runs are written here as results directories with literal per-request records, so every point estimate
is known by hand; the verdicts come from the seeded bootstrap over those records."""

import json

import numpy as np
import pytest

from bench.cli import main as bench_main
from bench.gate import GateError, Rule, as_json, load_levels, parse_rules, point, render, run_gate


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


# Survivors of the mutation run (python tests/mutants.py gate): the limits themselves, the interval's tails,
# absolute throughput rules, what counts as request time, the records file's edges, and what a CI log and
# a script reading gate.json see.


def write_records(directory, records, levels=((4, None),)):
    """A results directory with these records (as given) and one summary level per (concurrency, rate)."""
    directory.mkdir(parents=True)
    (directory / "requests.jsonl").write_text("".join(r if isinstance(r, str) else json.dumps(r) + "\n"
                                                      for r in records))
    (directory / "summary.json").write_text(json.dumps({"target": {"url": "http://h/v1", "model": "m"}, "config": {},
                                                        "levels": [{"concurrency": c, "rate": r} for c, r in levels]}))
    return directory


def rec(start, end, ttft=100.0, tokens=10, ok=True, level=0):
    out = {"level": level, "warmup": False, "ok": ok, "start_s": start, "end_s": end}
    if ok:
        out.update(ttft_ms=ttft, e2e_ms=ttft + 100, tpot_ms=10.0, output_tokens=tokens)
    return out


@pytest.mark.parametrize(
    ("rule", "run_ttft", "outcome"),
    [
        # Every request alike: every resample's change is the point's, so the interval is that one value.
        ("ttft_p95>+10%", 110.0, "pass"),  # +10 % is not "more than 10 %"
        ("ttft_p95>+10%", 111.0, "breach"),
        ("ttft_mean<-10%", 90.0, "pass"),  # -10 % is not a fall of more than 10 %
        ("ttft_mean<-10%", 89.0, "breach"),
        ("ttft_mean<-10%", 111.0, "pass"),  # a rise never breaches a fall rule
    ],
)
def test_a_change_of_exactly_the_threshold_passes(tmp_path, rule, run_ttft, outcome):
    base = write_run(tmp_path / "base", [100.0] * 20)
    run = write_run(tmp_path / "run", [run_ttft] * 20)
    (v,) = gate(tmp_path, base, run, rule)
    assert v.low == v.delta == v.high and v.outcome == outcome


def test_a_fall_breaches_only_when_the_whole_interval_is_past_it(tmp_path):
    # The 12 noisy requests again, 15 % faster: the interval's low end is past -10 %, its high end is not.
    spread = [50.0, 150.0, 60.0, 140.0, 70.0, 130.0, 80.0, 120.0, 90.0, 110.0, 100.0, 100.0]
    base = write_run(tmp_path / "base", spread)
    run = write_run(tmp_path / "run", [0.85 * x for x in spread])
    (v,) = gate(tmp_path, base, run, "ttft_mean<-10%")
    assert v.delta == pytest.approx(-0.15) and v.low < -0.10 < v.high and v.outcome == "inconclusive"


def test_the_interval_of_three_requests_worked_by_hand(tmp_path):
    # Baseline 100 ms x 3; the run 1000, 100, 100 ms: a resample's mean is 100, 400, 700 or 1000 ms with
    # probability 8/27, 12/27, 6/27, 1/27. 8/27 = 30 % > 2.5 %: the low end is +0 %; 1/27 = 3.7 % > 2.5 %: the
    # high end is +900 % (the first request is drawn too). Past +10 % at the point (+300 %), not wholly.
    base = write_run(tmp_path / "base", [100.0] * 3)
    run = write_run(tmp_path / "run", [1000.0, 100.0, 100.0])
    (v,) = gate(tmp_path, base, run, "ttft_mean>+10%")
    assert (v.delta, v.low, v.high, v.outcome) == (3.0, 0.0, 9.0, "inconclusive")


def test_the_confidence_sets_the_interval_s_tails(tmp_path):
    # A clean baseline against a run where 10 of 20 requests failed: a resample's error rate is X / 20 with X
    # binomial(20, 1/2). P(X <= 5) = 2.07 % < 2.5 % <= P(X <= 6) = 5.77 %, so the 95 % interval starts at
    # 6/20; P(X <= 13) = 94.2 % < 97.5 % <= P(X <= 14) = 97.9 %: it ends at 14/20. An 80 % one: 7/20
    # (P(X <= 6) < 10 % <= P(X <= 7) = 13.2 %) to 13/20 (P(X <= 12) = 86.8 % < 90 % <= P(X <= 13)).
    base = write_run(tmp_path / "base", [100.0] * 20)
    run = write_run(tmp_path / "run", [100.0] * 10, failures=10)
    (v,) = run_gate(str(base), str(run), parse_rules("error_rate>+0.27"), resamples=10000)
    assert v.delta == 0.5 and (v.low, v.high) == (pytest.approx(0.30), pytest.approx(0.70)) and v.outcome == "breach"
    (v,) = run_gate(str(base), str(run), parse_rules("error_rate>+0.27"), resamples=10000, confidence=0.80)
    assert (v.low, v.high) == (pytest.approx(0.35), pytest.approx(0.65))


def test_an_absolute_throughput_rule_is_in_tokens_per_second(tmp_path):
    # 200 requests over 9.95 + 0.2 s (the last starts at 9.95 s and takes 200 ms): 2000 tokens = 197.0 tok/s;
    # 5 tokens each: 98.5 tok/s, a fall of 98.5 tok/s, past -20 tok/s wholly.
    base = write_run(tmp_path / "base", [100.0] * 200, tokens=10)
    half = write_run(tmp_path / "half", [100.0] * 200, tokens=5)
    (v,) = gate(tmp_path, base, half, "tokens_per_s<-20")
    assert (v.baseline, v.run) == (pytest.approx(2000 / 10.15), pytest.approx(1000 / 10.15))
    assert v.delta == pytest.approx(-1000 / 10.15) and v.outcome == "breach"
    assert v.low <= v.delta <= v.high < -20  # the interval is around the change, in tokens/s
    (v,) = gate(tmp_path, half, base, "tokens_per_s<-20")  # the other way round: a rise, in tokens/s
    assert v.delta == pytest.approx(1000 / 10.15) and v.low <= v.delta <= v.high and v.outcome == "pass"


def test_request_time_runs_from_the_first_start_to_the_last_end(tmp_path):
    # Starts at 10.0, 10.1, 10.2 s, each 0.1 s long (one has 0 tokens, one no count): the level lasts 0.3 s,
    # under a second of request time in all.
    records = [rec(10.0, 10.1, tokens=8), rec(10.1, 10.2, tokens=0), rec(10.2, 10.3, tokens=None)]
    level = load_levels(str(write_records(tmp_path / "run", records)))[(4, None)]
    assert level.in_flight == pytest.approx(1.0)  # 0.3 s of requests over 0.3 s
    assert point(level, "tokens_per_s") == pytest.approx(8 / 0.3)
    assert point(level, "req_per_s") == pytest.approx(3 / 0.3)


def test_the_bootstrap_draws_as_many_resamples_as_asked_in_chunks(tmp_path, monkeypatch):
    from bench import gate as gate_module

    level = load_levels(str(write_run(tmp_path / "run", BASE)))[(4, None)]
    whole = gate_module.bootstrap(level, "ttft_mean", np.random.default_rng(0), 302)
    monkeypatch.setattr(gate_module, "CHUNK_VALUES", 1000)  # 5 resamples of 200 requests a chunk
    chunked = gate_module.bootstrap(level, "ttft_mean", np.random.default_rng(0), 302)
    assert len(whole) == len(chunked) == 302  # the last chunk holds 2
    assert 90 < chunked.min() <= chunked.max() < 110  # means of 80..120 ms


def test_the_records_file_edges(tmp_path):
    records = [rec(0.0, 0.1, ttft=10.0), "\n", rec(0.1, 0.2, ttft=20.0),  # a blank line is skipped, not the end
               rec(0.0, 0.1, ttft=500.0, level=1),  # the second level
               rec(0.0, 0.1, ttft=900.0, level=2)]  # a level that never finished (no summary): left out
    levels = load_levels(str(write_records(tmp_path / "run", records, levels=((4, None), (2, 2.5)))))
    assert list(levels) == [(4, None), (2, 2.5)]
    assert point(levels[(4, None)], "ttft_mean") == pytest.approx(15.0)
    assert point(levels[(2, 2.5)], "ttft_mean") == pytest.approx(500.0)


@pytest.mark.parametrize(
    ("contents", "message"),
    [
        ([rec(0.0, 0.1), "\n", "{broken\n"], "requests.jsonl:3: not a JSON record ("),
        ([{**rec(0.0, 0.1), "warmup": True}], "requests.jsonl: no measured request of a finished level"),
    ],
)
def test_an_unreadable_records_file_is_refused_naming_the_line(tmp_path, contents, message):
    with pytest.raises(GateError) as exc:
        load_levels(str(write_records(tmp_path / "run", contents)))
    assert message in str(exc.value)


def test_a_missing_run_directory_is_named(tmp_path):
    with pytest.raises(GateError) as exc:
        load_levels(str(tmp_path / "nowhere"))
    assert str(exc.value).startswith(f"{tmp_path / 'nowhere'}: not a directory")


@pytest.mark.parametrize(
    ("base_records", "run_records", "rule", "message"),
    [
        # Every request of the run failed: no TTFT to compare, refused rather than passed.
        ([rec(0.0, 0.1)] * 5, [rec(0.0, 0.1, ok=False)] * 5, "ttft_p95>+10%",
         "ttft_p95>+10% at c=4: the run has no successful request to measure ttft_p95 on"),
        ([rec(0.0, 0.1, ok=False)] * 5, [rec(0.0, 0.1)] * 5, "e2e_p50>+10%",
         "e2e_p50>+10% at c=4: the baseline has no successful request to measure e2e_p50 on"),
        # A clean baseline: errors rising from none have no relative size (a ZeroDivisionError before).
        ([rec(0.0, 0.1)] * 5, [rec(0.0, 0.1), rec(0.0, 0.1, ok=False)], "error_rate>+10%",
         "error_rate>+10% at c=4: the baseline's error_rate is 0, so a change relative to it has no size; give the "
         "threshold in the metric's unit, e.g. error_rate>+0.01"),
        ([rec(0.0, 0.1, ok=False)] * 5, [rec(0.0, 0.1)] * 5, "tokens_per_s<-5%",
         "e.g. tokens_per_s<-0.01"),
    ],
)
def test_a_check_the_gate_cannot_decide_exits_2(tmp_path, capsys, base_records, run_records, rule, message):
    base = write_records(tmp_path / "base", base_records)
    run = write_records(tmp_path / "run", run_records)
    assert compare_main([str(run), "--baseline", str(base), "--fail-on", rule, "--out", str(tmp_path / "g")]) == 2
    assert message in capsys.readouterr().err


def _verdict(text, level, baseline, run, delta, low, high, outcome):
    from bench.gate import Verdict

    (rule,) = parse_rules(text)
    return Verdict(rule, level, baseline, run, delta, low, high, outcome)


VERDICTS = [
    _verdict("ttft_p95>+10%", (4, None), 118.0, 153.4, 0.3, 0.25, 0.352, "breach"),
    _verdict("tokens_per_s<-5%", (4, None), 197.0, 190.0, -0.0355, -0.07, 0.001, "inconclusive"),
    _verdict("error_rate>+0.01", (2, 2.5), 0.0, 0.004, 0.004, 0.0, 0.0125, "pass"),
]


def test_the_table_a_ci_log_shows():
    assert render(VERDICTS) == [
        "rule              level  baseline  run    delta   95% CI            verdict",
        "ttft_p95>+10%     c=4    118       153.4  +30.0%  [+25.0%, +35.2%]  BREACH",
        "tokens_per_s<-5%  c=4    197       190    -3.5%   [-7.0%, +0.1%]    INCONCLUSIVE",
        "error_rate>+0.01  2.5/s  0         0.004  +0.004  [+0, +0.0125]     PASS",
        "gate: FAILED: 1 breach(es), 1 inconclusive (past the threshold, but the 95% CI is not wholly past it), "
        "3 check(s)",
    ]
    assert render(VERDICTS[1:], 0.9)[-1] == ("gate: passed: 0 breach(es), 1 inconclusive (past the threshold, but "
                                             "the 90% CI is not wholly past it), 2 check(s)")


def test_gate_json_as_a_script_reads_it():
    assert as_json(VERDICTS) == {
        "checks": [
            {"rule": "ttft_p95>+10%", "level": "c=4", "baseline": 118.0, "run": 153.4, "delta": 0.3,
             "ci": [0.25, 0.352], "outcome": "breach"},
            {"rule": "tokens_per_s<-5%", "level": "c=4", "baseline": 197.0, "run": 190.0, "delta": -0.0355,
             "ci": [-0.07, 0.001], "outcome": "inconclusive"},
            {"rule": "error_rate>+0.01", "level": "2.5/s", "baseline": 0.0, "run": 0.004, "delta": 0.004,
             "ci": [0.0, 0.0125], "outcome": "pass"},
        ],
        "breaches": 1,
    }
    assert as_json(VERDICTS[1:])["breaches"] == 0
