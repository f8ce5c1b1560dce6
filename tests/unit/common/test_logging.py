"""common.logging: what reaches stderr from the libraries' stdlib logging."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import structlog

from common import logging as agent_logging


@pytest.fixture
def root_handlers() -> Iterator[None]:
    """setup() configures the process: put back what the other tests run with."""
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    config = structlog.get_config()
    yield
    root.handlers[:] = before
    root.setLevel(level)
    structlog.reset_defaults()
    structlog.configure(**config)


def test_oslo_duplicate_message_is_one_line_without_traceback(
    root_handlers: None, capfd: pytest.CaptureFixture[str]
) -> None:
    agent_logging.setup("INFO", "json")
    oslo = logging.getLogger("oslo_messaging._drivers.amqpdriver")
    try:
        raise RuntimeError("Found duplicate message(abc). Skipping it.")
    except RuntimeError:
        oslo.exception("ignoring duplicate message %s", None)
    try:
        raise RuntimeError("something else")
    except RuntimeError:
        oslo.exception("a real failure %s", 1)
    err = capfd.readouterr().err
    lines = err.splitlines()
    assert lines[0] == (
        "WARNING oslo_messaging._drivers.amqpdriver: a message delivered twice was dropped"
        " (same unique id)"
    )
    assert "duplicate message(abc)" not in err
    # anything else from the library keeps its traceback
    assert "ERROR oslo_messaging._drivers.amqpdriver: a real failure 1" in err
    assert "RuntimeError: something else" in err
