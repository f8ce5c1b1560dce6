"""Schemathesis hooks of bench/fuzz_api.py (loaded through $SCHEMATHESIS_HOOKS).

`GET /v1/events` is a server-sent event stream: without `timeout` it stays open until
the client leaves, so every generated request would cost the whole request timeout.
A request whose `timeout` is absent or valid gets one of at most 0.3 s (the stream then
ends by itself, as agentctl's do); an invalid one is left alone (it must answer 422).
"""

from __future__ import annotations

from typing import Any

import schemathesis

STREAM_S = 0.3


def _bounded(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= 86400


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    if case.operation.path != "/v1/events":
        return case
    query = dict(case.query or {})
    value = query.get("timeout")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return case
    if "timeout" not in query or _bounded(value):
        query["timeout"] = min(value, STREAM_S) if _bounded(value) else STREAM_S
        case.query = query
    return case
