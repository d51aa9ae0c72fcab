"""The stacks' preview-time fit check: the planner's memory model over a stack's config keys.

It reads the stack's config (modelId, maxModelLen, ...), so it lives with the stacks; the arithmetic is
`planning.planner`'s, shared with `python -m bench plan`.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from planning import catalog
from planning.planner import Engine, MemoryPlan, ModelDoesNotFit, cheapest_fitting, check_fits
from stacks.config import ConfigError

# Fit-check field -> the project config key holding the value.
STACK_KEYS = {"model": "modelId", "max_model_len": "maxModelLen"}

# vLLM --quantization methods whose weight size the catalog knows. Only consulted for a checkpoint
# the id says is 16-bit: vLLM then quantizes it on load (fp8), or the id hides an AWQ/GPTQ repo.
VLLM_QUANTIZATIONS = {
    "awq": "awq-int4",
    "awq_marlin": "awq-int4",
    "gptq": "gptq-int4",
    "gptq_marlin": "gptq-int4",
    "fp8": "fp8",
}


def check_stack_fit(
    cfg: Any,
    *,
    instance_key: str,
    instance_type: str | None = None,
    quantization_key: str | None = None,
    instance_choices: Collection[str] | None = None,
) -> MemoryPlan | None:
    """The stacks' preview-time fit check: raise `stacks.config.ConfigError` naming the offending key.

    `cfg` is a `stacks.config.StackConfig`; `instance_key` the config key of the instance/VM/machine
    type (`instance_type` when the stack has already read it); `quantization_key` the key of the
    engine's --quantization, where the stack has one; `instance_choices` the types the stack accepts
    under `instance_key` (default: any of the cloud's), so that a bigger one it suggests is one the
    stack can deploy. Reads modelId, maxModelLen, maxBatchSize, gpuMemoryUtilization, fitCheckModel
    ("off" skips the check; a catalog name sizes a custom modelId) and fitCheckQuantization.
    """
    sized_as = cfg.text("fitCheckModel", allow_empty=True)
    if sized_as.lower() == "off":
        return None
    quant = cfg.text("fitCheckQuantization", allow_empty=True) or None
    if quant is not None and quant.lower() not in catalog.QUANTIZATIONS:
        raise ConfigError(cfg.key("fitCheckQuantization"), quant, f"is not one of: {', '.join(catalog.QUANTIZATIONS)}")
    if sized_as and sized_as.lower() not in catalog.MODELS:
        raise ConfigError(
            cfg.key("fitCheckModel"),
            sized_as,
            f"is not a catalog model ({', '.join(catalog.MODELS)}) or off",
        )
    instance_type = instance_type or cfg.text(instance_key)
    model_id = cfg.text("modelId")
    if quant is None and quantization_key:
        engine_quant = VLLM_QUANTIZATIONS.get(cfg.text(quantization_key, allow_empty=True).lower())
        by_name = catalog.resolve_model(sized_as or model_id)
        if engine_quant and by_name is not None and by_name.quantization.name in ("fp16", "bf16"):
            quant = engine_quant
    values = {
        "modelId": model_id,
        "maxModelLen": cfg.integer("maxModelLen", minimum=1),
    }
    try:
        return check_fits(
            model_id,
            instance_type,
            values["maxModelLen"],
            cfg.integer("maxBatchSize", minimum=1),
            cfg.number("gpuMemoryUtilization", minimum=0.1, maximum=0.98),
            quant,
            catalog_model=sized_as or None,
        )
    except ModelDoesNotFit as err:
        if instance_choices is not None and err.bigger and err.bigger.name not in instance_choices:
            plan = err.plan
            err.bigger = cheapest_fitting(plan.spec, plan.engine, like=plan.instance, among=instance_choices)
        key = STACK_KEYS.get(err.field, "modelId")
        util = err.plan.engine.gpu_memory_utilization
        problem = err.problem.replace("max_model_len", "maxModelLen").replace(
            f"usable at {util:g}", f"usable at gpuMemoryUtilization {util:g}"
        )
        fix = err.suggestion(cfg.key("maxModelLen"), cfg.key(instance_key))
        plan_cmd = f"`{_plan_command(err.plan, sized_as or model_id, quant)}` shows the budget"
        raise ConfigError(cfg.key(key), values[key], problem, f"{fix}; {plan_cmd}" if fix else plan_cmd) from err


def _plan_command(plan: MemoryPlan, model: str, quantization: str | None) -> str:
    """The `bench plan` command that shows the budget the fit check computed (same model and settings)."""
    parts = ["python -m bench plan", f"--model {model}"]
    if quantization:
        parts.append(f"--quantization {plan.spec.quantization.name}")
    parts.append(f"--instance {plan.instance.name}")
    engine, default = plan.engine, Engine()
    if engine.max_model_len != default.max_model_len:
        parts.append(f"--max-model-len {engine.max_model_len}")
    if engine.max_batch_size != default.max_batch_size:
        parts.append(f"--max-batch-size {engine.max_batch_size}")
    if engine.gpu_memory_utilization != default.gpu_memory_utilization:
        parts.append(f"--gpu-memory-utilization {engine.gpu_memory_utilization:g}")
    return " ".join(parts)
