"""VllmKubernetes: args validation, helpers, and the Kubernetes/GCP objects it creates under Pulumi mocks."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess

import pulumi
import pytest
from pulumi_kubernetes import Provider

from components import InvalidArgs
from components.vllm_kubernetes import (
    ADAPTER_IMAGE,
    FRONT_PORT,
    METRICS_PORT,
    TOKENS_PER_SECOND_METRIC,
    WAITING_REQUESTS_METRIC,
    VllmKubernetes,
    VllmKubernetesArgs,
    front_caddyfile,
    front_container,
    kubernetes_labels,
    quantity,
    ready_timeout,
    skip_annotations,
    vllm_arguments,
    vllm_container,
    vllm_env,
)
from tests import pulumi_harness
from tests.pulumi_harness import run_program

ARGS = VllmKubernetesArgs(
    project="my-project-1",
    project_number="123456789",
    region="us-central1",
    image="vllm/vllm-openai:v0.8.4",
    model_id="hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4",
    service_source_ranges=("203.0.113.0/24",),
    labels={"project": "llm-inference", "owner": "ML Platform"},
)


@pytest.mark.parametrize(
    ("changes", "field", "says"),
    [
        ({"project_number": "my-project"}, "project_number", "digits"),
        ({"image": "vllm/vllm-openai"}, "image", "pin a version tag"),
        ({"image": "vllm/vllm-openai:latest"}, "image", "not latest"),
        ({"model_id": " "}, "model_id", "non-empty"),
        ({"max_model_len": 0}, "max_model_len", ">= 1"),
        ({"gpu_count": 0}, "gpu_count", ">= 1"),
        ({"gpu_memory_utilization": 0.99}, "gpu_memory_utilization", "between 0.1 and 0.98"),
        ({"quantization": "AWQ marlin"}, "quantization", "not a vLLM quantization"),
        ({"extra_args": ("--api-key=abc",)}, "extra_args", "--api-key is set from its own config key"),
        ({"extra_args": ("--max-model-len", "4096")}, "extra_args", "--max-model-len"),
        ({"extra_args": ("",)}, "extra_args", "non-empty strings"),
        ({"accelerator_type": "l4"}, "accelerator_type", "nvidia-l4"),
        ({"memory_request_gib": 30, "memory_limit_gib": 24}, "memory_request_gib", "must not exceed"),
        ({"shm_size_gib": 24}, "shm_size_gib", "counts against it"),
        ({"startup_timeout_seconds": 30}, "startup_timeout_seconds", "between 60 and 7200"),
        ({"service_source_ranges": ()}, "service_source_ranges", "at least one CIDR"),
        ({"service_source_ranges": ("203.0.113.5/24",)}, "service_source_ranges", "not an IPv4 CIDR"),
        ({"min_replicas": 0}, "min_replicas", "at least 1"),
        ({"min_replicas": 5, "max_replicas": 4}, "min_replicas", "must not exceed max_replicas"),
        ({"target_tokens_per_second": 0, "target_waiting_requests": 0}, "target_tokens_per_second", "both 0"),
        ({"target_waiting_requests": -1}, "target_waiting_requests", "between 0"),
        ({"namespace": "kube-system"}, "namespace", "of its own"),
        ({"namespace": "LLM"}, "namespace", "DNS label"),
    ],
)
def test_bad_args_name_their_field(changes, field, says):
    with pytest.raises(InvalidArgs) as err:
        dataclasses.replace(ARGS, **changes)
    assert err.value.field == field
    assert says in err.value.message


def test_helpers():
    assert kubernetes_labels({"owner": "ML Platform/Team", "x y": "-edge-"}) == {"owner": "ML-Platform-Team", "x-y": "edge"}
    assert kubernetes_labels({"long": "a" * 70})["long"] == "a" * 63
    assert quantity(600) == "600" and quantity(2.5) == "2500m" and quantity(4.0) == "4"
    assert skip_annotations({"CKV_B": "why b", "CKV_A": "why a"}) == {
        "checkov.io/skip1": "CKV_A=why a",
        "checkov.io/skip2": "CKV_B=why b",
    }
    with pytest.raises(ValueError, match="free of '='"):
        skip_annotations({"CKV_A": "because x=y"})


def test_vllm_arguments_carry_the_engine_settings_and_no_key():
    argv = vllm_arguments(dataclasses.replace(ARGS, quantization="awq_marlin", extra_args=("--enable-prefix-caching",), gpu_count=2))
    pairs = dict(zip(argv[::2], argv[1::2], strict=False))
    assert pairs["--model"] == ARGS.model_id
    assert pairs["--port"] == "8000"
    assert pairs["--tensor-parallel-size"] == "2"
    assert pairs["--quantization"] == "awq_marlin"
    assert pairs["--api-key"] == "$(VLLM_API_KEY)"  # expanded by the kubelet from the Secret
    assert argv[-1] == "--enable-prefix-caching"
    assert "--quantization" not in vllm_arguments(ARGS)


def _build(args: VllmKubernetesArgs, *, api_key: str | None = None, hf_token: str | None = None):
    def program():
        # Outputs belong to the mocked runtime: secrets are made inside the program.
        secrets = {
            "api_key": pulumi.Output.secret(api_key) if api_key else None,
            "hf_token": pulumi.Output.secret(hf_token) if hf_token else None,
        }
        args_here = dataclasses.replace(args, **{k: v for k, v in secrets.items() if v is not None})
        provider = Provider("k8s", kubeconfig="{}")
        workload = VllmKubernetes("svc", args_here, opts=pulumi.ResourceOptions(providers=[provider]))
        return {"url": workload.url, "apiKey": workload.api_key}

    return run_program(program, stack="dev")


def _container(run):
    deployment = [d for d in run.of_type("kubernetes:apps/v1:Deployment") if d.name == "svc-deployment"][0]
    return deployment, deployment.inputs["spec"]["template"]["spec"]


def test_children_hang_off_the_component_and_the_key_is_generated_secret():
    run = _build(ARGS)
    component = run.one("llminfer:vllm_kubernetes:VllmKubernetes")
    adapter = run.one("llminfer:vllm_kubernetes:CustomMetricsAdapter")
    assert adapter.parent == component.urn
    for r in run.resources:
        if r.type.startswith(("kubernetes:", "gcp:", "random:")):
            assert r.parent in (component.urn, adapter.urn), r.name
            assert r.name.startswith("svc-"), r.name
    assert run.outputs["url"] == "http://203.0.113.10/v1"
    assert run.secret_outputs == {"apiKey"}
    assert len(run.outputs["apiKey"]) == 48
    secret = run.named("svc-api-key")
    assert secret.type == "kubernetes:core/v1:Secret"
    assert secret.inputs["stringData"] == {"api-key": run.outputs["apiKey"]}


def test_a_given_api_key_is_used_and_none_generated():
    run = _build(ARGS, api_key="k" * 32)
    assert not run.of_type("random:index/randomPassword:RandomPassword")
    assert run.outputs["apiKey"] == "k" * 32


def test_hf_token_is_mounted_as_a_file_not_an_env_var():
    run = _build(ARGS, hf_token="hf_abc")
    assert run.named("svc-hf-token").inputs["stringData"] == {"token": "hf_abc"}
    _, pod = _container(run)
    container = pod["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["HF_TOKEN_PATH"]["value"] == "/var/run/secrets/huggingface/token"
    assert "HF_TOKEN" not in env
    assert {"name": "hf-token", "mountPath": "/var/run/secrets/huggingface", "readOnly": True} in container["volumeMounts"]
    volume = next(v for v in pod["volumes"] if v["name"] == "hf-token")
    assert volume["secret"]["secretName"] == "vllm-hf-token"  # pragma: allowlist secret (Kubernetes Secret name)
    no_token = _build(ARGS)
    assert not [s for s in no_token.of_type("kubernetes:core/v1:Secret") if "hf" in s.name]


def test_hardened_pod_runs_as_non_root_with_a_read_only_root_under_restricted_pod_security():
    run = _build(ARGS)
    deployment, pod = _container(run)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/dev/shm", "/cache", "/tmp"}
    namespace = run.named("svc-namespace")
    assert namespace.inputs["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    skips = deployment.inputs["metadata"]["annotations"].values()
    assert not [s for s in skips if s.startswith(("CKV_K8S_22=", "CKV_K8S_23=", "CKV_K8S_40="))]


def test_unhardened_pod_runs_as_built_and_says_why_in_its_checkov_skips():
    run = _build(dataclasses.replace(ARGS, hardened=False))
    deployment, pod = _container(run)
    assert "runAsUser" not in pod["securityContext"]
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is False
    assert pod["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert run.named("svc-namespace").inputs["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "baseline"
    skipped = {s.split("=", 1)[0] for s in deployment.inputs["metadata"]["annotations"].values()}
    assert {"CKV_K8S_22", "CKV_K8S_23", "CKV_K8S_40"} <= skipped


def test_a_digest_pinned_image_needs_no_digest_skip():
    run = _build(dataclasses.replace(ARGS, image="vllm/vllm-openai:v0.8.4@sha256:" + "a" * 64))
    deployment, _ = _container(run)
    assert not [s for s in deployment.inputs["metadata"]["annotations"].values() if s.startswith("CKV_K8S_43=")]


@pytest.mark.parametrize(
    ("tokens", "waiting", "metrics"),
    [
        (600, 4, {TOKENS_PER_SECOND_METRIC: "600", WAITING_REQUESTS_METRIC: "4"}),
        (0, 2.5, {WAITING_REQUESTS_METRIC: "2500m"}),
        (750, 0, {TOKENS_PER_SECOND_METRIC: "750"}),
    ],
)
def test_hpa_holds_per_pod_targets_of_the_metrics_turned_on(tokens, waiting, metrics):
    run = _build(dataclasses.replace(ARGS, target_tokens_per_second=tokens, target_waiting_requests=waiting))
    spec = run.one("kubernetes:autoscaling/v2:HorizontalPodAutoscaler").inputs["spec"]
    got = {m["pods"]["metric"]["name"]: m["pods"]["target"]["averageValue"] for m in spec["metrics"]}
    assert got == metrics
    assert all(m["type"] == "Pods" and m["pods"]["target"]["type"] == "AverageValue" for m in spec["metrics"])


def test_adapter_reads_monitoring_through_its_workload_identity_principal():
    run = _build(ARGS)
    member = run.one("gcp:projects/iAMMember:IAMMember")
    assert member.inputs["role"] == "roles/monitoring.viewer"
    assert member.inputs["member"] == (
        "principal://iam.googleapis.com/projects/123456789/locations/global/workloadIdentityPools/"
        "my-project-1.svc.id.goog/subject/ns/custom-metrics/sa/custom-metrics-stackdriver-adapter"
    )
    adapter = run.named("svc-metrics-adapter-deployment")
    container = adapter.inputs["spec"]["template"]["spec"]["containers"][0]
    assert "--enable-external-metrics-api=false" in container["command"]
    assert "--secure-port=6443" in container["command"]
    services = {s.inputs["metadata"]["name"] for s in run.of_type("kubernetes:apiregistration.k8s.io/v1:APIService")}
    assert services == {"v1beta1.custom.metrics.k8s.io", "v1beta2.custom.metrics.k8s.io"}


# --- the front: vLLM's --api-key guards /v1/* only, so only the front may be reached --------------------


def caddy_binary() -> str:
    path = shutil.which("caddy")
    assert path, "caddy is not installed: apt-get install -y caddy (.ci/run does it)"
    return path


@pytest.fixture
def registrations(monkeypatch):
    """Resource options the harness does not record (custom timeouts, replace-on-changes), by name."""
    seen: dict[str, object] = {}
    original = pulumi_harness.RecordingMonitor.RegisterResource

    def register(self, request):
        seen[request.name] = request
        return original(self, request)

    monkeypatch.setattr(pulumi_harness.RecordingMonitor, "RegisterResource", register)
    return seen


def test_vllm_listens_on_loopback_and_the_service_reaches_only_the_front():
    run = _build(ARGS)
    _, pod = _container(run)
    vllm, front = pod["containers"]
    assert vllm["name"] == "vllm" and front["name"] == "front"
    pairs = dict(zip(vllm["args"][::2], vllm["args"][1::2], strict=False))
    assert pairs["--host"] == "127.0.0.1"
    assert "ports" not in vllm
    assert front["image"] == "caddy:2.10"
    assert {p["name"]: p["containerPort"] for p in front["ports"]} == {"http": FRONT_PORT, "metrics": METRICS_PORT}
    service = run.named("svc-service").inputs["spec"]
    assert service["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    assert service["loadBalancerSourceRanges"] == ["203.0.113.0/24"]
    assert vllm == vllm_container(ARGS) and front == front_container(ARGS)
    assert vllm["env"] == vllm_env(ARGS)


def test_the_front_runs_the_vllm_front_config_and_a_change_rolls_the_pods():
    run = _build(ARGS)
    config = run.named("svc-front-config")
    assert config.type == "kubernetes:core/v1:ConfigMap"
    assert config.inputs["data"] == {"Caddyfile": front_caddyfile()}
    deployment, pod = _container(run)
    assert config.urn in deployment.dependencies
    volume = next(v for v in pod["volumes"] if v["name"] == "front-config")
    assert volume["configMap"]["name"] == config.inputs["metadata"]["name"]
    annotations = deployment.inputs["spec"]["template"]["metadata"]["annotations"]
    assert len(annotations["llminfer/front-config"]) == 16


def test_the_gke_front_config_is_one_caddy_accepts(tmp_path):
    path = tmp_path / "Caddyfile"
    path.write_text(front_caddyfile())
    result = subprocess.run([caddy_binary(), "adapt", "--config", str(path), "--adapter", "caddyfile"],
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    servers = json.loads(result.stdout)["apps"]["http"]["servers"].values()
    assert sorted(s["listen"][0] for s in servers) == [f":{FRONT_PORT}", f":{METRICS_PORT}"]
    assert "127.0.0.1:8000" in result.stdout


def test_probes_reach_vllm_inside_the_pod_and_the_front_through_its_health_path():
    vllm, front = vllm_container(ARGS), front_container(ARGS)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        # A kubelet httpGet would go to the pod IP, where vLLM does not listen.
        assert "httpGet" not in vllm[probe]
        command = vllm[probe]["exec"]["command"]
        assert command[:2] == ["python3", "-c"] and "http://127.0.0.1:8000/health" in command[2]
        compile(command[2], "probe", "exec")
    assert vllm["startupProbe"]["failureThreshold"] == 180
    assert front["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert front["livenessProbe"] == {"tcpSocket": {"port": "http"}, "periodSeconds": 15, "timeoutSeconds": 5,
                                      "failureThreshold": 4}  # fmt: skip


def test_metrics_are_scraped_through_the_front_port_only_the_collectors_reach():
    run = _build(ARGS)
    monitoring = run.one("kubernetes:monitoring.googleapis.com/v1:PodMonitoring").inputs["spec"]
    assert [(e["port"], e["path"]) for e in monitoring["endpoints"]] == [("metrics", "/metrics")]
    ingress = run.named("svc-network-policy").inputs["spec"]["ingress"]
    assert ingress[0] == {"ports": [{"port": FRONT_PORT, "protocol": "TCP"}]}
    assert ingress[1] == {
        "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gmp-system"}},
                  "podSelector": {"matchLabels": {"app.kubernetes.io/name": "collector"}}}],
        "ports": [{"port": METRICS_PORT, "protocol": "TCP"}],
    }  # fmt: skip
    assert len(ingress) == 2
    assert "8000" not in json.dumps(ingress)


def test_the_front_is_hardened_even_when_vllm_is_not():
    for hardened in (True, False):
        front = front_container(dataclasses.replace(ARGS, hardened=hardened))
        security = front["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["runAsNonRoot"] is True and security["runAsUser"] == 10001
        assert security["allowPrivilegeEscalation"] is False
        # caddy's file capability makes exec fail with every capability dropped; this one is allowed
        # by Pod Security "restricted".
        assert security["capabilities"] == {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}
        assert {m["mountPath"] for m in front["volumeMounts"]} == {"/etc/caddy", "/config", "/data"}
    pod = _container(_build(ARGS))[1]
    assert {v["name"]: v for v in pod["volumes"]}["front-state"]["emptyDir"] == {"sizeLimit": "16Mi"}


def test_the_service_waits_as_long_as_the_deployment(registrations):
    _build(ARGS)
    expected = ready_timeout(ARGS)
    assert expected == "50m"
    for name in ("svc-service", "svc-deployment"):
        timeouts = registrations[name].customTimeouts
        assert (timeouts.create, timeouts.update) == (expected, expected), name


def test_source_ranges_are_required():
    fields = {f.name: getattr(ARGS, f.name) for f in dataclasses.fields(ARGS) if f.name != "service_source_ranges"}
    with pytest.raises(InvalidArgs) as err:
        VllmKubernetesArgs(**fields)
    assert err.value.field == "service_source_ranges"


def test_the_metrics_adapter_image_is_the_current_release():
    # GoogleCloudPlatform/k8s-stackdriver deploy/production/adapter_new_resource_model.yaml (Aug 2026).
    assert ADAPTER_IMAGE == "gcr.io/gke-release/custom-metrics-stackdriver-adapter:v0.16.9-gke.0"
    run = _build(ARGS)
    container = run.named("svc-metrics-adapter-deployment").inputs["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == ADAPTER_IMAGE
