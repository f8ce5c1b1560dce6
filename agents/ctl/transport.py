"""HTTP+JSON to agents-controller over the stdlib `http.client`, one connection per call.

Owns the wire: the base URL, the connect timeout (a dead controller is reported within
it) apart from the call timeout, turning socket failures into `ControllerUnreachable` /
`ControllerTimeout`, error bodies into `ApiError`, answers that are not JSON into
`BadResponse`, retrying a request once after a connection reset when the caller says it
is safe, and opening a server-sent event stream.

Must not know any resource of the API (the client passes paths) nor print. Stdlib
`http.client` on purpose: httpx or requests cost about 70 ms to import, more than a
whole `agentctl list`.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import urlencode, urlsplit

from agents.ctl.errors import (
    ApiError,
    BadResponse,
    ControllerTimeout,
    ControllerUnreachable,
)

Query = Mapping[str, str | int | float | None]
Trace = Callable[[str], None]

_MAX_LINE = 1 << 20  # one SSE line; an EVENT is well under a kilobyte


class _Reset(Exception):
    """The connection broke after it was made: the request may or may not have arrived."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def unreachable_problem(err: OSError, host: str, connect_timeout: float) -> str:
    """A few words on why no connection was made, for `ControllerUnreachable`."""
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, socket.gaierror):
        return f"cannot resolve host {host!r}: {err.strerror or err}"
    if isinstance(err, TimeoutError):
        return f"no connection within {connect_timeout:g}s"
    return err.strerror or str(err) or type(err).__name__


def _snippet(data: bytes) -> str:
    text = " ".join(data[:300].decode("utf-8", "replace").split())
    return repr(text) if text else "(empty)"


class Http:
    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float,
        call_timeout: float,
        trace: Trace | None = None,
    ) -> None:
        parts = urlsplit(url)
        self.url = url
        self.connect_timeout = connect_timeout
        self.call_timeout = call_timeout
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._trace = trace

    # ----------------------------------------------------------------- plain calls

    def call(
        self,
        method: str,
        path: str,
        *,
        query: Query | None = None,
        body: object = None,
        headers: Mapping[str, str] | None = None,
        retry: bool = False,
    ) -> Any:
        """Send one request and return the decoded JSON of a 2xx answer.

        `retry`: the request is safe to send twice (a GET, or a POST with an
        Idempotency-Key), so it is sent once more if the connection breaks after it was
        made. A refused or timed-out connect is never retried: nothing reached the server.
        """
        target = self._target(path, query)
        request = f"{method} {path}"
        payload = None if body is None else json.dumps(body).encode()
        hdrs = {"Accept": "application/json", **(headers or {})}
        if payload is not None:
            hdrs["Content-Type"] = "application/json"
        for attempt in (1, 2):
            try:
                status, reason, data = self._exchange(method, target, request, payload, hdrs)
                break
            except _Reset as err:
                if not retry or attempt == 2:
                    raise ControllerUnreachable(url=self.url, problem=err.problem) from None
        return _decode(request, status, reason, data)

    def _exchange(
        self,
        method: str,
        target: str,
        request: str,
        payload: bytes | None,
        headers: dict[str, str],
    ) -> tuple[int, str, bytes]:
        started = time.perf_counter()
        conn, _sock = self._connect()
        try:
            conn.request(method, target, body=payload, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except TimeoutError:
            raise ControllerTimeout(
                url=self.url, request=request, timeout=f"{self.call_timeout:g}"
            ) from None
        except (ConnectionError, http.client.IncompleteRead) as err:
            raise _Reset(_reset_problem(err)) from None
        except (http.client.HTTPException, OSError) as err:
            raise BadResponse(request=request, problem=f"not an HTTP answer ({err!r})") from None
        finally:
            conn.close()
        if self._trace is not None:
            ms = (time.perf_counter() - started) * 1000
            self._trace(f"{method} {target} -> {resp.status} in {ms:.1f} ms")
        return resp.status, resp.reason, data

    # ----------------------------------------------------------------- event streams

    def stream(self, path: str, query: Query | None = None) -> LineStream:
        """Open `text/event-stream` at `path`; the caller reads lines and closes it."""
        target = self._target(path, query)
        request = f"GET {path}"
        conn, sock = self._connect()
        try:
            conn.request("GET", target, headers={"Accept": "text/event-stream"})
            resp = conn.getresponse()
            if resp.status != 200:
                data = resp.read()
                conn.close()
                _decode(request, resp.status, resp.reason, data)  # raises for 4xx/5xx
                raise BadResponse(
                    request=request, problem=f"HTTP {resp.status} {resp.reason}, not a stream"
                )
        except TimeoutError:
            conn.close()
            raise ControllerTimeout(
                url=self.url, request=request, timeout=f"{self.call_timeout:g}"
            ) from None
        except (ConnectionError, http.client.IncompleteRead) as err:
            conn.close()
            raise ControllerUnreachable(url=self.url, problem=_reset_problem(err)) from None
        except (http.client.HTTPException, OSError) as err:
            conn.close()
            raise BadResponse(request=request, problem=f"not an HTTP answer ({err!r})") from None
        ctype = resp.getheader("Content-Type", "")
        if not ctype.startswith("text/event-stream"):
            conn.close()
            raise BadResponse(
                request=request, problem=f"Content-Type {ctype!r}, not text/event-stream"
            )
        if self._trace is not None:
            self._trace(f"GET {target} -> 200 (event stream)")
        return LineStream(conn, sock, resp)

    # ----------------------------------------------------------------- helpers

    def _target(self, path: str, query: Query | None) -> str:
        kept = {k: str(v) for k, v in (query or {}).items() if v is not None}
        return self._prefix + path + (f"?{urlencode(kept)}" if kept else "")

    def _connect(self) -> tuple[http.client.HTTPConnection, socket.socket]:
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=self.connect_timeout)
        try:
            conn.connect()
        except OSError as err:
            conn.close()
            problem = unreachable_problem(err, self._host, self.connect_timeout)
            raise ControllerUnreachable(url=self.url, problem=problem) from None
        sock = conn.sock
        assert sock is not None  # connect() succeeded
        # Connected: from here on the answer may take up to the call timeout.
        sock.settimeout(self.call_timeout)
        return conn, sock


class LineStream:
    """The open body of an event stream, read line by line (decoded, line end removed)."""

    def __init__(
        self, conn: http.client.HTTPConnection, sock: socket.socket, resp: http.client.HTTPResponse
    ) -> None:
        self._conn = conn
        self._sock = sock  # kept: http.client drops conn.sock when the response owns it
        self._resp = resp

    def set_timeout(self, seconds: float | None) -> None:
        """Bound the wait for the next bytes; a `TimeoutError` from `lines()` ends the stream."""
        self._sock.settimeout(seconds)

    def lines(self) -> Iterator[str]:
        """Lines until the server ends the stream (or the connection breaks: also an end)."""
        while True:
            try:
                raw = self._resp.readline(_MAX_LINE)
            except (ConnectionError, http.client.IncompleteRead):
                return
            if not raw:
                return
            yield raw.decode("utf-8", "replace").rstrip("\r\n")

    def close(self) -> None:
        self._resp.close()
        self._conn.close()

    def __enter__(self) -> LineStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _reset_problem(err: BaseException) -> str:
    if isinstance(err, http.client.RemoteDisconnected):
        return "the connection was closed before an answer came"
    if isinstance(err, http.client.IncompleteRead):
        return "the answer was cut off"
    return f"connection broken: {getattr(err, 'strerror', None) or err}"


def _decode(request: str, status: int, reason: str, data: bytes) -> Any:
    """JSON of a 2xx answer; raise ApiError for a contract error body, else BadResponse."""
    try:
        value = json.loads(data) if data.strip() else None
        parsed = True
    except ValueError:  # JSONDecodeError and UnicodeDecodeError both are
        value, parsed = None, False
    if status >= 400:
        error = value.get("error") if isinstance(value, dict) else None
        if (
            isinstance(error, dict)
            and isinstance(error.get("code"), str)
            and isinstance(error.get("message"), str)
        ):
            valid = error.get("valid")
            field = error.get("field")
            raise ApiError(
                status=status,
                code=error["code"],
                message=error["message"],
                field=field if isinstance(field, str) else None,
                value=error.get("value"),
                valid=[str(v) for v in valid] if isinstance(valid, list) else None,
            )
        raise BadResponse(
            request=request,
            problem=f"HTTP {status} {reason} without an error body; body {_snippet(data)}",
        )
    if not 200 <= status < 300:
        raise BadResponse(request=request, problem=f"HTTP {status} {reason}")
    if not parsed:
        raise BadResponse(request=request, problem=f"the body is not JSON: {_snippet(data)}")
    return value
