"""A real database per test: a SQLite file, and a PostgreSQL database made and dropped;
and the API in process over a real store and broker connection (`in_process_api`).

PostgreSQL is the server on 127.0.0.1:5432 (trust auth, user postgres); each test gets
a database of its own with a unique name, dropped afterwards even when the test failed.
"""

from __future__ import annotations

import contextlib
import random
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from agents.controller.api import Context, make_app
from agents.controller.bus import Bus, Hub
from agents.controller.db.engine import Database
from agents.controller.db.store import Store
from agents.controller.settings import ControllerConfig
from agents.lab.procs import REPO
from common.config import load
from common.rpc import Messaging
from tests.conftest import BrokerScope

PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    import psycopg

    name = f"agents_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as err:
        pytest.fail(f"PostgreSQL is not reachable on 127.0.0.1:5432: {err}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'controller.sqlite'}"
        return
    with postgres_database() as url:
        yield url


@contextlib.contextmanager
def in_process_api(
    scope: BrokerScope, tmp: Path, auth: str = "tokens"
) -> Iterator[tuple[TestClient, Store]]:
    """FastAPI's TestClient on the real app: the sample shared.conf on the scope's
    exchange, `[controller] auth` and `tokens_file = tmp/tokens`, a SQLite store, a
    real broker connection; everything closed afterwards."""
    shared = tmp / "shared.conf"
    shared.write_text(
        (REPO / "etc" / "shared.conf")
        .read_text()
        .replace("control_exchange = agents", f"control_exchange = {scope.exchange}")
    )
    conf = tmp / "controller.conf"
    conf.write_text(f"[controller]\nauth = {auth}\ntokens_file = {tmp / 'tokens'}\n")
    config = load(ControllerConfig, [shared, conf])
    db = Database(f"sqlite:///{tmp / 'c.sqlite'}")
    db.upgrade()
    store = Store(db, agent_down_time=60)
    store.sync_networks(config.networks.values())
    messaging = Messaging(config.messaging)
    hub = Hub()
    ctx = Context(
        config=config,
        store=store,
        bus=Bus(messaging, store, hub, call_timeout=2),
        hub=hub,
        healthy=lambda: {"database": "ok", "broker": "ok"},
        rng=random.Random(3),
    )
    try:
        with TestClient(make_app(ctx)) as client:
            yield client, store
    finally:
        messaging.close()
        db.close()
