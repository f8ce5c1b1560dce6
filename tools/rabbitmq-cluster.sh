#!/bin/bash
# A RabbitMQ cluster on this machine, beside its own broker, for tests and for trying a
# clustered deployment (docs/operations.md, "Broker cluster").
#
#   tools/rabbitmq-cluster.sh up [--name N] [--nodes 3] [--base-port 5681]
#   tools/rabbitmq-cluster.sh status [--name N]
#   tools/rabbitmq-cluster.sh down [--name N]      stop every node, remove all its files
#   tools/rabbitmq-cluster.sh kill|start --node I  kill -9 / start one node
#
# Node i listens on 127.0.0.1 only: AMQP on base-port+i-1, distribution on
# base-port+2000+i-1 (with --tls CA CERT KEY, AMQPS on base-port+1000+i-1); its own
# cookie and data under /tmp/agents-lab-broker/<name> (AGENTS_LAB_BROKER_DIR).
# `up` prints the multi-node transport_url to use.
# A thin wrapper: the work is done by agents/lab/cluster.py (via agents/lab/broker.py).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${AGENTS_VENV:-$REPO/.venv}"
cd "$REPO"
exec "$VENV/bin/python" -m agents.lab.broker "$@"
