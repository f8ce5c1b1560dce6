"""Server-sent events: turning `id:` / `event:` / `data:` lines into whole events.

Pure: takes decoded lines (without their line ends) and yields one `SseEvent` per blank
line that ends an event with data, as the WHATWG EventSource rules say (several `data:`
lines join with newlines, `:` starts a comment, one space after the colon is dropped,
unknown fields are ignored). Knows nothing of sockets or of what the data means.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple


# NamedTuple, not a dataclass: agentctl does not pay for importing dataclasses (and
# inspect) on every run.
class SseEvent(NamedTuple):
    id: str | None
    event: str
    data: str


def parse(lines: Iterable[str]) -> Iterator[SseEvent]:
    event_id: str | None = None  # the last id seen sticks, as in EventSource
    kind = ""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield SseEvent(event_id, kind or "message", "\n".join(data))
            kind, data = "", []
            continue
        if line.startswith(":"):
            continue  # a comment: the server's keepalive
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            kind = value
        elif name == "id" and "\x00" not in value:
            event_id = value
    # an event not ended by a blank line is incomplete (the stream was cut): dropped
