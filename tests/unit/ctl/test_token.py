"""agentctl's API token: where it comes from, the 0600 rule, what is sent and shown.

Against the fake controller (a real HTTP server): the token travels as
`Authorization: Bearer ...`, `--debug` shows `Bearer ***` and never the token, and the
controller's 401/403 answers end in exit 6 with a message that says what to do.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agents.ctl.auth import find_token, read_token_file
from agents.ctl.cli import EXIT_AUTH
from agents.ctl.errors import TokenFileError
from agents.ctl.settings import CtlSettings
from tests.unit.ctl.conftest import RunCli
from tests.unit.ctl.fakeapi import FakeController

SECRET = "agt_s3cr3t-TOKEN-value_0123456789"


def token_file(tmp_path: Path, text: str = SECRET + "\n", mode: int = 0o600) -> Path:
    path = tmp_path / "token"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_order_cli_file_then_env_then_config_then_default(tmp_path: Path) -> None:
    cli = token_file(tmp_path)
    conf = tmp_path / "conf-token"
    conf.write_text("# a comment first\n\nagt_from-config-file\n")
    conf.chmod(0o600)
    home = tmp_path / "xdg" / "agents"
    home.mkdir(parents=True)
    (home / "token").write_text("agt_from-default-file\n")
    (home / "token").chmod(0o600)
    settings = CtlSettings(token_file=str(conf))
    env = {"AGENTS_TOKEN": "agt_from-environment", "XDG_CONFIG_HOME": str(tmp_path / "xdg")}

    assert find_token(str(cli), settings, env)[0] == SECRET
    assert find_token(None, settings, env) == ("agt_from-environment", "$AGENTS_TOKEN")
    del env["AGENTS_TOKEN"]
    assert find_token(None, settings, env)[0] == "agt_from-config-file"
    assert find_token(None, CtlSettings(), env)[0] == "agt_from-default-file"
    assert find_token(None, CtlSettings(), {"XDG_CONFIG_HOME": str(tmp_path / "none")})[0] is None


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_a_token_file_open_to_others_is_refused_naming_path_and_mode(
    tmp_path: Path, mode: int
) -> None:
    path = token_file(tmp_path, mode=mode)
    with pytest.raises(TokenFileError) as err:
        read_token_file(str(path))
    assert str(path) in str(err.value)
    assert f"mode {mode:04o}" in str(err.value)
    assert SECRET not in str(err.value)


def test_a_file_without_a_token_is_refused_without_quoting_it(tmp_path: Path) -> None:
    path = token_file(tmp_path, text="agt_has a blank in_it\n")
    with pytest.raises(TokenFileError) as err:
        read_token_file(str(path))
    assert "holds no token" in str(err.value)
    assert "blank" not in str(err.value)
    with pytest.raises(TokenFileError, match="No such file"):
        read_token_file(str(tmp_path / "missing"))


def test_the_token_is_sent_and_debug_shows_only_stars(
    api: FakeController, agentctl: RunCli, tmp_path: Path
) -> None:
    api.reply("GET", "/v1/instances", [])
    path = token_file(tmp_path)
    run = agentctl("--debug", "--token-file", str(path), "list")
    assert run.code == 0, run.err
    assert api.seen("GET", "/v1/instances")[0].headers["Authorization"] == f"Bearer {SECRET}"
    assert "Authorization: Bearer ***" in run.err
    assert f"token from --token-file {path}" in run.err
    assert SECRET not in run.err + run.out


def test_401_is_exit_6_with_what_to_do(api: FakeController, agentctl: RunCli) -> None:
    api.reply(
        "GET",
        "/v1/instances",
        {"error": {"code": "auth.invalid", "message": "the bearer token is not known"}},
        status=401,
    )
    run = agentctl("--debug", "list", env={"AGENTS_TOKEN": SECRET})
    assert run.code == EXIT_AUTH == 6
    assert "the controller refused the token (401 auth.invalid)" in run.err
    assert "set AGENTS_TOKEN, [agentctl] token_file or --token-file" in run.err
    assert SECRET not in run.err + run.out  # --debug's traceback included

    api.reply(
        "GET",
        "/v1/instances",
        {"error": {"code": "auth.required", "message": "this API needs a bearer token"}},
        status=401,
    )
    run = agentctl("--json", "list", env={"XDG_CONFIG_HOME": "/nonexistent"})
    assert run.code == 6
    assert "wants a token (401 auth.required) and none was sent" in run.err
    assert '"exit_code": 6' in run.out and '"code": "auth.required"' in run.out


def test_403_is_exit_6_naming_the_role(api: FakeController, agentctl: RunCli) -> None:
    message = "token 'ci' has role reader, which may only read; POST /v1/instances needs role admin"
    api.reply(
        "POST",
        "/v1/instances",
        {"error": {"code": "auth.forbidden", "message": message, "valid": ["admin"]}},
        status=403,
    )
    run = agentctl("send", "build", env={"AGENTS_TOKEN": SECRET})
    assert run.code == 6
    assert f"the controller refused the request (403 auth.forbidden): {message}" in run.err


def test_a_bad_token_file_is_exit_6_before_any_request(
    api: FakeController, agentctl: RunCli, tmp_path: Path
) -> None:
    path = token_file(tmp_path, mode=0o644)
    run = agentctl("--token-file", str(path), "list")
    assert run.code == 6
    assert f"token file {path}: mode 0644 lets group or others read it" in run.err
    assert api.requests == []
    os.chmod(path, 0o600)
    api.reply("GET", "/v1/instances", [])
    assert agentctl("--token-file", str(path), "list").code == 0
