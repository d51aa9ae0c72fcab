"""Headless Chromium for the browser tests: Debian's chromium and chromium-driver, driven by selenium.

A missing browser fails the tests with the command that installs it (.ci/run installs both); it never
skips. Flags: the machine's closed network refuses Chromium's background connections, so those are off
(/work/.library/env/machines/python.md), and every browser gets a new, empty profile.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
INSTALL_HINT = "install them with `apt-get install -y chromium chromium-driver` (.ci/run does it)"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1100,900")


class BrowserMissing(RuntimeError):
    pass


@contextmanager
def chromium() -> Iterator:
    """A selenium WebDriver on headless Chromium; quit (and its profile removed) on exit."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).is_file()]
    if missing:
        raise BrowserMissing(f"{' and '.join(missing)} not found: {INSTALL_HINT}")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as err:
        raise BrowserMissing(f"selenium is not installed ({err}): `pip install -e '.[dev]'`") from None
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options.add_argument(f"--user-data-dir={profile}")
    # Browser console messages are kept (read them with driver.get_log("browser")).
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: selenium-manager (which would try to download one) is not run.
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# --- the chat playground (playground/), as a user drives it --------------------------------------------

# Installed in the page before a reply: each change of the newest reply's text, as (ms, state, length),
# seen from inside the browser, so "text arrived while the reply was still streaming" needs no polling.
WATCH_REPLY = """
window.__replyLog = [];
window.__requests = [];
const history = document.getElementById('history');
new MutationObserver(() => {
  const turns = history.querySelectorAll('.turn.assistant');
  const turn = turns[turns.length - 1];
  if (!turn) return;
  const text = turn.querySelector('.content').textContent;
  const log = window.__replyLog;
  const last = log[log.length - 1];
  if (!last || last[1] !== turn.dataset.state || last[2] !== text.length) {
    log.push([performance.now(), turn.dataset.state || '', text.length]);
  }
}).observe(history, {subtree: true, childList: true, characterData: true, attributes: true});
const realFetch = window.fetch;
window.fetch = function (resource, init) {
  const headers = (init && init.headers) || {};
  window.__requests.push({url: String(resource), method: (init && init.method) || 'GET',
                          authorization: headers.Authorization || null, body: (init && init.body) || null});
  return realFetch.apply(this, arguments);
};
"""


class PlaygroundPage:
    def __init__(self, driver, url: str, timeout_s: float = 60):
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver = driver
        self.url = url
        self.wait = WebDriverWait(driver, timeout_s, poll_frequency=0.05)

    def open(self) -> PlaygroundPage:
        self.driver.get(self.url)
        self.wait.until(lambda d: d.find_element("tag name", "body").get_attribute("data-ready") == "true")
        self.driver.execute_script(WATCH_REPLY)
        return self

    def field(self, element_id: str) -> str:
        return self.driver.find_element("id", element_id).get_property("value")

    def set_field(self, element_id: str, value: str) -> None:
        element = self.driver.find_element("id", element_id)
        element.clear()
        element.send_keys(value)

    def text(self, element_id: str) -> str:
        return self.driver.find_element("id", element_id).text

    def turns(self) -> list[dict]:
        return self.driver.execute_script("""
            return [...document.querySelectorAll('#history .turn')].map(t => ({
              role: t.classList.contains('user') ? 'user' : 'assistant',
              state: t.dataset.state || null, unsent: t.classList.contains('unsent'),
              text: t.querySelector('.content').textContent,
              metrics: Object.fromEntries([...t.querySelectorAll('[data-metric]')].map(s => [s.dataset.metric, s.textContent])),
            }));""")

    def send(self, prompt: str) -> None:
        """Type the prompt and press Enter, as a user does."""
        from selenium.webdriver.common.keys import Keys

        self.driver.execute_script("window.__replyLog = [];")
        box = self.driver.find_element("id", "prompt")
        box.send_keys(prompt)
        box.send_keys(Keys.ENTER)

    def wait_idle(self) -> None:
        """Until the request ended (the Send button is back)."""
        self.wait.until(lambda d: d.execute_script(
            "return document.getElementById('send').disabled === false && window.__requests.length > 0"))

    def error(self) -> tuple[str, str] | None:
        if self.driver.find_element("id", "error").get_attribute("hidden") is not None:
            return None
        return self.text("error-status"), self.driver.find_element("id", "error-body").get_property("textContent")

    def reply_log(self) -> list[list]:
        return self.driver.execute_script("return window.__replyLog;")

    def requests(self) -> list[dict]:
        return self.driver.execute_script("return window.__requests;")

    def storage(self) -> dict:
        return self.driver.execute_script(
            "return {local: {...localStorage}, session: {...sessionStorage}, href: location.href,"
            " cookies: document.cookie};")
