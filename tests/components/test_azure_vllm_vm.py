"""AzureVllmVm: argument checks and the resources it creates (under Pulumi mocks)."""

from __future__ import annotations

import base64
from dataclasses import replace

import pulumi
import pytest
import yaml

from components import InvalidArgs
from components.azure_vllm_vm import (
    A10_V5_SIZES,
    KEY_VAULT_SECRETS_USER_ROLE,
    MIN_OS_DISK_GB,
    AzureVllmVm,
    AzureVllmVmArgs,
    ssh_key_problem,
)
from tests import pulumi_harness
from tests.pulumi_harness import run_program
from tests.ssh_keys import ed25519_public_key, rsa_public_key

SUBNET = "/subscriptions/0/resourceGroups/rg-test/providers/Microsoft.Network/virtualNetworks/v/subnets/s"
PUBLIC_IP = "/subscriptions/0/resourceGroups/rg-test/providers/Microsoft.Network/publicIPAddresses/p"
ARGS = AzureVllmVmArgs(
    resource_group_name="rg-test",
    location="eastus",
    subnet_id=SUBNET,
    public_ip_id=PUBLIC_IP,
    ssh_public_key=ed25519_public_key(),
    model_id="hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4",
    tags={"project": "llm-inference", "owner": "tests"},
)
VM = "azure-native:compute:VirtualMachine"


@pytest.mark.parametrize(
    "changes, field, message",
    [
        ({"vm_size": "Standard_NC6"}, "vm_size", "not an NVadsA10 v5 size"),
        ({"vm_size": "Standard_NV12ads_A10_v5"}, "vm_size", "vGPU slice"),
        ({"os_disk_size_gb": MIN_OS_DISK_GB - 1}, "os_disk_size_gb", "cannot hold"),
        ({"os_disk_size_gb": 5000}, "os_disk_size_gb", "cannot hold"),
        ({"admin_username": "root"}, "admin_username", "not a Linux admin name"),
        ({"admin_username": "Bad User"}, "admin_username", "not a Linux admin name"),
        ({"ssh_public_key": ""}, "ssh_public_key", "non-empty"),
        ({"ssh_public_key": "AAAAC3NzaC1lZDI1NTE5"}, "ssh_public_key", "not an OpenSSH public key"),
        ({"ssh_public_key": "ecdsa-sha2-nistp256 AAAA x"}, "ssh_public_key", "ssh-rsa .* or ssh-ed25519"),
        ({"ssh_public_key": "ssh-ed25519 not*base64 x"}, "ssh_public_key", "not valid base64"),
        ({"ssh_public_key": rsa_public_key(1024)}, "ssh_public_key", "shorter than 2048"),
        (
            {"ssh_public_key": "ssh-rsa " + ed25519_public_key().split()[1]},
            "ssh_public_key",
            "not a ssh-rsa key",
        ),
        ({"ubuntu_release": "20.04"}, "ubuntu_release", "22.04, 24.04"),
        ({"image": "vllm/vllm-openai"}, "image", "with a tag or digest"),
        ({"image": "vllm/vllm-openai:v0.8.4; rm -rf /"}, "image", "with a tag or digest"),
        ({"model_id": "not a model"}, "model_id", "owner/name"),
        ({"max_model_len": 0}, "max_model_len", "positive"),
        ({"max_num_seqs": -1}, "max_num_seqs", "positive"),
        ({"gpu_memory_utilization": 0.99}, "gpu_memory_utilization", "between"),
        ({"quantization": "AWQ Marlin"}, "quantization", "quantization method"),
        ({"api_port": 80}, "api_port", "unprivileged"),
        ({"api_port": 18000}, "api_port", "where vLLM itself listens"),
        ({"tls_domain": "not a domain"}, "tls_domain", "DNS name"),
        ({"tls_email": "nobody"}, "tls_email", "email"),
        ({"caddy_image": "caddy"}, "caddy_image", "with a tag"),
        ({"gpu_driver_version": "latest"}, "gpu_driver_version", "driver version"),
        ({"auto_shutdown_time": "7pm"}, "auto_shutdown_time", "HHMM"),
        ({"auto_shutdown_time": "2460"}, "auto_shutdown_time", "HHMM"),
        (
            {"auto_shutdown_time": "1900", "auto_shutdown_time_zone": "Europe/Berlin"},
            "auto_shutdown_time_zone",
            "Windows time zone",
        ),
        ({"log_retention_days": 0}, "log_retention_days", "positive"),
    ],
)
def test_bad_args_name_the_field(changes, field, message):
    with pytest.raises(InvalidArgs, match=message) as err:
        replace(ARGS, **changes).validate()
    assert err.value.field == field


@pytest.mark.parametrize("size, gpus", sorted(A10_V5_SIZES.items()))
def test_whole_gpu_sizes_are_accepted(size, gpus):
    args = replace(ARGS, vm_size=size, ssh_public_key=rsa_public_key(3072))
    args.validate()
    assert args.gpu_count == gpus


def test_ssh_key_check_accepts_real_key_lines():
    assert ssh_key_problem(ed25519_public_key("me@laptop") + "\n") is None
    assert ssh_key_problem(rsa_public_key(2048)) is None


def build(args: AzureVllmVmArgs, **secrets: str):
    """Run the component; `secrets` become Pulumi secret inputs (Outputs need the program's event loop)."""

    def program():
        vm = AzureVllmVm("llm-dev", replace(args, **{k: pulumi.Output.secret(v) for k, v in secrets.items()}))
        return {"apiKey": vm.api_key, "vault": vm.key_vault_name, "uri": vm.key_vault_uri, "vm": vm.vm_name}

    return run_program(program, stack="dev")


def custom_data(run) -> dict:
    text = base64.b64decode(run.one(VM).inputs["osProfile"]["customData"]).decode()
    assert text.startswith("#cloud-config\n")
    return yaml.safe_load(text)


def test_the_graph_of_a_default_vm():
    run = build(ARGS)
    assert run.type_counts() == {
        "azure-native:authorization:RoleAssignment": 1,
        "azure-native:compute:VirtualMachine": 1,
        "azure-native:compute:VirtualMachineExtension": 1,
        "azure-native:keyvault:Secret": 1,  # the API key; no HF token given
        "azure-native:keyvault:Vault": 1,
        "azure-native:managedidentity:UserAssignedIdentity": 1,
        "azure-native:network:NetworkInterface": 1,
        "llminfer:azure:AzureVllmVm": 1,
        "random:index/randomPassword:RandomPassword": 1,
        "random:index/randomString:RandomString": 1,
    }
    component = run.one("llminfer:azure:AzureVllmVm")
    assert all(r.parent == component.urn for r in run.resources if r is not component)
    assert run.outputs["vault"] == "llm-dev-kv-mockra"
    assert run.outputs["vm"] == "llm-dev-vm"
    assert "apiKey" in run.secret_outputs


def test_the_vm_is_the_size_asked_with_key_only_ssh_boot_diagnostics_and_a_sized_disk():
    run = build(replace(ARGS, vm_size="Standard_NV36ads_A10_v5", os_disk_size_gb=256, ubuntu_release="24.04"))
    vm = run.one(VM).inputs
    assert vm["hardwareProfile"] == {"vmSize": "Standard_NV36ads_A10_v5"}
    linux = vm["osProfile"]["linuxConfiguration"]
    assert linux["disablePasswordAuthentication"] is True
    assert "adminPassword" not in vm["osProfile"]
    assert linux["ssh"]["publicKeys"] == [
        {"path": "/home/azureuser/.ssh/authorized_keys", "keyData": ARGS.ssh_public_key}
    ]
    assert vm["diagnosticsProfile"] == {"bootDiagnostics": {"enabled": True}}
    disk = vm["storageProfile"]["osDisk"]
    assert disk["diskSizeGB"] == 256
    assert disk["deleteOption"] == "Delete"
    assert disk["managedDisk"] == {"storageAccountType": "Premium_LRS"}
    assert vm["storageProfile"]["imageReference"] == {
        "publisher": "Canonical",
        "offer": "ubuntu-24_04-lts",
        "sku": "server",
        "version": "latest",
    }
    nic = run.one("azure-native:network:NetworkInterface")
    assert vm["networkProfile"]["networkInterfaces"] == [{"id": nic.state["id"], "primary": True}]
    ipconfig = nic.inputs["ipConfigurations"][0]
    assert ipconfig["subnet"]["id"] == SUBNET
    assert ipconfig["publicIPAddress"]["id"] == PUBLIC_IP
    assert nic.inputs["enableAcceleratedNetworking"] is True


def test_the_vm_runs_as_its_own_user_assigned_identity():
    run = build(ARGS)
    identity = run.one("azure-native:managedidentity:UserAssignedIdentity")
    vm = run.one(VM).inputs
    assert vm["identity"] == {"type": "UserAssigned", "userAssignedIdentities": [identity.state["id"]]}


def test_the_gpu_driver_extension_installs_grid_on_this_vm():
    run = build(replace(ARGS, gpu_driver_version="550.144.06"))
    extension = run.one("azure-native:compute:VirtualMachineExtension").inputs
    assert extension["vmName"] == "llm-dev-vm"
    assert extension["publisher"] == "Microsoft.HpcCompute"
    assert extension["type"] == "NvidiaGpuDriverLinux"
    assert extension["autoUpgradeMinorVersion"] is True
    assert extension["settings"] == {"driverVersion": "550.144.06"}


def test_key_vault_access_is_one_secrets_user_role_for_the_vm_identity_on_this_vault():
    run = build(ARGS, hf_token="hf_dummy")
    vault = run.one("azure-native:keyvault:Vault")
    assert vault.inputs["properties"]["enableRbacAuthorization"] is True
    assert "accessPolicies" not in vault.inputs["properties"]
    assert vault.inputs["properties"]["tenantId"] == "33333333-3333-3333-3333-333333333333"
    (grant,) = run.of_type("azure-native:authorization:RoleAssignment")
    identity = run.one("azure-native:managedidentity:UserAssignedIdentity")
    assert grant.inputs["scope"] == vault.state["id"]
    assert grant.inputs["principalId"] == identity.state["principalId"]
    assert grant.inputs["principalType"] == "ServicePrincipal"
    assert grant.inputs["roleDefinitionId"] == (
        "/subscriptions/00000000-0000-0000-0000-000000000000/providers/Microsoft.Authorization/"
        f"roleDefinitions/{KEY_VAULT_SECRETS_USER_ROLE}"
    )
    secrets = {s.inputs["secretName"]: s.inputs for s in run.of_type("azure-native:keyvault:Secret")}
    assert set(secrets) == {"vllm-api-key", "hf-token"}
    assert secrets["hf-token"]["properties"]["value"] == "hf_dummy"
    assert all(s["vaultName"] == "llm-dev-kv-mockra" for s in secrets.values())


def test_the_vm_waits_for_its_secrets_and_their_access():
    run = build(ARGS, hf_token="hf_dummy")
    vm = run.one(VM)
    waited_for = {r.type for r in run.resources if r.urn in vm.dependencies}
    assert {"azure-native:authorization:RoleAssignment", "azure-native:keyvault:Secret"} <= waited_for
    assert len([r for r in run.of_type("azure-native:keyvault:Secret") if r.urn in vm.dependencies]) == 2


def test_cloud_init_reads_the_vault_the_identity_may_read():
    run = build(ARGS)
    files = {f["path"]: f["content"] for f in custom_data(run)["write_files"]}
    fetch = files["/usr/local/sbin/llminfer-fetch-secrets"]
    assert "vault=https://llm-dev-kv-mockra.vault.azure.net\n" in fetch
    identity = run.one("azure-native:managedidentity:UserAssignedIdentity")
    assert f"client_id={identity.state['clientId']}\n" in fetch
    assert "hf-token" not in fetch  # no token configured, none fetched


def test_a_given_api_key_is_stored_and_nothing_is_generated():
    run = build(ARGS, api_key="given-key-0123")
    assert run.of_type("random:index/randomPassword:RandomPassword") == []
    assert run.outputs["apiKey"] == "given-key-0123"  # pragma: allowlist secret (test fixture)
    assert "apiKey" in run.secret_outputs
    (secret,) = run.of_type("azure-native:keyvault:Secret")
    assert secret.inputs["properties"]["value"] == "given-key-0123"


def test_two_gpu_size_runs_vllm_with_tensor_parallelism_two():
    run = build(replace(ARGS, vm_size="Standard_NV72ads_A10_v5"))
    files = {f["path"]: f["content"] for f in custom_data(run)["write_files"]}
    assert "--tensor-parallel-size 2" in files["/usr/local/sbin/llminfer-run-vllm"]


def test_auto_shutdown_targets_this_vm_by_the_name_azure_expects():
    run = build(replace(ARGS, auto_shutdown_time="1930", auto_shutdown_time_zone="W. Europe Standard Time"))
    schedule = run.one("azure-native:devtestlab:GlobalSchedule").inputs
    vm = run.one(VM)
    assert schedule["name"] == "shutdown-computevm-llm-dev-vm"
    assert schedule["targetResourceId"] == vm.state["id"]
    assert schedule["taskType"] == "ComputeVmShutdownTask"
    assert schedule["status"] == "Enabled"
    assert schedule["dailyRecurrence"] == {"time": "1930"}
    assert schedule["timeZoneId"] == "W. Europe Standard Time"


def test_no_auto_shutdown_unless_asked():
    assert build(ARGS).of_type("azure-native:devtestlab:GlobalSchedule") == []


def test_tls_domain_reaches_the_caddyfile():
    run = build(replace(ARGS, tls_domain="llm.example.com", tls_email="ops@example.com"))
    files = {f["path"]: f["content"] for f in custom_data(run)["write_files"]}
    assert "llm.example.com {" in files["/etc/llminfer/Caddyfile"]


def test_the_front_runs_without_tls_too():
    files = {f["path"]: f["content"] for f in custom_data(build(ARGS))["write_files"]}
    assert "http://:8000 {" in files["/etc/llminfer/Caddyfile"]
    assert "/etc/systemd/system/caddy.service" in files


@pytest.fixture
def registrations(monkeypatch):
    """Resource options the harness does not record (replace-on-changes, delete-before-replace), by name."""
    seen: dict[str, object] = {}
    original = pulumi_harness.RecordingMonitor.RegisterResource

    def register(self, request):
        seen[request.name] = request
        return original(self, request)

    monkeypatch.setattr(pulumi_harness.RecordingMonitor, "RegisterResource", register)
    return seen


def test_a_custom_data_change_replaces_the_vm_deleting_it_first(registrations):
    # Azure refuses customData changes in place (409 PropertyChangeNotAllowed) and azure-native would
    # send an in-place PUT (pulumi-azure-native#577): the VM must be replaced, the old one deleted first.
    build(ARGS)
    vm = registrations["llm-dev-vm"]
    assert "osProfile.customData" in list(vm.replaceOnChanges)
    assert vm.deleteBeforeReplace is True


def test_the_security_type_is_explicit_so_no_secure_boot_blocks_the_grid_driver():
    vm = build(ARGS).one(VM).inputs
    assert vm["securityProfile"] == {"securityType": "Standard"}
    assert "uefiSettings" not in vm["securityProfile"]


def test_invalid_args_create_nothing():
    caught = []

    def program():
        try:
            AzureVllmVm("llm-dev", replace(ARGS, vm_size="Standard_D4s_v5"))
        except InvalidArgs as err:
            caught.append(err)
        return {}

    run = run_program(program, stack="dev")
    assert len(caught) == 1
    assert run.resources == []  # refused before the component or any child registered
