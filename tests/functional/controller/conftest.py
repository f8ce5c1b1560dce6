"""A real database per test: a SQLite file, and a PostgreSQL database made and dropped.

PostgreSQL is the server on 127.0.0.1:5432 (trust auth, user postgres); each test gets
a database of its own with a unique name, dropped afterwards even when the test failed.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

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
