"""Per-key serial execution: work for one port runs in order of arrival, one at a time;
work for different ports runs in parallel on a small thread pool.

Pure concurrency plumbing: it knows nothing about ports, netlink or the broker.
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
    def __init__(self, workers: int, name: str = "l2-worker") -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._lock = threading.Lock()
        self._queues: dict[Hashable, deque[Task]] = {}
        self._idle = threading.Condition(self._lock)
        self._pending = 0
        self._closed = False

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
        """Refuse new work, finish what is queued (within `timeout`), stop the threads."""
        with self._lock:
            self._closed = True
        done = self.drain(timeout)
        self._pool.shutdown(wait=done, cancel_futures=not done)
        return done
