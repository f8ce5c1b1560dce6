"""Pinned JSON schemas: a wire model that changes without a version bump fails here.

Regenerate (after bumping the VERSION of every changed model, and reviewing the diff) with
    AGENTS_REGEN_SCHEMAS=1 pytest tests/unit/common/test_schema_drift.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from common.messages import MESSAGES

PINNED = Path(__file__).with_name("pinned_schemas.json")


def current() -> dict[str, Any]:
    return {
        name: {"version": cls.VERSION, "schema": cls.model_json_schema(mode="serialization")}
        for name, cls in sorted(MESSAGES.items())
    }


def test_schemas_match_pinned_versions() -> None:
    now = current()
    if os.environ.get("AGENTS_REGEN_SCHEMAS") == "1":
        PINNED.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
        pytest.skip("pinned schemas regenerated; review the diff")
    pinned = json.loads(PINNED.read_text())
    problems = []
    for name, entry in now.items():
        old = pinned.get(name)
        if old is None:
            problems.append(f"{name}: new message, not pinned yet")
        elif old["schema"] != entry["schema"] and old["version"] == entry["version"]:
            problems.append(f"{name}: schema changed but VERSION is still {entry['version']}")
        elif old["version"] != entry["version"]:
            problems.append(f"{name}: version {old['version']} -> {entry['version']}: re-pin")
    for name in pinned.keys() - now.keys():
        problems.append(f"{name}: pinned message no longer exists")
    assert not problems, "\n".join(problems)
