"""The controller's token file: hashes only, 0600, parsed strictly, re-read on change."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from agents.controller import tokens
from agents.controller.tokens import TokenError, TokenFileError, Tokens


def test_add_stores_only_the_hash_and_makes_the_file_0600(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    secret = tokens.add(path, "admin", "root")
    reader = tokens.add(path, "reader", "ci@build")
    assert secret.startswith("agt_") and len(secret) > 40 and secret != reader
    text = path.read_text()
    assert secret not in text and reader not in text
    assert f"admin root sha256:{hashlib.sha256(secret.encode()).hexdigest()}" in text
    assert os.stat(path).st_mode & 0o777 == 0o600
    entries = tokens.read(path)
    assert [(e.role, e.name) for e in entries] == [("admin", "root"), ("reader", "ci@build")]
    assert tokens.match(entries, secret) == entries[0]
    assert tokens.match(entries, reader) == entries[1]
    assert tokens.match(entries, secret + "x") is None
    assert tokens.match(entries, "") is None


def test_add_refuses_a_bad_role_name_or_duplicate(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    tokens.add(path, "admin", "root")
    with pytest.raises(TokenError, match="must be admin or reader"):
        tokens.add(path, "owner", "x")
    with pytest.raises(TokenError, match="NAME = 'a b'"):
        tokens.add(path, "reader", "a b")
    with pytest.raises(TokenError, match="exists"):
        tokens.add(path, "reader", "root")
    with pytest.raises(TokenError, match=r"no such token \(known: root\)"):
        tokens.remove(path, "nobody")
    assert tokens.remove(path, "root").name == "root"
    assert tokens.read(path) == []


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o644])
def test_a_file_open_to_group_or_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "tokens"
    tokens.add(path, "admin", "root")
    path.chmod(mode)
    with pytest.raises(TokenFileError) as err:
        Tokens(path)
    assert f"token file {path}: mode {mode:04o} lets group or others" in str(err.value)
    assert f"chmod 600 {path}" in str(err.value)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("admin root", "expected 'ROLE NAME sha256:HEX' (2 words)"),
        ("owner root sha256:" + "0" * 64, "role 'owner' is not one of admin, reader"),
        ("admin ro/ot sha256:" + "0" * 64, "bad token name 'ro/ot'"),
        ("admin root sha1:abc", "the third word must be sha256: and 64 hex digits"),
        ("admin agt_pasted_secret_by_mistake", "expected 'ROLE NAME sha256:HEX' (2 words)"),
    ],
)
def test_a_bad_line_is_named_without_echoing_it(tmp_path: Path, line: str, problem: str) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"# comment\n\n{line}\n")
    path.chmod(0o600)
    with pytest.raises(TokenFileError) as err:
        tokens.read(path)
    assert f"line 3: {problem}" in str(err.value)
    assert "agt_pasted" not in str(err.value)


def test_tokens_follow_the_file_and_fail_closed_when_it_turns_bad(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    first = tokens.add(path, "admin", "a")
    live = Tokens(path)
    assert live.lookup(first) is not None
    second = tokens.add(path, "reader", "b")  # a new file (atomic replace): seen at once
    found = live.lookup(second)
    assert found is not None and found.role == "reader"
    tokens.remove(path, "a")
    assert live.lookup(first) is None
    path.chmod(0o644)
    os.utime(path)
    with pytest.raises(TokenFileError, match="mode 0644"):
        live.lookup(second)
    path.chmod(0o600)
    os.utime(path, ns=(1, 1))
    assert live.lookup(second) is not None
    with pytest.raises(TokenFileError, match="does not exist"):
        Tokens(tmp_path / "missing")
