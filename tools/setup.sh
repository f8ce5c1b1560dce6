#!/bin/bash
# Set this machine up for running and testing the agents (Debian 12, as root).
#
# Idempotent and quick when already done: system packages are installed only when
# missing, the Python environment lives in .venv next to this checkout.
#   tools/setup.sh            install system packages, create .venv, install the package
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${AGENTS_VENV:-$REPO/.venv}"
PYTHON="${PYTHON:-python3}"

PACKAGES=(
    qemu-system-x86 qemu-utils
    libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev
    pkg-config gcc python3-dev python3-venv
    busybox-static socat iproute2 procps iputils-ping cpio xz-utils zstd kmod file
    systemd libxml2-utils util-linux mount hostname
    # the API's TLS tests make a throwaway CA with it
    openssl
    # the tests: the checkout's files (git ls-files), the metrics endpoints (curl)
    git curl
    # the pid1/fresh tests: a Debian 12 root file system booted by a real systemd
    debootstrap systemd-container
)
# rabbitmq-server (rabbitmqctl, epmd) is not in this list: it is installed below only
# where no broker answers on 127.0.0.1:5672.

# Every program a daemon, a test, a tool or the quickstart runs (coreutils, bash, dpkg
# and apt aside: every Debian has them). Checked after the install, so a package
# missing from the list above fails here, on the first run, and not later in a test on
# someone else's machine. tests/functional/systemd/test_fresh.py checks that this list
# names every program the Python code runs, and that a fresh Debian 12 has all of them
# after this script.
PROGRAMS=(
    # compute-agent: disk overlays; libvirt runs QEMU; the guest XML checks of the tests
    qemu-img qemu-system-x86_64 virsh virt-xml-validate xmllint
    # labs, tests, benchmarks, quickstart: namespaces, links, relays, probes
    ip bridge ss ping socat setsid curl kill hostname python3
    # tools/build-guest-image.sh (busybox: the guest's userland)
    busybox cpio xz zstd gzip file flock modprobe
    # the broker: setup.sh itself, install.sh --broker-accounts, switch-queue-type.sh,
    # the tests; rabbitmq-server and epmd for the lab's broker cluster (agents/lab/cluster.py)
    rabbitmqctl rabbitmq-server epmd
    # the tests: git ls-files (tests/unit/test_standalone.py, the containers' checkout)
    git openssl
    # the units and the pid1/fresh tests
    systemctl journalctl systemd-analyze debootstrap systemd-nspawn nsenter mount umount mountpoint
)

if [ "$(id -u)" != 0 ]; then
    echo "setup.sh: run as root (it installs Debian packages and uses network namespaces)" >&2
    exit 2
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
export DEBIAN_FRONTEND=noninteractive
APT_UPDATED=0
apt_install() {
    [ "$APT_UPDATED" = 1 ] || { apt-get update -q; APT_UPDATED=1; }
    apt-get install -y -q --no-install-recommends "$@"
}
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup.sh: installing ${missing[*]}"
    apt_install "${missing[@]}"
fi

# libvirt's QEMU driver (qemu:///embed included) refuses to start without this user and
# a group of the same name, even when qemu.conf runs guests as root (docs/platform.md).
getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
if ! getent passwd libvirt-qemu >/dev/null; then
    getent group kvm >/dev/null || groupadd --system kvm
    useradd --system --no-create-home --home-dir /var/lib/libvirt --shell /usr/sbin/nologin \
        --gid kvm libvirt-qemu
fi

# The broker. On the project's machines it already answers on 127.0.0.1:5672 and is
# used as it is. Where nothing answers (a fresh machine), Debian's rabbitmq-server is
# installed and started: the quickstart and the tests need nothing else (guest/guest
# works from loopback). tests/functional/systemd/test_fresh.py proves it in a container.
broker_answers() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }
# wait_until SECONDS COMMAND: true as soon as COMMAND is, false after SECONDS
wait_until() {
    local seconds="$1"; shift
    for _ in $(seq 1 "$seconds"); do
        "$@" && return 0
        sleep 1
    done
    "$@"
}
if ! broker_answers; then
    if ! dpkg-query -W -f='${Status}' rabbitmq-server 2>/dev/null | grep -q "install ok installed"; then
        echo "setup.sh: no broker answers on 127.0.0.1:5672: installing Debian's rabbitmq-server"
        apt_install rabbitmq-server
    fi
    # With systemd the package's postinst has started it already; a stopped one is started.
    if ! broker_answers; then
        echo "setup.sh: starting rabbitmq-server"
        if [ -d /run/systemd/system ]; then
            systemctl enable --now rabbitmq-server.service
        else
            rabbitmq-server -detached || echo "setup.sh: WARNING: rabbitmq-server -detached failed" >&2
        fi
    fi
    if ! wait_until 120 broker_answers; then
        echo "setup.sh: rabbitmq-server does not answer on 127.0.0.1:5672 after 120 s" >&2
        echo "setup.sh: see journalctl -u rabbitmq-server or /var/log/rabbitmq/" >&2
        exit 1
    fi
    echo "setup.sh: rabbitmq-server answers on 127.0.0.1:5672"
fi
if ! command -v rabbitmqctl >/dev/null; then
    # A broker answers, but not Debian's rabbitmq-server of this machine: installing the
    # package now would start a second one on the same port.
    echo "setup.sh: a broker answers on 127.0.0.1:5672 but rabbitmqctl is not installed:" \
        "the tests and install.sh --broker-accounts manage the broker with it." >&2
    echo "setup.sh: use Debian's rabbitmq-server here (apt-get install rabbitmq-server)" >&2
    exit 1
fi

# PostgreSQL, for the tests (controller replicas on one database, migrations on it, the
# pid1 test); the controller itself defaults to SQLite and the quickstart needs none. On
# the project's machines a server answers on 127.0.0.1:5432 (user postgres, trust) and is
# used as it is. Where nothing answers (a fresh machine), Debian's postgresql is installed
# and started, and TCP connections of user postgres from 127.0.0.1 are trusted, as the
# tests connect: a test machine's setting, never one for a shared host.
# AGENTS_SETUP_POSTGRES=0 skips this.
pg_answers() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }
if [ "${AGENTS_SETUP_POSTGRES:-1}" = 1 ] && ! pg_answers; then
    if ! dpkg-query -W -f='${Status}' postgresql 2>/dev/null | grep -q "install ok installed"; then
        echo "setup.sh: nothing answers on 127.0.0.1:5432: installing Debian's postgresql"
        apt_install postgresql
    fi
    for hba in /etc/postgresql/*/main/pg_hba.conf; do
        [ -f "$hba" ] || continue
        if ! grep -q "^# agents tools/setup.sh" "$hba"; then
            # first match wins in pg_hba.conf: the line goes on top
            printf '%s\n%s\n' "# agents tools/setup.sh: the tests connect as postgres over TCP" \
                "host all postgres 127.0.0.1/32 trust" | cat - "$hba" > "$hba.agents" \
                && cat "$hba.agents" > "$hba" && rm -f "$hba.agents"
        fi
    done
    echo "setup.sh: starting postgresql"
    if [ -d /run/systemd/system ]; then
        systemctl enable postgresql.service >/dev/null 2>&1 || true
        systemctl restart postgresql.service
    else
        for conf in /etc/postgresql/*/main; do
            version="$(basename "$(dirname "$conf")")"
            pg_ctlcluster "$version" main restart || pg_ctlcluster "$version" main start
        done
    fi
    if ! wait_until 60 pg_answers; then
        echo "setup.sh: postgresql does not answer on 127.0.0.1:5432 after 60 s" >&2
        exit 1
    fi
    echo "setup.sh: postgresql answers on 127.0.0.1:5432"
fi

# Older versions published agent events under `agents_events.<priority>` and declared
# those queues (at first without bounds). Events now carry their host in the routing
# key and the controller reads its own queue, so nothing uses `agents_events.info` /
# `.error` any more: drop them while nobody consumes them. docs/operations.md has the
# same step for a deployment.
if command -v rabbitmqctl >/dev/null; then
    rabbitmqctl -q list_queues name consumers 2>/dev/null \
        | awk '$1 ~ /^agents_events\.(info|error)$/ && $2 == 0 {print $1}' \
        | while read -r queue; do
            rabbitmqctl -q delete_queue "$queue" >/dev/null && echo "setup.sh: dropped unused queue $queue"
        done
fi

absent=()
for prog in "${PROGRAMS[@]}"; do
    # type -P: a file on PATH, not a shell builtin (kill) or function
    type -P "$prog" >/dev/null || absent+=("$prog")
done
if [ ${#absent[@]} -gt 0 ]; then
    echo "setup.sh: these programs are still missing after the install: ${absent[*]}" >&2
    echo "setup.sh: add the Debian package that provides each to PACKAGES in $0" >&2
    exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check -e "$REPO[test]"
"$VENV/bin/python" -W ignore -c "import libvirt, pyroute2, oslo_messaging"
echo "setup.sh: ready ($VENV)"
