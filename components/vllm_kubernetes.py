"""vLLM on a GKE GPU node pool, behind an API key, scaled by the HPA on its own token and queue metrics.

Everything Kubernetes here goes through the `kubernetes` provider the caller passes in `opts`:

- a namespace (Pod Security `restricted` when the pod is hardened), the API key and optional HF
  token as Secrets, a ServiceAccount without a token;
- the vLLM Deployment: `vllm/vllm-openai`, one pod per GPU node (`nvidia.com/gpu`), `/dev/shm` in
  memory, non-root with a read-only root filesystem (caches on emptyDirs) unless `hardened=False`,
  `--api-key` from the Secret. vLLM listens on 127.0.0.1 only: its `--api-key` guards `/v1/*` alone
  (vLLM api_server's `authentication` middleware skips every other path), so `/invocations`,
  `/tokenize`, `/pooling`, ... would be open. A Caddy sidecar, the front (`components.vllm_front`), is
  what the Service targets: it passes only `/v1/*` and `/health`, and serves `/metrics` on a port of its
  own that the NetworkPolicy admits only from the Managed Prometheus collectors;
- probes: kubelet probes come from the node to the pod IP, where vLLM does not listen, so vLLM's own
  startup/readiness/liveness probes are exec probes on 127.0.0.1:8000/health inside its container; the
  front's readiness goes through its health path (so the pod is Ready only when vLLM is), its liveness
  is a TCP check of its own port;
- a LoadBalancer Service on a reserved regional IP, open only to `service_source_ranges` (required), with
  a Pulumi await timeout that covers a GPU node scaled from zero; a PodDisruptionBudget; a NetworkPolicy
  that admits only the front's ports;
- a `PodMonitoring` so Managed Service for Prometheus scrapes vLLM's `/metrics` through the front;
- the Custom Metrics Stackdriver Adapter (its own namespace, RBAC, APIServices, and a Workload
  Identity principal with `roles/monitoring.viewer`), which serves those Prometheus series to the HPA;
- an `autoscaling/v2` HPA on per-pod generation tokens/s and waiting requests: both fall as replicas
  rise, so target tracking converges (a fleet-wide total would scale out without end).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_random
from pulumi_gcp import compute, projects
from pulumi_kubernetes import (
    apiextensions,
    apiregistration,
    apps,
    autoscaling,
    core,
    networking,
    policy,
    rbac,
)

from components._args import (
    require,
    require_between,
    require_cidrs,
    require_min_max,
    require_positive,
    require_text,
)
from components.gke_cluster import gcp_labels
from components.vllm_front import CADDY_IMAGE, HEALTH_PATH, METRICS_PATH, caddyfile, page_files

COMPONENT = "VllmKubernetes"
HTTP_PORT = 8000  # vLLM, on the pod's loopback only
FRONT_PORT = 8080  # the front: what the Service targets (unprivileged: the front runs as non-root)
METRICS_PORT = 9090  # the front's /metrics listener, admitted only from the Managed Prometheus collectors
SERVICE_PORT = 80
FRONT_CONFIG_DIR = "/etc/caddy"
# The Managed Prometheus collectors (GoogleCloudPlatform/prometheus-engine manifests/operator.yaml: the
# `collector` DaemonSet in gmp-system, pods labelled app.kubernetes.io/name=collector, no host network).
GMP_NAMESPACE = "gmp-system"
GMP_COLLECTOR_LABELS = {"app.kubernetes.io/name": "collector"}
# The vLLM image has no user of its own: any uid works once HOME and the caches point at volumes.
RUN_AS_USER = 10001
CACHE_DIR = "/cache"
HF_TOKEN_DIR = "/var/run/secrets/huggingface"

# Managed Prometheus names a series prometheus.googleapis.com/<name>/<kind>; the adapter takes `|` for `/`.
# A counter comes back as its per-second rate (the adapter aligns CUMULATIVE series with ALIGN_RATE).
TOKENS_PER_SECOND_METRIC = "prometheus.googleapis.com|vllm:generation_tokens_total|counter"
WAITING_REQUESTS_METRIC = "prometheus.googleapis.com|vllm:num_requests_waiting|gauge"

# The current release in GoogleCloudPlatform/k8s-stackdriver deploy/production/adapter_new_resource_model.yaml
# (commit af49d863, Aug 2026: "update custom-metrics-stackdriver-adapter image to v0.16.9-gke.0").
ADAPTER_IMAGE = "gcr.io/gke-release/custom-metrics-stackdriver-adapter:v0.16.9-gke.0"
FRONT_CONFIG_MAP = "vllm-front"
ADAPTER_NAMESPACE = "custom-metrics"
ADAPTER_NAME = "custom-metrics-stackdriver-adapter"
# Above 1024 so the adapter binds it without root or NET_BIND_SERVICE; the Service still offers 443.
ADAPTER_PORT = 6443
ADAPTER_USER = 65532  # distroless "nonroot"

# Flags this component sets from typed args; extra_args must not set them again.
_MANAGED_FLAGS = frozenset(
    {
        "--model",
        "--host",
        "--port",
        "--api-key",
        "--max-model-len",
        "--max-num-seqs",
        "--gpu-memory-utilization",
        "--quantization",
        "--tensor-parallel-size",
    }
)
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_QUANTIZATION = re.compile(r"^[a-z0-9_-]+$")


def kubernetes_labels(tags: Mapping[str, str]) -> dict[str, str]:
    """Tags as Kubernetes labels: names and values <= 63 chars of [A-Za-z0-9_.-], alphanumeric at both ends."""

    def clean(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]", "-", str(text))[:63].strip("-_.")

    return {clean(key) or "tag": clean(value) for key, value in tags.items()}


def quantity(value: float) -> str:
    """A Kubernetes quantity for a metric target: whole numbers as is, fractions in milli-units."""
    if float(value).is_integer():
        return str(int(value))
    return f"{round(value * 1000)}m"


def skip_annotations(skips: Mapping[str, str]) -> dict[str, str]:
    """checkov's in-manifest suppressions (`checkov.io/skipN: CHECK_ID=reason`), each with its reason."""
    for check, reason in skips.items():
        # checkov splits the annotation on "=": a reason containing one breaks its parser.
        if "=" in reason or not reason.strip():
            raise ValueError(f"{check}: a suppression reason must be non-empty and free of '=': {reason!r}")
    return {f"checkov.io/skip{i}": f"{check}={reason}" for i, (check, reason) in enumerate(sorted(skips.items()), start=1)}


@dataclass(frozen=True)
class VllmKubernetesArgs:
    project: str
    # The project number names the cluster's Workload Identity pool in IAM principals.
    project_number: str
    region: str
    image: str
    model_id: str
    # None generates a 48-character key, kept in the (encrypted) state; `pulumi up --replace` rotates it.
    api_key: pulumi.Input[str] | None = None
    max_model_len: int = 8192
    max_num_seqs: int = 64
    gpu_memory_utilization: float = 0.9
    # "" lets vLLM read the method from the checkpoint (AWQ -> awq_marlin kernels).
    quantization: str = ""
    extra_args: tuple[str, ...] = ()
    accelerator_type: str = "nvidia-l4"
    gpu_count: int = 1
    cpu_request: float = 6
    memory_request_gib: int = 19
    memory_limit_gib: int = 24
    shm_size_gib: int = 2
    startup_timeout_seconds: int = 1800
    hf_token: pulumi.Input[str] | None = None
    # Required: who may reach the load balancer (0.0.0.0/0 is allowed, but must be said).
    service_source_ranges: tuple[str, ...] = ()
    min_replicas: int = 1
    max_replicas: int = 4
    # Per-pod HPA targets; 0 leaves that metric out.
    target_tokens_per_second: float = 600
    target_waiting_requests: float = 4
    scale_down_stabilization_seconds: int = 300
    # Non-root, read-only root filesystem, Pod Security "restricted"; False runs the image as built (root).
    hardened: bool = True
    # The chat playground (playground/) served by the front on the API's own origin (demoUi).
    demo_ui: bool = False
    namespace: str = "llm-inference"
    adapter_image: str = ADAPTER_IMAGE
    front_image: str = CADDY_IMAGE
    labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        c = COMPONENT
        for name in ("project", "region", "model_id", "adapter_image", "front_image"):
            require_text(c, name, getattr(self, name))
        require(c, "project_number", isinstance(self.project_number, str) and self.project_number.isdigit(),
                f"must be the project's number (digits), got {self.project_number!r}")
        require_text(c, "image", self.image)
        require(c, "image", (":" in self.image.rsplit("/", 1)[-1] or "@sha256:" in self.image) and not self.image.endswith(":latest"),
                f"{self.image!r} must pin a version tag or digest (vllm/vllm-openai:vX.Y.Z), not latest")
        for name in ("max_model_len", "max_num_seqs", "gpu_count", "memory_request_gib", "memory_limit_gib", "shm_size_gib"):
            value = getattr(self, name)
            require(c, name, isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                    f"must be a whole number >= 1, got {value!r}")
        require_between(c, "gpu_memory_utilization", self.gpu_memory_utilization, 0.1, 0.98)
        require(c, "quantization", self.quantization == "" or bool(_QUANTIZATION.match(str(self.quantization))),
                f"{self.quantization!r} is not a vLLM quantization method name (awq, awq_marlin, gptq, fp8, ...)")
        require(c, "extra_args", isinstance(self.extra_args, tuple) and all(isinstance(a, str) and a.strip() for a in self.extra_args),
                f"must be a tuple of non-empty strings, got {self.extra_args!r}")
        for arg in self.extra_args:
            flag = arg.split("=", 1)[0].strip()
            require(c, "extra_args", flag not in _MANAGED_FLAGS, f"{flag} is set from its own config key; remove it from the extra args")
        require(c, "accelerator_type", isinstance(self.accelerator_type, str) and self.accelerator_type.startswith("nvidia-"),
                f"{self.accelerator_type!r} is not a GKE GPU type like nvidia-l4")
        require_positive(c, "cpu_request", self.cpu_request)
        require(c, "demo_ui", isinstance(self.demo_ui, bool), f"must be True or False, got {self.demo_ui!r}")
        require(c, "memory_request_gib", self.memory_request_gib <= self.memory_limit_gib,
                f"({self.memory_request_gib}) must not exceed memory_limit_gib ({self.memory_limit_gib})")
        require(c, "shm_size_gib", self.shm_size_gib < self.memory_limit_gib,
                f"({self.shm_size_gib}) must stay below memory_limit_gib ({self.memory_limit_gib}): /dev/shm counts against it")
        require_between(c, "startup_timeout_seconds", self.startup_timeout_seconds, 60, 7200)
        require_cidrs(c, "service_source_ranges", self.service_source_ranges, allow_empty=False)
        require(c, "min_replicas", isinstance(self.min_replicas, int) and self.min_replicas >= 1,
                f"must be at least 1, got {self.min_replicas!r}: an HPA keeps at least one replica")
        require_min_max(c, "min_replicas", self.min_replicas, "max_replicas", self.max_replicas)
        require_between(c, "target_tokens_per_second", self.target_tokens_per_second, 0, 1_000_000)
        require_between(c, "target_waiting_requests", self.target_waiting_requests, 0, 10_000)
        require(c, "target_tokens_per_second", self.target_tokens_per_second > 0 or self.target_waiting_requests > 0,
                "and target_waiting_requests are both 0: the autoscaler needs at least one metric")
        require_between(c, "scale_down_stabilization_seconds", self.scale_down_stabilization_seconds, 0, 3600)
        require(c, "namespace", isinstance(self.namespace, str) and bool(_DNS_LABEL.match(self.namespace))
                and self.namespace not in ("default", "kube-system", ADAPTER_NAMESPACE),
                f"{self.namespace!r} must be a DNS label of its own (not default, kube-system or {ADAPTER_NAMESPACE})")


class CustomMetricsAdapter(pulumi.ComponentResource):
    """The Custom Metrics Stackdriver Adapter: Cloud Monitoring (incl. Managed Prometheus) for the HPA.

    Follows the project's deploy/production/adapter_new_resource_model.yaml, serving the custom
    metrics API only (no external metrics, so no wildcard RBAC), hardened, on an unprivileged port.
    """

    def __init__(
        self,
        name: str,
        *,
        project: str,
        project_number: str,
        image: str,
        labels: Mapping[str, str],
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("llminfer:vllm_kubernetes:CustomMetricsAdapter", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        app_labels = {"app.kubernetes.io/name": ADAPTER_NAME}
        labels = {**labels, **app_labels, "app.kubernetes.io/component": "metrics-adapter"}

        namespace = core.v1.Namespace(
            f"{name}-namespace",
            metadata={"name": ADAPTER_NAMESPACE, "labels": {**labels, **_pod_security("restricted")}},
            opts=child,
        )
        in_namespace = pulumi.ResourceOptions(parent=self, depends_on=[namespace])
        account = core.v1.ServiceAccount(
            f"{name}-service-account",
            metadata={"name": ADAPTER_NAME, "namespace": ADAPTER_NAMESPACE, "labels": labels},
            opts=in_namespace,
        )
        subject = [{"kind": "ServiceAccount", "name": ADAPTER_NAME, "namespace": ADAPTER_NAMESPACE}]
        # Delegated authn/authz: the API server forwards HPA requests; the adapter checks them.
        rbac.v1.ClusterRoleBinding(
            f"{name}-auth-delegator",
            metadata={"name": "custom-metrics:system:auth-delegator", "labels": labels},
            role_ref={"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator"},
            subjects=subject,
            opts=child,
        )
        rbac.v1.RoleBinding(
            f"{name}-auth-reader",
            metadata={"name": "custom-metrics-auth-reader", "namespace": "kube-system", "labels": labels},
            role_ref={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "extension-apiserver-authentication-reader"},
            subjects=subject,
            opts=child,
        )
        reader = rbac.v1.ClusterRole(
            f"{name}-resource-reader",
            metadata={"name": "custom-metrics-resource-reader", "labels": labels},
            rules=[{"apiGroups": [""], "resources": ["pods", "nodes", "nodes/stats"], "verbs": ["get", "list", "watch"]}],
            opts=child,
        )
        rbac.v1.ClusterRoleBinding(
            f"{name}-resource-reader-binding",
            metadata={"name": "custom-metrics-resource-reader", "labels": labels},
            role_ref={"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "custom-metrics-resource-reader"},
            subjects=subject,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[reader]),
        )
        # Workload Identity without a Google service account: the pool principal of the adapter's
        # Kubernetes ServiceAccount reads Cloud Monitoring directly.
        viewer = projects.IAMMember(
            f"{name}-monitoring-viewer",
            project=project,
            role="roles/monitoring.viewer",
            member=(
                f"principal://iam.googleapis.com/projects/{project_number}/locations/global/workloadIdentityPools/"
                f"{project}.svc.id.goog/subject/ns/{ADAPTER_NAMESPACE}/sa/{ADAPTER_NAME}"
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[account]),
        )
        probe = {"scheme": "HTTPS", "port": ADAPTER_PORT}
        deployment = apps.v1.Deployment(
            f"{name}-deployment",
            metadata={
                "name": ADAPTER_NAME,
                "namespace": ADAPTER_NAMESPACE,
                "labels": labels,
                "annotations": skip_annotations(
                    {
                        "CKV_K8S_38": "the adapter calls the Kubernetes API (pods, nodes, delegated auth) with its token",
                        "CKV_K8S_43": "pinned GKE release tag of Google's adapter image, bumped with the gkeMetricsAdapterImage key",
                    }
                ),
            },
            spec={
                "replicas": 1,
                "selector": {"matchLabels": app_labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": ADAPTER_NAME,
                        "automountServiceAccountToken": True,
                        "securityContext": _pod_security_context(ADAPTER_USER),
                        "containers": [
                            {
                                "name": "adapter",
                                "image": image,
                                "imagePullPolicy": "Always",
                                "command": [
                                    "/adapter",
                                    "--use-new-resource-model=true",
                                    "--fallback-for-container-metrics=true",
                                    "--enable-external-metrics-api=false",
                                    f"--secure-port={ADAPTER_PORT}",
                                    "--cert-dir=/tmp/certs",
                                ],
                                "ports": [{"name": "https", "containerPort": ADAPTER_PORT, "protocol": "TCP"}],
                                "readinessProbe": {"httpGet": {"path": "/readyz", **probe}, "periodSeconds": 10},
                                "livenessProbe": {"httpGet": {"path": "/livez", **probe}, "periodSeconds": 20, "failureThreshold": 3},
                                "resources": {
                                    "requests": {"cpu": "250m", "memory": "400Mi"},
                                    "limits": {"cpu": "250m", "memory": "400Mi"},
                                },
                                "securityContext": _container_security_context(read_only_root=True),
                                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                            }
                        ],
                        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
                    },
                },
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=[account, viewer]),
        )
        service = core.v1.Service(
            f"{name}-service",
            metadata={"name": ADAPTER_NAME, "namespace": ADAPTER_NAMESPACE, "labels": labels},
            spec={
                "type": "ClusterIP",
                "selector": app_labels,
                "ports": [{"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}],
            },
            opts=in_namespace,
        )
        networking.v1.NetworkPolicy(
            f"{name}-network-policy",
            metadata={"name": ADAPTER_NAME, "namespace": ADAPTER_NAMESPACE, "labels": labels},
            spec={
                "podSelector": {"matchLabels": app_labels},
                "policyTypes": ["Ingress"],
                # The API server's aggregation layer is the only client; it comes from the control plane.
                "ingress": [{"ports": [{"port": ADAPTER_PORT, "protocol": "TCP"}]}],
            },
            opts=in_namespace,
        )
        self.api_services = [
            apiregistration.v1.APIService(
                f"{name}-{version}",
                metadata={"name": f"{version}.custom.metrics.k8s.io", "labels": labels},
                spec={
                    "group": "custom.metrics.k8s.io",
                    "version": version,
                    "groupPriorityMinimum": 100,
                    "versionPriority": priority,
                    "service": {"name": ADAPTER_NAME, "namespace": ADAPTER_NAMESPACE, "port": 443},
                    # The adapter serves a self-signed certificate it generates at start, as upstream.
                    "insecureSkipTLSVerify": True,
                },
                opts=pulumi.ResourceOptions(parent=self, depends_on=[service, deployment]),
            )
            for version, priority in (("v1beta1", 100), ("v1beta2", 200))
        ]
        self.register_outputs({"namespace": ADAPTER_NAMESPACE})


class VllmKubernetes(pulumi.ComponentResource):
    """The serving workload; `url` is `http://<reserved IP>/v1`, known once the load balancer has it."""

    url: pulumi.Output[str]
    api_key: pulumi.Output[str]
    address: pulumi.Output[str]
    namespace: str
    deployment_name: str

    def __init__(self, name: str, args: VllmKubernetesArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(f"llminfer:vllm_kubernetes:{COMPONENT}", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        ns = args.namespace
        selector = {"app.kubernetes.io/name": "vllm", "app.kubernetes.io/instance": name}
        base_labels = {**kubernetes_labels(args.labels), "app.kubernetes.io/managed-by": "pulumi"}
        labels = {**base_labels, **selector, "app.kubernetes.io/component": "inference-server"}
        self.namespace = ns
        self.deployment_name = "vllm"

        adapter = CustomMetricsAdapter(
            f"{name}-metrics-adapter",
            project=args.project,
            project_number=args.project_number,
            image=args.adapter_image,
            labels=base_labels,
            opts=child,
        )

        namespace = core.v1.Namespace(
            f"{name}-namespace",
            metadata={"name": ns, "labels": {**base_labels, **_pod_security("restricted" if args.hardened else "baseline")}},
            opts=child,
        )
        in_namespace = pulumi.ResourceOptions(parent=self, depends_on=[namespace])

        if args.api_key is None:
            generated = pulumi_random.RandomPassword(f"{name}-generated-api-key", length=48, special=False, opts=child)
            self.api_key = pulumi.Output.secret(generated.result)
        else:
            self.api_key = pulumi.Output.secret(args.api_key)
        api_key_secret = core.v1.Secret(
            f"{name}-api-key",
            metadata={"name": "vllm-api-key", "namespace": ns, "labels": labels},
            type="Opaque",
            string_data={"api-key": self.api_key},
            opts=in_namespace,
        )
        secrets = [api_key_secret]
        if args.hf_token is not None:
            secrets.append(
                core.v1.Secret(
                    f"{name}-hf-token",
                    metadata={"name": "vllm-hf-token", "namespace": ns, "labels": labels},
                    type="Opaque",
                    string_data={"token": pulumi.Output.secret(args.hf_token)},
                    opts=in_namespace,
                )
            )
        account = core.v1.ServiceAccount(
            f"{name}-service-account",
            metadata={"name": "vllm", "namespace": ns, "labels": labels},
            automount_service_account_token=False,
            opts=in_namespace,
        )

        front_config = core.v1.ConfigMap(
            f"{name}-front-config",
            metadata={"name": FRONT_CONFIG_MAP, "namespace": ns, "labels": labels},
            data=front_config_data(args.demo_ui),
            opts=in_namespace,
        )
        # A new GPU node (from zero in a regional or multi-zone pool), the ~10 GB image pull and the model
        # download all precede readiness; the Service waits for the same ready endpoints.
        ready_timeouts = pulumi.CustomTimeouts(create=ready_timeout(args), update=ready_timeout(args))
        deployment = apps.v1.Deployment(
            f"{name}-deployment",
            metadata={"name": self.deployment_name, "namespace": ns, "labels": labels, "annotations": skip_annotations(_vllm_skips(args))},
            spec=_deployment_spec(args, labels, selector),
            opts=pulumi.ResourceOptions(
                parent=self, depends_on=[account, front_config, *secrets], custom_timeouts=ready_timeouts
            ),
        )

        address = compute.Address(
            f"{name}-address",
            project=args.project,
            region=args.region,
            address_type="EXTERNAL",
            network_tier="PREMIUM",
            description="vLLM endpoint load balancer (managed by Pulumi)",
            labels=gcp_labels(args.labels),
            opts=child,
        )
        service = core.v1.Service(
            f"{name}-service",
            metadata={"name": "vllm", "namespace": ns, "labels": labels},
            spec={
                "type": "LoadBalancer",
                "loadBalancerIP": address.address,
                "loadBalancerSourceRanges": list(args.service_source_ranges),
                # Local: no second hop between nodes, and the client IP reaches the pod and the firewall.
                "externalTrafficPolicy": "Local",
                "selector": selector,
                # The front's port: vLLM itself listens on the pod's loopback only.
                "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}],
            },
            # pulumi-kubernetes waits for the load balancer's IP and ready endpoints, 10 minutes by default
            # ("If the Service has not reached a Ready state after 10 minutes, it will time out ... override
            # the default timeout value by setting the 'customTimeouts' option", core/v1 Service docs).
            opts=pulumi.ResourceOptions(parent=self, depends_on=[namespace], custom_timeouts=ready_timeouts),
        )
        policy.v1.PodDisruptionBudget(
            f"{name}-pdb",
            metadata={"name": "vllm", "namespace": ns, "labels": labels},
            spec={
                "maxUnavailable": 1,
                "selector": {"matchLabels": selector},
                # A crash-looping pod must not block node drains and upgrades.
                "unhealthyPodEvictionPolicy": "AlwaysAllow",
            },
            opts=in_namespace,
        )
        networking.v1.NetworkPolicy(
            f"{name}-network-policy",
            metadata={"name": "vllm", "namespace": ns, "labels": labels},
            spec={
                "podSelector": {"matchLabels": selector},
                "policyTypes": ["Ingress"],
                # Clients reach the front, filtered by the load balancer's source ranges; only the Managed
                # Prometheus collectors reach the metrics port. vLLM's own port is on loopback anyway.
                "ingress": [
                    {"ports": [{"port": FRONT_PORT, "protocol": "TCP"}]},
                    {
                        "from": [
                            {
                                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": GMP_NAMESPACE}},
                                "podSelector": {"matchLabels": dict(GMP_COLLECTOR_LABELS)},
                            }
                        ],
                        "ports": [{"port": METRICS_PORT, "protocol": "TCP"}],
                    },
                ],
            },
            opts=in_namespace,
        )
        apiextensions.CustomResource(
            f"{name}-pod-monitoring",
            api_version="monitoring.googleapis.com/v1",
            kind="PodMonitoring",
            metadata={"name": "vllm", "namespace": ns, "labels": labels},
            spec={
                "selector": {"matchLabels": selector},
                "endpoints": [
                    {
                        # vLLM's /metrics, through the front's metrics listener (vLLM is on loopback).
                        "port": "metrics",
                        "path": METRICS_PATH,
                        "interval": "15s",
                        "timeout": "10s",
                        # Managed Prometheus bills per sample: keep vLLM's series, drop the Python runtime's.
                        "metricRelabeling": [{"action": "keep", "sourceLabels": ["__name__"], "regex": "vllm:.*"}],
                    }
                ],
            },
            opts=in_namespace,
        )
        autoscaling.v2.HorizontalPodAutoscaler(
            f"{name}-hpa",
            metadata={"name": "vllm", "namespace": ns, "labels": labels},
            spec=_hpa_spec(args, self.deployment_name),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[namespace, deployment, *adapter.api_services]),
        )

        self.address = address.address
        self.url = pulumi.Output.all(address.address, service.metadata).apply(lambda values: f"http://{values[0]}/v1")
        self.register_outputs({"url": self.url, "address": self.address, "namespace": ns})


def _pod_security(level: str) -> dict[str, str]:
    return {f"pod-security.kubernetes.io/{mode}": level for mode in ("enforce", "audit", "warn")}


def _pod_security_context(user: int | None) -> dict[str, Any]:
    context: dict[str, Any] = {"seccompProfile": {"type": "RuntimeDefault"}}
    if user is not None:
        context.update({"runAsNonRoot": True, "runAsUser": user, "runAsGroup": user, "fsGroup": user})
    return context


def _container_security_context(*, read_only_root: bool) -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": read_only_root,
        "capabilities": {"drop": ["ALL"]},
    }


def _vllm_skips(args: VllmKubernetesArgs) -> dict[str, str]:
    """Each checkov finding the vLLM Deployment keeps on purpose, with why."""
    skips = {
        "CKV_K8S_11": "no CPU limit: CFS throttling of the API server and detokenizer shows up directly as latency",
        "CKV_K8S_15": "pinned version tag; Always would re-pull the manifest from Docker Hub (rate-limited) at every pod start",
        "CKV_K8S_35": "vLLM reads its API key only from --api-key or VLLM_API_KEY; the Secret is expanded into --api-key",
        "CKV_K8S_25": "the front keeps NET_BIND_SERVICE only: the caddy image's file capability makes exec fail without it (caddyserver/caddy-docker#396); Pod Security restricted allows it",
    }
    if "@sha256:" not in args.image:
        skips["CKV_K8S_43"] = "version tag from the gkeVllmImageTag key; set it to TAG@sha256:DIGEST to pin a digest"
    if not args.hardened:
        reason = "gkeHardenedPod is off: the image runs as built (root, writable root filesystem) for tags that need it"
        skips.update({"CKV_K8S_22": reason, "CKV_K8S_23": reason, "CKV_K8S_40": reason})
    return skips


def vllm_arguments(args: VllmKubernetesArgs) -> list[str]:
    """The OpenAI server's command line; the key comes from the env var the Secret fills.

    `--host 127.0.0.1`: only the front, in the same pod, reaches vLLM.
    """
    argv = [
        "--model", args.model_id,
        "--host", "127.0.0.1",
        "--port", str(HTTP_PORT),
        "--max-model-len", str(args.max_model_len),
        "--max-num-seqs", str(args.max_num_seqs),
        "--gpu-memory-utilization", f"{args.gpu_memory_utilization:g}",
        "--tensor-parallel-size", str(args.gpu_count),
        # Kubernetes expands $(VLLM_API_KEY) from the container env: the key is never in the pod spec.
        "--api-key", "$(VLLM_API_KEY)",
    ]  # fmt: skip
    if args.quantization:
        argv += ["--quantization", args.quantization]
    return argv + list(args.extra_args)


def ready_timeout(args: VllmKubernetesArgs) -> str:
    """How long Pulumi waits for the Deployment and the Service to be ready (startup budget + 20 minutes)."""
    return f"{args.startup_timeout_seconds // 60 + 20}m"


def front_caddyfile(demo_ui: bool = False) -> str:
    """The front's Caddyfile: the API on FRONT_PORT, /metrics on METRICS_PORT, vLLM on the pod's loopback;
    with demo_ui the playground from the ConfigMap's mount (only its own file names are served)."""
    return caddyfile(f":{FRONT_PORT}", f"127.0.0.1:{HTTP_PORT}", metrics_listen=f":{METRICS_PORT}",
                     page_dir=FRONT_CONFIG_DIR if demo_ui else "")


def front_config_data(demo_ui: bool = False) -> dict[str, str]:
    """The front's ConfigMap: its Caddyfile, and with demo_ui the playground's files beside it."""
    return {"Caddyfile": front_caddyfile(demo_ui), **(page_files() if demo_ui else {})}


def _engine_probe_command() -> list[str]:
    # The image has python3 for sure; a non-200 (urllib raises on >= 400) or no answer fails the probe.
    url = f"http://127.0.0.1:{HTTP_PORT}{HEALTH_PATH}"
    return ["python3", "-c", f"import urllib.request as u; u.urlopen({url!r}, timeout=4).close()"]


def vllm_env(args: VllmKubernetesArgs) -> list[dict[str, Any]]:
    """The vLLM container's env: the key from the Secret, caches on the cache volume, no telemetry."""
    env: list[dict[str, Any]] = [
        {"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": "vllm-api-key", "key": "api-key"}}},
        # Every cache (HF hub, vLLM, torch.compile, Triton) lands on the cache volume, writable as any uid.
        {"name": "HOME", "value": CACHE_DIR},
        {"name": "XDG_CACHE_HOME", "value": CACHE_DIR},
        {"name": "HF_HOME", "value": f"{CACHE_DIR}/huggingface"},
        # getpass.getuser() (torch) fails for a uid without a passwd entry unless USER is set.
        {"name": "USER", "value": "vllm"},
        {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
        {"name": "DO_NOT_TRACK", "value": "1"},
    ]
    if args.hf_token is not None:
        # As a file, not an env var: huggingface_hub reads HF_TOKEN_PATH.
        env.append({"name": "HF_TOKEN_PATH", "value": f"{HF_TOKEN_DIR}/token"})
    return env


def vllm_container(args: VllmKubernetesArgs) -> dict[str, Any]:
    """The vLLM container: image, command, args (`vllm_arguments`), env (`vllm_env`), probes, resources."""
    mounts = [
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "cache", "mountPath": CACHE_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if args.hf_token is not None:
        mounts.append({"name": "hf-token", "mountPath": HF_TOKEN_DIR, "readOnly": True})
    # Exec probes: a kubelet httpGet goes to the pod IP, where vLLM (on 127.0.0.1) does not listen.
    health = {"exec": {"command": _engine_probe_command()}}
    gpus = str(args.gpu_count)
    container = {
        "name": "vllm",
        "image": args.image,
        "imagePullPolicy": "IfNotPresent",
        # The module path works whatever ENTRYPOINT a given image tag has (`vllm serve` or none).
        "command": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
        "args": vllm_arguments(args),
        "env": vllm_env(args),
        "resources": {
            "requests": {"cpu": quantity(args.cpu_request), "memory": f"{args.memory_request_gib}Gi", "nvidia.com/gpu": gpus},
            "limits": {"memory": f"{args.memory_limit_gib}Gi", "nvidia.com/gpu": gpus},
        },
        # The model download, weight loading and CUDA graph capture happen before /health answers.
        "startupProbe": {**health, "periodSeconds": 10, "timeoutSeconds": 5,
                         "failureThreshold": math.ceil(args.startup_timeout_seconds / 10)},
        "readinessProbe": {**health, "periodSeconds": 5, "timeoutSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {**health, "periodSeconds": 15, "timeoutSeconds": 10, "failureThreshold": 4},
        "securityContext": _container_security_context(read_only_root=args.hardened),
        "volumeMounts": mounts,
    }  # fmt: skip
    if args.hardened:
        container["securityContext"]["runAsNonRoot"] = True
    return container


def front_container(args: VllmKubernetesArgs) -> dict[str, Any]:
    """The front (Caddy) sidecar: always non-root with a read-only root filesystem."""
    security = _container_security_context(read_only_root=True)
    # The caddy image's binary carries cap_net_bind_service=+ep: with every capability dropped, execve
    # fails with EPERM (caddyserver/caddy-docker#396). Pod Security "restricted" allows adding back this
    # one; it grants nothing here (no_new_privs, and the front binds unprivileged ports).
    security["capabilities"] = {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}
    security.update({"runAsNonRoot": True, "runAsUser": RUN_AS_USER, "runAsGroup": RUN_AS_USER})
    return {
        "name": "front",
        "image": args.front_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["caddy", "run", "--config", f"{FRONT_CONFIG_DIR}/Caddyfile", "--adapter", "caddyfile"],
        # Caddy keeps its autosave under XDG_CONFIG_HOME (and TLS state, unused here, under XDG_DATA_HOME).
        "env": [{"name": "XDG_CONFIG_HOME", "value": "/config"}, {"name": "XDG_DATA_HOME", "value": "/data"}],
        "ports": [
            {"name": "http", "containerPort": FRONT_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
        # Ready only when vLLM is (the health path is vLLM's own /health); alive as long as it listens.
        "readinessProbe": {"httpGet": {"path": HEALTH_PATH, "port": "http"}, "periodSeconds": 5, "timeoutSeconds": 5,
                           "failureThreshold": 3},
        "livenessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 15, "timeoutSeconds": 5, "failureThreshold": 4},
        "securityContext": security,
        "volumeMounts": [
            {"name": "front-config", "mountPath": FRONT_CONFIG_DIR, "readOnly": True},
            {"name": "front-state", "mountPath": "/config"},
            {"name": "front-data", "mountPath": "/data"},
        ],
    }  # fmt: skip


def _deployment_spec(args: VllmKubernetesArgs, labels: Mapping[str, str], selector: Mapping[str, str]) -> dict[str, Any]:
    volumes: list[dict[str, Any]] = [
        # NCCL and PyTorch's shared-memory IPC need more than the runtime's 64 MB /dev/shm.
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{args.shm_size_gib}Gi"}},
        {"name": "cache", "emptyDir": {"sizeLimit": "64Gi"}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "8Gi"}},
        {"name": "front-config", "configMap": {"name": FRONT_CONFIG_MAP}},
        {"name": "front-state", "emptyDir": {"sizeLimit": "16Mi"}},
        {"name": "front-data", "emptyDir": {"sizeLimit": "16Mi"}},
    ]
    if args.hf_token is not None:
        volumes.append({"name": "hf-token", "secret": {"secretName": "vllm-hf-token", "defaultMode": 0o440}})  # pragma: allowlist secret (Kubernetes Secret name)
    # A changed Caddyfile rolls the pods (a ConfigMap change alone would not restart the front).
    front_data = front_config_data(args.demo_ui)
    config_hash = hashlib.sha256("".join(front_data[key] for key in sorted(front_data)).encode()).hexdigest()[:16]
    return {
        # No replicas: the HPA owns the count, and an update must not reset it.
        "selector": {"matchLabels": dict(selector)},
        "revisionHistoryLimit": 3,
        # One extra GPU node during a rollout (the node pool has that headroom): no capacity dip.
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "progressDeadlineSeconds": args.startup_timeout_seconds + 900,
        "template": {
            "metadata": {"labels": dict(labels), "annotations": {"llminfer/front-config": config_hash}},
            "spec": {
                "serviceAccountName": "vllm",
                "automountServiceAccountToken": False,
                "enableServiceLinks": False,
                "terminationGracePeriodSeconds": 60,
                "nodeSelector": {"cloud.google.com/gke-accelerator": args.accelerator_type},
                # GKE taints GPU nodes; say so explicitly rather than rely on the admission plugin.
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "securityContext": _pod_security_context(RUN_AS_USER if args.hardened else None),
                "containers": [vllm_container(args), front_container(args)],
                "volumes": volumes,
            },
        },
    }


def _hpa_spec(args: VllmKubernetesArgs, deployment_name: str) -> dict[str, Any]:
    metrics = []
    for metric, target in (
        (TOKENS_PER_SECOND_METRIC, args.target_tokens_per_second),
        (WAITING_REQUESTS_METRIC, args.target_waiting_requests),
    ):
        if target > 0:
            metrics.append(
                {"type": "Pods", "pods": {"metric": {"name": metric}, "target": {"type": "AverageValue", "averageValue": quantity(target)}}}
            )
    return {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment_name},
        "minReplicas": args.min_replicas,
        "maxReplicas": args.max_replicas,
        "metrics": metrics,
        "behavior": {
            # Scale out at once (a GPU node takes minutes to arrive), by up to 2 pods or 100% a minute.
            "scaleUp": {
                "stabilizationWindowSeconds": 0,
                "selectPolicy": "Max",
                "policies": [{"type": "Pods", "value": 2, "periodSeconds": 60}, {"type": "Percent", "value": 100, "periodSeconds": 60}],
            },
            # Scale in one pod at a time after the load has stayed low for the whole window.
            "scaleDown": {
                "stabilizationWindowSeconds": args.scale_down_stabilization_seconds,
                "selectPolicy": "Max",
                "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
            },
        },
    }

