"""Reading the project's systemd units for tests: a small parser that keeps repeated keys.

configparser cannot read unit files (a key such as After= may appear several times and
values accumulate), so this reads them the way systemd.syntax(7) describes: sections,
`Key=value` lines, `#`/`;` comments, and a trailing backslash continuing a line.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from agents.lab.procs import REPO

UNIT_DIR = REPO / "systemd"
UNITS = ("agents-controller.service", "compute-agent.service", "l2-agent.service")
INSTALLED_VENV_BIN = "/opt/agents/venv/bin"


def parse(path: Path) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        if current is None:
            raise ValueError(f"{path}: {line!r} outside any section")
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"{path}: {line!r} is not Key=value")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def words(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> list[str]:
    """All space-separated values of a list setting (After=, Wants=...), in order."""
    return [w for value in unit.get(section, {}).get(key, []) for w in value.split()]


def one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit.get(section, {}).get(key, [])
    assert len(values) == 1, f"[{section}] {key}= set {len(values)} times: {values}"
    return values[0]


def copy_for_this_checkout(unit: str, dest: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's console script instead of the
    installed venv, so `systemd-analyze verify` can check that the command exists."""
    venv_bin = shutil.which(unit.removesuffix(".service"), path=str(REPO / ".venv" / "bin"))
    assert venv_bin, f"no console script for {unit} in {REPO / '.venv'}"
    text = (UNIT_DIR / unit).read_text().replace(INSTALLED_VENV_BIN, str(Path(venv_bin).parent))
    target = dest / unit
    target.write_text(text)
    return target
