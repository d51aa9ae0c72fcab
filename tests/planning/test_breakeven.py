"""Self-host or buy tokens: the break-even arithmetic, the worked examples of docs/planner.md, the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bench.report import break_even_lines
from planning import breakeven, planner
from planning.breakeven import ApiPrice, BreakEvenError, Throughput, compare

DOCS = Path(__file__).resolve().parents[2] / "docs" / "planner.md"
# The worked example: 1,000 input + 500 output tokens/s at $1.80/h.
RUN = Throughput(1000.0, 500.0, "example")


def summary(price=1.8, instances=1) -> dict:
    return {
        "target": {"url": "http://x", "model": "m"},
        "config": {"price_per_hour_usd": price, "instance_count": instances},
        "levels": [
            {"concurrency": 8, "rate": None, "duration_s": 100.0, "prompt_tokens": 50000, "output_throughput_tok_s": 250.0},
            {"concurrency": 32, "rate": None, "duration_s": 100.0, "prompt_tokens": 100000, "output_throughput_tok_s": 500.0},
            # a level that failed outright counts nothing, and is no candidate
            {"concurrency": 64, "rate": None, "duration_s": 100.0, "prompt_tokens": 0, "output_throughput_tok_s": 0.0},
        ],
    }


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "RUN"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps(summary()))
    return run


def test_break_even_arithmetic():
    r = compare(1.8, RUN, 0.5, ApiPrice(0.50, 1.50))
    assert r.api_usd_per_hour_at_full_load == pytest.approx(4.5)  # 3600 x (1000 x 0.5 + 500 x 1.5) / 1e6
    assert r.break_even_utilization == pytest.approx(0.4)
    assert r.break_even_tokens_per_day == pytest.approx(0.4 * 86400 * 1500)
    assert r.cost_ratio == pytest.approx(0.8)
    assert (r.self_input_per_1m, r.self_output_per_1m) == (pytest.approx(0.4), pytest.approx(1.2))
    assert r.self_usd_per_1m_tokens == pytest.approx(1.8 / (1800 * 1500) * 1e6)
    assert r.self_usd_per_1m_output == pytest.approx(2.0)
    assert r.beats_api and r.reachable


def test_the_split_bills_the_same_as_the_hour():
    # Self-hosted in/out prices times the tokens served in an hour give back the hour's price.
    r = compare(2.3, Throughput(700.0, 300.0, "x"), 0.37, ApiPrice(0.2, 0.9))
    served = 0.37 * 3600
    bill = served * (700 * r.self_input_per_1m + 300 * r.self_output_per_1m) / 1e6
    assert bill == pytest.approx(2.3)


def test_exactly_at_break_even_self_hosting_does_not_beat_the_api():
    api = ApiPrice(0.50, 1.50)
    bill = compare(1.8, RUN, 1.0, api).api_usd_per_hour_at_full_load
    r = compare(bill * 0.5, RUN, 0.5, api)  # exactly the API's bill at 50%
    assert r.cost_ratio == 1.0 and r.reachable and r.beats_api is False


def test_an_api_cheaper_than_a_full_instance_is_never_beaten():
    r = compare(1.8, RUN, 1.0, ApiPrice(0.10, 0.30))
    assert r.break_even_utilization == pytest.approx(2.0)
    assert not r.reachable and not r.beats_api
    assert "never with one instance" in breakeven.lines(r)[-1]


def test_without_an_api_price_only_self_hosted_figures():
    r = compare(1.8, RUN, 1.0, None)
    assert r.cost_ratio is None and r.break_even_tokens_per_day is None and r.self_input_per_1m is None
    assert r.self_usd_per_1m_output == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("1", "give two prices"),
        ("a,b", "must be numbers"),
        ("-1,2", "input price must be a number >= 0"),
        ("0,0", "a free API always wins"),
        ("1,nan", "output price must be a number >= 0"),
    ],
)
def test_api_price_refusals(text, words):
    with pytest.raises(BreakEvenError, match=words):
        breakeven.parse_api_price(text)


def test_api_price_parses_dollars():
    assert breakeven.parse_api_price(" $0.15, 0.60") == ApiPrice(0.15, 0.60)


@pytest.mark.parametrize(("price", "utilization", "words"), [(0, 0.5, "price must be > 0"), (1.0, 1.5, "--utilization")])
def test_compare_refusals(price, utilization, words):
    with pytest.raises(BreakEvenError, match=words):
        compare(price, RUN, utilization, None)


def test_measured_throughput_takes_the_best_level(run_dir):
    throughput, price = breakeven.measured_throughput(run_dir)
    assert (throughput.input_tokens_per_s, throughput.output_tokens_per_s) == (1000.0, 500.0)
    assert throughput.source.endswith("level c=32")
    assert price == 1.8


def test_the_fleet_price_is_price_times_instances(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps(summary(price=1.5, instances=2)))
    assert breakeven.measured_throughput(tmp_path)[1] == 3.0


def test_a_run_without_tokens_or_summary_is_refused(tmp_path):
    with pytest.raises(BreakEvenError, match="no summary.json there"):
        breakeven.measured_throughput(tmp_path)
    empty = summary()
    empty["levels"] = empty["levels"][2:]
    (tmp_path / "summary.json").write_text(json.dumps(empty))
    with pytest.raises(BreakEvenError, match="no level of that run produced output tokens"):
        breakeven.measured_throughput(tmp_path)


def _docs_examples() -> list[tuple[list[str], str]]:
    blocks = re.findall(r"```\n\$ python -m bench plan (.*?)\n(.*?)```", DOCS.read_text(), re.S)
    assert len(blocks) == 2, "docs/planner.md lost its break-even worked examples"
    return [(args.split(), out) for args, out in blocks]


@pytest.mark.parametrize("example", range(2))
def test_docs_worked_examples_word_for_word(example, run_dir, capsys, monkeypatch):
    args, expected = _docs_examples()[example]
    monkeypatch.chdir(run_dir.parent)
    assert planner.main(args) == 0
    assert capsys.readouterr().out == expected


def test_from_a_run_without_price_needs_the_instance(run_dir, capsys):
    (run_dir / "summary.json").write_text(json.dumps(summary(price=None)))
    assert planner.main(["--from", str(run_dir)]) == 2
    assert "name the instance it ran on with --instance TYPE" in capsys.readouterr().err
    assert planner.main(["--from", str(run_dir), "--instance", "ml.g5.2xlarge", "--price", "ml.g5.2xlarge=1.8",
                         "--api-price", "0.5,1.5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)["break_even"]["ml.g5.2xlarge"]
    assert out["break_even_utilization"] == pytest.approx(0.4) and out["break_even_reachable"] is True


def test_the_roofline_plan_compares_each_priced_instance(capsys):
    assert planner.main(["--instance", "ml.g5.2xlarge", "--price", "ml.g5.2xlarge=1.8", "--api-price", "0.5,1.5",
                         "--concurrency", "1,8", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    estimates = plan["instances"][0]["estimates"]
    best = max(estimates, key=lambda e: e["output_tokens_per_s"])
    assert best["concurrency"] == 8
    result = plan["break_even"]["ml.g5.2xlarge"]
    tput = result["throughput"]
    assert tput["output_tokens_per_s"] == pytest.approx(best["output_tokens_per_s"], rel=1e-3)
    assert tput["input_tokens_per_s"] == pytest.approx(best["requests_per_s"] * best["prompt_tokens"], rel=1e-3)
    bill = 3600 * (tput["input_tokens_per_s"] * 0.5 + tput["output_tokens_per_s"] * 1.5) / 1e6
    assert result["break_even_utilization"] == pytest.approx(1.8 / bill)


def test_a_priced_reports_shows_self_hosted_cost():
    lines = break_even_lines(summary())
    assert lines[0] == "## Self-host or buy tokens"
    assert any("at 100% utilization: $0.333 per 1M tokens" in line for line in lines)
    assert any("at 50% utilization: $0.667 per 1M tokens" in line for line in lines)
    assert break_even_lines(summary(price=None)) == []


def test_the_private_network_price():
    # 1 NAT gateway ($0.045/h) + 3 interface endpoints x 2 AZs ($0.01 per AZ-hour); the S3 gateway is free.
    assert breakeven.private_network_hourly() == pytest.approx(0.105)
    assert breakeven.private_network_hourly(nat_gateways=0, interface_endpoints=4) == pytest.approx(0.08)


def test_sagemaker_vpc_adds_the_network_to_sagemaker_prices_only(capsys):
    args = ["--instance", "ml.g5.2xlarge,g2-standard-8", "--price", "ml.g5.2xlarge=1.8", "--price", "g2-standard-8=1.0",
            "--api-price", "0.5,1.5", "--json"]
    assert planner.main(args) == 0
    plain = json.loads(capsys.readouterr().out)["break_even"]
    assert planner.main([*args, "--sagemaker-vpc"]) == 0
    private = json.loads(capsys.readouterr().out)["break_even"]
    (name,) = [n for n in private if n.startswith("ml.g5.2xlarge")]
    assert name == "ml.g5.2xlarge + sagemakerVpc network ($0.105/h)"
    assert private[name]["price_per_hour"] == pytest.approx(1.905)
    assert private[name]["break_even_utilization"] == pytest.approx(
        plain["ml.g5.2xlarge"]["break_even_utilization"] * 1.905 / 1.8)
    assert private["g2-standard-8"]["price_per_hour"] == 1.0  # not a SageMaker type


# Edges the mutation run (python tests/mutants.py breakeven) showed untested.


def test_one_free_side_is_a_price():
    assert breakeven.parse_api_price("0,1.5") == ApiPrice(0.0, 1.5)


@pytest.mark.parametrize(("tin", "tout", "ok"), [(0.0, 0.5, True), (0.0, 0.0, False), (-1.0, 5.0, False)])
def test_throughput_needs_output_tokens(tin, tout, ok):
    if ok:
        assert Throughput(tin, tout, "x").tokens_per_s == tin + tout
    else:
        with pytest.raises(BreakEvenError, match=r"throughput \(x\) must have output tokens/s > 0"):
            Throughput(tin, tout, "x")


def test_zero_utilization_is_refused():
    with pytest.raises(BreakEvenError, match="--utilization must be in"):
        compare(1.0, RUN, 0, None)


def test_level_choice_and_labels(tmp_path):
    run = {"config": {"price_per_hour_usd": 2.0}, "levels": [
        # the fastest level, but no duration: not a candidate
        {"concurrency": 64, "rate": None, "duration_s": 0, "prompt_tokens": 1, "output_throughput_tok_s": 900.0},
        {"concurrency": 16, "rate": 2.5, "duration_s": 10.0, "output_throughput_tok_s": 0.5},
    ]}
    throughput, price = breakeven.measured_throughput_of(run, "run")
    assert throughput.source == "measured: run, level 2.5 req/s"
    assert (throughput.input_tokens_per_s, throughput.output_tokens_per_s) == (0.0, 0.5)  # no prompt count: 0
    assert price == 2.0  # no instance_count: one instance
    with pytest.raises(BreakEvenError, match="run is not a bench summary"):
        breakeven.measured_throughput_of([], "run")


def test_for_plan_skips_unpriced_instances_and_names_its_source():
    from planning import catalog

    spec = catalog.require_model(planner.DEFAULT_MODEL_ID)
    plan = planner.build_plan(spec, [catalog.instance("g2-standard-8"), catalog.instance("ml.g5.2xlarge")],
                              planner.Engine(), [planner.Workload(concurrency=1), planner.Workload(concurrency=8)],
                              price_overrides={"ml.g5.2xlarge": 1.8})
    plan.prices["g2-standard-8"] = None  # unpriced: left out, the next one still compared
    result = breakeven.for_plan(plan, None, 1.0)
    assert list(result) == ["ml.g5.2xlarge"]
    workload = planner.Workload(concurrency=8)
    assert result["ml.g5.2xlarge"].throughput.source == (
        f"roofline, concurrency 8, {workload.prompt_tokens} prompt + {workload.output_tokens} output tokens")
    assert list(breakeven.for_plan(plan, None, 1.0, sagemaker_vpc=False)) == ["ml.g5.2xlarge"]


# The second review's survivors: the JSON a user's script reads, the run given as its summary.json, the messages
# that name the --from directory, and the price of `--from RUN --instance TYPE` in a region of a prices file.


def test_the_json_a_script_reads_from_plan_from(run_dir, capsys):
    # $1.80/h at 50 %: 1,800 s x 1,500 tokens/s = 2.7M tokens an hour; the API bills 3600 x (1000 x 0.5 + 500 x 1.5)
    # / 1e6 = $4.50 an hour of full load, so 1.8 / (0.5 x 4.5) = 0.8x the API, break-even at 1.8 / 4.5 = 40 %.
    assert planner.main(["--from", str(run_dir), "--api-price", "0.5,1.5", "--utilization", "0.5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)["break_even"]["measured deployment"]
    assert out == {
        "price_per_hour": 1.8, "utilization": 0.5,
        "throughput": {"input_tokens_per_s": 1000.0, "output_tokens_per_s": 500.0,
                       "source": f"measured: {run_dir / 'summary.json'}, level c=32"},
        "api": {"input_per_1m": 0.5, "output_per_1m": 1.5},
        "self_usd_per_1m_tokens": pytest.approx(1.8 / 2.7), "self_usd_per_1m_output": pytest.approx(2.0),
        "self_input_per_1m": pytest.approx(0.4), "self_output_per_1m": pytest.approx(1.2),
        "cost_ratio": pytest.approx(0.8), "api_usd_per_hour_at_full_load": pytest.approx(4.5),
        "break_even_utilization": pytest.approx(0.4), "break_even_tokens_per_day": pytest.approx(0.4 * 86400 * 1500),
        "beats_api": True, "break_even_reachable": True,
    }


def test_the_json_says_when_the_api_wins_and_when_there_is_no_api(run_dir, capsys):
    # API at $0.10/$0.30: $0.90 an hour of full load against $1.80: 2x the API at 100 %, break-even never.
    assert planner.main(["--from", str(run_dir), "--api-price", "0.1,0.3", "--utilization", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)["break_even"]["measured deployment"]
    assert (out["beats_api"], out["break_even_reachable"], out["cost_ratio"]) == (False, False, pytest.approx(2.0))
    assert planner.main(["--from", str(run_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)["break_even"]["measured deployment"]
    assert {k: out[k] for k in ("api", "cost_ratio", "beats_api", "break_even_reachable")} == {
        "api": None, "cost_ratio": None, "beats_api": None, "break_even_reachable": None}
    assert out["self_usd_per_1m_output"] == pytest.approx(1.8 / (0.5 * 3600 * 500) * 1e6)  # 50 % by default: $2.00


def test_without_an_api_price_the_text_says_how_to_give_one(run_dir, capsys):
    assert planner.main(["--from", str(run_dir)]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert "hosted API: no price given" in last and "--api-price IN,OUT" in last


def test_the_run_can_be_given_as_its_summary_json(run_dir):
    throughput, price = breakeven.measured_throughput(run_dir / "summary.json")
    assert (throughput.input_tokens_per_s, throughput.output_tokens_per_s, price) == (1000.0, 500.0, 1.8)


def test_refusals_of_a_run_name_the_from_directory(tmp_path):
    (tmp_path / "summary.json").write_text("{not json")
    with pytest.raises(BreakEvenError) as exc:
        breakeven.measured_throughput(tmp_path)
    assert str(exc.value).startswith(f"--from {tmp_path}: {tmp_path / 'summary.json'} is not a bench summary (")
    empty = summary()
    empty["levels"] = empty["levels"][2:]
    (tmp_path / "summary.json").write_text(json.dumps(empty))
    with pytest.raises(BreakEvenError) as exc:
        breakeven.measured_throughput(tmp_path)
    assert str(exc.value).startswith(f"--from {tmp_path}: no level of that run produced output tokens")


def test_a_level_shorter_than_a_second_still_counts():
    run = {"levels": [{"concurrency": 4, "rate": None, "duration_s": 0.5, "prompt_tokens": 100,
                       "output_throughput_tok_s": 80.0}]}
    throughput, price = breakeven.measured_throughput_of(run, "run")
    assert (throughput.input_tokens_per_s, throughput.output_tokens_per_s, price) == (200.0, 80.0, None)


def test_from_a_run_with_instance_takes_the_region_price_of_the_prices_file(run_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LLMINFER_PRICES", raising=False)
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"ml.g5.2xlarge": {"us-east-1": 1.0, "eu-west-1": 2.25}}))
    (run_dir / "summary.json").write_text(json.dumps(summary(price=None)))
    assert planner.main(["--from", str(run_dir), "--instance", "ml.g5.2xlarge", "--region", "eu-west-1",
                         "--prices-file", str(prices), "--api-price", "0.5,1.5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)["break_even"]["ml.g5.2xlarge"]
    assert out["price_per_hour"] == 2.25 and out["break_even_utilization"] == pytest.approx(0.5)  # 2.25 / 4.5


@pytest.mark.parametrize("region", ["aws=eu-west-1", "eu-west-1"])
def test_from_a_run_with_instance_takes_a_cloud_qualified_region_too(region, run_dir, tmp_path, capsys, monkeypatch):
    # `--region aws=eu-west-1` was ignored here (only `*` was passed on): the price came from us-east-1
    monkeypatch.delenv("LLMINFER_PRICES", raising=False)
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"ml.g5.2xlarge": {"us-east-1": 1.0, "eu-west-1": 2.25}}))
    (run_dir / "summary.json").write_text(json.dumps(summary(price=None)))
    assert planner.main(["--from", str(run_dir), "--instance", "ml.g5.2xlarge", "--region", "gcp=europe-west4",
                         "--region", region, "--prices-file", str(prices), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["break_even"]["ml.g5.2xlarge"]["price_per_hour"] == 2.25


def _estimate(instance, output_tokens_per_s, problem=None, concurrency=8):
    from types import SimpleNamespace

    return SimpleNamespace(instance=instance, problem=problem, output_tokens_per_s=output_tokens_per_s,
                           requests_per_s=output_tokens_per_s / 100, prompt_tokens=400, output_tokens=100,
                           concurrency=concurrency)


def test_for_plan_takes_each_instance_s_own_best_fitting_estimate():
    from types import SimpleNamespace

    def memory(name):
        return SimpleNamespace(instance=SimpleNamespace(name=name))

    plan = SimpleNamespace(
        memory=[memory("slow"), memory("fast"), memory("idle")],
        prices={"slow": 1.0, "fast": 4.0, "idle": 1.0},
        estimates=[
            _estimate("slow", 0.5, concurrency=1),  # under 1 token/s, still a throughput
            _estimate("fast", 900.0, concurrency=32),  # another instance's: not the slow one's
            _estimate("fast", 300.0, concurrency=8),
            _estimate("idle", 0.0),  # no output: nothing to compare, the instance is left out
        ],
    )
    result = breakeven.for_plan(plan, None, 1.0)
    assert list(result) == ["slow", "fast"]
    slow, fast = result["slow"].throughput, result["fast"].throughput
    # 0.5 tok/s = 0.005 req/s of 400 prompt tokens: 2 input tokens/s
    assert (slow.output_tokens_per_s, slow.input_tokens_per_s) == (0.5, 2.0)
    assert slow.source == "roofline, concurrency 1, 400 prompt + 100 output tokens"
    assert (fast.output_tokens_per_s, fast.input_tokens_per_s) == (900.0, 3600.0)
