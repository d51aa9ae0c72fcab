"""GPU capacity has a ceiling: every autoscaler, node pool and replica count states its maximum.

The ceiling (the rule's `ceiling` option, default 16 instances/nodes/replicas) is the most GPU capacity a
stack may ask for without someone raising it on purpose: at the seed's ml.g5.2xlarge price, 16
instances are about $24 an hour. Raise it with the pack's config, not by editing the rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from policy._model import Option, Rule, as_list, get, is_map, number, truthy

DEFAULT_CEILING = 16
# GCE machine families with GPUs built in (the accelerator is priced into the machine type).
_GCP_GPU_MACHINES = re.compile(r"^(a2|a3|a4|g2|g4)-")
# Azure N-series (NC, ND, NG, NV) are the GPU sizes.
_AZURE_GPU_SIZE = re.compile(r"^Standard_N[CDGV]", re.IGNORECASE)
# A zonal GKE location ends in a zone letter (us-central1-a); a regional pool spans 3 zones by default.
_GCP_ZONE = re.compile(r"-[a-z]$")
_GKE_DEFAULT_ZONES = 3
_HPA_TYPES = {
    "kubernetes:autoscaling/v1:HorizontalPodAutoscaler",
    "kubernetes:autoscaling/v2:HorizontalPodAutoscaler",
    "kubernetes:autoscaling/v2beta2:HorizontalPodAutoscaler",
}


def _bounded(label: str, low: Any, high: Any, ceiling: int) -> Iterator[str]:
    top = number(high)
    if top is None:
        yield f"{label} has no maximum; set one"
        return
    if top > ceiling:
        yield f"{label} maximum {int(top)} exceeds the GPU capacity ceiling {ceiling} (policy config gpu-capacity-max.ceiling)"
    bottom = number(low)
    if bottom is not None and bottom > top:
        yield f"{label} minimum {int(bottom)} exceeds its maximum {int(top)}"


def _gke_pool_is_gpu(node_config: Any) -> bool:
    return bool(as_list(get(node_config, "guestAccelerators"))) or bool(
        _GCP_GPU_MACHINES.match(str(get(node_config, "machineType", default="")))
    )


def _gke_pool(inputs: Mapping[str, Any], ceiling: int) -> Iterator[str]:
    if not _gke_pool_is_gpu(inputs.get("nodeConfig")):
        return
    autoscaling = inputs.get("autoscaling")
    if is_map(autoscaling):
        if number(autoscaling.get("totalMaxNodeCount")) is not None:
            yield from _bounded("node pool autoscaling (total)", autoscaling.get("totalMinNodeCount"),
                                autoscaling.get("totalMaxNodeCount"), ceiling)
            return
        per_zone = number(autoscaling.get("maxNodeCount"))
        if per_zone is None:
            yield "GPU node pool autoscaling has no maxNodeCount/totalMaxNodeCount; set one"
            return
        # maxNodeCount is per zone: the pool's real maximum multiplies by its zones.
        locations = as_list(inputs.get("nodeLocations"))
        zones = len(locations) if locations else (1 if _GCP_ZONE.search(str(inputs.get("location", ""))) else _GKE_DEFAULT_ZONES)
        yield from _bounded(f"node pool autoscaling ({zones} zone(s) x maxNodeCount {int(per_zone)})",
                            None, per_zone * zones, ceiling)
    else:
        yield from _bounded("fixed-size GPU node pool", None, inputs.get("nodeCount") or inputs.get("initialNodeCount"), ceiling)


def _azure_pool(pool: Mapping[str, Any], label: str, ceiling: int) -> Iterator[str]:
    if not _AZURE_GPU_SIZE.match(str(pool.get("vmSize", ""))):
        return
    if truthy(pool.get("enableAutoScaling")):
        yield from _bounded(f"{label} autoscaling", pool.get("minCount"), pool.get("maxCount"), ceiling)
    else:
        yield from _bounded(label, None, pool.get("count"), ceiling)


def capacity_ceiling(type_: str, name: str, inputs: Mapping[str, Any], ceiling: int = DEFAULT_CEILING) -> Iterator[str]:
    ceiling = int(number(ceiling) or DEFAULT_CEILING)
    if type_ == "aws:appautoscaling/target:Target":
        yield from _bounded("scalable target", inputs.get("minCapacity"), inputs.get("maxCapacity"), ceiling)
    elif type_ == "aws:sagemaker/endpointConfiguration:EndpointConfiguration":
        for variant in as_list(inputs.get("productionVariants")):
            if not is_map(variant):
                continue
            if is_map(variant.get("serverlessConfig")):
                continue  # serverless variants run on CPU and carry their own concurrency cap
            label = f"variant {variant.get('variantName', '')} initial instances"
            yield from _bounded(label, None, variant.get("initialInstanceCount"), ceiling)
    elif type_ == "aws:autoscaling/group:Group":
        yield from _bounded("Auto Scaling group", inputs.get("minSize"), inputs.get("maxSize"), ceiling)
    elif type_ == "aws:eks/nodeGroup:NodeGroup":
        yield from _bounded("node group", get(inputs, "scalingConfig", "minSize"), get(inputs, "scalingConfig", "maxSize"), ceiling)
    elif type_ == "gcp:container/nodePool:NodePool":
        yield from _gke_pool(inputs, ceiling)
    elif type_ == "gcp:container/cluster:Cluster":
        if truthy(get(inputs, "clusterAutoscaling", "enabled")):
            for limit in as_list(get(inputs, "clusterAutoscaling", "resourceLimits")):
                if str(get(limit, "resourceType", default="")).startswith("nvidia-"):
                    yield from _bounded(f"node auto-provisioning {limit['resourceType']}", limit.get("minimum"), limit.get("maximum"), ceiling)
    elif type_ in _HPA_TYPES:
        spec = inputs.get("spec")
        yield from _bounded("HorizontalPodAutoscaler", get(spec, "minReplicas"), get(spec, "maxReplicas"), ceiling)
    elif type_ == "azure-native:containerservice:AgentPool":
        yield from _azure_pool(inputs, "GPU agent pool", ceiling)
    elif type_ == "azure-native:containerservice:ManagedCluster":
        for pool in as_list(inputs.get("agentPoolProfiles")):
            if is_map(pool):
                yield from _azure_pool(pool, f"GPU agent pool {pool.get('name', '')}", ceiling)
    elif type_ == "azure-native:compute:VirtualMachineScaleSet":
        if _AZURE_GPU_SIZE.match(str(get(inputs, "sku", "name", default=""))):
            yield from _bounded("GPU scale set", None, get(inputs, "sku", "capacity"), ceiling)
    elif type_ == "azure-native:monitor:AutoscaleSetting":
        for profile in as_list(inputs.get("profiles")):
            capacity = get(profile, "capacity", default={})
            yield from _bounded(f"autoscale profile {get(profile, 'name', default='')}", get(capacity, "minimum"), get(capacity, "maximum"), ceiling)


RULE = Rule(
    name="gpu-capacity-max",
    description="GPU capacity has a maximum: autoscaling targets, node pools and HPAs state one, within the ceiling.",
    remediation="Set maxInstances (autoscaler max, node pool max, HPA maxReplicas); raise the pack's gpu-capacity-max ceiling only on purpose.",
    resource_checks=(capacity_ceiling,),
    options={
        "ceiling": Option(
            DEFAULT_CEILING,
            {"type": "integer", "minimum": 1, "default": DEFAULT_CEILING,
             "description": "Most GPU instances/nodes/replicas any one autoscaler or pool may reach."},
        )
    },
)
