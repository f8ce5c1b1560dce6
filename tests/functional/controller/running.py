"""An agents-controller running in this process, on a private exchange and SQLite.

For the tests that need the whole controller (its RPC server, its event consumer, its
queues) without the lab's processes and namespaces: `running_controller()` starts a
`service.Controller` from etc/shared.conf with the test's control exchange, a SQLite
file in `tmp`, the API on a free port and its own events queue (registered with the
broker scope, which deletes it afterwards), and stops it at the end.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from agents.controller.service import Controller
from agents.controller.settings import ControllerConfig
from agents.controller.tokens import add
from agents.lab.broker import BrokerScope
from agents.lab.procs import REPO
from common.config import load


def write_config(
    scope: BrokerScope, tmp: Path, events_topic: str = "agents_events", **controller: object
) -> tuple[ControllerConfig, list[Path]]:
    tmp.mkdir(parents=True, exist_ok=True)
    shared = tmp / "shared.conf"
    shared.write_text(
        (REPO / "etc" / "shared.conf")
        .read_text()
        .replace("control_exchange = agents", f"control_exchange = {scope.exchange}")
        .replace("send_retry = 3", "send_retry = 1")
        .replace("events_topic = agents_events", f"events_topic = {events_topic}")
    )
    own = {
        "listen": "127.0.0.1:0",
        "database_url": f"sqlite:///{tmp / 'controller.sqlite'}",
        "events_queue": scope.queue(f"{scope.exchange}.controller-events"),
        "host_sync_interval": 0,
        # the API wants tokens, as installed; these tests do not call it
        "tokens_file": tmp / "tokens",
        **controller,
    }
    if not (tmp / "tokens").exists():
        add(tmp / "tokens", "admin", "test")
    conf = tmp / "controller.conf"
    conf.write_text(
        f"[DEFAULT]\nstate_dir = {tmp}\n[controller]\n"
        + "".join(f"{k} = {v}\n" for k, v in own.items())
    )
    # The deployment-wide RPC queue of the controller is `controller.<exchange>`.
    scope.queue(f"controller.{scope.exchange}")
    files = [shared, conf]
    return load(ControllerConfig, files), files


@contextlib.contextmanager
def running_controller(scope: BrokerScope, tmp: Path, **controller: object) -> Iterator[Controller]:
    config, _ = write_config(scope, tmp, **controller)
    ctl = Controller(config)
    try:
        ctl.start()
        yield ctl
    finally:
        ctl.stop(grace=1)
