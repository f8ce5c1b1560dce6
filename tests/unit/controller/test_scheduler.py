"""scheduler: least loaded first, spread across hosts, clear reasons when nothing fits."""

from __future__ import annotations

import pytest

from agents.controller.scheduler import HostLoad, HostUnfit, NoHostFits, check_host, place
from common.config import Flavor

TINY = Flavor(name="tiny", vcpus=1, memory_mb=128)
BIG = Flavor(name="big", vcpus=4, memory_mb=4096)


def host(name: str, vcpus: int = 8, mem: int = 1024, used_cpu: int = 0, used_mem: int = 0,
         alive: bool = True) -> HostLoad:  # fmt: skip
    return HostLoad(name, alive, vcpus, mem, used_cpu, used_mem)


def test_spreads_over_equal_hosts_in_name_order() -> None:
    assert place([host("b"), host("a"), host("c")], TINY, 4) == ["a", "b", "c", "a"]


def test_least_loaded_first() -> None:
    assert place([host("a", used_mem=512), host("b")], TINY, 1) == ["b"]


def test_dead_and_full_hosts_are_skipped() -> None:
    hosts = [host("a", alive=False), host("b", mem=100), host("c")]
    assert place(hosts, TINY, 2) == ["c", "c"]


def test_nothing_fits_says_why_per_host() -> None:
    with pytest.raises(NoHostFits) as err:
        place([host("a", alive=False), host("b", mem=1024)], BIG, 1)
    text = str(err.value)
    assert "a: its compute-agent is down" in text and "b: 1024 of 1024 MiB free" in text


def test_no_hosts_at_all() -> None:
    with pytest.raises(NoHostFits, match="no compute-agent has reported"):
        place([], TINY, 1)


def test_count_that_overflows_one_host() -> None:
    check_host(host("a", vcpus=2), TINY, 2)
    with pytest.raises(HostUnfit, match="0 of 2 vCPUs free"):
        check_host(host("a", vcpus=2), TINY, 3)
