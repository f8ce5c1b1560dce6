"""Per-key serial execution: work for one key (a port, an instance) runs in order of
arrival, one at a time; work for different keys runs in parallel on a small pool.

Shutdown refuses new work and lets queued work finish within a bound; what has not
started by then is abandoned, not run late: an agent's journal still holds it and the
next start replays it. Pure concurrency plumbing: it knows nothing about ports,
instances, netlink or the broker.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor

import structlog

log = structlog.get_logger()

Task = Callable[[], object]


class KeyedSerialExecutor:
    def __init__(self, workers: int, name: str = "worker") -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._lock = threading.Lock()
        self._queues: dict[Hashable, deque[Task]] = {}
        self._idle = threading.Condition(self._lock)
        self._pending = 0
        self._closed = False
        self._abandon = False
        self.abandoned = 0

    def submit(self, key: Hashable, task: Task) -> None:
        """Queue `task` behind earlier tasks of the same key."""
        with self._lock:
            if self._closed:
                raise RuntimeError("executor is closed")
            self._pending += 1
            queue = self._queues.get(key)
            if queue is not None:  # a runner for this key is active and will take it
                queue.append(task)
                return
            self._queues[key] = deque([task])
        self._pool.submit(self._drain, key)

    def _drain(self, key: Hashable) -> None:
        while True:
            with self._lock:
                queue = self._queues[key]
                if self._abandon and queue:
                    self.abandoned += len(queue)
                    self._pending -= len(queue)
                    queue.clear()
                    if self._pending == 0:
                        self._idle.notify_all()
                if not queue:
                    del self._queues[key]
                    return
                task = queue.popleft()
            try:
                task()
            except Exception:  # tasks report their own errors; this guards the runner
                log.exception("task_failed", key=str(key))
            finally:
                with self._lock:
                    self._pending -= 1
                    if self._pending == 0:
                        self._idle.notify_all()

    @property
    def pending(self) -> int:
        with self._lock:
            return self._pending

    def drain(self, timeout: float) -> bool:
        """Wait until every queued task has run; False if `timeout` passed first."""
        with self._lock:
            return self._idle.wait_for(lambda: self._pending == 0, timeout=timeout)

    def shutdown(self, timeout: float) -> bool:
        """Refuse new work, finish what is queued within `timeout`, stop the threads.

        False when work was left: tasks already running are let finish (the pool is
        waited for), tasks not started are abandoned (counted in `abandoned`).
        """
        with self._lock:
            self._closed = True
        done = self.drain(timeout)
        if not done:
            with self._lock:
                self._abandon = True
                for queue in self._queues.values():
                    self.abandoned += len(queue)
                    self._pending -= len(queue)
                    queue.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
        return done
