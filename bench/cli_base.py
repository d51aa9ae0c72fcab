"""What every `python -m bench` subcommand shares: the argument parser's error style and Ctrl-C handling.

A module of its own so that `compare`, `mock-server` and the load tester's CLI import it without
importing each other.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading

USAGE_EXIT = 2


class ArgParser(argparse.ArgumentParser):
    """argparse that reports a bad argument on one line and exits 2."""

    def error(self, message: str):
        self.exit(USAGE_EXIT, f"{self.prog}: error: {message} (see --help)\n")


@contextlib.contextmanager
def interruptible():
    """Ctrl-C (SIGINT) and SIGTERM stop the run and keep its partial results.

    A process started in the background by a non-interactive shell (nohup, CI, `cmd &`) inherits SIGINT
    ignored, and Python then leaves it ignored: set it explicitly. SIGTERM (kill, timeout, a
    supervisor) takes the same path instead of killing the run before it writes anything.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # bench.run from a thread: signals are the caller's business
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _raise_interrupt(*_: object) -> None:
    raise KeyboardInterrupt
