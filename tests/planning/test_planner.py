"""The planner: memory fit, roofline arithmetic, cost, the stacks' fit check, and the CLI."""

from __future__ import annotations

import json
import math
import re

import pytest

from planning import catalog, planner
from planning.catalog import GB

AWQ_8B = "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4"
FP16_70B = "meta-llama/Llama-3.1-70B-Instruct"


def memory(model_id=AWQ_8B, instance="ml.g5.2xlarge", **engine):
    return planner.plan_memory(catalog.require_model(model_id), catalog.instance(instance), planner.Engine(**engine))


# ------------------------------------------------------------------------------------------ memory


def test_memory_budget_arithmetic():
    m = memory()
    visible = 23028 * 2**20
    assert m.budget_bytes == pytest.approx(visible * 0.9)
    assert m.weight_bytes == pytest.approx(catalog.require_model(AWQ_8B).weight_bytes)
    # 2048 batched tokens x (2 x 14336 + 4 x 4096) x 2 B + 64 seqs x 128256 vocab x 8 B
    assert m.activation_bytes == 2048 * (2 * 14336 + 4 * 4096) * 2 + 64 * 128256 * 8
    assert m.overhead_bytes == 1.0 * GB
    assert m.kv_budget_bytes == pytest.approx(m.budget_bytes - m.weight_bytes - m.activation_bytes - m.overhead_bytes)
    assert m.kv_bytes_per_token == 131072
    assert m.kv_capacity_tokens % planner.KV_BLOCK_TOKENS == 0
    assert m.kv_capacity_tokens * 131072 <= m.kv_budget_bytes < (m.kv_capacity_tokens + 16) * 131072
    assert m.fits and m.max_sequences_at_context == m.kv_capacity_tokens // 8192


@pytest.mark.parametrize("instance", sorted(catalog.STACK_INSTANCES.values()))
def test_the_default_model_fits_every_stack_instance(instance):
    m = memory(instance=instance)
    assert m.fits, m.problem
    assert 100_000 < m.kv_capacity_tokens < 120_000  # ~14.7 GB of 128 KiB tokens on a 24 GB card
    assert m.max_sequences_at_context >= 1


def test_fp8_kv_cache_doubles_the_tokens():
    assert memory(kv_cache_dtype="fp8").kv_capacity_tokens == pytest.approx(
        2 * memory().kv_capacity_tokens, abs=planner.KV_BLOCK_TOKENS
    )


def test_70b_fp16_does_not_fit_24_gb():
    m = memory(FP16_70B)
    assert not m.fits and m.problem_field == "model"
    assert m.problem == (
        "llama-3.1-70b fp16 needs 141.1 GB of weights; ml.g5.2xlarge has 1x A10G 24 GB "
        "(24.1 GB visible, 21.7 GB usable at 0.9)"
    )


def test_tensor_parallel_splits_weights_and_kv_heads():
    m = memory(FP16_70B, "ml.g5.48xlarge")
    assert m.tensor_parallel == 8
    assert m.weight_bytes == pytest.approx(catalog.require_model(FP16_70B).weight_bytes / 8)
    assert m.kv_bytes_per_token == 2 * 80 * 1 * 128 * 2  # 8 KV heads over 8 GPUs: one each
    assert m.fits


def test_heads_that_do_not_split_over_the_gpus_are_refused():
    # Qwen2.5-7B has 28 attention heads: 8-way tensor parallelism cannot split them.
    m = memory("Qwen/Qwen2.5-7B-Instruct", "g5.48xlarge")
    assert not m.fits and "28 attention heads" in m.problem


def test_context_longer_than_the_model_is_refused():
    m = memory("meta-llama/Llama-2-7b-chat-hf", "g2-standard-8", max_model_len=8192)
    assert m.problem_field == "max_model_len"
    assert m.problem == "llama-2-7b supports at most 4,096 tokens of context, max_model_len is 8,192"


def test_context_whose_kv_cache_does_not_fit_is_refused_with_the_largest_that_does():
    m = memory(max_model_len=131072)
    assert m.problem_field == "max_model_len"
    assert "the KV cache of one 131,072-token sequence needs 17.2 GB" in m.problem
    assert memory(max_model_len=m.largest_context).fits
    assert not memory(max_model_len=m.largest_context + planner.KV_BLOCK_TOKENS).fits


def test_engine_inputs_are_validated():
    for bad in (dict(max_model_len=0), dict(max_batch_size=-1), dict(gpu_memory_utilization=1.5),
                dict(overhead_gb=-1), dict(kv_cache_dtype="int4")):  # fmt: skip
        with pytest.raises(planner.PlanError):
            memory(**bad)


# ---------------------------------------------------------------------------------------- roofline


def test_single_sequence_decode_is_bandwidth_bound_weights_plus_kv_over_bandwidth():
    m = memory()
    e = planner.estimate(m, planner.Workload(prompt_tokens=512, output_tokens=256, concurrency=1))
    kv_read = (512 + 128) * 131072
    assert e.bound == "memory"
    assert e.step_ms == pytest.approx((m.weight_bytes + kv_read) / (600 * GB) * 1000)
    assert e.kv_read_gb == pytest.approx(kv_read / GB)
    assert e.tokens_per_s_per_sequence == pytest.approx(1000 / e.tpot_ms)
    # Prefill of 512 tokens is compute bound on the A10G's 70 TFLOPS: 2 x 6.98B x 512 + attention.
    model = catalog.model("llama-3.1-8b")
    flops = 2 * model.linear_params * 512 + 2 * model.vocab_size * model.hidden_size + 2 * 32 * 32 * 128 * 512**2
    assert e.ttft_ms == pytest.approx(flops / 70e12 * 1000)
    assert e.e2e_ms == pytest.approx(e.ttft_ms + 255 * e.tpot_ms)


def test_batching_raises_total_throughput_and_lowers_per_sequence_speed():
    m = memory()
    one, many = (planner.estimate(m, planner.Workload(512, 256, c)) for c in (1, 32))
    assert many.output_tokens_per_s > 10 * one.output_tokens_per_s
    assert many.tokens_per_s_per_sequence < one.tokens_per_s_per_sequence
    assert many.cost_per_1k_tokens_usd is None  # no price given


def test_concurrency_beyond_the_batch_queues():
    m = memory(max_batch_size=8)
    e = planner.estimate(m, planner.Workload(512, 256, 32))
    assert (e.batch, e.batch_limit) == (8, "max_batch_size")
    assert e.queue_ms == pytest.approx((32 - 8) * (e.e2e_ms - e.queue_ms) / 8)
    assert e.ttft_ms > e.queue_ms


def test_kv_cache_caps_the_batch():
    m = memory()
    e = planner.estimate(m, planner.Workload(4096, 4096, 64))
    assert e.batch_limit == "kv_cache" and e.batch == m.kv_capacity_tokens // 8192


def test_efficiency_scales_every_time_and_throughput():
    m = memory()
    full = planner.estimate(m, planner.Workload(512, 256, 16))
    half = planner.estimate(m, planner.Workload(512, 256, 16), efficiency=planner.Efficiency(0.5, 0.5))
    assert half.output_tokens_per_s == pytest.approx(full.output_tokens_per_s / 2)
    assert half.ttft_ms == pytest.approx(2 * full.ttft_ms)


def test_cost_arithmetic():
    # cost per 1k = $/h / (tok/s x 3600) x 1000
    assert planner.cost_per_1k_tokens(1.515, 900) == pytest.approx(1.515 / (900 * 3600) * 1000)
    assert planner.cost_per_1k_tokens(1.515, 900) == pytest.approx(0.000467593, rel=1e-6)
    e = planner.estimate(memory(), planner.Workload(512, 256, 8), price_per_hour=1.515)
    # Literal figures (8 x 256 tokens in 2,824.18 ms = 725.17 tok/s; 1.515 / (725.17 x 3600) x 1000),
    # not the estimate's own throughput fed back through the formula.
    assert e.e2e_ms == pytest.approx(2824.18, rel=1e-5)
    assert e.output_tokens_per_s == pytest.approx(725.166, rel=1e-5)
    assert e.cost_per_1k_tokens_usd == pytest.approx(0.000580327, rel=1e-5)
    assert e.cost_per_1m_tokens_usd == pytest.approx(0.580327, rel=1e-5)
    with pytest.raises(planner.PlanError):
        planner.cost_per_1k_tokens(1.5, 0)


def test_an_instance_that_cannot_load_the_model_has_no_estimate():
    e = planner.estimate(memory(FP16_70B), planner.Workload(512, 256, 1), price_per_hour=1.515)
    assert e.problem and e.cost_per_1k_tokens_usd is None
    assert e.to_dict()["output_tokens_per_s"] is None  # NaN becomes null in JSON


# --------------------------------------------------------------------------------------- fit check


def test_check_fits_refuses_70b_fp16_on_24_gb_with_the_numbers_and_a_fix():
    with pytest.raises(planner.ModelDoesNotFit) as err:
        planner.check_fits(FP16_70B, "ml.g5.2xlarge", 8192, 64, 0.9)
    assert err.value.field == "model"
    message = str(err.value)
    assert "llama-3.1-70b fp16 needs 141.1 GB of weights" in message
    assert "21.7 GB usable at 0.9" in message
    assert err.value.bigger is not None and err.value.bigger.name == "ml.g5.48xlarge"  # ml.* stays SageMaker
    assert isinstance(err.value, ValueError)


def test_check_fits_suggests_a_4_bit_checkpoint_when_that_fits():
    with pytest.raises(planner.ModelDoesNotFit) as err:
        planner.check_fits("meta-llama/Llama-2-13b-chat-hf", "g2-standard-8", 4096, 64, 0.9)
    assert err.value.four_bit is not None
    assert "serve a 4-bit AWQ checkpoint of it (7.2 GB of weights fits g2-standard-8)" in str(err.value)


def test_check_fits_passes_what_it_cannot_judge():
    assert planner.check_fits("my-org/custom-70b", "ml.g5.2xlarge", 8192, 64, 0.9) is None
    assert planner.check_fits(FP16_70B, "ml.g6e.xlarge", 8192, 64, 0.9) is None  # not in the catalog
    fits = planner.check_fits(AWQ_8B, "ml.g5.2xlarge", 8192, 64, 0.9)
    assert fits is not None and fits.fits


def test_check_fits_sizes_a_custom_id_as_the_named_catalog_model():
    with pytest.raises(planner.ModelDoesNotFit):
        planner.check_fits("my-org/custom-70b", "ml.g5.2xlarge", 8192, 64, 0.9, catalog_model="llama-3.1-70b")
    assert planner.check_fits("my-org/q", "ml.g5.2xlarge", 8192, 64, 0.9, "awq-int4", catalog_model="llama-3.1-8b")


def test_cli_json_compares_the_stacks_instances_side_by_side(capsys):
    assert planner.main(["--json", "--concurrency", "1,16"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"]["catalog_model"] == "llama-3.1-8b" and out["model"]["quantization"] == "awq-int4"
    assert out["model"]["kv_bytes_per_token"] == 131072
    names = [i["instance"] for i in out["instances"]]
    assert names == list(catalog.STACK_INSTANCES.values())
    for inst in out["instances"]:
        assert inst["fits"] and inst["price_per_hour"] > 0
        assert [e["concurrency"] for e in inst["estimates"]] == [1, 16]
        for e in inst["estimates"]:
            # every estimate carries its formula inputs
            for key in ("weights_gb", "kv_read_gb", "bandwidth_gb_s", "compute_tflops", "batch", "formula"):
                assert key in e
            assert e["cost_per_1k_tokens_usd"] == pytest.approx(
                inst["price_per_hour"] / (e["output_tokens_per_s"] * 3600) * 1000, rel=1e-3
            )


def test_cli_table_shows_fit_speed_and_cost(capsys):
    assert planner.main(["--model", "llama-3.1-70b", "--instance", "ml.g5.2xlarge,ml.g5.48xlarge"]) == 0
    out = capsys.readouterr().out
    assert "141.1 GB of weights" in out and "ml.g5.48xlarge" in out and "$/1M tok" in out
    assert "llama-3.1-70b fp16 needs 141.1 GB of weights" in out  # the instance that cannot load it says why


def test_the_default_plan_fits_120_columns_and_says_a_shared_warning_once(capsys):
    assert planner.main([]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 120
    stack_types = ", ".join(catalog.STACK_INSTANCES.values())
    assert out.count("the KV cache holds 13 full 8,192-token sequences") == 1
    assert f"{stack_types}: the KV cache holds 13" in out
    for name in catalog.STACK_INSTANCES.values():  # no name cut short by a narrow column
        assert f" {name} " in out


def test_every_sagemaker_gpu_type_the_stack_accepts_in_the_families_here_is_in_the_catalog(capsys):
    from components.aws_common import sagemaker_instance_types

    for family in ("ml.g5.", "ml.g6."):
        accepted = {t for t in sagemaker_instance_types() if t.startswith(family)}
        assert accepted <= set(catalog.INSTANCES), accepted - set(catalog.INSTANCES)
    # ml.g6 has no reference price: the plan says so once for all of them, and why, not a made-up figure.
    assert all(catalog.INSTANCES[f"ml.g6.{s}"].price_per_hour is None for s in ("xlarge", "2xlarge", "48xlarge"))
    assert planner.main(["--instance", "ml.g6.xlarge,ml.g6.2xlarge"]) == 0
    out = capsys.readouterr().out
    assert out.count("no price for TYPE in us-east-1") == 1
    assert "ml.g6.xlarge, ml.g6.2xlarge: no price for TYPE" in out.replace("\n", " ")
    assert "the reference prices list none for SageMaker ml.g6" in out.replace("\n", " ")


def test_a_cloud_or_all_lists_only_what_the_stacks_deploy():
    from components.azure_vllm_vm import A10_V5_SIZES

    assert set(catalog.AZURE_VM_SIZES) == set(A10_V5_SIZES)
    aws = {i.name for i in planner._instances(["aws"])}
    assert "ml.g5.2xlarge" in aws and "ml.g6.xlarge" in aws and not any(not n.startswith("ml.") for n in aws)
    assert {i.name for i in planner._instances(["azure"])} == set(A10_V5_SIZES)
    every = {i.name for i in planner._instances(["all"])}
    assert "g5.2xlarge" not in every and "Standard_NC24ads_A100_v4" not in every
    assert [i.name for i in planner._instances(["g5.2xlarge"])] == ["g5.2xlarge"]  # named, it is still shown


def test_one_default_workload_for_the_bench_and_the_plan():
    from bench.cli import build_parser

    bench_args = build_parser().parse_args(["http://x/v1"])
    plan_args = planner.parser().parse_args([])
    assert (int(bench_args.prompt_tokens), int(bench_args.max_tokens)) == (plan_args.prompt_tokens,
                                                                           plan_args.output_tokens) == (128, 64)
    assert tuple(plan_args.concurrency) == planner.DEFAULT_LEVELS == (6, 12, 24, 32)


def test_cli_price_region_and_cloud_selection(capsys):
    args = ["--json", "--instance", "gcp", "--region", "gcp=europe-west4", "--price", "g2-standard-8=0.94"]
    assert planner.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    by_name = {i["instance"]: i for i in out["instances"]}
    assert set(by_name) == {i.name for i in catalog.instances_of("gcp")}
    assert by_name["g2-standard-8"]["price_per_hour"] == 0.94
    assert by_name["g2-standard-4"]["price_per_hour"] is None  # no europe-west4 price: cost unknown, not wrong
    assert "no price for g2-standard-4 in europe-west4" in by_name["g2-standard-4"]["price_note"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "gpt-5"], "unknown model 'gpt-5'; known: llama-3.1-8b"),
        (["--instance", "ml.g9.huge"], "unknown instance type 'ml.g9.huge'; known: aws: "),
        (["--max-model-len", "-5"], "argument --max-model-len: must be a positive whole number, got -5"),
        (["--concurrency", "8,-1"], "argument --concurrency: must be a positive whole number, got -1"),
        (["--prompt-tokens", "abc"], "argument --prompt-tokens: 'abc' is not a whole number"),
        (["--gpu-memory-utilization", "0"], "argument --gpu-memory-utilization: must be in (0, 1], got 0"),
        (["--overhead-gb", "-1"], "argument --overhead-gb: must be a number >= 0, got -1"),
        (["--price", "ml.g5.2xlarge=-2"], "--price: ml.g5.2xlarge: price '-2' must be a positive number"),
        (["--region", "mars=olympus"], "'mars' is not one of: aws, azure, gcp"),
        (["--concurrency", ","], "python -m bench plan: error: --concurrency needs at least one value\n"),
        (["--region", "aws="], "python -m bench plan: error: --region 'aws=': the region is empty\n"),
        (["--gpu-memory-utilization", "abc"], "argument --gpu-memory-utilization: 'abc' is not a number"),
        (["--gpu-memory-utilization", "1.5"], "argument --gpu-memory-utilization: must be in (0, 1], got 1.5"),
        (["--overhead-gb", "x"], "argument --overhead-gb: 'x' is not a number"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    try:
        code = planner.main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and err.startswith("python -m bench plan: error: ")


# ------------------------------------------------------------ figures and edges (python tests/mutants.py planner)
# Literal figures worked out by hand for the default deployment, llama-3.1-8b AWQ-INT4 on ml.g5.2xlarge (1x A10G):
#   linear params = 32 x (4096 x 128 x (2 x 32 + 2 x 8) + 3 x 4096 x 14336) = 6,979,321,856
#   weights = 6,979,321,856 x (0.5 + 2.5 / 128 B) + (2 x 128256 x 4096 + 65 x 4096) x 2 B = 5,727,854,592 B
#   visible = 23028 MiB = 24,146,608,128 B; budget = x 0.9 = 21,731,947,315.2 B
#   activations = 2048 x (2 x 14336 + 4 x 4096) x 2 + 64 x 128256 x 8 = 250,216,448 B; overhead 1e9 B
#   KV budget = 21,731,947,315.2 - 5,727,854,592 - 250,216,448 - 1e9 = 14,753,876,275.2 B
#   KV per token = 2 x 32 layers x 8 KV heads x 128 x 2 B = 131,072 B; a block of 16 tokens = 2,097,152 B
#   blocks = floor(14,753,876,275.2 / 2,097,152) = 7,035 -> 112,560 tokens; 8,192-token sequences: 7035 // 512 = 13


def test_memory_json_figures_of_the_default_deployment():
    out = memory().to_dict()
    formula, warnings = out.pop("formula"), out.pop("warnings")
    assert out == {
        "instance": "ml.g5.2xlarge", "gpu": "A10G", "gpu_count": 1, "tensor_parallel": 1,
        "per_gpu": {"visible_gb": 24.1466, "gpu_memory_utilization": 0.9, "budget_gb": 21.7319, "weights_gb": 5.7279,
                    "activations_gb": 0.250216, "overhead_gb": 1.0, "kv_cache_gb": 14.7539, "kv_bytes_per_token": 131072},
        "kv_capacity_tokens": 112560, "max_model_len": 8192, "max_sequences_at_max_model_len": 13,
        "largest_max_model_len": 112560, "fits": True, "problem": None, "problem_field": None,
    }
    assert set(formula) == {"budget", "kv_cache", "kv_bytes_per_token", "activations"}
    assert len(warnings) == 1 and "holds 13 full 8,192-token sequences, fewer than max_batch_size 64" in warnings[0]


def test_tensor_parallel_splits_the_mlp_activations():
    # llama-3.1-70b over 8 GPUs: 2048 x (2 x 28672 / 8 + 4 x 8192) x 2 + 64 x 128256 x 8 = 229,244,928 B per GPU
    assert memory(FP16_70B, "ml.g5.48xlarge").activation_bytes == 229_244_928


def test_a_sequence_takes_whole_kv_blocks():
    # 7,035 blocks of 16 tokens (above). vLLM gives each sequence whole blocks: a 17-token one takes 2, a 150-token
    # one 10 (160 tokens), so 3,517 and 703 of them fit, not 112,560 // 17 = 6,621 and 112,560 // 150 = 750.
    m = memory()
    assert (m.max_sequences_at(16), m.max_sequences_at(17), m.max_sequences_at(150)) == (7035, 3517, 703)
    assert (m.max_sequences_at(8192), m.max_sequences_at(8193)) == (13, 13)  # 7035 // 512, 7035 // 513


def test_a_max_model_len_fits_exactly_up_to_the_last_kv_token():
    assert memory(max_model_len=112_560).fits
    m = memory(max_model_len=112_561)
    assert (m.fits, m.problem_field, m.largest_context) == (False, "max_model_len", 112_560)


def test_weights_that_fill_the_whole_budget_are_refused_as_the_model():
    # 5,727,854,592 / 24,146,608,128 = 0.237211560383012: the budget is exactly the weights
    m = memory(gpu_memory_utilization=0.237211560383012)
    assert m.budget_bytes == m.weight_bytes == 5_727_854_592
    assert (m.fits, m.problem_field) == (False, "model")


def test_an_overhead_that_leaves_no_kv_budget_holds_no_tokens_and_warns_of_nothing_else():
    # 21.73 - 5.73 - 0.25 - 16 GB < 0: no block at all, not a negative count
    m = memory(overhead_gb=16)
    assert (m.kv_capacity_tokens, m.largest_context, m.max_sequences_at_context) == (0, 0, 0)
    assert m.problem_field == "max_model_len" and "needs 1.1 GB, but ml.g5.2xlarge has 0.0 GB left" in m.problem
    assert m.warnings == ()  # the problem says it; no "holds 0 sequences" warning on top


def test_the_batch_warning_starts_one_sequence_past_what_the_kv_cache_holds():
    assert memory(max_batch_size=13).warnings == ()  # 13 full 8,192-token sequences fit
    (warning,) = memory(max_batch_size=14).warnings
    assert "holds 13 full 8,192-token sequences, fewer than max_batch_size 14" in warning


def test_heads_refusal_names_the_model_as_the_field():
    assert memory("Qwen/Qwen2.5-7B-Instruct", "g5.48xlarge").problem_field == "model"


def test_weights_refusal_over_several_gpus_gives_the_per_gpu_share():
    m = memory(FP16_70B, "Standard_NV72ads_A10_v5")  # 2x A10: 141.1 GB / 2 per GPU
    assert m.problem_field == "model"
    assert m.problem == ("llama-3.1-70b fp16 needs 141.1 GB of weights (70.6 GB per GPU at TP 2); "
                         "Standard_NV72ads_A10_v5 has 2x A10 24 GB (24.1 GB visible, 21.7 GB usable at 0.9 per GPU)")


def test_kv_refusal_says_per_gpu_only_over_several_gpus():
    # 70b AWQ over 2x A10: 39.8 GB / 2 of weights; KV per token per GPU = 2 x 80 x (8 / 2) x 128 x 2 = 163,840 B,
    # x 8,192 tokens = 1.3 GB, against 21.73 - 19.88 - 0.32 - 1 = 0.53 GB left
    m = memory("hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4", "Standard_NV72ads_A10_v5")
    assert m.problem_field == "max_model_len"
    assert "needs 1.3 GB per GPU, but Standard_NV72ads_A10_v5 has 0.5 GB left for it after 19.9 GB of weights" in m.problem
    assert "needs 17.2 GB, but ml.g5.2xlarge has" in memory(max_model_len=131072).problem  # 1 GPU: no "per GPU"


@pytest.mark.parametrize(
    ("engine", "field"),
    [
        (dict(max_model_len=0), "max_model_len"), (dict(max_model_len=True), "max_model_len"),
        (dict(max_batch_size=0), "max_batch_size"), (dict(max_num_batched_tokens=0), "max_num_batched_tokens"),
        (dict(gpu_memory_utilization=0), "gpu_memory_utilization"),
        (dict(gpu_memory_utilization=1.01), "gpu_memory_utilization"), (dict(overhead_gb=-0.5), "overhead_gb"),
        (dict(kv_cache_dtype="int4"), "kv_cache_dtype"),
    ],
)
def test_engine_refusals_name_the_field(engine, field):
    with pytest.raises(planner.PlanError) as err:
        memory(**engine)
    assert str(err.value).startswith(f"{field} ")
    if field == "kv_cache_dtype":
        assert str(err.value) == "kv_cache_dtype 'int4' is not one of: auto, fp16, bf16, fp8"


def test_engine_edges_that_are_accepted():
    assert memory(gpu_memory_utilization=1.0).budget_bytes == 23028 * 2**20
    assert memory(overhead_gb=0).overhead_bytes == 0 and memory(overhead_gb=0.5).overhead_bytes == 0.5 * GB


# ----------------------------------------------------------------------------- roofline: figures and edges


def test_estimate_json_figures_of_the_default_deployment():
    # 512 prompt + 256 output tokens at concurrency 8, $1.515/h. Per token: decode = 2 x 7,504,658,432 matmul params
    # + 4 x 32 x 32 x 128 x (512 + 128) attention = 15.344861184 GFLOP; prefill = 2 x 6,979,321,856 x 512
    # + 2 x 128256 x 4096 + 2 x 32 x 32 x 128 x 512^2 = 7.216595730432 TFLOP. KV read = 8 x 640 x 131072 B.
    # step = (5.727854592 + 0.67108864) GB / 600 GB/s = 10.6649 ms (compute: 8 x 15.34 GFLOP / 70 TFLOPS = 1.75 ms)
    # TTFT = (7.2166 T + 7 x 15.34 G) / 70 T = 104.6287 ms; E2E = 104.6287 + 255 x 10.6649 = 2,824.1796 ms
    # tok/s = 8 x 256 / 2.8241796 s = 725.166; req/s = 8 / 2.8241796 = 2.83268; $/1k = 1.515 / (725.166 x 3600) x 1000
    e = planner.estimate(memory(), planner.Workload(512, 256, 8), price_per_hour=1.515).to_dict()
    formula = e.pop("formula")
    assert e == {
        "instance": "ml.g5.2xlarge", "concurrency": 8, "batch": 8, "batch_limit": "concurrency",
        "prompt_tokens": 512, "output_tokens": 256, "weights_gb": 5.7279, "kv_read_gb": 0.671089,
        "bandwidth_gb_s": 600.0, "compute_tflops": 70.0, "compute_path": "fp16", "decode_gflop_per_token": 15.3449,
        "prefill_tflop": 7.2166, "step_ms": 10.6649, "bound": "memory", "ttft_ms": 104.6287, "tpot_ms": 10.6649,
        "e2e_ms": 2824.1796, "queue_ms": 0.0, "tokens_per_s_per_sequence": 93.7655, "output_tokens_per_s": 725.1663,
        "requests_per_s": 2.8327, "price_per_hour": 1.515, "cost_per_1k_tokens_usd": 0.000580327,
        "cost_per_1m_tokens_usd": 0.580327, "problem": None,
    }
    assert set(formula) == {"step_ms", "kv_read_gb", "ttft_ms", "tpot_ms", "e2e_ms", "output_tokens_per_s",
                            "cost_per_1k_tokens_usd"}


def test_tensor_parallel_divides_the_flops_per_gpu():
    # llama-3.1-70b fp16 over 8x A10G, 512 + 256 tokens, one sequence. Per GPU: decode = (2 x 69,502,369,792
    # + 4 x 80 x 64 x 128 x 640) / 8 = 17.585143808 GFLOP; prefill = (2 x 68,451,041,280 x 512 + 2 x 128256 x 8192)
    # / 8 + 4 x 80 x 64 x 128 / 8 x 512^2 / 2 = 8.804945625088 TFLOP; step = (17.638 + 0.0262) GB / 600 = 29.441 ms
    e = planner.estimate(memory(FP16_70B, "ml.g5.48xlarge"), planner.Workload(512, 256, 1))
    assert e.decode_gflop_per_token == pytest.approx(17.585143808)
    assert e.prefill_tflop == pytest.approx(8.804945625088)
    assert e.step_ms == pytest.approx(29.441068373)
    assert e.ttft_ms == pytest.approx(125.784937501)  # 8.80495 T / 70 T
    assert e.e2e_ms == pytest.approx(7633.257372701)  # 125.785 + 255 x 29.441


def test_a_large_batch_of_short_sequences_is_compute_bound():
    # max_batch_size 256 (activations 2048 x 45056 x 2 + 256 x 128256 x 8 B), 128 + 64 tokens at concurrency 256:
    # decode = 2 x 7,504,658,432 + 524,288 x 160 = 15.093202944 GFLOP/token; prefill = 1.792052035584 TFLOP.
    # step: compute 256 x 15.0932 G / 70 T = 55.198 ms > memory (5.7279 + 256 x 160 x 131072 / 1e9) / 600 = 18.494 ms
    # TPOT = 256 x (1.79205 T + 63 x 15.0932 G) / 64 / 70 T = 156.7385 ms; TTFT = (1.79205 T + 255 x 15.0932 G) / 70 T
    e = planner.estimate(memory(max_batch_size=256), planner.Workload(128, 64, 256))
    assert (e.batch, e.bound) == (256, "compute")
    assert e.step_ms == pytest.approx(55.198, rel=1e-5)
    assert e.tpot_ms == pytest.approx(156.7385, rel=1e-5)
    assert e.ttft_ms == pytest.approx(80.5831, rel=1e-5)
    assert e.output_tokens_per_s == pytest.approx(1645.788, rel=1e-5)  # 256 x 64 / 9.95511 s


def test_a_short_prompt_s_first_token_waits_on_memory_not_compute():
    # 16 + 2048 tokens at concurrency 16: mean context 16 + 1024 = 1,040. TTFT reads the weights, the 15 other
    # sequences' KV and writes the prompt's: (5,727,854,592 + 15 x 1040 x 131072 + 16 x 131072) / 600e9 = 12.9578 ms;
    # its FLOPs take (0.224456 T + 15 x 15.5546 G) / 70 T = 6.54 ms.
    e = planner.estimate(memory(), planner.Workload(16, 2048, 16))
    assert e.ttft_ms == pytest.approx(12.957791573, rel=1e-9)
    assert e.step_ms == pytest.approx(13.181487787, rel=1e-9)  # (5.72785 + 16 x 1040 x 131072 / 1e9) GB / 600


@pytest.mark.parametrize(
    ("model", "quantization", "instance", "path", "tflops"),
    [
        ("llama-3.1-8b", "int8", "ml.g5.2xlarge", "int8", 140.0),  # A10G INT8 tensor
        ("llama-3.1-8b", "fp8", "g2-standard-8", "fp8", 242.5),  # L4 FP8 tensor
        ("llama-3.1-8b", "fp8", "ml.g5.2xlarge", "fp16", 70.0),  # Ampere: no FP8 tensor cores, 16-bit matmuls
    ],
)
def test_the_compute_peak_follows_the_quantization_s_tensor_path(model, quantization, instance, path, tflops):
    spec = catalog.require_model(model, quantization)
    m = planner.plan_memory(spec, catalog.instance(instance), planner.Engine())
    e = planner.estimate(m, planner.Workload())
    assert (e.compute_path, e.compute_tflops) == (path, pytest.approx(tflops))


def test_one_sequence_longer_than_the_kv_cache_has_no_estimate():
    # 100,000 + 20,000 tokens need 7,500 blocks; the cache has 7,035
    e = planner.estimate(memory(), planner.Workload(100_000, 20_000, 4), price_per_hour=1.515)
    assert e.problem == "one sequence of 120,000 tokens does not fit the KV cache"
    assert (e.batch, e.batch_limit, e.bound, e.cost_per_1k_tokens_usd, e.cost_per_1m_tokens_usd) == (
        0, "kv_cache", "-", None, None)
    for name in ("kv_read_gb", "step_ms", "ttft_ms", "tpot_ms", "e2e_ms", "queue_ms", "tokens_per_s_per_sequence",
                 "output_tokens_per_s", "requests_per_s"):
        assert math.isnan(getattr(e, name)), name
    out = e.to_dict()
    assert (out["output_tokens"], out["weights_gb"], out["compute_path"], out["price_per_hour"]) == (
        20_000, 5.7279, "fp16", 1.515)
    assert out["decode_gflop_per_token"] is not None and out["prefill_tflop"] is not None


def test_an_instance_whose_memory_plan_has_a_problem_keeps_it_in_the_estimate():
    # llama-2-7b at 8,192 tokens of context: beyond the model, although the L4's KV cache would hold a sequence
    m = memory("meta-llama/Llama-2-7b-chat-hf", "g2-standard-8", max_model_len=8192)
    e = planner.estimate(m, planner.Workload(128, 64, 1))
    assert e.problem == m.problem and e.batch == 0


@pytest.mark.parametrize(
    ("workload", "field"),
    [((0, 64, 1), "prompt_tokens"), ((128, 0, 1), "output_tokens"), ((128, 64, 0), "concurrency")],
)
def test_workload_refusals_name_the_field(workload, field):
    with pytest.raises(planner.PlanError) as err:
        planner.estimate(memory(), planner.Workload(*workload))
    assert str(err.value) == f"{field} must be a positive whole number, got 0"


@pytest.mark.parametrize(
    ("efficiency", "field"),
    [((0, 1.0), "bandwidth_efficiency"), ((1.0, 1.5), "compute_efficiency"), ((1.0, "0.5"), "compute_efficiency")],
)
def test_efficiency_refusals_name_the_field(efficiency, field):
    with pytest.raises(planner.PlanError) as err:
        planner.estimate(memory(), planner.Workload(), efficiency=planner.Efficiency(*efficiency))
    assert str(err.value).startswith(f"{field} must be in (0, 1], got ")


def test_cost_edges():
    assert planner.cost_per_1k_tokens(0.0, 100) == 0.0  # a free instance is a price, not an error
    assert planner.cost_per_1k_tokens(1.0, 0.5) == pytest.approx(1 / 1800 * 1000)  # 0.5 tok/s is a throughput
    with pytest.raises(planner.PlanError, match="throughput"):
        planner.cost_per_1k_tokens(1.5, 0)


# ---------------------------------------------------------------------------- fit check: the fixes it names


def test_check_fits_names_a_context_that_fits_and_a_bigger_type():
    with pytest.raises(planner.ModelDoesNotFit) as err:
        planner.check_fits(AWQ_8B, "ml.g5.2xlarge", 131072, 64, 0.9)
    assert (err.value.field, err.value.largest_context, err.value.four_bit) == ("max_model_len", 112_560, None)
    # the cheapest SageMaker type that holds a 131,072-token sequence: 4x A10G (ml.g6 has no price to rank it by)
    assert err.value.suggestion() == (
        "lower max_model_len to 112,560 or less or move to the cheapest aws instance type that fits, "
        "ml.g5.12xlarge (4x A10G 24 GB, $7.09/h)")
    assert str(err.value).endswith(f"; {err.value.suggestion()}") and "pulumi config set" not in str(err.value)
    assert err.value.suggestion("maxModelLen", "instanceType").endswith(
        "$7.09/h) with `pulumi config set instanceType ml.g5.12xlarge`")
    assert err.value.suggestion("maxModelLen").startswith("lower maxModelLen to 112,560")


def test_check_fits_offers_no_4_bit_checkpoint_of_a_4_bit_model_or_one_that_does_not_fit():
    with pytest.raises(planner.ModelDoesNotFit) as err:
        planner.check_fits("hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4", "ml.g5.2xlarge", 8192, 64, 0.9)
    assert (err.value.field, err.value.largest_context, err.value.four_bit) == ("model", 0, None)
    assert err.value.bigger.name == "ml.g5.12xlarge"  # 39.8 GB / 4 GPUs
    with pytest.raises(planner.ModelDoesNotFit) as err:
        planner.check_fits(FP16_70B, "ml.g5.2xlarge", 8192, 64, 0.9)
    assert err.value.four_bit is None  # 70b in 4 bits is 39.8 GB: it does not fit a 24 GB card either


def test_check_fits_offers_a_4_bit_checkpoint_of_a_bf16_model_and_the_cheapest_bigger_type():
    with pytest.raises(planner.ModelDoesNotFit) as err:
        planner.check_fits("llama-2-13b", "g2-standard-8", 4096, 64, 0.9, "bf16")
    assert err.value.four_bit is not None
    # max_model_len 4,096 is the model's whole context: a bigger type still helps (2x L4: 13 GB of weights each)
    assert err.value.bigger.name == "g2-standard-24"


def test_check_fits_of_a_context_beyond_the_model_suggests_only_the_model_s_context():
    with pytest.raises(planner.ModelDoesNotFit) as err:
        planner.check_fits("meta-llama/Llama-2-7b-chat-hf", "g2-standard-8", 8192, 64, 0.9)
    assert (err.value.field, err.value.largest_context, err.value.bigger) == ("max_model_len", 4096, None)


def test_check_fits_a_refusal_with_no_fix_is_the_problem_alone():
    with pytest.raises(planner.ModelDoesNotFit) as err:  # 811.7 GB of weights: no GCP type here holds them
        planner.check_fits("meta-llama/Llama-3.1-405B-Instruct", "g2-standard-8", 8192, 64, 0.9)
    assert err.value.suggestion() == ""
    assert str(err.value) == ("llama-3.1-405b fp16 needs 811.7 GB of weights; g2-standard-8 has 1x L4 24 GB "
                              "(24.2 GB visible, 21.7 GB usable at 0.9)")


def test_check_fits_uses_the_quantization_and_engine_settings_it_is_given():
    plan = planner.check_fits("meta-llama/Llama-3.1-8B-Instruct", "ml.g5.2xlarge", 8192, 32, 0.8, "awq-int4")
    assert plan.spec.quantization.name == "awq-int4"
    assert plan.activation_bytes == 2048 * 45056 * 2 + 32 * 128256 * 8  # max_batch_size 32
    assert plan.budget_bytes == pytest.approx(23028 * 2**20 * 0.8)
    custom = planner.check_fits("my-org/q", "ml.g5.2xlarge", 8192, 64, 0.9, "awq-int4", catalog_model="llama-3.1-8b")
    assert custom.spec.quantization.name == "awq-int4"
    with pytest.raises(planner.ModelDoesNotFit) as err:  # 0.3 x 24.1 GB = 7.2 GB: 0.26 GB of KV after the weights
        planner.check_fits(AWQ_8B, "ml.g5.2xlarge", 8192, 64, 0.3)
    assert err.value.field == "max_model_len"


def test_cheapest_fitting_keeps_to_the_types_named():
    spec = catalog.require_model("hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4")
    like = catalog.instance("ml.g5.2xlarge")
    assert planner.cheapest_fitting(spec, planner.Engine(), like=like, among={"ml.g5.48xlarge"}).name == "ml.g5.48xlarge"
    assert planner.cheapest_fitting(spec, planner.Engine(), like=like, among={"ml.g5.2xlarge"}) is None


# ------------------------------------------------------------------------------- plan: prices, JSON, CLI


def test_build_plan_prices_in_the_region_asked_and_says_why_none(tmp_path, monkeypatch):
    for name in (catalog.PRICES_ENV, catalog.PRICES_FILE_ENV):
        monkeypatch.delenv(name, raising=False)
    spec, inst = catalog.require_model(AWQ_8B), [catalog.instance("ml.g5.2xlarge")]
    half = planner.Efficiency(0.5, 0.5)
    plan = planner.build_plan(spec, inst, planner.Engine(), [planner.Workload()], efficiency=half)
    assert (plan.prices, plan.price_notes) == ({"ml.g5.2xlarge": 1.515}, {"ml.g5.2xlarge": "us-east-1"})
    assert (plan.estimates[0].bandwidth_gb_s, plan.estimates[0].compute_tflops) == (300.0, 35.0)
    plan = planner.build_plan(spec, inst, planner.Engine(), [planner.Workload()], regions={"*": "us-west-2"})
    assert (plan.prices, plan.price_notes) == ({"ml.g5.2xlarge": 1.515}, {"ml.g5.2xlarge": "us-west-2"})
    plan = planner.build_plan(spec, inst, planner.Engine(), [planner.Workload()], regions={"*": "eu-west-1"})
    note = plan.price_notes["ml.g5.2xlarge"]
    assert plan.prices == {"ml.g5.2xlarge": None} and note.startswith("no price for ml.g5.2xlarge in eu-west-1")
    assert note.endswith(f"or a prices file ({catalog.PRICES_FILE_ENV})")  # a catalog type: no "(source)" after it
    prices = tmp_path / "prices.json"
    prices.write_text('{"ml.g5.2xlarge": 2.0}')
    plan = planner.build_plan(spec, inst, planner.Engine(), [planner.Workload()], prices_file=str(prices))
    assert plan.prices == {"ml.g5.2xlarge": 2.0}


def test_cli_passes_every_engine_workload_and_efficiency_flag(capsys):
    argv = ["--json", "--instance", "ml.g5.2xlarge", "--model", "llama-3.1-8b", "--quantization", "awq-int4",
            "--max-model-len", "4096", "--max-batch-size", "8", "--gpu-memory-utilization", "0.8",
            "--kv-cache-dtype", "fp8", "--max-num-batched-tokens", "1024", "--overhead-gb", "0.5",
            "--concurrency", "8", "--prompt-tokens", "512", "--output-tokens", "256",
            "--bandwidth-efficiency", "1", "--compute-efficiency", "0.5", "--utilization", "0.25"]
    assert planner.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["engine"] == {"max_model_len": 4096, "max_batch_size": 8, "gpu_memory_utilization": 0.8,
                             "kv_cache_dtype": "fp8", "max_num_batched_tokens": 1024, "overhead_gb": 0.5}
    assert out["efficiency"] == {"bandwidth": 1.0, "compute": 0.5}
    assert out["model"]["quantization"] == "awq-int4"
    (e,) = out["instances"][0]["estimates"]
    assert (e["prompt_tokens"], e["output_tokens"], e["concurrency"], e["compute_tflops"]) == (512, 256, 8, 35.0)
    assert out["break_even"]["ml.g5.2xlarge"]["utilization"] == 0.25


def test_cli_json_model_figures():
    # the figures of the header above: 8,030,261,248 params = 6,979,321,856 linear + 1,050,673,152 embeddings
    # + 266,240 norms; AWQ-INT4 stores 0.5 + 2.5 / 128 = 0.51953125 B per linear weight
    plan = planner.build_plan(catalog.require_model(AWQ_8B), [], planner.Engine(kv_cache_dtype="fp8"), [])
    model = plan.to_dict()["model"]
    formula = model.pop("formula")
    assert model == {
        "requested": AWQ_8B, "catalog_model": "llama-3.1-8b", "quantization": "awq-int4", "params": 8_030_261_248,
        "linear_params": 6_979_321_856, "embedding_params": 1_050_673_152, "layers": 32, "hidden_size": 4096,
        "attention_heads": 32, "kv_heads": 8, "head_dim": 128, "vocab_size": 128256, "max_context": 131072,
        "bytes_per_param": 0.51953125, "weights_gb": 5.7279, "kv_bytes_per_token": 65536,  # fp8 KV: 1 B per element
    }
    assert set(formula) == {"weights", "kv_bytes_per_token"}
    assert set(plan.to_dict()) == {"model", "engine", "efficiency", "instances"}


def test_cli_flag_edges_that_are_accepted(capsys):
    assert planner.main(["--json", "--instance", "g2-standard-8", "--overhead-gb", "0", "--gpu-memory-utilization",
                         "1", "--prices-file", "/dev/null/none.json", "--concurrency", "1"]) == 2  # the file is read
    assert "prices file '/dev/null/none.json'" in capsys.readouterr().err
    assert planner.main(["--json", "--instance", "g2-standard-8", "--overhead-gb", "0", "--gpu-memory-utilization",
                         "1", "--concurrency", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["engine"]["overhead_gb"], out["engine"]["gpu_memory_utilization"]) == (0.0, 1.0)


def test_regions_with_and_without_a_cloud():
    assert planner._regions(["us-west-2", "gcp=europe-west4", "azure= westus "]) == {
        "*": "us-west-2", "gcp": "europe-west4", "azure": "westus"}


@pytest.mark.parametrize(
    ("value", "text"), [(None, "-"), (0.000580327, "$0.00058"), (0.5803, "$0.58"), (1.5, "$1.5"), (1.515, "$1.515"),
                        (3.0, "$3"), (168.634028, "$168.634"), (1234.5, "$1,234.5")],
)
def test_money_as_the_tables_print_it(value, text):
    assert planner._money(value, 3) == text


def _cells(text: str, first: str) -> list[list[str]]:
    return [re.split(r"\s{2,}", line.strip()) for line in text.splitlines() if line.strip().startswith(first + " ")]


def test_the_tables_figures():
    from rich.console import Console

    console = Console(record=True, width=200)
    # llama-3.1-70b fp16: 70,553,706,496 params = 68,451,041,280 linear x 2 B + 2,102,665,216 embeddings/norms x 2 B
    # = 141.1 GB; KV per token 2 x 80 x 8 x 128 x 2 = 327,680 B = 320 KiB. ml.g5.2xlarge: 21.73 - 141.11 - 0.43
    # (2048 x 90112 x 2 + 64 x 128256 x 8 B) - 1 = -120.81 GB. ml.g5.48xlarge (TP 8): 17.64 GB of weights, 0.23 of
    # activations, 2.86 of KV = 4,370 blocks = 69,920 tokens, 8 sequences of 8,192. Its estimate: see
    # test_tensor_parallel_divides_the_flops_per_gpu; $20.36/h / (33.537 tok/s x 3600) x 1e6 = $168.634 per 1M.
    plan = planner.build_plan(catalog.require_model("llama-3.1-70b"), [catalog.instance("ml.g5.2xlarge"),
                              catalog.instance("ml.g5.48xlarge")], planner.Engine(), [planner.Workload(512, 256, 1)])
    planner.render(plan, console)
    text = console.export_text()
    assert ("llama-3.1-70b fp16 (llama-3.1-70b): 70.55B params (68.45B in linear layers x 2 B + 2.10B "
            "embeddings/norms x 2 B) = 141.1 GB of weights") in text
    assert "KV cache per token: 2 x 80 layers x 8 KV heads x 128 dim x 2 B = 327,680 B (320 KiB);" in text
    assert _cells(text, "instance") == [
        ["instance", "GPUs", "budget", "weights", "activ.", "other", "KV cache", "KV tokens", "seqs@8,192", "fits"],
        ["instance", "conc.", "batch", "step ms", "bound", "TTFT ms", "TPOT ms", "E2E ms", "tok/s/seq", "tok/s",
         "$/1M tok"]]
    assert _cells(text, "ml.g5.2xlarge") == [
        ["ml.g5.2xlarge", "1x A10G 24G", "21.7", "141.11", "0.43", "1.00", "-120.81", "0", "0", "NO"],
        ["ml.g5.2xlarge", "1"] + ["-"] * 9]
    assert _cells(text, "ml.g5.48xlarge") == [
        ["ml.g5.48xlarge", "8x A10G 24G", "21.7", "17.64", "0.23", "1.00", "2.86", "69,920", "8", "yes"],
        ["ml.g5.48xlarge", "1", "1", "29.4", "memory", "126", "29.4", "7,633", "34.0", "34", "$168.634"]]
    assert "Roofline estimates: prompt 512 + output 256 tokens, at 100% of peak bandwidth and 100% of peak" in text
    assert "  ml.g5.48xlarge: $20.36/h, 600 GB/s, 70 TFLOPS fp16" in text
    assert "Memory per GPU (GB): budget = the GPU's visible memory x 0.9; KV cache = budget - weights" in text
    assert "  batch: concurrency, capped by max_batch_size (cap) or by the sequences the KV cache holds (KV)" in text
    assert "us-east-1" not in text  # priced in the default region: no price note


def test_the_tables_say_what_capped_the_batch():
    from rich.console import Console

    console = Console(record=True, width=200)
    # max_batch_size 16: activations 2048 x 45056 x 2 + 16 x 128256 x 8 = 200,966,144 B, so 7,058 blocks.
    # 128 + 64 tokens at 4: batch 4; at 32: capped at 16; 4096 + 4096 at 32: 7058 // 512 = 13 sequences in the KV cache
    plan = planner.build_plan(catalog.require_model(AWQ_8B), [catalog.instance("ml.g5.2xlarge")],
                              planner.Engine(max_batch_size=16), [planner.Workload(128, 64, 4),
                              planner.Workload(128, 64, 32), planner.Workload(4096, 4096, 32)])
    planner.render(plan, console)
    rows = _cells(console.export_text(), "ml.g5.2xlarge")
    assert [row[1:3] for row in rows[1:]] == [["4", "4"], ["32", "16 cap"], ["32", "13 KV"]]
    assert [row[-1] for row in rows[1:]] == ["$1.046", "$0.273", "$0.881"]  # $1.515/h at 402, 1,539 and 478 tok/s


def test_the_text_plan_ends_with_the_break_even_of_each_instance(capsys):
    assert planner.main(["--instance", "ml.g5.2xlarge", "--api-price", "0.5,1.5", "--concurrency", "8"]) == 0
    out = capsys.readouterr().out
    tail = out.split("Self-host or buy tokens (one always-on instance, its best estimated throughput):\n")[1]
    assert tail.startswith("ml.g5.2xlarge: $1.515/h, ")
    assert "\n  self-hosted at 50% utilization: " in tail and "\n  break-even: " in tail


def test_check_fits_names_no_context_for_a_model_refusal_and_no_4_bit_checkpoint_for_a_context_one():
    with pytest.raises(planner.ModelDoesNotFit) as err:  # 28 heads over 8 GPUs: no max_model_len helps
        planner.check_fits("Qwen/Qwen2.5-7B-Instruct", "ml.g5.48xlarge", 8192, 64, 0.9)
    assert (err.value.field, err.value.largest_context) == ("model", 0)
    assert "lower max_model_len" not in str(err.value)
    # 8b fp16 at 65,536 tokens: 16.1 GB of weights leave 4.4 GB = 33,728 tokens; the fixes named are the
    # context and the bigger type (a context refusal offers no 4-bit checkpoint)
    with pytest.raises(planner.ModelDoesNotFit) as err:
        planner.check_fits("meta-llama/Llama-3.1-8B-Instruct", "ml.g5.2xlarge", 65536, 64, 0.9)
    assert (err.value.field, err.value.largest_context, err.value.four_bit) == ("max_model_len", 33_728, None)


def test_plan_from_a_run_takes_one_instance(capsys):
    assert planner.main(["--from", "RUN", "--instance", "ml.g5.2xlarge,g2-standard-8"]) == 2
    assert capsys.readouterr().err == ("python -m bench plan: error: --from takes one --instance (the type the run "
                                       "measured), got ml.g5.2xlarge, g2-standard-8\n")
    assert planner.main(["--from", "RUN", "--instance", "ml.g5.2xlarge", "--instance", "g2-standard-8"]) == 2
    assert "got ml.g5.2xlarge, g2-standard-8" in capsys.readouterr().err


def test_json_figures_keep_4_decimals_from_1_and_6_significant_digits_below():
    assert (planner._r(1.23456789), planner._r(2824.17958), planner._r(0.000580326615)) == (1.2346, 2824.1796, 0.000580327)
    assert planner._r(math.nan) is None


def test_the_header_s_figures_for_a_wide_model_and_a_price_of_4_decimals():
    from rich.console import Console

    console = Console(record=True, width=200)
    # llama-3.1-405b: embeddings 2 x 128256 x 16384 = 4,202,692,608 + norms 253 x 16384 = 4,145,152 -> 4.21B
    plan = planner.build_plan(catalog.require_model("llama-3.1-405b"), [], planner.Engine(), [planner.Workload()])
    planner.render(plan, console)
    assert "+ 4.21B embeddings/norms x 2 B) = 811.7 GB of weights" in console.export_text()
    plan = planner.build_plan(catalog.require_model(AWQ_8B), [catalog.instance("g2-standard-24")], planner.Engine(),
                              [planner.Workload()])
    planner.render(plan, console)
    assert "  g2-standard-24: $2.001/h, 300 GB/s, 121 TFLOPS fp16" in console.export_text()  # $2.0008 to 3 decimals
