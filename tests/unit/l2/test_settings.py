from __future__ import annotations

from pathlib import Path

import pytest

from agents.l2.settings import L2Config
from common.config import load
from common.errors import ConfigError, ConfigSectionError

REPO = Path(__file__).resolve().parents[3]


def conf(tmp_path: Path, l2: str) -> Path:
    path = tmp_path / "l2.conf"
    path.write_text(f"[l2]\n{l2}\n")
    return path


def test_sample_configs_load() -> None:
    config = load(L2Config, [REPO / "etc" / "shared.conf", REPO / "etc" / "l2-agent.conf"])
    assert config.l2.physical_interface_mappings == {"physnet1": "eth1"}
    assert config.l2.namespace == ""


def test_mappings_peers_and_namespace_parse(tmp_path: Path) -> None:
    config = load(
        L2Config,
        [
            conf(
                tmp_path,
                "namespace = node1\n"
                "physical_interface_mappings = physnet1:eth1, physnet2 : veth9\n"
                "vxlan_local_ip = 10.0.0.1\nvxlan_peers = 10.0.0.2, 10.0.0.3",
            )
        ],
    )
    assert config.l2.physical_interface_mappings == {"physnet1": "eth1", "physnet2": "veth9"}
    assert [str(p) for p in config.l2.vxlan_peers] == ["10.0.0.2", "10.0.0.3"]
    assert config.l2.namespace == "node1"


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("physical_interface_mappings = physnet1", "physical_interface_mappings"),
        (
            "physical_interface_mappings = physnet1:averyveryverylongdevice",
            "physical_interface_mappings",
        ),
        ("vxlan_peers = 10.0.0.2, nope", "vxlan_peers"),
        ("namespace = bad/ns", "namespace"),
        ("vxlan_port = 70000", "vxlan_port"),
    ],
)
def test_bad_values_name_file_key_and_value(tmp_path: Path, line: str, key: str) -> None:
    path = conf(tmp_path, line)
    with pytest.raises((ConfigError, ConfigSectionError)) as err:
        load(L2Config, [path])
    text = str(err.value)
    assert str(path) in text and "[l2]" in text
    if isinstance(err.value, ConfigError):
        assert key in text


def test_group_must_be_multicast_and_exclusive_with_peers(tmp_path: Path) -> None:
    with pytest.raises(ConfigSectionError, match="not a multicast"):
        load(L2Config, [conf(tmp_path, "vxlan_group = 10.0.0.1")])
    with pytest.raises(ConfigSectionError, match="not both"):
        load(L2Config, [conf(tmp_path, "vxlan_group = 239.1.1.1\nvxlan_peers = 10.0.0.2")])
