#!/bin/bash
# Run every check the project has, on this machine (Debian 12, as root):
# lint (ruff), types (mypy), unit, functional and end-to-end tests.
#
#   tools/test.sh                 everything (what CI runs)
#   tools/test.sh -m "not e2e"    extra arguments go to pytest
#
# Functional and e2e tests use the real RabbitMQ on 127.0.0.1:5672, real netlink in
# network namespaces they create and remove, real libvirt and real QEMU (TCG) guests.
# The pid1 and fresh tests (tests/functional/systemd/test_{pid1,fresh}.py) boot a Debian 12
# root with systemd-nspawn; the root file systems, .debs and pip's cache are kept in
# /var/cache/agents-test ($AGENTS_TEST_CACHE) between runs. The time they add is printed
# at the end of pytest's output; `-m "not pid1 and not fresh"` leaves them out.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
bash tools/setup.sh
VENV="${AGENTS_VENV:-$REPO/.venv}"

echo "== ruff"
"$VENV/bin/ruff" check agents common
echo "== import contracts"
"$VENV/bin/lint-imports" --no-cache >/dev/null || "$VENV/bin/lint-imports" --no-cache
echo "== mypy"
"$VENV/bin/mypy" agents common
echo "== pytest"
began=$SECONDS
status=0
"$VENV/bin/pytest" -p no:cacheprovider -ra --durations=25 --timeout=600 "$@" tests || status=$?
echo "== pytest took $((SECONDS - began)) s"
exit "$status"
