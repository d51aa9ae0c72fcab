"""Bench fixtures: a mock OpenAI server on 127.0.0.1 in this process (short timings keep tests fast)."""

import pytest

from bench.mock_server import MockConfig, MockServer


@pytest.fixture
def mock_server():
    """mock_server(**MockConfig fields) -> a started MockServer; all are stopped after the test."""
    servers = []

    def start(**kwargs) -> MockServer:
        kwargs.setdefault("ttft_ms", 5)
        kwargs.setdefault("itl_ms", 1)
        server = MockServer(MockConfig(**kwargs))
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
