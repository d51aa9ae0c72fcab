"""GKE on the real engine: vLLM started from the gcp stack's rendered vLLM container (command, args, env),
behind the front the pod runs (the real Caddy with the ConfigMap's Caddyfile); and what the HPA, the
Managed Prometheus scraper and the kubelet rely on, on the real server."""

from __future__ import annotations

import re
import socket
import subprocess
import sys

import httpx
import pytest

from tests.local.fronted_cases import *  # noqa: F403 (the cases GKE and Azure share)
from tests.local.fronted_cases import CHAT

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fronted(gke_fronted_engine):
    return gke_fronted_engine


def test_the_metrics_the_hpa_scales_on_exist_on_the_real_server(gke_fronted_engine, gcp_graph):
    hpa = gcp_graph.one("kubernetes:autoscaling/v2:HorizontalPodAutoscaler")
    wanted = {m["pods"]["metric"]["name"].split("|")[1] for m in hpa.inputs["spec"]["metrics"] if m["type"] == "Pods"}
    assert wanted, hpa.inputs["spec"]["metrics"]
    # Through the front's metrics listener, the port the PodMonitoring scrapes.
    monitor = gcp_graph.one("kubernetes:monitoring.googleapis.com/v1:PodMonitoring")
    (endpoint,) = monitor.inputs["spec"]["endpoints"]
    text = httpx.get(gke_fronted_engine.metrics_url + endpoint["path"], timeout=30).text
    exposed = set(re.findall(r"^(vllm:[a-z_:]+?)(?:_total|_created)?[{ ]", text, flags=re.M))
    exposed |= set(re.findall(r"^(vllm:[a-z_:]+)[{ ]", text, flags=re.M))
    assert wanted <= exposed, (wanted - exposed, sorted(exposed))
    keep = endpoint["metricRelabeling"][0]["regex"]
    assert all(re.fullmatch(keep, name) for name in wanted)
    # Nothing else on that listener.
    assert httpx.post(gke_fronted_engine.metrics_url + "/invocations", json=CHAT, timeout=10).status_code == 404


def test_every_probe_the_pod_declares_answers(gke_fronted_engine):
    moves = gke_fronted_engine.port_moves
    front_port = int(gke_fronted_engine.front_url.rsplit(":", 1)[1])
    for name, probe in gke_fronted_engine.deployed.probes.items():
        if "exec" in probe:
            command = [moves.get(part, part) for part in probe["exec"]["command"]]
            command = [_moved(part, moves) for part in command]
            assert command[0] == "python3", command
            done = subprocess.run([sys.executable, *command[1:]], capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, (name, command, done.stderr)
        elif "httpGet" in probe:
            assert probe["httpGet"]["port"] == "http", probe  # the front's named port
            assert httpx.get(f"http://127.0.0.1:{front_port}{probe['httpGet']['path']}", timeout=10).status_code == 200, name
        else:
            assert probe["tcpSocket"]["port"] == "http", probe
            socket.create_connection(("127.0.0.1", front_port), timeout=5).close()


def _moved(text: str, moves: dict[str, str]) -> str:
    for old, new in moves.items():
        text = text.replace(old, new)
    return text
