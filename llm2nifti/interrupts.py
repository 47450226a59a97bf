"""Ctrl-C and SIGTERM that never land inside a lock another thread needs.

Python raises ``KeyboardInterrupt`` at whatever bytecode the main thread is
running. Inside ``concurrent.futures`` (``submit``, ``Future.result``,
``add_done_callback``, executor shutdown) that can leave a lock held that a
worker thread then waits for forever. :func:`handle_signals` makes SIGINT and
SIGTERM raise :class:`Interrupted` as usual *except* inside a :func:`deferred`
block, where the signal is held and raised when the block ends. A second
signal while one is held exits at once (status 128 + signal): every file is
written under a temporary name, so nothing half-written is left under a
final name, and ``--resume`` goes on from the finished runs.

Signal handlers can only be set in the main thread; elsewhere both context
managers do nothing and Python's default behaviour stays.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

__all__ = ["Interrupted", "handle_signals", "deferred", "check", "exit_status"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_state = {"depth": 0, "pending": None}


class Interrupted(KeyboardInterrupt):
    """Raised for SIGINT or SIGTERM; ``signum`` says which."""

    def __init__(self, signum=signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


def exit_status(exc):
    """Conventional exit status of an interrupted process: 128 + the signal number."""
    return 128 + getattr(exc, "signum", int(signal.SIGINT))


def _handler(signum, frame):
    if _state["depth"] == 0:
        raise Interrupted(signum)
    if _state["pending"] is not None:  # a second signal while the first is held: leave now
        sys.stderr.write("Interrupted again: exiting now; --resume goes on from the finished runs.\n")
        sys.stderr.flush()
        os._exit(128 + int(signum))
    _state["pending"] = signum


def _in_main_thread():
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def handle_signals():
    """Within the block, SIGINT and SIGTERM raise :class:`Interrupted` outside :func:`deferred`."""
    if not _in_main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in _SIGNALS}
    for s in _SIGNALS:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def deferred():
    """Hold SIGINT/SIGTERM until the block ends; then raise :class:`Interrupted`.

    If the block itself raises, that exception propagates and a held signal
    is raised by the next :func:`deferred` block or :func:`check`.
    """
    if not _in_main_thread():
        yield
        return
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
    check()


def check():
    """Raise :class:`Interrupted` if a signal is held and no :func:`deferred` block is open."""
    signum = _state["pending"]
    if signum is not None and _state["depth"] == 0:
        _state["pending"] = None
        raise Interrupted(signum)

