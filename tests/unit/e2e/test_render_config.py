"""render_config(): how the e2e lab and the quickstart turn etc/ samples into configs.

Pure text in, text out. The agents' own loader reads the result, so these tests also
load it back with common.config and check the values an agent would see.
"""

from __future__ import annotations

from pathlib import Path

from agents.l2.settings import L2Config
from common.config import load
from tests.e2e.lab import render_config, unit_command
from tests.hosts import REPO

SAMPLE = """\
# header comment
[DEFAULT]
# Host name this agent serves.
#host = node1
log_level = INFO

[l2]
# mappings
physical_interface_mappings = physnet1:eth1
vxlan_peers =

[metrics]
listen = 127.0.0.1:9102
"""


def test_active_key_is_replaced_in_place_and_comments_stay() -> None:
    out = render_config(SAMPLE, {"l2": {"physical_interface_mappings": "physnet1:phys1"}})
    assert "physical_interface_mappings = physnet1:phys1" in out
    assert "physnet1:eth1" not in out
    assert out.splitlines()[:4] == SAMPLE.splitlines()[:4]
    assert out.count("# mappings") == 1


def test_commented_example_is_uncommented_with_the_value() -> None:
    out = render_config(SAMPLE, {"DEFAULT": {"host": "node7"}})
    lines = out.splitlines()
    assert "host = node7" in lines
    assert "#host = node1" not in lines
    assert lines.index("host = node7") < lines.index("log_level = INFO")


def test_key_the_sample_lacks_goes_at_the_end_of_its_section() -> None:
    out = render_config(SAMPLE, {"DEFAULT": {"state_dir": "/tmp/x"}})
    lines = out.splitlines()
    assert lines.index("state_dir = /tmp/x") == lines.index("log_level = INFO") + 1
    assert lines.index("state_dir = /tmp/x") < lines.index("[l2]")


def test_missing_section_is_appended() -> None:
    out = render_config(SAMPLE, {"compute": {"domain_type": "qemu"}})
    assert out.rstrip().endswith("[compute]\ndomain_type = qemu")


def test_same_key_in_another_section_is_left_alone() -> None:
    out = render_config(SAMPLE, {"metrics": {"listen": "127.0.0.1:9101"}})
    assert "listen = 127.0.0.1:9101" in out
    assert "log_level = INFO" in out and "vxlan_peers =" in out


def test_rendered_sample_loads_with_the_values_set(tmp_path: Path) -> None:
    shared = tmp_path / "shared.conf"
    shared.write_text((REPO / "etc" / "shared.conf").read_text())
    l2 = tmp_path / "l2-agent.conf"
    l2.write_text(
        render_config(
            (REPO / "etc" / "l2-agent.conf").read_text(),
            {
                "DEFAULT": {"host": "node1-abc", "state_dir": tmp_path},
                "l2": {"vxlan_local_ip": "172.31.255.1", "vxlan_peers": "172.31.255.2"},
            },
        )
    )
    config = load(L2Config, [shared, l2])
    assert config.DEFAULT.host == "node1-abc"
    assert [str(p) for p in config.l2.vxlan_peers] == ["172.31.255.2"]
    assert str(config.l2.vxlan_local_ip) == "172.31.255.1"


def test_agents_start_with_the_systemd_units_arguments(tmp_path: Path) -> None:
    for agent in ("compute-agent", "l2-agent"):
        cmd = unit_command(agent, tmp_path)
        assert Path(cmd[0]).name == agent
        assert cmd[1:] == [
            "--config-file",
            f"{tmp_path}/shared.conf",
            "--config-file",
            f"{tmp_path}/{agent}.conf",
        ]
