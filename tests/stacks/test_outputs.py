"""Every stack's outputs, as a key set: what `python -m bench --stack`, the docs and users' scripts read.
A renamed or dropped output breaks them silently, so the whole set is pinned here, per stack and mode."""

from __future__ import annotations

import pytest

from tests.pulumi_harness import run_stack
from tests.ssh_keys import ed25519_public_key

SSH_KEY = ed25519_public_key("admin@example")

# What bench.target reads from `pulumi stack output` (url, apiKey, pricePerHour): every stack has them.
BENCH_READS = {"url", "apiKey", "pricePerHour"}


@pytest.mark.parametrize(
    ("stack", "overrides", "keys"),
    [
        ("aws", {}, {"alarmTopicArn", "apiKey", "dashboardUrl", "endpointName", "instanceType", "pricePerHour",
                     "region", "url", "capacity", "wafWebAclArn", "wafLogGroup"}),
        ("aws", {"gatewayMode": "both", "budgetMonthlyUsd": 100, "budgetAlertEmail": "ops@example.com"},
         {"alarmTopicArn", "apiKey", "dashboardUrl", "endpointName", "instanceType", "pricePerHour", "region",
          "url", "functionUrl", "budgetName", "capacity", "wafWebAclArn", "wafLogGroup"}),
        ("azure", {"sshPublicKey": SSH_KEY}, {"apiKey", "fqdn", "keyVaultName", "location", "modelId",
                                              "pricePerHour", "publicIp", "resourceGroupName", "url", "vmName",
                                              "vmSize", "capacity"}),
        ("gcp", {}, {"acceleratorType", "apiKey", "clusterLocation", "clusterName", "machineType", "modelId",
                     "namespace", "pricePerHour", "region", "url", "capacity"}),
    ],
)
def test_stack_outputs_are_exactly_these(stack, overrides, keys):
    run = run_stack(stack, overrides)
    assert set(run.outputs) == keys
    assert BENCH_READS <= set(run.outputs)
    assert run.outputs["url"].endswith("/v1")


@pytest.mark.parametrize(
    ("stack", "overrides", "expected"),
    [
        ("aws", {}, {"kind": "sagemaker", "variantName": "AllTraffic", "region": "us-east-1"}),
        ("azure", {"sshPublicKey": SSH_KEY}, {"kind": "fixed", "instances": 1}),
        ("gcp", {}, {"kind": "gke", "deployment": "vllm", "hpa": "vllm"}),
    ],
)
def test_capacity_output_is_what_the_bench_polls(stack, overrides, expected, tmp_path, monkeypatch):
    from bench.capacity import from_spec

    capacity = run_stack(stack, overrides).outputs["capacity"]
    assert expected.items() <= capacity.items()
    if capacity["kind"] == "gke":
        assert capacity["namespace"] and capacity["cluster"] and capacity["location"]
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text("current-context: c\ncontexts: [{name: c, context: {cluster: k, user: u}}]\n"
                              "clusters: [{name: k, cluster: {server: 'http://127.0.0.1:1'}}]\n"
                              "users: [{name: u, user: {token: t}}]\n")
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    reader = from_spec(capacity)  # the reader the bench builds from the output (no request yet)
    if capacity["kind"] == "gke":
        assert (reader.namespace, reader.deployment, reader.hpa) == (capacity["namespace"], "vllm", "vllm")
    elif capacity["kind"] == "sagemaker":
        assert capacity["endpointName"] == run_stack(stack, overrides).outputs["endpointName"]
        assert (reader.endpoint, reader.variant) == (capacity["endpointName"], "AllTraffic")
    else:
        assert reader.read() == (1, 1)
