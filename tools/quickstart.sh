#!/bin/bash
# Bring up a controller and one host on this machine, build one real guest, print how to
# reach it.
#
#   tools/quickstart.sh           up: set the machine up, build the guest image, start
#                                 agents-controller and the host's agents, build guest
#                                 "demo" through the controller (agentctl send build --wait)
#   tools/quickstart.sh --down    remove everything it made (controller, agents, guest,
#                                 namespace, broker queues, files); the machine set-up stays
#
# agents-controller listens on 127.0.0.1:8780 (a free port if that is taken; the address
# is printed) with its SQLite database in /run/agents-quickstart/controller/. The host is
# the network namespace "agents-qs" serving host name "quickstart" on its own control
# exchange "agents-quickstart", so it never mixes with a real deployment on the same
# broker. Controller and agents run with the systemd units' command lines and configs
# rendered from etc/ (in /run/agents-quickstart/etc/); the guest is a real QEMU (TCG)
# guest on the flat network "provider" of etc/shared.conf, whose gateway address sits on
# a veth inside the namespace. The same machinery (agents/lab/) runs the end-to-end and
# functional tests and the benchmarks (docs/e2e.md).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${AGENTS_VENV:-$REPO/.venv}"
cd "$REPO"

if [ "$(id -u)" != 0 ]; then
    echo "quickstart: run as root (it installs packages, makes a network namespace and runs QEMU)" >&2
    exit 2
fi

case "${1:-up}" in
    --down|down)
        exec "$VENV/bin/python" -m agents.lab.quickstart down
        ;;
    up|--up) ;;
    -h|--help)
        sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "quickstart: unknown argument '$1' (use --down or --help)" >&2
        exit 2
        ;;
esac

setup_log="$(mktemp /tmp/agents-quickstart-setup.XXXXXX)"
if ! bash tools/setup.sh >"$setup_log" 2>&1; then
    cat "$setup_log" >&2
    echo "quickstart: tools/setup.sh failed (log above, also in $setup_log)" >&2
    exit 1
fi
tail -1 "$setup_log"
rm -f "$setup_log"
bash tools/build-guest-image.sh "${AGENTS_GUEST_IMAGE_DIR:-$REPO/.cache/guest-image}" >/dev/null
# Its own session: the controller, relays and agents it leaves running get no SIGHUP when
# this terminal closes.
exec setsid --wait "$VENV/bin/python" -W ignore -m agents.lab.quickstart up
