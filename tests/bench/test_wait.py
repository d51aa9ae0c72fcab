"""`python -m bench wait`: against the real mock server, not ready (nothing listening, 5xx, a wrong key) and ready."""

from __future__ import annotations

import bench
from bench.mock_server import MockConfig, MockServer
from bench.wait import wait_ready
from local.engine import free_port


class FakeClock:
    """Time that moves only when the wait sleeps: no timed assertions, no real waiting."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_waits_through_connection_refused_until_the_server_comes_up():
    port = free_port()
    clock, said, servers = FakeClock(), [], []

    def say(line: str) -> None:
        said.append(line)
        if len(said) == 1:  # the first "not ready": the engine now starts, as vLLM does after its first boot
            server = MockServer(MockConfig(ttft_ms=1, itl_ms=1, api_key="k"), port=port)
            server.start()
            servers.append(server)

    try:
        code = wait_ready(f"http://127.0.0.1:{port}/v1", {"Authorization": "Bearer k"}, interval_s=10,
                          say=say, clock=clock, sleep=clock.sleep)
    finally:
        for server in servers:
            server.stop()
    assert code == 0
    assert said[0].startswith("not ready after 0 s: GET /models: ConnectError")
    assert said[1].startswith("ready after 10 s (2 attempts): model mock-model, first token in ")


def test_a_server_error_is_not_ready_and_the_wait_gives_up_at_the_timeout(mock_server):
    server = mock_server(faults={"http_503": 1.0})
    clock, said = FakeClock(), []
    code = wait_ready(server.url, {}, timeout_s=35, interval_s=10, say=said.append, clock=clock, sleep=clock.sleep)
    assert code == 1
    # One line per change of story, then the verdict with the last reason.
    assert said == [
        "not ready after 0 s: HTTP 503 from POST /chat/completions",
        "not ready within 35 s (4 attempts); last: HTTP 503 from POST /chat/completions. "
        "See the cloud's troubleshooting section (docs/azure.md, docs/gcp.md, docs/gateway.md)",
    ]


def test_a_stream_that_errors_or_sends_no_token_is_not_ready(mock_server):
    for fault, why in (("stream_error", "POST /chat/completions streamed an error: {'message': 'mock failure"),
                       ("stream_cut", "POST /chat/completions: RemoteProtocolError")):
        server = mock_server(faults={fault: 1.0})
        clock, said = FakeClock(), []
        assert wait_ready(server.url, {}, timeout_s=5, interval_s=10, say=said.append, clock=clock,
                          sleep=clock.sleep) == 1
        assert said[0].startswith(f"not ready after 0 s: {why}"), said


def test_a_wrong_key_is_refused_once_it_outlasts_the_grace(mock_server):
    server = mock_server(api_key="right")
    clock, said = FakeClock(), []
    code = wait_ready(server.url, {"Authorization": "Bearer wrong"}, timeout_s=3600, interval_s=10, auth_grace_s=30,
                      say=said.append, clock=clock, sleep=clock.sleep)
    assert code == 1
    assert clock.now == 30  # refused at the first attempt past the grace, long before the timeout
    assert said[-1].startswith("the endpoint answers but refuses the key (HTTP 401 from POST /chat/completions, for 30 s)")
    assert "--stack STACK" in said[-1]


def test_the_cli_waits_with_the_key_and_exits_0(mock_server, capsys):
    server = mock_server(api_key="k")
    assert bench.run(["wait", server.url, "--api-key", "k", "--interval", "1s", "--timeout", "1m"]) == 0
    out = capsys.readouterr().out
    assert f"waiting for {server.url}" in out and "ready after 0 s (1 attempt): model mock-model" in out


def test_the_cli_refuses_bad_arguments_with_exit_2(capsys):
    assert bench.run(["wait"]) == 2
    assert "no URL: give the endpoint's base URL" in capsys.readouterr().err
    assert bench.run(["wait", "http://127.0.0.1:9/v1", "--interval", "soon"]) == 2
    assert "--interval 'soon': expected a positive duration" in capsys.readouterr().err
