"""Engines, sessions and migrations: how the controller opens its database.

SQLite (the embedded default) runs in WAL mode with a busy timeout, and every writing
transaction starts with BEGIN IMMEDIATE: SQLite then serialises writers up front
instead of failing one of two transactions that both read and then try to write
("database is locked" on the lock upgrade). Readers use a plain deferred BEGIN and
never wait for writers (WAL). PostgreSQL needs none of this; it runs READ COMMITTED,
and the store takes row locks where order matters.

Migrations are Alembic's, run on start (or by `agents-controller db upgrade`) on a
connection of this engine. Controller replicas on one PostgreSQL database take turns
at that (`startup_lock`: a session advisory lock, released by the server when the
holder's connection ends, also on kill -9). A SQLite file serves one controller only:
`claim_sqlite` holds an exclusive lock on a file beside it for the process's life, so a
second controller on the same file refuses to start instead of sharing it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from common.errors import AgentsError

MIGRATIONS = Path(__file__).parent / "migrations"
T = TypeVar("T")
# pg_advisory_lock key of "migrate and sync networks" (any constant of this project)
STARTUP_LOCK_KEY = 0x6167656E7473
# PostgreSQL refused a transaction only for its timing: a deadlock (40P01) or a
# serialization failure (40001); run again from scratch, like a unique conflict.
_RETRY_SQLSTATES = ("40P01", "40001")


class DatabaseError(AgentsError):
    msg_fmt = "database {url}: {problem}"


class Conflict(Exception):
    """A unique constraint refused the transaction; the caller may retry it afresh."""


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        _sqlite_pragmas(engine)
        return engine
    return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # The driver's own transaction handling would defer BEGIN past our choice.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


def _first_line(err: DBAPIError) -> str:
    return (str(err.orig).strip().splitlines() or [type(err.orig).__name__])[0]


AFTER_COMMIT = "agents.after_commit"


def after_commit(session: Session, fn: Callable[[], None]) -> None:
    """Run `fn` once `session`'s writing transaction has committed (a log line of what
    it decided, say), not when it rolls back or is tried again."""
    session.info.setdefault(AFTER_COMMIT, []).append(fn)


class Database:
    """An engine plus two session factories: one for reading, one for writing."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.is_sqlite = url.startswith("sqlite")
        writer = self.engine.execution_options(sqlite_begin="IMMEDIATE")
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(writer, expire_on_commit=False)
        # SQLite has one writer at a time, and a writer that finds the file locked
        # sleeps in SQLite's busy handler (up to 100 ms a try) instead of waking when
        # the lock is free: under a burst, POSTs waited half a second for it. The
        # controller is the file's only writer (`claim_sqlite`), so its threads queue
        # on a lock of their own, handed over at once. PostgreSQL locks rows: nothing.
        self._one_writer: AbstractContextManager[object] = (
            threading.RLock() if self.is_sqlite else nullcontext()
        )
        self._sqlite_lock: int | None = None  # fd of claim_sqlite's lock file

    @property
    def safe_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    @contextmanager
    def reading(self) -> Iterator[Session]:
        try:
            with self._read() as session, session.begin():
                yield session
        except DBAPIError as err:
            raise DatabaseError(url=self.safe_url, problem=_first_line(err)) from err

    @contextmanager
    def writing(self) -> Iterator[Session]:
        """A writing transaction. What the work queued in `after_commit(session, fn)`
        runs once it committed (never for a rolled-back try of `retrying`)."""
        try:
            with self._one_writer, self._write() as session, session.begin():
                yield session
            for fn in session.info.pop(AFTER_COMMIT, ()):
                fn()
        except IntegrityError as err:
            raise Conflict(str(err.orig)) from err
        except DBAPIError as err:  # connection lost, database locked too long, ...
            if getattr(err.orig, "sqlstate", None) in _RETRY_SQLSTATES:
                raise Conflict(_first_line(err)) from err
            raise DatabaseError(url=self.safe_url, problem=_first_line(err)) from err

    def retrying(self, work: Callable[[Session], T], attempts: int = 20) -> T:
        """Run `work` in a writing transaction, again from scratch on a Conflict."""
        for attempt in range(attempts):
            try:
                with self.writing() as session:
                    return work(session)
            except Conflict:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def ping(self) -> None:
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except OperationalError as err:
            raise DatabaseError(url=self.safe_url, problem=str(err.orig).strip()) from err

    def close(self) -> None:
        self.engine.dispose()
        if self._sqlite_lock is not None:
            os.close(self._sqlite_lock)
            self._sqlite_lock = None

    # ------------------------------------------------------------------ replicas

    @contextmanager
    def startup_lock(self) -> Iterator[None]:
        """PostgreSQL: hold the deployment's start-up lock (wait for it) while the body
        runs, so two replicas starting at once never migrate or sync side by side.
        SQLite: nothing (`claim_sqlite` keeps a second controller out altogether)."""
        if self.is_sqlite:
            yield
            return
        try:
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            conn.exec_driver_sql(f"SELECT pg_advisory_lock({STARTUP_LOCK_KEY})")
        except DBAPIError as err:
            raise DatabaseError(url=self.safe_url, problem=_first_line(err)) from err
        try:
            yield
        finally:
            with contextlib.suppress(DBAPIError):  # gone: the lock went with it
                conn.exec_driver_sql(f"SELECT pg_advisory_unlock({STARTUP_LOCK_KEY})")
            conn.close()

    def claim_sqlite(self) -> None:
        """SQLite: take `<file>.lock` for the life of this process, or DatabaseError
        naming the file when another controller holds it. No-op for PostgreSQL."""
        path = self.url.removeprefix("sqlite:///")
        if not self.is_sqlite or not path or path == ":memory:":
            return
        lock_path = f"{path}.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DatabaseError(
                url=self.safe_url,
                problem=f"another agents-controller uses this SQLite file (it holds"
                f" {lock_path}); SQLite serves one controller, run replicas on PostgreSQL",
            ) from None
        self._sqlite_lock = fd

    # ------------------------------------------------------------------ migrations

    def _alembic(self, conn: Any) -> AlembicConfig:
        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection"] = conn
        return cfg

    def upgrade(self, revision: str = "head") -> None:
        """Bring the schema to `revision`; a no-op when it is there already."""
        try:
            with self.engine.begin() as conn:
                command.upgrade(self._alembic(conn), revision)
        except OperationalError as err:
            raise DatabaseError(url=self.safe_url, problem=str(err.orig).strip()) from err

    def current_revision(self) -> str | None:
        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    @staticmethod
    def head_revision() -> str | None:
        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        return ScriptDirectory.from_config(cfg).get_current_head()
