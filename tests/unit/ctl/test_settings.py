"""agentctl's config: which files, [agentctl] keys, $AGENTS_URL, errors naming the culprit."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.ctl.errors import ConfigError, ConfigFileError
from agents.ctl.settings import CtlSettings, config_files, load_settings
from tests.unit.ctl.conftest import RunCli

REPO = Path(__file__).resolve().parents[3]


def conf(tmp_path: Path, text: str, name: str = "agentctl.conf") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_config_files_precedence() -> None:
    assert config_files(["a", "b"], {"AGENTS_CONFIG": "x:y"}) == ["a", "b"]
    assert config_files(None, {"AGENTS_CONFIG": "x::y"}) == ["x", "y"]


def test_defaults_later_files_and_the_environment(tmp_path: Path) -> None:
    assert load_settings([], {}) == CtlSettings()
    assert CtlSettings().url == "http://127.0.0.1:8780"
    first = conf(tmp_path, "[agentctl]\nurl = http://c1:8780/\ncall_timeout = 5\n", "1.conf")
    second = conf(tmp_path, "[agentctl]\ncall_timeout = 7\nwait_timeout =\n", "2.conf")
    s = load_settings([first, second], {})
    assert (s.url, s.call_timeout, s.wait_timeout) == ("http://c1:8780", 7.0, 300.0)
    s = load_settings([first], {"AGENTS_URL": "https://ctl.example:443/agents/"})
    assert s.url == "https://ctl.example:443/agents"


def test_other_sections_of_shared_conf_are_ignored(tmp_path: Path) -> None:
    path = conf(
        tmp_path,
        "[DEFAULT]\nhost = node1\n[messaging]\ntransport_url = rabbit://x/\n"
        "[flavor:m1.tiny]\nvcpus = 1\n[agentctl]\nconnect_timeout = 0.5\n",
    )
    assert load_settings([path], {}).connect_timeout == 0.5


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("[agentctl]\ndiscovery_window = 1\n", "discovery_window", "1"),
        ("[agentctl]\ncall_timeout = soon\n", "call_timeout", "soon"),
        ("[agentctl]\nconnect_timeout = 0\n", "connect_timeout", "0"),
        ("[agentctl]\nwait_timeout = nan\n", "wait_timeout", "nan"),
        ("[agentctl]\nurl = rabbit://127.0.0.1:5672/\n", "url", "rabbit://127.0.0.1:5672/"),
        ("[agentctl]\nurl = http://h:99999\n", "url", "http://h:99999"),
        ("[agentctl]\nurl = http://a:1,,http://b:2\n", "url", "http://a:1,,http://b:2"),
        ("[agentctl]\nurl = http://a:1,ftp://b\n", "url", "http://a:1,ftp://b"),
        ("[agentctl]\nurl = http://a:1,http://a:1/\n", "url", "http://a:1,http://a:1/"),
    ],
)
def test_a_bad_key_names_file_section_key_and_value(
    tmp_path: Path, text: str, key: str, value: str
) -> None:
    path = conf(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_settings([path], {})
    message = str(err.value)
    assert message.startswith(f"{path}: [agentctl] {key} = {value!r}: "), message


def test_several_controller_urls(tmp_path: Path) -> None:
    s = load_settings([], {"AGENTS_URL": "http://c1:8780/, https://c2:8780/api"})
    assert s.url == "http://c1:8780,https://c2:8780/api"
    assert s.urls == ["http://c1:8780", "https://c2:8780/api"]
    with pytest.raises(ConfigError, match=r"'ftp://c2' must start with http://"):
        load_settings([], {"AGENTS_URL": "http://c1:8780,ftp://c2"})


def test_a_bad_agents_url_is_named_as_such() -> None:
    with pytest.raises(ConfigError, match=r"^\$AGENTS_URL: \[agentctl\] url = 'nope'"):
        load_settings([], {"AGENTS_URL": "nope"})


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="nope.conf: No such file"):
        load_settings([str(tmp_path / "nope.conf")], {})
    with pytest.raises(ConfigFileError, match="broken.conf"):
        load_settings([conf(tmp_path, "no section header\n", "broken.conf")], {})


def test_config_errors_exit_2_without_a_traceback(tmp_path: Path, agentctl: RunCli) -> None:
    path = conf(tmp_path, "[agentctl]\ncall_timeout = soon\n")
    run = agentctl("--config-file", path, "list")
    assert run.code == 2
    assert path in run.err and "call_timeout" in run.err and "soon" in run.err
    assert "Traceback" not in run.err
    run = agentctl("--json", "agents", env={"AGENTS_CONFIG": str(tmp_path / "nope.conf")})
    assert run.code == 2 and "nope.conf" in run.err and '"code": "config.invalid"' in run.out


def test_the_sample_config_files_load_together() -> None:
    s = load_settings([str(REPO / "etc" / "shared.conf"), str(REPO / "etc" / "agentctl.conf")], {})
    assert s == CtlSettings()  # the sample spells out the defaults
