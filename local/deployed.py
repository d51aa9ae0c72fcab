"""What a stack deploys around vLLM, read from its rendered resource graph (`stacks/rendered.py`).

The local harness starts engines and fronts from these, so a test of the local engine is a test of the
deployed configuration:

- aws: the SageMaker Model's container environment (LMI turns it into engine arguments: `local/lmi.py`);
- gcp: the Deployment's `vllm` container (command, args, env) and the front's Caddyfile from its ConfigMap;
- azure: the VM's cloud-init: the `docker run` line of `llminfer-run-vllm` and `/etc/llminfer/Caddyfile`.

Secrets are the one thing the graph cannot hold in clear: the API key is handed in by the caller.
"""

from __future__ import annotations

import base64
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

import yaml

from local.vllm_engine import expand_kubernetes_variables
from stacks.rendered import StackRun

# The vLLM server module every deployment runs: the GKE container's command, and the ENTRYPOINT of the
# vllm/vllm-openai image the Azure VM runs (`python3 -m vllm.entrypoints.openai.api_server`).
VLLM_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
# Container paths (caches, mounted secrets) that mean nothing on this machine: not passed to the local engine.
CONTAINER_PATH_VARIABLES = frozenset({"HOME", "XDG_CACHE_HOME", "HF_HOME", "HF_TOKEN_PATH", "USER"})
_IMAGE = re.compile(r"^vllm/vllm-openai[:@]")


@dataclass
class FrontedVllm:
    """vLLM and the front before it, as one deployment runs them."""

    cloud: str
    vllm_args: list[str]  # the flags after the server module
    vllm_env: dict[str, str]  # the container env, secrets filled in, container paths left out
    vllm_address: str  # where the front reaches vLLM ("127.0.0.1:8000")
    caddyfile: str
    api_listen: str  # the front's API site address in the Caddyfile ("http://:8080")
    metrics_listen: str | None = None
    probes: dict[str, dict[str, Any]] = field(default_factory=dict)  # GKE: "<container>.<kind>" -> probe


def aws_lmi_environment(graph: StackRun) -> dict[str, str]:
    return dict(graph.one("aws:sagemaker/model:Model").inputs["primaryContainer"]["environment"])


def gateway_lambda_environment(graph: StackRun) -> dict[str, str]:
    """The gateway function's environment variables, as the aws stack sets them."""
    functions = [f for f in graph.of_type("aws:lambda/function:Function")
                 if "GATEWAY_ENDPOINT_NAME" in ((f.inputs.get("environment") or {}).get("variables") or {})]
    assert len(functions) == 1, [f.name for f in functions]
    return dict(functions[0].inputs["environment"]["variables"])


def _sites(caddyfile: str) -> list[str]:
    return re.findall(r"^(http://:\d+|https?://\S+|:\d+)\s*\{", caddyfile, flags=re.M)


def gke_fronted(graph: StackRun, api_key: str) -> FrontedVllm:
    (deployment,) = [d for d in graph.of_type("kubernetes:apps/v1:Deployment")
                     if any(c["name"] == "vllm" for c in d.inputs["spec"]["template"]["spec"]["containers"])]
    containers = {c["name"]: c for c in deployment.inputs["spec"]["template"]["spec"]["containers"]}
    vllm = containers["vllm"]
    assert vllm["command"][-2:] == ["-m", VLLM_SERVER_MODULE], vllm["command"]
    env: dict[str, str] = {}
    for item in vllm.get("env", []):
        if item["name"] in CONTAINER_PATH_VARIABLES:
            continue
        if "valueFrom" in item:
            ref = item["valueFrom"]["secretKeyRef"]
            if ref["name"] != "vllm-api-key":
                continue  # the HF token: the local model needs none
            env[item["name"]] = api_key
        else:
            env[item["name"]] = str(item["value"])
    (config_map,) = [c for c in graph.of_type("kubernetes:core/v1:ConfigMap") if "Caddyfile" in c.inputs.get("data", {})]
    caddyfile = config_map.inputs["data"]["Caddyfile"]
    sites = _sites(caddyfile)
    probes = {f"{name}.{kind}": c[kind] for name, c in containers.items()
              for kind in ("startupProbe", "readinessProbe", "livenessProbe") if kind in c}
    # The kubelet expands $(VAR) in args from the container's env (docker, on Azure, does not).
    args = [expand_kubernetes_variables(a, env) for a in vllm["args"]]
    return FrontedVllm("gcp", args, env, _upstream(caddyfile), caddyfile, sites[0],
                       sites[1] if len(sites) > 1 else None, probes)


def azure_cloud_init_files(graph: StackRun) -> dict[str, str]:
    (vm,) = graph.of_type("azure-native:compute:VirtualMachine")
    document = yaml.safe_load(base64.b64decode(vm.inputs["osProfile"]["customData"]).decode())
    return {f["path"]: f["content"] for f in document["write_files"]}


def azure_fronted(graph: StackRun, api_key: str) -> FrontedVllm:
    files = azure_cloud_init_files(graph)
    script = files["/usr/local/sbin/llminfer-run-vllm"]
    run_line = script[script.index("exec /usr/bin/docker run"):].replace("\\\n", " ")
    tokens = shlex.split(run_line.splitlines()[0])
    image_at = next(i for i, t in enumerate(tokens) if _IMAGE.match(t))
    docker_options, vllm_args = tokens[:image_at], tokens[image_at + 1:]
    published = docker_options[docker_options.index("-p") + 1]  # HOST_IP:HOST_PORT:CONTAINER_PORT
    host_ip, host_port, _container_port = published.split(":")
    # The env file holds what llminfer-fetch-secrets wrote from Key Vault: the API key (and an HF token).
    assert "--env-file" in docker_options, docker_options
    caddyfile = files["/etc/llminfer/Caddyfile"]
    assert _upstream(caddyfile) == f"{host_ip}:{host_port}", "the front must reach vLLM where docker publishes it"
    return FrontedVllm("azure", vllm_args, {"VLLM_API_KEY": api_key}, f"{host_ip}:{host_port}", caddyfile,
                       _sites(caddyfile)[0])


def _upstream(caddyfile: str) -> str:
    upstreams = set(re.findall(r"reverse_proxy\s+(\S+)", caddyfile))
    assert len(upstreams) == 1, upstreams
    return upstreams.pop()
