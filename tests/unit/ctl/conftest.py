"""Fixtures of the agentctl tests: a fake controller and a way to run the CLI against it."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from agents.ctl import cli
from tests.unit.ctl.fakeapi import FakeController, running


@dataclass
class Run:
    code: int
    out: str
    err: str


RunCli = Callable[..., Run]


@pytest.fixture
def api() -> Iterator[FakeController]:
    yield from running()


@pytest.fixture
def agentctl(api: FakeController) -> RunCli:
    """Run `agentctl ARGS` in this process against the fake controller (via $AGENTS_URL)."""

    def run(*argv: str, env: dict[str, str] | None = None) -> Run:
        out, err = io.StringIO(), io.StringIO()
        environ = {"AGENTS_URL": api.url, "AGENTS_CONFIG": "/dev/null", **(env or {})}
        code = cli.main(list(argv), out=out, err=err, environ=environ)
        return Run(code, out.getvalue(), err.getvalue())

    return run
