"""cloud-init of the Azure vLLM VM: the document, its systemd units, and its scripts run for real.

The secret-fetching and auth-check scripts run under bash against a local fake of IMDS, Key Vault and
vLLM; every script passes shellcheck.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from components.azure_cloud_init import (
    CUSTOM_DATA_LIMIT,
    NO_KERNEL_UPGRADES_CONF,
    VLLM_LOCAL_PORT,
    VllmHost,
    cloud_config,
    docker_run_arguments,
    encode_custom_data,
    front_caddyfile,
    vllm_arguments,
)
from components.vllm_front import caddyfile

HOST = VllmHost(
    image="vllm/vllm-openai:v0.8.4",
    model_id="hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4",
    max_model_len=8192,
    max_num_seqs=64,
    gpu_memory_utilization=0.9,
    tensor_parallel_size=1,
    quantization="",
    api_port=8000,
    key_vault_uri="https://llm-kv-abc123.vault.azure.net/",
    identity_client_id="55555555-5555-5555-5555-555555555555",
    api_key_secret_name="vllm-api-key",  # pragma: allowlist secret (Key Vault secret name)
    hf_token_secret_name="",
)
TLS_HOST = replace(
    HOST, tls_domain="llm.example.com", tls_email="ops@example.com", hf_token_secret_name="hf-token"  # pragma: allowlist secret (Key Vault secret name)
)

def _needs(*tools: str):
    def mark(test):
        def check(*args, **kwargs):
            missing = [tool for tool in tools if shutil.which(tool) is None]
            assert not missing, f"missing {missing}: apt-get install -y {' '.join(missing)} (.ci/run does it)"
            return test(*args, **kwargs)

        check.__name__, check.__doc__, check.__wrapped__ = test.__name__, test.__doc__, test
        return check

    return mark


# A missing tool fails these tests (CI installs them), it never skips them.
needs_curl = _needs("bash", "curl")
needs_caddy = _needs("bash", "curl", "caddy")


def files_of(host: VllmHost) -> dict[str, dict]:
    document = yaml.safe_load(cloud_config(host))
    return {f["path"]: f for f in document["write_files"]}


def unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


# ------------------------------------------------------------------------------------------ document


def test_the_document_is_cloud_config_yaml_that_writes_and_enables_the_units():
    text = cloud_config(HOST)
    assert text.startswith("#cloud-config\n")
    document = yaml.safe_load(text)
    assert set(document) == {"write_files", "runcmd"}
    assert ["systemctl", "enable", "--now", "--no-block", "vllm.service"] in document["runcmd"]
    # The front runs without TLS too: vLLM's --api-key guards only /v1/*.
    assert ["systemctl", "enable", "--now", "--no-block", "caddy.service"] in document["runcmd"]
    # cloud-init itself never runs apt (it would race the GPU driver extension's dpkg).
    assert not {"packages", "package_update", "package_upgrade", "apt"} & set(document)
    for entry in document["write_files"]:
        assert entry["owner"] == "root:root"
        assert entry["permissions"] in ("0750", "0644")


def test_custom_data_is_base64_of_the_document_within_azures_limit():
    text = cloud_config(TLS_HOST)
    encoded = encode_custom_data(text)
    assert base64.b64decode(encoded).decode() == text
    assert len(encoded) < CUSTOM_DATA_LIMIT / 3  # plenty of room left


def test_custom_data_over_azures_limit_is_refused():
    with pytest.raises(ValueError, match="at most 65535"):
        encode_custom_data("#cloud-config\n" + "x" * 50_000)


def test_vllm_unit_restarts_forever_and_runs_every_step_in_order():
    unit = files_of(HOST)["/etc/systemd/system/vllm.service"]["content"]
    settings = unit_settings(unit)
    assert settings["Restart"] == ["always"]
    assert settings["StartLimitIntervalSec"] == ["0"]
    assert settings["WantedBy"] == ["multi-user.target"]
    steps = [value.split()[0].lstrip("-") for value in settings["ExecStartPre"]]
    # The driver extension's dpkg first (it does not wait for the lock), then our apt.
    assert steps == [
        "/usr/local/sbin/llminfer-wait-gpu",
        "/usr/local/sbin/llminfer-setup",
        "/usr/local/sbin/llminfer-fetch-secrets",
        "/usr/bin/docker",
        "/bin/sh",
    ]
    assert "docker pull vllm/vllm-openai:v0.8.4" in settings["ExecStartPre"][-1]
    assert settings["ExecStart"] == ["/usr/local/sbin/llminfer-run-vllm"]
    assert settings["ExecStartPost"] == ["/usr/local/sbin/llminfer-check-auth"]


def docker_run_words(host: VllmHost) -> list[str]:
    script = files_of(host)["/usr/local/sbin/llminfer-run-vllm"]["content"]
    command = script[script.index("exec ") + len("exec ") :]
    return shlex.split(command.replace("\\\n", " "))


def test_the_container_gets_the_gpu_the_cache_and_the_key_from_the_env_file_only():
    words = docker_run_words(HOST)
    assert words[:2] == ["/usr/bin/docker", "run"]
    assert "--gpus" in words and words[words.index("--gpus") + 1] == "all"
    assert words[words.index("--env-file") + 1] == "/etc/llminfer/secrets.env"
    # Loopback only: clients reach the front, never vLLM.
    assert words[words.index("-p") + 1] == f"127.0.0.1:{VLLM_LOCAL_PORT}:8000"
    assert words == docker_run_arguments(HOST)
    assert "/var/lib/llminfer/huggingface:/root/.cache/huggingface" in words
    image_at = words.index("vllm/vllm-openai:v0.8.4")
    assert words[image_at + 1 :] == vllm_arguments(HOST)
    assert "--api-key" not in words  # vLLM reads VLLM_API_KEY from the env file instead of a command line


def test_engine_flags_come_from_the_host_settings():
    flags = vllm_arguments(replace(HOST, quantization="awq_marlin", tensor_parallel_size=2, max_num_seqs=32))
    pairs = dict(zip(flags[::2], flags[1::2], strict=True))
    assert pairs == {
        "--model": "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4",
        "--host": "0.0.0.0",
        "--port": "8000",
        "--max-model-len": "8192",
        "--max-num-seqs": "32",
        "--gpu-memory-utilization": "0.9",
        "--tensor-parallel-size": "2",
        "--quantization": "awq_marlin",
    }
    assert "--quantization" not in vllm_arguments(HOST)  # vLLM reads it from the model config


@pytest.mark.parametrize("host", [HOST, TLS_HOST], ids=["http", "tls"])
def test_the_front_always_runs_before_vllm_on_loopback(host):
    files = files_of(host)
    assert docker_run_words(host)[docker_run_words(host).index("-p") + 1] == f"127.0.0.1:{VLLM_LOCAL_PORT}:8000"
    written = files["/etc/llminfer/Caddyfile"]["content"]
    assert written == front_caddyfile(host)
    if host.tls_domain:
        assert written == caddyfile(":443", f"127.0.0.1:{VLLM_LOCAL_PORT}", tls_domain="llm.example.com",
                                    tls_email="ops@example.com")  # fmt: skip
    else:
        assert written == caddyfile(":8000", f"127.0.0.1:{VLLM_LOCAL_PORT}")
    unit = files["/etc/systemd/system/caddy.service"]["content"]
    caddy = unit_settings(unit)
    # vLLM's check-auth waits for the front: the front must not wait for vLLM.
    assert "vllm.service" not in "".join(caddy["After"] + caddy.get("Wants", []))
    assert caddy["Restart"] == ["always"]
    assert "--network host" in caddy["ExecStart"][0]
    assert "caddy:2.10" in caddy["ExecStart"][0]
    document = yaml.safe_load(cloud_config(host))
    assert ["systemctl", "enable", "--now", "--no-block", "caddy.service"] in document["runcmd"]


def test_journald_keeps_logs_for_the_retention_days():
    conf = files_of(replace(HOST, log_retention_days=7))["/etc/systemd/journald.conf.d/llminfer.conf"][
        "content"
    ]
    assert "MaxRetentionSec=7day" in conf


def test_nothing_secret_is_in_the_document():
    # Only where to find the secrets: the vault, the identity's client id and the secret names.
    text = cloud_config(TLS_HOST)
    assert "llm-kv-abc123.vault.azure.net" in text
    assert "vllm-api-key" in text and "hf-token" in text
    assert "VLLM_API_KEY=%s" in text  # written from the fetched value, at run time


@pytest.mark.parametrize("host", [HOST, TLS_HOST], ids=["http", "tls"])
def test_every_script_passes_shellcheck(host):
    shellcheck = (
        str(Path(sys.prefix, "bin", "shellcheck"))
        if Path(sys.prefix, "bin", "shellcheck").exists()
        else "shellcheck"
    )
    scripts = {
        path: f["content"] for path, f in files_of(host).items() if f["content"].startswith("#!/bin/bash")
    }
    assert len(scripts) == 5
    for path, content in scripts.items():
        result = subprocess.run(
            [shellcheck, "-s", "bash", "-"], input=content, capture_output=True, text=True
        )
        assert result.returncode == 0, f"{path}:\n{result.stdout}"


# ----------------------------------------------------------------------- scripts against local fakes


class FakeAzure:
    """IMDS, Key Vault and vLLM on one local port, recording what the scripts sent."""

    def __init__(self, secrets: dict[str, str], *, forbidden_first: int = 0, models_status: int = 401):
        self.secrets = secrets
        self.forbidden_left = forbidden_first
        self.models_status = models_status
        self.requests: list[tuple[str, dict[str, list[str]], dict[str, str]]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                url = urlparse(self.path)
                fake.requests.append((url.path, parse_qs(url.query), dict(self.headers)))
                status, body = fake.answer(url.path, self.headers)
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.do_GET()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, path: str, headers) -> tuple[int, dict]:
        if path == "/metadata/identity/oauth2/token":
            if headers.get("Metadata") != "true":
                return 400, {"error": "missing Metadata header"}
            return 200, {"access_token": "fake-bearer-token", "expires_in": "3599"}
        if path.startswith("/secrets/"):
            if headers.get("Authorization") != "Bearer fake-bearer-token":
                return 401, {"error": "no bearer"}
            if self.forbidden_left > 0:
                self.forbidden_left -= 1
                return 403, {"error": {"code": "Forbidden"}}
            name = path.removeprefix("/secrets/")
            if name not in self.secrets:
                return 404, {"error": {"code": "SecretNotFound"}}
            return 200, {"value": self.secrets[name], "id": f"https://vault/secrets/{name}/v1"}
        if path == "/health":
            return 200, {}
        if path == "/v1/models":
            return self.models_status, {}
        if path == "/invocations":
            return 200, {"choices": []}  # as vLLM: outside /v1, no key asked
        return 404, {}

    def __enter__(self) -> FakeAzure:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def run_script(host: VllmHost, path: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    script = tmp_path / Path(path).name
    script.write_text(files_of(host)[path]["content"])
    return subprocess.run(
        ["bash", str(script)],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def fetch_env(fake: FakeAzure, out: Path, **extra: str) -> dict[str, str]:
    return {
        "LLMINFER_IMDS": f"127.0.0.1:{fake.port}",
        "LLMINFER_SECRETS_ENV": str(out),
        "LLMINFER_RETRY_PAUSE": "0",
        **extra,
    }


def host_for(fake: FakeAzure, base: VllmHost = HOST) -> VllmHost:
    return replace(base, key_vault_uri=f"http://127.0.0.1:{fake.port}/", api_port=fake.port)


@needs_curl
def test_fetch_secrets_writes_a_root_only_env_file_from_key_vault(tmp_path):
    out = tmp_path / "secrets.env"
    with FakeAzure(
        {"vllm-api-key": "key-from-vault", "hf-token": "hf_from_vault"}, forbidden_first=2
    ) as fake:
        host = host_for(fake, replace(HOST, hf_token_secret_name="hf-token"))
        result = run_script(host, "/usr/local/sbin/llminfer-fetch-secrets", fetch_env(fake, out), tmp_path)
    assert result.returncode == 0, result.stderr
    assert out.read_text() == "VLLM_API_KEY=key-from-vault\nHF_TOKEN=hf_from_vault\n"  # pragma: allowlist secret (test fixture)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    token_requests = [r for r in fake.requests if r[0] == "/metadata/identity/oauth2/token"]
    assert token_requests[0][1]["client_id"] == ["55555555-5555-5555-5555-555555555555"]
    assert token_requests[0][1]["resource"] == ["https://vault.azure.net"]
    secret_requests = [r for r in fake.requests if r[0].startswith("/secrets/")]
    # Two refusals while the role assignment propagates, then both secrets.
    assert [r[0] for r in secret_requests] == ["/secrets/vllm-api-key"] * 3 + ["/secrets/hf-token"]
    assert all(r[1]["api-version"] == ["7.4"] for r in secret_requests)
    assert "key-from-vault" not in result.stdout + result.stderr


@needs_curl
def test_fetch_secrets_gives_up_without_writing_when_access_never_comes(tmp_path):
    out = tmp_path / "secrets.env"
    with FakeAzure({"vllm-api-key": "key"}, forbidden_first=100) as fake:
        result = run_script(
            host_for(fake),
            "/usr/local/sbin/llminfer-fetch-secrets",
            fetch_env(fake, out, LLMINFER_ATTEMPTS="3"),
            tmp_path,
        )
    assert result.returncode == 1
    assert "could not read the secrets" in result.stderr
    assert not out.exists()
    assert list(tmp_path.glob("secrets.env.*")) == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_check_auth(models_status: int, tmp_path: Path, *, front: bool = True) -> subprocess.CompletedProcess:
    """check-auth against a fake vLLM, behind the real front (Caddy with the rendered config) or not."""
    with FakeAzure({}, models_status=models_status) as fake:
        engine = f"http://127.0.0.1:{fake.port}"
        if not front:  # no front: "the front" is vLLM itself, as before the fix
            env = {"LLMINFER_ENGINE": engine, "LLMINFER_FRONT": engine}
            return run_script(HOST, "/usr/local/sbin/llminfer-check-auth", env, tmp_path)
        port = free_port()
        config = tmp_path / "Caddyfile"
        config.write_text(caddyfile(f"127.0.0.1:{port}", f"127.0.0.1:{fake.port}"))
        xdg = {"XDG_CONFIG_HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path), "HOME": str(tmp_path)}
        caddy = subprocess.Popen(
            [shutil.which("caddy"), "run", "--config", str(config), "--adapter", "caddyfile"],
            env={**os.environ, **xdg}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            env = {"LLMINFER_ENGINE": engine, "LLMINFER_FRONT": f"http://127.0.0.1:{port}"}
            return run_script(HOST, "/usr/local/sbin/llminfer-check-auth", env, tmp_path)
        finally:
            caddy.terminate()
            caddy.wait(timeout=10)


@needs_caddy
def test_check_auth_passes_when_vllm_needs_the_key_and_the_front_refuses_invocations(tmp_path):
    result = run_check_auth(401, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "requires the API key; the front refuses /invocations" in result.stdout


@needs_caddy
def test_check_auth_fails_closed_when_vllm_serves_without_the_key(tmp_path):
    result = run_check_auth(200, tmp_path)
    assert result.returncode == 1
    assert "refusing to serve" in result.stderr


@needs_curl
def test_check_auth_fails_closed_when_invocations_gets_through(tmp_path):
    # vLLM asks the key on /v1/* but runs /invocations for anyone: without the front that is open.
    result = run_check_auth(401, tmp_path, front=False)
    assert result.returncode == 1
    assert "the front answered 200 to POST /invocations (expected 404): refusing to serve" in result.stderr


def test_check_auth_reaches_the_tls_front_on_this_vm():
    script = files_of(TLS_HOST)["/usr/local/sbin/llminfer-check-auth"]["content"]
    assert "front=${LLMINFER_FRONT:-https://llm.example.com}" in script
    assert "--resolve llm.example.com:443:127.0.0.1 --insecure" in script
    assert f"engine=${{LLMINFER_ENGINE:-http://127.0.0.1:{VLLM_LOCAL_PORT}}}" in script


# --- the GPU driver extension and apt; the kernel the driver was built for ------------------------------


def fake_tools(tmp_path: Path, **scripts: str) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in scripts.items():
        tool = bin_dir / name
        tool.write_text(f"#!/bin/bash\n{body}\n")
        tool.chmod(0o755)
    return f"{bin_dir}:{os.environ['PATH']}"


def run_wait_gpu(tmp_path: Path, status: str | None) -> subprocess.CompletedProcess:
    status_dir = tmp_path / "Microsoft.HpcCompute.NvidiaGpuDriverLinux-1.6.0.0" / "status"
    status_dir.mkdir(parents=True)
    if status is not None:
        (status_dir / "0.status").write_text(json.dumps([{"status": {"status": status, "operation": "Enable"}}]))
    script = tmp_path / "llminfer-wait-gpu"
    script.write_text(files_of(HOST)["/usr/local/sbin/llminfer-wait-gpu"]["content"])
    env = {
        "PATH": fake_tools(tmp_path, **{"nvidia-smi": "echo 'GPU 0: NVIDIA A10-24Q'"}),
        "LLMINFER_EXTENSION_STATUS": str(tmp_path / "Microsoft.HpcCompute.NvidiaGpuDriverLinux-*/status/*.status"),
        "LLMINFER_POLL": "0.2",
    }
    return subprocess.run(["bash", str(script), "1"], env=env, capture_output=True, text=True, timeout=30)


def test_wait_gpu_waits_for_the_extension_to_finish_not_only_for_the_driver(tmp_path):
    # The driver answers while the extension is still at work (it may run dpkg): not done yet.
    assert run_wait_gpu(tmp_path / "busy", "transitioning").returncode == 1
    assert run_wait_gpu(tmp_path / "none", None).returncode == 1
    done = run_wait_gpu(tmp_path / "done", "success")
    assert done.returncode == 0, done.stderr
    assert "NVIDIA A10" in done.stdout


def test_unattended_upgrades_never_install_a_kernel_and_setup_holds_it():
    files = files_of(HOST)
    conf = files[NO_KERNEL_UPGRADES_CONF]["content"]
    assert "Unattended-Upgrade::Package-Blacklist {" in conf
    for pattern in ("^linux-image-", "^linux-headers-", "^linux-modules-", "^linux-azure"):
        assert f'"{pattern}";' in conf
    setup = files["/usr/local/sbin/llminfer-setup"]["content"]
    hold_at = setup.index('apt-mark hold "${kernel[@]}"')
    assert hold_at < setup.index("apt_get update")  # before any package comes in


def test_setup_holds_the_installed_kernel_packages(tmp_path):
    """The hold line runs for real against a fake dpkg-query/apt-mark (the rest of setup needs a VM)."""
    setup = files_of(HOST)["/usr/local/sbin/llminfer-setup"]["content"]
    start = setup.index("mapfile -t kernel")
    end = setup.index("\n", setup.index('apt-mark hold "${kernel[@]}"')) + 1
    script = tmp_path / "hold"
    script.write_text("#!/bin/bash\nset -euo pipefail\n" + setup[start:end])
    listing = "\n".join([
        "linux-image-6.5.0-1025-azure install ok installed",
        "linux-azure install ok installed",
        "linux-headers-6.2.0-1019-azure deinstall ok config-files",
        "linux-modules-6.5.0-1025-azure install ok installed",
    ])  # fmt: skip
    held = tmp_path / "held"
    path = fake_tools(tmp_path, **{"dpkg-query": f"cat <<'X'\n{listing}\nX",
                                   "apt-mark": f'echo "$@" > {held}'})  # fmt: skip
    result = subprocess.run(["bash", str(script)], env={"PATH": path}, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert held.read_text().split() == [
        "hold", "linux-image-6.5.0-1025-azure", "linux-azure", "linux-modules-6.5.0-1025-azure",
    ]  # fmt: skip


def _script_names(predicate: Callable[[str], bool]) -> list[str]:
    return [path for path in files_of(TLS_HOST) if predicate(path)]


def test_units_name_only_scripts_the_document_writes():
    files = files_of(TLS_HOST)
    written = set(_script_names(lambda p: p.startswith("/usr/local/sbin/")))
    for unit in ("/etc/systemd/system/vllm.service", "/etc/systemd/system/caddy.service"):
        for values in unit_settings(files[unit]["content"]).values():
            for value in values:
                program = value.split()[0].lstrip("-")
                if program.startswith("/usr/local/sbin/"):
                    assert program in written
