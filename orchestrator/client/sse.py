"""Reading a server-sent-event stream: lines in, (event name, data) pairs out."""

from __future__ import annotations

from typing import AsyncIterator


async def read_events(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str | None, str]]:
    """Each event of the stream as (its `event:` name or None, its data lines joined)."""
    name, data = None, []
    async for line in lines:
        if not line:
            if data:
                yield name, "\n".join(data)
            name, data = None, []
        elif line.startswith(":"):
            continue  # a comment (keep-alive)
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "data":
                data.append(value)
            elif field == "event":
                name = value
    if data:
        yield name, "\n".join(data)
