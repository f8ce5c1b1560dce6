"""The HTTP layer of agents-controller: routes, request models, errors as JSON.

Each handler validates its input (pydantic models and the config's flavors and
networks), calls the store, publishes the casts the store returned, and shapes the
answer; nothing else. Errors leave as `{"error": {"code", "message", "field",
"value", "valid"}}` with a fitting status (docs/api.md). Authentication is one dependency,
`_authorize`, on every route but /healthz (the OpenAPI document included): a bearer
token of the token file (`tokens`), admin for everything, reader for GET only. The
token itself is never logged nor echoed; its name goes on the request's log line.

Must not import the broker library or SQLAlchemy: it talks to `Store` and `Bus`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import random
import re
import time
import uuid as uuidlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
import structlog
from fastapi import Depends, FastAPI, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from agents.controller import apidoc, errors
from agents.controller.bus import Bus, Hub
from agents.controller.db.store import CreateRequest, Store
from agents.controller.settings import ControllerConfig
from agents.controller.tokens import TokenFileError, Tokens
from common import __version__
from common.config import Flavor, NetworkSpec
from common.errors import AgentsError, InvalidMessage, NoAgentForHost, RemoteCallTimeout
from common.messages import ConsoleLog, HostName, InstanceRef, Name, new_request_id
from common.rpc import expect

log = structlog.get_logger()

_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
KEEPALIVE_S = 15.0
STREAM_POLL_S = 0.5


# --------------------------------------------------------------------------- bodies


class CreateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    count: Annotated[int, Field(ge=1, le=1000)] = 1
    flavor: Name | None = None
    image: Name | None = None
    networks: Annotated[list[str], Field(min_length=1, max_length=8)] | None = None
    host: HostName | None = None


class RebootBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hard: bool = False


@dataclass
class Context:
    """What the handlers use; built by the service, handed to `make_app`."""

    config: ControllerConfig
    store: Store
    bus: Bus
    hub: Hub
    healthy: Callable[[], dict[str, str]]
    rng: random.Random
    # The token file as loaded at start ([controller] auth = tokens); None: make_app
    # loads [controller] tokens_file itself.
    tokens: Tokens | None = None


# --------------------------------------------------------------------------- app


_READ_METHODS = frozenset({"GET", "HEAD"})


def make_app(ctx: Context) -> FastAPI:
    description = (
        "Desired state of an agents deployment: instances, ports, hosts,"
        " operations and their timeline."
    )
    # The document and its browsable form are served below, behind the token like /v1.
    app = FastAPI(
        title="agents-controller",
        version=__version__,
        description=description,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    settings = ctx.config.controller
    tokens: Tokens | None = None
    if settings.auth == "tokens":
        tokens = ctx.tokens or Tokens(settings.tokens_file)

    @app.exception_handler(errors.ApiError)
    async def _api_error(_request: Request, err: errors.ApiError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0]
        if first.get("type") == "json_invalid":  # loc is ("body", offset): no field yet
            offset = next((p for p in first.get("loc", ()) if isinstance(p, int)), 0)
            reason = (first.get("ctx") or {}).get("error", "not JSON")
            body = errors.BodyNotJson(field="body", offset=offset, reason=reason).body()
            return JSONResponse(_jsonable(body), status_code=422)
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        field = ".".join(loc) or "body"
        value = first.get("input")
        if isinstance(value, dict | list) and len(json.dumps(value, default=str)) > 200:
            value = "(too long to show)"
        problem = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        if first.get("type") == "extra_forbidden":
            problem = "unknown field"
        body = errors.RequestInvalid(field=field, value=value, problem=problem).body()
        return JSONResponse(_jsonable(body), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, err: StarletteHTTPException) -> JSONResponse:
        code = {404: "route.not_found", 405: "route.method_not_allowed"}.get(
            err.status_code, "http.error"
        )
        return JSONResponse(
            {"error": {"code": code, "message": str(err.detail)}}, status_code=err.status_code
        )

    @app.middleware("http")
    async def _canonical_log_line(request: Request, call_next: Any) -> Response:
        started = time.perf_counter()
        try:
            response: Response = await call_next(request)
        except Exception as err:  # the last boundary: a bug answers 500 in JSON, logged once
            log.exception("request_crashed", method=request.method, path=request.url.path)
            response = JSONResponse(
                {"error": {"code": "internal", "message": f"{type(err).__name__}: {err}"}},
                status_code=500,
            )
        log.info(
            "request",
            method=request.method,
            path=request.url.path,
            status=response.status_code,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
            token=request.scope.get("agents.token"),
        )
        return response

    def _authorize(request: Request) -> None:
        """The one place of authentication: a known bearer token, and its role allows it.

        401 (with WWW-Authenticate) for no token or an unknown one, 403 for a reader's
        write; neither answer nor log line carries the token.
        """
        if tokens is None:
            return
        what = f"{request.method} {request.url.path}"
        header = request.headers.get("authorization")
        if header is None:
            log.warning("api_auth_refused", request=what, code="auth.required")
            raise errors.AuthRequired(field="Authorization")
        scheme, _, secret = header.strip().partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            log.warning("api_auth_refused", request=what, code="auth.invalid", why="not Bearer")
            raise errors.AuthInvalid(
                field="Authorization",
                problem="the Authorization header must be 'Bearer <token>'"
                f" (got scheme {scheme[:16]!r})",
            )
        try:
            entry = tokens.lookup(secret)
        except TokenFileError as err:
            log.error("api_auth_unavailable", request=what, problem=str(err))
            raise errors.AuthUnavailable(problem=str(err)) from None
        if entry is None:
            log.warning("api_auth_refused", request=what, code="auth.invalid", why="unknown")
            raise errors.AuthInvalid(
                field="Authorization",
                problem="the bearer token is not one this controller knows"
                " (never made, or removed with `agents-controller token remove`)",
            )
        request.scope["agents.token"] = entry.name
        if entry.role != "admin" and request.method not in _READ_METHODS:
            log.warning("api_auth_refused", request=what, code="auth.forbidden", token=entry.name)
            raise errors.AuthForbidden(
                field="Authorization",
                name=entry.name,
                role=entry.role,
                request=what,
                valid=["admin"],
            )

    v1 = Depends(_authorize)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=description, routes=app.routes
            )
            app.openapi_schema = apidoc.finish(
                schema,
                auth=tokens is not None,
                flavors=sorted(ctx.config.flavors),
                networks=[
                    *ctx.config.networks,
                    *(str(n.uuid) for n in ctx.config.networks.values()),
                ],
                max_count=settings.max_count,
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override

    @app.get("/openapi.json", include_in_schema=False, dependencies=[v1])
    def openapi_json() -> JSONResponse:
        return JSONResponse(openapi())

    @app.get("/docs", include_in_schema=False, dependencies=[v1])
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=app.title)

    # ----------------------------------------------------------------- health

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        parts = ctx.healthy()
        ok = all(v == "ok" for v in parts.values())
        body = {"status": "ok" if ok else "degraded", **parts, "version": __version__}
        return JSONResponse(body, status_code=200 if ok else 503)

    # ----------------------------------------------------------------- config

    @app.get("/v1/flavors", dependencies=[v1])
    def flavors() -> list[dict[str, Any]]:
        return [f.model_dump() for f in ctx.config.flavors.values()]

    @app.get("/v1/networks", dependencies=[v1])
    def networks() -> list[dict[str, Any]]:
        return [
            {**n.model_dump(mode="json", exclude={"uuid"}), "id": str(n.uuid)}
            for n in ctx.config.networks.values()
        ]

    # ----------------------------------------------------------------- instances

    @app.post("/v1/instances", status_code=202, dependencies=[v1])
    def create(
        body: CreateBody,
        response: Response,
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    ) -> dict[str, Any]:
        if idempotency_key is not None and not _KEY_RE.fullmatch(idempotency_key):
            raise errors.RequestInvalid(
                field="Idempotency-Key",
                value=idempotency_key,
                problem="must be 1-128 characters of letters, digits, '.', '_', ':' or '-'",
            )
        if body.count > settings.max_count:
            raise errors.RequestInvalid(
                field="count", value=body.count, problem=f"must be at most {settings.max_count}"
            )
        req = CreateRequest(
            request_id=new_request_id(),
            names=_names(body.name, body.count, ctx.rng),
            flavor=_flavor(ctx.config, body.flavor),
            image=body.image or "tiny",
            networks=_networks(ctx.config, body.networks),
            host=body.host,
            idempotency_key=idempotency_key,
            body_hash=hashlib.sha256(body.model_dump_json().encode()).hexdigest(),
        )
        accepted = ctx.store.create(req)
        if accepted.replayed:
            response.status_code = 200
        else:
            _log_accepted(accepted.response)
            ctx.bus.publish(accepted.casts)
        return accepted.response

    # The rows go out as built, encoded by orjson: FastAPI's validating and re-encoding
    # of the response, and the json module, were most of the request at a thousand
    # instances. `response_model` keeps the documented schema the same.
    @app.get("/v1/instances", dependencies=[v1], response_model=list[dict[str, Any]])
    def list_instances(
        host: HostName | None = None, state: str | None = None, name: Name | None = None
    ) -> Response:
        rows = ctx.store.list_instances(host, state, name)
        return Response(orjson.dumps(rows), media_type="application/json")

    @app.get("/v1/instances/{ref}", dependencies=[v1])
    def show(ref: str) -> dict[str, Any]:
        return ctx.store.show(_ref(ref))

    @app.get("/v1/instances/{ref}/timeline", dependencies=[v1])
    def timeline(ref: str) -> dict[str, Any]:
        return ctx.store.timeline(_ref(ref))

    @app.delete("/v1/instances/{ref}", status_code=202, dependencies=[v1])
    def delete(ref: str) -> dict[str, Any]:
        accepted = ctx.store.delete(_ref(ref))
        _log_accepted(accepted.response)
        ctx.bus.publish(accepted.casts)
        return accepted.response

    @app.post("/v1/instances/{ref}/reboot", status_code=202, dependencies=[v1])
    def reboot(ref: str, body: RebootBody | None = None) -> dict[str, Any]:
        accepted = ctx.store.reboot(_ref(ref), hard=body.hard if body else False)
        _log_accepted(accepted.response)
        ctx.bus.publish(accepted.casts)
        return accepted.response

    @app.get("/v1/instances/{ref}/console-log", dependencies=[v1])
    def console_log(
        ref: str, tail: Annotated[int | None, Query(ge=0, le=100_000)] = None
    ) -> dict[str, Any]:
        uuid, host = ctx.store.instance_host(_ref(ref))
        client = ctx.bus.client("compute", host, timeout=settings.call_timeout)
        try:
            reply = client.call("get_console_log", InstanceRef(instance_uuid=uuidlib.UUID(uuid)))
            logged = expect(reply, ConsoleLog)
        except RemoteCallTimeout as err:
            raise errors.AgentTimeout(host=host, problem=err.reason) from err
        except (NoAgentForHost, InvalidMessage) as err:
            raise errors.AgentUnreachable(host=host, problem=err.reason) from err
        except AgentsError as err:
            raise errors.AgentUnreachable(host=host, problem=err.reason) from err
        assert isinstance(logged, ConsoleLog)
        text, truncated = logged.text, logged.truncated
        if tail is not None:
            lines = text.splitlines(keepends=True)
            truncated = truncated or len(lines) > tail
            text = "".join(lines[-tail:] if tail else [])
        return {"instance_uuid": uuid, "text": text, "truncated": truncated}

    # ----------------------------------------------------------------- ports, hosts, ops

    @app.get("/v1/ports", dependencies=[v1])
    def ports(host: HostName | None = None, instance: uuidlib.UUID | None = None) -> Any:
        return ctx.store.ports(host, str(instance) if instance else None)

    @app.get("/v1/hosts", dependencies=[v1])
    def hosts() -> list[dict[str, Any]]:
        return ctx.store.hosts()

    @app.get("/v1/operations", dependencies=[v1])
    def operations(
        request_id: Annotated[str | None, Query(max_length=128)] = None,
        instance: uuidlib.UUID | None = None,
    ) -> list[dict[str, Any]]:
        return ctx.store.operations(request_id, str(instance) if instance else None)

    @app.get("/v1/operations/{op_id}", dependencies=[v1])
    def operation(op_id: str) -> dict[str, Any]:
        return ctx.store.operation(op_id)

    # ----------------------------------------------------------------- event stream

    @app.get("/v1/events", dependencies=[v1])
    async def events(
        request: Request,
        request_id: Annotated[str | None, Query(max_length=128)] = None,
        instance: uuidlib.UUID | None = None,
        host: HostName | None = None,
        after: Annotated[int | None, Query(ge=0)] = None,
        replay: bool = False,
        timeout: Annotated[float | None, Query(gt=0, le=86400)] = None,
    ) -> StreamingResponse:
        if after is not None:
            start = after
        elif replay:
            start = 0
        else:
            start = await run_in_threadpool(ctx.store.last_event_id)
        filters = {
            "request_id": request_id,
            "instance": str(instance) if instance else None,
            "host": host,
        }
        return StreamingResponse(
            _stream(ctx, request, start, filters, timeout),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    return app


async def _stream(
    ctx: Context,
    request: Request,
    last: int,
    filters: dict[str, Any],
    timeout: float | None,
) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()

    def on_new_events() -> None:
        loop.call_soon_threadsafe(wake.set)

    unsubscribe = ctx.hub.subscribe(on_new_events)
    deadline = None if timeout is None else loop.time() + timeout
    last_sent = loop.time()
    try:
        yield b": stream open\n\n"
        while True:
            wake.clear()
            rows = await run_in_threadpool(
                functools.partial(ctx.store.events_after, last, **filters)
            )
            for row in rows:
                last = row["id"]
                data = json.dumps(row, separators=(",", ":"))
                yield f"id: {last}\nevent: timeline\ndata: {data}\n\n".encode()
                last_sent = loop.time()
            if len(rows) >= 500:
                continue  # a backlog: keep reading before waiting
            now = loop.time()
            if deadline is not None and now >= deadline:
                return
            if await request.is_disconnected():
                return
            if now - last_sent >= KEEPALIVE_S:
                yield b": keepalive\n\n"
                last_sent = now
            wait = STREAM_POLL_S if deadline is None else min(STREAM_POLL_S, deadline - now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=max(wait, 0.01))
    finally:
        unsubscribe()


# --------------------------------------------------------------------------- choices


def _ref(ref: str) -> str:
    if len(ref) > 63 and len(ref) != 36:
        raise errors.RequestInvalid(field="instance", value=ref[:80], problem="is too long")
    return ref


def _log_accepted(response: dict[str, Any]) -> None:
    """One line per instance of an accepted request, with the ids operators search the
    journal for (`request_id`, `instance_uuid`), as the agents' lines carry them."""
    for inst in response.get("instances", ()):
        log.info(
            "operation_accepted",
            operation=response.get("operation"),
            request_id=response.get("request_id"),
            instance_uuid=inst.get("uuid"),
            instance=inst.get("name"),
            host=inst.get("host"),
        )


def _names(base: str | None, count: int, rng: random.Random) -> list[str]:
    stem = base if base is not None else f"vm-{rng.randrange(16**6):06x}"
    if count == 1:
        return [stem]
    names = [f"{stem}-{i}" for i in range(1, count + 1)]
    if len(names[-1]) > 63:
        raise errors.RequestInvalid(
            field="name", value=base, problem=f"is too long to number {count} instances"
        )
    return names


def _flavor(config: ControllerConfig, name: str | None) -> Flavor:
    if not config.flavors:
        raise errors.UnknownFlavor(field="flavor", value=name, valid=[])
    chosen = name or ("m1.tiny" if "m1.tiny" in config.flavors else next(iter(config.flavors)))
    flavor = config.flavors.get(chosen)
    if flavor is None:
        raise errors.UnknownFlavor(field="flavor", value=name, valid=sorted(config.flavors))
    return flavor


def _networks(config: ControllerConfig, given: list[str] | None) -> list[NetworkSpec]:
    if not config.networks:
        raise errors.UnknownNetwork(field="networks", value=given, valid=[])
    if not given:
        return [next(iter(config.networks.values()))]
    out: list[NetworkSpec] = []
    for ref in given:
        net = config.networks.get(ref)
        if net is None:
            net = next((n for n in config.networks.values() if str(n.uuid) == ref.lower()), None)
        if net is None:
            raise errors.UnknownNetwork(
                field="networks", value=ref[:80], valid=list(config.networks)
            )
        if net in out:
            raise errors.RequestInvalid(
                field="networks", value=ref, problem="is listed twice (one port per network)"
            )
        out.append(net)
    return out


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
