"""The one start-up order and stop sequence of every agent (common.agent.AgentLifecycle)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

import pytest
from structlog.testing import capture_logs

from common.agent import AgentLifecycle, ping_reply
from common.messages import DesiredState


class Recorder:
    """An agent's parts and its RPC server, which only say they were called."""

    def __init__(self, fail_at: str | None = None) -> None:
        self.calls: list[str] = []
        self.fail_at = fail_at
        self.beats = threading.Event()
        self.applied = threading.Event()

    def _call(self, step: str) -> None:
        self.calls.append(step)
        if step == self.fail_at:
            raise RuntimeError(f"{step} failed")

    # AgentParts
    def prepare(self) -> None:
        self._call("prepare")

    def reconcile(self) -> object:
        self._call("reconcile")
        return {}

    def replay(self) -> int:
        self._call("replay")
        return 0

    def start_listeners(self) -> None:
        self._call("start_listeners")

    def rpc_server(self) -> Recorder:
        self._call("rpc_server")
        return self

    def heartbeat(self) -> None:
        self.beats.set()

    def apply_desired(self, desired: DesiredState) -> Mapping[str, int]:
        self.applied.set()
        return {"ports_added": len(desired.ports)}

    def drain(self, grace: float) -> None:
        self._call(f"drain {grace}")

    def stop_listeners(self) -> None:
        self._call("stop_listeners")

    def close(self) -> None:
        self._call("close")

    # Server
    def start(self) -> None:
        self._call("server start")

    def stop(self) -> None:
        self._call("server stop")

    def wait(self) -> None:
        self._call("server wait")


class Metrics:
    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder

    def serve(self, listen: str) -> int | None:
        self._recorder.calls.append(f"serve {listen}")
        return 9999

    def close(self) -> None:
        self._recorder.calls.append("metrics close")


def lifecycle(
    parts: Recorder,
    *,
    listen: str | None = "127.0.0.1:0",
    ask_desired: Callable[[], DesiredState] | None = None,
) -> AgentLifecycle:
    return AgentLifecycle(
        parts,
        kind="l2",
        host="node1",
        version="1.0",
        heartbeat_interval=60,
        metrics=Metrics(parts),
        metrics_listen=listen,
        ask_desired=ask_desired,
    )


def test_start_and_stop_run_the_steps_in_the_one_order() -> None:
    parts = Recorder()
    agent = lifecycle(parts)
    agent.start()
    assert parts.beats.wait(5), "the first heartbeat goes out at once"
    assert agent.metrics_port == 9999
    agent.stop(7.0)
    assert parts.calls == [
        "prepare",
        "reconcile",
        "replay",
        "start_listeners",
        "rpc_server",
        "server start",
        "serve 127.0.0.1:0",
        # stop: casts already taken reach the journal before the drain
        "server stop",
        "server wait",
        "drain 7.0",
        "stop_listeners",
        "metrics close",
        "close",
    ]


def test_the_last_line_of_a_stop_says_how_long_each_step_took() -> None:
    parts = Recorder()
    slow_drain = parts.drain

    def drain(grace: float) -> None:
        time.sleep(0.2)
        slow_drain(grace)

    parts.drain = drain  # type: ignore[method-assign]
    agent = lifecycle(parts)
    agent.start()
    with capture_logs() as logs:
        agent.stop(1.0)
    stopped = [line for line in logs if line["event"] == "l2_agent_stopped"]
    assert len(stopped) == 1 and stopped[0] is logs[-1], logs
    steps = {k: v for k, v in stopped[0].items() if k.endswith("_s")}
    assert set(steps) == {
        "resync_s",
        "rpc_server_s",
        "drain_s",
        "listeners_s",
        "heartbeat_metrics_s",
        "close_s",
    }
    assert steps["drain_s"] >= 0.2, steps


def test_no_metrics_listen_serves_no_metrics() -> None:
    parts = Recorder()
    agent = lifecycle(parts, listen=None)
    agent.start()
    agent.stop(1.0)
    assert not any(c.startswith("serve ") for c in parts.calls)
    assert agent.metrics_port is None


def test_a_failed_start_is_undone_by_stop_without_what_never_started() -> None:
    parts = Recorder(fail_at="reconcile")
    agent = lifecycle(parts)
    with pytest.raises(RuntimeError, match="reconcile failed"):
        agent.start()
    agent.stop(1.0)
    assert parts.calls == [
        "prepare",
        "reconcile",
        "drain 1.0",
        "stop_listeners",
        "metrics close",
        "close",
    ]
    assert not parts.beats.is_set()


def test_resync_asks_and_applies_once_serving() -> None:
    parts = Recorder()
    asked: list[int] = []

    def ask() -> DesiredState:
        asked.append(1)
        return DesiredState(host="node1", kind="l2")

    agent = lifecycle(parts, ask_desired=ask)
    agent.start()
    assert parts.applied.wait(5)
    agent.stop(1.0)
    assert asked == [1]


def test_ping_reply() -> None:
    reply = ping_reply("node1", "compute", "1.2", 3.5)
    assert (reply.host, reply.kind, reply.version, reply.uptime_s) == (
        "node1",
        "compute",
        "1.2",
        3.5,
    )
