"""Fixtures of the gateway tests: the SageMaker-runtime emulator and the gateway app under a real
uvicorn server on 127.0.0.1 (a free port), talking to each other through the real botocore client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

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
from tests.conftest import RunningGateway, serve  # noqa: F401 (the gateway tests' names for them)

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


@pytest.fixture(scope="session")
def emulator() -> Iterator[SageMakerRuntimeEmulator]:
    with SageMakerRuntimeEmulator(ENDPOINTS) as running:
        yield running


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
