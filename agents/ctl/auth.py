"""Which API token agentctl sends, and from where: --token-file, $AGENTS_TOKEN, the config.

Order: `--token-file FILE`, else `$AGENTS_TOKEN` (the token itself), else `[agentctl]
token_file`, else `~/.config/agents/token` (`$XDG_CONFIG_HOME/agents/token`) where it
exists, else none (the controller answers 401 unless its auth is off). A token file
must be readable by its owner only (mode 0600, like an ssh key): one open to group or
others is refused, naming the path and the mode. The file holds the token on its first
line that is not blank or a `#` comment.

Stdlib only, no network. No error message quotes a token or the file's content.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping

from agents.ctl.errors import TokenFileError
from agents.ctl.settings import TOKEN_ENV, CtlSettings

_TOKEN_RE = re.compile(r"^[\x21-\x7e]{8,1024}$")  # what may follow "Bearer " in a header


def default_token_file(environ: Mapping[str, str]) -> str:
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "agents", "token")


def find_token(
    cli_file: str | None, settings: CtlSettings, environ: Mapping[str, str]
) -> tuple[str | None, str]:
    """(token or None, where it came from: a few words for --debug)."""
    if cli_file:
        return read_token_file(cli_file), f"--token-file {cli_file}"
    env = environ.get(TOKEN_ENV, "").strip()
    if env:
        if not _TOKEN_RE.fullmatch(env):
            raise TokenFileError(
                path=f"${TOKEN_ENV}",
                problem="is not a token (8-1024 printable ASCII characters, no spaces)",
            )
        return env, f"${TOKEN_ENV}"
    if settings.token_file:
        return read_token_file(settings.token_file), f"[agentctl] token_file {settings.token_file}"
    default = default_token_file(environ)
    if os.path.exists(default):
        return read_token_file(default), default
    return None, "none (no --token-file, $AGENTS_TOKEN, token_file or " + default + ")"


def read_token_file(path: str) -> str:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as err:
        raise TokenFileError(path=path, problem=err.strerror or str(err)) from None
    try:
        st = os.fstat(fd)
        mode = stat.S_IMODE(st.st_mode)
        if not stat.S_ISREG(st.st_mode):
            raise TokenFileError(path=path, problem="is not a regular file")
        if mode & 0o077:
            raise TokenFileError(
                path=path,
                problem=f"mode {mode:04o} lets group or others read it; chmod 600 {path}",
            )
        data = os.read(fd, 8192)
    finally:
        os.close(fd)
    for raw in data.decode("utf-8", "replace").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not _TOKEN_RE.fullmatch(line):
            break
        return line
    raise TokenFileError(
        path=path,
        problem="holds no token (one line of 8-1024 printable ASCII characters, no spaces)",
    )
