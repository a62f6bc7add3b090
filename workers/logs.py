"""Structured logs (structlog) on stderr: JSON lines when not on a terminal, readable lines on one.

Context does not cross Ray actors by itself: callers pass request_id, round and span explicitly and
bind them here.

Library use (nobody called `configure_logging`): if the application has not configured structlog
either, the first `get_logger` applies this module's defaults (INFO, stderr), since structlog's own
default prints to stdout, which may carry the application's data. An application that configured
structlog keeps its configuration.
"""

from __future__ import annotations

import logging
import sys

import structlog

_configured = False  # by configure_logging (an application's choice), not by the library default


class _StderrLogger:
    """Writes each line to whatever sys.stderr is at that moment (it may be replaced, e.g. by test
    capture), not to the stream that was current when logging was configured."""

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    debug = info = warning = error = critical = exception = log = msg


def configure_logging(level: str = "INFO", json: bool | None = None) -> None:
    """Idempotent; call once per process (the CLI, each worker actor). Loggers made before keep the
    configuration of their making."""
    global _configured
    if _configured:
        return
    _apply(level, json)
    _configured = True


def _apply(level: str, json: bool | None) -> None:
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


def get_logger(name: str, **context):
    if not _configured and not structlog.is_configured():
        _apply("INFO", None)  # library use: stderr, not structlog's default stdout
    return structlog.get_logger(name).bind(**context)
