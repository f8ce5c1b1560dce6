"""Per-role broker accounts for a lab, as tools/install.sh makes them for a deployment.

`LabAccounts` creates, on the machine's broker (rabbitmqctl), the controller's account
and each host's `compute-<host>` and `l2-<host>` (agents/controller/broker_accounts.py),
under a name prefix unique to the lab, and writes each daemon's credentials where its
unit's `--config-dir` points inside the lab (`<etc>/<daemon>.d/broker.conf`), so the
daemons run exactly as installed. `remove()` deletes every account it made (the lab's
close() calls it, also after a failure).

Must not touch accounts it did not make.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agents.controller.broker_accounts import (
    BrokerAdmin,
    Deployment,
    deployment_of,
    remove_accounts,
    set_accounts,
    write_transport_conf,
)
from agents.lab.procs import unique

DAEMON_DIRS = {"controller": "controller.d", "compute": "compute-agent.d", "l2": "l2-agent.d"}


@dataclass
class LabAccounts:
    deployment: Deployment
    admin: BrokerAdmin = field(default_factory=BrokerAdmin)
    made: list[tuple[str, str | None]] = field(default_factory=list)

    @classmethod
    def new(cls, transport_url: str, exchange: str, events_topic: str) -> LabAccounts:
        dep = deployment_of(transport_url, exchange, events_topic, prefix=unique("lab") + "-")
        return cls(dep, BrokerAdmin(dep.vhost))

    def _make(self, roles: list[tuple[str, str | None]], etc: Path) -> None:
        self.made += roles  # before the broker answers: remove() also cleans a half-made one
        urls = set_accounts(self.admin, self.deployment, roles, out=None)
        for (role, _host), url in urls.items():
            write_transport_conf(etc / DAEMON_DIRS[role] / "broker.conf", url)

    def controller(self, etc: Path) -> None:
        """The controller's account; its file under `etc` (the controller's config dir)."""
        self._make([("controller", None)], etc)

    def host(self, host: str, etc: Path) -> None:
        """compute-<host> and l2-<host>; their files under the host's `etc`."""
        self._make([("compute", host), ("l2", host)], etc)

    def remove(self) -> None:
        remove_accounts(self.admin, self.deployment, self.made)
        self.made = []
