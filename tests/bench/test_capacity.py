"""Capacity: the mock's scripted slots (the truth) and the readers that poll a cloud's capacity."""

import asyncio
import datetime as _dt
import http.server
import json
import re
import sys
import threading
import time
import urllib.error
import urllib.request

import boto3
import orjson
import pytest
from botocore.stub import Stubber

from bench.capacity import (
    CapacityPoller,
    CapacityUnavailable,
    FixedCapacity,
    GkeCapacity,
    MockCapacity,
    SageMakerCapacity,
    from_spec,
    parse_capacity_flag,
)
from bench.mock_capacity import Autoscale, Capacity, parse_autoscale, parse_schedule
from bench.mock_server import MockConfig


class _Reply:
    def __init__(self, status: int, data: bytes):
        self.status, self.data = status, data


class _Http:
    """The stdlib's client, enough for these tests (urllib3-like: request(method, url, body=))"""

    @staticmethod
    def request(method: str, url: str, body: bytes | None = None) -> _Reply:
        req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return _Reply(resp.status, resp.read())
        except urllib.error.HTTPError as err:
            return _Reply(err.code, err.read())


HTTP = _Http()


def get_json(url: str) -> dict:
    return orjson.loads(HTTP.request("GET", url).data)


def gauges(text: str) -> dict:
    """Prometheus text -> {name: value} (labels dropped)."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([a-z_:]+)(\{[^}]*\})? ([0-9.e+-]+)$", line)
        if m:
            out[m.group(1)] = float(m.group(3))
    return out


# -- the slot gate and its controller, on a fake clock ------------------------------------------------


def run_with_waiters(cap: Capacity, n: int, steps):
    """Start n requests on cap (each holds its slot), then call steps(cap, tasks) on the loop."""

    async def main():
        hold = asyncio.Event()

        async def request():
            await cap.acquire()
            try:
                await hold.wait()
            finally:
                cap.release()

        tasks = [asyncio.create_task(request()) for _ in range(n)]
        await asyncio.sleep(0)
        result = steps(cap, tasks)
        hold.set()
        await asyncio.gather(*tasks)
        return result

    return asyncio.run(main())


def test_slots_serve_first_come_first_served_and_the_rest_wait():
    cap = Capacity(2)
    seen = run_with_waiters(cap, 5, lambda c, _t: (c.running, c.waiting))
    assert seen == (2, 3)
    assert (cap.running, cap.waiting) == (0, 0)


def test_autoscaler_decides_after_sustain_and_serves_after_provision():
    cap = Capacity(2, autoscale=Autoscale(max_slots=6, queue_above=1, sustain_s=5, provision_s=10))
    t0 = cap.t0_mono

    def steps(c, _tasks):
        c.tick(t0 + 1)  # 3 waiting > 1: the breach starts
        c.tick(t0 + 5.9)
        assert c.desired == 2  # not sustained yet
        c.tick(t0 + 6.0)
        assert (c.desired, c.slots) == (4, 2)  # decided, not ready
        c.tick(t0 + 15.9)
        assert c.slots == 2
        c.tick(t0 + 16.0)
        return c.slots, c.running, c.waiting

    assert run_with_waiters(cap, 5, steps) == (4, 4, 1)
    assert [(e["kind"], e["from"], e["to"], e["t_s"]) for e in cap.events] == [
        ("desired", 2, 4, 6.0),
        ("ready", 2, 4, 16.0),
    ]
    assert cap.events[1]["unix"] == pytest.approx(cap.t0_unix + 16.0, abs=1e-3)


def test_a_broken_breach_starts_the_count_again():
    cap = Capacity(1, autoscale=Autoscale(max_slots=2, queue_above=0, sustain_s=5, provision_s=0))
    t0 = cap.t0_mono

    async def main():
        cap.tick(t0 + 0)
        cap.running = 1
        fut = asyncio.get_running_loop().create_future()
        cap._waiters.append(fut)
        cap.tick(t0 + 1)  # breach from 1
        cap._waiters.clear()
        cap.tick(t0 + 4)  # broken
        cap._waiters.append(fut)
        cap.tick(t0 + 5)  # breach from 5
        cap.tick(t0 + 9)
        assert cap.desired == 1
        cap.tick(t0 + 10)
        assert cap.desired == 2

    asyncio.run(main())


def test_scale_in_after_idle_never_below_the_start():
    cap = Capacity(2, autoscale=Autoscale(max_slots=4, sustain_s=0, provision_s=0, scale_in_idle_s=30))
    cap.desired = cap.slots = 4
    t0 = cap.t0_mono
    cap.running = 3  # the slots to remove are busy: no scale-in however long
    cap.tick(t0 + 0.5)
    cap.tick(t0 + 60)
    assert cap.slots == 4
    cap.running = 2
    cap.tick(t0 + 1)
    cap.tick(t0 + 30.9)
    assert cap.slots == 4
    cap.tick(t0 + 31)
    assert (cap.slots, cap.desired) == (2, 2)
    cap.tick(t0 + 100)
    assert cap.slots == 2


def test_schedule_changes_slots_at_its_times():
    cap = Capacity(1, schedule=[(0, 1), (10, 3), (20, 2)])
    t0 = cap.t0_mono
    cap.tick(t0 + 9.99)
    assert cap.slots == 1
    cap.tick(t0 + 10)
    assert cap.slots == 3
    cap.tick(t0 + 25)
    assert cap.slots == 2
    assert [(e["kind"], e["to"]) for e in cap.events] == [("desired", 3), ("ready", 3), ("desired", 2), ("ready", 2)]


def test_a_cancelled_waiter_gives_its_place_back():
    cap = Capacity(1)


    async def main():
        await cap.acquire()
        waiter = asyncio.create_task(cap.acquire())
        await asyncio.sleep(0)
        assert cap.waiting == 1
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        assert cap.waiting == 0
        cap.release()
        assert cap.running == 0

    asyncio.run(main())


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"max_concurrent": 0}, "max_concurrent=0: must be >= 1"),
        ({"autoscale": Autoscale(max_slots=4)}, "need max_concurrent"),
        ({"max_concurrent": 4, "autoscale": Autoscale(max_slots=2)}, "max_slots=2 is below max_concurrent=4"),
        ({"max_concurrent": 1, "capacity_schedule": ((5, 1), (5, 2))}, "increasing"),
        ({"max_concurrent": 1, "capacity_schedule": ((0, -1),)}, "slots=-1"),
        ({"max_concurrent": 1, "capacity_schedule": ((0, 1),), "autoscale": Autoscale(max_slots=2)}, "not both"),
        ({"max_concurrent": 1, "max_queue": -1}, "max_queue=-1"),
    ],
)
def test_bad_capacity_config_is_named(kwargs, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        MockConfig(**kwargs)


def test_cli_forms_parse_and_refuse_clearly():
    assert parse_schedule("0:4, 30:8") == ((0.0, 4), (30.0, 8))
    assert parse_autoscale("max=8,queue=2,sustain=5,provision=20") == Autoscale(
        max_slots=8, queue_above=2, sustain_s=5.0, provision_s=20.0
    )
    with pytest.raises(ValueError, match="SECONDS:SLOTS"):
        parse_schedule("30")
    with pytest.raises(ValueError, match="KEY one of"):
        parse_autoscale("max=8,delay=3")
    with pytest.raises(ValueError, match="needs max=SLOTS"):
        parse_autoscale("queue=2")


# -- the mock server's /capacity and /metrics ------------------------------------------------------------


def test_mock_queues_beyond_its_slots_and_shows_it_in_metrics(mock_server):
    server = mock_server(ttft_ms=300, itl_ms=1, output_tokens=4, max_concurrent=2)
    base = server.url.removesuffix("/v1")
    body = orjson.dumps({"model": "mock-model", "stream": True, "messages": [{"role": "user", "content": "x"}]})
    threads = [
        threading.Thread(target=HTTP.request, args=("POST", server.url + "/chat/completions"), kwargs={"body": body})
        for _ in range(5)
    ]
    for th in threads:
        th.start()
    deadline = time.monotonic() + 10
    while server.state.capacity.running + server.state.capacity.waiting < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    metrics = gauges(HTTP.request("GET", base + "/metrics").data.decode())
    snap = get_json(base + "/capacity")
    for th in threads:
        th.join()
    assert (metrics["vllm:num_requests_running"], metrics["vllm:num_requests_waiting"]) == (2, 3)
    assert metrics["mock:capacity_slots"] == 2
    assert (snap["slots"], snap["running"], snap["waiting"], snap["instances"]) == (2, 2, 3, 1)
    after = gauges(HTTP.request("GET", base + "/metrics").data.decode())
    assert after["vllm:generation_tokens_total"] == 5 * 4
    assert after["vllm:request_success_total"] == 5
    assert after["vllm:num_requests_running"] == after["vllm:num_requests_waiting"] == 0


def test_a_queued_request_reports_its_wait_in_ttft(mock_server):

    server = mock_server(ttft_ms=200, itl_ms=1, output_tokens=2, max_concurrent=1)
    body = orjson.dumps({"model": "mock-model", "stream": True, "messages": [{"role": "user", "content": "x"}]})
    replies = []

    def send():
        replies.append(HTTP.request("POST", server.url + "/chat/completions", body=body).data)

    threads = [threading.Thread(target=send) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    ttfts = sorted(
        orjson.loads(line.removeprefix(b": metrics "))["ttft_ms"]
        for reply in replies
        for line in reply.split(b"\n\n")
        if line.startswith(b": metrics ")
    )
    # The second waited for the first's whole reply (>= 200 ms) before its own 200 ms TTFT began.
    assert ttfts[0] >= 200 and ttfts[1] >= 400


def test_full_queue_is_a_503_and_counted(mock_server):
    server = mock_server(ttft_ms=300, itl_ms=1, output_tokens=2, max_concurrent=1, max_queue=0)
    body = orjson.dumps({"model": "mock-model", "stream": True, "messages": [{"role": "user", "content": "x"}]})
    statuses = []
    threads = [
        threading.Thread(target=lambda: statuses.append(
            HTTP.request("POST", server.url + "/chat/completions", body=body).status))
        for _ in range(3)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(statuses) == [200, 503, 503]
    assert get_json(server.url.removesuffix("/v1") + "/capacity")["rejected"] == 2


def test_mock_without_capacity_still_answers_capacity_and_metrics(mock_server):
    base = mock_server().url.removesuffix("/v1")
    assert get_json(base + "/capacity")["slots"] is None
    assert gauges(HTTP.request("GET", base + "/metrics").data.decode())["vllm:num_requests_waiting"] == 0


def test_requests_turned_away_count_as_a_long_queue():
    cap = Capacity(1, autoscale=Autoscale(max_slots=2, queue_above=5, sustain_s=1, provision_s=0), max_queue=0)
    t0 = cap.t0_mono
    cap.rejected = 1
    cap.tick(t0 + 0)
    cap.rejected = 2
    cap.tick(t0 + 1)
    assert cap.desired == 2
    cap2 = Capacity(1, autoscale=Autoscale(max_slots=2, queue_above=5, sustain_s=1, provision_s=0), max_queue=0)
    cap2.rejected = 1
    cap2.tick(cap2.t0_mono)
    cap2.tick(cap2.t0_mono + 1)  # no new rejection: the breach ended
    assert cap2.desired == 1


# -- AWS: DescribeEndpoint on botocore's real client, stubbed -----------------------------------------------



def _sagemaker_client():
    return boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="AKIDEXAMPLE",
                        aws_secret_access_key="secret")  # pragma: allowlist secret (a fake for the stub)


def _describe_endpoint(variants):
    # The DescribeEndpoint response shape (botocore's sagemaker service-2.json; Stubber validates against it).
    now = _dt.datetime(2026, 12, 1, tzinfo=_dt.UTC)
    return {
        "EndpointName": "llm-endpoint",
        "EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/llm-endpoint",
        "EndpointConfigName": "llm-config",
        "EndpointStatus": "Updating",
        "CreationTime": now,
        "LastModifiedTime": now,
        "ProductionVariants": variants,
    }


def test_sagemaker_reader_reads_the_variants_current_and_desired_counts():
    client = _sagemaker_client()
    variants = [
        {"VariantName": "shadow", "CurrentWeight": 0.0, "DesiredWeight": 0.0, "CurrentInstanceCount": 9,
         "DesiredInstanceCount": 9},
        {"VariantName": "primary", "CurrentWeight": 1.0, "DesiredWeight": 1.0, "CurrentInstanceCount": 1,
         "DesiredInstanceCount": 3},
    ]
    with Stubber(client) as stub:
        stub.add_response("describe_endpoint", _describe_endpoint(variants), {"EndpointName": "llm-endpoint"})
        stub.add_client_error("describe_endpoint", service_error_code="ValidationException",
                              service_message="Could not find endpoint llm-endpoint.")
        reader = SageMakerCapacity("llm-endpoint", "primary", client=client)
        assert reader.read() == (1, 3)
        with pytest.raises(CapacityUnavailable, match="ValidationException: Could not find endpoint"):
            reader.read()
        stub.assert_no_pending_responses()


def test_sagemaker_reader_names_a_missing_variant():
    client = _sagemaker_client()
    with Stubber(client) as stub:
        stub.add_response("describe_endpoint", _describe_endpoint(
            [{"VariantName": "AllTraffic", "CurrentInstanceCount": 1, "DesiredInstanceCount": 1}]))
        with pytest.raises(CapacityUnavailable, match=r"no variant 'primary' \(variants: AllTraffic\)"):
            SageMakerCapacity("llm-endpoint", "primary", client=client).read()


def test_sagemaker_reader_without_credentials_says_what_to_set(no_aws_credentials):
    reader = SageMakerCapacity("llm-endpoint", "primary", region="us-east-1")
    with pytest.raises(CapacityUnavailable, match="no AWS credentials for DescribeEndpoint: set AWS_PROFILE"):
        reader.read()


# -- GKE: the Kubernetes API's apps/v1 and autoscaling/v2 JSON from a local server ---------------------------

DEPLOYMENT = {  # GET /apis/apps/v1/namespaces/llm/deployments/vllm (abridged, real field names)
    "kind": "Deployment", "apiVersion": "apps/v1",
    "metadata": {"name": "vllm", "namespace": "llm", "generation": 4},
    "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "vllm"}}},
    "status": {"observedGeneration": 4, "replicas": 3, "updatedReplicas": 3, "readyReplicas": 2,
               "availableReplicas": 2, "unavailableReplicas": 1},
}
HPA = {  # GET /apis/autoscaling/v2/namespaces/llm/horizontalpodautoscalers/vllm
    "kind": "HorizontalPodAutoscaler", "apiVersion": "autoscaling/v2",
    "metadata": {"name": "vllm", "namespace": "llm"},
    "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "vllm"},
             "minReplicas": 1, "maxReplicas": 4},
    "status": {"currentReplicas": 3, "desiredReplicas": 4,
               "currentMetrics": [{"type": "Pods", "pods": {
                   "metric": {"name": "prometheus.googleapis.com|vllm:num_requests_waiting|gauge"},
                   "current": {"averageValue": "7"}}}]},
}


@pytest.fixture
def kube_api():
    seen = []
    answers = {"/apis/apps/v1/namespaces/llm/deployments/vllm": DEPLOYMENT,
               "/apis/autoscaling/v2/namespaces/llm/horizontalpodautoscalers/vllm": HPA}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers.get("Authorization")))
            if self.headers.get("Authorization") != "Bearer kube-token":
                self.send_response(401)
                self.end_headers()
                return
            body = answers.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps(body or {"kind": "Status", "code": 404}).encode())

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen, answers
    server.shutdown()


def _kubeconfig(tmp_path, server, user):
    import yaml

    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "gke_proj_us-central1_llm",
        "clusters": [{"name": "gke_proj_us-central1_llm", "cluster": {"server": server}}],
        "contexts": [{"name": "gke_proj_us-central1_llm",
                      "context": {"cluster": "gke_proj_us-central1_llm", "user": "gke-user", "namespace": "llm"}}],
        "users": [{"name": "gke-user", "user": user}],
    }))
    return str(path)


def test_gke_reader_reads_ready_replicas_and_the_hpas_desired(kube_api, tmp_path):
    server, seen, answers = kube_api
    reader = GkeCapacity("vllm", "vllm", kubeconfig=_kubeconfig(tmp_path, server, {"token": "kube-token"}))
    assert reader.namespace == "llm"  # from the context
    assert reader.read() == (2, 4)
    assert [p for p, _auth in seen] == ["/apis/apps/v1/namespaces/llm/deployments/vllm",
                                        "/apis/autoscaling/v2/namespaces/llm/horizontalpodautoscalers/vllm"]
    # No pod ready: the API leaves readyReplicas out of the status.
    answers["/apis/apps/v1/namespaces/llm/deployments/vllm"] = {**DEPLOYMENT, "status": {"replicas": 3}}
    assert reader.read() == (0, 4)
    assert GkeCapacity("vllm", kubeconfig=_kubeconfig(tmp_path, server, {"token": "kube-token"})).read() == (0, 3)


def test_gke_reader_gets_its_token_from_the_exec_plugin(kube_api, tmp_path):
    server, seen, _ = kube_api
    credential = json.dumps({"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential",
                             "status": {"token": "kube-token"}})
    user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": sys.executable,
                     "args": ["-c", f"print({credential!r})"], "provideClusterInfo": True}}
    assert GkeCapacity("vllm", "vllm", kubeconfig=_kubeconfig(tmp_path, server, user)).read() == (2, 4)
    assert seen[0][1] == "Bearer kube-token"


def test_gke_reader_runs_the_exec_plugin_again_when_its_token_expires(kube_api, tmp_path):
    # GKE's plugin tokens last an hour, a --profile run may last longer: a 401 means run the plugin again
    # (client-go does the same), not that the user may not read the Deployment.
    server, seen, _ = kube_api
    calls = tmp_path / "plugin-calls"
    script = (f"import json, pathlib; p = pathlib.Path({str(calls)!r}); n = int(p.read_text()) if p.exists() else 0; "
              "p.write_text(str(n + 1)); token = 'kube-token' if n else 'expired-token'; "
              "print(json.dumps({'kind': 'ExecCredential', 'status': {'token': token}}))")
    user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": sys.executable,
                     "args": ["-c", script]}}
    reader = GkeCapacity("vllm", "vllm", kubeconfig=_kubeconfig(tmp_path, server, user))
    assert reader.read() == (2, 4)
    assert [auth for _path, auth in seen] == ["Bearer expired-token", "Bearer kube-token", "Bearer kube-token"]
    assert calls.read_text() == "2", "the plugin ran once more, not on every request"


def test_gke_reader_failures_say_what_to_do(kube_api, tmp_path, monkeypatch):
    server, _, _ = kube_api
    with pytest.raises(CapacityUnavailable, match="HTTP 401: the kubeconfig's user may not read it"):
        GkeCapacity("vllm", "vllm", kubeconfig=_kubeconfig(tmp_path, server, {"token": "wrong"})).read()
    with pytest.raises(CapacityUnavailable, match="HTTP 404"):
        GkeCapacity("other", kubeconfig=_kubeconfig(tmp_path, server, {"token": "kube-token"})).read()
    missing = {"exec": {"command": "gke-gcloud-auth-plugin-not-here"}}
    with pytest.raises(CapacityUnavailable, match="gcloud components install gke-gcloud-auth-plugin"):
        GkeCapacity("vllm", kubeconfig=_kubeconfig(tmp_path, server, missing))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    with pytest.raises(CapacityUnavailable, match="no kubeconfig at .*gcloud container clusters get-credentials"):
        GkeCapacity("vllm")


def test_specs_flags_fixed_and_mock_readers(mock_server):
    assert parse_capacity_flag("sagemaker:ep/primary@eu-west-1") == {
        "kind": "sagemaker", "endpointName": "ep", "variantName": "primary", "region": "eu-west-1"}
    assert parse_capacity_flag("gke:llm/vllm,vllm-hpa") == {
        "kind": "gke", "namespace": "llm", "deployment": "vllm", "hpa": "vllm-hpa"}
    assert parse_capacity_flag("fixed:2") == {"kind": "fixed", "instances": 2}
    with pytest.raises(ValueError, match="expected mock, fixed:N"):
        parse_capacity_flag("azure")
    with pytest.raises(CapacityUnavailable, match="kind 'ec2' is unknown"):
        from_spec({"kind": "ec2"})
    assert FixedCapacity(1).read() == (1, 1)
    server = mock_server(max_concurrent=4, slots_per_instance=2)
    assert from_spec({"kind": "mock"}, server.url).read() == (2, 2)
    assert MockCapacity(mock_server().url).read() == (None, None)  # no scripted capacity: unknown


def test_poller_keeps_polling_past_failures_and_reports_the_last():
    class Flaky:
        name = "flaky"
        calls = 0

        def read(self):
            Flaky.calls += 1
            if Flaky.calls == 2:
                raise CapacityUnavailable("throttled")
            return Flaky.calls, Flaky.calls

    poller = CapacityPoller(Flaky(), 10)
    poller.start(0)
    for _ in range(2):
        poller.poll_once()
    poller.stop()
    assert [(c, d) for _t, c, d in poller.samples] == [(1, 1), (3, 3)]
    assert (poller.errors, poller.last_error) == (1, "throttled")
