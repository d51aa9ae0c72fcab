"""`pulumi up -s gcp`: vLLM on GKE (g2-standard-8, 1x L4) behind an API key, scaled on tokens and queue."""

from __future__ import annotations

import math
from typing import Any

import pulumi
from pulumi_gcp import organizations
from pulumi_kubernetes import Provider as KubernetesProvider

from components.cost_budget import create_budget
from components.gke_cluster import GkeCluster, GkeClusterArgs
from components.vllm_kubernetes import VllmKubernetes, VllmKubernetesArgs
from planning import catalog
from stacks.budget import budget_args_from_config
from stacks.config import ConfigError, StackConfig, config_keys, standard_tags
from stacks.fit import check_stack_fit

# Component field -> config key, so a bad value is reported under the key the user set.
CONFIG_KEYS = {
    # GkeCluster
    "machine_type": "gkeMachineType",
    "accelerator_type": "gkeAcceleratorType",
    "accelerator_count": "gkeAcceleratorCount",
    "min_nodes": "minInstances",
    "max_nodes": "maxInstances",
    "spot": "gkeSpot",
    "node_zones": "gkeNodeZones",
    "disk_size_gb": "gkeNodeDiskSizeGb",
    "system_machine_type": "gkeSystemMachineType",
    "release_channel": "gkeReleaseChannel",
    "deletion_protection": "gkeDeletionProtection",
    "subnet_cidr": "gkeSubnetCidr",
    "pods_cidr": "gkePodsCidr",
    "services_cidr": "gkeServicesCidr",
    "api_source_ranges": "gkeApiSourceRanges",
    "maintenance_recurrence": "gkeMaintenanceRecurrence",
    "maintenance_window_utc": "gkeMaintenanceWindowUtc",
    # VllmKubernetes
    "image": "gkeVllmImageTag",
    "model_id": "modelId",
    "max_model_len": "maxModelLen",
    "max_num_seqs": "maxBatchSize",
    "gpu_memory_utilization": "gpuMemoryUtilization",
    "quantization": "gkeQuantization",
    "extra_args": "gkeVllmExtraArgs",
    "gpu_count": "gkeAcceleratorCount",
    "startup_timeout_seconds": "gkeStartupTimeoutSeconds",
    "service_source_ranges": "gkeServiceSourceRanges",
    "min_replicas": "minInstances",
    "max_replicas": "maxInstances",
    "target_tokens_per_second": "gkeTargetTokensPerSecondPerPod",
    "target_waiting_requests": "gkeTargetWaitingRequestsPerPod",
    "scale_down_stabilization_seconds": "gkeScaleDownStabilizationSeconds",
    "hardened": "gkeHardenedPod",
    "adapter_image": "gkeMetricsAdapterImage",
    "front_image": "caddyImage",
    "hf_token": "hfToken",
}
GCP_KEYS = {"project": "project", "region": "region", "zone": "zone"}

# The GKE accelerator name of each catalog GPU, to check that machine type and GPU type agree.
GKE_ACCELERATORS = {
    "L4": "nvidia-l4",
    "T4": "nvidia-tesla-t4",
    "V100": "nvidia-tesla-v100",
    "A100-40GB": "nvidia-tesla-a100",
    "A100-80GB": "nvidia-a100-80gb",
    "H100": "nvidia-h100-80gb",
    "H200": "nvidia-h200-141gb",
}


def gpu_machine(cfg: StackConfig) -> catalog.Instance:
    """The GPU machine type from the catalog (it supplies the price and the pod's CPU/memory sizes)."""
    name = cfg.text("gkeMachineType")
    known = sorted(i.name for i in catalog.INSTANCES.values() if i.cloud == "gcp")
    try:
        machine = catalog.instance(name)
    except catalog.UnknownInstance:
        machine = None
    if machine is None or machine.cloud != "gcp":
        raise ConfigError(
            cfg.key("gkeMachineType"),
            name,
            f"is not a GCP GPU machine type the catalog knows ({', '.join(known)})",
            "pick one of those, or add the type to planning/catalog.py",
        )
    return machine


def check_accelerator(cfg: StackConfig, machine: catalog.Instance, accelerator_type: str, accelerator_count: int) -> None:
    """G2/A2/A3 machine types come with fixed GPUs: the node pool must ask for exactly those."""
    expected = GKE_ACCELERATORS.get(machine.gpu)
    if expected and accelerator_type != expected:
        raise ConfigError(
            cfg.key("gkeAcceleratorType"),
            accelerator_type,
            f"{machine.name} comes with {machine.gpu} GPUs ({expected})",
            f"run `pulumi config set {cfg.key('gkeAcceleratorType')} {expected}`",
        )
    if accelerator_count >= 1 and accelerator_count != machine.gpu_count:
        raise ConfigError(
            cfg.key("gkeAcceleratorCount"),
            accelerator_count,
            f"{machine.name} comes with {machine.gpu_count} GPU(s)",
            f"run `pulumi config set {cfg.key('gkeAcceleratorCount')} {machine.gpu_count}`, or pick another machine type",
        )


def hourly_price(cfg: StackConfig, machine_type: str, region: str) -> float:
    """`pricePerHour` when set, else the catalog's on-demand price of the machine type in the region."""
    configured = cfg.number("pricePerHour", minimum=0)
    if configured > 0:
        return configured
    try:
        return catalog.hourly_price(machine_type, region)
    except catalog.UnknownInstance as err:
        raise ConfigError(
            cfg.key("pricePerHour"),
            configured,
            f"the catalog has no price for {machine_type} in {region} ({err})",
            f"set it: `pulumi config set {cfg.key('pricePerHour')} <USD per hour>`",
        ) from None


def pod_resources(machine: catalog.Instance) -> dict[str, int]:
    """CPU/memory for the one vLLM pod on a node, leaving room for GKE's reservations and DaemonSets."""
    return {
        "cpu_request": max(1, machine.vcpus - 2),
        "memory_request_gib": max(1, math.floor(machine.memory_gib * 0.6)),
        "memory_limit_gib": max(2, math.floor(machine.memory_gib * 0.75)),
        "shm_size_gib": max(1, math.floor(machine.memory_gib / 16)),
    }


def build() -> dict[str, Any]:
    cfg = StackConfig()
    gcp = StackConfig("gcp")
    gcp_config = pulumi.Config("gcp")
    for key in ("project", "region"):
        if not (gcp_config.get(key) or "").strip():
            raise ConfigError(gcp.key(key), None, "is not set", f"run `pulumi config set {gcp.key(key)} <value> -s {pulumi.get_stack()}`")
    project = gcp.text("project")
    region = gcp.text("region")
    zone = (gcp_config.get("zone") or "").strip()
    tags = standard_tags(cfg, "gcp")

    machine = gpu_machine(cfg)
    accelerator_type = cfg.text("gkeAcceleratorType")
    accelerator_count = cfg.integer("gkeAcceleratorCount")
    check_accelerator(cfg, machine, accelerator_type, accelerator_count)
    min_instances = cfg.integer("minInstances")
    max_instances = cfg.integer("maxInstances")
    service_source_ranges = tuple(cfg.strings("gkeServiceSourceRanges"))
    if not service_source_ranges:
        raise ConfigError(
            cfg.key("gkeServiceSourceRanges"),
            [],
            "names no CIDR allowed to reach the endpoint",
            f"run `pulumi config set --path '{cfg.key('gkeServiceSourceRanges')}[0]' \"$(curl -4 -s https://ifconfig.me)/32\"` "
            "(0.0.0.0/0 admits anyone holding the API key)",
        )
    if "0.0.0.0/0" in service_source_ranges:
        pulumi.log.warn(
            f"{cfg.key('gkeServiceSourceRanges')} opens the endpoint to the whole Internet, in clear HTTP; "
            "only the API key guards it"
        )
    price = hourly_price(cfg, machine.name, region)
    # The cost guard (optional: budgetMonthlyUsd 0 creates none), checked before anything is created.
    budget_args = budget_args_from_config(cfg, "gcp", tags=tags)

    with config_keys(cfg, CONFIG_KEYS), config_keys(gcp, GCP_KEYS):
        # All args first: each checks its values before any resource exists.
        cluster_args = GkeClusterArgs(
            project=project,
            region=region,
            zone=zone,
            machine_type=machine.name,
            accelerator_type=accelerator_type,
            accelerator_count=accelerator_count,
            min_nodes=min_instances,
            max_nodes=max_instances,
            spot=cfg.boolean("gkeSpot"),
            node_zones=tuple(cfg.strings("gkeNodeZones")),
            disk_size_gb=cfg.integer("gkeNodeDiskSizeGb"),
            system_machine_type=cfg.text("gkeSystemMachineType"),
            release_channel=cfg.text("gkeReleaseChannel"),
            deletion_protection=cfg.boolean("gkeDeletionProtection"),
            subnet_cidr=cfg.text("gkeSubnetCidr"),
            pods_cidr=cfg.text("gkePodsCidr"),
            services_cidr=cfg.text("gkeServicesCidr"),
            api_source_ranges=tuple(cfg.strings("gkeApiSourceRanges")),
            maintenance_recurrence=cfg.text("gkeMaintenanceRecurrence", allow_empty=True),
            maintenance_window_utc=cfg.text("gkeMaintenanceWindowUtc"),
            labels=tags,
        )
        workload_args = VllmKubernetesArgs(
            project=project,
            project_number=organizations.get_project(project_id=project).number,
            region=region,
            image=f"vllm/vllm-openai:{cfg.text('gkeVllmImageTag')}",
            model_id=cfg.text("modelId"),
            max_model_len=cfg.integer("maxModelLen"),
            max_num_seqs=cfg.integer("maxBatchSize"),
            gpu_memory_utilization=cfg.number("gpuMemoryUtilization"),
            quantization=cfg.text("gkeQuantization", allow_empty=True),
            extra_args=tuple(cfg.strings("gkeVllmExtraArgs")),
            accelerator_type=accelerator_type,
            gpu_count=accelerator_count,
            **pod_resources(machine),
            startup_timeout_seconds=cfg.integer("gkeStartupTimeoutSeconds"),
            hf_token=cfg.secret("hfToken"),
            service_source_ranges=service_source_ranges,
            min_replicas=min_instances,
            max_replicas=max_instances,
            target_tokens_per_second=cfg.number("gkeTargetTokensPerSecondPerPod"),
            target_waiting_requests=cfg.number("gkeTargetWaitingRequestsPerPod"),
            scale_down_stabilization_seconds=cfg.integer("gkeScaleDownStabilizationSeconds"),
            hardened=cfg.boolean("gkeHardenedPod"),
            demo_ui=cfg.boolean("demoUi"),  # the playground on the front's own origin
            adapter_image=cfg.text("gkeMetricsAdapterImage"),
            front_image=cfg.text("caddyImage"),
            labels=tags,
        )
        # The model must fit the node's GPUs (weights + one max-length sequence of KV cache, at the vLLM
        # --quantization when one is set): refused here, with the numbers, before anything is created.
        check_stack_fit(
            cfg, instance_key="gkeMachineType", instance_type=machine.name, quantization_key="gkeQuantization"
        )

        cluster = GkeCluster("gke", cluster_args)
        # Every Kubernetes object waits for the node pools: the workloads need nodes to become ready.
        kubernetes = KubernetesProvider(
            "gke-kubernetes",
            kubeconfig=cluster.kubeconfig,
            opts=pulumi.ResourceOptions(depends_on=cluster.node_pools),
        )
        workload = VllmKubernetes("vllm", workload_args, opts=pulumi.ResourceOptions(providers=[kubernetes]))
    budget = create_budget("cost", budget_args) if budget_args is not None else None

    outputs: dict[str, Any] = {
        "url": workload.url,
        "apiKey": workload.api_key,
        "modelId": workload_args.model_id,
        "machineType": machine.name,
        "acceleratorType": accelerator_type,
        "pricePerHour": price,
        "clusterName": cluster.cluster_name,
        "clusterLocation": cluster.location,
        "region": region,
        "namespace": workload.namespace,
        # What `python -m bench --stack --profile ...` polls (bench/capacity.py): the Deployment's ready
        # replicas and the HPA's desired ones (the component names its HPA "vllm", components/vllm_kubernetes.py),
        # read with the kubeconfig of `gcloud container clusters get-credentials CLUSTER --location LOCATION`.
        "capacity": pulumi.Output.all(workload.namespace, cluster.cluster_name, cluster.location).apply(
            lambda v: {"kind": "gke", "namespace": v[0], "deployment": workload.deployment_name, "hpa": "vllm",
                       "cluster": v[1], "location": v[2]}),
    }
    if budget is not None:
        outputs["budgetName"] = budget.budget_name
    return outputs
