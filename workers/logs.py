"""Structured logs (structlog): JSON lines when not on a terminal, readable lines on one.

Context does not cross Ray actors by itself: callers pass request_id, round and span explicitly and
bind them here.
"""

from __future__ import annotations

import logging
import sys

import structlog

_configured = False


class _StderrLogger:
    """Writes each line to whatever sys.stderr is at that moment (it may be replaced, e.g. by test
    capture), not to the stream that was current when logging was configured."""

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    debug = info = warning = error = critical = exception = log = msg


def configure_logging(level: str = "INFO", json: bool | None = None) -> None:
    """Idempotent; call once per process (the CLI, each worker actor)."""
    global _configured
    if _configured:
        return
    json = not sys.stderr.isatty() if json is None else json
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=lambda *args: _StderrLogger(),
        cache_logger_on_first_use=True,
    )
    _configured = True


def get_logger(name: str, **context):
    return structlog.get_logger(name).bind(**context)
