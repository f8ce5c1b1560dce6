"""An operator's config files and command lines, made from this checkout's samples.

Owns:
- `render_config()`: an `etc/` sample with keys set (the sample's comments stay; a
  commented-out `# key =` line is replaced in place);
- `sample()`: the text of `etc/<name>`;
- `unit_command()`: an agent's command line, the `ExecStart=` of its
  `systemd/<agent>.service` with only `/etc/agents` and the binary's directory replaced.

Pure text in, text out (plus reading the samples and units). Must not write files:
callers decide where configs live.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from pathlib import Path

from agents.lab.procs import REPO, LabError, console_script

Values = Mapping[str, Mapping[str, object]]

_SECTION = re.compile(r"^\s*\[(?P<name>[^\]]+)\]\s*$")


def render_config(sample: str, values: Values) -> str:
    """The sample text with `values[section][key]` set, comments kept.

    Within a section an active `key = ...` line wins over a commented `# key = ...` one;
    a key the sample does not mention is added at the end of its section, and a section
    it lacks is appended.
    """
    lines = sample.splitlines()
    pending = {s: {k: str(v) for k, v in kv.items()} for s, kv in values.items()}
    bounds: dict[str, tuple[int, int]] = {}
    current: str | None = None
    start = 0
    for i, line in enumerate(lines):
        m = _SECTION.match(line)
        if m:
            if current is not None:
                bounds.setdefault(current, (start, i))
            current, start = m.group("name").strip(), i + 1
    if current is not None:
        bounds.setdefault(current, (start, len(lines)))

    inserts: dict[int, list[str]] = {}
    for section, kv in pending.items():
        if section not in bounds:
            continue
        lo, hi = bounds[section]
        for key, value in kv.items():
            active = re.compile(rf"^\s*{re.escape(key)}\s*=")
            commented = re.compile(rf"^\s*#\s*{re.escape(key)}\s*=")
            hit = next((i for i in range(lo, hi) if active.match(lines[i])), None)
            if hit is None:
                hit = next((i for i in range(lo, hi) if commented.match(lines[i])), None)
            if hit is not None:
                lines[hit] = f"{key} = {value}"
            else:
                end = hi
                while end > lo and not lines[end - 1].strip():
                    end -= 1
                inserts.setdefault(end, []).append(f"{key} = {value}")
    for at in sorted(inserts, reverse=True):
        lines[at:at] = inserts[at]
    for section, kv in pending.items():
        if section not in bounds:
            lines += ["", f"[{section}]", *(f"{k} = {v}" for k, v in kv.items())]
    return "\n".join(lines) + "\n"


def merge(*layers: Values) -> dict[str, dict[str, object]]:
    """Section-wise merge of `layers`; a later layer's key wins."""
    out: dict[str, dict[str, object]] = {}
    for layer in layers:
        for section, kv in layer.items():
            out[section] = {**out.get(section, {}), **kv}
    return out


def sample(name: str) -> str:
    path = REPO / "etc" / name
    if not path.is_file():
        raise LabError(f"the sample config {path} does not exist (a checkout is needed)")
    return path.read_text()


def unit_command(agent: str, etc_dir: Path) -> list[str]:
    """The ExecStart of systemd/<agent>.service, pointed at `etc_dir` and this venv."""
    unit = REPO / "systemd" / f"{agent}.service"
    if not unit.is_file():
        raise LabError(f"the unit file {unit} does not exist")
    lines = [ln for ln in unit.read_text().splitlines() if ln.startswith("ExecStart=")]
    if len(lines) != 1:
        raise LabError(f"{unit}: expected one ExecStart= line, found {len(lines)}")
    argv = shlex.split(lines[0].removeprefix("ExecStart="))
    if Path(argv[0]).name != agent:
        raise LabError(f"{unit}: ExecStart runs {argv[0]!r}, not {agent}")
    return [console_script(agent), *(a.replace("/etc/agents", str(etc_dir)) for a in argv[1:])]
