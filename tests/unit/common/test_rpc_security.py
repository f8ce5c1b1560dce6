"""common.rpc's broker-security helpers (pure): refusals named, hosts in routing keys,
TLS options, the dispatcher's refusals of versions and non-RPC methods."""

from __future__ import annotations

import ssl
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from common.cli import config_dir_files
from common.config import MessagingSettings
from common.rpc import _GuardedDispatcher, access_refused, routing_key_host, ssl_options

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


@pytest.mark.parametrize(
    ("text", "operation", "resource"),
    [
        (
            "Basic.publish: (403) ACCESS_REFUSED - access to topic 'vif_events.n1.info' in "
            "exchange 'agents' in vhost '/' refused for user 'l2-n2'",
            "write",
            "topic 'vif_events.n1.info' in exchange 'agents'",
        ),
        (
            "Queue.declare: (403) ACCESS_REFUSED - access to queue 'compute.n1' in vhost '/'"
            " refused for user 'l2-n2'",
            "configure",
            "queue 'compute.n1'",
        ),
        (
            "Basic.consume: (403) ACCESS_REFUSED - read access to queue 'x' in vhost '/'"
            " refused for user 'l2-n2'",
            "read",
            "queue 'x'",
        ),
    ],
)
def test_access_refused_names_user_operation_resource(
    text: str, operation: str, resource: str
) -> None:
    refused = access_refused(Exception(text))
    assert refused is not None
    assert refused.fields["user"] == "l2-n2"
    assert refused.fields["operation"] == operation
    assert refused.fields["resource"] == resource
    assert access_refused(Exception("Connection refused")) is None


def test_routing_key_host() -> None:
    assert routing_key_host("agents_events.node1.info", "agents_events") == "node1"
    assert routing_key_host("agents_events.node1.example.info", "agents_events") == (
        "node1.example"
    )
    assert routing_key_host("agents_events.info", "agents_events") is None
    assert routing_key_host("vif_events.n.error", "vif_events") == "n"
    assert routing_key_host("other.n.info", "agents_events") is None


def test_ssl_options_require_the_brokers_certificate(tmp_path: Path) -> None:
    assert ssl_options(MessagingSettings()) is False
    ca = tmp_path / "ca.pem"
    ca.write_text(PEM)
    opts = ssl_options(MessagingSettings(ssl_ca_file=ca))
    assert isinstance(opts, dict)
    assert opts["cert_reqs"] == ssl.CERT_REQUIRED
    assert opts["ca_certs"] == str(ca)
    assert "server_hostname" in opts and opts["server_hostname"] is None  # kombu: each URL's
    with pytest.raises(ValueError, match="go together"):
        MessagingSettings(ssl_ca_file=ca, ssl_cert_file=ca)


class Endpoint:
    RPC_METHODS = frozenset({"ping"})

    def ping(self, ctxt: Any) -> str:
        return "pong"

    def drain(self, grace: float) -> None:  # public, but not for the wire
        raise AssertionError("drain must not be reachable over RPC")


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        ({"method": "drain", "args": {}}, "unknown method"),
        ({"method": "ping", "args": {}, "version": "x"}, "MAJOR.MINOR"),
        ({"method": "ping", "args": {}, "version": None}, "MAJOR.MINOR"),
        ({"method": "ping", "args": {}, "version": ""}, "MAJOR.MINOR"),
    ],
)
def test_dispatcher_refuses_internal_methods_and_bad_versions(
    message: dict[str, Any], problem: str
) -> None:
    from oslo_messaging.rpc import dispatcher as om_dispatcher

    from common.rpc import ModelSerializer

    d = _GuardedDispatcher([Endpoint()], ModelSerializer(), None)
    with pytest.raises(om_dispatcher.ExpectedException) as err:
        d.dispatch(SimpleNamespace(message=message, ctxt={}))
    assert problem in str(err.value.exc_info[1])


def test_config_dir_files(tmp_path: Path) -> None:
    assert config_dir_files(str(tmp_path / "missing")) == []
    (tmp_path / "b.conf").write_text("")
    (tmp_path / "a.conf").write_text("")
    (tmp_path / "note.txt").write_text("")
    assert config_dir_files(str(tmp_path)) == [str(tmp_path / "a.conf"), str(tmp_path / "b.conf")]
