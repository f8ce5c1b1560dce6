"""agentctl's settings: the shared sections (networks, flavors, messaging) plus [agentctl].

Also decides which files are read when none is given on the command line. Pure apart
from checking which default files exist; nothing here touches the broker.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated

from pydantic import Field

from common.config import BaseConfig, Section
from common.messages import Name

DEFAULT_FILES = (Path("/etc/agents/shared.conf"), Path("/etc/agents/agentctl.conf"))
CONFIG_ENV = "AGENTS_CONFIG"

Seconds = Annotated[float, Field(gt=0, le=3600)]


class CtlSettings(Section):
    default_flavor: Name = "m1.tiny"
    default_image: Name = "tiny"
    # How long `agents`, `list` and IP allocation listen for heartbeats after asking
    # every agent to report (a fanout cast); agents answer in a few ms on a LAN.
    discovery_window: Annotated[float, Field(gt=0, le=30)] = 1.0
    # Bound of a single RPC call (list, show, console-log, ports).
    call_timeout: Seconds = 10.0
    # Default --timeout of `send ... --wait`.
    wait_timeout: Seconds = 300.0
    # Seconds to wait for the broker before saying it is unreachable.
    broker_timeout: Annotated[float, Field(gt=0, le=60)] = 3.0
    # Where the record of agents seen before is kept ("" = $XDG_STATE_HOME/agentctl,
    # or ~/.local/state/agentctl).
    state_dir: Path | None = None


class CtlConfig(BaseConfig):
    agentctl: CtlSettings = CtlSettings()


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
    return [str(p) for p in DEFAULT_FILES if p.exists()]


def state_dir(settings: CtlSettings, environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if settings.state_dir is not None and str(settings.state_dir):
        return settings.state_dir
    base = env.get("XDG_STATE_HOME") or str(Path(env.get("HOME", "/root")) / ".local" / "state")
    return Path(base) / "agentctl"
