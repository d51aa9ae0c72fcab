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
                     "region", "url"}),
        ("aws", {"gatewayMode": "both", "budgetMonthlyUsd": 100, "budgetAlertEmail": "ops@example.com"},
         {"alarmTopicArn", "apiKey", "dashboardUrl", "endpointName", "instanceType", "pricePerHour", "region",
          "url", "functionUrl", "budgetName"}),
        ("azure", {"sshPublicKey": SSH_KEY}, {"apiKey", "fqdn", "keyVaultName", "location", "modelId",
                                              "pricePerHour", "publicIp", "resourceGroupName", "url", "vmName",
                                              "vmSize"}),
        ("gcp", {}, {"acceleratorType", "apiKey", "clusterLocation", "clusterName", "machineType", "modelId",
                     "namespace", "pricePerHour", "region", "url"}),
    ],
)
def test_stack_outputs_are_exactly_these(stack, overrides, keys):
    run = run_stack(stack, overrides)
    assert set(run.outputs) == keys
    assert BENCH_READS <= set(run.outputs)
    assert run.outputs["url"].endswith("/v1")
