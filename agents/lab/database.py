"""A controller's database in a lab: a SQLite file by default, or a scratch PostgreSQL one.

`ScratchPostgres` creates a database with a unique name on a PostgreSQL server (given by
an admin URL such as `postgresql://postgres@127.0.0.1:5432/postgres`) and drops it on
`drop()`, first ending any session still connected to it. SQLite needs nothing here:
the controller makes its file under the lab's directory, which the lab removes.

Must not touch a database it did not create.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from agents.lab.procs import LabError, unique


def _psycopg_url(url: str) -> str:
    """A libpq URL psycopg accepts (no SQLAlchemy `+psycopg` driver suffix)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme="postgresql"))


@dataclass
class ScratchPostgres:
    admin_url: str
    name: str

    @classmethod
    def create(cls, admin_url: str, prefix: str = "lab_") -> ScratchPostgres:
        import psycopg

        name = unique(prefix).replace("-", "_")
        try:
            with psycopg.connect(_psycopg_url(admin_url), autocommit=True, connect_timeout=5) as c:
                c.execute(f'CREATE DATABASE "{name}"')
        except psycopg.Error as err:
            raise LabError(f"cannot create database {name} on {admin_url}: {err}") from err
        return cls(admin_url=admin_url, name=name)

    @property
    def url(self) -> str:
        """The controller's `database_url` (SQLAlchemy, psycopg 3 driver)."""
        parts = urlsplit(self.admin_url)
        return urlunsplit(parts._replace(scheme="postgresql+psycopg", path=f"/{self.name}"))

    def drop(self) -> None:
        import psycopg

        with psycopg.connect(
            _psycopg_url(self.admin_url), autocommit=True, connect_timeout=5
        ) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def exists(self) -> bool:
        import psycopg

        with psycopg.connect(
            _psycopg_url(self.admin_url), autocommit=True, connect_timeout=5
        ) as conn:
            row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.name,))
            return row.fetchone() is not None
