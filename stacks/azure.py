"""`pulumi up -s azure`: one Standard_NV36adms_A10_v5 VM running the vLLM container behind an NSG.

Azure Container Instances offers no A10, so the A10 "container" is the `vllm/vllm-openai` container on a
VM of that size (see docs/azure.md). The endpoint is OpenAI-compatible at `url`, guarded by `apiKey`.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import pulumi
from pulumi_azure_native import resources

from components.azure_network import AzureNetwork, AzureNetworkArgs, azure_name
from components.azure_vllm_vm import A10_V5_SIZES, AzureVllmVm, AzureVllmVmArgs
from components.cost_budget import create_budget
from planning import catalog
from stacks.budget import budget_args_from_config
from stacks.config import PROJECT, ConfigError, StackConfig, config_keys, standard_tags
from stacks.fit import check_stack_fit

# Component field -> config key, so a bad value is reported under the key the user set.
CONFIG_KEYS = {
    "api_source_cidrs": "apiSourceCidrs",
    "ssh_source_cidrs": "sshSourceCidrs",
    "api_port": "apiPort",
    "dns_label": "dnsLabel",
    "address_space": "vnetAddressSpace",
    "subnet_prefix": "subnetPrefix",
    "vm_size": "vmSize",
    "admin_username": "adminUsername",
    "ssh_public_key": "sshPublicKey",
    "os_disk_size_gb": "osDiskSizeGb",
    "ubuntu_release": "ubuntuRelease",
    "image": "vllmImage",
    "model_id": "modelId",
    "max_model_len": "maxModelLen",
    "max_num_seqs": "maxBatchSize",
    "gpu_memory_utilization": "gpuMemoryUtilization",
    "quantization": "vllmQuantization",
    "tls_domain": "tlsDomain",
    "tls_email": "tlsEmail",
    "caddy_image": "caddyImage",
    "gpu_driver_version": "gpuDriverVersion",
    "auto_shutdown_time": "autoShutdownTime",
    "auto_shutdown_time_zone": "autoShutdownTimeZone",
    "log_retention_days": "logRetentionDays",
}

LOCATION_KEY = "azure-native:location"
_LOCATION = re.compile(r"^[a-z][a-z0-9]+$")
_GROUP_NAME = re.compile(r"^[-\w.()]{0,89}[-\w()]$")
HTTPS_PORT = 443


def location() -> str:
    value = (pulumi.Config("azure-native").get("location") or "").strip()
    if not _LOCATION.fullmatch(value):
        raise ConfigError(
            LOCATION_KEY,
            value,
            "must be an Azure region's short name with NVadsA10 v5 capacity, e.g. eastus",
            f"`pulumi config set {LOCATION_KEY} eastus` (names: `az account list-locations -o table`)",
        )
    return value


def hourly_price(cfg: StackConfig, vm_size: str, region: str) -> float:
    """`pricePerHour` when set, else the catalog's on-demand price of the size in this region."""
    configured = cfg.number("pricePerHour", minimum=0)
    if configured > 0:
        return configured
    fix = f"set it: `pulumi config set {cfg.key('pricePerHour')} <USD per hour>`"
    try:
        return catalog.hourly_price(vm_size, region)
    except catalog.UnknownPrice:
        pass
    except catalog.UnknownInstance:
        raise ConfigError(
            cfg.key("pricePerHour"), configured, f"the catalog has no price for {vm_size}", fix
        ) from None
    try:
        price = catalog.hourly_price(vm_size)
    except catalog.UnknownInstance:
        raise ConfigError(
            cfg.key("pricePerHour"), configured, f"the catalog has no price for {vm_size}", fix
        ) from None
    pulumi.log.warn(
        f"the catalog has no {vm_size} price for {region}: pricePerHour shows its default-region price ({price}); {fix}"
    )
    return price


def source_cidrs(cfg: StackConfig, name: str, *, required: bool) -> list[str]:
    cidrs = cfg.strings(name)
    if required and not cidrs:
        raise ConfigError(
            cfg.key(name),
            cidrs,
            "lists no source CIDR, so nobody could reach the API",
            f"allow your address: `pulumi config set --path '{cfg.key(name)}[0]' \"$(curl -4 -s https://ifconfig.me)/32\"`",
        )
    return cidrs


def build() -> dict[str, Any]:
    cfg = StackConfig()
    region = location()
    tags = standard_tags(cfg, "azure")
    stack = pulumi.get_stack()
    vm_size = cfg.text("vmSize")
    model_id = cfg.text("modelId")
    tls = cfg.boolean("tls")
    tls_domain = cfg.text("tlsDomain", allow_empty=True)
    if tls_domain and not tls:
        raise ConfigError(
            cfg.key("tlsDomain"),
            tls_domain,
            "is set but tls is false",
            f"turn TLS on with `pulumi config set {cfg.key('tls')} true`, or remove tlsDomain",
        )
    vllm_port = cfg.integer("apiPort")
    public_port = HTTPS_PORT if tls else vllm_port
    api_cidrs = source_cidrs(cfg, "apiSourceCidrs", required=True)
    if any(cidr.strip() == "0.0.0.0/0" for cidr in api_cidrs):
        pulumi.log.warn(
            f"{cfg.key('apiSourceCidrs')} opens the API to the whole Internet; only the API key guards it"
        )

    group_name = cfg.text("resourceGroupName", allow_empty=True) or f"rg-{PROJECT}-{azure_name(stack)}"
    if not _GROUP_NAME.fullmatch(group_name):
        raise ConfigError(
            cfg.key("resourceGroupName"),
            group_name,
            "is not a resource group name (1-90 letters, digits, _ - . ( ), not ending in a period)",
        )
    with config_keys(cfg, CONFIG_KEYS):
        # Both components' args are checked before the first resource registers: `pulumi up` creates
        # resources as they register, so a late config error would leave a half-built stack.
        network_args = AzureNetworkArgs(
            resource_group_name=group_name,
            location=region,
            api_source_cidrs=api_cidrs,
            api_port=public_port,
            ssh_source_cidrs=source_cidrs(cfg, "sshSourceCidrs", required=False),
            acme_http_challenge=tls,
            dns_label=cfg.text("dnsLabel", allow_empty=True),
            address_space=cfg.text("vnetAddressSpace"),
            subnet_prefix=cfg.text("subnetPrefix"),
            tags=tags,
        )
        network_args.validate()
        vm_args = AzureVllmVmArgs(
            resource_group_name=group_name,
            location=region,
            subnet_id="",  # set below, once the network exists
            public_ip_id="",
            ssh_public_key=_ssh_public_key(cfg),
            model_id=model_id,
            vm_size=vm_size,
            admin_username=cfg.text("adminUsername"),
            os_disk_size_gb=cfg.integer("osDiskSizeGb"),
            ubuntu_release=cfg.text("ubuntuRelease"),
            image=cfg.text("vllmImage"),
            max_model_len=cfg.integer("maxModelLen"),
            max_num_seqs=cfg.integer("maxBatchSize"),
            gpu_memory_utilization=cfg.number("gpuMemoryUtilization"),
            quantization=cfg.text("vllmQuantization", allow_empty=True),
            api_port=vllm_port,
            api_key=cfg.secret("apiKey"),
            hf_token=cfg.secret("hfToken"),
            tls_domain=tls_domain or None,
            tls_email=cfg.text("tlsEmail", allow_empty=True),
            caddy_image=cfg.text("caddyImage"),
            gpu_driver_version=cfg.text("gpuDriverVersion", allow_empty=True),
            auto_shutdown_time=cfg.text("autoShutdownTime", allow_empty=True),
            auto_shutdown_time_zone=cfg.text("autoShutdownTimeZone"),
            log_retention_days=cfg.integer("logRetentionDays", minimum=1),
            demo_ui=cfg.boolean("demoUi"),  # the playground on the front's own origin
            tags=tags,
        )
        vm_args.validate()
    # The model must fit the VM's GPUs (weights + one max-length sequence of KV cache, at the vLLM
    # --quantization when one is set): refused here, with the numbers, before anything is created.
    # A bigger size it suggests is one this stack deploys (an NVadsA10 v5 size).
    check_stack_fit(
        cfg,
        instance_key="vmSize",
        instance_type=vm_size,
        quantization_key="vllmQuantization",
        instance_choices=A10_V5_SIZES,
    )
    price = hourly_price(cfg, vm_size, region)
    # The cost guard (optional: budgetMonthlyUsd 0 creates none) covers the stack's resource group; its
    # settings are checked here, before anything is created, and the scope is set once the group exists.
    budget_args = budget_args_from_config(cfg, "azure", tags=tags)

    group = resources.ResourceGroup(
        f"llm-{stack}-rg", resource_group_name=group_name, location=region, tags=tags
    )
    net = AzureNetwork(f"llm-{stack}", replace(network_args, resource_group_name=group.name))
    vm = AzureVllmVm(
        f"llm-{stack}",
        replace(
            vm_args,
            resource_group_name=group.name,
            subnet_id=net.subnet_id,
            public_ip_id=net.public_ip_id,
            tls_domain=(tls_domain or net.fqdn) if tls else None,
        ),
    )

    budget = create_budget("cost", replace(budget_args, scope=group.id)) if budget_args is not None else None

    if tls:
        url = pulumi.Output.from_input(tls_domain or net.fqdn).apply(lambda host: f"https://{host}/v1")
    else:
        url = net.fqdn.apply(lambda host: f"http://{host}:{vllm_port}/v1")
    outputs: dict[str, Any] = {
        "url": url,
        "apiKey": vm.api_key,
        "modelId": model_id,
        "vmSize": vm_size,
        "pricePerHour": price,
        "location": region,
        "resourceGroupName": group.name,
        "vmName": vm.vm_name,
        "fqdn": net.fqdn,
        "publicIp": net.public_ip_address,
        "keyVaultName": vm.key_vault_name,
        "capacity": {"kind": "fixed", "instances": 1},  # one VM, no autoscaling (bench/capacity.py)
    }
    if budget is not None:
        outputs["budgetName"] = budget.budget_name
    return outputs


def _ssh_public_key(cfg: StackConfig) -> str:
    key = cfg.text("sshPublicKey", allow_empty=True)
    if not key:
        raise ConfigError(
            cfg.key("sshPublicKey"),
            key,
            "is empty; Azure needs an admin SSH public key even while the NSG keeps SSH closed",
            f'`pulumi config set {cfg.key("sshPublicKey")} "$(cat ~/.ssh/id_ed25519.pub)"`',
        )
    return key
