"""The API fuzzed from its own OpenAPI document (bench/fuzz_api.py --quick) as a CI test.

A lab with tokens and one host on the test driver; Schemathesis' examples, coverage,
fuzzing and stateful phases with a few examples per operation, with the lab's admin
token; then the database audited for anything half-created and everything deleted
through the API. Zero 5xx, zero check failures (server errors, answers that do not
match the schema, an operation that ignores a missing token), zero errors.
"""

from __future__ import annotations

import re
import time

import pytest

from tests.functional.conftest import run_bench

pytestmark = pytest.mark.functional

LINE = re.compile(
    r"^FUZZ cases=(?P<cases>\d+) requests=(?P<requests>\d+) 2xx=(?P<ok>\d+) 4xx=(?P<client>\d+)"
    r" 5xx=(?P<server>\d+) failures=(?P<failures>\d+) errors=(?P<errors>\d+)"
    r" half_created=(?P<half>\d+) seconds=[0-9.]+$",
    re.M,
)


def test_quick_fuzz_finds_no_5xx_no_mismatch_nothing_half_created(root: None) -> None:
    started = time.monotonic()
    proc = run_bench("fuzz_api.py", "--quick", timeout=300)
    took = time.monotonic() - started
    found = LINE.search(proc.stdout)
    assert found, proc.stdout[-3000:] + proc.stderr[-3000:]
    counts = {k: int(v) for k, v in found.groupdict().items()}
    assert counts["server"] == 0, counts
    assert counts["failures"] == 0 and counts["errors"] == 0, counts
    assert counts["half"] == 0, counts
    # it did reach the API's logic: many cases, real builds accepted, refusals answered
    assert counts["cases"] >= 200 and counts["requests"] >= counts["cases"], counts
    assert re.search(r"^  POST \S+\s+202\s+\d+$", proc.stdout, re.M), proc.stdout[-3000:]
    assert counts["client"] > 0 and counts["ok"] > 0
    assert proc.returncode == 0
    assert took < 120, f"the quick fuzz took {took:.0f}s"
