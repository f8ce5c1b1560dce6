"""TLS to the broker, for real: a one-node RabbitMQ (agents/lab/broker.py) with an AMQPS
listener on loopback, certificates made by `agents-controller certs`, and the daemons'
code paths (oslo RPC, the kombu notifiers) connecting with `[messaging] ssl_ca_file`.

A daemon given the wrong CA refuses the broker at start with one line naming the CA file
and the broker's address (no traceback, no silent retrying); so does one whose broker
certificate names another host.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agents.lab.broker import BrokerCluster, free_base_port
from agents.lab.procs import console_script, unique
from common.config import MessagingSettings
from common.errors import BrokerTlsRefused, BrokerUnreachable
from common.rpc import COMPUTE_TOPIC, Messaging, probe_broker


def certs(*args: str) -> None:
    subprocess.run([console_script("agents-controller"), "certs", *args], check=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    certs("make-ca", str(d / "ca"))
    certs("make-cert", str(d / "ca"), "broker", "--san", "127.0.0.1", "--san", "localhost")
    certs("make-ca", str(d / "other"))  # a CA that did not sign the broker's certificate
    certs("make-cert", str(d / "ca"), "elsewhere", "--san", "broker.example")
    return d


@pytest.fixture(scope="module")
def tls_broker(pki: Path) -> Iterator[BrokerCluster]:
    ca = pki / "ca"
    with BrokerCluster(
        unique("etls-"),
        nodes=1,
        base_port=free_base_port(1),
        tls=(ca / "ca.pem", ca / "broker.pem", ca / "broker.key"),
        plain=False,  # as install --broker-plain-off: TLS clients only
    ) as cluster:
        yield cluster


def test_plain_tcp_can_be_turned_off(tls_broker: BrokerCluster, pki: Path) -> None:
    """The node serves AMQPS only: a plain AMQP client finds nothing on the port the
    node would use for it, while the TLS listener answers (and the tests below talk
    through it)."""
    node = tls_broker.node(1)
    assert node.tls_port is not None
    with socket.create_connection(("127.0.0.1", node.tls_port), 2):
        pass
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", node.port), 2).close()
    conf = (node.dir / "rabbitmq.conf").read_text()
    assert "listeners.tcp = none" in conf and "listeners.tcp.default" not in conf


def settings(cluster: BrokerCluster, ca_file: Path, **kw: Any) -> MessagingSettings:
    port = cluster.node(1).tls_port
    return MessagingSettings(
        transport_url=f"rabbit://guest:guest@127.0.0.1:{port}/",
        control_exchange=unique("tls-"),
        ssl_ca_file=ca_file,
        rpc_timeout=5,
        send_retry=1,
        **kw,
    )


class Pinger:
    def ping(self, ctxt: dict[str, Any]) -> str:
        return "pong"


def test_daemons_talk_over_tls_and_verify_the_broker(tls_broker: BrokerCluster, pki: Path) -> None:
    s = settings(tls_broker, pki / "ca" / "ca.pem")
    probe_broker(s)  # kombu with the CA
    m = Messaging(s)
    m.verify_tls()
    server = m.rpc_server(COMPUTE_TOPIC, "tlsnode", [Pinger()])
    try:
        server.start()  # oslo with [oslo_messaging_rabbit] ssl
        time.sleep(0.3)
        assert m.rpc_client(COMPUTE_TOPIC, "tlsnode").call("ping") == "pong"
        m.notifier("tls-test", "tls_events").info("agent.heartbeat", _beat())
    finally:
        server.stop()
        server.wait()
        m.close()


def _beat() -> Any:
    from datetime import UTC, datetime

    from common.messages import AgentHeartbeat

    return AgentHeartbeat(
        host="tlsnode", kind="l2", version="t", started_at=datetime.now(UTC), uptime_s=1
    )


def test_wrong_ca_is_refused_with_a_named_error(tls_broker: BrokerCluster, pki: Path) -> None:
    wrong = pki / "other" / "ca.pem"
    s = settings(tls_broker, wrong)
    with pytest.raises(BrokerTlsRefused) as refused:
        Messaging(s).verify_tls()
    text = str(refused.value)
    assert str(wrong) in text
    assert f"127.0.0.1:{tls_broker.node(1).tls_port}" in text
    assert "not trusted" in text
    with pytest.raises(BrokerUnreachable, match=str(wrong)):
        probe_broker(s)


def test_a_daemon_with_the_wrong_ca_exits_naming_it(
    tls_broker: BrokerCluster, pki: Path, tmp_path: Path
) -> None:
    """The l2-agent process (its real main) with the wrong CA: exit 1 within seconds,
    one error line naming the CA file and the broker, no traceback."""
    wrong = pki / "other" / "ca.pem"
    port = tls_broker.node(1).tls_port
    conf = tmp_path / "l2.conf"
    conf.write_text(
        "[DEFAULT]\nhost = tlsnode\nlog_format = json\n"
        f"state_dir = {tmp_path}\n"
        "[messaging]\n"
        f"transport_url = rabbit://guest:guest@127.0.0.1:{port}/\n"
        f"control_exchange = {unique('tls-')}\n"
        f"ssl_ca_file = {wrong}\n"
    )
    started = time.monotonic()
    result = subprocess.run(
        [console_script("l2-agent"), "--config-file", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert time.monotonic() - started < 30
    assert str(wrong) in out and f"127.0.0.1:{port}" in out, out
    assert "Traceback" not in out, out


def test_a_certificate_for_another_host_is_refused(pki: Path) -> None:
    ca = pki / "ca"
    with (
        BrokerCluster(
            unique("etlh-"),
            nodes=1,
            base_port=free_base_port(1),
            tls=(ca / "ca.pem", ca / "elsewhere.pem", ca / "elsewhere.key"),
        ) as cluster,
        pytest.raises(BrokerTlsRefused, match="127.0.0.1"),
    ):
        Messaging(settings(cluster, ca / "ca.pem")).verify_tls()


def test_ssl_files_are_checked_when_the_config_is_loaded(tmp_path: Path) -> None:
    from common.config import BaseConfig, load
    from common.errors import ConfigError

    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("hello\n")
    for value, problem in ((tmp_path / "missing.pem", "cannot read"), (not_pem, "not a PEM")):
        conf = tmp_path / "x.conf"
        conf.write_text(f"[messaging]\nssl_ca_file = {value}\n")
        with pytest.raises(ConfigError, match=problem) as err:
            load(BaseConfig, [conf])
        assert "ssl_ca_file" in str(err.value) and str(value) in str(err.value)
