"""The daemons' shared command line: flags, default files, --host over the files."""

from __future__ import annotations

from pathlib import Path

import pytest

from common import __version__
from common.cli import config_files, daemon_parser, load_daemon_config
from common.config import BaseConfig
from common.errors import ConfigFileError

ETC = Path(__file__).resolve().parents[3] / "etc"


def test_repeatable_config_files_and_host() -> None:
    args = daemon_parser("l2-agent", "d").parse_args(
        ["--config-file", "a", "--config-file", "b", "--host", "node1"]
    )
    assert config_files("l2-agent", args) == ["a", "b"] and args.host == "node1"


def test_defaults_are_the_etc_agents_files() -> None:
    args = daemon_parser("compute-agent", "d").parse_args([])
    assert config_files("compute-agent", args) == [
        "/etc/agents/shared.conf",
        "/etc/agents/compute-agent.conf",
    ]


def test_version_exits_zero_naming_program(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        daemon_parser("compute-agent", "d").parse_args(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"compute-agent {__version__}"


def test_host_flag_wins_over_file() -> None:
    args = daemon_parser("l2-agent", "d").parse_args(
        ["--config-file", str(ETC / "shared.conf"), "--host", "cli-host"]
    )
    assert load_daemon_config(BaseConfig, "l2-agent", args).DEFAULT.host == "cli-host"


def test_missing_default_file_is_named(tmp_path: Path) -> None:
    args = daemon_parser("l2-agent", "d").parse_args(["--config-file", str(tmp_path / "x.conf")])
    with pytest.raises(ConfigFileError, match="x.conf"):
        load_daemon_config(BaseConfig, "l2-agent", args)
