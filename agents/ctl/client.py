"""The Python client of agents-controller's REST API (docs/api.md): what agentctl does.

    from agents.ctl.client import Client
    client = Client("http://127.0.0.1:8780")
    accepted = client.build(name="web", count=2, flavor="m1.small")
    outcome = client.wait(accepted, timeout=120, on_update=print)

Owns the operations as calls: building the request of each command, the Idempotency-Key
of a build, the `--host` safety check of delete/reboot/show/console-log, following an
operation's event stream to its end (reconnecting after a cut, replaying from the last
event seen), and checking that each answer has the shape agentctl relies on (`contract`).

Must not print or exit: it returns the controller's JSON (dicts) and raises the typed
errors of `agents.ctl.errors`; the CLI presents them. It imports nothing of the broker,
the agents or the controller: the controller is only ever reached over HTTP.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from agents.ctl import contract
from agents.ctl.errors import BadResponse, HostMismatch
from agents.ctl.settings import DEFAULT_URL, CtlSettings
from agents.ctl.sse import parse
from agents.ctl.transport import Http, LineStream, Query, Trace

if TYPE_CHECKING:  # imported where used: a `list` needs neither
    from agents.ctl.progress import Tracker, Update

Json = dict[str, Any]
OnUpdate = Callable[["Update"], None]

# With no deadline, a stream silent this long has lost its controller (it sends a
# keepalive comment every 15 s): reconnect.
STALL_S = 45.0
# The longest `timeout` the controller accepts for one stream; a longer wait reconnects.
MAX_STREAM_S = 86400


def _ignore(_update: Update) -> None:
    return None


class Outcome:
    """How an operation ended for each instance it covered (see `Client.wait`)."""

    # A plain class, as in agents/ctl/progress.py: no dataclasses import on every run.
    def __init__(
        self,
        operation: str,
        request_id: str,
        tracker: Tracker,
        timed_out: bool = False,
        elapsed_s: float = 0.0,
    ) -> None:
        self.operation = operation
        self.request_id = request_id
        self.tracker = tracker
        self.timed_out = timed_out
        self.elapsed_s = elapsed_s

    @property
    def ok(self) -> bool:
        return not self.timed_out and not self.tracker.failed and self.tracker.finished


class Client:
    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        connect_timeout: float = 1.0,
        call_timeout: float = 10.0,
        wait_timeout: float = 300.0,
        trace: Trace | None = None,
        clock: Callable[[], float] = time.monotonic,
        token: str | None = None,
        ca_file: str | None = None,
    ) -> None:
        self.url = url
        self.wait_timeout = wait_timeout
        self.http = Http(
            url,
            connect_timeout=connect_timeout,
            call_timeout=call_timeout,
            trace=trace,
            token=token,
            ca_file=ca_file,
        )
        self.clock = clock

    @classmethod
    def from_settings(
        cls, settings: CtlSettings, trace: Trace | None = None, token: str | None = None
    ) -> Client:
        return cls(
            settings.url,
            connect_timeout=settings.connect_timeout,
            call_timeout=settings.call_timeout,
            wait_timeout=settings.wait_timeout,
            trace=trace,
            token=token,
            ca_file=settings.ca_file or None,
        )

    # No connection outlives a call; these keep `with Client(...) as c:` working.
    def close(self) -> None:
        return None

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _get(self, path: str, query: Query | None = None) -> Any:
        return self.http.call("GET", path, query=query, retry=True)

    # ----------------------------------------------------------------- operations

    def build(
        self,
        *,
        name: str | None = None,
        count: int = 1,
        flavor: str | None = None,
        image: str | None = None,
        networks: Sequence[str] | None = None,
        host: str | None = None,
        idempotency_key: str | None = None,
    ) -> Json:
        """POST /v1/instances: the 202 answer (request_id, operation, instances).

        Omitted fields are left to the controller (its defaults; the scheduler picks the
        host). The Idempotency-Key (fresh per call unless given) makes the one retry after
        a connection reset safe: the controller answers it without building twice.
        """
        body: Json = {"count": count}
        for key, value in (("name", name), ("flavor", flavor), ("image", image), ("host", host)):
            if value is not None:
                body[key] = value
        if networks:
            body["networks"] = list(networks)
        import uuid  # here: it imports `platform`, which no other command needs

        key = idempotency_key or str(uuid.uuid4())
        answer = self.http.call(
            "POST", "/v1/instances", body=body, headers={"Idempotency-Key": key}, retry=True
        )
        return contract.accepted(answer, "POST /v1/instances")

    def delete(self, ref: str, *, host: str | None = None) -> Json:
        """DELETE /v1/instances/{ref}; with `host`, only if the instance lives there."""
        ref = self._checked_ref(ref, host)
        answer = self.http.call("DELETE", _inst(ref))
        return contract.accepted(answer, "DELETE /v1/instances/{ref}")

    def reboot(self, ref: str, hard: bool = False, *, host: str | None = None) -> Json:
        ref = self._checked_ref(ref, host)
        answer = self.http.call("POST", _inst(ref, "/reboot"), body={"hard": hard})
        return contract.accepted(answer, "POST /v1/instances/{ref}/reboot")

    def _checked_ref(self, ref: str, host: str | None) -> str:
        """The ref to act on: with `host`, the instance's uuid once its host is checked.

        Acting on the uuid (not the name again) means the instance checked is the one hit.
        """
        if host is None:
            return ref
        return str(self.show(ref, host=host)["uuid"])

    # ----------------------------------------------------------------- inventory

    def list_instances(self, host: str | None = None) -> list[Json]:
        return contract.list_of(
            contract.instance, self._get("/v1/instances", {"host": host}), "GET /v1/instances"
        )

    def show(self, ref: str, *, host: str | None = None) -> Json:
        """The instance with its last operations; with `host`, HostMismatch if elsewhere."""
        inst = contract.instance(self._get(_inst(ref)), "GET /v1/instances/{ref}")
        if host is not None and inst["host"] != host:
            raise HostMismatch(ref=ref, host=host, actual=inst["host"])
        return inst

    def timeline(self, ref: str) -> Json:
        """{"instance", "events"}: every hop of every operation on the instance, in order."""
        answer = self._get(_inst(ref, "/timeline"))
        return contract.timeline(answer, "GET /v1/instances/{ref}/timeline")

    def console_log(self, ref: str, tail: int | None = None, *, host: str | None = None) -> Json:
        ref = self._checked_ref(ref, host)
        answer = self._get(_inst(ref, "/console-log"), {"tail": tail})
        return contract.console_log(answer, "GET /v1/instances/{ref}/console-log")

    def ports(self, host: str | None = None) -> list[Json]:
        return contract.list_of(
            contract.port, self._get("/v1/ports", {"host": host}), "GET /v1/ports"
        )

    def hosts(self) -> list[Json]:
        return contract.list_of(contract.host, self._get("/v1/hosts"), "GET /v1/hosts")

    def flavors(self) -> list[Json]:
        return contract.list_of(contract.named, self._get("/v1/flavors"), "GET /v1/flavors")

    def networks(self) -> list[Json]:
        return contract.list_of(contract.named, self._get("/v1/networks"), "GET /v1/networks")

    # ----------------------------------------------------------------- events

    def events(
        self,
        *,
        request_id: str | None = None,
        instance: str | None = None,
        host: str | None = None,
        replay: bool = False,
        after: int | None = None,
        timeout: float | None = None,
        on_open: Callable[[], None] | None = None,
    ) -> Iterator[Json]:
        """EVENTs as they come (GET /v1/events), for `timeout` seconds or until the caller stops.

        `replay`: from the first event matching the filter; `after`: from after that event
        id; neither: only new events. A stream the server ends or that breaks is opened
        again after the last event seen, so none is lost or repeated; `on_open` is called
        once, when the first stream is open (from then on nothing is missed).
        """
        deadline = None if timeout is None else self.clock() + timeout
        last = after
        opened = False
        quiet_ends = 0
        while True:
            left = None if deadline is None else deadline - self.clock()
            if left is not None and left <= 0:
                return
            query: dict[str, str | int | float | None] = {
                "request_id": request_id,
                "instance": instance,
                "host": host,
                "after": last,
                "replay": 1 if replay and last is None else None,
                # the server ends the stream itself a little after our deadline
                "timeout": None if left is None else min(int(left) + 1, MAX_STREAM_S),
            }
            seen = 0
            with self.http.stream("/v1/events", query) as stream:
                if not opened:
                    opened = True
                    if on_open is not None:
                        on_open()
                try:
                    for ev in self._read(stream, deadline):
                        if last is not None and ev["id"] <= last:
                            continue  # an inclusive `after` repeats the last one seen
                        last = ev["id"]
                        seen += 1
                        yield ev
                except TimeoutError:
                    pass  # past the deadline (checked above), or silent too long: reopen
            # An end without a single event twice in a row: do not spin on a server that
            # closes at once; wait a little before asking again.
            quiet_ends = 0 if seen else quiet_ends + 1
            if quiet_ends >= 2:
                time.sleep(0.2 if left is None else max(0.0, min(0.2, left)))

    def _read(self, stream: LineStream, deadline: float | None) -> Iterator[Json]:
        def lines() -> Iterator[str]:
            for line in stream.lines():
                yield line
                if deadline is not None:
                    left = deadline - self.clock()
                    if left <= 0:
                        raise TimeoutError
                    stream.set_timeout(min(left, STALL_S))

        first = STALL_S if deadline is None else min(STALL_S, deadline - self.clock())
        stream.set_timeout(max(first, 0.001))  # 0 would make the socket non-blocking
        for sse in parse(lines()):
            if sse.event not in ("timeline", "message"):
                continue  # a kind the contract does not name: not ours to interpret
            try:
                data = json.loads(sse.data)
            except ValueError:
                raise BadResponse(
                    request="GET /v1/events", problem=f"event data is not JSON: {sse.data[:80]!r}"
                ) from None
            yield contract.event(data, "GET /v1/events")

    def wait(
        self,
        accepted: Json,
        *,
        timeout: float | None = None,
        on_update: OnUpdate = _ignore,
        started: float | None = None,
    ) -> Outcome:
        """Follow an accepted operation until every instance has a final event, or `timeout`.

        Replays the request's events from the first, so opening the stream after the POST
        misses nothing. `started` (a `clock()` reading) counts the timeout from then.
        """
        from agents.ctl.progress import Tracker

        begun = self.clock() if started is None else started
        tracker = Tracker(
            accepted["operation"],
            [
                (i["uuid"], i["name"], [str(p["id"]) for p in i["ports"]])
                for i in accepted["instances"]
            ],
        )
        outcome = Outcome(accepted["operation"], accepted["request_id"], tracker)
        left = (timeout or self.wait_timeout) - (self.clock() - begun)
        if left > 0:
            for ev in self.events(request_id=outcome.request_id, replay=True, timeout=left):
                for update in tracker.feed(ev):
                    on_update(update)
                if tracker.finished:
                    break
        outcome.timed_out = not tracker.finished
        outcome.elapsed_s = self.clock() - begun
        return outcome


def _inst(ref: str, tail: str = "") -> str:
    return f"/v1/instances/{quote(ref, safe='')}{tail}"
