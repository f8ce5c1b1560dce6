"""agentctl's settings: where the controller is and how long to wait for it.

Owns choosing the config files (--config-file, else $AGENTS_CONFIG, else the /etc
defaults that exist), reading their `[agentctl]` section and applying `$AGENTS_URL`.
Every other section of those files (shared.conf is read by the daemons too) is ignored.

Stdlib only (configparser, a NamedTuple rather than a dataclass, whose import pulls in
`inspect`): this runs on every invocation, and
pydantic plus `common.config` cost more than the rest of a command. Nothing here does
network I/O; an error names the file, section, key and value.
"""

from __future__ import annotations

import configparser
import math
import os
from collections.abc import Mapping, Sequence
from typing import NamedTuple
from urllib.parse import urlsplit

# plain strings, not pathlib: importing pathlib costs more than reading the files
DEFAULT_FILES = ("/etc/agents/shared.conf", "/etc/agents/agentctl.conf")
CONFIG_ENV = "AGENTS_CONFIG"
URL_ENV = "AGENTS_URL"
SECTION = "agentctl"
DEFAULT_URL = "http://127.0.0.1:8780"

# key -> (lowest exclusive, highest inclusive) seconds
_SECONDS = {
    "connect_timeout": (0.0, 60.0),
    "call_timeout": (0.0, 3600.0),
    "wait_timeout": (0.0, 86400.0),
}
_PATHS = ("token_file", "ca_file")
_KNOWN = ("url", *_PATHS, *_SECONDS)
TOKEN_ENV = "AGENTS_TOKEN"


class CtlSettings(NamedTuple):
    # Base URL of agents-controller's REST API (http or https, optionally with a path
    # prefix when a proxy serves it under one); no trailing slash. Several controllers
    # of one deployment: their URLs comma-separated, tried in order when one does not
    # take the connection (`urls`).
    url: str = DEFAULT_URL
    # Seconds to wait for a TCP connection: a controller that is down is reported within it.
    connect_timeout: float = 1.0
    # Seconds one API call may take once connected (exit 4 past it).
    call_timeout: float = 10.0
    # Default --timeout of `send ... --wait`.
    wait_timeout: float = 300.0
    # The file holding the API token (mode 0600); $AGENTS_TOKEN (the token itself) and
    # --token-file win over it; empty: ~/.config/agents/token where it exists.
    token_file: str = ""
    # CA certificate(s) (PEM) that signed the controller's https certificate; empty: the
    # system's CAs.
    ca_file: str = ""

    @property
    def urls(self) -> list[str]:
        return self.url.split(",")


def config_files(
    given: Sequence[str] | None, environ: Mapping[str, str] | None = None
) -> list[str]:
    """Files to read: --config-file if given, else $AGENTS_CONFIG, else the /etc defaults."""
    env = os.environ if environ is None else environ
    if given:
        return list(given)
    listed = env.get(CONFIG_ENV, "")
    if listed:
        return [f for f in listed.split(":") if f]
    return [p for p in DEFAULT_FILES if os.path.exists(p)]


def load_settings(files: Sequence[str], environ: Mapping[str, str] | None = None) -> CtlSettings:
    """Read `[agentctl]` of `files` (later files win key by key), then $AGENTS_URL."""
    from agents.ctl.errors import ConfigError

    env = os.environ if environ is None else environ
    values: dict[str, str] = {}
    origin: dict[str, str] = {}
    for file in files:
        for key, value in _read_section(file).items():
            if value == "":
                continue  # an empty value means "the default", as in the daemons' files
            if key not in _KNOWN:
                raise ConfigError(
                    file=file,
                    section=SECTION,
                    key=key,
                    value=value,
                    problem=f"unknown key (known: {', '.join(_KNOWN)})",
                )
            values[key] = value
            origin[key] = file
    if env.get(URL_ENV):
        values["url"] = env[URL_ENV]
        origin["url"] = f"${URL_ENV}"
    fields: dict[str, object] = {}
    for key, raw in values.items():
        try:
            if key == "url":
                fields[key] = _check_url(raw)
            elif key in _PATHS:
                fields[key] = _check_path(key, raw)
            else:
                fields[key] = _check_seconds(key, raw)
        except ValueError as err:
            raise ConfigError(
                file=origin[key], section=SECTION, key=key, value=raw, problem=str(err)
            ) from None
    return CtlSettings(**fields)  # type: ignore[arg-type]  # keys and types checked above


def _read_section(file: str) -> dict[str, str]:
    from agents.ctl.errors import ConfigFileError

    # "[DEFAULT]" is an ordinary section for the daemons (common.config): it must not
    # leak its keys into [agentctl] as configparser's defaults would.
    parser = configparser.ConfigParser(interpolation=None, default_section="\x00none")
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    try:
        with open(file, encoding="utf-8") as fh:
            parser.read_file(fh)
    except OSError as err:
        raise ConfigFileError(file=file, problem=err.strerror or str(err)) from None
    except (configparser.Error, UnicodeDecodeError) as err:
        raise ConfigFileError(file=file, problem=str(err).splitlines()[0]) from None
    if not parser.has_section(SECTION):
        return {}
    return dict(parser.items(SECTION, raw=True))


def _check_url(raw: str) -> str:
    """One URL, or several comma-separated (one deployment's controllers), normalised."""
    listed = [u.strip() for u in raw.split(",")]
    if len(listed) > 1:
        if any(not u for u in listed):
            raise ValueError("lists an empty URL (two commas, or one at an end)")
        checked = []
        for u in listed:
            try:
                checked.append(_check_one_url(u))
            except ValueError as err:
                raise ValueError(f"{u!r} {err}") from None
        if len(set(checked)) != len(checked):
            raise ValueError("lists one URL twice")
        return ",".join(checked)
    return _check_one_url(raw)


def _check_one_url(raw: str) -> str:
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("http", "https"):
        raise ValueError("must start with http:// or https://, like http://127.0.0.1:8780")
    if not parts.hostname:
        raise ValueError("names no host")
    try:
        parts.port  # noqa: B018  # urlsplit checks the port only when asked
    except ValueError:
        raise ValueError("has a port that is not a number between 0 and 65535") from None
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("must not carry a user, query or fragment")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _check_path(key: str, raw: str) -> str:
    path = os.path.expanduser(raw.strip())
    if key == "ca_file" and not os.path.isfile(path):
        raise ValueError("no such file")
    return path


def _check_seconds(key: str, raw: str) -> float:
    low, high = _SECONDS[key]
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("must be a number of seconds") from None
    if not math.isfinite(value) or not low < value <= high:
        raise ValueError(f"must be more than {low:g} and at most {high:g} seconds")
    return value
