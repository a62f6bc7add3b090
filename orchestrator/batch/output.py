"""The results file: one JSON line per input line, appended, so that a rerun resumes where the last
run stopped.

Each record is written by one `write` of the whole line, newline included, then flushed to disk
(fsync), before the next. A driver killed mid-batch (even SIGKILL) leaves whole lines, and at most
one trailing partial line (Linux may stop a write killed between pages; a machine may go down
mid-write): on open, a last line without its newline is cut off, and its item is simply redone. What a rerun skips is read back from
the file itself, never from a side file that could disagree with it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from .lines import id_key


@dataclass
class Written:
    """What an existing results file already holds."""

    ids: set[str] = field(default_factory=set)  # id keys whose item has its record
    lines: set[int] = field(default_factory=set)  # input lines recorded without an id of their own (no id, duplicates)
    records: int = 0
    torn_bytes: int = 0  # a trailing partial line that was cut off
    unreadable: int = 0  # whole lines that are not JSON records (left in place, not counted as done)

    def done(self, line: int, id: Any, duplicate: bool) -> bool:
        if id is None or duplicate:
            return line in self.lines
        return id_key(id) in self.ids


class ResultsFile:
    def __init__(self, path: str, fsync: bool = True):
        self.path = path
        self.fsync = fsync
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        self.written = self._recover()

    def _recover(self) -> Written:
        written = Written()
        size = os.fstat(self.fd).st_size
        data = os.pread(self.fd, size, 0) if size else b""
        keep = data.rfind(b"\n") + 1  # after the last whole line
        if keep < len(data):
            os.ftruncate(self.fd, keep)
            os.fsync(self.fd)
            written.torn_bytes = len(data) - keep
        for raw in data[:keep].splitlines():
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
                line = record["line"]
            except (ValueError, KeyError, TypeError):
                written.unreadable += 1
                continue
            written.records += 1
            duplicate = (record.get("error") or {}).get("type") == "DuplicateIdError"
            if record.get("id") is None or duplicate:
                written.lines.add(line)
            else:
                written.ids.add(id_key(record["id"]))
        return written

    def append(self, record: dict) -> None:
        """Write one record as one line, durably, before returning."""
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        view = memoryview(data)
        while view:  # a regular file takes it in one write; loop only for the pathological case
            view = view[os.write(self.fd, view):]
        if self.fsync:
            os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)
