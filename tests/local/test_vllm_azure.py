"""Azure on the real engine: vLLM started from the azure stack's rendered cloud-init (the `docker run` line
of llminfer-run-vllm), behind the front the VM always runs (the real Caddy with /etc/llminfer/Caddyfile)."""

from __future__ import annotations

import pytest

from tests.local.fronted_cases import *  # noqa: F403 (the cases GKE and Azure share)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fronted(azure_fronted_engine):
    return azure_fronted_engine


def test_the_front_reaches_vllm_where_docker_publishes_it_on_loopback(fronted):
    assert fronted.deployed.vllm_address.startswith("127.0.0.1:")
    assert "--host" in fronted.deployed.vllm_args  # inside the container; docker publishes on loopback only
