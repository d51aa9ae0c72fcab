"""The one catalog of GPUs, instance types, prices, models and quantizations, importable without Pulumi.

Used by the stacks (hourly price output, fit checks) and by the bench (cost per 1k tokens, planner,
recommend). Standard library only: the stacks import it, so it must not pull in Pulumi, HTTP clients
or plotting (PyYAML is imported only when a YAML prices file is read).

Prices are on-demand USD/hour list prices in each cloud's default region (`DEFAULT_REGIONS`). The
figures marked "REFERENCE.md" were checked for the project; every other one is a public list price
to verify for your account and region. Override any of them, in order of precedence:

1. an argument: `hourly_price(name, overrides={"ml.g5.2xlarge": 1.60})` (the bench's `--price`,
   the stacks' `pricePerHour`);
2. the environment: `LLMINFER_PRICES="ml.g5.2xlarge=1.60,g2-standard-8=0.90"`;
3. a file named by the argument `prices_file` or by `LLMINFER_PRICES_FILE` (JSON, or YAML when it
   ends in .yaml/.yml): `{"ml.g5.2xlarge": 1.60, "g2-standard-8": {"europe-west4": 0.94}}`;
4. this catalog, for the region asked (default: the cloud's default region).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

GB = 1e9  # sizes are shown in decimal GB, as the vendors' datasheets and model cards state them
MIB = 1 << 20

PRICES_ENV = "LLMINFER_PRICES"
PRICES_FILE_ENV = "LLMINFER_PRICES_FILE"

DEFAULT_REGIONS = {"aws": "us-east-1", "azure": "eastus", "gcp": "us-central1"}

# The instance type each cloud's stack deploys by default (Pulumi.yaml); the planner compares these.
STACK_INSTANCES = {"aws": "ml.g5.2xlarge", "azure": "Standard_NV36adms_A10_v5", "gcp": "g2-standard-8"}


# --------------------------------------------------------------------------------------------- GPUs


@dataclass(frozen=True)
class GPU:
    """One accelerator. Throughputs are dense (no 2:4 sparsity) tensor-core peaks from the datasheet."""

    name: str
    memory_gb: float  # datasheet capacity
    visible_memory_mib: int  # what CUDA reports as total (nvidia-smi); vLLM takes gpu_memory_utilization of this
    bandwidth_gb_s: float  # peak memory bandwidth
    fp16_tflops: float  # dense FP16/BF16 tensor
    int8_tops: float  # dense INT8 tensor
    fp8_tflops: float | None  # dense FP8 tensor; None where the GPU has no FP8 tensor cores (Ampere)
    source: str

    @property
    def visible_memory_bytes(self) -> int:
        return self.visible_memory_mib * MIB


GPUS: dict[str, GPU] = {
    g.name: g
    for g in (
        # NVIDIA publishes no A10G datasheet; AWS: 24 GB, 600 GB/s. Tensor figures per Baseten's
        # "NVIDIA A10 vs A10G" comparison (A10G trades tensor throughput for CUDA-core throughput).
        GPU("A10G", 24, 23028, 600, 70, 140, None, "AWS G5 page; Baseten A10 vs A10G (tensor, verify)"),
        # NVIDIA A10 datasheet: 24 GB GDDR6, 600 GB/s, BF16 125 | 250* TF, INT8 250 | 500* TOPS (* sparse).
        GPU("A10", 24, 23028, 600, 125, 250, None, "NVIDIA A10 datasheet"),
        # NVIDIA L4 datasheet (sparse figures halved): 300 GB/s, FP16 242* TF, FP8 485* TF, INT8 485* TOPS.
        GPU("L4", 24, 23034, 300, 121, 242.5, 242.5, "NVIDIA L4 datasheet"),
        # NVIDIA A100 datasheet, SXM4: 40 GB 1,555 GB/s; 80 GB 2,039 GB/s; PCIe 80 GB 1,935 GB/s;
        # FP16 312 TF, INT8 624 TOPS dense.
        GPU("A100-40GB", 40, 40960, 1555, 312, 624, None, "NVIDIA A100 datasheet (SXM4 40GB)"),
        GPU("A100-80GB", 80, 81920, 2039, 312, 624, None, "NVIDIA A100 datasheet (SXM4 80GB)"),
        GPU("A100-80GB-PCIe", 80, 81920, 1935, 312, 624, None, "NVIDIA A100 datasheet (PCIe 80GB)"),
        # NVIDIA H100 datasheet, SXM5: 80 GB, 3.35 TB/s, FP16 1,979* TF, FP8 3,958* TF, INT8 3,958* TOPS.
        GPU("H100", 80, 81559, 3350, 989.5, 1979, 1979, "NVIDIA H100 datasheet (SXM)"),
        # NVIDIA H200 datasheet, SXM: 141 GB HBM3e, 4.8 TB/s; same tensor cores as H100 SXM.
        GPU("H200", 141, 143771, 4800, 989.5, 1979, 1979, "NVIDIA H200 datasheet (SXM)"),
    )
}


class UnknownGPU(KeyError):
    def __init__(self, name: str):
        super().__init__(f"unknown GPU {name!r}; known: {', '.join(GPUS)}")

    def __str__(self) -> str:
        return str(self.args[0])


def gpu(name: str) -> GPU:
    try:
        return GPUS[name]
    except KeyError:
        raise UnknownGPU(name) from None


# ---------------------------------------------------------------------------------------- instances


@dataclass(frozen=True)
class Instance:
    name: str
    cloud: str
    gpu: str
    gpu_count: int
    vcpus: int
    memory_gib: float
    price_per_hour: float | None  # USD/hour in `region`; None where no list price is known
    region: str = ""  # "" means the cloud's default region
    other_region_prices: tuple[tuple[str, float], ...] = ()
    price_source: str = "list price, verify"

    @property
    def price_region(self) -> str:
        return self.region or DEFAULT_REGIONS[self.cloud]

    @property
    def gpu_spec(self) -> GPU:
        return gpu(self.gpu)

    def catalog_prices(self) -> dict[str, float]:
        """Region -> catalog USD/hour."""
        prices = dict(self.other_region_prices)
        if self.price_per_hour is not None:
            prices[self.price_region] = self.price_per_hour
        return prices

    def describe(self) -> str:
        """`1x A10G 24 GB`."""
        return f"{self.gpu_count}x {self.gpu} {self.gpu_spec.memory_gb:g} GB"


_US_AWS = ("us-east-2", "us-west-2")  # same on-demand price as us-east-1 for these types


def _aws(name, gpu_name, count, vcpus, mem, price, source="list price, verify", same_in=_US_AWS):
    return Instance(
        name, "aws", gpu_name, count, vcpus, mem, price,
        other_region_prices=tuple((r, price) for r in same_in) if price is not None else (),
        price_source=source,
    )  # fmt: skip


def _cloud(cloud, name, gpu_name, count, vcpus, mem, price, source="list price, verify"):
    return Instance(name, cloud, gpu_name, count, vcpus, mem, price, price_source=source)


_NO_G6_PRICE = "the reference prices list none for SageMaker ml.g6, and the catalog invents none"

INSTANCES: dict[str, Instance] = {
    i.name: i
    for i in (
        # --- AWS SageMaker real-time inference (ml.*), us-east-1
        _aws("ml.g5.xlarge", "A10G", 1, 4, 16, 1.408),
        _aws("ml.g5.2xlarge", "A10G", 1, 8, 32, 1.515, "REFERENCE.md"),
        _aws("ml.g5.4xlarge", "A10G", 1, 16, 64, 2.03),
        _aws("ml.g5.8xlarge", "A10G", 1, 32, 128, 3.06),
        _aws("ml.g5.12xlarge", "A10G", 4, 48, 192, 7.09),
        _aws("ml.g5.16xlarge", "A10G", 1, 64, 256, 4.864),
        _aws("ml.g5.24xlarge", "A10G", 4, 96, 384, 10.18),
        _aws("ml.g5.48xlarge", "A10G", 8, 192, 768, 20.36),
        # ml.g6.* (L4): the aws stack accepts them (any SageMaker instance type), but the reference prices
        # (../shared/REFERENCE.md) have none for them: the plan says so, the stack asks for pricePerHour.
        *(_aws(f"ml.g6.{size}", "L4", gpus, vcpus, mem, None, _NO_G6_PRICE)
          for size, gpus, vcpus, mem in (("xlarge", 1, 4, 16), ("2xlarge", 1, 8, 32), ("4xlarge", 1, 16, 64),
                                         ("8xlarge", 1, 32, 128), ("12xlarge", 4, 48, 192), ("16xlarge", 1, 64, 256),
                                         ("24xlarge", 4, 96, 384), ("48xlarge", 8, 192, 768))),
        _aws("ml.p4d.24xlarge", "A100-40GB", 8, 96, 1152, 37.688),
        _aws("ml.p5.48xlarge", "H100", 8, 192, 2048, 113.068),
        # --- AWS EC2, us-east-1
        _aws("g5.xlarge", "A10G", 1, 4, 16, 1.006),
        _aws("g5.2xlarge", "A10G", 1, 8, 32, 1.212, "REFERENCE.md"),
        _aws("g5.4xlarge", "A10G", 1, 16, 64, 1.624),
        _aws("g5.8xlarge", "A10G", 1, 32, 128, 2.448),
        _aws("g5.12xlarge", "A10G", 4, 48, 192, 5.672),
        _aws("g5.16xlarge", "A10G", 1, 64, 256, 4.096),
        _aws("g5.24xlarge", "A10G", 4, 96, 384, 8.144),
        _aws("g5.48xlarge", "A10G", 8, 192, 768, 16.288),
        _aws("g6.xlarge", "L4", 1, 4, 16, 0.8048),
        _aws("g6.2xlarge", "L4", 1, 8, 32, 0.9776),
        _aws("g6.12xlarge", "L4", 4, 48, 192, 4.6016),
        _aws("g6.48xlarge", "L4", 8, 192, 768, 13.3504),
        _aws("p4d.24xlarge", "A100-40GB", 8, 96, 1152, 32.7726),
        _aws("p4de.24xlarge", "A100-80GB", 8, 96, 1152, 40.9657),
        _aws("p5.48xlarge", "H100", 8, 192, 2048, 55.04, "list price after the June 2025 cut, verify"),
        _aws("p5en.48xlarge", "H200", 8, 192, 2048, None, "no list price in the catalog"),
        # --- Azure VMs (Linux pay-as-you-go), eastus. NV*ads_A10_v5 sizes below 36 vCPU get a slice
        # of an A10 (GRID vGPU), not a whole GPU, so they are not listed.
        _cloud("azure", "Standard_NV36ads_A10_v5", "A10", 1, 36, 440, 3.20, "REFERENCE.md (~3.20)"),
        _cloud("azure", "Standard_NV36adms_A10_v5", "A10", 1, 36, 880, 3.60, "unconfirmed (REFERENCE.md: higher than NV36ads)"),
        _cloud("azure", "Standard_NV72ads_A10_v5", "A10", 2, 72, 880, 6.52),
        _cloud("azure", "Standard_NC24ads_A100_v4", "A100-80GB-PCIe", 1, 24, 220, 3.673),
        _cloud("azure", "Standard_NC48ads_A100_v4", "A100-80GB-PCIe", 2, 48, 440, 7.346),
        _cloud("azure", "Standard_NC96ads_A100_v4", "A100-80GB-PCIe", 4, 96, 880, 14.692),
        _cloud("azure", "Standard_ND96asr_v4", "A100-40GB", 8, 96, 900, 27.197),
        _cloud("azure", "Standard_ND96amsr_A100_v4", "A100-80GB", 8, 96, 1900, 32.77),
        _cloud("azure", "Standard_ND96isr_H100_v5", "H100", 8, 96, 1900, 98.32),
        _cloud("azure", "Standard_ND96isr_H200_v5", "H200", 8, 96, 1850, None, "no list price in the catalog"),
        # --- GCP Compute Engine, us-central1 (G2's L4 is priced into the machine type)
        _cloud("gcp", "g2-standard-4", "L4", 1, 4, 16, 0.7068),
        _cloud("gcp", "g2-standard-8", "L4", 1, 8, 32, 0.85, "REFERENCE.md (~0.85)"),
        _cloud("gcp", "g2-standard-12", "L4", 1, 12, 48, 1.0004),
        _cloud("gcp", "g2-standard-16", "L4", 1, 16, 64, 1.1472),
        _cloud("gcp", "g2-standard-24", "L4", 2, 24, 96, 2.0008),
        _cloud("gcp", "g2-standard-32", "L4", 1, 32, 128, 1.7344),
        _cloud("gcp", "g2-standard-48", "L4", 4, 48, 192, 4.0016),
        _cloud("gcp", "g2-standard-96", "L4", 8, 96, 384, 8.0033),
        _cloud("gcp", "a2-highgpu-1g", "A100-40GB", 1, 12, 85, 3.6733),
        _cloud("gcp", "a2-highgpu-2g", "A100-40GB", 2, 24, 170, 7.3465),
        _cloud("gcp", "a2-highgpu-4g", "A100-40GB", 4, 48, 340, 14.6930),
        _cloud("gcp", "a2-highgpu-8g", "A100-40GB", 8, 96, 680, 29.3861),
        _cloud("gcp", "a2-ultragpu-1g", "A100-80GB", 1, 12, 170, 5.0690),
        _cloud("gcp", "a2-ultragpu-8g", "A100-80GB", 8, 96, 1360, 40.5522),
        _cloud("gcp", "a3-highgpu-8g", "H100", 8, 208, 1872, 88.2488),
    )
}


class UnknownInstance(KeyError):
    def __init__(self, name: str, problem: str = ""):
        super().__init__(problem or f"unknown instance type {name!r}; known: {known_instances()}")

    def __str__(self) -> str:
        return str(self.args[0])


class UnknownPrice(UnknownInstance):
    """The instance (or region) has no catalog price: give one explicitly."""

    def __init__(self, name: str, region: str, known: Mapping[str, float]):
        where = f"; catalog regions: {', '.join(sorted(known))}" if known else ""
        super().__init__(
            name,
            f"no price for {name} in {region}{where}; give one with --price {name}=USD, "
            f"{PRICES_ENV}='{name}=USD' or a prices file ({PRICES_FILE_ENV})",
        )


def known_instances() -> str:
    """`aws: ml.g5.xlarge, ...; azure: ...; gcp: ...`, cheapest first within each cloud."""
    return "; ".join(f"{cloud}: {', '.join(i.name for i in instances_of(cloud))}" for cloud in DEFAULT_REGIONS)


def instance(name: str) -> Instance:
    try:
        return INSTANCES[name]
    except KeyError:
        raise UnknownInstance(name) from None


# What the stacks deploy: the aws stack SageMaker instances (ml.*; EC2 types are here for price comparisons
# only), the azure stack the whole-A10 NVadsA10 v5 sizes (components/azure_vllm_vm.py A10_V5_SIZES; tested
# equal), the gcp stack any GCP machine type here.
AZURE_VM_SIZES = ("Standard_NV36ads_A10_v5", "Standard_NV36adms_A10_v5", "Standard_NV72ads_A10_v5")


def deployable(instance: Instance) -> bool:
    """Whether a stack of this project can deploy `instance`."""
    if instance.cloud == "aws":
        return instance.name.startswith("ml.")
    if instance.cloud == "azure":
        return instance.name in AZURE_VM_SIZES
    return True


def instances_of(cloud: str, *, deployable_only: bool = False) -> list[Instance]:
    """One cloud's instance types, cheapest first (only what a stack deploys, with `deployable_only`)."""
    return sorted(
        (i for i in INSTANCES.values() if i.cloud == cloud and (deployable(i) or not deployable_only)),
        key=lambda i: (i.price_per_hour is None, i.price_per_hour or 0.0, i.name),
    )


# ------------------------------------------------------------------------------------------- prices

PriceTable = Mapping[str, "float | Mapping[str, float]"]


class BadPrices(ValueError):
    """A price override that cannot be read."""


def hourly_price(
    name: str,
    region: str | None = None,
    *,
    overrides: PriceTable | None = None,
    prices_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> float:
    """On-demand USD/hour of one `name` instance in `region` (default: its cloud's default region).

    Looks at, in order: `overrides`, `LLMINFER_PRICES`, the prices file (`prices_file` or
    `LLMINFER_PRICES_FILE`), then the catalog. Raises `UnknownInstance` for a type nobody priced and
    `UnknownPrice` (a subclass) for a known type without a price in that region.
    """
    environ = os.environ if environ is None else environ
    known = INSTANCES.get(name)
    wanted = region or (known.price_region if known else None)
    file_name = prices_file or environ.get(PRICES_FILE_ENV) or None
    tables: list[tuple[str, PriceTable]] = []
    if overrides:
        tables.append(("argument", overrides))
    if environ.get(PRICES_ENV, "").strip():
        tables.append((PRICES_ENV, parse_price_pairs(environ[PRICES_ENV], source=PRICES_ENV)))
    if file_name:
        tables.append((str(file_name), load_prices_file(file_name)))
    for source, table in tables:
        price = _lookup(table, name, wanted, source)
        if price is not None:
            return price
    if known is None:
        raise UnknownInstance(
            name,
            f"unknown instance type {name!r}: give its price with --price {name}=USD, "
            f"{PRICES_ENV} or a prices file ({PRICES_FILE_ENV}); known: {known_instances()}",
        )
    catalog = known.catalog_prices()
    if wanted in catalog:
        return catalog[wanted]
    raise UnknownPrice(name, wanted or "", catalog)


def _lookup(table: PriceTable, name: str, region: str | None, source: str) -> float | None:
    entry = table.get(name)
    if entry is None:
        return None
    if not isinstance(entry, Mapping):
        return _price_value(entry, f"{source}: {name}")
    if region is None or region not in entry:
        return None
    return _price_value(entry[region], f"{source}: {name} in {region}")


def _price_value(value: object, what: str) -> float:
    try:
        price = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise BadPrices(f"{what}: price {value!r} is not a number (USD per hour)") from None
    if not math.isfinite(price) or price <= 0:
        raise BadPrices(f"{what}: price {value!r} must be a positive number of USD per hour")
    return price


def parse_price_pairs(text: str, *, source: str = "--price") -> dict[str, float]:
    """`"ml.g5.2xlarge=1.6,g2-standard-8=0.9"` -> {name: USD/hour}."""
    prices: dict[str, float] = {}
    for part in re.split(r"[,\s]+", text.strip()):
        if not part:
            continue
        name, sep, value = part.partition("=")
        if not sep or not name:
            raise BadPrices(f"{source}: {part!r} is not INSTANCE=USD_PER_HOUR (e.g. ml.g5.2xlarge=1.515)")
        prices[name] = _price_value(value, f"{source}: {name}")
    return prices


def load_prices_file(path: str | Path) -> dict[str, float | dict[str, float]]:
    """A JSON/YAML mapping of instance -> USD/hour, or instance -> {region: USD/hour}."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise BadPrices(f"prices file {str(path)!r}: cannot read it ({err.strerror or err})") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml  # only here: the catalog stays import-light

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as err:  # noqa: BLE001 - any parse error becomes one clear message
        kind = "YAML" if path.suffix.lower() in (".yaml", ".yml") else "JSON"
        raise BadPrices(f"prices file {str(path)!r}: not valid {kind}: {err}") from None
    if not isinstance(data, Mapping):
        raise BadPrices(f"prices file {str(path)!r}: must map instance types to USD/hour, got {type(data).__name__}")
    table: dict[str, float | dict[str, float]] = {}
    for name, entry in data.items():
        where = f"prices file {str(path)!r}: {name}"
        if isinstance(entry, Mapping):
            table[str(name)] = {str(r): _price_value(v, f"{where} in {r}") for r, v in entry.items()}
        else:
            table[str(name)] = _price_value(entry, where)
    return table


# ------------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class Model:
    """A dense decoder-only transformer's shape (from its config.json)."""

    name: str
    hf_id: str  # the reference checkpoint
    layers: int
    hidden_size: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    intermediate_size: int  # gated MLP (gate, up, down)
    vocab_size: int
    max_context: int  # max_position_embeddings
    tied_embeddings: bool = False

    @property
    def linear_params(self) -> int:
        """Decoder weights in linear layers: what AWQ/GPTQ/FP8/INT8 quantize."""
        attention = self.hidden_size * self.head_dim * (2 * self.attention_heads + 2 * self.kv_heads)
        mlp = 3 * self.hidden_size * self.intermediate_size
        return self.layers * (attention + mlp)

    @property
    def embedding_params(self) -> int:
        """Token embedding plus LM head (once when tied): kept in 16 bits by the quantizations here."""
        table = self.vocab_size * self.hidden_size
        return table if self.tied_embeddings else 2 * table

    @property
    def norm_params(self) -> int:
        return (2 * self.layers + 1) * self.hidden_size

    @property
    def params(self) -> int:
        return self.linear_params + self.embedding_params + self.norm_params

    @property
    def matmul_params(self) -> int:
        """Weights each token multiplies through (linear layers + LM head): FLOPs/token = 2 x this."""
        return self.linear_params + self.vocab_size * self.hidden_size

    def kv_elements_per_token(self) -> int:
        """K and V for every layer: 2 x layers x kv_heads x head_dim."""
        return 2 * self.layers * self.kv_heads * self.head_dim


MODELS: dict[str, Model] = {
    m.name: m
    for m in (
        Model("llama-3.1-8b", "meta-llama/Llama-3.1-8B-Instruct", 32, 4096, 32, 8, 128, 14336, 128256, 131072),
        Model("llama-3.1-70b", "meta-llama/Llama-3.1-70B-Instruct", 80, 8192, 64, 8, 128, 28672, 128256, 131072),
        Model("llama-3.1-405b", "meta-llama/Llama-3.1-405B-Instruct", 126, 16384, 128, 8, 128, 53248, 128256, 131072),
        Model("llama-3.2-1b", "meta-llama/Llama-3.2-1B-Instruct", 16, 2048, 32, 8, 64, 8192, 128256, 131072, True),
        Model("llama-3.2-3b", "meta-llama/Llama-3.2-3B-Instruct", 28, 3072, 24, 8, 128, 8192, 128256, 131072, True),
        Model("llama-2-7b", "meta-llama/Llama-2-7b-chat-hf", 32, 4096, 32, 32, 128, 11008, 32000, 4096),
        Model("llama-2-13b", "meta-llama/Llama-2-13b-chat-hf", 40, 5120, 40, 40, 128, 13824, 32000, 4096),
        Model("llama-2-70b", "meta-llama/Llama-2-70b-chat-hf", 80, 8192, 64, 8, 128, 28672, 32000, 4096),
        Model("mistral-7b", "mistralai/Mistral-7B-Instruct-v0.3", 32, 4096, 32, 8, 128, 14336, 32768, 32768),
        Model("phi-3-mini-4k", "microsoft/Phi-3-mini-4k-instruct", 32, 3072, 32, 32, 96, 8192, 32064, 4096),
        Model("phi-3-mini-128k", "microsoft/Phi-3-mini-128k-instruct", 32, 3072, 32, 32, 96, 8192, 32064, 131072),
        Model("stablelm-3b", "stabilityai/stablelm-3b-4e1t", 32, 2560, 32, 32, 80, 6912, 50304, 4096),
        Model("qwen2.5-7b", "Qwen/Qwen2.5-7B-Instruct", 28, 3584, 28, 4, 128, 18944, 152064, 32768),
    )
}


class UnknownModel(KeyError):
    def __init__(self, name: str):
        super().__init__(
            f"unknown model {name!r}; known: {', '.join(MODELS)} "
            "(or a Hugging Face id of one of them, e.g. hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4)"
        )

    def __str__(self) -> str:
        return str(self.args[0])


def model(name: str) -> Model:
    try:
        return MODELS[name.lower()]
    except KeyError:
        raise UnknownModel(name) from None


# ------------------------------------------------------------------------------------ quantizations


@dataclass(frozen=True)
class Quantization:
    """How linear-layer weights are stored; embeddings and the LM head stay 16-bit."""

    name: str
    bytes_per_param: float  # linear-layer weights, including scales/zero points
    compute: str  # tensor-core path the matmuls run on: "fp16", "fp8" or "int8"
    layout: str


def _grouped(bits: int, group: int = 128) -> float:
    # Packed weights + per-group fp16 scale (2 bytes) + packed zero point of the same width.
    return bits / 8 + (2 + bits / 8) / group


QUANTIZATIONS: dict[str, Quantization] = {
    q.name: q
    for q in (
        Quantization("fp16", 2.0, "fp16", "16-bit weights"),
        Quantization("bf16", 2.0, "fp16", "16-bit weights"),
        # Per-channel/per-tensor scales: under 0.1% of the weights.
        Quantization("fp8", 1.0, "fp8", "8-bit float weights, per-channel scales (weight-only Marlin on Ampere)"),
        Quantization("int8", 1.0, "int8", "W8A8 int8, per-channel scales"),
        Quantization("gptq-int8", _grouped(8), "fp16", "8-bit GPTQ, group 128: fp16 scale + 8-bit zero per group"),
        Quantization("awq-int4", _grouped(4), "fp16", "4-bit AWQ, group 128: fp16 scale + 4-bit zero per group"),
        Quantization("gptq-int4", _grouped(4), "fp16", "4-bit GPTQ, group 128: fp16 scale + 4-bit zero per group"),
    )
}


class UnknownQuantization(KeyError):
    def __init__(self, name: str):
        super().__init__(f"unknown quantization {name!r}; known: {', '.join(QUANTIZATIONS)}")

    def __str__(self) -> str:
        return str(self.args[0])


def quantization(name: str) -> Quantization:
    try:
        return QUANTIZATIONS[name.lower()]
    except KeyError:
        raise UnknownQuantization(name) from None


@dataclass(frozen=True)
class ModelSpec:
    """A catalog model at a quantization, and how the id given was mapped to it."""

    model: Model
    quantization: Quantization
    requested: str

    @property
    def label(self) -> str:
        return f"{self.model.name} {self.quantization.name}"

    @property
    def weight_bytes(self) -> float:
        m, q = self.model, self.quantization
        return m.linear_params * q.bytes_per_param + (m.embedding_params + m.norm_params) * 2

    @property
    def kv_bytes_per_token(self) -> int:
        """At a 16-bit KV cache; see `kv_bytes_per_token_at`."""
        return self.kv_bytes_per_token_at(2)

    def kv_bytes_per_token_at(self, bytes_per_element: float) -> int:
        return int(self.model.kv_elements_per_token() * bytes_per_element)


# Exact ids whose mapping the name alone does not say (e.g. 16-bit checkpoints of other families).
HF_ALIASES: dict[str, tuple[str, str]] = {
    "hugging-quants/meta-llama-3.1-8b-instruct-awq-int4": ("llama-3.1-8b", "awq-int4"),
    "hugging-quants/meta-llama-3.1-70b-instruct-awq-int4": ("llama-3.1-70b", "awq-int4"),
    "hugging-quants/meta-llama-3.1-405b-instruct-awq-int4": ("llama-3.1-405b", "awq-int4"),
    "hugging-quants/meta-llama-3.1-8b-instruct-gptq-int4": ("llama-3.1-8b", "gptq-int4"),
    "hugging-quants/meta-llama-3.1-70b-instruct-gptq-int4": ("llama-3.1-70b", "gptq-int4"),
    "neuralmagic/meta-llama-3.1-8b-instruct-fp8": ("llama-3.1-8b", "fp8"),
    "neuralmagic/meta-llama-3.1-70b-instruct-fp8": ("llama-3.1-70b", "fp8"),
    "stabilityai/stablelm-zephyr-3b": ("stablelm-3b", "fp16"),
}

# Family patterns over the lower-cased repo name (after the owner). Deliberately strict: an id that
# merely mentions a family (a Nemotron or a distill of it) maps to nothing, and the fit check then
# lets it through rather than guessing its size.
_FAMILIES: tuple[tuple[str, str], ...] = (
    (r"(?:^|-)llama-?3\.1-(8|70|405)b(?:-|$)", "llama-3.1-{}b"),
    (r"(?:^|-)llama-?3\.2-(1|3)b(?:-|$)", "llama-3.2-{}b"),
    (r"(?:^|-)llama-?2-(7|13|70)b(?:-|$)", "llama-2-{}b"),
    (r"^mistral-7b(?:-|$)", "mistral-7b"),
    (r"^phi-3-mini-(4k|128k)(?:-|$)", "phi-3-mini-{}"),
    (r"^stablelm-(?:zephyr-)?3b(?:-|$)", "stablelm-3b"),
    (r"^qwen2\.5-7b(?:-|$)", "qwen2.5-7b"),
)
# Formats whose size this catalog does not model: no mapping rather than a wrong one.
_UNMODELLED = ("gguf", "exl2", "bnb", "nf4", "4bit", "8bit", "mlx", "onnx", "w4a8", "int2", "int3", "2bit", "3bit")


def _quantization_in(repo: str) -> str | None:
    tokens = set(re.split(r"[-_.]", repo))
    if "awq" in tokens:
        return "awq-int4"
    if "gptq" in tokens:
        return "gptq-int8" if tokens & {"int8", "8bit"} else "gptq-int4"
    if "w4a16" in tokens:
        return "gptq-int4"
    if "fp8" in tokens:
        return "fp8"
    if tokens & {"int8", "w8a8"}:
        return "int8"
    if any(marker in repo for marker in _UNMODELLED):
        return None
    return "fp16"


def resolve_model(model_id: str, quantization_name: str | None = None) -> ModelSpec | None:
    """Map a catalog name or a Hugging Face id to a `ModelSpec`; None when the catalog cannot tell.

    `quantization_name` overrides the quantization read from the id (e.g. an AWQ repo without
    "awq" in its name). Raises `UnknownQuantization` for a bad override.
    """
    override = quantization(quantization_name) if quantization_name else None
    key = model_id.strip().lower()
    if key in MODELS:
        return ModelSpec(MODELS[key], override or QUANTIZATIONS["fp16"], model_id)
    if key in HF_ALIASES:
        name, quant = HF_ALIASES[key]
        return ModelSpec(MODELS[name], override or QUANTIZATIONS[quant], model_id)
    repo = key.rsplit("/", 1)[-1].replace("_", "-")
    if repo.startswith("meta-"):
        repo = repo[len("meta-") :]
    for pattern, template in _FAMILIES:
        found = re.search(pattern, repo)
        if found:
            quant = override.name if override else _quantization_in(repo)
            if quant is None:
                return None
            return ModelSpec(MODELS[template.format(*found.groups())], QUANTIZATIONS[quant], model_id)
    return None


def require_model(model_id: str, quantization_name: str | None = None) -> ModelSpec:
    """`resolve_model`, raising `UnknownModel` (listing the known ones) when the id maps to nothing."""
    spec = resolve_model(model_id, quantization_name)
    if spec is None:
        raise UnknownModel(model_id)
    return spec
