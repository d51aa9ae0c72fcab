"""The front the GKE and Azure stacks put before vLLM (`components/vllm_front.py`), run here by the real Caddy.

The config is the one the stack renders (the GKE ConfigMap's Caddyfile, the Azure VM's /etc/llminfer/Caddyfile),
with only its ports moved to free local ones (`with_ports`): same directives, same matchers, same binary
family (Debian's caddy 2.6.2 here, the caddy:2.10 image in the clouds).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from local._sources import LocalSetupError
from local.engine import tail

APT_HINT = "apt-get install -y caddy"


def caddy_binary() -> str:
    path = os.environ.get("CADDY") or shutil.which("caddy")
    if not path:
        raise LocalSetupError(f"caddy is not installed: {APT_HINT} (.ci/run does it)")
    return path


def with_ports(caddyfile: str, moves: Mapping[str, str]) -> str:
    """`caddyfile` with each listen or upstream address in `moves` ("http://:8080" -> "http://:41234",
    "127.0.0.1:8000" -> "127.0.0.1:39001") replaced as a whole token; one that is not there is an error."""
    text = caddyfile
    for old, new in moves.items():
        pattern = re.compile(rf"(?<![\w.:/]){re.escape(old)}(?![\w.:])")
        text, count = pattern.subn(new, text)
        if not count:
            raise LocalSetupError(f"{old!r} does not occur in the rendered Caddyfile:\n{caddyfile}")
    return text


def wait_listening(port: int, process: subprocess.Popen, log_path: Path, timeout_s: float = 20.0) -> None:
    """Until caddy (`process`) accepts connections on 127.0.0.1:`port`; its log tail if it exits or never does."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LocalSetupError(f"caddy exited with {process.returncode}:\n{tail(log_path)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise LocalSetupError(f"caddy did not listen on {port} within {timeout_s:.0f}s:\n{tail(log_path)}")


class CaddyFront:
    """`with CaddyFront(text, workdir) as front:` runs `caddy run` on that config until the block ends."""

    def __init__(self, caddyfile: str, workdir: Path):
        self.caddyfile, self.workdir = caddyfile, workdir
        self.log_path = workdir / "caddy.log"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> CaddyFront:
        config = self.workdir / "Caddyfile"
        self.workdir.mkdir(parents=True, exist_ok=True)
        config.write_text(self.caddyfile)
        env = {**os.environ, "HOME": str(self.workdir)}
        for name in ("XDG_CONFIG_HOME", "XDG_DATA_HOME"):  # the front keeps its autosave and TLS state there
            (self.workdir / name.lower()).mkdir(exist_ok=True)
            env[name] = str(self.workdir / name.lower())
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen([caddy_binary(), "run", "--config", str(config), "--adapter", "caddyfile"],
                                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        return self

    def wait_listening(self, port: int, timeout_s: float = 20.0) -> None:
        wait_listening(port, self.process, self.log_path, timeout_s)

    def __exit__(self, *exc_info) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
