"""Blocking engine work in a worker thread under a per-request deadline."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import anyio

from server.kit.errors import TimeoutError_

T = TypeVar("T")


class Cancelled(Exception):
    """Raised inside engine work (from its progress callback) once its request got its 504 or went away."""


def stopper(stop: threading.Event) -> Callable[[float], None]:
    """A progress callback that raises ``Cancelled`` once ``stop`` is set (``done_s``, seconds done, is ignored)."""

    def progress(done_s: float) -> None:
        if stop.is_set():
            raise Cancelled()

    return progress


async def run_with_deadline(work: Callable[[threading.Event], T], timeout_s: float) -> T:
    """Run ``work(stop)`` in a worker thread; answer 504 at the deadline without waiting for it.

    ``stop`` is set at the deadline and when the caller is cancelled (the client went away): work that
    checks it (``stopper(stop)`` as an engine's progress callback) ends at its next check instead of
    running to the end in the background.

    Raises:
        TimeoutError_: past ``timeout_s`` seconds (504 with ``Retry-After``).
        Whatever ``work`` raises.
    """
    stop = threading.Event()
    try:
        with anyio.fail_after(timeout_s):
            return await anyio.to_thread.run_sync(work, stop, abandon_on_cancel=True)
    except TimeoutError:
        raise TimeoutError_(f"The request took longer than {timeout_s:g} s.") from None
    finally:
        stop.set()
