"""cloud-init for a GPU VM that serves vLLM's OpenAI-compatible API from the `vllm/vllm-openai` container.

The VM's `custom_data` carries no secret: at every start of `vllm.service` the VM fetches the API key
(and the Hugging Face token, when there is one) from Key Vault with its user-assigned managed identity
(IMDS token -> Key Vault REST) into a root-only env file that `docker run --env-file` reads.

Everything runs from systemd units, not from cloud-init's once-only `runcmd`: the NvidiaGpuDriverLinux
extension installs the GRID driver concurrently with cloud-init and may reboot the VM half-way, so
each step is idempotent and re-runs at every boot and every restart of the unit:

1. `llminfer-wait-gpu`: wait until `nvidia-smi` answers and the extension reports success. This comes
   first: the extension runs apt/dpkg itself without waiting for the dpkg lock, so any apt of ours
   while it runs fails it (`VMExtensionProvisioningError`); nothing of ours touches apt before it is done;
2. `llminfer-setup`: hold the kernel, then Docker and the NVIDIA container toolkit from their vendors'
   apt repositories;
3. `llminfer-fetch-secrets`: Key Vault -> /etc/llminfer/secrets.env (0600, root);
4. `docker run vllm/vllm-openai:<tag>` with the engine flags from config (`Restart=always`), published on
   127.0.0.1 only;
5. `llminfer-check-auth`: once vLLM is healthy, refuse to go on if it answers without the API key, or if
   the front lets `/invocations` through.

The front (`components.vllm_front`, Caddy in a container, `caddy.service`) always runs: vLLM's
`--api-key` guards only `/v1/*`, so the front is what clients reach: plain HTTP on `api_port`, or HTTPS on
443 for the domain with a Let's Encrypt certificate when TLS is on. It passes only `/v1/*` and `/health`.

Kernel upgrades: the GRID driver is built for the running kernel; unattended-upgrades plus the nightly
deallocate/start would otherwise boot a newer kernel without the driver. The kernel packages are left out
of unattended-upgrades from the first boot (an apt.conf.d file, no dpkg lock needed) and held once the
extension is done; docs/azure.md says how to upgrade the kernel on purpose.
"""

from __future__ import annotations

import base64
import shlex
from dataclasses import dataclass

import yaml

from components.vllm_front import CADDY_IMAGE, HEALTH_PATH, caddyfile, page_files

# Azure takes at most 65,535 characters of base64 custom data.
CUSTOM_DATA_LIMIT = 65535

SECRETS_ENV = "/etc/llminfer/secrets.env"
HF_CACHE_DIR = "/var/lib/llminfer/huggingface"
CADDY_DATA_DIR = "/var/lib/llminfer/caddy"
CADDYFILE = "/etc/llminfer/Caddyfile"
# demo_ui: the playground's files on the VM, mounted read-only into the Caddy container at FRONT_PAGE_DIR.
PAGE_DIR = "/etc/llminfer/playground"
FRONT_PAGE_DIR = "/srv/playground"
# Port vLLM listens on inside its container, published on the host's loopback only at VLLM_LOCAL_PORT;
# clients reach the front on `api_port` (or 443 with TLS).
CONTAINER_PORT = 8000
VLLM_LOCAL_PORT = 18000
HTTPS_PORT = 443
# Unattended-upgrades leaves these alone (patterns are Python regexes; u-u >= 1.0, Ubuntu 22.04/24.04).
NO_KERNEL_UPGRADES_CONF = "/etc/apt/apt.conf.d/51llminfer-no-kernel-upgrades"
_NO_KERNEL_UPGRADES = """\
// The NVIDIA GRID driver (NvidiaGpuDriverLinux extension) is built for the running kernel: a kernel that
// unattended-upgrades installs would boot at the next start without the driver. Upgrade it on purpose
// (docs/azure.md).
Unattended-Upgrade::Package-Blacklist {
    "^linux-image-";
    "^linux-headers-";
    "^linux-modules-";
    "^linux-azure";
    "^linux-generic";
    "^linux-virtual";
    "^linux-tools-";
    "^linux-cloud-tools-";
};
"""


@dataclass(frozen=True)
class VllmHost:
    """What one VM runs. Checked by the component that builds it; rendered here as-is."""

    image: str
    model_id: str
    max_model_len: int
    max_num_seqs: int
    gpu_memory_utilization: float
    tensor_parallel_size: int
    quantization: str  # "" lets vLLM read it from the model's config (keeps the Marlin kernels for AWQ)
    api_port: int  # port of the front (plain HTTP); with tls_domain the front serves HTTPS on 443 instead
    key_vault_uri: str
    identity_client_id: str
    api_key_secret_name: str
    hf_token_secret_name: str  # "" when the model needs no token
    tls_domain: str = ""  # "" serves plain HTTP on api_port
    tls_email: str = ""
    caddy_image: str = CADDY_IMAGE
    log_retention_days: int = 30
    gpu_wait_seconds: int = 2700  # the extension takes ~10-20 min; past this the unit fails and restarts
    demo_ui: bool = False  # the chat playground on the front's origin


def cloud_config(host: VllmHost) -> str:
    """The `#cloud-config` document (YAML) for `host`."""
    files = [
        _file("/usr/local/sbin/llminfer-setup", _SETUP_SCRIPT, "0750"),
        _file("/usr/local/sbin/llminfer-wait-gpu", _WAIT_GPU_SCRIPT, "0750"),
        _file("/usr/local/sbin/llminfer-fetch-secrets", _fetch_secrets_script(host), "0750"),
        _file("/usr/local/sbin/llminfer-run-vllm", _run_vllm_script(host), "0750"),
        _file("/usr/local/sbin/llminfer-check-auth", _check_auth_script(host), "0750"),
        _file("/etc/systemd/system/vllm.service", _vllm_unit(host), "0644"),
        _file(CADDYFILE, front_caddyfile(host), "0644"),
        *([_file(f"{PAGE_DIR}/{name}", text, "0644") for name, text in page_files().items()] if host.demo_ui else []),
        _file("/etc/systemd/system/caddy.service", _caddy_unit(host), "0644"),
        _file(NO_KERNEL_UPGRADES_CONF, _NO_KERNEL_UPGRADES, "0644"),
        _file(
            "/etc/systemd/journald.conf.d/llminfer.conf",
            f"[Journal]\nMaxRetentionSec={host.log_retention_days}day\n",
            "0644",
        ),
    ]
    units = ["vllm.service", "caddy.service"]
    document = {
        "write_files": files,
        # Only enables the units: systemd runs them at this and every later boot.
        "runcmd": [
            ["systemctl", "restart", "systemd-journald"],
            ["systemctl", "daemon-reload"],
            *(["systemctl", "enable", "--now", "--no-block", unit] for unit in units),
        ],
    }
    return "#cloud-config\n" + yaml.dump(document, Dumper=_BlockDumper, sort_keys=False, width=1000)


def encode_custom_data(text: str) -> str:
    """Base64 `custom_data`, refusing what Azure would reject only at deploy time."""
    encoded = base64.b64encode(text.encode()).decode()
    if len(encoded) > CUSTOM_DATA_LIMIT:
        raise ValueError(
            f"cloud-init is {len(encoded)} base64 characters; Azure takes at most {CUSTOM_DATA_LIMIT}"
        )
    return encoded


def vllm_arguments(host: VllmHost) -> list[str]:
    """The `vllm serve` flags after the image name.

    `--host 0.0.0.0` is inside the container (Docker's port mapping needs it); the host publishes the port
    on 127.0.0.1 only (`docker_run_arguments`), so only the front reaches vLLM.
    """
    args = [
        "--model", host.model_id,
        "--host", "0.0.0.0",
        "--port", str(CONTAINER_PORT),
        "--max-model-len", str(host.max_model_len),
        "--max-num-seqs", str(host.max_num_seqs),
        "--gpu-memory-utilization", f"{host.gpu_memory_utilization:g}",
        "--tensor-parallel-size", str(host.tensor_parallel_size),
    ]  # fmt: skip
    if host.quantization:
        args += ["--quantization", host.quantization]
    return args


def docker_run_arguments(host: VllmHost) -> list[str]:
    """The whole `docker run` line of the vLLM container (what `llminfer-run-vllm` execs)."""
    return [
        "/usr/bin/docker", "run", "--rm", "--name", "vllm", "--gpus", "all", "--ipc=host",
        # Loopback only: vLLM's --api-key guards /v1/* alone, so nothing but the front may reach it.
        "-p", f"127.0.0.1:{VLLM_LOCAL_PORT}:{CONTAINER_PORT}",
        "--env-file", SECRETS_ENV,
        "-v", f"{HF_CACHE_DIR}:/root/.cache/huggingface",
        "--log-opt", "max-size=50m", "--log-opt", "max-file=3",
        host.image,
        *vllm_arguments(host),
    ]  # fmt: skip


def front_caddyfile(host: VllmHost) -> str:
    """The front's Caddyfile: plain HTTP on api_port, or HTTPS on 443 for tls_domain."""
    return caddyfile(
        f":{HTTPS_PORT}" if host.tls_domain else f":{host.api_port}",
        f"127.0.0.1:{VLLM_LOCAL_PORT}",
        tls_domain=host.tls_domain,
        tls_email=host.tls_email,
        page_dir=FRONT_PAGE_DIR if host.demo_ui else "",
    )


# ------------------------------------------------------------------------------------------ rendering


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings as `|` blocks, so the user-data on the VM reads like the scripts it holds."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str_representer)


def _file(path: str, content: str, permissions: str) -> dict[str, str]:
    return {"path": path, "owner": "root:root", "permissions": permissions, "content": content}


def _q(value: object) -> str:
    return shlex.quote(str(value))


_SETUP_SCRIPT = """\
#!/bin/bash
# Docker and the NVIDIA container toolkit from their vendors' apt repositories. Idempotent: runs at every
# start of vllm.service, after llminfer-wait-gpu, so never while the GPU driver extension uses dpkg (the
# extension does not wait for the dpkg lock and fails if we hold it).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
# Others (unattended-upgrades) may still hold the lock: wait for it rather than fail.
apt_get() { apt-get -o DPkg::Lock::Timeout=1200 -y "$@"; }
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
for _ in $(seq 1 120); do dpkg --configure -a && break; sleep 10; done
# The GRID driver is built for this kernel: hold the kernel packages so no upgrade boots another one.
mapfile -t kernel < <(dpkg-query -W -f='${Package} ${Status}\\n' 'linux-image-*' 'linux-headers-*' \\
  'linux-modules-*' 'linux-azure*' 'linux-generic*' 'linux-virtual*' 2>/dev/null \\
  | awk '/ install ok installed$/ {print $1}')
if (( ${#kernel[@]} )); then apt-mark hold "${kernel[@]}" >/dev/null; fi
# shellcheck source=/dev/null
codename=$(. /etc/os-release && echo "${UBUNTU_CODENAME:-$VERSION_CODENAME}")
install -m 0755 -d /etc/apt/keyrings
if ! installed docker-ce || ! installed containerd.io; then
  curl -fsSL --retry 5 https://download.docker.com/linux/ubuntu/gpg -o /etc/apt/keyrings/docker.asc
  chmod a+r /etc/apt/keyrings/docker.asc
  echo "deb [arch=$(dpkg --print-architecture) signed-by=/etc/apt/keyrings/docker.asc]" \\
    "https://download.docker.com/linux/ubuntu ${codename} stable" > /etc/apt/sources.list.d/docker.list
  apt_get update
  apt_get install docker-ce docker-ce-cli containerd.io
fi
if ! installed nvidia-container-toolkit; then
  curl -fsSL --retry 5 https://nvidia.github.io/libnvidia-container/gpgkey \\
    | gpg --batch --yes --dearmor -o /etc/apt/keyrings/nvidia-container-toolkit.gpg
  curl -fsSL --retry 5 https://nvidia.github.io/libnvidia-container/stable/deb/nvidia-container-toolkit.list \\
    | sed 's#deb https://#deb [signed-by=/etc/apt/keyrings/nvidia-container-toolkit.gpg] https://#' \\
    > /etc/apt/sources.list.d/nvidia-container-toolkit.list
  apt_get update
  apt_get install nvidia-container-toolkit
fi
if ! grep -qs '"nvidia"' /etc/docker/daemon.json; then
  nvidia-ctk runtime configure --runtime=docker
  systemctl restart docker
fi
systemctl enable --now docker
"""

_WAIT_GPU_SCRIPT = """\
#!/bin/bash
# Waits for the GRID driver that the NvidiaGpuDriverLinux extension installs (it may reboot the VM) and
# for the extension to report success: until then it may run apt/dpkg, and nothing of ours may.
# The LLMINFER_* overrides exist for the tests.
limit=${1:-2700}
status_glob=${LLMINFER_EXTENSION_STATUS:-/var/lib/waagent/Microsoft.HpcCompute.NvidiaGpuDriverLinux-*/status/*.status}
deadline=$((SECONDS + limit))
extension_done() {
  # shellcheck disable=SC2086 # the glob is meant to expand
  grep -Eqs '"status" *: *"success"' $status_glob
}
until nvidia-smi -L >/dev/null 2>&1 && extension_done; do
  if (( SECONDS >= deadline )); then
    echo "no NVIDIA driver after ${limit}s: look at the NvidiaGpuDriverLinux extension" \\
      "(az vm extension list -g <group> --vm-name <vm> -o table; /var/log/azure/nvidia-vmext-status)" >&2
    exit 1
  fi
  sleep "${LLMINFER_POLL:-15}"
done
nvidia-smi -L
"""


def _fetch_secrets_script(host: VllmHost) -> str:
    vault = host.key_vault_uri.rstrip("/")
    hf_line = (
        f'  hf_token=$(secret {_q(host.hf_token_secret_name)}) || {{ sleep "$pause"; continue; }}\n'
        if host.hf_token_secret_name
        else ""
    )
    hf_write = "  printf 'HF_TOKEN=%s\\n' \"$hf_token\"\n" if host.hf_token_secret_name else ""
    return f"""\
#!/bin/bash
# Reads the API key (and HF token) from Key Vault with the VM's managed identity into a root-only env file.
# Nothing secret is in the VM's custom data; the bearer token and the values never reach a command line.
set -uo pipefail
vault={_q(vault)}
client_id={_q(host.identity_client_id)}
# The LLMINFER_* overrides exist for the tests, which run this script against a local fake.
out=${{LLMINFER_SECRETS_ENV:-{SECRETS_ENV}}}
pause=${{LLMINFER_RETRY_PAUSE:-10}}
imds="http://${{LLMINFER_IMDS:-169.254.169.254}}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net&client_id=${{client_id}}"
field() {{ python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }}
secret() {{
  printf 'Authorization: Bearer %s\\n' "$token" \\
    | curl -fsS --max-time 20 -H @- "${{vault}}/secrets/$1?api-version=7.4" | field value
}}
umask 077
mkdir -p "$(dirname "$out")"
# The role assignment on the vault can take minutes to reach Key Vault: retry, then let systemd restart us.
for attempt in $(seq 1 "${{LLMINFER_ATTEMPTS:-90}}"); do
  token=$(curl -fsS --max-time 20 -H Metadata:true "$imds" | field access_token) || {{ sleep "$pause"; continue; }}
  api_key=$(secret {_q(host.api_key_secret_name)}) || {{ sleep "$pause"; continue; }}
{hf_line}  tmp=$(mktemp "${{out}}.XXXXXX")
  {{
  printf 'VLLM_API_KEY=%s\\n' "$api_key"
{hf_write}  }} > "$tmp"
  mv -f "$tmp" "$out"
  echo "secrets from ${{vault}} written to ${{out}} (attempt ${{attempt}})"
  exit 0
done
echo "could not read the secrets from ${{vault}} with managed identity ${{client_id}}" >&2
exit 1
"""


def _run_vllm_script(host: VllmHost) -> str:
    argv = docker_run_arguments(host)
    image_at = argv.index(host.image)
    engine = argv[image_at + 1 :]
    # The docker options on one line, then the image, then one `--flag value` pair per line.
    lines = [" ".join(_q(word) for word in argv[:image_at]), _q(host.image)]
    lines += [f"{_q(flag)} {_q(value)}" for flag, value in zip(engine[::2], engine[1::2], strict=True)]
    command = " \\\n  ".join(lines)
    return f"""\
#!/bin/bash
# vLLM reads the API key from VLLM_API_KEY (the same as --api-key), so it stays off every command line.
set -euo pipefail
mkdir -p {HF_CACHE_DIR}
exec {command}
"""


def _check_auth_script(host: VllmHost) -> str:
    engine = f"http://127.0.0.1:{VLLM_LOCAL_PORT}"
    if host.tls_domain:
        # The front answers only for its domain: reach it on this VM (not through DNS), certificate unchecked
        # (it may still be on its way from Let's Encrypt; the check is about what the front lets through).
        front = f"https://{host.tls_domain}"
        reach = f"--resolve {host.tls_domain}:{HTTPS_PORT}:127.0.0.1 --insecure"
    else:
        front = f"http://127.0.0.1:{host.api_port}"
        reach = ""
    return f"""\
#!/bin/bash
# Fail closed: once vLLM is up, a request without the key must be refused, and the front must refuse
# /invocations (vLLM's API key check covers /v1/* only: /invocations runs chat completions for anyone).
# The LLMINFER_* overrides exist for the tests, which run this script against local fakes.
limit=${{1:-3600}}
engine=${{LLMINFER_ENGINE:-{engine}}}
front=${{LLMINFER_FRONT:-{front}}}
read -r -a reach <<< "${{LLMINFER_FRONT_REACH-{reach}}}"
deadline=$((SECONDS + limit))
until curl -fsS --max-time 5 -o /dev/null "$engine{HEALTH_PATH}"; do
  if (( SECONDS >= deadline )); then echo "vLLM not healthy after ${{limit}}s" >&2; exit 1; fi
  sleep 10
done
code=$(curl -sS --max-time 10 -o /dev/null -w '%{{http_code}}' "$engine/v1/models")
if [ "$code" != 401 ]; then
  echo "vLLM answered $code to a request without the API key (expected 401): refusing to serve" >&2
  exit 1
fi
# The front is its own unit and may start later: wait for it to answer at all.
until code=$(curl -sS --max-time 10 "${{reach[@]}}" -o /dev/null -w '%{{http_code}}' -X POST \\
    -H 'Content-Type: application/json' -d '{{}}' "$front/invocations" 2>/dev/null) && [ "$code" != 000 ]; do
  if (( SECONDS >= deadline )); then echo "the front did not answer at $front after ${{limit}}s" >&2; exit 1; fi
  sleep 5
done
if [ "$code" != 404 ]; then
  echo "the front answered $code to POST /invocations (expected 404): refusing to serve" >&2
  exit 1
fi
code=$(curl -sS --max-time 10 "${{reach[@]}}" -o /dev/null -w '%{{http_code}}' "$front/v1/models")
if [ "$code" != 401 ]; then
  echo "the front answered $code to /v1/models without the API key (expected 401): refusing to serve" >&2
  exit 1
fi
echo "vLLM is healthy and requires the API key; the front refuses /invocations"
"""


def _pull_if_missing(image: str) -> str:
    # Pinned tags never change: pulling again at every restart would only spend Docker Hub's pull quota.
    return f"/bin/sh -c 'docker image inspect {image} >/dev/null 2>&1 || docker pull {image}'"


def _vllm_unit(host: VllmHost) -> str:
    return f"""\
[Unit]
Description=vLLM OpenAI-compatible server ({host.model_id})
Wants=network-online.target
After=network-online.target docker.service
# Keep retrying: the driver extension, apt mirrors and the model hub can all be slow on a first boot.
StartLimitIntervalSec=0

[Service]
Type=simple
TimeoutStartSec=7200
Restart=always
RestartSec=30
# The driver extension first (it runs dpkg and does not wait for the lock), then our apt work.
ExecStartPre=/usr/local/sbin/llminfer-wait-gpu {host.gpu_wait_seconds}
ExecStartPre=/usr/local/sbin/llminfer-setup
ExecStartPre=/usr/local/sbin/llminfer-fetch-secrets
ExecStartPre=-/usr/bin/docker rm -f vllm
ExecStartPre={_pull_if_missing(host.image)}
ExecStart=/usr/local/sbin/llminfer-run-vllm
ExecStartPost=/usr/local/sbin/llminfer-check-auth
ExecStop=/usr/bin/docker stop --time 30 vllm

[Install]
WantedBy=multi-user.target
"""


def _caddy_unit(host: VllmHost) -> str:
    where = f"HTTPS on {HTTPS_PORT} for {host.tls_domain}" if host.tls_domain else f"HTTP on {host.api_port}"
    page_mount = f" -v {PAGE_DIR}:{FRONT_PAGE_DIR}:ro" if host.demo_ui else ""
    return f"""\
[Unit]
Description=The vLLM front (Caddy): only /v1/* and /health reach vLLM, {where}
Wants=network-online.target
# Not After=vllm.service: vLLM's check-auth (its ExecStartPost) waits for the front to answer. Docker
# comes from llminfer-setup on a first boot: until then this unit fails and restarts.
After=network-online.target docker.service
StartLimitIntervalSec=0

[Service]
Type=simple
Restart=always
RestartSec=15
ExecStartPre=-/usr/bin/docker rm -f caddy
ExecStartPre={_pull_if_missing(host.caddy_image)}
ExecStartPre=/bin/mkdir -p {CADDY_DATA_DIR}
ExecStart=/usr/bin/docker run --rm --name caddy --network host -v {CADDYFILE}:/etc/caddy/Caddyfile:ro{page_mount} -v {CADDY_DATA_DIR}:/data --log-opt max-size=20m --log-opt max-file=3 {host.caddy_image} caddy run --config /etc/caddy/Caddyfile --adapter caddyfile
ExecStop=/usr/bin/docker stop caddy

[Install]
WantedBy=multi-user.target
"""
