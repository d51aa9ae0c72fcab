"""Fixtures of the gateway tests: the SageMaker-runtime emulator and the gateway app under a real
uvicorn server on 127.0.0.1 (a free port), talking to each other through the real botocore client."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn

from gateway.app import create_app
from gateway.settings import Settings
from local.sagemaker_runtime import (
    Reply,
    SageMakerRuntimeEmulator,
    Scripted,
    ServiceError,
    StreamFault,
    chunk,
    synthetic_reply,
    usage_chunk,
)

MODEL = "test-org/test-model"

# Content chunks the "scripted" endpoint replays, in order.
SCRIPTED_TEXT = ["Hello", ",", " world", "!"]


def scripted_lines(finish: bool = True, usage: bool = True) -> list[dict[str, Any]]:
    lines = [chunk("", role="assistant", model=MODEL)] + [chunk(text, model=MODEL) for text in SCRIPTED_TEXT]
    if finish:
        lines.append(chunk(None, finish_reason="stop", model=MODEL))
    if usage:
        lines.append(usage_chunk(7, len(SCRIPTED_TEXT), model=MODEL))
    return lines


def _synthetic(**timing: Any) -> Scripted:
    return Scripted(lambda body: synthetic_reply(body, model=MODEL, **timing))


ENDPOINTS = {
    "llm": _synthetic(interval=0.001),
    "scripted": Scripted(Reply(lines=scripted_lines())),
    "split": Scripted(Reply(lines=scripted_lines(), part_size=5)),
    "slow-first-byte": _synthetic(first_byte_delay=0.4),
    "broken": Scripted(Reply(lines=scripted_lines(), fault=StreamFault("ModelStreamError", "boom", "StreamBroken"),
                             fault_after=3)),
    "internal": Scripted(Reply(lines=scripted_lines(), fault=StreamFault("InternalStreamFailure"), fault_after=2)),
    "truncated": Scripted(Reply(lines=scripted_lines(finish=False, usage=False))),
    "throttled": Scripted(Reply(error=ServiceError.throttling())),
    "not-ready": Scripted(Reply(error=ServiceError.model_not_ready())),
    "unavailable": Scripted(Reply(error=ServiceError.service_unavailable())),
    "rejects": Scripted(Reply(error=ServiceError.model_error(
        400, '{"error": {"message": "This model\'s maximum context length is 8192 tokens", "code": 400}}'))),
    "long": _synthetic(interval=0.02),
    "stalls": _synthetic(first_byte_delay=30),
}


@pytest.fixture(scope="session", autouse=True)
def dummy_aws_credentials() -> Iterator[None]:
    # The app builds its botocore client from the environment, as on Lambda; never real credentials here.
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                                            "AWS_EC2_METADATA_DISABLED", "AWS_PROFILE")}
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_EC2_METADATA_DISABLED": "true"})
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.pop("AWS_PROFILE", None)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def emulator() -> Iterator[SageMakerRuntimeEmulator]:
    with SageMakerRuntimeEmulator(ENDPOINTS) as running:
        yield running


@dataclass
class RunningGateway:
    url: str  # the OpenAI base URL, ending in /v1
    settings: Settings
    records: list[dict[str, Any]] = field(default_factory=list)
    server: uvicorn.Server | None = None
    thread: threading.Thread | None = None

    @property
    def root(self) -> str:
        return self.url.removesuffix("/v1")

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
            self.thread.join(timeout=10)


def serve(settings: Settings) -> RunningGateway:
    records: list[dict[str, Any]] = []
    app = create_app(settings, emit=records.append)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return RunningGateway(f"http://127.0.0.1:{port}/v1", settings, records, server, thread)


def settings_for(emulator: SageMakerRuntimeEmulator, endpoint: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        endpoint_name=endpoint,
        region="us-east-1",
        model_id=MODEL,
        max_model_len=8192,
        price_per_hour=1.515,
        sagemaker_endpoint_url=emulator.endpoint_url,
        read_timeout_seconds=60,
    )
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
def gateways(emulator) -> Iterator[Any]:
    """`gateways(endpoint, **settings)`: a running gateway in front of that emulator endpoint (cached)."""
    running: dict[tuple, RunningGateway] = {}

    def get(endpoint: str, **overrides: Any) -> RunningGateway:
        key = (endpoint, tuple(sorted(overrides.items())))
        if key not in running:
            running[key] = serve(settings_for(emulator, endpoint, **overrides))
        gateway = running[key]
        gateway.records.clear()
        return gateway

    yield get
    for gateway in running.values():  # all at once: each takes a poll interval to notice
        gateway.server.should_exit = True
    for gateway in running.values():
        gateway.stop()
