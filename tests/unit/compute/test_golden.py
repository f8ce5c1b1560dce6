"""Golden domain XML: representative guests, compared after C14N canonicalisation.

Regenerate only on purpose, and review the diff: AGENTS_REGEN_GOLDEN=1 pytest tests/unit/compute
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from agents.compute import driver
from agents.compute.driver import InstancePaths
from agents.compute.images import Image
from agents.compute.settings import DomainType
from common.messages import InstanceSpec

from .fixtures import (
    DISK_IMAGE,
    FLAVORS,
    KERNEL_IMAGE,
    NETWORKS,
    PATHS_DISK,
    PATHS_KERNEL,
    PORT_B,
    port,
    spec,
)

GOLDEN = Path(__file__).resolve().parents[2] / "golden" / "compute"

CASES: dict[str, tuple[InstanceSpec, Image, InstancePaths, str]] = {
    "qemu-disk-ethernet": (spec(), DISK_IMAGE, PATHS_DISK, "qemu"),
    "qemu-kernel-two-ports": (
        spec(ports=[port(), port(PORT_B, vif_type="bridge", mtu=1400)], flavor="m1.small"),
        KERNEL_IMAGE,
        PATHS_KERNEL,
        "qemu",
    ),
    "kvm-disk-bridge": (
        spec(ports=[port(vif_type="bridge")], flavor="m1.medium"),
        DISK_IMAGE,
        PATHS_DISK,
        "kvm",
    ),
    "test-no-ports": (spec(ports=[]), DISK_IMAGE, PATHS_DISK, "test"),
}


def _canonical(xml: str) -> str:
    return ET.canonicalize(xml, strip_text=True)


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    s, image, paths, domain_type = CASES[case]
    dt: DomainType = domain_type  # type: ignore[assignment]
    xml = driver.get_guest_xml(s, FLAVORS, image, paths, NETWORKS, dt, request_id="req-golden")
    path = GOLDEN / f"{case}.xml"
    if os.environ.get("AGENTS_REGEN_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(xml + "\n")
    assert path.exists(), f"{path} missing: run with AGENTS_REGEN_GOLDEN=1 and review it"
    assert _canonical(xml) == _canonical(path.read_text())
