"""Capacity and cost planner: does a model fit an instance, how fast can it go, what do 1k tokens cost.

`python -m bench plan --model ... --instance ...` prints, for each instance (by default the one each
cloud's stack deploys), the memory budget (weights + KV cache + overhead vs GPU memory x
gpu_memory_utilization), roofline estimates of decode and prefill at each concurrency, and the cost per
1k/1M output tokens at that throughput. Every estimate is printed with the inputs of its formula.

The same arithmetic backs the stacks' fit check (`check_fits`; `stacks.fit.check_stack_fit` reads the
stack's config), which refuses at preview time a model that cannot load, or a context its KV cache cannot hold.

Model of the engine (vLLM, tensor-parallel over every GPU of the instance):
- budget per GPU = visible memory x gpu_memory_utilization
- weights per GPU = weights / TP; KV per token per GPU = 2 x layers x ceil(kv_heads / TP) x head_dim x bytes
- activations per GPU = max_num_batched_tokens x (2 x intermediate / TP + 4 x hidden) x 2 bytes
  + max_batch_size x vocab x 8 bytes (fp32 logits and probabilities of the sampler)
- KV budget = budget - weights - activations - runtime overhead (CUDA context, cuBLAS/NCCL workspaces)
- decode step = max((weights + batch x context x KV per token) / bandwidth, batch x FLOPs per token / compute)
- prefill = max(2 x matmul params x prompt + 2 x layers x heads x head_dim x prompt^2 FLOPs / compute,
  weights / bandwidth)
Estimates are roofline bounds at `--bandwidth-efficiency`/`--compute-efficiency` of peak (default 1.0):
real engines land below them; `python -m bench recommend` reports measured vs predicted, and the
ratio is the efficiency to plan with next time.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import textwrap
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from planning import catalog
from planning.catalog import GB, Instance, ModelSpec

DEFAULT_MODEL_ID = "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4"
KV_BLOCK_TOKENS = 16  # vLLM allocates the KV cache in blocks of 16 tokens
KV_CACHE_DTYPES = {"auto": 2.0, "fp16": 2.0, "bf16": 2.0, "fp8": 1.0}


@dataclass(frozen=True)
class Engine:
    """The serving engine's memory settings (vLLM names in comments)."""

    max_model_len: int = 8192  # --max-model-len
    max_batch_size: int = 64  # --max-num-seqs
    gpu_memory_utilization: float = 0.9  # --gpu-memory-utilization
    kv_cache_dtype: str = "auto"  # --kv-cache-dtype; auto = 16-bit
    max_num_batched_tokens: int = 2048  # --max-num-batched-tokens (chunked-prefill budget per step)
    overhead_gb: float = 1.0  # per GPU, inside the budget: CUDA context, cuBLAS and NCCL workspaces

    @property
    def kv_bytes_per_element(self) -> float:
        return KV_CACHE_DTYPES[self.kv_cache_dtype]

    def validate(self) -> None:
        _positive_int("max_model_len", self.max_model_len)
        _positive_int("max_batch_size", self.max_batch_size)
        _positive_int("max_num_batched_tokens", self.max_num_batched_tokens)
        if not (isinstance(self.gpu_memory_utilization, int | float) and 0 < self.gpu_memory_utilization <= 1):
            raise PlanError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization!r}")
        if not (isinstance(self.overhead_gb, int | float) and self.overhead_gb >= 0):
            raise PlanError(f"overhead_gb must be >= 0, got {self.overhead_gb!r}")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise PlanError(f"kv_cache_dtype {self.kv_cache_dtype!r} is not one of: {', '.join(KV_CACHE_DTYPES)}")


class PlanError(ValueError):
    """A planner input that cannot work."""


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PlanError(f"{name} must be a positive whole number, got {value!r}")


# ------------------------------------------------------------------------------------------- memory


@dataclass(frozen=True)
class MemoryPlan:
    """Where one GPU's memory goes, and what that allows."""

    spec: ModelSpec
    instance: Instance
    engine: Engine
    tensor_parallel: int
    visible_bytes: float  # per GPU
    budget_bytes: float  # per GPU, visible x utilization
    weight_bytes: float  # per GPU
    activation_bytes: float  # per GPU
    overhead_bytes: float  # per GPU
    kv_budget_bytes: float  # per GPU, what is left for the KV cache (may be negative)
    kv_bytes_per_token: float  # per GPU
    kv_capacity_tokens: int  # whole blocks, across the batch
    problem: str | None = None  # why it cannot serve; None when it fits
    problem_field: str | None = None  # "model" | "max_model_len"
    warnings: tuple[str, ...] = ()

    @property
    def fits(self) -> bool:
        return self.problem is None

    @property
    def max_sequences_at_context(self) -> int:
        """Sequences of max_model_len tokens the KV cache holds at once (vLLM's "maximum concurrency")."""
        return self.max_sequences_at(self.engine.max_model_len)

    def max_sequences_at(self, tokens: int) -> int:
        """Sequences of `tokens` tokens the KV cache holds at once: each takes whole blocks, as vLLM allocates."""
        blocks_per_sequence = max(1, math.ceil(tokens / KV_BLOCK_TOKENS))
        return max(0, self.kv_capacity_tokens // KV_BLOCK_TOKENS // blocks_per_sequence)

    @property
    def largest_context(self) -> int:
        """The longest max_model_len one sequence's KV cache fits in (capped at the model's context)."""
        return max(0, min(self.kv_capacity_tokens, self.spec.model.max_context))

    def describe_hardware(self) -> str:
        """`ml.g5.2xlarge has 1x A10G 24 GB (24.1 GB visible, 21.7 GB usable at 0.9)`."""
        inst, util = self.instance, self.engine.gpu_memory_utilization
        per = " per GPU" if inst.gpu_count > 1 else ""
        return (
            f"{inst.name} has {inst.describe()} ({_gb(self.visible_bytes)} visible, "
            f"{_gb(self.budget_bytes)} usable at {util:g}{per})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "instance": self.instance.name,
            "gpu": self.instance.gpu,
            "gpu_count": self.instance.gpu_count,
            "tensor_parallel": self.tensor_parallel,
            "per_gpu": {
                "visible_gb": _r(self.visible_bytes / GB),
                "gpu_memory_utilization": self.engine.gpu_memory_utilization,
                "budget_gb": _r(self.budget_bytes / GB),
                "weights_gb": _r(self.weight_bytes / GB),
                "activations_gb": _r(self.activation_bytes / GB),
                "overhead_gb": _r(self.overhead_bytes / GB),
                "kv_cache_gb": _r(self.kv_budget_bytes / GB),
                "kv_bytes_per_token": self.kv_bytes_per_token,
            },
            "kv_capacity_tokens": self.kv_capacity_tokens,
            "max_model_len": self.engine.max_model_len,
            "max_sequences_at_max_model_len": self.max_sequences_at_context,
            "largest_max_model_len": self.largest_context,
            "fits": self.fits,
            "problem": self.problem,
            "problem_field": self.problem_field,
            "warnings": list(self.warnings),
            "formula": {
                "budget": "visible x gpu_memory_utilization",
                "kv_cache": "budget - weights - activations - overhead",
                "kv_bytes_per_token": "2 x layers x ceil(kv_heads / TP) x head_dim x kv bytes",
                "activations": "max_num_batched_tokens x (2 x intermediate / TP + 4 x hidden) x 2"
                " + max_batch_size x vocab x 8",
            },
        }


def plan_memory(spec: ModelSpec, instance: Instance, engine: Engine) -> MemoryPlan:
    engine.validate()
    model, gpu = spec.model, instance.gpu_spec
    tp = instance.gpu_count
    visible = float(gpu.visible_memory_bytes)
    budget = visible * engine.gpu_memory_utilization
    weights = spec.weight_bytes / tp
    kv_heads_per_gpu = math.ceil(model.kv_heads / tp)
    kv_per_token = 2 * model.layers * kv_heads_per_gpu * model.head_dim * engine.kv_bytes_per_element
    activations = (
        engine.max_num_batched_tokens * (2 * model.intermediate_size / tp + 4 * model.hidden_size) * 2
        + engine.max_batch_size * model.vocab_size * 8
    )
    overhead = engine.overhead_gb * GB
    kv_budget = budget - weights - activations - overhead
    blocks = int(kv_budget // (kv_per_token * KV_BLOCK_TOKENS)) if kv_budget > 0 else 0
    plan = MemoryPlan(
        spec=spec,
        instance=instance,
        engine=engine,
        tensor_parallel=tp,
        visible_bytes=visible,
        budget_bytes=budget,
        weight_bytes=weights,
        activation_bytes=activations,
        overhead_bytes=overhead,
        kv_budget_bytes=kv_budget,
        kv_bytes_per_token=kv_per_token,
        kv_capacity_tokens=blocks * KV_BLOCK_TOKENS,
    )
    problem, problem_field = _problem(plan)
    return replace(plan, problem=problem, problem_field=problem_field, warnings=tuple(_warnings(plan, problem)))


def _problem(plan: MemoryPlan) -> tuple[str | None, str | None]:
    spec, engine, model = plan.spec, plan.engine, plan.spec.model
    tp = plan.tensor_parallel
    if model.attention_heads % tp:
        return (
            f"{model.name} has {model.attention_heads} attention heads, which {tp} GPUs "
            f"({plan.instance.name}) cannot split evenly for tensor parallelism",
            "model",
        )
    if engine.max_model_len > model.max_context:
        return (
            f"{model.name} supports at most {model.max_context:,} tokens of context, "
            f"max_model_len is {engine.max_model_len:,}",
            "max_model_len",
        )
    if plan.weight_bytes >= plan.budget_bytes:
        if tp > 1:
            need = f"needs {_gb(spec.weight_bytes)} of weights ({_gb(plan.weight_bytes)} per GPU at TP {tp})"
        else:
            need = f"needs {_gb(spec.weight_bytes)} of weights"
        return f"{spec.label} {need}; {plan.describe_hardware()}", "model"
    if plan.kv_capacity_tokens < engine.max_model_len:
        need = engine.max_model_len * plan.kv_bytes_per_token
        left = max(0.0, plan.kv_budget_bytes)
        return (
            f"{spec.label}: the KV cache of one {engine.max_model_len:,}-token sequence needs {_gb(need)}"
            f"{' per GPU' if tp > 1 else ''}, but {plan.instance.name} has {_gb(left)} left for it after "
            f"{_gb(plan.weight_bytes)} of weights, {_gb(plan.activation_bytes)} of activations and "
            f"{_gb(plan.overhead_bytes)} of overhead ({_gb(plan.budget_bytes)} usable at "
            f"{engine.gpu_memory_utilization:g})",
            "max_model_len",
        )
    return None, None


def _warnings(plan: MemoryPlan, problem: str | None) -> list[str]:
    if problem:
        return []
    out = []
    at_context = plan.max_sequences_at_context
    if at_context < plan.engine.max_batch_size:
        out.append(
            f"the KV cache holds {at_context} full {plan.engine.max_model_len:,}-token sequences, fewer than "
            f"max_batch_size {plan.engine.max_batch_size}: the batch reaches {plan.engine.max_batch_size} only "
            "while sequences are shorter (vLLM preempts when they grow)"
        )
    return out


# ----------------------------------------------------------------------------------------- roofline


@dataclass(frozen=True)
class Workload:
    # The project's one default workload: the bench's (--prompt-tokens 128 --max-tokens 64), the planner's and
    # recommend's (tests/planning/test_planner.py holds them equal); the CPU demo's is smaller, and says why.
    prompt_tokens: int = 128
    output_tokens: int = 64
    concurrency: int = 1

    def validate(self) -> None:
        _positive_int("prompt_tokens", self.prompt_tokens)
        _positive_int("output_tokens", self.output_tokens)
        _positive_int("concurrency", self.concurrency)


@dataclass(frozen=True)
class Efficiency:
    """Fractions of peak a real engine reaches; 1.0 is the pure roofline."""

    bandwidth: float = 1.0
    compute: float = 1.0

    def validate(self) -> None:
        for name, value in (("bandwidth_efficiency", self.bandwidth), ("compute_efficiency", self.compute)):
            if not (isinstance(value, int | float) and 0 < value <= 1):
                raise PlanError(f"{name} must be in (0, 1], got {value!r}")


@dataclass(frozen=True)
class Estimate:
    """Roofline estimate of one workload on one instance, with its formula inputs."""

    instance: str
    concurrency: int
    batch: int  # sequences decoded together
    batch_limit: str  # what capped the batch: concurrency | max_batch_size | kv_cache
    prompt_tokens: int
    output_tokens: int
    # inputs (per GPU)
    weights_gb: float
    kv_read_gb: float  # KV read per decode step
    bandwidth_gb_s: float  # peak x efficiency
    compute_tflops: float  # peak x efficiency, on the quantization's tensor-core path
    compute_path: str
    decode_gflop_per_token: float
    prefill_tflop: float
    # results
    step_ms: float  # one decode step of the batch, no prefill
    bound: str  # memory | compute (of the decode step)
    ttft_ms: float
    tpot_ms: float
    e2e_ms: float
    queue_ms: float  # wait for a free batch slot when concurrency > batch
    tokens_per_s_per_sequence: float
    output_tokens_per_s: float
    requests_per_s: float
    price_per_hour: float | None
    cost_per_1k_tokens_usd: float | None
    cost_per_1m_tokens_usd: float | None
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {k: (_r(v) if isinstance(v, float) else v) for k, v in asdict(self).items()}
        out["formula"] = {
            "step_ms": "max((weights_gb + kv_read_gb) / bandwidth_gb_s, batch x decode_gflop_per_token / compute)",
            "kv_read_gb": "batch x (prompt + output / 2) x kv_bytes_per_token",
            "ttft_ms": "max((prefill + (batch - 1) decode FLOPs) / compute, (weights + KV) / bandwidth) + queue_ms",
            "tpot_ms": "step with each sequence's prefill spread over its output tokens",
            "e2e_ms": "ttft_ms + (output - 1) x tpot_ms",
            "output_tokens_per_s": "batch x output / (e2e_ms - queue_ms)",
            "cost_per_1k_tokens_usd": "price_per_hour / (output_tokens_per_s x 3600) x 1000",
        }
        return out


def cost_per_1k_tokens(price_per_hour: float, tokens_per_s: float) -> float:
    """USD per 1,000 tokens at a sustained rate: $/h / (tok/s x 3600) x 1000."""
    if price_per_hour < 0 or tokens_per_s <= 0:
        raise PlanError(f"cost needs a price >= 0 and a throughput > 0, got {price_per_hour!r}, {tokens_per_s!r}")
    return price_per_hour / (tokens_per_s * 3600) * 1000


def estimate(
    memory: MemoryPlan,
    workload: Workload,
    *,
    efficiency: Efficiency = Efficiency(),
    price_per_hour: float | None = None,
) -> Estimate:
    workload.validate()
    efficiency.validate()
    spec, model, gpu = memory.spec, memory.spec.model, memory.instance.gpu_spec
    tp = memory.tensor_parallel
    prompt, output, concurrency = workload.prompt_tokens, workload.output_tokens, workload.concurrency
    bandwidth = gpu.bandwidth_gb_s * GB * efficiency.bandwidth
    path = spec.quantization.compute
    peak = {"fp16": gpu.fp16_tflops, "int8": gpu.int8_tops, "fp8": gpu.fp8_tflops}[path]
    if peak is None:  # no FP8 tensor cores (Ampere): vLLM runs FP8 weight-only, matmuls in 16 bits
        path, peak = "fp16", gpu.fp16_tflops
    compute = peak * 1e12 * efficiency.compute

    limits = {
        "concurrency": concurrency,
        "max_batch_size": memory.engine.max_batch_size,
        "kv_cache": memory.max_sequences_at(prompt + output),
    }
    batch_limit = min(limits, key=lambda k: limits[k])
    batch = limits[batch_limit]
    context = prompt + output / 2  # mean context length over the decode
    attention_per_token = 4 * model.layers * model.attention_heads * model.head_dim / tp  # FLOPs per context token
    decode_flops = 2 * model.matmul_params / tp + attention_per_token * context
    prefill_flops = (
        2 * model.linear_params * prompt + 2 * model.vocab_size * model.hidden_size
    ) / tp + attention_per_token * prompt * prompt / 2
    weights = memory.weight_bytes
    kv_token = memory.kv_bytes_per_token
    base = dict(
        instance=memory.instance.name,
        concurrency=concurrency,
        prompt_tokens=prompt,
        output_tokens=output,
        weights_gb=weights / GB,
        bandwidth_gb_s=bandwidth / GB,
        compute_tflops=compute / 1e12,
        compute_path=path,
        decode_gflop_per_token=decode_flops / 1e9,
        prefill_tflop=prefill_flops / 1e12,
        price_per_hour=price_per_hour,
    )
    problem = memory.problem
    if problem is None and batch == 0:
        problem = f"one sequence of {prompt + output:,} tokens does not fit the KV cache"
    if problem is not None:
        nan = math.nan
        return Estimate(
            **base, batch=0, batch_limit=batch_limit, kv_read_gb=nan, step_ms=nan, bound="-", ttft_ms=nan,
            tpot_ms=nan, e2e_ms=nan, queue_ms=nan, tokens_per_s_per_sequence=nan, output_tokens_per_s=nan,
            requests_per_s=nan, cost_per_1k_tokens_usd=None, cost_per_1m_tokens_usd=None, problem=problem,
        )  # fmt: skip

    kv_read = batch * context * kv_token
    step_memory = (weights + kv_read) / bandwidth
    step_compute = batch * decode_flops / compute
    step = max(step_memory, step_compute)
    # The step that runs this request's prefill also decodes the rest of the batch.
    ttft = max(
        (prefill_flops + (batch - 1) * decode_flops) / compute,
        (weights + (batch - 1) * context * kv_token + prompt * kv_token) / bandwidth,
    )
    # In steady state every sequence's prefill is spread over its output tokens' steps.
    tpot = max(step_memory, batch * (prefill_flops + (output - 1) * decode_flops) / output / compute)
    e2e = ttft + (output - 1) * tpot
    tokens_per_s = batch * output / e2e
    # Little's law: with `concurrency` requests in the system and `batch` served, the rest wait.
    queue = (concurrency - batch) * e2e / batch
    cost_1k = cost_per_1k_tokens(price_per_hour, tokens_per_s) if price_per_hour is not None else None
    return Estimate(
        **base,
        batch=batch,
        batch_limit=batch_limit,
        kv_read_gb=kv_read / GB,
        step_ms=step * 1000,
        bound="memory" if step_memory >= step_compute else "compute",
        ttft_ms=(ttft + queue) * 1000,
        tpot_ms=tpot * 1000,
        e2e_ms=(e2e + queue) * 1000,
        queue_ms=queue * 1000,
        tokens_per_s_per_sequence=1 / tpot,
        output_tokens_per_s=tokens_per_s,
        requests_per_s=batch / e2e,
        cost_per_1k_tokens_usd=cost_1k,
        cost_per_1m_tokens_usd=cost_1k * 1000 if cost_1k is not None else None,
    )


# ---------------------------------------------------------------------------------------- fit check


class ModelDoesNotFit(ValueError):
    """The model cannot be served on the instance with these settings; `field` names the culprit.

    Carries the fixes the catalog can name: `largest_context` (a max_model_len that fits, 0 if none),
    `four_bit` (a 4-bit AWQ version of a 16-bit model, when that fits the same instance) and `bigger`
    (the cheapest instance type of the same cloud and kind that fits).
    """

    def __init__(self, field: str, plan: MemoryPlan):
        self.field = field  # "model" | "max_model_len"
        self.plan = plan
        self.problem = plan.problem or ""
        model = plan.spec.model
        self.largest_context = plan.largest_context if field == "max_model_len" else 0
        self.four_bit: MemoryPlan | None = None
        if field == "model" and plan.spec.quantization.name in ("fp16", "bf16"):
            smaller = replace(plan.spec, quantization=catalog.quantization("awq-int4"))
            candidate = plan_memory(smaller, plan.instance, plan.engine)
            self.four_bit = candidate if candidate.fits else None
        beyond_model = plan.engine.max_model_len > model.max_context
        self.bigger = None if beyond_model else cheapest_fitting(plan.spec, plan.engine, like=plan.instance)
        super().__init__(f"{self.problem}; {self.suggestion()}" if self.suggestion() else self.problem)

    def suggestion(self, max_model_len: str = "max_model_len", instance_key: str = "") -> str:
        hints = []
        if self.largest_context:
            hints.append(f"lower {max_model_len} to {self.largest_context:,} or less")
        if self.four_bit is not None:
            hints.append(
                f"serve a 4-bit AWQ checkpoint of it ({_gb(self.four_bit.spec.weight_bytes)} of weights fits "
                f"{self.plan.instance.name})"
            )
        if self.bigger is not None:
            price = f", ${self.bigger.price_per_hour:g}/h" if self.bigger.price_per_hour else ""
            where = f" with `pulumi config set {instance_key} {self.bigger.name}`" if instance_key else ""
            hints.append(
                f"move to the cheapest {self.bigger.cloud} instance type that fits, {self.bigger.name} "
                f"({self.bigger.describe()}{price}){where}"
            )
        return " or ".join(hints)


def check_fits(
    model_id: str,
    instance_type: str,
    max_model_len: int,
    max_batch_size: int,
    gpu_memory_utilization: float,
    quantization: str | None = None,
    *,
    catalog_model: str | None = None,
) -> MemoryPlan | None:
    """Raise `ModelDoesNotFit` when vLLM could not serve `model_id` on `instance_type`.

    Returns the memory plan when it fits, and None (no opinion) when the catalog cannot size the model
    (a custom id it cannot map) or does not know the instance type: a check must not block what it
    cannot judge. `catalog_model` names the catalog model to size a custom `model_id` as.
    """
    if catalog_model:
        spec = catalog.require_model(catalog_model, quantization)
    else:
        spec = catalog.resolve_model(model_id, quantization)
    instance = catalog.INSTANCES.get(instance_type)
    if spec is None or instance is None:
        return None
    engine = Engine(
        max_model_len=max_model_len,
        max_batch_size=max_batch_size,
        gpu_memory_utilization=gpu_memory_utilization,
    )
    plan = plan_memory(spec, instance, engine)
    if plan.fits:
        return plan
    raise ModelDoesNotFit(plan.problem_field or "model", plan)


def cheapest_fitting(
    spec: ModelSpec, engine: Engine, *, like: Instance, among: Collection[str] | None = None
) -> Instance | None:
    """The cheapest catalog instance of `like`'s cloud and kind (SageMaker ml.* or not) that fits.

    `among` limits the candidates to those names (the types a stack accepts).
    """
    sagemaker = like.name.startswith("ml.")
    for candidate in catalog.instances_of(like.cloud):
        if candidate.name.startswith("ml.") != sagemaker or candidate.price_per_hour is None:
            continue
        if among is not None and candidate.name not in among:
            continue
        if plan_memory(spec, candidate, engine).fits:
            return candidate
    return None


# ---------------------------------------------------------------------------------------------- CLI


@dataclass
class Plan:
    """Everything `bench plan` computed, for rendering."""

    spec: ModelSpec
    engine: Engine
    efficiency: Efficiency
    workloads: list[Workload]
    memory: list[MemoryPlan] = field(default_factory=list)
    estimates: list[Estimate] = field(default_factory=list)
    prices: dict[str, float | None] = field(default_factory=dict)
    price_notes: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        spec, model = self.spec, self.spec.model
        return {
            "model": {
                "requested": spec.requested,
                "catalog_model": model.name,
                "quantization": spec.quantization.name,
                "params": model.params,
                "linear_params": model.linear_params,
                "embedding_params": model.embedding_params,
                "layers": model.layers,
                "hidden_size": model.hidden_size,
                "attention_heads": model.attention_heads,
                "kv_heads": model.kv_heads,
                "head_dim": model.head_dim,
                "vocab_size": model.vocab_size,
                "max_context": model.max_context,
                "bytes_per_param": spec.quantization.bytes_per_param,
                "weights_gb": _r(spec.weight_bytes / GB),
                "kv_bytes_per_token": spec.kv_bytes_per_token_at(self.engine.kv_bytes_per_element),
                "formula": {
                    "weights": "linear_params x bytes_per_param + (embedding_params + norms) x 2",
                    "kv_bytes_per_token": "2 x layers x kv_heads x head_dim x kv bytes",
                },
            },
            "engine": asdict(self.engine),
            "efficiency": asdict(self.efficiency),
            "instances": [
                {
                    **m.to_dict(),
                    "price_per_hour": self.prices.get(m.instance.name),
                    "price_note": self.price_notes.get(m.instance.name),
                    "estimates": [e.to_dict() for e in self.estimates if e.instance == m.instance.name],
                }
                for m in self.memory
            ],
        }


def build_plan(
    spec: ModelSpec,
    instances: Sequence[Instance],
    engine: Engine,
    workloads: Sequence[Workload],
    *,
    efficiency: Efficiency = Efficiency(),
    regions: Mapping[str, str] | None = None,
    price_overrides: Mapping[str, float] | None = None,
    prices_file: str | None = None,
) -> Plan:
    plan = Plan(spec, engine, efficiency, list(workloads))
    for inst in instances:
        region = _region_for(regions, inst.cloud)
        try:
            price: float | None = catalog.hourly_price(
                inst.name, region, overrides=price_overrides, prices_file=prices_file
            )
            plan.price_notes[inst.name] = f"{region or inst.price_region}"
        except catalog.UnknownInstance as err:  # no price: estimates still stand, cost is unknown
            price = None
            why = f" ({inst.price_source})" if inst.price_source and inst.price_per_hour is None else ""
            plan.price_notes[inst.name] = f"{err}{why}"
        plan.prices[inst.name] = price
        memory = plan_memory(spec, inst, engine)
        plan.memory.append(memory)
        for workload in workloads:
            plan.estimates.append(estimate(memory, workload, efficiency=efficiency, price_per_hour=price))
    return plan


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (exit 2) instead of usage + message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _arg_positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {value}")
    return value


def _arg_positive_ints(text: str) -> list[int]:
    return [_arg_positive_int(part) for part in text.split(",") if part.strip()]


def _arg_fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value:g}")
    return value


def _arg_non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


DEFAULT_LEVELS = (6, 12, 24, 32)  # the bench's default --concurrency
PLAN_WIDTH = 120  # columns the plan fits when not on a terminal (and tables keep to on one)


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m bench plan",
        description="Will a model fit an instance, how fast can it serve, and what does 1k tokens cost.",
        epilog="Estimates are roofline bounds (peak bandwidth/compute x efficiency); see docs/planner.md.",
    )
    p.add_argument("--model", default=DEFAULT_MODEL_ID,
                   help=f"catalog name ({', '.join(catalog.MODELS)}) or Hugging Face id (default: %(default)s)")
    p.add_argument("--quantization", choices=list(catalog.QUANTIZATIONS),
                   help="override the quantization read from the model id")
    p.add_argument("--instance", action="append", metavar="TYPE",
                   help="instance type (repeatable or comma-separated), a cloud (aws, azure, gcp: all its types) "
                   f"or all (what the stacks deploy); default: the stacks' {', '.join(catalog.STACK_INSTANCES.values())}")
    p.add_argument("--max-model-len", type=_arg_positive_int, default=Engine.max_model_len)
    p.add_argument("--max-batch-size", type=_arg_positive_int, default=Engine.max_batch_size,
                   help="most sequences batched at once (vLLM max_num_seqs)")
    p.add_argument("--gpu-memory-utilization", type=_arg_fraction, default=Engine.gpu_memory_utilization)
    p.add_argument("--kv-cache-dtype", choices=list(KV_CACHE_DTYPES), default=Engine.kv_cache_dtype)
    p.add_argument("--max-num-batched-tokens", type=_arg_positive_int, default=Engine.max_num_batched_tokens)
    p.add_argument("--overhead-gb", type=_arg_non_negative, default=Engine.overhead_gb,
                   help="per-GPU memory outside weights, KV and activations (default: %(default)s)")
    p.add_argument("--concurrency", type=_arg_positive_ints, default=list(DEFAULT_LEVELS),
                   help=f"concurrent requests, comma-separated (default: the bench's {','.join(map(str, DEFAULT_LEVELS))})")
    p.add_argument("--prompt-tokens", type=_arg_positive_int, default=Workload.prompt_tokens)
    p.add_argument("--output-tokens", type=_arg_positive_int, default=Workload.output_tokens)
    p.add_argument("--bandwidth-efficiency", type=_arg_fraction, default=1.0,
                   help="fraction of peak memory bandwidth reached (default 1.0: roofline)")
    p.add_argument("--compute-efficiency", type=_arg_fraction, default=1.0,
                   help="fraction of peak tensor throughput reached (default 1.0: roofline)")
    p.add_argument("--region", action="append", metavar="[CLOUD=]REGION", default=[],
                   help="price region, e.g. aws=us-west-2 (default: us-east-1, eastus, us-central1)")
    p.add_argument("--price", action="append", metavar="TYPE=USD", default=[],
                   help=f"hourly price override (also {catalog.PRICES_ENV})")
    p.add_argument("--prices-file", help=f"JSON/YAML prices file (also {catalog.PRICES_FILE_ENV})")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    # Self-host or buy tokens (planning/breakeven.py).
    p.add_argument("--api-price", metavar="IN,OUT",
                   help="a hosted API's USD per 1M input,output tokens: adds the break-even against it")
    p.add_argument("--utilization", type=_arg_fraction, default=0.5,
                   help="share of the hour the instance runs at full load, for $ per 1M tokens (default 0.5)")
    p.add_argument("--from", dest="from_results", metavar="RESULTS",
                   help="a bench results directory: its measured throughput instead of the roofline")
    p.add_argument("--sagemaker-vpc", action="store_true",
                   help="SageMaker prices include sagemakerVpc's NAT gateway and interface endpoints (per hour)")
    return p


def _instances(selected: Sequence[str] | None) -> list[Instance]:
    names = [n.strip() for item in (selected or []) for n in item.split(",") if n.strip()]
    if not names:
        names = list(catalog.STACK_INSTANCES.values())
    out: list[Instance] = []
    for name in names:
        if name == "all":  # what the stacks deploy; name an EC2 type to see it
            group = sorted((i for i in catalog.INSTANCES.values() if catalog.deployable(i)), key=lambda i: (i.cloud, i.name))
        elif name in catalog.DEFAULT_REGIONS:
            group = catalog.instances_of(name, deployable_only=True)
        else:
            group = [catalog.instance(name)]
        out.extend(i for i in group if i not in out)
    return out


def _region_for(regions: Mapping[str, str] | None, cloud: str | None) -> str | None:
    """The --region an instance of `cloud` is priced in: its cloud's own (`aws=eu-west-1`), else the unqualified one."""
    regions = regions or {}
    return (regions.get(cloud) if cloud else None) or regions.get("*")


def _regions(values: Sequence[str]) -> dict[str, str]:
    regions: dict[str, str] = {}
    for value in values:
        cloud, sep, region = value.partition("=")
        if not sep:
            cloud, region = "*", value
        if cloud != "*" and cloud not in catalog.DEFAULT_REGIONS:
            raise PlanError(f"--region {value!r}: {cloud!r} is not one of: {', '.join(catalog.DEFAULT_REGIONS)}")
        if not region.strip():
            raise PlanError(f"--region {value!r}: the region is empty")
        regions[cloud] = region.strip()
    return regions


def main(argv: Sequence[str] | None = None) -> int:
    from planning import breakeven

    args = parser().parse_args(argv)
    try:
        api = breakeven.parse_api_price(args.api_price) if args.api_price else None
        if args.from_results:
            return _plan_from_results(args, api)
        spec = catalog.require_model(args.model, args.quantization)
        instances = _instances(args.instance)
        overrides: dict[str, float] = {}
        for pair in args.price:
            overrides.update(catalog.parse_price_pairs(pair))
        engine = Engine(
            max_model_len=args.max_model_len,
            max_batch_size=args.max_batch_size,
            gpu_memory_utilization=args.gpu_memory_utilization,
            kv_cache_dtype=args.kv_cache_dtype,
            max_num_batched_tokens=args.max_num_batched_tokens,
            overhead_gb=args.overhead_gb,
        )
        workloads = [Workload(args.prompt_tokens, args.output_tokens, c) for c in args.concurrency]
        if not workloads:
            raise PlanError("--concurrency needs at least one value")
        plan = build_plan(
            spec,
            instances,
            engine,
            workloads,
            efficiency=Efficiency(args.bandwidth_efficiency, args.compute_efficiency),
            regions=_regions(args.region),
            price_overrides=overrides,
            prices_file=args.prices_file,
        )
    except (KeyError, ValueError) as err:  # catalog look-ups, prices, plan inputs: one line each
        print(f"python -m bench plan: error: {err}", file=sys.stderr)
        return 2
    comparisons = breakeven.for_plan(plan, api, args.utilization, sagemaker_vpc=args.sagemaker_vpc)
    if args.json:
        out = plan.to_dict()
        out["break_even"] = {name: result.to_dict() for name, result in comparisons.items()}
        print(json.dumps(out, indent=2, default=_json_default))
    else:
        render(plan)
        print("\nSelf-host or buy tokens (one always-on instance, its best estimated throughput):")
        for name, result in comparisons.items():
            print("\n".join(_fit(line) for line in breakeven.lines(result, name)))
    return 0


def _plan_from_results(args: argparse.Namespace, api: Any) -> int:
    from planning import breakeven

    names = [n.strip() for item in (args.instance or []) for n in item.split(",") if n.strip()]
    if len(names) > 1:
        raise PlanError(f"--from takes one --instance (the type the run measured), got {', '.join(names)}")
    overrides: dict[str, float] = {}
    for pair in args.price:
        overrides.update(catalog.parse_price_pairs(pair))
    regions = _regions(args.region)
    known = catalog.INSTANCES.get(names[0]) if names else None  # a type the catalog lacks has no cloud: `*` only
    region = _region_for(regions, known.cloud if known else None)
    name, result = breakeven.from_results(
        args.from_results, instance=names[0] if names else None, price_overrides=overrides, api=api,
        utilization=args.utilization, region=region, prices_file=args.prices_file,
    )
    if args.json:
        print(json.dumps({"break_even": {name: result.to_dict()}}, indent=2, default=_json_default))
    else:
        print("\n".join(breakeven.lines(result, name)))
    return 0


# ------------------------------------------------------------------------------------------ tables


def render(plan: Plan, console: Any = None) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=min(PLAN_WIDTH, shutil.get_terminal_size().columns) if sys.stdout.isatty()
                                 else PLAN_WIDTH)
    spec, model, engine = plan.spec, plan.spec.model, plan.engine
    kv_token = spec.kv_bytes_per_token_at(engine.kv_bytes_per_element)
    console.print(
        f"[bold]{spec.label}[/bold] ({spec.requested}): {model.params / 1e9:.2f}B params "
        f"({model.linear_params / 1e9:.2f}B in linear layers x {spec.quantization.bytes_per_param:.4g} B "
        f"+ {(model.embedding_params + model.norm_params) / 1e9:.2f}B embeddings/norms x 2 B) = "
        f"[bold]{_gb(spec.weight_bytes)}[/bold] of weights"
    )
    console.print(
        f"KV cache per token: 2 x {model.layers} layers x {model.kv_heads} KV heads x {model.head_dim} dim "
        f"x {engine.kv_bytes_per_element:g} B = [bold]{kv_token:,} B[/bold] ({kv_token / 1024:g} KiB); "
        f"max_model_len {engine.max_model_len:,} (model max {model.max_context:,}), "
        f"max_batch_size {engine.max_batch_size}, gpu_memory_utilization {engine.gpu_memory_utilization:g}"
    )

    mem = Table(title=f"Memory per GPU (GB): budget = the GPU's visible memory x {engine.gpu_memory_utilization:g}; "
                      "KV cache = budget - weights - activations - other (--overhead-gb)",
                box=box.SIMPLE_HEAVY, title_justify="left", pad_edge=False)
    for col in ("instance", "GPUs", "budget", "weights", "activ.", "other",
                "KV cache", "KV tokens", f"seqs@{engine.max_model_len:,}", "fits"):  # fmt: skip
        mem.add_column(col, justify="left" if col in ("instance", "GPUs", "fits") else "right", no_wrap=True,
                       min_width=len(col))
    for m in plan.memory:
        mem.add_row(
            m.instance.name,
            m.instance.describe().replace(" GB", "G"),
            f"{m.budget_bytes / GB:.1f}",
            f"{m.weight_bytes / GB:.2f}",
            f"{m.activation_bytes / GB:.2f}",
            f"{m.overhead_bytes / GB:.2f}",
            f"{m.kv_budget_bytes / GB:.2f}",
            f"{m.kv_capacity_tokens:,}",
            f"{m.max_sequences_at_context:,}",
            "[green]yes[/green]" if m.fits else "[red]NO[/red]",
        )
    console.print(mem)
    for m in plan.memory:
        if m.problem:
            console.print(f"  [red]{m.instance.name}[/red]: {m.problem}")
    # A warning several instances share is said once, naming them all.
    for warning, names in _grouped((m.instance.name, w) for m in plan.memory for w in m.warnings):
        console.print(f"  [yellow]{', '.join(names)}[/yellow]: {warning}")

    eff = plan.efficiency
    title = (
        f"Roofline estimates: prompt {plan.workloads[0].prompt_tokens:,} + output "
        f"{plan.workloads[0].output_tokens:,} tokens, at {eff.bandwidth:.0%} of peak bandwidth and "
        f"{eff.compute:.0%} of peak compute"
    )
    est = Table(title=title, box=box.SIMPLE_HEAVY, title_justify="left", pad_edge=False)
    for col in ("instance", "conc.", "batch", "step ms", "bound",
                "TTFT ms", "TPOT ms", "E2E ms", "tok/s/seq", "tok/s", "$/1M tok"):  # fmt: skip
        est.add_column(col, justify="left" if col in ("instance", "bound") else "right", no_wrap=True,
                       min_width=len(col))
    peaks: dict[str, str] = {}
    for e in plan.estimates:
        if e.problem:
            est.add_row(e.instance, str(e.concurrency), *["-"] * 9)
            continue
        peaks[e.instance] = (f"{_money(e.price_per_hour, 3)}/h, {e.bandwidth_gb_s:,.0f} GB/s, "
                             f"{e.compute_tflops:,.0f} TFLOPS {e.compute_path}")
        batch = f"{e.batch}" + {"concurrency": "", "max_batch_size": " cap", "kv_cache": " KV"}[e.batch_limit]
        est.add_row(
            e.instance,
            str(e.concurrency),
            batch,
            f"{e.step_ms:.1f}",
            e.bound,
            f"{e.ttft_ms:,.0f}",
            f"{e.tpot_ms:.1f}",
            f"{e.e2e_ms:,.0f}",
            f"{e.tokens_per_s_per_sequence:,.1f}",
            f"{e.output_tokens_per_s:,.0f}",
            _money(e.cost_per_1m_tokens_usd, 3),
        )
    console.print(est)
    if peaks:
        for name, peak in peaks.items():
            console.print(f"  {name}: {peak}")
    console.print(
        "  step = max((weights + KV read) / GB/s, batch x 2 x matmul params / TFLOPS); KV read = batch x "
        "(prompt + output/2) x KV bytes/token\n"
        "  TTFT = the step that runs the prompt's prefill (2 x params x prompt + attention FLOPs) with the rest "
        "of the batch, + queueing when conc. > batch\n"
        "  E2E = TTFT + (output - 1) x TPOT; tok/s = batch x output / E2E; $/1M tok = $/h / (tok/s x 3600) x 1e6\n"
        "  batch: concurrency, capped by max_batch_size (cap) or by the sequences the KV cache holds (KV)"
    )
    # Unpriced instances: one line per kind of note, naming them all (TYPE stands for each name).
    unpriced = [(name, note.replace(name, "TYPE")) for name, note in plan.price_notes.items()
                if plan.prices.get(name) is None]
    for note, names in _grouped(unpriced):
        console.print(f"  [yellow]{', '.join(names)}[/yellow]: {note}")


def _fit(line: str, width: int = PLAN_WIDTH) -> str:
    """A line wrapped at `width`, continuation lines indented under it."""
    indent = " " * (len(line) - len(line.lstrip()) + 2)
    return textwrap.fill(line, width, subsequent_indent=indent, break_on_hyphens=False, break_long_words=False)


def _grouped(pairs) -> list[tuple[str, list[str]]]:
    """(name, text) pairs -> [(text, [names])] in first-seen order."""
    groups: dict[str, list[str]] = {}
    for name, text in pairs:
        names = groups.setdefault(text, [])
        if name not in names:
            names.append(name)
    return list(groups.items())


def _money(value: float | None, digits: int) -> str:
    if value is None:
        return "-"
    return f"${value:.{digits}g}" if value < 1 else f"${value:,.{digits}f}".rstrip("0").rstrip(".")


def _gb(value: float) -> str:
    return f"{value / GB:.1f} GB"


def _r(value: float, digits: int = 4) -> float | None:
    if value is None or math.isnan(value):
        return None
    return float(f"{value:.{digits + 2}g}") if abs(value) < 1 else round(value, digits)


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    raise TypeError(f"not JSON serializable: {value!r}")


if __name__ == "__main__":
    raise SystemExit(main())
