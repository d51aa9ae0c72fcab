"""The gcp stack under Pulumi mocks, on the real Pulumi.gcp.yaml.

Besides the graph, every Kubernetes object the stack creates is rendered to a plain manifest from
its recorded inputs and checked the way a cluster and a security review would check it: against the
Kubernetes OpenAPI schemas (`kubernetes-validate`, strict, so an unknown field fails) and with
checkov's Kubernetes policies, whose every suppression must name a reason and still be needed.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from components.gke_cluster import gcp_labels
from components.vllm_kubernetes import TOKENS_PER_SECOND_METRIC, WAITING_REQUESTS_METRIC
from planning import catalog
from stacks.config import ConfigError
from tests.pulumi_harness import ROOT, Secret, StackRun, refused_stack, run_stack

# The Kubernetes minors GKE's Stable and Regular channels are assumed to serve (late 2026): the
# manifests must be valid on both. Bump them with the channels.
GKE_KUBERNETES_VERSIONS = ("1.34.0", "1.35.0")


@pytest.fixture(scope="module")
def gcp() -> StackRun:
    return run_stack("gcp")


def _vllm_deployment(run: StackRun) -> dict[str, Any]:
    return run.named("vllm-deployment").inputs


def _pod(run: StackRun) -> dict[str, Any]:
    return _vllm_deployment(run)["spec"]["template"]["spec"]


def test_outputs(gcp):
    assert gcp.outputs == {
        "url": "http://203.0.113.10/v1",
        "apiKey": gcp.outputs["apiKey"],
        "modelId": "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4",
        "machineType": "g2-standard-8",
        "acceleratorType": "nvidia-l4",
        "pricePerHour": catalog.hourly_price("g2-standard-8", "us-central1"),
        "clusterName": "gke-cluster",
        "clusterLocation": "us-central1-a",
        "region": "us-central1",
        "namespace": "llm-inference",
        "capacity": {"kind": "gke", "namespace": "llm-inference", "deployment": "vllm", "hpa": "vllm",
                     "cluster": "gke-cluster", "location": "us-central1-a"},
    }
    assert gcp.secret_outputs == {"apiKey"}
    assert len(gcp.outputs["apiKey"]) == 48


def test_whole_graph(gcp):
    assert gcp.type_counts() == {
        "gcp:compute/address:Address": 1,
        "gcp:compute/network:Network": 1,
        "gcp:compute/router:Router": 1,
        "gcp:compute/routerNat:RouterNat": 1,
        "gcp:compute/subnetwork:Subnetwork": 1,
        "gcp:container/cluster:Cluster": 1,
        "gcp:container/nodePool:NodePool": 2,
        "gcp:projects/iAMMember:IAMMember": 2,
        "gcp:serviceaccount/account:Account": 1,
        "kubernetes:apiregistration.k8s.io/v1:APIService": 2,
        "kubernetes:apps/v1:Deployment": 2,
        "kubernetes:autoscaling/v2:HorizontalPodAutoscaler": 1,
        "kubernetes:core/v1:ConfigMap": 1,  # the front's Caddyfile
        "kubernetes:core/v1:Namespace": 2,
        "kubernetes:core/v1:Secret": 1,
        "kubernetes:core/v1:Service": 2,
        "kubernetes:core/v1:ServiceAccount": 2,
        "kubernetes:monitoring.googleapis.com/v1:PodMonitoring": 1,
        "kubernetes:networking.k8s.io/v1:NetworkPolicy": 2,
        "kubernetes:policy/v1:PodDisruptionBudget": 1,
        "kubernetes:rbac.authorization.k8s.io/v1:ClusterRole": 1,
        "kubernetes:rbac.authorization.k8s.io/v1:ClusterRoleBinding": 2,
        "kubernetes:rbac.authorization.k8s.io/v1:RoleBinding": 1,
        "llminfer:gke_cluster:GkeCluster": 1,
        "llminfer:vllm_kubernetes:CustomMetricsAdapter": 1,
        "llminfer:vllm_kubernetes:VllmKubernetes": 1,
        "pulumi:providers:kubernetes": 1,
        "random:index/randomPassword:RandomPassword": 1,
    }


def test_every_kubernetes_object_goes_through_the_cluster_provider(gcp):
    provider = gcp.one("pulumi:providers:kubernetes")
    assert json.loads(provider.inputs["kubeconfig"])["users"][0]["user"]["exec"]["command"] == "gke-gcloud-auth-plugin"
    assert provider.custom


def test_cluster_is_vpc_native_private_with_workload_identity_and_managed_prometheus(gcp):
    cluster = gcp.one("gcp:container/cluster:Cluster").inputs
    assert cluster["networkingMode"] == "VPC_NATIVE"
    assert cluster["ipAllocationPolicy"] == {"clusterSecondaryRangeName": "pods", "servicesSecondaryRangeName": "services"}
    assert cluster["workloadIdentityConfig"] == {"workloadPool": "mock-project.svc.id.goog"}
    assert cluster["monitoringConfig"]["managedPrometheus"] == {"enabled": True}
    assert cluster["releaseChannel"] == {"channel": "REGULAR"}
    assert cluster["privateClusterConfig"] == {"enablePrivateNodes": True, "enablePrivateEndpoint": False}
    assert cluster["datapathProvider"] == "ADVANCED_DATAPATH"  # enforces the NetworkPolicies
    assert cluster["removeDefaultNodePool"] is True
    assert cluster["location"] == "us-central1-a"
    assert cluster["deletionProtection"] is False
    subnet = gcp.one("gcp:compute/subnetwork:Subnetwork").inputs
    assert subnet["ipCidrRange"] == "10.0.0.0/20"
    assert {r["rangeName"]: r["ipCidrRange"] for r in subnet["secondaryIpRanges"]} == {"pods": "10.4.0.0/14", "services": "10.8.0.0/20"}
    assert subnet["privateIpGoogleAccess"] is True
    nat = gcp.one("gcp:compute/routerNat:RouterNat").inputs
    assert nat["sourceSubnetworkIpRangesToNat"] == "ALL_SUBNETWORKS_ALL_IP_RANGES"


def test_gpu_node_pool_is_g2_with_one_l4_and_the_managed_driver(gcp):
    pool = gcp.named("gke-gpu-pool").inputs
    node = pool["nodeConfig"]
    assert node["machineType"] == "g2-standard-8"
    assert node["guestAccelerators"] == [
        {"type": "nvidia-l4", "count": 1, "gpuDriverInstallationConfig": {"gpuDriverVersion": "LATEST"}}
    ]
    assert node["spot"] is False
    assert node["diskSizeGb"] == 200
    # min/max from config, plus one node of surge headroom for zero-downtime rollouts.
    assert pool["autoscaling"] == {"totalMinNodeCount": 1, "totalMaxNodeCount": 5, "locationPolicy": "ANY"}
    assert pool["location"] == "us-central1-a"
    system = gcp.named("gke-system-pool").inputs["nodeConfig"]
    assert system["machineType"] == "e2-standard-2"
    assert "guestAccelerators" not in system


def test_iam_grants_only_the_node_role_and_the_adapters_monitoring_read(gcp):
    members = {m.inputs["role"]: m.inputs["member"] for m in gcp.of_type("gcp:projects/iAMMember:IAMMember")}
    assert members == {
        "roles/container.defaultNodeServiceAccount": "serviceAccount:gke-gcp-nodes@mock-project.iam.gserviceaccount.com",
        "roles/monitoring.viewer": (
            "principal://iam.googleapis.com/projects/123456789/locations/global/workloadIdentityPools/"
            "mock-project.svc.id.goog/subject/ns/custom-metrics/sa/custom-metrics-stackdriver-adapter"
        ),
    }


def test_deployment_serves_the_model_on_one_gpu_behind_the_key(gcp):
    pod = _pod(gcp)
    container, _front = pod["containers"]
    assert container["image"] == "vllm/vllm-openai:v0.8.4"
    argv = container["args"]
    pairs = dict(zip(argv[::2], argv[1::2], strict=False))
    assert pairs == {
        "--model": "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4",
        "--host": "127.0.0.1",
        "--port": "8000",
        "--max-model-len": "8192",
        "--max-num-seqs": "64",
        "--gpu-memory-utilization": "0.9",
        "--tensor-parallel-size": "1",
        "--api-key": "$(VLLM_API_KEY)",
    }
    env = {e["name"]: e for e in container["env"]}
    assert env["VLLM_API_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "vllm-api-key", "key": "api-key"}}
    assert gcp.outputs["apiKey"] not in json.dumps(gcp.named("vllm-deployment").inputs)
    resources = container["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "1" and resources["requests"]["nvidia.com/gpu"] == "1"
    # Sized from the catalog's g2-standard-8 (8 vCPU, 32 GiB), leaving room for GKE's reservations.
    assert resources["requests"]["cpu"] == "6" and resources["requests"]["memory"] == "19Gi"
    assert resources["limits"]["memory"] == "24Gi"
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}} in pod["volumes"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        # vLLM is on the pod's loopback: exec probes inside its container, not kubelet HTTP to the pod IP.
        assert "http://127.0.0.1:8000/health" in container[probe]["exec"]["command"][2]
    assert container["startupProbe"]["periodSeconds"] * container["startupProbe"]["failureThreshold"] >= 1800
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert "replicas" not in _vllm_deployment(gcp)["spec"]  # the HPA owns it


def test_hpa_scales_the_deployment_on_per_pod_tokens_and_queue(gcp):
    spec = gcp.one("kubernetes:autoscaling/v2:HorizontalPodAutoscaler").inputs["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "vllm"}
    assert (spec["minReplicas"], spec["maxReplicas"]) == (1, 4)
    targets = {m["pods"]["metric"]["name"]: m["pods"]["target"] for m in spec["metrics"]}
    assert targets == {
        "prometheus.googleapis.com|vllm:generation_tokens_total|counter": {"type": "AverageValue", "averageValue": "600"},
        "prometheus.googleapis.com|vllm:num_requests_waiting|gauge": {"type": "AverageValue", "averageValue": "4"},
    }
    assert set(targets) == {TOKENS_PER_SECOND_METRIC, WAITING_REQUESTS_METRIC}
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300


def test_service_is_a_load_balancer_on_the_reserved_ip_open_to_the_configured_ranges(gcp):
    spec = gcp.named("vllm-service").inputs["spec"]
    address = gcp.one("gcp:compute/address:Address")
    assert address.inputs["addressType"] == "EXTERNAL" and address.inputs["region"] == "us-central1"
    assert spec["type"] == "LoadBalancer"
    assert spec["loadBalancerIP"] == "203.0.113.10"
    # The example lists a documentation range (refused: tests/stacks/test_placeholders.py); the harness stands in.
    assert spec["loadBalancerSourceRanges"] == ["198.18.0.0/24"]
    assert spec["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    narrowed = run_stack("gcp", {"gkeServiceSourceRanges": ["198.18.0.0/24", "198.18.7.7/32"]})
    assert narrowed.named("vllm-service").inputs["spec"]["loadBalancerSourceRanges"] == ["198.18.0.0/24", "198.18.7.7/32"]


def test_gcp_resources_carry_sanitized_labels_and_kubernetes_objects_the_tags():
    run = run_stack("gcp", {"owner": "ML Platform/Team.A"})
    expected = gcp_labels({"project": "llm-inference", "stack": "gcp", "owner": "ML Platform/Team.A", "cloud": "gcp", "managed-by": "pulumi"})
    assert expected["owner"] == "ml_platform_team_a"
    assert run.one("gcp:container/cluster:Cluster").inputs["resourceLabels"] == expected
    assert run.one("gcp:compute/address:Address").inputs["labels"] == expected
    for pool in run.of_type("gcp:container/nodePool:NodePool"):
        assert pool.inputs["nodeConfig"]["resourceLabels"] == expected
    for r in run.resources:
        if r.type.startswith("kubernetes:"):
            labels = r.inputs["metadata"]["labels"]
            assert labels["owner"] == "ML-Platform-Team.A" and labels["stack"] == "gcp", r.name


def test_regional_spot_stack_with_price_override_and_hf_token():
    run = run_stack(
        "gcp",
        {"gcp:zone": None, "gkeSpot": True, "pricePerHour": "0.32", "hfToken": Secret("hf_abc"), "gkeNodeZones": ["us-central1-b"]},
    )
    assert run.outputs["pricePerHour"] == 0.32
    assert run.outputs["clusterLocation"] == "us-central1"
    pool = run.named("gke-gpu-pool").inputs
    assert pool["nodeConfig"]["spot"] is True
    assert pool["nodeLocations"] == ["us-central1-b"]
    assert run.named("vllm-hf-token").inputs["stringData"] == {"token": "hf_abc"}
    assert "hf_abc" not in json.dumps(run.outputs)


@pytest.mark.parametrize(
    ("overrides", "key", "words"),
    [
        ({"gkeMachineType": "n2-standard-8"}, "llm-inference:gkeMachineType", "not a GCP GPU machine type"),
        ({"gkeMachineType": "ml.g5.2xlarge"}, "llm-inference:gkeMachineType", "g2-standard-8"),
        ({"minInstances": 5, "maxInstances": 2}, "llm-inference:minInstances", "must not exceed"),
        ({"minInstances": 0}, "llm-inference:minInstances", "at least 1"),
        ({"gkeAcceleratorCount": 0}, "llm-inference:gkeAcceleratorCount", "at least 1 GPU"),
        ({"gkeAcceleratorCount": 2}, "llm-inference:gkeAcceleratorCount", "comes with 1 GPU"),
        ({"gkeAcceleratorType": "nvidia-tesla-t4"}, "llm-inference:gkeAcceleratorType", "nvidia-l4"),
        ({"gkeServiceSourceRanges": ["10.0.0.0/33"]}, "llm-inference:gkeServiceSourceRanges", "not an IPv4 CIDR"),
        ({"gkeServiceSourceRanges": []}, "llm-inference:gkeServiceSourceRanges", "names no CIDR"),
        ({"gkeServiceSourceRanges": None}, "llm-inference:gkeServiceSourceRanges", "is missing"),
        ({"gkeMaintenanceWindowUtc": "03:00-05:00"}, "llm-inference:gkeMaintenanceWindowUtc", "4 hours"),
        ({"gkeMaintenanceRecurrence": "weekends"}, "llm-inference:gkeMaintenanceRecurrence", "RRULE"),
        ({"gkeApiSourceRanges": ["nonsense"]}, "llm-inference:gkeApiSourceRanges", "not an IPv4 CIDR"),
        ({"gkeServicesCidr": "10.4.0.0/20"}, "llm-inference:gkeServicesCidr", "overlaps"),
        ({"gkeSubnetCidr": "10.0.0.300/20"}, "llm-inference:gkeSubnetCidr", "not an IPv4 CIDR"),
        ({"gkeReleaseChannel": "NIGHTLY"}, "llm-inference:gkeReleaseChannel", "REGULAR"),
        ({"gkeNodeDiskSizeGb": 50}, "llm-inference:gkeNodeDiskSizeGb", "at least 100 GB"),
        ({"gkeVllmImageTag": "latest"}, "llm-inference:gkeVllmImageTag", "not latest"),
        ({"gkeVllmExtraArgs": ["--api-key=abc"]}, "llm-inference:gkeVllmExtraArgs", "own config key"),
        ({"gkeTargetTokensPerSecondPerPod": 0, "gkeTargetWaitingRequestsPerPod": 0},
         "llm-inference:gkeTargetTokensPerSecondPerPod", "needs at least one metric"),
        ({"gpuMemoryUtilization": "1.5"}, "llm-inference:gpuMemoryUtilization", "between 0.1 and 0.98"),
        ({"pricePerHour": "-1"}, "llm-inference:pricePerHour", "at least 0"),
        ({"hfToken": "hf_in_clear_text"}, "llm-inference:hfToken", "clear text"),
        ({"gcp:zone": "europe-west4-a"}, "gcp:zone", "not a zone of region us-central1"),
        ({"gcp:project": None}, "gcp:project", "is not set"),
        ({"gcp:project": "Not_A_Project"}, "gcp:project", "not a GCP project id"),
        ({"budgetMonthlyUsd": 100}, "llm-inference:gcpBillingAccount", "billing account id"),
        ({"budgetMonthlyUsd": 100, "gcpBillingAccount": "0123AB-4567CD-89EF01", "budgetAlertEmail": "a@b.c, x"},
         "llm-inference:budgetAlertEmail", "not an email"),
    ],
)  # fmt: skip
def test_bad_config_names_the_key(overrides, key, words):
    with pytest.raises(ConfigError) as err:
        run_stack("gcp", overrides)
    assert err.value.key == key
    assert words in str(err.value)


# ------------------------------------------------------------------------ rendered manifests


def _plain(value: Any) -> Any:
    """Mock inputs come back with numbers as floats; a manifest has integers."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def manifests(run: StackRun) -> list[dict[str, Any]]:
    """Every Kubernetes object the stack creates, as the manifest `kubectl apply` would take."""
    rendered = []
    for r in run.resources:
        if not r.type.startswith("kubernetes:"):
            continue
        manifest = _plain(r.inputs)
        group_version = manifest["apiVersion"] if "/" in manifest["apiVersion"] else f"core/{manifest['apiVersion']}"
        assert f"kubernetes:{group_version}:{manifest['kind']}" == r.type, r.name
        for field in ("data", "stringData"):
            if field in manifest:
                manifest[field] = {key: "REDACTED" for key in manifest[field]}
        rendered.append(manifest)
    return rendered


def _by_kind(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def test_manifests_cover_every_kubernetes_resource_and_leak_no_secret(gcp):
    docs = manifests(gcp)
    assert len(docs) == sum(n for t, n in gcp.type_counts().items() if t.startswith("kubernetes:"))
    assert gcp.outputs["apiKey"] not in json.dumps(docs)


@pytest.mark.parametrize("version", GKE_KUBERNETES_VERSIONS)
def test_builtin_manifests_validate_strictly_against_the_kubernetes_schemas(gcp, version):
    checked = set()
    for doc in manifests(gcp):
        if doc["apiVersion"] == "monitoring.googleapis.com/v1":
            continue  # a CRD: no OpenAPI schema ships for it; checked structurally below
        kubernetes_validate.validate(doc, version, strict=True)
        checked.add(doc["kind"])
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "APIService", "NetworkPolicy"} <= checked


def test_the_schema_check_catches_a_misspelt_field(gcp):
    deployment = copy.deepcopy(_by_kind(manifests(gcp), "Deployment", "vllm"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {"httpGet": {"path": "/health", "port": "http"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, GKE_KUBERNETES_VERSIONS[-1], strict=True)


# The fields of monitoring.googleapis.com/v1 PodMonitoring this stack may use, with the constraints
# of GMP's CRD (required port + interval, 1-10 endpoints, durations, relabel actions). Unknown fields
# fail, as the API server's structural schema would prune them.
_DURATION = r"^([0-9]+(ms|s|m|h))+$"
POD_MONITORING_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.googleapis.com/v1"},
        "kind": {"const": "PodMonitoring"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "matchExpressions": {"type": "array"},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 10,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["port", "interval"],
                        "properties": {
                            "port": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "string", "minLength": 1, "maxLength": 253}]},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": _DURATION},
                            "timeout": {"type": "string", "pattern": _DURATION},
                            "metricRelabeling": {
                                "type": "array",
                                "maxItems": 250,
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "action": {"enum": ["replace", "lowercase", "uppercase", "keep", "drop", "keepequal",
                                                            "dropequal", "hashmod", "labeldrop", "labelkeep"]},
                                        "sourceLabels": {"type": "array", "items": {"type": "string", "pattern": r"^[a-zA-Z_][a-zA-Z0-9_]*$"}},
                                        "regex": {"type": "string", "maxLength": 10000},
                                        "targetLabel": {"type": "string", "pattern": r"^[a-zA-Z_][a-zA-Z0-9_]*$"},
                                        "replacement": {"type": "string"},
                                        "separator": {"type": "string"},
                                        "modulus": {"type": "integer"},
                                    },
                                },
                            },
                        },
                    },
                },
                "targetLabels": {"type": "object"},
                "limits": {"type": "object"},
                "filterRunning": {"type": "boolean"},
            },
        },
    },
}  # fmt: skip


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(int(n) * units[u] for n, u in re.findall(r"([0-9]+)(ms|s|m|h)", duration))


def test_pod_monitoring_is_well_formed_and_scrapes_the_vllm_pods(gcp):
    docs = manifests(gcp)
    monitoring = _by_kind(docs, "PodMonitoring", "vllm")
    jsonschema.validate(monitoring, POD_MONITORING_SCHEMA)
    template = _by_kind(docs, "Deployment", "vllm")["spec"]["template"]
    ports = {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
    for endpoint in monitoring["spec"]["endpoints"]:
        assert endpoint["port"] in ports
        assert endpoint["path"] == "/metrics"
        assert _seconds(endpoint["timeout"]) <= _seconds(endpoint["interval"])  # the CRD's CEL rule
        relabel = endpoint["metricRelabeling"][0]
        # The HPA's metrics survive the keep filter.
        assert all(re.fullmatch(relabel["regex"], m) for m in ("vllm:generation_tokens_total", "vllm:num_requests_waiting"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**monitoring, "spec": {**monitoring["spec"], "endpoint": []}}, POD_MONITORING_SCHEMA)


def test_selectors_pick_the_vllm_pods(gcp):
    docs = manifests(gcp)
    pod_labels = _by_kind(docs, "Deployment", "vllm")["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict[str, str]) -> bool:
        return bool(selector) and all(pod_labels.get(k) == v for k, v in selector.items())

    assert selects(_by_kind(docs, "Deployment", "vllm")["spec"]["selector"]["matchLabels"])
    assert selects(_by_kind(docs, "Service", "vllm")["spec"]["selector"])
    assert selects(_by_kind(docs, "PodDisruptionBudget", "vllm")["spec"]["selector"]["matchLabels"])
    assert selects(_by_kind(docs, "NetworkPolicy", "vllm")["spec"]["podSelector"]["matchLabels"])
    assert selects(_by_kind(docs, "PodMonitoring", "vllm")["spec"]["selector"]["matchLabels"])
    assert _by_kind(docs, "Service", "vllm")["spec"]["ports"][0]["targetPort"] == "http"
    policy_ports = _by_kind(docs, "NetworkPolicy", "vllm")["spec"]["ingress"][0]["ports"]
    assert policy_ports == [{"port": 8080, "protocol": "TCP"}]  # the front; vLLM is on loopback


# --------------------------------------------------------------------------------- checkov


def _checkov() -> str:
    candidates = [os.environ.get("CHECKOV"), str(ROOT / ".venv-checkov" / "bin" / "checkov"), shutil.which("checkov")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    # A missing scanner fails the test, on CI and off it (`make test` installs it): never a silent skip.
    pytest.fail("checkov is not installed: run `make checkov` (its own venv, .venv-checkov) or set "
                "CHECKOV=/path/to/checkov")


def _skips(doc: dict[str, Any]) -> set[str]:
    annotations = doc["metadata"].get("annotations") or {}
    return {value.split("=", 1)[0] for key, value in annotations.items() if key.startswith("checkov.io/skip")}


def _write(directory: Path, docs: list[dict[str, Any]]) -> None:
    directory.mkdir(parents=True)
    for i, doc in enumerate(docs):
        (directory / f"{i:02d}-{doc['kind'].lower()}-{doc['metadata']['name'].replace(':', '-')}.yaml").write_text(
            yaml.safe_dump(doc, sort_keys=False)
        )


def test_checkov_passes_and_every_suppression_has_a_reason_and_is_needed(gcp, tmp_path):
    checkov = _checkov()
    hardened = manifests(gcp)
    as_built = manifests(run_stack("gcp", {"gkeHardenedPod": False}))
    unsuppressed = copy.deepcopy(hardened)
    for doc in unsuppressed:
        annotations = doc["metadata"].get("annotations") or {}
        for key in [k for k in annotations if k.startswith("checkov.io/skip")]:
            del annotations[key]
    for name, docs in (("hardened", hardened), ("as-built", as_built), ("unsuppressed", unsuppressed)):
        _write(tmp_path / name, docs)

    result = subprocess.run(
        [checkov, "-d", str(tmp_path), "--framework", "kubernetes", "-o", "json", "--skip-download", "--soft-fail"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    report = report[0] if isinstance(report, list) else report
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["resource_count"] >= 3 * len(hardened) - 6  # Namespaces etc. count once each

    failed: dict[str, set[str]] = {}
    for check in report["results"]["failed_checks"]:
        folder = Path(check["file_path"].lstrip("/")).parts[0]
        failed.setdefault(folder, set()).add(f"{Path(check['file_path']).name}:{check['check_id']}")
    assert not failed.get("hardened"), sorted(failed["hardened"])
    assert not failed.get("as-built"), sorted(failed["as-built"])

    # Each suppression is still needed: without the annotations exactly those checks fail.
    expected = set()
    for i, doc in enumerate(hardened):
        for check in _skips(doc):
            expected.add(f"{i:02d}-{doc['kind'].lower()}-{doc['metadata']['name']}.yaml:{check}")
    assert expected, "the vLLM Deployment is expected to carry justified suppressions"
    assert failed.get("unsuppressed", set()) == expected

    for doc in hardened + as_built:
        for key, value in (doc["metadata"].get("annotations") or {}).items():
            if key.startswith("checkov.io/skip"):
                assert re.fullmatch(r"CKV2?_K8S_\d+=.{20,}", value), f"{doc['kind']} {key}: a suppression needs a reason"


# ------------------------------------------------------------------------------- fit check

FP16_70B = "meta-llama/Llama-3.1-70B-Instruct"
FP16_8B = "meta-llama/Llama-3.1-8B-Instruct"


def refused(overrides: dict[str, Any]) -> tuple[ConfigError, StackRun]:
    return refused_stack("gcp", overrides)


def test_an_fp16_70b_that_cannot_fit_the_l4_is_refused_with_the_numbers_before_anything_exists():
    err, run = refused({"modelId": FP16_70B})
    assert err.key == "llm-inference:modelId" and err.value == FP16_70B
    message = str(err)
    assert "llama-3.1-70b fp16 needs 141.1 GB of weights" in message
    assert "g2-standard-8 has 1x L4 24 GB" in message
    assert "21.7 GB usable at gpuMemoryUtilization 0.9" in message
    assert "`pulumi config set llm-inference:gkeMachineType g2-standard-96`" in message
    assert run.resources == []


def test_the_fit_check_reads_gke_quantization():
    err, run = refused({"modelId": FP16_8B, "maxModelLen": 65536})
    assert err.key == "llm-inference:maxModelLen" and "llama-3.1-8b fp16" in str(err)
    assert run.resources == []
    fits = run_stack("gcp", {"modelId": FP16_8B, "maxModelLen": 65536, "gkeQuantization": "fp8"})
    container, _front = _pod(fits)["containers"]
    argv = container["args"]
    assert argv[argv.index("--quantization") + 1] == "fp8" and argv[argv.index("--model") + 1] == FP16_8B


def test_fit_check_model_sizes_a_custom_id_and_off_skips_the_check():
    custom = "my-org/my-custom-model"
    assert run_stack("gcp", {"modelId": custom}).outputs["modelId"] == custom
    err, run = refused({"modelId": custom, "fitCheckModel": "llama-3.1-70b"})
    assert err.key == "llm-inference:modelId" and "141.1 GB of weights" in str(err)
    assert run.resources == []
    assert run_stack("gcp", {"modelId": FP16_70B, "fitCheckModel": "off"}).outputs["modelId"] == FP16_70B


def test_a_bad_fit_check_quantization_is_refused_naming_the_key():
    err, run = refused({"fitCheckQuantization": "int3"})
    assert err.key == "llm-inference:fitCheckQuantization"
    assert "llm-inference:fitCheckQuantization='int3': is not one of: fp16" in str(err)
    assert run.resources == []


# ------------------------------------------------------------------------ the front, GKE operations


def test_the_example_opens_nothing_to_the_internet():
    example = yaml.safe_load((ROOT / "Pulumi.gcp.yaml").read_text())["config"]
    assert "0.0.0.0/0" not in example["llm-inference:gkeServiceSourceRanges"]


def test_the_pods_put_the_front_before_vllm_with_the_configured_image(gcp):
    pod = gcp.named("vllm-deployment").inputs["spec"]["template"]["spec"]
    vllm, front = pod["containers"]
    assert vllm["args"][vllm["args"].index("--host") + 1] == "127.0.0.1"
    assert front["name"] == "front" and front["image"] == "caddy:2.10"
    assert gcp.named("vllm-front-config").inputs["data"]["Caddyfile"].count("reverse_proxy 127.0.0.1:8000") == 3
    custom = run_stack("gcp", {"caddyImage": "caddy:2.10.2"}).named("vllm-deployment")
    assert custom.inputs["spec"]["template"]["spec"]["containers"][1]["image"] == "caddy:2.10.2"


def test_the_cluster_has_the_configured_maintenance_window(gcp):
    window = gcp.one("gcp:container/cluster:Cluster").inputs["maintenancePolicy"]["recurringWindow"]
    assert window["recurrence"] == "FREQ=WEEKLY;BYDAY=SA,SU"
    assert (window["startTime"], window["endTime"]) == ("2025-01-04T03:00:00Z", "2025-01-04T09:00:00Z")


def test_docs_say_what_real_gcp_deploys_need():
    docs = (ROOT / "docs" / "gcp.md").read_text()
    for needed in ("GPUS_ALL_REGIONS", "billingbudgets.googleapis.com", "set-quota-project",
                   "gcp:userProjectOverride", "One replica", "maintenance exclusion"):  # fmt: skip
        assert needed in docs, needed
