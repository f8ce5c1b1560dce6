"""tools/install.sh with broker accounts and broker TLS, into a scratch root.

Accounts go to the real broker under a unique name prefix (RabbitMQ's users are global)
and a vhost the test creates; `--uninstall --purge` deletes them, and the test deletes
whatever is left even after a failure. The broker itself is not reconfigured: its TLS
snippet lands in the scratch root's /etc/rabbitmq.
"""

from __future__ import annotations

import configparser
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.functional.systemd.test_install import (
    install,
    pytestmark,  # noqa: F401  # root and rabbitmqctl, as there
    scratch_root,
    snapshot,
    vhost,  # noqa: F401  # the fixture
)


def broker_users(prefix: str) -> set[str]:
    out = subprocess.run(
        ["rabbitmqctl", "--quiet", "list_users", "--no-table-headers"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return {ln.split("\t")[0] for ln in out.splitlines() if ln.startswith(prefix)}


@pytest.fixture
def prefix() -> Iterator[str]:
    p = f"ti{uuid.uuid4().hex[:8]}-"
    yield p
    for user in broker_users(p):
        subprocess.run(["rabbitmqctl", "delete_user", user], capture_output=True, timeout=60)


def messaging_of(path: Path) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(path)
    return dict(parser["messaging"])


def test_install_makes_accounts_and_tls(tmp_path: Path, vhost: str, prefix: str) -> None:  # noqa: F811
    root = scratch_root(tmp_path / "root")
    checkout = snapshot(tmp_path / "checkout")
    etc = root / "etc/agents"
    try:
        out = install(
            checkout, root, "--vhost", vhost, "--broker-accounts", "--account-prefix", prefix,
            "--broker-tls", "--broker-plain-off",
        )  # fmt: skip
        host = subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()
        users = broker_users(prefix)
        assert users == {f"{prefix}controller", f"{prefix}compute-{host}", f"{prefix}l2-{host}"}
        for daemon, user in (
            ("controller", f"{prefix}controller"),
            ("compute-agent", f"{prefix}compute-{host}"),
            ("l2-agent", f"{prefix}l2-{host}"),
        ):
            d = etc / f"{daemon}.d"
            assert stat.S_IMODE(d.stat().st_mode) == 0o700
            conf = d / "broker.conf"
            assert stat.S_IMODE(conf.stat().st_mode) == 0o600
            url = urlsplit(messaging_of(conf)["transport_url"])
            assert url.username == user
            assert url.port == 5671  # the TLS listener
            assert url.password and url.password not in out.stdout + out.stderr
            assert messaging_of(d / "tls.conf")["ssl_ca_file"] == "/etc/agents/tls/ca.pem"
        owner = (etc / "controller.d/broker.conf").stat().st_uid
        agents_uid = next(
            int(ln.split(":")[2])
            for ln in (root / "etc/passwd").read_text().splitlines()
            if ln.startswith("agents:")
        )
        assert owner == agents_uid
        assert (etc / "compute-agent.d/broker.conf").stat().st_uid == 0
        snippet = (root / "etc/rabbitmq/conf.d/50-agents-tls.conf").read_text()
        assert "listeners.ssl.default = 127.0.0.1:5671" in snippet
        assert "listeners.tcp = none" in snippet
        verify = subprocess.run(
            ["openssl", "verify", "-CAfile", str(etc / "tls/ca.pem"),
             str(root / "etc/rabbitmq/agents-tls/broker.pem")],
            capture_output=True, text=True,
        )  # fmt: skip
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert stat.S_IMODE((root / "etc/rabbitmq/agents-tls/broker.key").stat().st_mode) == 0o640

        again = install(checkout, root, "--vhost", vhost, "--broker-accounts",
                        "--account-prefix", prefix, "--broker-tls")  # fmt: skip
        assert "kept" in again.stdout and broker_users(prefix) == users

        install(checkout, root, "--uninstall", "--purge")
        assert broker_users(prefix) == set()
        assert not (root / "etc/rabbitmq/conf.d/50-agents-tls.conf").exists()
    finally:
        subprocess.run(
            ["bash", str(checkout / "tools/install.sh"), "--root", str(root),
             "--uninstall", "--purge"],
            capture_output=True, timeout=600,
        )  # fmt: skip
