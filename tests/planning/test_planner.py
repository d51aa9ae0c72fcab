"""The planner: memory fit, roofline arithmetic, cost, the stacks' fit check, and the CLI."""

from __future__ import annotations

import json

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
