"""BrokerCluster's layout without starting anything: names, ports, URLs, checked input."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.lab.broker import BrokerCluster, broker_ports
from agents.lab.procs import LabError


def test_layout_of_a_three_node_cluster(tmp_path: Path) -> None:
    c = BrokerCluster("demo", nodes=3, base_port=5681, state_dir=tmp_path)
    assert [n.name for n in c.nodes] == ["demo-1@localhost", "demo-2@localhost", "demo-3@localhost"]
    assert [(n.port, n.dist_port, n.tls_port) for n in c.nodes] == [
        (5681, 7681, None),
        (5682, 7682, None),
        (5683, 7683, None),
    ]
    assert c.transport_url == (
        "rabbit://guest:guest@127.0.0.1:5681,guest:guest@127.0.0.1:5682,guest:guest@127.0.0.1:5683/"
    )
    assert broker_ports(c.transport_url) == [5681, 5682, 5683]
    assert c.node(2).url == "rabbit://guest:guest@127.0.0.1:5682/"
    assert c.dir == tmp_path / "demo" and not c.dir.exists()  # nothing made yet


def test_tls_adds_a_listener_per_node(tmp_path: Path) -> None:
    files = []
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("-----BEGIN X-----\n")
        files.append(tmp_path / name)
    c = BrokerCluster(
        "t", nodes=2, base_port=6000, tls=(files[0], files[1], files[2]), state_dir=tmp_path
    )
    assert [n.tls_port for n in c.nodes] == [7000, 7001]


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"name": "Bad_Name"}, "cluster name 'Bad_Name'"),
        ({"nodes": 0}, "nodes 0"),
        ({"nodes": 10}, "nodes 10"),
        ({"base_port": 80}, "base_port 80"),
        ({"base_port": 30766}, "base_port 30766: must be 1024-30764"),
        ({"tls": ("/nope/ca", "/nope/c", "/nope/k")}, "tls ca_file '/nope/ca'"),
    ],
)
def test_bad_input_is_named(tmp_path: Path, kwargs: dict[str, object], problem: str) -> None:
    args: dict[str, object] = {"name": "ok", "state_dir": tmp_path, **kwargs}
    with pytest.raises(LabError, match=problem):
        BrokerCluster(**args)  # type: ignore[arg-type]
    with pytest.raises(LabError, match="node 4: the cluster has nodes 1-3"):
        BrokerCluster("ok", state_dir=tmp_path).node(4)
