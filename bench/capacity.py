"""Capacity as the cloud sees it, polled while a --profile run goes on.

Readers answer `read() -> (current, desired)` in instances (replicas):
  sagemaker  DescribeEndpoint: the variant's CurrentInstanceCount and DesiredInstanceCount (boto3)
  gke        the Deployment's status.readyReplicas (apps/v1) and the HPA's status.desiredReplicas
             (autoscaling/v2), from the Kubernetes API with the user's kubeconfig
  fixed      a constant (Azure's single VM)
  mock       the mock server's GET /capacity (instances and desired_instances)
`from_spec({"kind": ..., ...})` builds one; a stack exports its spec as the `capacity` output. A reader that
cannot start (no credentials, no kubeconfig) raises CapacityUnavailable with what to do; the run goes on
without capacity and says why.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from time import perf_counter_ns

import httpx

HTTP_TIMEOUT_S = 10.0


class CapacityUnavailable(RuntimeError):
    """The reader cannot read (credentials, config, a missing resource): the message says what to do."""


class FixedCapacity:
    def __init__(self, instances: int = 1):
        self.instances = int(instances)
        self.name = f"fixed {self.instances}"

    def read(self) -> tuple[int | None, int | None]:
        return self.instances, self.instances


class MockCapacity:
    def __init__(self, url: str):
        root = url.rstrip("/").removesuffix("/chat/completions").removesuffix("/v1")
        self.url = root + "/capacity"
        self.name = f"mock {self.url}"
        self._client = httpx.Client(timeout=HTTP_TIMEOUT_S, trust_env=False)

    def read(self) -> tuple[int | None, int | None]:
        try:
            answer = self._client.get(self.url).json()
        except (httpx.HTTPError, ValueError) as exc:
            raise CapacityUnavailable(f"{self.url}: {type(exc).__name__}: {exc}") from None
        if answer.get("slots") is None:
            return None, None
        return answer["instances"], answer["desired_instances"]


class SageMakerCapacity:
    """DescribeEndpoint's ProductionVariants[VariantName].{Current,Desired}InstanceCount."""

    def __init__(self, endpoint: str, variant: str | None = None, region: str | None = None, client=None):
        self.endpoint = endpoint
        self.variant = variant
        self.name = f"sagemaker {endpoint}/{variant or '(first variant)'}"
        if client is None:
            import boto3

            client = boto3.client("sagemaker", region_name=region)
        self._client = client

    def read(self) -> tuple[int | None, int | None]:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            answer = self._client.describe_endpoint(EndpointName=self.endpoint)
        except NoCredentialsError:
            raise CapacityUnavailable(
                "no AWS credentials for DescribeEndpoint: set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                "(IAM action sagemaker:DescribeEndpoint)") from None
        except ClientError as exc:
            err = exc.response.get("Error", {})
            raise CapacityUnavailable(
                f"DescribeEndpoint {self.endpoint}: {err.get('Code')}: {err.get('Message')}") from None
        except BotoCoreError as exc:
            raise CapacityUnavailable(f"DescribeEndpoint {self.endpoint}: {exc}") from None
        variants = answer.get("ProductionVariants") or []
        chosen = next((v for v in variants if self.variant is None or v.get("VariantName") == self.variant), None)
        if chosen is None:
            names = ", ".join(v.get("VariantName", "?") for v in variants) or "none"
            raise CapacityUnavailable(f"endpoint {self.endpoint} has no variant {self.variant!r} (variants: {names})")
        return chosen.get("CurrentInstanceCount"), chosen.get("DesiredInstanceCount")


class KubeConfig:
    """What a request to the API server needs from a kubeconfig: server, TLS and a bearer token or client cert.

    Supports what `gcloud container clusters get-credentials` writes (an exec plugin, gke-gcloud-auth-plugin,
    printing an ExecCredential) as well as static tokens, client certificates, CA data or files.
    """

    def __init__(self, path: str | None = None, context: str | None = None):
        import yaml

        candidates = [path] if path else (os.environ.get("KUBECONFIG") or "").split(os.pathsep)
        candidates = [c for c in candidates if c] or [str(Path.home() / ".kube" / "config")]
        found = next((c for c in candidates if Path(c).is_file()), None)
        if found is None:
            raise CapacityUnavailable(
                f"no kubeconfig at {', '.join(candidates)}: run `gcloud container clusters get-credentials CLUSTER` "
                "or set KUBECONFIG")
        self.path = found
        config = yaml.safe_load(Path(found).read_text()) or {}
        name = context or config.get("current-context")
        ctx = _named(config, "contexts", name, "context", found)
        self.context = name
        self.cluster = _named(config, "clusters", ctx.get("cluster"), "cluster", found)
        self.user = _named(config, "users", ctx.get("user"), "user", found) if ctx.get("user") else {}
        self.namespace = ctx.get("namespace") or "default"
        self.server = str(self.cluster.get("server", "")).rstrip("/")
        if not self.server:
            raise CapacityUnavailable(f"{found}: cluster {ctx.get('cluster')!r} has no server")
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-kube-")

    def _file(self, data_key: str, file_key: str, source: dict) -> str | None:
        if source.get(data_key):
            path = Path(self._tmp.name) / data_key
            path.write_bytes(base64.b64decode(source[data_key]))
            path.chmod(0o600)
            return str(path)
        return source.get(file_key)

    def token(self) -> str | None:
        if self.user.get("token"):
            return self.user["token"]
        plugin = self.user.get("exec")
        if not plugin:
            return None
        env = dict(os.environ, **{e["name"]: e["value"] for e in plugin.get("env") or []})
        cmd = [plugin["command"], *(plugin.get("args") or [])]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
        except FileNotFoundError:
            raise CapacityUnavailable(
                f"kubeconfig user's exec plugin {plugin['command']!r} is not installed "
                "(GKE: `gcloud components install gke-gcloud-auth-plugin`)") from None
        if proc.returncode != 0:
            raise CapacityUnavailable(f"kubeconfig exec plugin {plugin['command']} failed: {proc.stderr.strip()[-300:]}")
        try:
            return json.loads(proc.stdout)["status"]["token"]
        except (ValueError, KeyError, TypeError):
            raise CapacityUnavailable(f"kubeconfig exec plugin {plugin['command']} printed no ExecCredential token") from None

    def client(self) -> httpx.Client:
        verify: bool | ssl.SSLContext = True
        if self.server.startswith("https"):
            if self.cluster.get("insecure-skip-tls-verify"):
                verify = False
            else:
                ca = self._file("certificate-authority-data", "certificate-authority", self.cluster)
                verify = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
                cert = self._file("client-certificate-data", "client-certificate", self.user)
                key = self._file("client-key-data", "client-key", self.user)
                if cert and key:
                    verify.load_cert_chain(cert, key)
        headers = {"Accept": "application/json"}
        token = self.token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.Client(base_url=self.server, headers=headers, verify=verify, timeout=HTTP_TIMEOUT_S,
                            trust_env=False)


def _named(config: dict, section: str, name, key: str, path: str) -> dict:
    for item in config.get(section) or []:
        if item.get("name") == name:
            return item.get(key) or {}
    raise CapacityUnavailable(f"{path}: no {section[:-1]} named {name!r}")


class GkeCapacity:
    """Ready replicas of the Deployment (apps/v1) and the HPA's desired replicas (autoscaling/v2)."""

    def __init__(self, deployment: str, hpa: str | None = None, namespace: str | None = None,
                 kubeconfig: str | None = None, context: str | None = None):
        self.kube = KubeConfig(kubeconfig, context)
        self.namespace = namespace or self.kube.namespace
        self.deployment = deployment
        self.hpa = hpa
        self.name = f"gke {self.namespace}/{deployment}" + (f" hpa {hpa}" if hpa else "")
        self._client = self.kube.client()

    def _get(self, path: str) -> dict:
        resp = self._send(path)
        if resp.status_code == 401 and self.kube.user.get("exec"):
            # An exec plugin's token expires (GKE's after an hour, shorter than a long --profile run); like
            # client-go, run the plugin again on a 401 and retry once with the fresh token.
            token = self.kube.token()
            if token:
                self._client.headers["Authorization"] = f"Bearer {token}"
            resp = self._send(path)
        if resp.status_code in (401, 403):
            raise CapacityUnavailable(
                f"{self.kube.server}{path}: HTTP {resp.status_code}: the kubeconfig's user may not read it "
                "(needs get on deployments and horizontalpodautoscalers)")
        if resp.status_code != 200:
            raise CapacityUnavailable(f"{self.kube.server}{path}: HTTP {resp.status_code}")
        return resp.json()

    def _send(self, path: str) -> httpx.Response:
        try:
            return self._client.get(path)
        except httpx.HTTPError as exc:
            raise CapacityUnavailable(f"{self.kube.server}{path}: {type(exc).__name__}: {exc}") from None

    def read(self) -> tuple[int | None, int | None]:
        ns = self.namespace
        deployment = self._get(f"/apis/apps/v1/namespaces/{ns}/deployments/{self.deployment}")
        # readyReplicas is left out of the status while no pod is ready.
        ready = (deployment.get("status") or {}).get("readyReplicas", 0)
        if self.hpa:
            hpa = self._get(f"/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers/{self.hpa}")
            desired = (hpa.get("status") or {}).get("desiredReplicas")
        else:
            desired = (deployment.get("spec") or {}).get("replicas")
        return ready, desired


def from_spec(spec: dict, url: str | None = None):
    """A reader from a stack's `capacity` output or --capacity; raises CapacityUnavailable."""
    kind = spec.get("kind")
    if kind == "sagemaker":
        return SageMakerCapacity(spec["endpointName"], spec.get("variantName"), spec.get("region"))
    if kind == "gke":
        return GkeCapacity(spec["deployment"], spec.get("hpa"), spec.get("namespace"),
                           spec.get("kubeconfig"), spec.get("context"))
    if kind == "fixed":
        return FixedCapacity(spec.get("instances", 1))
    if kind == "mock":
        return MockCapacity(spec.get("url") or url)
    raise CapacityUnavailable(f"capacity kind {kind!r} is unknown; known: sagemaker, gke, fixed, mock")


def parse_capacity_flag(text: str) -> dict:
    """--capacity: `mock`, `fixed:N`, `sagemaker:ENDPOINT[/VARIANT][@REGION]`, `gke:[NAMESPACE/]DEPLOYMENT[,HPA]`."""
    kind, _, rest = text.partition(":")
    if kind == "mock":
        return {"kind": "mock", "url": rest or None}
    if kind == "fixed":
        try:
            return {"kind": "fixed", "instances": int(rest or 1)}
        except ValueError:
            pass
    if kind == "sagemaker" and rest:
        rest, _, region = rest.partition("@")
        endpoint, _, variant = rest.partition("/")
        return {"kind": "sagemaker", "endpointName": endpoint, "variantName": variant or None, "region": region or None}
    if kind == "gke" and rest:
        target, _, hpa = rest.partition(",")
        namespace, _, deployment = target.rpartition("/")
        return {"kind": "gke", "namespace": namespace or None, "deployment": deployment, "hpa": hpa or None}
    raise ValueError(f"--capacity {text!r}: expected mock, fixed:N, sagemaker:ENDPOINT[/VARIANT][@REGION] "
                     "or gke:[NAMESPACE/]DEPLOYMENT[,HPA]")


class CapacityPoller:
    """Reads the capacity every `interval_s` in a thread of its own; samples are (t_s from t0, current, desired)."""

    def __init__(self, reader, interval_s: float):
        self.reader = reader
        self.interval_s = interval_s
        self.samples: list[tuple[float, int | None, int | None]] = []
        self.errors = 0
        self.last_error: str | None = None
        self.on_first_error = None  # called with the message of the first failed read
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0_ns = 0

    def start(self, t0_ns: int) -> None:
        self._t0_ns = t0_ns
        self._thread = threading.Thread(target=self._run, name="bench-capacity", daemon=True)
        self._thread.start()

    def poll_once(self) -> None:
        try:
            current, desired = self.reader.read()
        except CapacityUnavailable as exc:
            self.errors += 1
            self.last_error = str(exc)
            if self.errors == 1 and self.on_first_error is not None:
                self.on_first_error(self.last_error)
            return
        self.samples.append((round((perf_counter_ns() - self._t0_ns) / 1e9, 3), current, desired))

    def _run(self) -> None:
        # Polls on a fixed schedule from t0 (no drift), the first at once.
        t0 = time.monotonic()
        k = 0
        while not self._stop.is_set():
            self.poll_once()
            k += 1
            self._stop.wait(max(0.0, t0 + k * self.interval_s - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(HTTP_TIMEOUT_S + 5)
