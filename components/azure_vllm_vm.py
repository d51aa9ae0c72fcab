"""One NVadsA10 v5 VM (Standard_NV36adms_A10_v5 by default) running the `vllm/vllm-openai` container.

Azure Container Instances has no A10 (and its GPU SKUs are retired), so "an NV36 A10 container" is a VM
of that size running the vLLM container. The component owns everything on the VM's side:

- a user-assigned managed identity, created before the VM so that its Key Vault access exists at first boot;
- a Key Vault (RBAC mode) holding the API key and the optional Hugging Face token, and one role
  assignment, "Key Vault Secrets User" on that vault for that identity: nobody else gets data-plane access;
- the NIC (accelerated networking), the VM (Ubuntu LTS Gen2, key-only SSH, boot diagnostics, an OS
  disk sized for the image and the model cache), the NvidiaGpuDriverLinux extension (GRID driver);
- cloud-init (`components.azure_cloud_init`) that runs vLLM (on 127.0.0.1) and the front before it
  (`components.vllm_front`: only `/v1/*` and `/health` pass) under systemd; no secret in custom data;
- optionally a DevTest Labs auto-shutdown schedule, for dev stacks.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
import pulumi_random as random
from pulumi_azure_native import authorization, compute, devtestlab, keyvault, managedidentity, network

from components._args import InvalidArgs, require, require_between, require_positive, require_text
from components.azure_cloud_init import VLLM_LOCAL_PORT, VllmHost, cloud_config, encode_custom_data
from components.azure_network import azure_name

_COMPONENT = "AzureVllmVm"

# Sizes of the NVadsA10 v5 family with whole A10s (24 GB each) -> GPU count (vLLM's tensor parallelism).
A10_V5_SIZES: dict[str, int] = {
    "Standard_NV36ads_A10_v5": 1,
    "Standard_NV36adms_A10_v5": 1,
    "Standard_NV72ads_A10_v5": 2,
}
# The smaller sizes get a vGPU slice of one A10.
_FRACTIONAL_A10_SIZES = {
    "Standard_NV6ads_A10_v5": "1/6 (4 GB)",
    "Standard_NV12ads_A10_v5": "1/3 (8 GB)",
    "Standard_NV18ads_A10_v5": "1/2 (12 GB)",
}

# Gen2 images; both releases are listed for NVadsA10 v5 by the GRID driver extension.
UBUNTU_IMAGES: dict[str, compute.ImageReferenceArgs] = {
    "22.04": compute.ImageReferenceArgs(
        publisher="Canonical", offer="0001-com-ubuntu-server-jammy", sku="22_04-lts-gen2", version="latest"
    ),
    "24.04": compute.ImageReferenceArgs(
        publisher="Canonical", offer="ubuntu-24_04-lts", sku="server", version="latest"
    ),
}

GPU_DRIVER_EXTENSION = {
    "publisher": "Microsoft.HpcCompute",
    "type": "NvidiaGpuDriverLinux",
    "type_handler_version": "1.6",
}
# Every VM input Azure cannot change in place, by its azure-native input path.
REPLACE_ON_CHANGES = ["osProfile.customData", "securityProfile.securityType"]
SECURITY_TYPE = "Standard"  # no Trusted Launch, so no Secure Boot to refuse the GRID kernel module
# Built-in role "Key Vault Secrets User": read secret contents, nothing else.
KEY_VAULT_SECRETS_USER_ROLE = "4633458b-17de-408a-b874-0445c86b69e6"
API_KEY_SECRET = "vllm-api-key"  # pragma: allowlist secret (Key Vault secret name)
HF_TOKEN_SECRET = "hf-token"  # pragma: allowlist secret (Key Vault secret name)

# Ubuntu (~3 GB) + the vLLM image (~20 GB unpacked) + an 8B AWQ model (~6 GB) + room for a second image.
MIN_OS_DISK_GB = 64
MAX_OS_DISK_GB = 4095

_MODEL_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_IMAGE_REF = re.compile(
    r"^[a-z0-9]+([._-][a-z0-9]+)*(\.[a-z0-9-]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[0-9a-f]{64})$"
)
_QUANTIZATION = re.compile(r"^[a-z0-9_-]+$")
_ADMIN_USERNAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
# Linux admin names Azure refuses.
_RESERVED_USERNAMES = frozenset(
    "1 123 a actuser adm admin admin1 admin2 administrator aspnet backup console david guest john owner root "
    "server sql support support_388945a0 sys test test1 test2 test3 user user1 user2 user3 user4 user5".split()
)
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_DRIVER_VERSION = re.compile(r"^\d+(\.\d+){1,2}$")
_HHMM = re.compile(r"^([01]\d|2[0-3])[0-5]\d$")


def ssh_key_problem(key: str) -> str | None:
    """Why Azure would refuse `key` as an admin SSH key (RSA >= 2048 bits or Ed25519), or None."""
    parts = key.strip().split()
    if len(parts) < 2:
        return (
            "is not an OpenSSH public key line ('ssh-ed25519 AAAA... you@host'); give the .pub file's content"
        )
    kind, body = parts[0], parts[1]
    if kind not in ("ssh-rsa", "ssh-ed25519"):
        return f"is a {kind} key; Azure takes ssh-rsa (2048 bits or more) or ssh-ed25519"
    try:
        blob = base64.b64decode(body, validate=True)
        fields = []
        offset = 0
        while offset < len(blob):
            (length,) = struct.unpack(">I", blob[offset : offset + 4])
            fields.append(blob[offset + 4 : offset + 4 + length])
            offset += 4 + length
    except (binascii.Error, struct.error):
        return "has a key body that is not valid base64 OpenSSH data"
    if not fields or fields[0].decode(errors="replace") != kind:
        return f"says {kind} but its key body is not a {kind} key"
    if kind == "ssh-rsa" and (len(fields) < 3 or int.from_bytes(fields[2], "big").bit_length() < 2048):
        return "is an RSA key shorter than 2048 bits; Azure refuses it (use ssh-keygen -t ed25519)"
    return None


@dataclass(frozen=True)
class AzureVllmVmArgs:
    resource_group_name: pulumi.Input[str]
    location: str
    subnet_id: pulumi.Input[str]
    public_ip_id: pulumi.Input[str]
    # The admin's OpenSSH public key: Azure needs one even while the NSG keeps port 22 closed.
    ssh_public_key: str
    model_id: str
    vm_size: str = "Standard_NV36adms_A10_v5"
    admin_username: str = "azureuser"
    os_disk_size_gb: int = 128
    ubuntu_release: str = "22.04"
    image: str = "vllm/vllm-openai:v0.8.4"
    max_model_len: int = 8192
    max_num_seqs: int = 64
    gpu_memory_utilization: float = 0.9
    # "" lets vLLM read the method from the model's config (AWQ checkpoints then get the Marlin kernels).
    quantization: str = ""
    api_port: int = 8000
    # A Pulumi secret; None generates a 48-character key.
    api_key: pulumi.Input[str] | None = None
    # Only for gated models; a Pulumi secret.
    hf_token: pulumi.Input[str] | None = None
    # None serves plain HTTP on api_port; a domain (or the public IP's FQDN output) puts Caddy + HTTPS in front.
    tls_domain: pulumi.Input[str] | None = None
    tls_email: str = ""
    caddy_image: str = "caddy:2.10"
    # "" installs the extension's current GRID driver; e.g. "550.144.06" pins one.
    gpu_driver_version: str = ""
    # "" keeps the VM running; "1900" deallocates it every day at 19:00 in auto_shutdown_time_zone.
    auto_shutdown_time: str = ""
    auto_shutdown_time_zone: str = "UTC"
    log_retention_days: int = 30
    # The chat playground (playground/) served by the front on the API's own origin (demoUi).
    demo_ui: bool = False
    tags: Mapping[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        c = _COMPONENT
        require(c, "demo_ui", isinstance(self.demo_ui, bool), f"must be True or False, got {self.demo_ui!r}")
        require_text(c, "location", self.location)
        if self.vm_size in _FRACTIONAL_A10_SIZES:
            raise InvalidArgs(
                c,
                "vm_size",
                f"{self.vm_size} has {_FRACTIONAL_A10_SIZES[self.vm_size]} of an A10 (a vGPU "
                f"slice); use a whole-GPU size: {', '.join(A10_V5_SIZES)}",
            )
        require(
            c,
            "vm_size",
            self.vm_size in A10_V5_SIZES,
            f"{self.vm_size!r} is not an NVadsA10 v5 size with whole A10 GPUs (the GRID driver extension's "
            f"family); use one of: {', '.join(A10_V5_SIZES)}",
        )
        require(
            c,
            "admin_username",
            isinstance(self.admin_username, str)
            and _ADMIN_USERNAME.fullmatch(self.admin_username) is not None
            and self.admin_username not in _RESERVED_USERNAMES,
            f"{self.admin_username!r} is not a Linux admin name Azure accepts (lowercase, at most 32 characters, "
            "not root/admin/administrator/...)",
        )
        require_text(c, "ssh_public_key", self.ssh_public_key)
        problem = ssh_key_problem(self.ssh_public_key)
        require(c, "ssh_public_key", problem is None, f"{problem}")
        require(
            c,
            "os_disk_size_gb",
            isinstance(self.os_disk_size_gb, int)
            and MIN_OS_DISK_GB <= self.os_disk_size_gb <= MAX_OS_DISK_GB,
            f"{self.os_disk_size_gb!r} GB cannot hold Ubuntu, the vLLM image and the model cache; "
            f"give {MIN_OS_DISK_GB}-{MAX_OS_DISK_GB}",
        )
        require(
            c,
            "ubuntu_release",
            self.ubuntu_release in UBUNTU_IMAGES,
            f"{self.ubuntu_release!r} is not a supported Ubuntu LTS; use one of: {', '.join(UBUNTU_IMAGES)}",
        )
        require(
            c,
            "image",
            isinstance(self.image, str) and _IMAGE_REF.fullmatch(self.image) is not None,
            f"{self.image!r} is not a container image with a tag or digest, e.g. vllm/vllm-openai:v0.8.4",
        )
        require(
            c,
            "model_id",
            isinstance(self.model_id, str) and _MODEL_ID.fullmatch(self.model_id) is not None,
            f"{self.model_id!r} is not a Hugging Face model id (owner/name)",
        )
        require_positive(c, "max_model_len", self.max_model_len)
        require_positive(c, "max_num_seqs", self.max_num_seqs)
        require_between(c, "gpu_memory_utilization", self.gpu_memory_utilization, 0.1, 0.98)
        if self.quantization:
            require(
                c,
                "quantization",
                _QUANTIZATION.fullmatch(self.quantization) is not None,
                f"{self.quantization!r} is not a vLLM quantization method name (e.g. awq_marlin, gptq_marlin, fp8)",
            )
        require(
            c,
            "api_port",
            isinstance(self.api_port, int) and 1024 <= self.api_port <= 65535,
            f"must be an unprivileged TCP port (1024-65535), got {self.api_port!r}",
        )
        require(
            c,
            "api_port",
            self.api_port != VLLM_LOCAL_PORT,
            f"{VLLM_LOCAL_PORT} is where vLLM itself listens on the VM's loopback, behind the front; pick another",
        )
        if isinstance(self.tls_domain, str):
            require(
                c,
                "tls_domain",
                _HOSTNAME.fullmatch(self.tls_domain) is not None,
                f"{self.tls_domain!r} is not a DNS name such as llm.example.com",
            )
        if self.tls_email:
            require(
                c,
                "tls_email",
                _EMAIL.fullmatch(self.tls_email) is not None,
                f"{self.tls_email!r} is not an email address",
            )
        require(
            c,
            "caddy_image",
            _IMAGE_REF.fullmatch(self.caddy_image) is not None,
            f"{self.caddy_image!r} is not a container image with a tag, e.g. caddy:2.10",
        )
        if self.gpu_driver_version:
            require(
                c,
                "gpu_driver_version",
                _DRIVER_VERSION.fullmatch(self.gpu_driver_version) is not None,
                f"{self.gpu_driver_version!r} is not a driver version such as 550.144.06",
            )
        if self.auto_shutdown_time:
            require(
                c,
                "auto_shutdown_time",
                _HHMM.fullmatch(self.auto_shutdown_time) is not None,
                f"{self.auto_shutdown_time!r} is not a 24-hour HHMM time such as 1900",
            )
            require_text(c, "auto_shutdown_time_zone", self.auto_shutdown_time_zone)
            require(
                c,
                "auto_shutdown_time_zone",
                "/" not in self.auto_shutdown_time_zone,
                f"{self.auto_shutdown_time_zone!r} is an IANA name; Azure wants a Windows time zone id such as "
                "UTC or 'W. Europe Standard Time'",
            )
        require_positive(c, "log_retention_days", self.log_retention_days)

    @property
    def gpu_count(self) -> int:
        return A10_V5_SIZES[self.vm_size]


class AzureVllmVm(pulumi.ComponentResource):
    """Identity, Key Vault + secrets + access, NIC, VM, GPU driver extension, optional auto-shutdown."""

    vm_id: pulumi.Output[str]
    vm_name: pulumi.Output[str]
    identity_principal_id: pulumi.Output[str]
    identity_client_id: pulumi.Output[str]
    key_vault_name: pulumi.Output[str]
    key_vault_uri: pulumi.Output[str]
    api_key: pulumi.Output[str]

    def __init__(self, name: str, args: AzureVllmVmArgs, opts: pulumi.ResourceOptions | None = None):
        args.validate()
        super().__init__(f"llminfer:azure:{_COMPONENT}", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        base = azure_name(name)[:50].rstrip("-") or "llm"
        tags = dict(args.tags)
        placed = {"resource_group_name": args.resource_group_name, "location": args.location, "tags": tags}

        identity = managedidentity.UserAssignedIdentity(
            f"{name}-identity", resource_name_=f"{base}-identity", opts=child, **placed
        )

        # Vault names are global (and stay reserved while soft-deleted): a random suffix.
        vault_suffix = random.RandomString(
            f"{name}-kv-suffix", length=6, upper=False, special=False, lower=True, numeric=True, opts=child
        )
        vault_prefix = (base if base[:1].isalpha() else f"kv{base}")[:14].rstrip("-")
        client = authorization.get_client_config_output(opts=pulumi.InvokeOutputOptions(parent=self))
        vault = keyvault.Vault(
            f"{name}-kv",
            vault_name=vault_suffix.result.apply(lambda s: f"{vault_prefix}-kv-{s}"),
            properties=keyvault.VaultPropertiesArgs(
                tenant_id=client.tenant_id,
                sku=keyvault.SkuArgs(family="A", name="standard"),
                # Access by Azure RBAC only: the one role assignment below is the whole access list.
                enable_rbac_authorization=True,
                soft_delete_retention_in_days=7,
                enabled_for_deployment=False,
                enabled_for_disk_encryption=False,
                enabled_for_template_deployment=False,
            ),
            opts=child,
            **placed,
        )

        if args.api_key is None:
            api_key: pulumi.Input[str] = random.RandomPassword(
                f"{name}-api-key", length=48, special=False, opts=child
            ).result
        else:
            api_key = args.api_key
        api_key = pulumi.Output.secret(api_key)
        secrets = [self._secret(name, "api-key", API_KEY_SECRET, api_key, args, vault)]
        if args.hf_token is not None:
            secrets.append(
                self._secret(
                    name, "hf-token", HF_TOKEN_SECRET, pulumi.Output.secret(args.hf_token), args, vault
                )
            )

        vault_reader = authorization.RoleAssignment(
            f"{name}-kv-secrets-user",
            scope=vault.id,
            role_definition_id=client.subscription_id.apply(
                lambda sub: (
                    f"/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions/{KEY_VAULT_SECRETS_USER_ROLE}"
                )
            ),
            principal_id=identity.principal_id,
            principal_type="ServicePrincipal",
            description=f"{base}: the VM's identity reads its API key and HF token",
            opts=child,
        )

        nic = network.NetworkInterface(
            f"{name}-nic",
            network_interface_name=f"{base}-nic",
            ip_configurations=[
                network.NetworkInterfaceIPConfigurationArgs(
                    name="ipconfig1",
                    primary=True,
                    private_ip_allocation_method="Dynamic",
                    subnet=network.SubnetArgs(id=args.subnet_id),
                    public_ip_address=network.PublicIPAddressArgs(id=args.public_ip_id),
                )
            ],
            enable_accelerated_networking=True,
            opts=child,
            **placed,
        )

        host_inputs = {
            "vault_uri": vault.properties.vault_uri,
            "client_id": identity.client_id,
            "tls_domain": args.tls_domain if args.tls_domain is not None else "",
        }
        custom_data = pulumi.Output.all(**host_inputs).apply(
            lambda v: encode_custom_data(cloud_config(self._host(args, v)))
        )

        vm_name = f"{base}-vm"
        vm = compute.VirtualMachine(
            f"{name}-vm",
            vm_name=vm_name,
            hardware_profile=compute.HardwareProfileArgs(vm_size=args.vm_size),
            identity=compute.VirtualMachineIdentityArgs(
                type="UserAssigned", user_assigned_identities=[identity.id]
            ),
            storage_profile=compute.StorageProfileArgs(
                image_reference=UBUNTU_IMAGES[args.ubuntu_release],
                os_disk=compute.OSDiskArgs(
                    name=f"{vm_name}-osdisk",
                    create_option="FromImage",
                    caching="ReadWrite",
                    disk_size_gb=args.os_disk_size_gb,
                    managed_disk=compute.ManagedDiskParametersArgs(storage_account_type="Premium_LRS"),
                    # Without this a destroyed or replaced VM leaves its (billed) disk behind.
                    delete_option="Delete",
                ),
            ),
            os_profile=compute.OSProfileArgs(
                computer_name=vm_name,
                admin_username=args.admin_username,
                custom_data=custom_data,
                linux_configuration=compute.LinuxConfigurationArgs(
                    disable_password_authentication=True,
                    provision_vm_agent=True,
                    ssh=compute.SshConfigurationArgs(
                        public_keys=[
                            compute.SshPublicKeyArgs(
                                path=f"/home/{args.admin_username}/.ssh/authorized_keys",
                                key_data=args.ssh_public_key.strip(),
                            )
                        ]
                    ),
                ),
            ),
            network_profile=compute.NetworkProfileArgs(
                network_interfaces=[compute.NetworkInterfaceReferenceArgs(id=nic.id, primary=True)]
            ),
            # Managed boot diagnostics (no storage account): serial log and screenshot in the portal.
            diagnostics_profile=compute.DiagnosticsProfileArgs(
                boot_diagnostics=compute.BootDiagnosticsArgs(enabled=True)
            ),
            # Explicit, not the subscription's default: where Gen2 VMs default to Trusted Launch, Secure
            # Boot refuses the GRID driver's unsigned kernel module. "Standard" is the ARM value for no
            # Trusted Launch (azure-mgmt-compute SecurityTypes: STANDARD, TRUSTED_LAUNCH, CONFIDENTIAL_VM).
            security_profile=compute.SecurityProfileArgs(security_type=SECURITY_TYPE),
            opts=pulumi.ResourceOptions(
                parent=self,
                # The secrets and the identity's access exist before cloud-init first asks for them.
                depends_on=[vault_reader, *secrets],
                # Azure refuses a custom-data change in place (409 PropertyChangeNotAllowed) and
                # azure-native would send one (pulumi-azure-native#577: its schema does not mark
                # customData as force-new), so a change of model, engine settings, image, tls or log
                # retention replaces the VM. Delete first: a second GPU VM at the same time would
                # usually exceed the region's A10 quota.
                replace_on_changes=REPLACE_ON_CHANGES,
                delete_before_replace=True,
            ),
            **placed,
        )

        settings = {"driverVersion": args.gpu_driver_version} if args.gpu_driver_version else {}
        compute.VirtualMachineExtension(
            f"{name}-gpu-driver",
            vm_name=vm.name,
            vm_extension_name=GPU_DRIVER_EXTENSION["type"],
            publisher=GPU_DRIVER_EXTENSION["publisher"],
            type=GPU_DRIVER_EXTENSION["type"],
            type_handler_version=GPU_DRIVER_EXTENSION["type_handler_version"],
            auto_upgrade_minor_version=True,
            settings=settings,
            opts=child,
            **placed,
        )

        if args.auto_shutdown_time:
            devtestlab.GlobalSchedule(
                f"{name}-auto-shutdown",
                # Azure finds a VM's auto-shutdown schedule by this exact name.
                name=vm.name.apply(lambda n: f"shutdown-computevm-{n}"),
                status="Enabled",
                task_type="ComputeVmShutdownTask",
                daily_recurrence=devtestlab.DayDetailsArgs(time=args.auto_shutdown_time),
                time_zone_id=args.auto_shutdown_time_zone,
                target_resource_id=vm.id,
                notification_settings=devtestlab.NotificationSettingsArgs(status="Disabled"),
                opts=child,
                **placed,
            )

        self.vm_id = vm.id
        self.vm_name = vm.name
        self.identity_principal_id = identity.principal_id
        self.identity_client_id = identity.client_id
        self.key_vault_name = vault.name
        self.key_vault_uri = vault.properties.vault_uri
        self.api_key = api_key
        self.register_outputs(
            {
                "vm_id": self.vm_id,
                "vm_name": self.vm_name,
                "identity_principal_id": self.identity_principal_id,
                "identity_client_id": self.identity_client_id,
                "key_vault_name": self.key_vault_name,
                "key_vault_uri": self.key_vault_uri,
                "api_key": self.api_key,
            }
        )

    def _secret(
        self,
        name: str,
        suffix: str,
        secret_name: str,
        value: pulumi.Output[str],
        args: AzureVllmVmArgs,
        vault: keyvault.Vault,
    ) -> keyvault.Secret:
        return keyvault.Secret(
            f"{name}-{suffix}",
            resource_group_name=args.resource_group_name,
            vault_name=vault.name,
            secret_name=secret_name,
            properties=keyvault.SecretPropertiesArgs(value=value, content_type="text/plain"),
            tags=dict(args.tags),
            opts=pulumi.ResourceOptions(parent=self),
        )

    @staticmethod
    def _host(args: AzureVllmVmArgs, resolved: Mapping[str, str]) -> VllmHost:
        return VllmHost(
            image=args.image,
            model_id=args.model_id,
            max_model_len=args.max_model_len,
            max_num_seqs=args.max_num_seqs,
            gpu_memory_utilization=float(args.gpu_memory_utilization),
            tensor_parallel_size=args.gpu_count,
            quantization=args.quantization,
            api_port=args.api_port,
            key_vault_uri=resolved["vault_uri"],
            identity_client_id=resolved["client_id"],
            api_key_secret_name=API_KEY_SECRET,
            hf_token_secret_name=HF_TOKEN_SECRET if args.hf_token is not None else "",
            tls_domain=resolved["tls_domain"] or "",
            tls_email=args.tls_email,
            caddy_image=args.caddy_image,
            log_retention_days=args.log_retention_days,
            demo_ui=args.demo_ui,
        )
