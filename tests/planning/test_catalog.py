"""The catalog: known figures, Hugging Face id mapping, prices and their overrides, the legacy API."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from planning import catalog
from planning.catalog import GB

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------ known figures


def test_llama_31_8b_fp16_kv_cache_is_128_kib_per_token():
    spec = catalog.require_model("llama-3.1-8b")
    assert spec.kv_bytes_per_token == 32 * 8 * 128 * 2 * 2 == 131072


def test_8b_weights_fp16_about_16_gb_vs_awq_int4_about_5_7_gb():
    fp16 = catalog.require_model("meta-llama/Llama-3.1-8B-Instruct")
    awq = catalog.require_model("hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4")
    assert fp16.quantization.name == "fp16" and awq.quantization.name == "awq-int4"
    assert 15.9 < fp16.weight_bytes / GB < 16.2  # 8.03B x 2 B
    # 6.98B linear weights at 4 bits + group-128 scales/zeros, embeddings and LM head stay 16-bit:
    # the hugging-quants repo's safetensors total 5.73 GB.
    assert awq.weight_bytes / GB == pytest.approx(5.73, abs=0.02)


def test_70b_fp16_weights_are_141_gb():
    assert catalog.require_model("llama-3.1-70b").weight_bytes / GB == pytest.approx(141.1, abs=0.05)


@pytest.mark.parametrize(
    ("name", "published_billions"),
    [
        ("llama-3.1-8b", 8.03),
        ("llama-3.1-70b", 70.55),
        ("llama-3.1-405b", 405.8),
        ("llama-3.2-1b", 1.24),
        ("llama-3.2-3b", 3.21),
        ("llama-2-7b", 6.74),
        ("llama-2-13b", 13.02),
        ("llama-2-70b", 68.98),
        ("mistral-7b", 7.25),
        ("phi-3-mini-4k", 3.82),
        ("stablelm-3b", 2.80),
        ("qwen2.5-7b", 7.62),
    ],
)
def test_parameter_counts_from_the_shapes_match_the_model_cards(name, published_billions):
    assert catalog.model(name).params / 1e9 == pytest.approx(published_billions, rel=0.005)


def test_grouped_4_bit_bytes_per_parameter_include_scales_and_zeros():
    # 4-bit weight + (fp16 scale + 4-bit zero) per 128 weights
    expected = 0.5 + (2 + 0.5) / 128
    assert catalog.quantization("awq-int4").bytes_per_param == pytest.approx(expected)
    assert catalog.quantization("gptq-int4").bytes_per_param == pytest.approx(expected)
    assert catalog.quantization("gptq-int8").bytes_per_param == pytest.approx(1 + 3 / 128)
    assert catalog.quantization("fp16").bytes_per_param == 2.0


def test_gpu_datasheet_figures():
    a10g, l4, h100 = catalog.gpu("A10G"), catalog.gpu("L4"), catalog.gpu("H100")
    assert (a10g.memory_gb, a10g.bandwidth_gb_s) == (24, 600)
    assert (l4.memory_gb, l4.bandwidth_gb_s, l4.fp8_tflops) == (24, 300, 242.5)
    assert h100.bandwidth_gb_s == 3350 and catalog.gpu("H200").memory_gb == 141
    assert catalog.gpu("A100-40GB").fp8_tflops is None  # Ampere: no FP8 tensor cores
    # What CUDA reports (vLLM's total) is a little more than 24e9 bytes on the 24 GB cards.
    assert a10g.visible_memory_bytes == 23028 * 2**20


def test_every_instance_names_a_catalog_gpu_and_a_sane_price():
    for inst in catalog.INSTANCES.values():
        assert inst.gpu in catalog.GPUS, inst.name
        assert inst.cloud in catalog.DEFAULT_REGIONS, inst.name
        assert inst.gpu_count >= 1 and inst.vcpus >= 1 and inst.memory_gib > 0, inst.name
        assert inst.price_per_hour is None or 0 < inst.price_per_hour < 200, inst.name


def test_reference_md_prices_are_the_defaults():
    assert catalog.hourly_price("ml.g5.2xlarge") == 1.515
    assert catalog.hourly_price("g5.2xlarge") == 1.212
    assert catalog.hourly_price("g2-standard-8") == 0.85
    assert catalog.hourly_price("Standard_NV36ads_A10_v5") == 3.20
    assert catalog.hourly_price("Standard_NV36adms_A10_v5") > catalog.hourly_price("Standard_NV36ads_A10_v5")


def test_stack_instances_are_the_pulumi_yaml_defaults():
    config = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    assert config["sagemakerInstanceType"]["default"] == catalog.STACK_INSTANCES["aws"]
    assert config["vmSize"]["default"] == catalog.STACK_INSTANCES["azure"]
    assert config["gkeMachineType"]["default"] == catalog.STACK_INSTANCES["gcp"]
    for cloud, name in catalog.STACK_INSTANCES.items():
        assert catalog.instance(name).cloud == cloud


# ---------------------------------------------------------------------------------- HF id mapping


@pytest.mark.parametrize(
    ("model_id", "model", "quant"),
    [
        ("hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4", "llama-3.1-8b", "awq-int4"),
        ("hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4", "llama-3.1-70b", "awq-int4"),
        ("hugging-quants/Meta-Llama-3.1-8B-Instruct-GPTQ-INT4", "llama-3.1-8b", "gptq-int4"),
        ("meta-llama/Llama-3.1-8B-Instruct", "llama-3.1-8b", "fp16"),
        ("meta-llama/Meta-Llama-3.1-70B-Instruct", "llama-3.1-70b", "fp16"),
        ("neuralmagic/Meta-Llama-3.1-8B-Instruct-FP8", "llama-3.1-8b", "fp8"),
        ("RedHatAI/Meta-Llama-3.1-8B-Instruct-quantized.w8a8", "llama-3.1-8b", "int8"),
        ("RedHatAI/Meta-Llama-3.1-8B-Instruct-quantized.w4a16", "llama-3.1-8b", "gptq-int4"),
        ("meta-llama/Llama-2-7b-chat-hf", "llama-2-7b", "fp16"),
        ("TheBloke/Llama-2-13B-chat-AWQ", "llama-2-13b", "awq-int4"),
        ("TheBloke/Llama-2-13B-chat-GPTQ", "llama-2-13b", "gptq-int4"),
        ("mistralai/Mistral-7B-Instruct-v0.3", "mistral-7b", "fp16"),
        ("microsoft/Phi-3-mini-4k-instruct", "phi-3-mini-4k", "fp16"),
        ("microsoft/Phi-3-mini-128k-instruct", "phi-3-mini-128k", "fp16"),
        ("stabilityai/stablelm-3b-4e1t", "stablelm-3b", "fp16"),
        ("stabilityai/stablelm-zephyr-3b", "stablelm-3b", "fp16"),
        ("Qwen/Qwen2.5-7B-Instruct-AWQ", "qwen2.5-7b", "awq-int4"),
        ("llama-3.1-8b", "llama-3.1-8b", "fp16"),
    ],
)
def test_hugging_face_ids_map_to_model_and_quantization(model_id, model, quant):
    spec = catalog.resolve_model(model_id)
    assert spec is not None and (spec.model.name, spec.quantization.name) == (model, quant)
    assert spec.requested == model_id


@pytest.mark.parametrize(
    "model_id",
    [
        "my-org/my-finetune",
        "nvidia/Llama-3.1-Nemotron-70B-Instruct-HF",  # mentions the family, is another size/shape
        "deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
        "bartowski/Meta-Llama-3.1-8B-Instruct-GGUF",  # a format whose size the catalog does not model
        "unsloth/Meta-Llama-3.1-8B-Instruct-bnb-4bit",
        "mistralai/Mixtral-8x7B-Instruct-v0.1",
    ],
)
def test_ids_the_catalog_cannot_size_map_to_nothing(model_id):
    assert catalog.resolve_model(model_id) is None


def test_quantization_override_and_unknown_names():
    assert catalog.resolve_model("my-org/x") is None
    spec = catalog.require_model("llama-3.1-8b", "awq-int4")
    assert spec.label == "llama-3.1-8b awq-int4"
    with pytest.raises(catalog.UnknownQuantization, match="known: fp16, bf16, fp8"):
        catalog.resolve_model("llama-3.1-8b", "int3")
    with pytest.raises(catalog.UnknownModel) as err:
        catalog.require_model("my-org/custom-13b")
    assert "'my-org/custom-13b'" in str(err.value) and "llama-3.1-8b" in str(err.value) and "stablelm-3b" in str(err.value)


# ------------------------------------------------------------------------------------------ prices


def test_legacy_api_still_works():
    inst = catalog.Instance("x.test", "aws", "A10G", 1, 4, 16, 1.0)  # positional, as before
    assert inst.price_region == "us-east-1" and inst.catalog_prices() == {"us-east-1": 1.0}
    assert catalog.instance("ml.g5.2xlarge") is catalog.INSTANCES["ml.g5.2xlarge"]
    with pytest.raises(KeyError):
        catalog.instance("ml.nope")
    with pytest.raises(catalog.UnknownInstance) as err:
        catalog.hourly_price("ml.nope")
    message = str(err.value)
    assert message.startswith("unknown instance type 'ml.nope'") and "ml.g5.2xlarge" in message and "--price" in message


def test_price_by_region_and_unknown_region():
    assert catalog.hourly_price("g5.2xlarge", "us-west-2") == 1.212
    with pytest.raises(catalog.UnknownPrice) as err:
        catalog.hourly_price("g2-standard-8", "europe-west4")
    assert isinstance(err.value, catalog.UnknownInstance)  # stacks catching UnknownInstance still catch it
    assert "no price for g2-standard-8 in europe-west4; catalog regions: us-central1" in str(err.value)


def test_instance_without_a_list_price_asks_for_one():
    with pytest.raises(catalog.UnknownPrice, match="no price for p5en.48xlarge in us-east-1"):
        catalog.hourly_price("p5en.48xlarge", environ={})
    assert catalog.hourly_price("p5en.48xlarge", overrides={"p5en.48xlarge": 60.0}, environ={}) == 60.0


def test_override_order_argument_then_env_then_file_then_catalog(tmp_path):
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"ml.g5.2xlarge": 1.7, "g2-standard-8": {"europe-west4": 0.94}}))
    env = {catalog.PRICES_FILE_ENV: str(prices)}
    assert catalog.hourly_price("ml.g5.2xlarge", environ=env) == 1.7
    assert catalog.hourly_price("g2-standard-8", "europe-west4", environ=env) == 0.94
    assert catalog.hourly_price("g2-standard-8", environ=env) == 0.85  # the file has no us-central1 entry
    env[catalog.PRICES_ENV] = "ml.g5.2xlarge=1.6, g5.2xlarge=1.3"
    assert catalog.hourly_price("ml.g5.2xlarge", environ=env) == 1.6
    assert catalog.hourly_price("ml.g5.2xlarge", overrides={"ml.g5.2xlarge": 1.5}, environ=env) == 1.5
    assert catalog.hourly_price("ml.g5.2xlarge", environ={}) == 1.515


def test_yaml_prices_file_and_custom_instance(tmp_path):
    prices = tmp_path / "prices.yaml"
    prices.write_text("my.custom: 2.5\nStandard_NV36ads_A10_v5:\n  westeurope: 3.5\n")
    assert catalog.hourly_price("my.custom", prices_file=prices, environ={}) == 2.5
    assert catalog.hourly_price("Standard_NV36ads_A10_v5", "westeurope", prices_file=prices, environ={}) == 3.5


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('["ml.g5.2xlarge"]', "must map instance types to USD/hour"),
        ('{"ml.g5.2xlarge": -1}', "ml.g5.2xlarge: price -1 must be a positive number"),
        ('{"ml.g5.2xlarge": "cheap"}', "price 'cheap' is not a number"),
    ],
)
def test_bad_prices_file_says_what_is_wrong(tmp_path, content, message):
    prices = tmp_path / "prices.json"
    prices.write_text(content)
    with pytest.raises(catalog.BadPrices, match=message):
        catalog.hourly_price("ml.g5.2xlarge", prices_file=prices, environ={})


def test_bad_price_pairs_and_missing_file(tmp_path):
    with pytest.raises(catalog.BadPrices, match="not INSTANCE=USD_PER_HOUR"):
        catalog.parse_price_pairs("ml.g5.2xlarge")
    with pytest.raises(catalog.BadPrices, match="cannot read it"):
        catalog.hourly_price("ml.g5.2xlarge", prices_file=tmp_path / "missing.json", environ={})


def test_instances_of_a_cloud_cheapest_first():
    gcp = catalog.instances_of("gcp")
    prices = [i.price_per_hour for i in gcp]
    assert prices == sorted(prices) and gcp[0].name == "g2-standard-4"


def test_catalog_and_planner_import_without_pulumi_httpx_or_matplotlib():
    code = (
        "import sys\n"
        "for name in ('pulumi', 'httpx', 'aiohttp', 'matplotlib', 'rich', 'yaml', 'numpy'):\n"
        "    sys.modules[name] = None  # any import of these now fails\n"
        "import planning.catalog, planning.planner\n"
        "planning.planner.check_fits('meta-llama/Llama-3.1-8B-Instruct', 'g2-standard-8', 8192, 64, 0.9)\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
