"""Progress of a batch: a tqdm bar on a terminal; elsewhere (a log file, `ray job submit`, where tqdm
would write carriage-return frames onto one line) a structured `batch_progress` log line every
`interval` seconds: done, total, rate, eta_s."""

from __future__ import annotations

import sys
import time

import structlog


class Progress:
    def __init__(self, total: int, tty: bool | None = None, interval: float = 10.0):
        self.total = total
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.interval = interval
        self.done = 0
        self.started = self.last = time.monotonic()
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="item", desc="batch", file=sys.stderr)
        # Its own logger: progress is the command's output, shown whatever --log-level filters.
        self.log = structlog.wrap_logger(
            structlog.PrintLogger(sys.stderr), wrapper_class=structlog.BoundLogger,
            processors=[structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso", utc=True),
                        structlog.processors.JSONRenderer()])

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if now - self.last >= self.interval or self.done >= self.total:
            self.last = now
            self.report(now)

    def report(self, now: float | None = None) -> None:
        elapsed = (now or time.monotonic()) - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else None
        self.log.info("batch_progress", done=self.done, total=self.total, rate=round(rate, 3),
                      eta_s=None if eta is None else round(eta, 1))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
