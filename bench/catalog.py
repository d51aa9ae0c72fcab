"""The one catalog of GPUs, instance types and prices, importable without Pulumi.

Used by the stacks (hourly price output, fit checks) and by the bench (cost per 1k tokens, planner).
Prices are on-demand USD/hour defaults (see REFERENCE.md): verify for your region and override
with the stack's `pricePerHour` or the bench's `--price-per-hour`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Instance:
    name: str
    cloud: str
    gpu: str
    gpu_count: int
    vcpus: int
    memory_gib: float
    price_per_hour: float


INSTANCES: dict[str, Instance] = {
    i.name: i
    for i in (
        Instance("ml.g5.xlarge", "aws", "A10G", 1, 4, 16, 1.408),
        Instance("ml.g5.2xlarge", "aws", "A10G", 1, 8, 32, 1.515),
        Instance("ml.g5.4xlarge", "aws", "A10G", 1, 16, 64, 2.03),
        Instance("g5.2xlarge", "aws", "A10G", 1, 8, 32, 1.212),
        Instance("Standard_NV36ads_A10_v5", "azure", "A10", 1, 36, 440, 3.20),
        Instance("Standard_NV36adms_A10_v5", "azure", "A10", 1, 36, 880, 3.60),
        Instance("g2-standard-8", "gcp", "L4", 1, 8, 32, 0.85),
    )
}


class UnknownInstance(KeyError):
    def __init__(self, name: str):
        known = ", ".join(sorted(INSTANCES))
        super().__init__(f"unknown instance type {name!r}; known: {known} (or give a price explicitly)")


def instance(name: str) -> Instance:
    try:
        return INSTANCES[name]
    except KeyError:
        raise UnknownInstance(name) from None


def hourly_price(name: str) -> float:
    return instance(name).price_per_hour
