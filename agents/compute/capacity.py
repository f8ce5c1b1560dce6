"""What this host offers the controller's scheduler: vCPUs and memory, from config or /proc.

Read at each heartbeat (cheap), so a resized host or a changed setting is reported
without a restart. Nothing here decides placement; the controller does.
"""

from __future__ import annotations

import os
from pathlib import Path

from agents.compute.settings import ComputeSettings

MEMINFO = Path("/proc/meminfo")


def mem_total_mb(meminfo: Path = MEMINFO) -> int:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def capacity(settings: ComputeSettings, meminfo: Path = MEMINFO) -> tuple[int, int]:
    """(vcpus, memory_mb) this host reports."""
    vcpus = settings.vcpus or int((os.cpu_count() or 1) * settings.cpu_allocation_ratio)
    memory = settings.memory_mb or max(0, mem_total_mb(meminfo) - settings.reserved_host_memory_mb)
    return vcpus, memory
