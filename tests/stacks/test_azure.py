"""`pulumi up -s azure` under Pulumi mocks, with the real Pulumi.azure.yaml.

Azure needs an admin SSH public key the example stack file cannot hold, so every run adds one.
"""

from __future__ import annotations

import base64
import importlib
import inspect
from typing import Any

import pytest
import yaml

from stacks.config import ConfigError
from tests.pulumi_harness import (
    DUMMY_SECRET,
    ROOT,
    Secret,
    StackRun,
    refused_stack,
    run_stack,
)
from tests.ssh_keys import ed25519_public_key

SSH_KEY = ed25519_public_key("admin@example")
HF_TOKEN = "hf_dummy_token_value_0123"
VM = "azure-native:compute:VirtualMachine"
NSG = "azure-native:network:NetworkSecurityGroup"
FQDN = "llm-azure-mockra.eastus.cloudapp.azure.com"
ANYWHERE = {"0.0.0.0/0", "0.0.0.0", "*", "Internet", "Any", "any", "internet"}


def azure(overrides: dict[str, Any] | None = None) -> StackRun:
    return run_stack("azure", {"sshPublicKey": SSH_KEY, **(overrides or {})})


@pytest.fixture(scope="module")
def run() -> StackRun:
    return azure()


@pytest.fixture(scope="module")
def run_with_secrets() -> StackRun:
    return azure({"apiKey": Secret(DUMMY_SECRET), "hfToken": Secret(HF_TOKEN)})


def cloud_init(run: StackRun) -> dict:
    encoded = run.one(VM).inputs["osProfile"]["customData"]
    text = base64.b64decode(encoded, validate=True).decode()
    assert text.startswith("#cloud-config\n")
    return yaml.safe_load(text)


def written_files(run: StackRun) -> dict[str, str]:
    return {f["path"]: f["content"] for f in cloud_init(run)["write_files"]}


def inbound_rules(run: StackRun) -> list[dict]:
    return run.one(NSG).inputs["securityRules"]


def sources(rule: dict) -> set[str]:
    return set(rule.get("sourceAddressPrefixes") or []) | (
        {rule["sourceAddressPrefix"]} if rule.get("sourceAddressPrefix") else set()
    )


def rules_for_port(run: StackRun, port: int) -> list[dict]:
    return [r for r in inbound_rules(run) if r["destinationPortRange"] in (str(port), "*")]


# -------------------------------------------------------------------------------------------- graph


def test_outputs(run):
    assert run.outputs == {
        "url": f"http://{FQDN}:8000/v1",
        "apiKey": "mockrandom0123456789mockrandom0123456789mockrand",  # pragma: allowlist secret (mock value)
        "modelId": "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4",
        "vmSize": "Standard_NV36adms_A10_v5",
        "pricePerHour": 3.60,
        "location": "eastus",
        "resourceGroupName": "rg-llm-inference-azure",
        "vmName": "llm-azure-vm",
        "fqdn": FQDN,
        "publicIp": "203.0.113.30",
        "keyVaultName": "llm-azure-kv-mockra",
        "capacity": {"kind": "fixed", "instances": 1},
    }
    assert run.secret_outputs == {"apiKey"}


def test_the_whole_graph(run):
    assert run.type_counts() == {
        "azure-native:authorization:RoleAssignment": 1,
        "azure-native:compute:VirtualMachine": 1,
        "azure-native:compute:VirtualMachineExtension": 1,
        "azure-native:devtestlab:GlobalSchedule": 1,  # the example is a dev stack with auto-shutdown
        "azure-native:keyvault:Secret": 1,
        "azure-native:keyvault:Vault": 1,
        "azure-native:managedidentity:UserAssignedIdentity": 1,
        "azure-native:network:NetworkInterface": 1,
        "azure-native:network:NetworkSecurityGroup": 1,
        "azure-native:network:PublicIPAddress": 1,
        "azure-native:network:Subnet": 1,
        "azure-native:network:VirtualNetwork": 1,
        "azure-native:resources:ResourceGroup": 1,
        "llminfer:azure:AzureNetwork": 1,
        "llminfer:azure:AzureVllmVm": 1,
        "random:index/randomPassword:RandomPassword": 1,
        "random:index/randomString:RandomString": 2,
    }


def test_everything_lives_in_the_stacks_resource_group_and_location(run):
    group = run.one("azure-native:resources:ResourceGroup")
    assert group.inputs["location"] == "eastus"
    for resource in run.resources:
        if resource.type.startswith("azure-native:") and resource is not group:
            assert (
                resource.inputs.get("resourceGroupName", "rg-llm-inference-azure") == "rg-llm-inference-azure"
            ), resource.name
            assert resource.inputs.get("location", "eastus") == "eastus", resource.name


def _taggable(type_token: str) -> bool:
    _, module, name = type_token.split(":")
    cls = getattr(importlib.import_module(f"pulumi_azure_native.{module}"), name)
    return "tags" in inspect.signature(cls._internal_init).parameters


def test_every_taggable_resource_carries_the_standard_tags(run):
    expected = {
        "project": "llm-inference",
        "stack": "azure",
        "owner": "platform-team",
        "cloud": "azure",
        "managed-by": "pulumi",
    }
    taggable = [r for r in run.resources if r.type.startswith("azure-native:") and _taggable(r.type)]
    assert len(taggable) == 11  # all but the role assignment and the subnet, which take no tags
    for resource in taggable:
        assert resource.inputs.get("tags") == expected, resource.name


# ------------------------------------------------------------------------------------------ the VM


def test_the_vm_is_the_configured_size_with_the_grid_driver(run):
    assert run.one(VM).inputs["hardwareProfile"]["vmSize"] == "Standard_NV36adms_A10_v5"
    extension = run.one("azure-native:compute:VirtualMachineExtension").inputs
    assert (extension["publisher"], extension["type"]) == ("Microsoft.HpcCompute", "NvidiaGpuDriverLinux")
    assert extension["autoUpgradeMinorVersion"] is True
    assert extension["vmName"] == "llm-azure-vm"


def test_a_cheaper_size_changes_the_vm_and_its_price():
    run = azure({"vmSize": "Standard_NV36ads_A10_v5"})
    assert run.one(VM).inputs["hardwareProfile"]["vmSize"] == "Standard_NV36ads_A10_v5"
    assert run.outputs["vmSize"] == "Standard_NV36ads_A10_v5"
    assert run.outputs["pricePerHour"] == 3.20


def test_price_per_hour_from_config_wins():
    assert azure({"pricePerHour": "4.25"}).outputs["pricePerHour"] == 4.25


def test_the_os_disk_is_sized_from_config_and_dies_with_the_vm():
    disk = azure({"osDiskSizeGb": 300}).one(VM).inputs["storageProfile"]["osDisk"]
    assert disk["diskSizeGB"] == 300
    assert disk["deleteOption"] == "Delete"


def test_ssh_is_key_only(run):
    linux = run.one(VM).inputs["osProfile"]["linuxConfiguration"]
    assert linux["disablePasswordAuthentication"] is True
    assert linux["ssh"]["publicKeys"][0]["keyData"] == SSH_KEY
    assert "adminPassword" not in run.one(VM).inputs["osProfile"]


def test_auto_shutdown_from_the_example_and_off_when_empty(run):
    schedule = run.one("azure-native:devtestlab:GlobalSchedule").inputs
    assert schedule["name"] == "shutdown-computevm-llm-azure-vm"
    assert schedule["dailyRecurrence"] == {"time": "2300"}
    assert schedule["targetResourceId"] == run.one(VM).state["id"]
    assert azure({"autoShutdownTime": ""}).of_type("azure-native:devtestlab:GlobalSchedule") == []


# ---------------------------------------------------------------------------------------- the NSG


def test_the_api_port_is_open_only_to_the_configured_cidrs(run):
    (api,) = rules_for_port(run, 8000)
    assert api["access"] == "Allow" and api["direction"] == "Inbound"
    assert sources(api) == {"198.18.0.0/24"}
    assert [r["name"] for r in inbound_rules(run)] == ["allow-api"]


def test_ssh_is_closed_by_default(run):
    assert rules_for_port(run, 22) == []


def test_ssh_opens_only_to_explicit_cidrs_and_never_to_anywhere():
    run = azure({"sshSourceCidrs": ["198.18.5.10/32", "198.18.6.0/28"]})
    (ssh,) = rules_for_port(run, 22)
    assert sources(ssh) == {"198.18.5.10/32", "198.18.6.0/28"}
    for rule in rules_for_port(run, 22):
        assert not sources(rule) & ANYWHERE


def test_api_cidrs_from_config(run):
    run = azure({"apiSourceCidrs": ["198.18.7.7", "198.18.2.0/24"], "apiPort": 9000})
    (api,) = rules_for_port(run, 9000)
    assert sources(api) == {"198.18.7.7/32", "198.18.2.0/24"}
    assert run.outputs["url"] == f"http://{FQDN}:9000/v1"


# ---------------------------------------------------------------------------------------- cloud-init


def test_cloud_init_decodes_parses_and_runs_vllm_under_systemd(run):
    files = written_files(run)
    unit = files["/etc/systemd/system/vllm.service"]
    assert "Restart=always" in unit
    assert "ExecStart=/usr/local/sbin/llminfer-run-vllm" in unit
    launcher = files["/usr/local/sbin/llminfer-run-vllm"]
    assert "vllm/vllm-openai:v0.8.4" in launcher
    for flag in (
        "--model hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4",
        "--max-model-len 8192",
        "--max-num-seqs 64",
        "--gpu-memory-utilization 0.9",
        "--tensor-parallel-size 1",
    ):
        assert flag in launcher
    assert "--env-file /etc/llminfer/secrets.env" in launcher
    assert ["systemctl", "enable", "--now", "--no-block", "vllm.service"] in cloud_init(run)["runcmd"]


def test_engine_settings_come_from_config():
    run = azure(
        {
            "maxModelLen": 4096,
            "maxBatchSize": 16,
            "gpuMemoryUtilization": "0.85",
            "vllmQuantization": "awq_marlin",
            "vllmImage": "vllm/vllm-openai:v0.9.2",
            "modelId": "org/model",
        }
    )
    launcher = written_files(run)["/usr/local/sbin/llminfer-run-vllm"]
    for flag in (
        "--model org/model",
        "--max-model-len 4096",
        "--max-num-seqs 16",
        "--gpu-memory-utilization 0.85",
        "--quantization awq_marlin",
        "vllm/vllm-openai:v0.9.2",
    ):
        assert flag in launcher
    assert run.outputs["modelId"] == "org/model"


def test_no_secret_value_is_in_custom_data_or_any_plain_input(run_with_secrets):
    run = run_with_secrets
    assert run.outputs["apiKey"] == DUMMY_SECRET
    assert run.secret_outputs == {"apiKey"}
    assert run.of_type("random:index/randomPassword:RandomPassword") == []
    custom_data = run.one(VM).inputs["osProfile"]["customData"]
    decoded = base64.b64decode(custom_data).decode()
    for value in (DUMMY_SECRET, HF_TOKEN):
        assert value not in custom_data and value not in decoded
    stored = {}
    for resource in run.resources:
        for path, text in _strings(resource.inputs):
            if DUMMY_SECRET in text or HF_TOKEN in text:
                assert _under_secret(path, resource.secret_paths), (
                    f"{resource.name}: {path} holds a secret in clear"
                )
                assert resource.type == "azure-native:keyvault:Secret", resource.name
                stored[resource.inputs["secretName"]] = text
    assert stored == {"vllm-api-key": DUMMY_SECRET, "hf-token": HF_TOKEN}
    fetch = written_files(run)["/usr/local/sbin/llminfer-fetch-secrets"]
    assert "secret vllm-api-key" in fetch and "secret hf-token" in fetch


def test_a_generated_api_key_stays_out_of_custom_data(run):
    assert (
        run.outputs["apiKey"] not in base64.b64decode(run.one(VM).inputs["osProfile"]["customData"]).decode()
    )


def _under_secret(path: str, secret_paths: set[str]) -> bool:
    return any(path == p or path.startswith((f"{p}.", f"{p}[")) for p in secret_paths)


def _strings(value: Any, path: str = "") -> list[tuple[str, str]]:
    if isinstance(value, str):
        return [(path, value)]
    if isinstance(value, dict):
        return [item for k, v in value.items() for item in _strings(v, f"{path}.{k}" if path else k)]
    if isinstance(value, list):
        return [item for i, v in enumerate(value) for item in _strings(v, f"{path}[{i}]")]
    return []


def test_an_api_key_in_clear_text_is_refused():
    with pytest.raises(ConfigError, match="--secret llm-inference:apiKey"):
        azure({"apiKey": "plain-text-key"})  # pragma: allowlist secret (fake key the rule must catch)


# -------------------------------------------------------------------------------------- Key Vault


def test_key_vault_access_is_limited_to_the_vm_identity(run_with_secrets):
    run = run_with_secrets
    vault = run.one("azure-native:keyvault:Vault")
    assert vault.inputs["properties"]["enableRbacAuthorization"] is True
    assert not vault.inputs["properties"].get("accessPolicies")
    identity = run.one("azure-native:managedidentity:UserAssignedIdentity")
    (grant,) = run.of_type("azure-native:authorization:RoleAssignment")
    assert grant.inputs["scope"] == vault.state["id"]
    assert grant.inputs["principalId"] == identity.state["principalId"]
    assert grant.inputs["roleDefinitionId"].endswith("/roleDefinitions/4633458b-17de-408a-b874-0445c86b69e6")
    assert run.one(VM).inputs["identity"]["userAssignedIdentities"] == [identity.state["id"]]
    # The VM reads the vault with that same identity.
    fetch = written_files(run)["/usr/local/sbin/llminfer-fetch-secrets"]
    assert f"client_id={identity.state['clientId']}\n" in fetch
    assert "vault=https://llm-azure-kv-mockra.vault.azure.net\n" in fetch


# ------------------------------------------------------------------------------------------- TLS


def test_tls_serves_https_on_443_for_the_fqdn():
    run = azure({"tls": True, "tlsEmail": "ops@example.com"})
    assert run.outputs["url"] == f"https://{FQDN}/v1"
    (api,) = rules_for_port(run, 443)
    assert sources(api) == {"198.18.0.0/24"}
    assert rules_for_port(run, 8000) == []  # vLLM listens on loopback behind Caddy
    (acme,) = rules_for_port(run, 80)
    assert sources(acme) == {"Internet"}
    files = written_files(run)
    assert f"{FQDN} {{" in files["/etc/llminfer/Caddyfile"]
    assert "-p 127.0.0.1:18000:8000" in files["/usr/local/sbin/llminfer-run-vllm"]


def test_tls_with_a_custom_domain():
    run = azure({"tls": True, "tlsDomain": "llm.example.com"})
    assert run.outputs["url"] == "https://llm.example.com/v1"
    assert "llm.example.com {" in written_files(run)["/etc/llminfer/Caddyfile"]


# ------------------------------------------------------------------------------------- bad config


@pytest.mark.parametrize(
    "overrides, key, message",
    [
        ({"vmSize": "Standard_NC6s_v3"}, "llm-inference:vmSize", "not an NVadsA10 v5 size"),
        ({"vmSize": "Standard_NV6ads_A10_v5"}, "llm-inference:vmSize", "vGPU slice"),
        (
            {"apiSourceCidrs": []},
            "llm-inference:apiSourceCidrs",
            "--path 'llm-inference:apiSourceCidrs\\[0\\]'",
        ),
        ({"apiSourceCidrs": ["203.0.113.0/33"]}, "llm-inference:apiSourceCidrs", "not an IPv4 CIDR"),
        ({"apiSourceCidrs": ["Internet"]}, "llm-inference:apiSourceCidrs", "service tags"),
        ({"sshSourceCidrs": ["0.0.0.0/0"]}, "llm-inference:sshSourceCidrs", "whole Internet"),
        ({"sshSourceCidrs": ["*"]}, "llm-inference:sshSourceCidrs", "not an IPv4 CIDR"),
        ({"osDiskSizeGb": 32}, "llm-inference:osDiskSizeGb", "cannot hold"),
        ({"sshPublicKey": ""}, "llm-inference:sshPublicKey", "id_ed25519.pub"),
        ({"sshPublicKey": "ssh-dss AAAAB3 me"}, "llm-inference:sshPublicKey", "ssh-ed25519"),
        ({"adminUsername": "admin"}, "llm-inference:adminUsername", "admin name"),
        ({"modelId": "llama"}, "llm-inference:modelId", "owner/name"),
        ({"gpuMemoryUtilization": "1.5"}, "llm-inference:gpuMemoryUtilization", "between"),
        ({"vllmImage": "vllm/vllm-openai"}, "llm-inference:vllmImage", "tag"),
        ({"autoShutdownTime": "19:00"}, "llm-inference:autoShutdownTime", "HHMM"),
        ({"subnetPrefix": "10.99.0.0/24"}, "llm-inference:subnetPrefix", "not inside"),
        ({"dnsLabel": "Has_Underscore"}, "llm-inference:dnsLabel", "DNS label"),
        ({"tlsDomain": "llm.example.com"}, "llm-inference:tlsDomain", "tls is false"),
        ({"tls": True, "tlsEmail": "nope"}, "llm-inference:tlsEmail", "email"),
        ({"ubuntuRelease": "18.04"}, "llm-inference:ubuntuRelease", "22.04"),
        ({"resourceGroupName": "bad/name"}, "llm-inference:resourceGroupName", "resource group name"),
        ({"azure-native:location": None}, "azure-native:location", "eastus"),
        ({"azure-native:location": "East US"}, "azure-native:location", "short name"),
        ({"budgetMonthlyUsd": 100}, "llm-inference:budgetAlertEmail", "contact email"),
        ({"budgetMonthlyUsd": 100, "alarmEmail": "ops@example"}, "llm-inference:budgetAlertEmail", "not an email"),
    ],
)
def test_bad_config_names_the_key(overrides, key, message):
    with pytest.raises(ConfigError, match=message) as err:
        azure(overrides)
    assert err.value.key == key
    assert key in str(err.value)


def test_bad_config_creates_nothing():
    # `pulumi up` creates resources as they register: the error must come before the first one.
    err, run = refused({"osDiskSizeGb": 10})
    assert err.key == "llm-inference:osDiskSizeGb"
    assert run.resources == []


# ------------------------------------------------------------------------------- fit check

FP16_70B = "meta-llama/Llama-3.1-70B-Instruct"
FP16_8B = "meta-llama/Llama-3.1-8B-Instruct"


def refused(overrides: dict[str, Any]) -> tuple[ConfigError, StackRun]:
    return refused_stack("azure", {"sshPublicKey": SSH_KEY, **overrides})


def test_an_fp16_70b_that_cannot_fit_the_a10_is_refused_with_the_numbers_before_anything_exists():
    err, run = refused({"modelId": FP16_70B})
    assert err.key == "llm-inference:modelId" and err.value == FP16_70B
    message = str(err)
    assert "llama-3.1-70b fp16 needs 141.1 GB of weights" in message
    assert "Standard_NV36adms_A10_v5 has 1x A10 24 GB" in message
    assert "21.7 GB usable at gpuMemoryUtilization 0.9" in message
    # No NVadsA10 v5 size (the only sizes this stack deploys) holds it: none is suggested.
    assert "pulumi config set llm-inference:vmSize" not in message
    assert run.resources == []


def test_a_bigger_size_it_suggests_is_one_the_stack_deploys():
    err, run = refused({"maxModelLen": 131072})
    assert err.key == "llm-inference:maxModelLen"
    assert "lower llm-inference:maxModelLen to 112,560 or less" in str(err)
    # Not an A100 size the catalog knows but the VM component refuses.
    assert "`pulumi config set llm-inference:vmSize Standard_NV72ads_A10_v5`" in str(err)
    assert run.resources == []


def test_the_fit_check_reads_vllm_quantization():
    # A 16-bit 8B leaves the KV cache room for ~33k tokens; vLLM's on-load fp8 halves the weights.
    err, run = refused({"modelId": FP16_8B, "maxModelLen": 65536})
    assert err.key == "llm-inference:maxModelLen" and "llama-3.1-8b fp16" in str(err)
    assert run.resources == []
    fits = azure({"modelId": FP16_8B, "maxModelLen": 65536, "vllmQuantization": "fp8"})
    assert "--quantization fp8" in written_files(fits)["/usr/local/sbin/llminfer-run-vllm"]


def test_fit_check_model_sizes_a_custom_id_and_off_skips_the_check():
    assert azure({"modelId": "my-org/my-custom-model"}).outputs["modelId"] == "my-org/my-custom-model"
    err, run = refused({"modelId": "my-org/my-custom-model", "fitCheckModel": "llama-3.1-70b"})
    assert err.key == "llm-inference:modelId" and "141.1 GB of weights" in str(err)
    assert run.resources == []
    assert azure({"modelId": FP16_70B, "fitCheckModel": "off"}).outputs["modelId"] == FP16_70B


def test_a_bad_fit_check_quantization_is_refused_naming_the_key():
    err, run = refused({"fitCheckQuantization": "int3"})
    assert err.key == "llm-inference:fitCheckQuantization"
    assert "llm-inference:fitCheckQuantization='int3': is not one of: fp16" in str(err)
    assert run.resources == []


def test_docs_say_what_real_azure_deploys_need():
    docs = (ROOT / "docs" / "azure.md").read_text()
    for needed in ("Owner", "User Access Administrator", "az vm start", "PropertyChangeNotAllowed",
                   "securityType: Standard", "apt-mark unhold", "/invocations"):  # fmt: skip
        assert needed in docs, needed


def test_the_front_serves_the_api_port_and_vllm_only_loopback(run):
    files = written_files(run)
    assert "http://:8000 {" in files["/etc/llminfer/Caddyfile"]
    assert "-p 127.0.0.1:18000:8000" in files["/usr/local/sbin/llminfer-run-vllm"]
