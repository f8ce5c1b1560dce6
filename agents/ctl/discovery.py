"""Which agents exist, which host each serves, and whether it is alive now.

Owns three ways of knowing, each with its limits:
- the broker itself: the RPC queue `<topic>.<host>` exists once an agent ever served the
  host, and has a consumer while one runs (a passive declare; no management plugin);
- heartbeats on demand: a fanout cast of `report_state` reaches every live agent of a
  topic (each oslo RPC server also consumes its topic's fanout queue), and each answers
  with an `agent.heartbeat` collected for a short window;
- the local record of agents heard before (`seen.SeenStore`), which is what lets an
  agent that stopped answering be shown as down rather than vanish.

Must not decide builds or print; it answers questions about agents and raises typed errors.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

import structlog

from agents.ctl.errors import AgentDown, NoLiveAgents
from agents.ctl.seen import AgentState, AgentStatus, SeenStore, key, merge
from agents.ctl.settings import CtlConfig
from common.errors import NoAgentForHost
from common.messages import AgentHeartbeat, new_request_id
from common.rpc import (
    COMPUTE_TOPIC,
    L2_TOPIC,
    Messaging,
    QueueState,
    probe_broker,
    queue_state,
    watching,
)

log = structlog.get_logger()

TOPIC_OF_KIND = {"compute": COMPUTE_TOPIC, "l2": L2_TOPIC}
KIND_NAME = {"compute": "compute-agent", "l2": "l2-agent"}
OnWarning = Callable[[str], None]


def log_warning(text: str) -> None:
    log.warning("agentctl_warning", problem=text)


class AgentDirectory:
    def __init__(
        self,
        config: CtlConfig,
        messaging: Messaging,
        seen: SeenStore,
        *,
        on_warning: OnWarning = log_warning,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.messaging = messaging
        self.seen = seen
        self.warn = on_warning
        self.clock = clock
        self._broker_checked = False

    def check_broker(self) -> None:
        """Raise BrokerUnreachable within broker_timeout, instead of oslo's endless retries."""
        if not self._broker_checked:
            probe_broker(self.config.messaging, timeout=self.config.agentctl.broker_timeout)
            self._broker_checked = True

    def agent_queue(self, kind: str, host: str) -> QueueState:
        self.check_broker()
        topic = TOPIC_OF_KIND[kind]
        return queue_state(
            self.config.messaging, f"{topic}.{host}", timeout=self.config.agentctl.broker_timeout
        )

    def require_agent(self, kind: str, host: str) -> None:
        """Raise NoAgentForHost (never served) or AgentDown (queue without consumer)."""
        state = self.agent_queue(kind, host)
        name = KIND_NAME[kind]
        if not state.exists:
            raise NoAgentForHost(
                kind=name,
                host=host,
                problem=f"no agent has ever served this host (no queue {state.name} on the broker)",
            )
        if state.consumers == 0:
            raise AgentDown(
                kind=name,
                host=host,
                problem=(
                    f"its queue {state.name} has no consumer ({state.messages} message(s) waiting)"
                ),
            )

    def heartbeats(
        self, window: float | None = None, kinds: Sequence[str] = ("compute", "l2")
    ) -> list[AgentHeartbeat]:
        """Ask every live agent to report now (fanout) and collect heartbeats for `window` s."""
        self.check_broker()
        window = window or self.config.agentctl.discovery_window
        request_id = new_request_id()
        heard: dict[str, AgentHeartbeat] = {}
        keys = [f"{self.config.messaging.events_topic}.*"]
        with watching(self.config.messaging, keys) as watcher:  # bound before asking
            for kind in kinds:
                self.messaging.fanout_cast(
                    TOPIC_OF_KIND[kind], "report_state", request_id=request_id
                )
            deadline = self.clock() + window
            while (left := deadline - self.clock()) > 0:
                for ev in watcher.poll(min(left, 0.25)):
                    hb = ev.payload
                    if (
                        ev.event_type == "agent.heartbeat"
                        and isinstance(hb, AgentHeartbeat)
                        and hb.kind in kinds
                    ):
                        heard[key(hb.kind, hb.host)] = hb
        self._remember(heard.values())
        return sorted(heard.values(), key=lambda h: (h.host, h.kind))

    def _remember(self, heard: Iterable[AgentHeartbeat]) -> None:
        try:
            self.seen.save(merge(self.seen.load(), heard))
        except OSError as err:  # the record is a convenience; its loss must not fail a command
            self.warn(f"cannot write the agent record {self.seen.path}: {err}")

    def live_hosts(self, kind: str) -> list[str]:
        hosts = sorted({hb.host for hb in self.heartbeats(kinds=(kind,))})
        if not hosts:
            raise NoLiveAgents(kind=KIND_NAME[kind], window=self.config.agentctl.discovery_window)
        return hosts

    def agents(self, window: float | None = None) -> list[AgentStatus]:
        """Every agent heard now (up) or before: down when its queue has no consumer."""
        heard = {key(h.kind, h.host): h for h in self.heartbeats(window)}
        out = []
        for k, hb in sorted(merge(self.seen.load(), heard.values()).items()):
            if k in heard:
                out.append(_status(hb, "up"))
                continue
            q = self.agent_queue(hb.kind, hb.host)
            # A consumer but no heartbeat: alive on the broker yet not answering (wedged).
            state: AgentState = "silent" if q.consumers > 0 else "down"
            out.append(_status(hb, state, consumers=q.consumers))
        return out


def _status(hb: AgentHeartbeat, state: AgentState, consumers: int | None = None) -> AgentStatus:
    return AgentStatus(
        host=hb.host,
        kind=hb.kind,
        state=state,
        version=hb.version,
        started_at=hb.started_at,
        uptime_s=hb.uptime_s,
        last_seen=hb.at,
        counts=hb.counts,
        consumers=consumers,
    )
