"""The time the pid1 and fresh tests (systemd-nspawn containers) add to a run, printed at its end.

Every test phase (set-up, call, tear-down) of an item marked `pid1` or `fresh` is added
up per marker, and the phases nspawn.timed() measured (debootstrap, boot, install.sh,
each check) are listed, so CI's log shows what the containers cost and where; then the
findings the tests noted (security scores, capabilities, restart and stop times).
"""

from __future__ import annotations

from collections import defaultdict

import pytest

from tests.functional.systemd.nspawn import NOTES, TIMINGS

MARKERS = ("pid1", "fresh")
_spent: dict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for marker in MARKERS:
        if marker in report.keywords:
            _spent[marker] += report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TIMINGS:  # nothing ran (skipped without root, or deselected)
        return
    tr = terminalreporter
    tr.section("time added by the pid1 and fresh tests (systemd-nspawn)")
    for phase, took in TIMINGS:
        tr.write_line(f"{took:7.1f} s  {phase}")
    parts = ", ".join(f"{marker} {_spent[marker]:.1f} s" for marker in MARKERS)
    tr.write_line(f"{sum(_spent.values()):7.1f} s  in total ({parts})")
    if NOTES:
        tr.section("what the pid1 and fresh tests found")
        for line in NOTES:
            tr.write_line(line)
