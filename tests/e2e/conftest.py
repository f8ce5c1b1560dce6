"""Fixtures of the end-to-end tier: the tiny guest image, built once per session.

The image is built by the same script an operator runs (tools/build-guest-image.sh) into
the repository's cache, so a second run reuses the downloaded kernel and takes a second.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from agents.lab.procs import REPO, run

IMAGE_DIR = Path(os.environ.get("AGENTS_GUEST_IMAGE_DIR", REPO / ".cache" / "guest-image"))


@pytest.fixture(scope="session")
def guest_image_dir() -> Path:
    """An image directory holding the image `tiny` (kernel, initrd, cmdline)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, taps, QEMU)")
    for tool in ("qemu-system-x86_64", "qemu-img", "socat", "cpio"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: run tools/setup.sh")
    result = run(
        ["bash", str(REPO / "tools" / "build-guest-image.sh"), str(IMAGE_DIR)], check=False
    )
    if result.returncode != 0:
        pytest.fail(f"tools/build-guest-image.sh failed:\n{result.stderr}")
    for name in ("kernel", "initrd", "cmdline"):
        assert (IMAGE_DIR / "tiny" / name).is_file(), f"image tiny has no {name}"
    return IMAGE_DIR
