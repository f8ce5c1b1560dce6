"""The command line without a broker: parsing, help, exit codes, config errors, completion."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pytest

from agents.ctl import cli
from agents.ctl import settings as cli_settings
from agents.ctl.errors import AgentDown, NetworkExhausted, UnknownChoice
from agents.ctl.parser import build_parser
from agents.ctl.settings import CtlSettings, config_files, state_dir
from common.errors import (
    BrokerUnreachable,
    ConfigError,
    InvalidInput,
    NoAgentForHost,
    RemoteCallTimeout,
)

COMMANDS = [
    ["send"],
    ["send", "build"],
    ["send", "delete"],
    ["send", "reboot"],
    ["list"],
    ["show"],
    ["console-log"],
    ["ports"],
    ["watch"],
    ["agents"],
    ["completion"],
]


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_examples(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main([*command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "agentctl " in text
    assert "exit codes:" in text


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["send", "build"])  # --host is required
    assert exit_.value.code == cli.EXIT_USAGE
    assert "--host" in capsys.readouterr().err


def test_json_and_debug_are_accepted_before_and_after_the_command() -> None:
    parser = build_parser()
    assert parser.parse_args(["--json", "list"]).json is True
    assert parser.parse_args(["list", "--json"]).json is True
    assert parser.parse_args(["list"]).json is False
    assert parser.parse_args(["send", "build", "--host", "h", "--debug"]).debug is True


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidInput(field="--host", value="x", problem="p"), 2),
        (UnknownChoice(field="flavor", value="x", valid=["a"]), 2),
        (ConfigError(file="f", section="s", key="k", value="v", problem="p"), 2),
        (BrokerUnreachable(url="u", problem="p"), 3),
        (NetworkExhausted(network="n", start="a", end="b", wanted=1), 1),
        (RemoteCallTimeout(kind="k", host="h", method="m", timeout=1), 4),
        (NoAgentForHost(kind="k", host="h", problem="p"), 5),
        (AgentDown(kind="k", host="h", problem="p"), 5),
    ],
)
def test_exit_codes(error: Exception, code: int) -> None:
    assert cli.exit_code(error) == code  # type: ignore[arg-type]


def test_bad_config_names_file_key_and_value_and_exits_2(tmp_path: Path) -> None:
    conf = tmp_path / "agentctl.conf"
    conf.write_text("[agentctl]\ndiscovery_window = soon\n")
    code, _, err = run("--config-file", str(conf), "list")
    assert code == 2, err
    assert str(conf) in err and "discovery_window" in err and "soon" in err
    assert "Traceback" not in err


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    code, _, err = run("--config-file", str(tmp_path / "nope.conf"), "agents")
    assert code == 2 and "nope.conf" in err


def test_bad_input_is_refused_before_the_broker_with_json(tmp_path: Path) -> None:
    # the broker URL points at a closed port: a usage error must come first, and fast
    conf = tmp_path / "c.conf"
    conf.write_text(
        "[messaging]\ntransport_url = rabbit://guest:guest@127.0.0.1:1/\n"
        "[flavor:m1.tiny]\nvcpus = 1\nmemory_mb = 128\n"
    )
    code, out, err = run(
        "--json", "--config-file", str(conf), "send", "build", "--host", "h1", "--flavor", "big"
    )
    assert code == 2
    assert "unknown flavor 'big'; valid: m1.tiny" in err
    assert '"exit_code": 2' in out


def test_config_files_precedence(tmp_path: Path) -> None:
    assert config_files(["a", "b"], {"AGENTS_CONFIG": "x:y"}) == ["a", "b"]
    assert config_files(None, {"AGENTS_CONFIG": "x::y"}) == ["x", "y"]
    settings = CtlSettings()
    assert state_dir(settings, {"XDG_STATE_HOME": "/s"}) == Path("/s/agentctl")
    assert state_dir(settings, {"HOME": "/home/u"}) == Path("/home/u/.local/state/agentctl")
    assert state_dir(CtlSettings(state_dir=tmp_path), {}) == tmp_path


def test_completion_script_is_valid_bash_and_completes_commands(tmp_path: Path) -> None:
    code, script, _ = run("completion", "bash")
    assert code == 0 and "complete -F _agentctl agentctl" in script
    bash = shutil.which("bash")
    assert bash is not None
    probe = tmp_path / "probe.sh"

    def complete(*words: str) -> set[str]:
        probe.write_text(
            script
            + f"COMP_WORDS=(agentctl {' '.join(words)}); COMP_CWORD={len(words)}; _agentctl; "
            + 'printf "%s\\n" "${COMPREPLY[@]}"\n'
        )
        done = subprocess.run([bash, str(probe)], capture_output=True, text=True, check=True)
        return set(done.stdout.split())

    assert {"send", "list", "watch", "agents", "console-log"} <= complete("")
    assert complete("send", "") >= {"build", "delete", "reboot"}
    assert "--count" in complete("send", "build", "--")
    assert "--hard" in complete("send", "reboot", "--h")
    assert "bash" in complete("completion", "")
    # values come from `agentctl completion flavors|networks|hosts`, run at completion time
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "agentctl").write_text(
        '#!/bin/sh\n[ "$2" = flavors ] && printf "m1.tiny\\nm1.small\\n"\n'
    )
    (fake / "agentctl").chmod(0o755)
    probe.write_text(
        f"PATH={fake}:$PATH\n"
        + script
        + "COMP_WORDS=(agentctl send build --flavor m1.s); COMP_CWORD=4; _agentctl; "
        + 'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run([bash, str(probe)], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["m1.small"]


def test_completion_words_come_from_config_and_agent_record(tmp_path: Path) -> None:
    from agents.ctl.seen import SeenStore, merge
    from common.messages import AgentHeartbeat, utcnow

    conf = tmp_path / "c.conf"
    conf.write_text(
        "[messaging]\ncontrol_exchange = ex1\n"
        f"[agentctl]\nstate_dir = {tmp_path / 'state'}\n"
        "[flavor:small]\nvcpus = 1\nmemory_mb = 128\n"
        "[network:lan]\nuuid = 5d3c0f6e-8a3b-4c1e-9f2a-0b7e6d5c4a31\n"
        "type = vxlan\nsegmentation_id = 5\n"
    )
    now = utcnow()
    beats = [
        AgentHeartbeat(host=h, kind=k, version="1", started_at=now, uptime_s=1)
        for h, k in (("node2", "l2"), ("node1", "compute"), ("node2", "compute"))
    ]
    SeenStore(tmp_path / "state", "ex1").save(merge({}, beats))
    assert run("--config-file", str(conf), "completion", "hosts")[1] == "node1\nnode2\n"
    assert run("--config-file", str(conf), "completion", "flavors")[1] == "small\n"
    assert run("--config-file", str(conf), "completion", "networks")[1] == "lan\n"


def test_sample_config_files_load_together() -> None:
    from common.config import load

    repo = Path(__file__).resolve().parents[3]
    config = load(
        cli_settings.CtlConfig, [repo / "etc" / "shared.conf", repo / "etc" / "agentctl.conf"]
    )
    assert config.agentctl.default_flavor in config.flavors
    assert config.networks and config.agentctl.state_dir is None
