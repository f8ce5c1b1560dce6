"""SIGUSR2 writes every thread's stack to stderr: what to ask of a process that seems stuck.

faulthandler's C handler answers even when every Python thread is stuck, and the
process goes on. Used by the daemons for their whole run and by `agentctl watch`.
"""

from __future__ import annotations

import faulthandler
import signal
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def stack_dumps_on_usr2() -> Iterator[str | None]:
    """While inside, SIGUSR2 dumps every thread's stack to stderr. Yields None, or why
    it could not be set up (no usable stderr): the caller goes on without."""
    try:
        faulthandler.register(signal.SIGUSR2, all_threads=True)
    except (AttributeError, OSError, RuntimeError, ValueError) as err:
        yield str(err)
        return
    try:
        yield None
    finally:
        faulthandler.unregister(signal.SIGUSR2)
