"""HTTP+JSON to agents-controller over the stdlib `http.client`, one connection per call.

Owns the wire: the base URL (or several: one deployment's controllers, comma-separated;
a connection refused, unresolved or not made within the connect timeout moves on to
the next, and the one that answered is asked first from then on; an HTTP answer, even
an error, is never sent elsewhere), the connect timeout (a dead controller is reported
within it) apart from the call timeout, turning socket failures into `ControllerUnreachable` /
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
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import urlencode, urlsplit

from agents.ctl.errors import (
    ApiError,
    BadResponse,
    ControllerTimeout,
    ControllerTlsError,
    ControllerUnreachable,
    NotAuthorized,
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
    if isinstance(err, ssl.SSLCertVerificationError):
        return (
            f"its TLS certificate is not trusted: {err.verify_message or err.reason};"
            " set [agentctl] ca_file or --ca-file to the CA that signed it"
        )
    if isinstance(err, ssl.SSLError):
        return f"the TLS handshake failed ({err.reason or err}); does it serve https?"
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
        token: str | None = None,
        ca_file: str | None = None,
    ) -> None:
        self.urls = url.split(",")
        # Sent as `Authorization: Bearer ...` on every request; never traced or printed.
        self._token = token
        self._ca_file = ca_file
        self._tls: ssl.SSLContext | None = None
        self._current = 0  # the controller that took the last connection
        self.connect_timeout = connect_timeout
        self.call_timeout = call_timeout
        self._trace = trace

    @property
    def url(self) -> str:
        """The controller in use (the first listed until one did not answer)."""
        return self.urls[self._current]

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
        request = f"{method} {path}"
        payload = None if body is None else json.dumps(body).encode()
        hdrs = {"Accept": "application/json", **(headers or {}), **self._auth()}
        if payload is not None:
            hdrs["Content-Type"] = "application/json"
        for attempt in (1, 2):
            try:
                status, reason, data = self._exchange(method, path, query, request, payload, hdrs)
                break
            except _Reset as err:
                if not retry or attempt == 2:
                    raise ControllerUnreachable(url=self.url, problem=err.problem) from None
        return _decode(request, status, reason, data)

    def _exchange(
        self,
        method: str,
        path: str,
        query: Query | None,
        request: str,
        payload: bytes | None,
        headers: dict[str, str],
    ) -> tuple[int, str, bytes]:
        started = time.perf_counter()
        conn, _sock = self._connect()
        target = self._target(path, query)
        self._trace_headers(method, target, headers)
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
        request = f"GET {path}"
        conn, sock = self._connect()
        target = self._target(path, query)
        headers = {"Accept": "text/event-stream", **self._auth()}
        self._trace_headers("GET", target, headers)
        try:
            conn.request("GET", target, headers=headers)
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

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    def _trace_headers(self, method: str, target: str, headers: Mapping[str, str]) -> None:
        if self._trace is None:
            return
        shown = ", ".join(
            f"{k}: Bearer ***" if k.lower() == "authorization" else f"{k}: {v}"
            for k, v in headers.items()
        )
        self._trace(f"{method} {target} headers: {shown}")

    def _context(self) -> ssl.SSLContext:
        """The TLS context of https URLs: the system's CAs, or only `ca_file`'s."""
        if self._tls is None:
            try:
                self._tls = ssl.create_default_context(cafile=self._ca_file or None)
            except (OSError, ssl.SSLError) as err:
                problem = f"cannot use ca_file {self._ca_file}: {err}"
                raise ControllerUnreachable(url=self.url, problem=problem) from None
        return self._tls

    def _target(self, path: str, query: Query | None) -> str:
        """The request target on the controller in use (its path prefix, if any)."""
        kept = {k: str(v) for k, v in (query or {}).items() if v is not None}
        prefix = urlsplit(self.url).path.rstrip("/")
        return prefix + path + (f"?{urlencode(kept)}" if kept else "")

    def _connect(self) -> tuple[http.client.HTTPConnection, socket.socket]:
        """A connection to the controller in use, else to the next one listed that takes
        it; ControllerUnreachable naming each one's problem when none does."""
        problems: list[tuple[str, str]] = []  # (url, why not)
        count = len(self.urls)
        for step in range(count):
            index = (self._current + step) % count
            url = self.urls[index]
            parts = urlsplit(url)
            host = parts.hostname or ""
            https = parts.scheme == "https"
            conn: http.client.HTTPConnection
            if https:
                conn = http.client.HTTPSConnection(
                    host, parts.port, timeout=self.connect_timeout, context=self._context()
                )
            else:
                conn = http.client.HTTPConnection(host, parts.port, timeout=self.connect_timeout)
            try:
                conn.connect()
            except OSError as err:
                conn.close()
                if count == 1 and isinstance(err, ssl.SSLError):
                    # connected, but not to a controller it can trust (or speak TLS with)
                    problem = unreachable_problem(err, host, self.connect_timeout)
                    raise ControllerTlsError(url=url, problem=problem) from None
                problem = unreachable_problem(err, host, self.connect_timeout)
                problems.append((url, problem))
                if self._trace is not None and count > 1:
                    self._trace(f"{url}: {problem}; trying the next controller")
                continue
            self._current = index
            break
        else:
            if count == 1:
                raise ControllerUnreachable(url=self.url, problem=problems[0][1])
            listed = "; ".join(f"{u}: {p}" for u, p in problems)
            raise ControllerUnreachable(url=", ".join(self.urls), problem=listed)
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
            cls = NotAuthorized if status in (401, 403) else ApiError
            raise cls(
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
