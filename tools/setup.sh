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
    busybox-static socat iproute2 procps iputils-ping cpio xz-utils zstd kmod
    systemd libxml2-utils
)

# Every program a daemon, a test or the quickstart runs. Checked after the install, so a
# package missing from the list above fails here, on the first run, and not later in a
# test on someone else's machine.
PROGRAMS=(
    qemu-img qemu-system-x86_64 virsh virt-xml-validate xmllint
    ip bridge socat busybox cpio xz zstd modprobe ping setsid systemd-analyze
)

if [ "$(id -u)" != 0 ]; then
    echo "setup.sh: run as root (it installs Debian packages and uses network namespaces)" >&2
    exit 2
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# libvirt's QEMU driver (qemu:///embed included) refuses to start without this user and
# a group of the same name, even when qemu.conf runs guests as root (docs/platform.md).
getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
if ! getent passwd libvirt-qemu >/dev/null; then
    getent group kvm >/dev/null || groupadd --system kvm
    useradd --system --no-create-home --home-dir /var/lib/libvirt --shell /usr/sbin/nologin \
        --gid kvm libvirt-qemu
fi

# The broker: already running on the project's machines; start it if it is installed but down.
if command -v rabbitmq-server >/dev/null && ! (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
    echo "setup.sh: starting rabbitmq-server"
    rabbitmq-server -detached
    for _ in $(seq 1 60); do
        (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null && break
        sleep 1
    done
fi

# The oslo Notifier declares a durable queue <topic>.<priority> for every notification
# topic and nobody may consume it (agents_events.info is only watched through private
# queues): bound those queues, as tools/install.sh does on a real deployment.
if command -v rabbitmqctl >/dev/null; then
    rabbitmqctl set_policy --apply-to queues --priority 0 agents-notifications \
        '^(agents_events|vif_events)\.' '{"max-length":10000,"message-ttl":3600000}' >/dev/null \
        || echo "setup.sh: WARNING: could not set the RabbitMQ policy bounding notification queues" >&2
fi

absent=()
for prog in "${PROGRAMS[@]}"; do
    command -v "$prog" >/dev/null || absent+=("$prog")
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
