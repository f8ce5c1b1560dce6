#!/bin/bash
# Install the agents as systemd services on a Debian 12 host, or remove them again.
#
#   tools/install.sh                      install (or upgrade) from this checkout
#   tools/install.sh --uninstall          remove what install put in place
#   tools/install.sh --uninstall --purge  ... and configs, state (instance disks!), users
#
# Options:
#   --root DIR       install into DIR instead of / (a scratch root for tests or an image
#                    build): nothing outside DIR is touched, systemd is not reloaded and
#                    the broker policy is only set when --vhost is given explicitly
#   --vhost VHOST    RabbitMQ vhost for the notification-queue policy (default /)
#   --no-broker-policy   do not run rabbitmqctl (the broker is on another host: set the
#                    policy there, see docs/operations.md)
#   --python PY      interpreter the venv is made from (default /usr/bin/python3)
#   --broker-accounts / --no-broker-accounts
#                    create a broker account per daemon (controller, compute-HOST, l2-HOST
#                    for this host) with its password in /etc/agents/<daemon>.d/broker.conf
#                    (0600, the daemon's user). Default: when rabbitmqctl is on this machine
#                    and the target is /. Without rabbitmqctl the daemons keep shared.conf's
#                    account; on the broker's machine: agents-controller broker-accounts
#                    add-host NODE --out DIR, then copy DIR's *.d to NODE (docs/security.md)
#   --account-prefix P   prefix of those account names (default none)
#   --broker-tls     TLS for the local broker: a CA and a broker certificate (made here
#                    with `agents-controller certs`, or --tls-ca/--tls-cert/--tls-key FILE of
#                    the operator's), an AMQPS listener on 127.0.0.1:--broker-tls-port (5671)
#                    in /etc/rabbitmq/conf.d/50-agents-tls.conf, and every daemon connecting
#                    with TLS, verifying the broker (needs the broker accounts)
#   --broker-plain-off   with --broker-tls: no plain AMQP listener (listeners.tcp = none)
#                    (the broker reads its config when restarted: install does not restart it)
#
# What it puts where (what it created is recorded in /opt/agents/manifest for --uninstall):
#   /opt/agents/venv            a venv with this package (pip install of the checkout)
#   /opt/agents/share/          pristine sample configs, docs
#   /usr/local/bin/{agentctl,compute-agent,l2-agent}  symlinks into the venv
#   /etc/agents/*.conf          sample configs, only where no file exists yet (0640 root:agents)
#   /etc/agents/tokens          the API's token file: hashes only (0600 agents:agents)
#   /root/.config/agents/token  an admin API token for root's agentctl (0600), made once
#   /etc/systemd/system/{agents-controller,compute-agent,l2-agent}.service
#   user `agents`               runs agents-controller (no privileges, no login)
#   /var/lib/agents/{,images,instances}  state, base images, instance disks
#   group `agents`              may read /etc/agents (broker credentials): add operators
#                               who run agentctl to it
#   user `libvirt-qemu`         only if missing: libvirt's QEMU driver (qemu:///embed)
#                               refuses to start without it (docs/operations.md)
#   RabbitMQ policy `agents-notifications`  bounds the notification queues
#
# Running it twice is harmless: existing configs are kept, users are not re-created,
# the venv is upgraded in place when the sources changed, units are replaced.
# Uninstall keeps configs an operator edited, /var/lib/agents and the users unless
# --purge.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT=""
PREFIX=/opt/agents
VHOST="/"
VHOST_GIVEN=0
BROKER_POLICY=1
PYTHON=/usr/bin/python3
ACTION=install
PURGE=0
BROKER_ACCOUNTS=auto
ACCOUNT_PREFIX=""
BROKER_TLS=0
BROKER_PLAIN_OFF=0
TLS_PORT=5671
TLS_CA=""
TLS_CERT=""
TLS_KEY=""

UNITS=(agents-controller.service compute-agent.service l2-agent.service)
SCRIPTS=(agentctl agents-controller compute-agent l2-agent)
# The controller runs as this unprivileged user (SQLite file under /var/lib/agents/controller).
SERVICE_USER=agents
GROUP=agents
POLICY=agents-notifications
# oslo's Notifier declares `<topic>.<priority>` queues nobody may consume (docs/platform.md):
# events_topic (agents_events.*) and the per-host vif topics (vif_events.<host>.*).
POLICY_PATTERN='^(agents_events|vif_events)\.'
POLICY_DEFINITION='{"max-length":10000,"message-ttl":3600000}'

SRC_COPY=""
trap 'rm -rf "${SRC_COPY:-/nonexistent}"' EXIT

die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --root) ROOT="$(realpath -m "${2:?--root needs a directory}")"; shift 2 ;;
        --vhost) VHOST="${2:?--vhost needs a name}"; VHOST_GIVEN=1; shift 2 ;;
        --no-broker-policy) BROKER_POLICY=0; shift ;;
        --python) PYTHON="${2:?--python needs an interpreter}"; shift 2 ;;
        --broker-accounts) BROKER_ACCOUNTS=1; shift ;;
        --no-broker-accounts) BROKER_ACCOUNTS=0; shift ;;
        --account-prefix) ACCOUNT_PREFIX="${2?--account-prefix needs a value}"; shift 2 ;;
        --broker-tls) BROKER_TLS=1; shift ;;
        --broker-plain-off) BROKER_PLAIN_OFF=1; shift ;;
        --broker-tls-port) TLS_PORT="${2:?--broker-tls-port needs a port}"; shift 2 ;;
        --tls-ca) TLS_CA="$(realpath "${2:?--tls-ca needs a file}")"; shift 2 ;;
        --tls-cert) TLS_CERT="$(realpath "${2:?--tls-cert needs a file}")"; shift 2 ;;
        --tls-key) TLS_KEY="$(realpath "${2:?--tls-key needs a file}")"; shift 2 ;;
        --uninstall) ACTION=uninstall; shift ;;
        --purge) PURGE=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
[ "$ROOT" = "/" ] && ROOT=""
[ "$PURGE" = 1 ] && [ "$ACTION" != uninstall ] && die "--purge goes with --uninstall"
[ "$BROKER_PLAIN_OFF" = 1 ] && [ "$BROKER_TLS" != 1 ] && die "--broker-plain-off needs --broker-tls"
[ "$BROKER_TLS" = 1 ] && [ "$BROKER_ACCOUNTS" = 0 ] && die "--broker-tls needs the broker accounts"
if [ -n "$TLS_CA$TLS_CERT$TLS_KEY" ] && { [ -z "$TLS_CA" ] || [ -z "$TLS_CERT" ] || [ -z "$TLS_KEY" ]; }; then
    die "--tls-ca, --tls-cert and --tls-key go together"
fi
[ "$(id -u)" = 0 ] || die "run as root (it creates users and writes /etc, /opt, /var/lib)"

SHARE="$ROOT$PREFIX/share"
MANIFEST="$ROOT$PREFIX/manifest"
SOURCE_DIGEST="$ROOT$PREFIX/source.sha256"
VENV="$ROOT$PREFIX/venv"
ETC="$ROOT/etc/agents"
UNIT_DIR="$ROOT/etc/systemd/system"
STATE="$ROOT/var/lib/agents"
# In a scratch root the account tools work on DIR/etc/{passwd,group,shadow,gshadow}.
ACCOUNT_ARGS=()
[ -n "$ROOT" ] && ACCOUNT_ARGS=(--prefix "$ROOT")

systemd_running() { [ -z "$ROOT" ] && [ -d /run/systemd/system ]; }
broker_policy_wanted() {
    [ "$BROKER_POLICY" = 1 ] && command -v rabbitmqctl >/dev/null \
        && { [ -z "$ROOT" ] || [ "$VHOST_GIVEN" = 1 ]; }
}
# On the real system ask NSS (an account may come from LDAP); in a scratch root read
# its files, which is what useradd/groupadd --prefix write.
account() {
    if [ -z "$ROOT" ]; then
        getent "$1" "$2"
    else
        grep "^$2:" "$ROOT/etc/$1" 2>/dev/null
    fi
}
has_group() { account group "$1" >/dev/null; }
has_user() { account passwd "$1" >/dev/null; }
gid_of() { account group "$1" | cut -d: -f3; }
uid_of() { account passwd "$1" | cut -d: -f3; }
record() { echo "$*" >>"$MANIFEST"; }
recorded() { [ -f "$MANIFEST" ] && grep -qxF "$*" "$MANIFEST"; }

install_accounts() {
    if ! has_group "$GROUP"; then
        groupadd "${ACCOUNT_ARGS[@]}" --system "$GROUP"
        say "created group $GROUP"
        record "group $GROUP"
    fi
    if ! has_user "$SERVICE_USER"; then
        useradd "${ACCOUNT_ARGS[@]}" --system --no-create-home --home-dir /var/lib/agents \
            --shell /usr/sbin/nologin --gid "$GROUP" "$SERVICE_USER"
        say "created user $SERVICE_USER"
        record "user $SERVICE_USER"
    fi
    # libvirt's QEMU driver refuses to open without a group of this name, even before it
    # reads qemu.conf (measured); Debian's libvirt-daemon-system would create both.
    if ! has_group libvirt-qemu; then
        groupadd "${ACCOUNT_ARGS[@]}" --system libvirt-qemu
        say "created group libvirt-qemu"
        record "group libvirt-qemu"
    fi
    if ! has_user libvirt-qemu; then
        has_group kvm || { groupadd "${ACCOUNT_ARGS[@]}" --system kvm && record "group kvm"; }
        useradd "${ACCOUNT_ARGS[@]}" --system --no-create-home --home-dir /var/lib/libvirt \
            --shell /usr/sbin/nologin --gid kvm libvirt-qemu
        say "created user libvirt-qemu"
        record "user libvirt-qemu"
    fi
}

install_venv() {
    "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null \
        || die "$PYTHON cannot make a venv: apt-get install python3-venv"
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -m venv "$VENV"
    fi
    # Built from a clean copy of what the wheel is made of: setuptools would otherwise
    # leave build/ and *.egg-info in the checkout (and a stale build/lib can put deleted
    # modules into the wheel); the checkout may also hold caches and guest images.
    SRC_COPY="$(mktemp -d)"
    local parts=(pyproject.toml README.md agents common)
    [ -f "$REPO/LICENSE" ] && parts+=(LICENSE)
    tar -C "$REPO" --exclude=__pycache__ -cf - "${parts[@]}" | tar -C "$SRC_COPY" -xf -
    # The same sources as last time: nothing to rebuild (a rerun is quick). Otherwise the
    # package is rebuilt and reinstalled; dependencies already satisfied are left alone.
    local digest
    digest="$(cd "$SRC_COPY" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)"
    if [ -f "$SOURCE_DIGEST" ] && [ "$(cat "$SOURCE_DIGEST")" = "$digest" ] \
            && "$VENV/bin/python" -c 'import agents, common' 2>/dev/null; then
        say "package unchanged since the last install ($VENV)"
    else
        # libvirt-python may build from source: libvirt-dev, pkg-config, gcc, python3-dev.
        "$VENV/bin/pip" install --quiet --disable-pip-version-check "$SRC_COPY" \
            || die "pip install failed (libvirt-python needs: apt-get install libvirt-dev pkg-config gcc python3-dev)"
        echo "$digest" >"$SOURCE_DIGEST"
    fi
    mkdir -p "$ROOT/usr/local/bin"
    for script in "${SCRIPTS[@]}"; do
        [ -x "$VENV/bin/$script" ] || die "the package did not install $script"
        # Absolute inside the target root, so a scratch root stays self-consistent.
        ln -sfn "$PREFIX/venv/bin/$script" "$ROOT/usr/local/bin/$script"
    done
}

install_share() {
    mkdir -p "$SHARE/etc" "$SHARE/doc"
    install -m 0644 "$REPO"/etc/*.conf "$SHARE/etc/"
    [ -f "$REPO/docs/operations.md" ] && install -m 0644 "$REPO/docs/operations.md" "$SHARE/doc/"
    return 0
}

install_configs() {
    local gid sample target
    gid="$(gid_of "$GROUP")"
    install -d -m 0750 -o 0 -g "$gid" "$ETC"
    for sample in "$REPO"/etc/*.conf; do
        target="$ETC/$(basename "$sample")"
        if [ -e "$target" ]; then
            say "kept $target (it exists; the new sample is $PREFIX/share/etc/$(basename "$sample"))"
            continue
        fi
        # The broker password lives here: readable by root and the agents group only.
        install -m 0640 -o 0 -g "$gid" "$sample" "$target"
        record "config $(sha256sum "$target" | cut -d' ' -f1) ${target#"$ROOT"}"
        say "installed $target"
    done
}

install_api_token() {
    # The API wants a bearer token (docs/security.md). The controller (user agents) reads
    # the hashes in $ETC/tokens; root's agentctl finds the secret in ~/.config/agents/token.
    local tokens="$ETC/tokens" secret="$ROOT/root/.config/agents/token" name
    if [ ! -e "$tokens" ]; then
        install -m 0600 -o "$(uid_of "$SERVICE_USER")" -g "$(gid_of "$GROUP")" /dev/null "$tokens"
        say "created $tokens (API token hashes)"
    fi
    [ -e "$secret" ] && { say "kept $secret (root's API token)"; return 0; }
    install -d -m 0700 "$(dirname "$secret")"
    name="root-$(date -u +%Y%m%d%H%M%S)"
    if (umask 077; "$VENV/bin/agents-controller" --config-file "$ETC/shared.conf" \
            --config-file "$ETC/controller.conf" token --tokens-file "$tokens" \
            add --role admin "$name" >"$secret"); then
        say "made admin API token $name for root: $secret (agentctl reads it there)"
    else
        rm -f "$secret"
        say "WARNING: no API token made; later: agents-controller token add --role admin NAME"
    fi
}

install_units() {
    mkdir -p "$UNIT_DIR"
    for unit in "${UNITS[@]}"; do
        install -m 0644 "$REPO/systemd/$unit" "$UNIT_DIR/$unit"
    done
    # State: /var/lib/agents must stay traversable (0755): with qemu:///system, QEMU runs
    # as libvirt-qemu and must reach the instance disks below it.
    install -d -m 0755 -o 0 -g 0 "$STATE" "$STATE/images" "$STATE/instances"
    if systemd_running; then
        systemctl daemon-reload
    fi
}

enable_controller() {
    # The controller works as installed (SQLite, loopback API): enable and start it. The
    # agents wait for the operator's host config.
    if systemd_running; then
        systemctl enable --now agents-controller.service \
            && say "enabled and started agents-controller" \
            || say "WARNING: agents-controller did not start: journalctl -u agents-controller"
    fi
}

install_broker_policy() {
    broker_policy_wanted || return 0
    if rabbitmqctl set_policy -p "$VHOST" --apply-to queues --priority 0 \
            "$POLICY" "$POLICY_PATTERN" "$POLICY_DEFINITION" >/dev/null; then
        recorded "policy $VHOST $POLICY" || record "policy $VHOST $POLICY"
        say "set RabbitMQ policy $POLICY on vhost $VHOST"
    else
        say "WARNING: could not set RabbitMQ policy $POLICY (is the broker up?); set it by hand:"
        say "  rabbitmqctl set_policy -p '$VHOST' --apply-to queues $POLICY '$POLICY_PATTERN' '$POLICY_DEFINITION'"
    fi
}

# ------------------------------------------------------------------ broker accounts, TLS

broker_accounts_wanted() {
    case "$BROKER_ACCOUNTS" in
        1) command -v rabbitmqctl >/dev/null || die "--broker-accounts: rabbitmqctl is not installed here"
           return 0 ;;
        0) return 1 ;;
    esac
    [ -z "$ROOT" ] && [ "$BROKER_POLICY" = 1 ] && command -v rabbitmqctl >/dev/null
}

install_broker_tls() {
    # The CA and the broker's certificate: the operator's, or made here once.
    local tls_dir="$ETC/tls" rdir="$ROOT/etc/rabbitmq/agents-tls" conf="$ROOT/etc/rabbitmq/conf.d/50-agents-tls.conf"
    install -d -m 0755 "$tls_dir"
    if [ -n "$TLS_CA" ]; then
        install -m 0644 "$TLS_CA" "$tls_dir/ca.pem"
    elif [ ! -e "$tls_dir/ca.pem" ]; then
        "$VENV/bin/agents-controller" certs make-ca "$tls_dir" >/dev/null
        "$VENV/bin/agents-controller" certs make-cert "$tls_dir" broker \
            --san 127.0.0.1 --san localhost --san "$(hostname -f 2>/dev/null || hostname)" >/dev/null
        say "made a CA and the broker's certificate in $tls_dir (ca.key stays there, 0600)"
    fi
    install -d -m 0750 "$rdir"
    local cert="${TLS_CERT:-$tls_dir/broker.pem}" key="${TLS_KEY:-$tls_dir/broker.key}" keygroup=0
    has_group rabbitmq && keygroup="$(gid_of rabbitmq)"
    install -m 0644 "$tls_dir/ca.pem" "$rdir/ca.pem"
    install -m 0644 "$cert" "$rdir/broker.pem"
    # the broker runs as rabbitmq: its group may read the key, nobody else
    install -m 0640 -o 0 -g "$keygroup" "$key" "$rdir/broker.key"
    chgrp "$keygroup" "$rdir"
    mkdir -p "$(dirname "$conf")"
    {
        echo "# written by agents' install.sh: TLS for the agents (docs/security.md)"
        echo "listeners.ssl.default = 127.0.0.1:$TLS_PORT"
        echo "ssl_options.cacertfile = /etc/rabbitmq/agents-tls/ca.pem"
        echo "ssl_options.certfile = /etc/rabbitmq/agents-tls/broker.pem"
        echo "ssl_options.keyfile = /etc/rabbitmq/agents-tls/broker.key"
        echo "ssl_options.verify = verify_none"
        echo "ssl_options.fail_if_no_peer_cert = false"
        if [ "$BROKER_PLAIN_OFF" = 1 ]; then
            echo "# no plain AMQP: every client must come over TLS"
            echo "listeners.tcp = none"
        fi
    } >"$conf"
    recorded "broker-tls-conf ${conf#"$ROOT"}" || record "broker-tls-conf ${conf#"$ROOT"}"
    say "wrote $conf: restart rabbitmq-server to open 127.0.0.1:$TLS_PORT (TLS)"
    local daemon
    for daemon in controller compute-agent l2-agent; do
        install -d -m 0700 "$ETC/$daemon.d"
        printf '# TLS to the broker: verify its certificate (docs/security.md)\n[messaging]\nssl_ca_file = %s\n' \
            "/etc/agents/tls/ca.pem" >"$ETC/$daemon.d/tls.conf"
        chmod 0600 "$ETC/$daemon.d/tls.conf"
    done
    chown -R "$(uid_of "$SERVICE_USER")" "$ETC/controller.d"
}

install_broker_accounts() {
    if ! broker_accounts_wanted; then
        if [ "$BROKER_ACCOUNTS" = auto ] && ! command -v rabbitmqctl >/dev/null; then
            say "no rabbitmqctl here: broker accounts not created (the daemons use shared.conf's);"
            say "  on the broker's machine: agents-controller broker-accounts add-host $(hostname -s) --out DIR"
            say "  then copy DIR/compute-agent.d and DIR/l2-agent.d into /etc/agents/ here (docs/security.md)"
        fi
        return 0
    fi
    [ "$BROKER_TLS" = 1 ] && install_broker_tls
    if [ -e "$ETC/controller.d/broker.conf" ]; then
        say "kept $ETC/controller.d/broker.conf (accounts exist; re-key: agents-controller broker-accounts setup)"
        return 0
    fi
    local broker=() out name
    [ "$BROKER_TLS" = 1 ] && broker=(--broker "127.0.0.1:$TLS_PORT")
    # The controller reads its file as user agents; the agents run as root.
    if ! out="$("$VENV/bin/agents-controller" --config-file "$ETC/shared.conf" \
            --config-file "$ETC/controller.conf" broker-accounts setup \
            --host "$(hostname -s)" --out "$ETC" --vhost "$VHOST" --prefix "$ACCOUNT_PREFIX" \
            --controller-user "$SERVICE_USER" "${broker[@]}")"; then
        say "WARNING: broker accounts not created (is the broker up?); later:"
        say "  agents-controller broker-accounts setup --host $(hostname -s)"
        return 0
    fi
    # the controller's file belongs to its user; a scratch root's users are not this
    # machine's, so the ids come from the root's own files
    chown -R "$(uid_of "$SERVICE_USER"):$(gid_of "$GROUP")" "$ETC/controller.d"
    echo "$out" | sed 's/^/install.sh: /'
    while read -r name; do
        recorded "broker-user $VHOST $name" || record "broker-user $VHOST $name"
    done < <(echo "$out" | sed -n 's/^account \([^:]*\):.*/\1/p')
}

do_install() {
    mkdir -p "$SHARE"
    touch "$MANIFEST"
    chmod 0644 "$MANIFEST"
    install_accounts
    install_venv
    install_share
    install_configs
    install_api_token
    install_units
    install_broker_policy
    install_broker_accounts
    enable_controller
    say "installed $("$VENV/bin/compute-agent" --version 2>/dev/null || echo agents) into ${ROOT:-/}"
    if [ -z "$ROOT" ]; then
        say "next: edit /etc/agents/*.conf, then: systemctl enable --now l2-agent compute-agent"
    fi
}

# ------------------------------------------------------------------------ uninstall

uninstall_units() {
    for unit in "${UNITS[@]}"; do
        if systemd_running; then
            systemctl disable --now "$unit" 2>/dev/null || true
        fi
        # `systemctl enable` made these; remove them also when systemd is not running.
        rm -f "$UNIT_DIR/multi-user.target.wants/$unit"
        rm -f "$UNIT_DIR/$unit"
        # Drop-ins are the operator's: kept unless --purge.
        [ "$PURGE" = 1 ] && rm -rf "$UNIT_DIR/$unit.d"
    done
    rmdir "$UNIT_DIR/multi-user.target.wants" 2>/dev/null || true
    if systemd_running; then
        systemctl daemon-reload
    fi
}

uninstall_scripts() {
    for script in "${SCRIPTS[@]}"; do
        local link="$ROOT/usr/local/bin/$script"
        if [ -L "$link" ] && [ "$(readlink "$link")" = "$PREFIX/venv/bin/$script" ]; then
            rm -f "$link"
        fi
    done
}

uninstall_configs() {
    local sum path
    if [ "$PURGE" = 1 ]; then
        rm -rf "$ETC"
        return
    fi
    [ -f "$MANIFEST" ] || return 0
    while read -r kind sum path; do
        [ "$kind" = config ] || continue
        [ -f "$ROOT$path" ] || continue
        if [ "$(sha256sum "$ROOT$path" | cut -d' ' -f1)" = "$sum" ]; then
            rm -f "$ROOT$path"
        else
            say "kept $ROOT$path (edited since install; --purge removes it)"
        fi
    done <"$MANIFEST"
    rmdir "$ETC" 2>/dev/null || true
}

uninstall_broker_policy() {
    [ -f "$MANIFEST" ] || return 0
    local vhost name
    while read -r kind vhost name; do
        [ "$kind" = policy ] || continue
        if command -v rabbitmqctl >/dev/null \
                && rabbitmqctl clear_policy -p "$vhost" "$name" </dev/null >/dev/null 2>&1; then
            say "cleared RabbitMQ policy $name on vhost $vhost"
        else
            say "WARNING: could not clear RabbitMQ policy $name on vhost $vhost"
        fi
    done <"$MANIFEST"
}

uninstall_broker_accounts() {
    # Accounts and the broker's TLS config outlive a plain uninstall (their files under
    # /etc/agents are configs); --purge removes what this script made.
    [ "$PURGE" = 1 ] && [ -f "$MANIFEST" ] || return 0
    local kind vhost name
    while read -r kind vhost name; do
        case "$kind" in
            broker-user)
                if command -v rabbitmqctl >/dev/null \
                        && rabbitmqctl --quiet delete_user "$name" </dev/null >/dev/null 2>&1; then
                    say "deleted broker account $name"
                fi ;;
            broker-tls-conf)
                rm -f "$ROOT$vhost"
                rm -rf "$ROOT/etc/rabbitmq/agents-tls"
                say "removed $ROOT$vhost (restart rabbitmq-server)" ;;
        esac
    done <"$MANIFEST"
}

uninstall_accounts() {
    # Users and groups outlive a plain uninstall: files they own may remain (kept
    # configs, state). --purge removes those this script created, users first.
    if [ "$PURGE" != 1 ] || [ ! -f "$MANIFEST" ]; then
        return 0
    fi
    local kind name
    while read -r kind name _; do
        if [ "$kind" = user ] && has_user "$name"; then
            userdel "${ACCOUNT_ARGS[@]}" "$name"
        fi
    done <"$MANIFEST"
    while read -r kind name _; do
        if [ "$kind" = group ] && has_group "$name"; then
            groupdel "${ACCOUNT_ARGS[@]}" "$name"
        fi
    done <"$MANIFEST"
}

do_uninstall() {
    uninstall_units
    uninstall_scripts
    uninstall_configs
    uninstall_broker_policy
    uninstall_broker_accounts
    uninstall_accounts
    if [ "$PURGE" = 1 ]; then
        rm -rf "$STATE"
        # root's API token (install_api_token); a plain uninstall keeps it and the hashes
        rm -f "$ROOT/root/.config/agents/token"
        rmdir "$ROOT/root/.config/agents" 2>/dev/null || true
    else
        rmdir "$STATE/images" "$STATE/instances" "$STATE" 2>/dev/null || true
        [ -d "$STATE" ] && say "kept $STATE (state and instance disks; --purge removes it)"
    fi
    if [ "$PURGE" = 1 ]; then
        rm -rf "$ROOT$PREFIX"
    else
        # The manifest stays, trimmed to the accounts: a later --purge still knows
        # which users and groups this script made.
        rm -rf "$VENV" "$SHARE" "$SOURCE_DIGEST"
        if [ -f "$MANIFEST" ]; then
            grep -E '^(user|group) ' "$MANIFEST" >"$MANIFEST.new" || true
            mv "$MANIFEST.new" "$MANIFEST"
        fi
    fi
    say "uninstalled from ${ROOT:-/}"
}

if [ "$ACTION" = install ]; then
    do_install
else
    do_uninstall
fi
