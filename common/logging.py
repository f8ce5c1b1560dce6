"""structlog set-up: JSON lines when stdout is not a terminal, a readable renderer when it is.

Call `setup()` once from main(); `set_level()` may be called again (SIGHUP reload).
Loggers are obtained with `structlog.get_logger()`; request-scoped keys are bound with
`structlog.contextvars.bound_contextvars(...)` at message entry.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

_LEVELS = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
}


def setup(level: str = "INFO", fmt: Literal["auto", "json", "console"] = "auto") -> None:
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
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler._agents = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.WARNING if level != "DEBUG" else logging.INFO)


def set_level(level: str) -> None:
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO))
    )
