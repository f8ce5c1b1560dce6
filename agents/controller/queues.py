"""Switch a deployment's queues between classic and quorum (tools/switch-queue-type.sh).

    python -m agents.controller.queues switch --to quorum --config-file shared.conf
    python -m agents.controller.queues list --config-file shared.conf

RabbitMQ cannot change the type of an existing queue: a declare with another
`x-queue-type` is refused (PRECONDITION_FAILED). So, with every daemon of the
deployment stopped, each queue of the deployment is re-declared with the arguments the
daemons will declare once `[messaging] queue_type` is changed (`declared_arguments`),
its messages kept: moved to a temporary queue, the queue deleted and declared anew
with the same bindings, the messages moved back (`common.rpc.redeclare_queue`:
publisher confirms, the original acknowledged after its copy was confirmed). Nothing is
lost: a message is always in one of the two queues, also if the tool dies mid-way (run
it again: what is left in `<queue>.switch-tmp` goes back first, in order).

The deployment's queues are those bound to its control exchange (RPC server queues
`<topic>.<host>` and `<topic>`, the controller's, the notification queues and the
controller's events queue), found with `rabbitmqctl list_bindings`/`list_queues` (run
it where rabbitmqctl reaches the broker; `--rabbitmqctl` for another node or cookie).
Transient queues (exclusive, auto-delete or expiring: oslo's reply and fanout queues,
watchers) are left alone: they vanish by themselves and are declared anew as the
daemons come back. A queue with consumers refuses the switch: stop the daemons first.

Must not: touch queues outside the control exchange, or run while daemons consume.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Literal

from common.config import BaseConfig, MessagingSettings, load
from common.errors import AgentsError
from common.rpc import QueueBinding, declared_arguments, redeclare_queue

QueueType = Literal["classic", "quorum"]


@dataclass(frozen=True)
class DeployedQueue:
    name: str
    type: str
    arguments: dict[str, Any]
    messages: int
    consumers: int
    bindings: tuple[QueueBinding, ...]


class SwitchError(Exception):
    """The switch cannot run (or stopped); the message says what and why."""


def _vhost(transport_url: str) -> str:
    path = transport_url.split("://", 1)[-1].partition("/")[2]
    return path or "/"


def _ctl_json(rabbitmqctl: list[str], *args: str) -> list[dict[str, Any]]:
    try:
        out = subprocess.run(
            [*rabbitmqctl, *args, "--formatter", "json"],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as err:
        detail = getattr(err, "stderr", "") or str(err)
        raise SwitchError(f"{' '.join(rabbitmqctl)} {args[0]}: {detail.strip()[:500]}") from err
    doc = json.loads(out or "[]")
    return doc if isinstance(doc, list) else []


def deployment_queues(settings: MessagingSettings, rabbitmqctl: list[str]) -> list[DeployedQueue]:
    """The durable, non-transient queues bound to the control exchange of `settings`."""
    vhost = _vhost(settings.transport_url)
    bindings: dict[str, list[QueueBinding]] = {}
    for b in _ctl_json(
        rabbitmqctl,
        "list_bindings",
        "-p",
        vhost,
        "source_name",
        "destination_name",
        "destination_kind",
        "routing_key",
    ):
        if b["source_name"] == settings.control_exchange and b["destination_kind"] == "queue":
            bindings.setdefault(b["destination_name"], []).append(
                QueueBinding(b["source_name"], b["routing_key"])
            )
    found = []
    orphans: list[str] = []
    for q in _ctl_json(
        rabbitmqctl,
        "list_queues",
        "-p",
        vhost,
        "name",
        "type",
        "durable",
        "auto_delete",
        "exclusive",
        "arguments",
        "messages",
        "consumers",
    ):
        name = str(q["name"])
        args = {a[0]: a[2] for a in q.get("arguments") or [] if len(a) == 3}
        transient = (
            not q["durable"] or q["auto_delete"] is True or q["exclusive"] is True
        ) or "x-expires" in args
        if name.endswith(".switch-tmp") and name.removesuffix(".switch-tmp") not in bindings:
            orphans.append(f"{name} ({q['messages']} messages)")
        if name in bindings and not transient:
            found.append(
                DeployedQueue(
                    name=name,
                    type=str(q["type"]),
                    arguments=args,
                    messages=int(q["messages"] or 0),
                    consumers=int(q["consumers"] or 0),
                    bindings=tuple(bindings[name]),
                )
            )
    if orphans:
        # the switch died between deleting a queue and declaring it anew
        raise SwitchError(
            f"left by an interrupted switch, their queue gone: {', '.join(orphans)};"
            " start the daemons once (they declare their queues), stop them, switch again"
        )
    return sorted(found, key=lambda x: x.name)


def switch(
    settings: MessagingSettings, to: QueueType, rabbitmqctl: list[str], dry_run: bool = False
) -> list[tuple[DeployedQueue, int, int]]:
    """Re-declare every queue of the deployment not yet of type `to`; for each, the
    queue as it was, messages moved out and moved back."""
    target = settings.model_copy(update={"queue_type": to})
    queues = deployment_queues(settings, rabbitmqctl)
    busy = [f"{q.name} ({q.consumers})" for q in queues if q.consumers]
    if busy:
        raise SwitchError(f"queues still consumed, stop the daemons first: {', '.join(busy[:10])}")
    done = []
    for q in queues:
        if q.type == to:
            continue
        if dry_run:
            done.append((q, 0, 0))
            continue
        out, back = redeclare_queue(
            target, q.name, declared_arguments(target, q.arguments, q.name), q.bindings
        )
        if back != out:
            raise SwitchError(f"queue {q.name}: moved out {out} messages but back {back}")
        done.append((q, out, back))
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="switch-queue-type", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("action", choices=["switch", "list"])
    parser.add_argument("--to", choices=["classic", "quorum"], default="quorum")
    parser.add_argument(
        "--config-file",
        action="append",
        required=True,
        help="the deployment's shared.conf (its [messaging] names broker and exchange)",
    )
    parser.add_argument(
        "--rabbitmqctl", default="rabbitmqctl", help="command, e.g. 'rabbitmqctl -n rabbit@b1'"
    )
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    try:
        settings = load(BaseConfig, args.config_file).messaging
        ctl = shlex.split(args.rabbitmqctl)
        if args.action == "list":
            for q in deployment_queues(settings, ctl):
                print(f"{q.name}\t{q.type}\tmessages={q.messages}\tconsumers={q.consumers}")
            return 0
        done = switch(settings, args.to, ctl, args.dry_run)
    except (SwitchError, AgentsError) as err:
        print(f"switch-queue-type: {err}", file=sys.stderr)
        return 1
    for q, out, back in done:
        verb = "would switch" if args.dry_run else "switched"
        print(f"{verb} {q.name}: {q.type} -> {args.to}, messages moved out {out}, back {back}")
    total = sum(out for _, out, _ in done)
    print(
        f"{len(done)} queues {'to switch' if args.dry_run else 'switched'} to {args.to};"
        f" {total} messages kept, 0 lost. Now set [messaging] queue_type = {args.to}"
        " in every daemon's shared.conf and start them."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
