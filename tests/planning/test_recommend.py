"""`bench recommend` on scripted bench results: SLO verdicts, the autoscaling target, config lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from planning import recommend

ROOT = Path(__file__).resolve().parents[2]
MODEL = "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4"


def latency(p50: float, p95: float, p99: float | None = None) -> dict:
    p99 = p99 if p99 is not None else p95 * 1.2
    return {"mean": p50 * 1.05, "p50": p50, "p90": p95 * 0.95, "p95": p95, "p99": p99, "max": p99 * 1.3,
            "min": p50 / 2, "n": 100}  # fmt: skip


def level(concurrency, tok_s, ttft_p95, tpot_p95, e2e_p95, *, requests=600, failed=0, rate=None, prompt=128, out=64):
    succeeded = requests - failed
    duration = succeeded * out / tok_s
    return {
        "concurrency": concurrency,
        "rate": rate,
        "requests": requests,
        "succeeded": succeeded,
        "failed": failed,
        "errors": {"http_503": failed} if failed else {},
        "duration_s": duration,
        "request_throughput_rps": succeeded / duration,
        "output_tokens": succeeded * out,
        "prompt_tokens": succeeded * prompt,
        "output_throughput_tok_s": tok_s,
        "token_count_source": "usage",
        "ttft_ms": latency(ttft_p95 * 0.6, ttft_p95),
        "itl_ms": latency(tpot_p95 * 0.8, tpot_p95 * 1.5),
        "tpot_ms": latency(tpot_p95 * 0.9, tpot_p95),
        "e2e_ms": latency(e2e_p95 * 0.7, e2e_p95, e2e_p95 * 1.6),
        "goodput_rps": 1.0,
        "slo_attainment": 0.95,
        "cost_per_1k_tokens_usd": 1.515 / (tok_s * 3600) * 1000,
        "client_lag_ms": latency(0.5, 1.0),
    }


# A g5.2xlarge-like sweep (the seed's C=6/12/24/32 levels): the knee is between 24 and 32.
SWEEP = [
    level(6, 420.0, 180, 12, 950),
    level(12, 700.0, 260, 15, 1300),
    level(24, 1010.0, 700, 21, 1900),
    level(32, 1150.0, 2600, 26, 4400, failed=3),
]


def write(tmp_path: Path, levels=SWEEP, **config) -> Path:
    summary = {
        "target": {"url": "https://abc123.execute-api.us-east-1.amazonaws.com/prod/v1", "model": MODEL},
        "config": {
            "stack": "aws",
            "instance_count": 1,
            "price_source": "catalog ml.g5.2xlarge",
            "prompt_tokens": "128",
            "max_tokens": "64",
            "slo": {"ttft_ms": None, "tpot_ms": None, "e2e_ms": None},
            **config,
        },
        "status": "complete",
        "levels": levels,
    }
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    return tmp_path


def test_highest_load_meeting_the_slo_becomes_the_target(tmp_path):
    rec = recommend.recommend(write(tmp_path), recommend.SloTargets(e2e_ms=2000))
    assert [lv.met for lv in rec.levels] == [True, True, True, False]
    assert rec.chosen.label == "c=24"
    assert rec.tokens_per_minute == 48000  # 1,010 x 60 x 0.8 = 48,480, rounded down to 2 significant figures
    assert rec.concurrent_requests == int(24 * 0.8) == 19
    assert rec.config_lines() == [
        "pulumi config set llm-inference:targetTokensPerMinutePerInstance 48000 -s aws",
        "pulumi config set llm-inference:targetConcurrentRequestsPerInstance 19 -s aws",
    ]
    assert rec.levels[3].misses == ["E2E p95 4,400 > 2000 ms"]


def test_percentile_headroom_and_every_slo_count(tmp_path):
    results = write(tmp_path)
    # At p50, c=32 meets the E2E limit (3,080 <= 3,500 ms) but misses the TTFT one (1,560 > 1,000 ms).
    rec = recommend.recommend(results, recommend.SloTargets(ttft_ms=1000, e2e_ms=3500, percentile="p50"), headroom=0.1)
    assert rec.chosen.label == "c=24" and rec.levels[3].misses == ["TTFT p50 1,560 > 1000 ms"]
    assert rec.tokens_per_minute == 54000  # 54,540
    tight = recommend.recommend(results, recommend.SloTargets(tpot_ms=16))
    assert tight.chosen.label == "c=12"


def test_errors_count_against_the_slo(tmp_path):
    levels = [level(6, 420.0, 180, 12, 950), level(12, 700.0, 260, 15, 1300, requests=400, failed=20)]
    rec = recommend.recommend(write(tmp_path, levels), recommend.SloTargets(e2e_ms=2000))
    assert rec.levels[1].misses == ["errors 5.0% > 1.0%"]
    assert rec.chosen.label == "c=6"
    lenient = recommend.recommend(tmp_path, recommend.SloTargets(e2e_ms=2000, max_error_rate=0.1))
    assert lenient.chosen.label == "c=12"


def test_open_loop_levels_use_littles_law_for_concurrency(tmp_path):
    levels = [level(64, 600.0, 200, 14, 1200, rate=9.0), level(64, 900.0, 400, 18, 1800, rate=14.0)]
    rec = recommend.recommend(write(tmp_path, levels), recommend.SloTargets(e2e_ms=2000))
    chosen = rec.chosen
    assert chosen.label == "rate=14/s"
    rps, mean_e2e_s = levels[1]["request_throughput_rps"], levels[1]["e2e_ms"]["mean"] / 1000
    assert chosen.concurrency == pytest.approx(rps * mean_e2e_s)
    assert rec.concurrent_requests == int(rps * mean_e2e_s * 0.8)


def test_several_instances_divide_into_per_instance_figures(tmp_path):
    rec = recommend.recommend(write(tmp_path, instance_count=2), recommend.SloTargets(e2e_ms=2000))
    assert rec.chosen.tokens_per_s == pytest.approx(505.0)
    assert rec.tokens_per_minute == 24000  # 24,240
    assert rec.concurrent_requests == int(12 * 0.8)
    assert any("divide the endpoint's by 2 instances" in note for note in rec.notes)


def test_heaviest_level_meeting_the_slo_says_capacity_may_be_higher(tmp_path):
    rec = recommend.recommend(write(tmp_path), recommend.SloTargets(e2e_ms=10_000, max_error_rate=0.05))
    assert rec.chosen.label == "c=32"
    assert any("capacity may be higher" in note for note in rec.notes)


def test_prediction_next_to_measurement(tmp_path):
    rec = recommend.recommend(write(tmp_path), recommend.SloTargets(e2e_ms=2000))
    assert rec.instance == "ml.g5.2xlarge"  # from the run's catalog price
    for lv in rec.levels:
        p = lv.predicted
        assert p is not None and p.instance == "ml.g5.2xlarge" and p.problem is None
        assert (p.prompt_tokens, p.output_tokens, p.concurrency) == (128, 64, int(lv.concurrency))
        assert lv.to_dict()["measured_over_predicted_throughput"] == pytest.approx(
            lv.tokens_per_s / p.output_tokens_per_s, rel=1e-3
        )
    unknown = recommend.recommend(write(tmp_path), recommend.SloTargets(e2e_ms=2000), model="my-org/custom")
    assert all(lv.predicted is None for lv in unknown.levels)
    assert "cannot size model 'my-org/custom'" in unknown.plan_note


def test_slo_recorded_by_the_run_is_used_when_none_is_given(tmp_path):
    results = write(tmp_path, slo={"ttft_ms": None, "tpot_ms": None, "e2e_ms": 2000})
    rec = recommend.recommend(results, recommend.SloTargets())
    assert rec.slo.e2e_ms == 2000 and rec.chosen.label == "c=24"


def test_stack_and_cloud_resolution(tmp_path):
    results = write(tmp_path, stack=None)
    rec = recommend.recommend(results, recommend.SloTargets(e2e_ms=2000))
    assert rec.cloud == "aws" and rec.stack is None and rec.config_lines() == []  # cloud from the URL, no stack
    assert any("pass --stack NAME" in note for note in rec.notes)
    prod = recommend.recommend(results, recommend.SloTargets(e2e_ms=2000), stack="prod-us", cloud="aws",
                               stack_url="https://abc123.execute-api.us-east-1.amazonaws.com/prod/v1/")
    assert prod.config_lines()[0].endswith(" -s prod-us")


# --------------------------------------------------------------------- the run measured the stack's url

AWS_URL = "https://abc123.execute-api.us-east-1.amazonaws.com/prod/v1"


def with_target(tmp_path, url, **config):
    results = write(tmp_path, **config)
    summary = json.loads((results / "summary.json").read_text())
    summary["target"]["url"] = url
    (results / "summary.json").write_text(json.dumps(summary))
    return results


def test_a_local_run_is_refused_as_a_stacks_capacity(tmp_path):
    results = with_target(tmp_path, "http://127.0.0.1:8000/v1", stack=None)
    with pytest.raises(recommend.RecommendError) as err:
        recommend.recommend(results, recommend.SloTargets(e2e_ms=2000), stack="aws", stack_url=AWS_URL)
    assert str(err.value).startswith(f"the run measured http://127.0.0.1:8000/v1 (a local endpoint), not stack aws's url "
                                     f"{AWS_URL}: its capacity is not that stack's; bench the stack itself "
                                     "(`python -m bench --stack aws`)")
    # Even when the stack's url cannot be read, a local target is not a cloud stack's.
    with pytest.raises(recommend.RecommendError, match="a local endpoint"):
        recommend.recommend(results, recommend.SloTargets(e2e_ms=2000), stack="aws", read_stack_url=lambda s: None)


def test_another_endpoint_is_refused_and_any_target_makes_it_a_loud_note(tmp_path):
    results = with_target(tmp_path, "https://other.execute-api.eu-west-1.amazonaws.com/prod/v1")
    asked = []
    with pytest.raises(recommend.RecommendError, match=r"\(another endpoint\), not stack aws.s url"):
        recommend.recommend(results, recommend.SloTargets(e2e_ms=2000),
                            read_stack_url=lambda stack: asked.append(stack) or AWS_URL)
    assert asked == ["aws"]  # the run's own --stack, looked up
    rec = recommend.recommend(results, recommend.SloTargets(e2e_ms=2000), stack_url=AWS_URL, any_target=True)
    assert rec.notes[0].startswith("WARNING, --any-target: the run measured https://other.")
    assert rec.config_lines()  # the user asked for it


def test_the_stacks_own_url_passes_and_an_unreadable_one_trusts_the_runs_stack(tmp_path):
    results = with_target(tmp_path, AWS_URL + "/chat/completions")
    rec = recommend.recommend(results, recommend.SloTargets(e2e_ms=2000), stack_url=AWS_URL + "/")
    assert not any("measured" in note for note in rec.notes)
    rec = recommend.recommend(results, recommend.SloTargets(e2e_ms=2000), read_stack_url=lambda s: None)
    assert rec.notes[0] == f"the stack's url could not be read; trusting the run's --stack aws for its target {AWS_URL}"


def test_cli_refuses_a_mismatched_target_with_exit_2(tmp_path, capsys):
    results = with_target(tmp_path, "http://localhost:8000/v1")
    assert recommend.main([str(results), "--slo-e2e-ms", "2000", "--stack-url", AWS_URL]) == 2
    assert "(a local endpoint), not stack aws's url" in capsys.readouterr().err
    assert recommend.main([str(results), "--slo-e2e-ms", "2000", "--stack-url", AWS_URL, "--any-target"]) == 0


def test_targets_are_rounded_down_to_two_significant_figures():
    assert [recommend.significant_floor(v) for v in (48480.9, 808.0, 99.9, 19.7, 0.4, 100.0, 1999.0)] == [
        48000, 800, 99, 19, 0, 100, 1900]


def test_gcp_gets_tokens_per_second_per_pod_and_azure_no_line(tmp_path):
    results = write(tmp_path, stack="gcp", price_source="catalog g2-standard-8")
    gcp = recommend.recommend(results, recommend.SloTargets(e2e_ms=2000))
    assert gcp.instance == "g2-standard-8" and gcp.tokens_per_second == 800  # 808
    assert gcp.config_lines() == ["pulumi config set llm-inference:gkeTargetTokensPerSecondPerPod 800 -s gcp"]
    azure = recommend.recommend(write(tmp_path, stack="azure", price_source=None), recommend.SloTargets(e2e_ms=2000))
    assert azure.instance == "Standard_NV36adms_A10_v5"  # the stack's default size
    assert azure.config_lines() == [] and azure.tokens_per_minute == 48000
    assert any("one VM without an autoscaler" in note for note in azure.notes)


def test_autoscaling_keys_exist_in_pulumi_yaml():
    declared = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    for cloud, keys in recommend.AUTOSCALING_KEYS.items():
        for key in keys:
            assert key in declared, f"{cloud}: {key} is not a config key of Pulumi.yaml"


def test_cli_prints_the_config_lines_and_predicted_vs_measured(tmp_path, capsys):
    assert recommend.main([str(write(tmp_path)), "--slo-e2e-ms", "2000"]) == 0
    out = capsys.readouterr().out
    assert "pulumi config set llm-inference:targetTokensPerMinutePerInstance 48000 -s aws" in out
    assert "pulumi config set llm-inference:targetConcurrentRequestsPerInstance 19 -s aws" in out
    assert "pred. tok/s" in out and "met, chosen" in out and "of the roofline" in out


def test_cli_json(tmp_path, capsys):
    assert recommend.main([str(write(tmp_path)), "--slo-ttft-ms", "800", "--headroom", "25%", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["chosen_level"] == 2 and out["headroom"] == 0.25
    assert out["target_tokens_per_minute_per_instance"] == 45000  # 45,450
    assert out["levels"][3]["met_slo"] is False and "predicted" in out["levels"][0]
    assert out["pulumi_config"][0].startswith("pulumi config set llm-inference:targetTokensPerMinutePerInstance")


def test_cli_no_level_meets_the_slo_exits_1(tmp_path, capsys):
    assert recommend.main([str(write(tmp_path)), "--slo-ttft-ms", "50"]) == 1
    out = capsys.readouterr().out
    assert "No level met the SLO" in out and "pulumi config set" not in out


@pytest.mark.parametrize(
    ("setup", "argv", "message"),
    [
        (None, ["--slo-e2e-ms", "2000"], "no such file; give a bench results directory"),
        ("{broken", ["--slo-e2e-ms", "2000"], "not readable JSON"),
        ('{"levels": []}', ["--slo-e2e-ms", "2000"], "the run measured no load level"),
        ('{"runs": 1}', ["--slo-e2e-ms", "2000"], "not a bench summary"),
        ("sweep", [], "no SLO: give at least one of --slo-ttft-ms"),
        ("sweep", ["--slo-e2e-ms", "-5"], "argument --slo-e2e-ms: must be a positive number, got -5"),
        ("sweep", ["--slo-e2e-ms", "2000", "--headroom", "1.5"], "argument --headroom: must be in [0, 1)"),
        ("sweep", ["--slo-e2e-ms", "2000", "--instance", "ml.g9.huge"], "unknown instance type 'ml.g9.huge'"),
        ("sweep", ["--slo-e2e-ms", "2000", "--instances", "0"], "argument --instances: must be a positive"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, setup, argv, message):
    if setup == "sweep":
        write(tmp_path)
    elif setup is not None:
        (tmp_path / "summary.json").write_text(setup)
    target = tmp_path if setup is not None else tmp_path / "missing"
    try:
        code = recommend.main([str(target), *argv])
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("python -m bench recommend: error: ")


def test_malformed_level_is_named(tmp_path, capsys):
    bad = dict(SWEEP[0], output_throughput_tok_s="fast")
    write(tmp_path, [bad])
    assert recommend.main([str(tmp_path), "--slo-e2e-ms", "2000"]) == 2
    assert "level 0: 'output_throughput_tok_s' must be a number >= 0, got 'fast'" in capsys.readouterr().err


def with_server(lv: dict, waiting_mean: float, generation_rate: float) -> dict:
    """A level as the bench writes it when it scraped vLLM's /metrics (bench.server_metrics)."""
    return {**lv, "server_metrics": {
        "vllm:num_requests_running": {"mean": lv["concurrency"] - waiting_mean, "max": lv["concurrency"], "last": 1.0},
        "vllm:num_requests_waiting": {"mean": waiting_mean, "max": waiting_mean * 2 + 1, "last": 0.0},
        "vllm:generation_tokens_total": {"rate_per_s": generation_rate, "increase": generation_rate * 30},
    }}


SCRAPED = [with_server(SWEEP[0], 0.0, 430.0), with_server(SWEEP[1], 0.4, 712.0),
           with_server(SWEEP[2], 6.3, 1030.0), with_server(SWEEP[3], 14.0, 1170.0)]


def test_gke_queue_target_from_the_servers_waiting_requests_at_the_chosen_level(tmp_path):
    results = write(tmp_path, levels=SCRAPED, stack="gcp", price_source="catalog g2-standard-8")
    rec = recommend.recommend(results, recommend.SloTargets(e2e_ms=2000))
    assert rec.chosen.label == "c=24" and rec.chosen.waiting == 6.3
    assert rec.waiting_requests == int(6.3 * 0.8) == 5  # the chosen level's mean queue, not the heaviest's
    assert rec.config_lines() == [
        "pulumi config set llm-inference:gkeTargetTokensPerSecondPerPod 800 -s gcp",
        "pulumi config set llm-inference:gkeTargetWaitingRequestsPerPod 5 -s gcp",
    ]
    out = rec.to_dict()
    assert out["target_waiting_requests_per_instance"] == 5
    assert out["levels"][2]["server_waiting_requests_mean"] == 6.3
    assert out["levels"][2]["server_generation_tokens_per_s"] == 1030.0


def test_a_short_queue_still_gives_a_target_of_one(tmp_path):
    # The HPA's 0 turns the metric off: a queue under one request at the operating point means "scale
    # out once requests wait", so the target is at least 1.
    results = write(tmp_path, levels=SCRAPED, stack="gcp", price_source="catalog g2-standard-8")
    rec = recommend.recommend(results, recommend.SloTargets(ttft_ms=300))
    assert rec.chosen.label == "c=12" and rec.waiting_requests == 1


def test_aws_lines_unchanged_and_no_queue_line_without_server_metrics(tmp_path, capsys):
    aws = recommend.recommend(write(tmp_path, levels=SCRAPED), recommend.SloTargets(e2e_ms=2000))
    assert [line.split()[3].split(":")[1] for line in aws.config_lines()] == [
        "targetTokensPerMinutePerInstance", "targetConcurrentRequestsPerInstance"]
    gcp = recommend.recommend(write(tmp_path, stack="gcp"), recommend.SloTargets(e2e_ms=2000))
    assert gcp.waiting_requests is None
    assert gcp.config_lines() == ["pulumi config set llm-inference:gkeTargetTokensPerSecondPerPod 800 -s gcp"]
    assert any("gkeTargetWaitingRequestsPerPod keeps the stack's value" in note for note in gcp.notes)
    assert recommend.main([str(write(tmp_path, levels=SCRAPED, stack="gcp")), "--slo-e2e-ms", "2000"]) == 0
    out = capsys.readouterr().out
    assert "pulumi config set llm-inference:gkeTargetWaitingRequestsPerPod 5 -s gcp" in out
    assert "Queue target: 5 waiting requests per pod" in out
