#!/bin/bash
# Switch a deployment's queues between classic and quorum, keeping every message
# (docs/operations.md, "Broker cluster"). Stop every daemon of the deployment first.
#
#   tools/switch-queue-type.sh list   --config-file /etc/agents/shared.conf
#   tools/switch-queue-type.sh switch --to quorum --config-file /etc/agents/shared.conf
#                                     [--rabbitmqctl 'rabbitmqctl -n rabbit@node1'] [--dry-run]
#
# Then set [messaging] queue_type to the same value in shared.conf and start the daemons.
# A thin wrapper: the work is done by agents/controller/queues.py.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${AGENTS_VENV:-$REPO/.venv}"
cd "$REPO"
exec "$VENV/bin/python" -m agents.controller.queues "$@"
