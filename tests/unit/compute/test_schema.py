"""Every domain XML the agent can produce validates against libvirt's own schema.

Walks flavors x image kinds x vif types x domain types through driver.get_guest_xml()
and runs libvirt-clients' virt-xml-validate on each document.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agents.compute import driver
from agents.compute.driver import InstancePaths
from agents.compute.images import DiskImage, Image
from agents.compute.settings import DomainType
from common.config import BaseConfig, load
from common.messages import Port

from .fixtures import KERNEL_IMAGE, NETWORKS, PATHS_DISK, PATHS_KERNEL, PORT_B, port, spec

SHARED_CONF = Path(__file__).resolve().parents[3] / "etc" / "shared.conf"

IMAGES: dict[str, tuple[Image, InstancePaths]] = {
    "qcow2": (DiskImage("tiny", Path("/images/tiny.qcow2"), "qcow2"), PATHS_DISK),
    "raw": (DiskImage("tiny", Path("/images/tiny.raw"), "raw"), PATHS_DISK),
    "kernel": (KERNEL_IMAGE, PATHS_KERNEL),
}
PORTS: dict[str, list[Port]] = {
    "none": [],
    "ethernet": [port()],
    "bridge": [port(vif_type="bridge")],
    "mixed": [port(mtu=1400), port(PORT_B, vif_type="bridge")],
}
DOMAIN_TYPES: list[DomainType] = ["qemu", "kvm", "test"]


@pytest.mark.skipif(shutil.which("virt-xml-validate") is None, reason="virt-xml-validate missing")
def test_every_combination_validates(tmp_path: Path) -> None:
    flavors = load(BaseConfig, [SHARED_CONF]).flavors
    assert flavors, "etc/shared.conf defines no flavor"
    docs = []
    for fname, (iname, (image, paths)), (pname, ports), dtype in itertools.product(
        flavors, IMAGES.items(), PORTS.items(), DOMAIN_TYPES
    ):
        xml = driver.get_guest_xml(
            spec(ports=ports, flavor=fname), flavors, image, paths, NETWORKS, dtype
        )
        path = tmp_path / f"{fname}-{iname}-{pname}-{dtype}.xml"
        path.write_text(xml)
        docs.append(path)

    def validate(path: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
        return path, subprocess.run(
            ["virt-xml-validate", str(path), "domain"], capture_output=True, text=True
        )

    with ThreadPoolExecutor(max_workers=4) as pool:
        failures = [
            f"{p.name}: {r.stderr.strip() or r.stdout.strip()}"
            for p, r in pool.map(validate, docs)
            if r.returncode != 0
        ]
    assert len(docs) == len(flavors) * 3 * 4 * 3
    assert not failures, "\n".join(failures)
