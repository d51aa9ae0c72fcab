"""The chat playground in a real headless Chromium, against the real gateway app (uvicorn) on the
SageMaker-runtime emulator's scripted endpoints: fast, so every error path is covered here; the same page
on the real vLLM engine is tests/local/test_playground_browser.py.

The page is served by local.playground on its own origin, as on AWS (CloudFront vs API Gateway): every
request crosses origins and so goes through the gateway's CORS, preflight included.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from gateway.settings import Settings
from local.engine import free_port
from local.playground import PlaygroundConfig, PlaygroundServer
from local.sagemaker_runtime import (
    Reply,
    SageMakerRuntimeEmulator,
    Scripted,
    ServiceError,
    StreamFault,
    synthetic_reply,
)
from tests.browser import PlaygroundPage, chromium
from tests.conftest import serve
from tests.gateway.conftest import scripted_lines

MODEL = "test-org/test-model"
KEY = "page-test-key"  # pragma: allowlist secret (test value)
ENDPOINTS = {
    # One content chunk every 30 ms: a reply of 12 tokens streams for about a third of a second.
    "llm": Scripted(lambda body: synthetic_reply(body, model=MODEL, interval=0.03)),
    "throttled": Scripted(Reply(error=ServiceError.throttling())),
    "broken": Scripted(Reply(lines=scripted_lines(), fault=StreamFault("ModelStreamError", "boom", "StreamBroken"),
                             fault_after=3)),
}


class Setup:
    def __init__(self, page_url: str, gateways: dict):
        self.page_url = page_url
        self.gateways = gateways


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    page_port = free_port()
    origin = f"http://127.0.0.1:{page_port}"
    with SageMakerRuntimeEmulator(ENDPOINTS) as emulator:
        gateways = {name: serve(Settings(endpoint_name=name, region="us-east-1", model_id=MODEL, max_model_len=4096,
                                         sagemaker_endpoint_url=emulator.endpoint_url, api_key=KEY,
                                         cors_origins=(origin,)))
                    for name in ENDPOINTS}
        config = PlaygroundConfig(base_url=gateways["llm"].url, api_key=KEY, max_tokens=12)
        try:
            with PlaygroundServer(config, port=page_port) as page:
                yield Setup(page.url, gateways)
        finally:
            for gateway in gateways.values():
                gateway.stop()


@pytest.fixture(scope="module")
def driver():
    with chromium() as browser:
        yield browser


@pytest.fixture
def page(driver, setup) -> PlaygroundPage:
    return PlaygroundPage(driver, setup.page_url).open()


def test_the_page_is_filled_in_from_its_config_and_lists_the_models(page, setup):
    assert page.field("base-url") == setup.gateways["llm"].url
    assert page.field("api-key") == KEY
    assert page.field("max-tokens") == "12"
    assert page.field("model") == MODEL, "the model comes from GET /v1/models"
    assert MODEL in page.text("models-status")
    stored = page.storage()
    assert KEY not in stored["href"] and KEY not in json.dumps(stored["local"]) and not stored["cookies"]
    assert stored["session"]["playground.apiKey"] == KEY, "the key is kept for this tab only"


def test_a_streamed_reply_shows_its_tokens_as_they_come_and_its_figures(page, tmp_path):
    page.send("hello there")
    page.wait_idle()
    turns = page.turns()
    assert [t["role"] for t in turns] == ["user", "assistant"]
    reply = turns[1]
    assert reply["state"] == "done" and reply["text"] == "".join(f"tok{i} " for i in range(12))
    # Seen from inside the browser: text grew at least twice while the reply was still streaming.
    growing = [length for _, state, length in page.reply_log() if state == "streaming" and length > 0]
    assert len(set(growing)) >= 2, page.reply_log()
    assert re.fullmatch(r"TTFT \d+ ms", reply["metrics"]["ttft_ms"])
    assert re.fullmatch(r"\d+\.\d tok/s", reply["metrics"]["tok_s"])
    assert reply["metrics"]["tokens"] == "12 tokens", "the count is usage.completion_tokens"
    assert page.error() is None
    request = [r for r in page.requests() if r["url"].endswith("/chat/completions")][-1]
    body = json.loads(request["body"])
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 12 and body["model"] == MODEL
    assert request["authorization"] == f"Bearer {KEY}"
    page.driver.save_screenshot(str(tmp_path / "playground.png"))


def test_the_conversation_goes_back_with_every_turn(page):
    page.send("first question")
    page.wait_idle()
    page.send("second question")
    page.wait_idle()
    body = json.loads([r for r in page.requests() if r["url"].endswith("/chat/completions")][-1]["body"])
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][0]["content"] == "first question"
    assert body["messages"][1]["content"] == "".join(f"tok{i} " for i in range(12))
    assert body["messages"][2]["content"] == "second question"


@pytest.mark.parametrize(("key", "status", "code"), [("", 401, "missing_api_key"), ("wrong-key", 403, "invalid_api_key")])
def test_a_key_refusal_is_shown_as_the_gateway_gave_it(page, key, status, code):
    page.set_field("api-key", key)
    page.send("hello")
    page.wait_idle()
    title, body = page.error()
    assert f"HTTP {status}" in title and "/chat/completions" in title
    assert json.loads(body)["error"]["code"] == code
    turns = page.turns()
    assert [t["role"] for t in turns] == ["user"] and turns[0]["unsent"], "no reply turn for a refused request"
    assert page.field("prompt") == "hello", "the prompt is given back to retry"


def test_the_gateways_json_error_is_shown_whole(page):
    page.set_field("max-tokens", "5000")  # more than the model's 4096-token context
    page.send("hello")
    page.wait_idle()
    title, body = page.error()
    assert "HTTP 400" in title
    error = json.loads(body)["error"]
    assert "max_tokens=5000 exceeds the model's context of 4096 tokens" in error["message"]


def test_a_throttled_endpoint_shows_the_429(page, setup):
    page.set_field("base-url", setup.gateways["throttled"].url)
    page.send("hello")
    page.wait_idle()
    title, body = page.error()
    assert "HTTP 429" in title
    assert json.loads(body)["error"]["type"] == "rate_limit_error"


def test_an_error_mid_stream_keeps_the_text_and_shows_the_error(page, setup):
    page.set_field("base-url", setup.gateways["broken"].url)
    page.send("hello")
    page.wait_idle()
    reply = page.turns()[-1]
    assert reply["role"] == "assistant" and reply["state"] == "error" and reply["text"] == "Hello,"
    title, body = page.error()
    assert "ended the stream with an error" in title and "boom" in body


def test_an_unreachable_endpoint_says_so(page):
    page.set_field("base-url", f"http://127.0.0.1:{free_port()}/v1")
    page.send("hello")
    page.wait_idle()
    title, body = page.error()
    assert "no reply from" in title and "CORS" in body


def test_a_base_url_with_a_query_is_refused_before_any_request(page):
    page.set_field("base-url", page.field("base-url") + "?key=" + KEY)
    before = len(page.requests())
    page.send("hello")
    page.wait.until(lambda d: page.error() is not None)
    assert "must not have a query" in page.error()[1]
    assert len(page.requests()) == before


def test_the_page_server_serves_only_the_page_to_its_own_host(setup):
    import httpx

    assert httpx.get(setup.page_url + "config.json").json()["apiKey"] == KEY
    assert httpx.get(setup.page_url + "config.json").headers["cache-control"] == "no-store"
    assert "access-control-allow-origin" not in httpx.get(setup.page_url + "config.json").headers
    assert httpx.get(setup.page_url + "../pyproject.toml").status_code == 404
    assert httpx.get(setup.page_url + "playground.js").headers["content-type"].startswith("text/javascript")
    rebound = httpx.get(setup.page_url + "config.json", headers={"Host": "evil.example:80"})
    assert rebound.status_code == 421 and KEY not in rebound.text


def test_a_missing_browser_fails_with_the_install_command(monkeypatch, tmp_path):
    import tests.browser as browser

    monkeypatch.setattr(browser, "CHROMIUM", str(tmp_path / "no-chromium"))
    with pytest.raises(browser.BrowserMissing, match=r"apt-get install -y chromium chromium-driver"):
        with browser.chromium():
            pass
