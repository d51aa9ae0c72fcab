"""The vLLM front with the playground (`page_dir`, demoUi on GKE and Azure), a real Caddy in front of an
OpenAI-compatible server: the page on the API's own origin, so the browser needs no CORS at all.

The upstream is the gateway app (uvicorn) on the SageMaker-runtime emulator, standing in for vLLM: it
streams chat completions and checks the key itself, as vLLM's --api-key does behind the front. Run in a
real headless Chromium (tests/browser.py); a missing caddy or chromium fails, never skips.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.vllm_front import PAGE_CONFIG_BODY, PAGE_CONTENT_SECURITY_POLICY, REFUSED_STATUS, caddyfile
from gateway.settings import Settings
from local.front import caddy_binary, wait_listening
from local.sagemaker_runtime import SageMakerRuntimeEmulator, Scripted, synthetic_reply
from tests.browser import PlaygroundPage, chromium
from tests.components.test_vllm_front import free_port, request
from tests.conftest import serve

KEY = "front-page-key"  # pragma: allowlist secret (test value)
MODEL = "org/model"
PLAYGROUND = Path(__file__).resolve().parents[2] / "playground"


@dataclass
class PageFront:
    port: int
    url: str
    page_dir: Path


@pytest.fixture(scope="module")
def page_front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PageFront]:
    root = tmp_path_factory.mktemp("page-front")
    page_dir = root / "playground"
    shutil.copytree(PLAYGROUND, page_dir)
    (page_dir / "notes.txt").write_text("not part of the page")  # in the folder, yet never served
    endpoints = {"llm": Scripted(lambda body: synthetic_reply(body, model=MODEL, interval=0.03))}
    with SageMakerRuntimeEmulator(endpoints) as emulator:
        gateway = serve(Settings(endpoint_name="llm", region="us-east-1", model_id=MODEL,
                                 sagemaker_endpoint_url=emulator.endpoint_url, api_key=KEY))
        upstream = gateway.root.removeprefix("http://")
        port = free_port()
        config = root / "Caddyfile"
        config.write_text(caddyfile(f"127.0.0.1:{port}", upstream, page_dir=str(page_dir)))
        env = {**os.environ, "XDG_CONFIG_HOME": str(root), "XDG_DATA_HOME": str(root), "HOME": str(root)}
        log = root / "caddy.log"
        with log.open("wb") as out:
            process = subprocess.Popen([caddy_binary(), "run", "--config", str(config), "--adapter", "caddyfile"],
                                       stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            wait_listening(port, process, log)
            yield PageFront(port, f"http://127.0.0.1:{port}/", page_dir)
        finally:
            process.terminate()
            process.wait(timeout=10)
            gateway.stop()


@pytest.mark.parametrize("path", ["/", "/index.html", "/playground.js", "/playground.css"])
def test_the_page_files_are_served_with_the_security_headers(page_front, path):
    status, body, headers = request(page_front.port, "GET", path)
    name = "index.html" if path == "/" else path[1:]
    assert status == 200 and body == (page_front.page_dir / name).read_bytes()
    assert headers["content-security-policy"] == PAGE_CONTENT_SECURITY_POLICY
    assert "connect-src 'self';" in PAGE_CONTENT_SECURITY_POLICY, "the page may call only this origin"
    assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    assert "access-control-allow-origin" not in headers


def test_the_config_names_this_origins_v1(page_front):
    status, body, headers = request(page_front.port, "GET", "/config.json")
    assert status == 200 and json.loads(body) == json.loads(PAGE_CONFIG_BODY) == {"baseUrl": "/v1"}
    assert headers["content-type"] == "application/json"


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/notes.txt"), ("GET", "/INDEX.HTML"), ("GET", "/%69ndex.html"), ("GET", "/./index.html"),
    ("GET", "//index.html"), ("POST", "/"), ("POST", "/config.json"), ("GET", "/playground"),
    ("GET", "/Caddyfile"), ("GET", "/../Caddyfile"), ("OPTIONS", "/v1/chat/completions"),
])
def test_nothing_else_is_served(page_front, method, path):
    assert request(page_front.port, method, path, b"" if method == "POST" else None)[0] == REFUSED_STATUS


def test_without_page_dir_the_front_serves_no_page():
    assert "file_server" not in caddyfile(":8080", "127.0.0.1:8000")
    assert "file_server" in caddyfile(":8080", "127.0.0.1:8000", page_dir="/srv/playground")


@pytest.mark.parametrize("page_dir", ["srv/playground", "/srv/play ground", "/srv/{x}", "/srv/`x`"])
def test_a_page_dir_that_is_not_a_plain_absolute_path_is_refused(page_dir):
    with pytest.raises(ValueError, match="page_dir .* is not an absolute path"):
        caddyfile(":8080", "127.0.0.1:8000", page_dir=page_dir)


def test_the_page_streams_a_reply_through_the_front_on_its_own_origin(page_front, tmp_path):
    with chromium() as driver:
        page = PlaygroundPage(driver, page_front.url).open()
        assert page.field("base-url") == page_front.url + "v1", "the relative /v1 resolved on this origin"
        assert page.field("api-key") == "", "the front never hands out the key"
        assert "HTTP 401" in page.error()[0], "GET /models without the key: the engine's refusal, shown"
        page.set_field("api-key", KEY)
        driver.find_element("id", "load-models").click()
        page.wait.until(lambda d: MODEL in page.text("models-status"))
        page.set_field("max-tokens", "10")
        page.send("hello")
        page.wait_idle()
        reply = page.turns()[-1]
        assert reply["state"] == "done" and reply["text"] == "".join(f"tok{i} " for i in range(10))
        growing = [length for _, state, length in page.reply_log() if state == "streaming" and length > 0]
        assert len(set(growing)) >= 2, "streamed through Caddy, not buffered"
        assert re.fullmatch(r"TTFT \d+ ms", reply["metrics"]["ttft_ms"]) and reply["metrics"]["tokens"] == "10 tokens"
        assert all(r["url"].startswith(page_front.url) for r in page.requests()), "same origin only"
        driver.save_screenshot(str(tmp_path / "playground-front.png"))


# --- demoUi on GKE and Azure: the stacks ship the page to their front ------------------------------------


def _page_texts() -> dict[str, str]:
    return {name: (PLAYGROUND / name).read_text() for name in ("index.html", "playground.js", "playground.css")}


def test_gke_ships_the_page_in_the_fronts_config_map_only_with_demo_ui(tmp_path):
    from components.vllm_kubernetes import FRONT_CONFIG_DIR
    from tests.components.test_vllm_front import adapt
    from tests.pulumi_harness import run_stack

    def front(run):
        config_map = next(r for r in run.of_type("kubernetes:core/v1:ConfigMap") if "Caddyfile" in r.inputs["data"])
        deployment = next(r for r in run.of_type("kubernetes:apps/v1:Deployment") if r.name == "vllm-deployment")
        return config_map.inputs["data"], deployment.inputs["spec"]["template"]["metadata"]["annotations"]

    off, off_annotations = front(run_stack("gcp"))
    on, on_annotations = front(run_stack("gcp", {"demoUi": True}))
    assert set(off) == {"Caddyfile"} and "file_server" not in off["Caddyfile"]
    assert {k: v for k, v in on.items() if k != "Caddyfile"} == _page_texts()
    assert f"root * {FRONT_CONFIG_DIR}" in on["Caddyfile"], "served from the ConfigMap's mount"
    assert on_annotations["llminfer/front-config"] != off_annotations["llminfer/front-config"], "the pods roll"
    routes = json.dumps(adapt(on["Caddyfile"], tmp_path))
    assert '"handler": "file_server"' in routes and "playground" in routes


def test_azure_writes_the_page_and_mounts_it_into_caddy_only_with_demo_ui():
    import base64

    import yaml

    from components.azure_cloud_init import CADDYFILE, CUSTOM_DATA_LIMIT, FRONT_PAGE_DIR, PAGE_DIR
    from tests.pulumi_harness import run_stack
    from tests.ssh_keys import ed25519_public_key

    def cloud_init(overrides):
        run = run_stack("azure", {"sshPublicKey": ed25519_public_key(), **overrides})
        encoded = run.one("azure-native:compute:VirtualMachine").inputs["osProfile"]["customData"]
        assert len(encoded) <= CUSTOM_DATA_LIMIT
        return {f["path"]: f["content"] for f in yaml.safe_load(base64.b64decode(encoded))["write_files"]}

    off, on = cloud_init({}), cloud_init({"demoUi": True})
    assert not [p for p in off if p.startswith(PAGE_DIR)] and "file_server" not in off[CADDYFILE]
    assert {p.removeprefix(PAGE_DIR + "/"): c for p, c in on.items() if p.startswith(PAGE_DIR)} == _page_texts()
    assert f"root * {FRONT_PAGE_DIR}" in on[CADDYFILE]
    unit = on["/etc/systemd/system/caddy.service"]
    assert f"-v {PAGE_DIR}:{FRONT_PAGE_DIR}:ro" in unit
    assert f"-v {PAGE_DIR}" not in off["/etc/systemd/system/caddy.service"]
