"""structlog set-up: JSON lines when stdout is not a terminal, a readable renderer when it is.

Call `setup()` once from main(); `set_level()` may be called again (SIGHUP reload).
Under systemd (stdout connected to the journal: `$JOURNAL_STREAM` is set) each line
starts with its syslog priority (`<3>` for an error, sd-daemon(3)); journald strips it
and files the line at that priority, so `journalctl -p err` shows the daemons' errors.
Loggers are obtained with `structlog.get_logger()`; request-scoped keys are bound with
`structlog.contextvars.bound_contextvars(...)` at message entry.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Literal

import structlog

_LEVELS = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
}


# syslog priorities (sd-daemon(3) prefixes) of structlog's method names and stdlib levels
_PRIORITY = {
    "debug": 7,
    "info": 6,
    "msg": 6,
    "warning": 4,
    "warn": 4,
    "error": 3,
    "exception": 3,
    "critical": 2,
    "fatal": 2,
}


def _journal_priority(_logger: Any, method: str, line: Any) -> Any:
    """The last processor: `<N>` before the rendered line (only under journald)."""
    if isinstance(line, str):
        return f"<{_PRIORITY.get(method, 6)}>{line}"
    return line


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"<{_PRIORITY.get(record.levelname.lower(), 6)}>{super().format(record)}"


def setup(level: str = "INFO", fmt: Literal["auto", "json", "console"] = "auto") -> None:
    journal = bool(os.environ.get("JOURNAL_STREAM"))
    json_out = fmt == "json" or (fmt == "auto" and not sys.stdout.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if json_out
        else structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info if json_out else structlog.dev.set_exc_info,
            renderer,
            *([_journal_priority] if journal else []),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=False,
    )
    # Libraries (oslo.messaging, kombu, amqp) log through stdlib logging: keep their
    # warnings, in one line each, on stderr, so they reach the journal too.
    root = logging.getLogger()
    if not any(getattr(h, "_agents", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        formatter = _JournalFormatter if journal else logging.Formatter
        handler.setFormatter(formatter("%(levelname)s %(name)s: %(message)s"))
        handler.addFilter(_duplicate_cast_without_traceback)
        handler._agents = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.WARNING if level != "DEBUG" else logging.INFO)


def _duplicate_cast_without_traceback(record: logging.LogRecord) -> bool:
    """oslo.messaging's RPC server drops a message whose unique id it saw among the
    last 16 (a cast the sender published again after a lost confirm, a broker
    failover) and logs that with a traceback: a duplicate is expected here, and the
    agents are idempotent anyway. One warning line instead."""
    if record.name.startswith("oslo_messaging") and str(record.msg).startswith(
        "ignoring duplicate message"
    ):
        record.exc_info = None
        record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg, record.args = "a message delivered twice was dropped (same unique id)", ()
    return True


def set_level(level: str) -> None:
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO))
    )
