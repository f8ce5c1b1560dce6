"""The repository stands alone: nothing in it points at notes outside it.

Facts worth keeping live in docs/ (docs/design.md, docs/platform.md) in the project's
own words; a comment or doc citing a file that only some developers were handed would
leave every other reader with a dead reference.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUTSIDE = re.compile(r"\b(DESIGN|PLATFORM|STYLE)\.md\b|\.\./shared/|developers' notes")


def tracked_text_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return [REPO / p for p in out.splitlines() if (REPO / p).is_file()]


def test_no_file_cites_notes_outside_the_repository() -> None:
    offenders = []
    for path in tracked_text_files():
        if path == Path(__file__).resolve():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:100]}")
    assert not offenders, "cite docs/ instead:\n" + "\n".join(offenders)
