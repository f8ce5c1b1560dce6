"""agents.lab.configs: how the lab (tests, benchmarks, quickstart) turns etc/ samples into
configs and systemd units into command lines.

Pure text in, text out. The daemons' own loaders read the result, so these tests also
load it back and check the values a daemon would see.
"""

from __future__ import annotations

from pathlib import Path

from agents.controller.settings import ControllerConfig, ControllerSettings
from agents.l2.settings import L2Config
from agents.lab.configs import render_config, unit_command
from agents.lab.procs import REPO
from common.config import load

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


def test_daemons_start_with_the_systemd_units_arguments(tmp_path: Path) -> None:
    for daemon, conf in (
        ("compute-agent", "compute-agent"),
        ("l2-agent", "l2-agent"),
        ("agents-controller", "controller"),
    ):
        cmd = unit_command(daemon, tmp_path)
        assert Path(cmd[0]).name == daemon
        assert cmd[1:] == [
            "--config-file",
            f"{tmp_path}/shared.conf",
            "--config-file",
            f"{tmp_path}/{conf}.conf",
            "--config-dir",
            f"{tmp_path}/{conf}.d",
        ]


def test_controller_sample_names_every_setting_and_loads(tmp_path: Path) -> None:
    text = (REPO / "etc" / "controller.conf").read_text()
    lines = text.splitlines()
    for key in ControllerSettings.model_fields:
        at = next((i for i, ln in enumerate(lines) if ln.startswith(f"{key} =")), None)
        assert at is not None, f"etc/controller.conf does not set {key}"
        assert lines[at - 1].startswith("#"), f"{key} has no comment above it"
    shared = tmp_path / "shared.conf"
    shared.write_text((REPO / "etc" / "shared.conf").read_text())
    conf = tmp_path / "controller.conf"
    conf.write_text(text)
    as_sample = load(ControllerConfig, [shared, conf])
    assert as_sample.controller == ControllerSettings()  # the sample shows the defaults
    conf.write_text(
        render_config(
            text,
            {
                "DEFAULT": {"state_dir": tmp_path},
                "controller": {"listen": "127.0.0.1:18780", "events_queue": "lab-q"},
            },
        )
    )
    rendered = load(ControllerConfig, [shared, conf])
    assert rendered.controller.listen == "127.0.0.1:18780"
    assert rendered.controller.events_queue == "lab-q"
    assert rendered.database_url() == f"sqlite:///{tmp_path}/controller/controller.sqlite"
