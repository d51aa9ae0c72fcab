"""`python -m local.demo --serve` in a real headless Chromium, on the real vLLM engine (CPU build).

The demo's own serve path runs here (local.demo.serve_playground: vLLM started from the aws stack's Model
environment, the emulator, the gateway as a process of its own with GATEWAY_CORS_ORIGINS for the page, and
the page server); one engine for the module, as the other tests/local modules. A user's steps: the page
opens filled in, a typed prompt streams back (text seen growing while the reply still streams), TTFT,
tokens/s and the usage count are shown; without the key the gateway's 401 is shown, with a wrong one its
403. A screenshot goes to the test's tmp_path and to /tmp/helpers/g-screenshot.png when that folder exists.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from local.demo import DemoOptions, serve_playground
from tests.browser import PlaygroundPage, chromium
from tests.local.conftest import LOGS

pytestmark = pytest.mark.e2e
MAX_TOKENS = 24
LEAD_COPY = Path("/tmp/helpers")


class Served:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.failure: BaseException | None = None

    def say(self, line: str) -> None:
        self.lines.append(str(line))
        if str(line).startswith("playground http://"):
            self.ready.set()

    @property
    def url(self) -> str:
        return next(line.split()[1] for line in self.lines if line.startswith("playground http://"))

    @property
    def key(self) -> str:
        return next(line.rsplit(" ", 1)[1] for line in self.lines if line.startswith("API key for other clients: "))


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    served = Served()

    def run() -> None:
        try:
            serve_playground(DemoOptions(out=LOGS / "playground-demo", max_tokens=MAX_TOKENS), say=served.say,
                             wait=served.stop.wait)
        except BaseException as err:  # reported by the fixture below
            served.failure = err
        finally:
            served.ready.set()

    thread = threading.Thread(target=run, name="demo-serve", daemon=True)
    thread.start()
    served.ready.wait(DemoOptions.vllm_ready_timeout_s + 120)
    if served.failure is not None or not any(line.startswith("playground") for line in served.lines):
        served.stop.set()
        raise AssertionError(f"--serve did not come up: {served.failure!r}\n" + "\n".join(served.lines))
    yield served
    served.stop.set()
    thread.join(60)
    assert not thread.is_alive(), "--serve did not stop vLLM, the emulator and the gateway"


@pytest.fixture(scope="module")
def driver():
    with chromium() as browser:
        yield browser


def test_a_prompt_streams_back_from_vllm_with_its_figures(served, driver, tmp_path):
    page = PlaygroundPage(driver, served.url, timeout_s=300).open()
    gateway_url = page.field("base-url")
    assert gateway_url.startswith("http://127.0.0.1:") and gateway_url.endswith("/v1")
    assert page.field("api-key") == served.key and served.key not in driver.current_url
    assert page.field("max-tokens") == str(MAX_TOKENS)
    assert page.field("model") and page.field("model") in page.text("models-status"), "filled from GET /v1/models"

    page.send("Say hello to the playground.")
    page.wait_idle()
    assert page.error() is None, page.error()
    user, reply = page.turns()
    assert user["text"] == "Say hello to the playground." and reply["state"] == "done"
    # Seen from inside the browser: the text grew at least twice while the reply was still streaming.
    growing = [length for _, state, length in page.reply_log() if state == "streaming" and length > 0]
    assert len(set(growing)) >= 2, page.reply_log()
    assert len(reply["text"]) >= growing[-1], "the finished reply holds all that streamed"
    assert re.fullmatch(r"TTFT \d+ ms", reply["metrics"]["ttft_ms"]), reply["metrics"]
    assert re.fullmatch(r"\d+\.\d tok/s", reply["metrics"]["tok_s"]), reply["metrics"]
    tokens = int(re.fullmatch(r"(\d+) tokens", reply["metrics"]["tokens"])[1])
    assert 2 <= tokens <= MAX_TOKENS, "vLLM's usage.completion_tokens, within max_tokens"

    page.send("And once more.")
    page.wait_idle()
    body = json.loads([r for r in page.requests() if r["url"].endswith("/chat/completions")][-1]["body"])
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][1]["content"] == reply["text"]

    shot = tmp_path / "playground-vllm.png"
    driver.save_screenshot(str(shot))
    if LEAD_COPY.is_dir():
        shutil.copy(shot, LEAD_COPY / "g-screenshot.png")


@pytest.mark.parametrize(("key", "status", "code"), [("", 401, "missing_api_key"), ("not-the-key", 403, "invalid_api_key")])
def test_without_the_right_key_the_gateways_refusal_is_shown(served, driver, tmp_path, key, status, code):
    page = PlaygroundPage(driver, served.url, timeout_s=120).open()
    page.set_field("api-key", key)
    page.send("hello")
    page.wait_idle()
    title, body = page.error()
    assert f"HTTP {status}" in title, title
    assert json.loads(body)["error"]["code"] == code
    assert [t["role"] for t in page.turns()] == ["user"]
    driver.save_screenshot(str(tmp_path / f"playground-{status}.png"))
    if LEAD_COPY.is_dir() and status == 401:
        shutil.copy(tmp_path / f"playground-{status}.png", LEAD_COPY / "g-screenshot-401.png")
