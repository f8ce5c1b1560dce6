"""The API's bearer tokens: the token file, minting, and checking a presented token.

The controller keeps no secret: the token file holds one line per token,

    ROLE NAME sha256:HEX

(`#` comments and blank lines allowed), where HEX is the SHA-256 of the secret the
client presents as `Authorization: Bearer SECRET`. A secret is 32 random bytes
(`secrets.token_urlsafe`), so a plain hash is enough: nobody can search 2^256
candidates, and no salt or slow hash would add anything but CPU per request.

The file must not be readable or writable by group or others (0600, like an ssh key):
whoever can write it can make themselves admin. `Tokens` re-reads it when it changes
(inode, size, mtime or ctime: a chmod counts), so `agents-controller token add|remove`
takes effect on the next request without a restart; a file that turns bad fails closed
(every request is refused with a reason) until it is fixed.

A presented token is hashed and compared with every entry with `hmac.compare_digest`,
without stopping at the first match, so the time taken tells nothing of which entry
(or which prefix of a hash) matched.

Stdlib only; nothing here logs, and no error message carries a secret.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
import stat
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from common.errors import AgentsError

Role = Literal["admin", "reader"]
ROLES: tuple[Role, ...] = ("admin", "reader")
PREFIX = "agt_"  # so a secret pasted somewhere it should not be is easy to recognise

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_HASH_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


class TokenFileError(AgentsError):
    msg_fmt = "token file {path}: {problem}"


class TokenError(AgentsError):
    """A `token add|remove` request that cannot be done (bad name, role, duplicate)."""

    msg_fmt = "{field} = {value!r}: {problem}"


@dataclass(frozen=True)
class Entry:
    role: Role
    name: str
    digest: str  # "sha256:<hex>"


def digest(secret: str) -> str:
    return "sha256:" + hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def new_secret() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def check_mode(path: Path, what: str = "token file") -> os.stat_result:
    """stat() of `path`; TokenFileError if it is missing, not a file, or open to others."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise TokenFileError(path=path, problem="does not exist") from None
    except OSError as err:
        raise TokenFileError(path=path, problem=err.strerror or str(err)) from None
    if not stat.S_ISREG(st.st_mode):
        raise TokenFileError(path=path, problem="is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise TokenFileError(
            path=path,
            problem=f"mode {mode:04o} lets group or others read or write the {what};"
            f" chmod 600 {path}",
        )
    return st


def parse(text: str, path: Path) -> list[Entry]:
    entries: list[Entry] = []
    names: set[str] = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        where = f"line {number}"
        if len(parts) != 3:
            # never quote the line: a secret pasted here by mistake must not be echoed
            raise TokenFileError(
                path=path, problem=f"{where}: expected 'ROLE NAME sha256:HEX' ({len(parts)} words)"
            )
        role, name, dig = parts
        if role not in ROLES:
            raise TokenFileError(
                path=path, problem=f"{where}: role {role[:20]!r} is not one of admin, reader"
            )
        if not _NAME_RE.fullmatch(name):
            raise TokenFileError(path=path, problem=f"{where}: bad token name {name[:64]!r}")
        if not _HASH_RE.fullmatch(dig):
            raise TokenFileError(
                path=path, problem=f"{where}: the third word must be sha256: and 64 hex digits"
            )
        if name in names:
            raise TokenFileError(path=path, problem=f"{where}: token name {name!r} appears twice")
        names.add(name)
        entries.append(Entry(role, name, dig))
    return entries


def read(path: Path) -> list[Entry]:
    check_mode(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        problem = getattr(err, "strerror", None) or str(err)
        raise TokenFileError(path=path, problem=problem) from None
    return parse(text, path)


def match(entries: list[Entry], secret: str) -> Entry | None:
    """The entry whose hash is the secret's; every entry is compared (constant time)."""
    presented = digest(secret).encode()
    found: Entry | None = None
    for entry in entries:
        if hmac.compare_digest(presented, entry.digest.encode()):
            found = entry
    return found


class Tokens:
    """The token file as the API sees it: re-read when it changes, checked per request."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._key: tuple[int, int, int, int] | None = None
        self._entries: list[Entry] = []
        self._problem: str | None = None
        self.load()

    def load(self) -> None:
        """Read the file now; TokenFileError when it is unusable (used at start)."""
        st = check_mode(self.path)
        entries = read(self.path)
        with self._lock:
            self._key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            self._entries, self._problem = entries, None

    def lookup(self, secret: str) -> Entry | None:
        """The entry of `secret`, None if unknown; TokenFileError if the file went bad."""
        self._refresh()
        with self._lock:
            if self._problem is not None:
                raise TokenFileError(path=self.path, problem=self._problem)
            entries = self._entries
        return match(entries, secret)

    def _refresh(self) -> None:
        try:
            st = self.path.stat()
            key: tuple[int, int, int, int] | None = (
                st.st_ino,
                st.st_size,
                st.st_mtime_ns,
                st.st_ctime_ns,
            )
        except OSError:
            key = None
        if key is not None and key == self._key:
            return
        try:
            self.load()
        except TokenFileError as err:
            with self._lock:
                self._key, self._entries = key, []
                self._problem = str(err).removeprefix(f"token file {self.path}: ")


# --------------------------------------------------------------------------- editing


def add(path: Path, role: str, name: str) -> str:
    """Mint a token `name` with `role` into the file (created 0600 if missing); the secret.

    The secret is returned once and never stored; only its hash is written. An existing
    file keeps its owner, group and mode (it is replaced atomically).
    """
    if role not in ROLES:
        raise TokenError(field="--role", value=role, problem="must be admin or reader")
    if not _NAME_RE.fullmatch(name):
        raise TokenError(
            field="NAME",
            value=name,
            problem="must be 1-64 of letters, digits, '.', '_', '@', '-', starting with a"
            " letter or digit",
        )
    entries = read(path) if path.exists() else []
    if any(e.name == name for e in entries):
        raise TokenError(
            field="NAME", value=name, problem="a token of that name exists (remove it first)"
        )
    secret = new_secret()
    _write(path, [*entries, Entry(role, name, digest(secret))])
    return secret


def remove(path: Path, name: str) -> Entry:
    entries = read(path)
    kept = [e for e in entries if e.name != name]
    if len(kept) == len(entries):
        known = ", ".join(e.name for e in entries) or "none"
        raise TokenError(field="NAME", value=name, problem=f"no such token (known: {known})")
    _write(path, kept)
    return next(e for e in entries if e.name == name)


def _write(path: Path, entries: list[Entry]) -> None:
    text = (
        "# agents-controller API tokens: ROLE NAME sha256:HEX (hashes only; the secrets\n"
        "# were printed once by `agents-controller token add`). Keep it mode 0600.\n"
        + "".join(f"{e.role} {e.name} {e.digest}\n" for e in entries)
    )
    old = path.stat() if path.exists() else None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        if old is not None:
            with contextlib.suppress(PermissionError):  # not root: it is ours anyway
                os.fchown(fd, old.st_uid, old.st_gid)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
