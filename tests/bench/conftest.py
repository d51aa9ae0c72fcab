"""Bench fixtures: a mock OpenAI server on 127.0.0.1 in this process (short timings keep tests fast)."""

import faulthandler
import signal

import pytest

from bench.mock_server import MockConfig, MockServer


def pytest_configure(config):
    config.addinivalue_line("markers", "time_limit(seconds): time_limit's bound for this test (default 10 s)")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    try:
        return (yield)
    finally:
        if "time_limit" in item.fixturenames:  # the test body is over: no more SIGALRM while pytest reports
            signal.setitimer(signal.ITIMER_REAL, 0)


@pytest.fixture
def time_limit(request):
    """Fail a test that runs past its bound instead of letting it hang: a scheduler that sleeps or loops for
    ever (a bug, or one of mutation testing's mutants) then costs seconds. SIGALRM fails the test in the main
    thread (again each second until the test body returns, should the failure be swallowed); 10 s later
    faulthandler dumps every thread and exits, for a hang that no exception reaches. Not a timing assertion:
    the bounds are many times the tests' own duration. Not pytest-timeout: its signal method fails once, and
    asyncio's Handle._run catches that exception (any BaseException but SystemExit/KeyboardInterrupt) inside a
    callback, logs it and goes on looping; its thread method ends the whole session."""
    marker = request.node.get_closest_marker("time_limit")
    seconds = marker.args[0] if marker else 10.0

    def expire(_signum, _frame):
        pytest.fail(f"ran past its {seconds:g} s bound (time_limit): something sleeps or loops for ever")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds, 1.0)
    faulthandler.dump_traceback_later(seconds + 10, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


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
