"""images.py: images are confined to image_dir; overlays are real qcow2 on a cached base."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from agents.compute.errors import ImageNotFound, ImageOutsideDir
from agents.compute.images import DiskImage, ImageStore, KernelImage


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    images = tmp_path / "images"
    images.mkdir()
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(images / "disk.qcow2"), "8M"], check=True
    )
    (images / "plain.raw").write_bytes(b"\0" * 1024 * 1024)
    kernel = images / "boot"
    kernel.mkdir()
    (kernel / "kernel").write_bytes(b"k")
    (kernel / "initrd").write_bytes(b"i")
    (kernel / "cmdline").write_text("quiet\n")
    return ImageStore(images, tmp_path / "instances")


def test_resolves_the_three_kinds(store: ImageStore) -> None:
    disk = store.resolve("disk")
    assert isinstance(disk, DiskImage) and disk.format == "qcow2"
    raw = store.resolve("plain")
    assert isinstance(raw, DiskImage) and raw.format == "raw"
    boot = store.resolve("boot")
    assert isinstance(boot, KernelImage) and boot.cmdline == "quiet"
    assert boot.kernel == (store.image_dir / "boot" / "kernel").resolve()


@pytest.mark.parametrize("name", ["..", "../etc", "/etc/passwd", "a/b", ".", "", "_base"])
def test_names_that_leave_the_directory_are_refused(store: ImageStore, name: str) -> None:
    with pytest.raises(ImageOutsideDir):
        store.resolve(name)


def test_unknown_image_is_refused_listing_the_valid_ones(store: ImageStore) -> None:
    with pytest.raises(ImageNotFound, match="'nope'.*available: boot, disk, plain$"):
        store.resolve("nope")


def test_symlinks_pointing_out_are_refused(store: ImageStore, tmp_path: Path) -> None:
    outside = tmp_path / "secret.qcow2"
    outside.write_bytes(b"x")
    os.symlink(outside, store.image_dir / "evil.qcow2")
    with pytest.raises(ImageOutsideDir, match="outside the image directory"):
        store.resolve("evil")
    bad_dir = tmp_path / "elsewhere"
    bad_dir.mkdir()
    (bad_dir / "kernel").write_bytes(b"k")
    (store.image_dir / "boot3").mkdir()
    os.symlink(bad_dir / "kernel", store.image_dir / "boot3" / "kernel")
    (store.image_dir / "boot3" / "initrd").write_bytes(b"i")
    with pytest.raises(ImageOutsideDir):
        store.resolve("boot3")


def test_symlink_inside_the_directory_is_fine(store: ImageStore) -> None:
    os.symlink("disk.qcow2", store.image_dir / "alias.qcow2")
    image = store.resolve("alias")
    assert isinstance(image, DiskImage) and image.path.name == "disk.qcow2"


def _info(path: Path) -> dict[str, object]:
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", "-U", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(json.loads(out))


@pytest.mark.parametrize("name,fmt", [("disk", "qcow2"), ("plain", "raw")])
def test_overlay_is_qcow2_on_the_cached_base_grown_to_the_flavor(
    store: ImageStore, name: str, fmt: str
) -> None:
    image = store.resolve(name)
    assert isinstance(image, DiskImage)
    iid = uuid.uuid4()
    overlay = store.create_overlay(iid, image, disk_gb=1)
    info = _info(overlay)
    assert info["format"] == "qcow2"
    backing = Path(str(info["backing-filename"]))
    assert backing.parent == store.instances_dir / "_base" and backing.exists()
    assert info["backing-filename-format"] == fmt
    assert info["virtual-size"] == 1024**3
    # A second instance reuses the same base.
    other = store.create_overlay(uuid.uuid4(), image, disk_gb=0)
    assert _info(other)["backing-filename"] == str(backing)
    assert _info(other)["virtual-size"] == _info(backing)["virtual-size"]  # never shrunk
    assert store.instance_dirs() and iid in store.instance_dirs()
    assert store.remove_instance_files(iid) and not store.instance_dir(iid).exists()
    assert not store.remove_instance_files(iid)


def test_console_tail_returns_the_last_bytes(store: ImageStore) -> None:
    iid = uuid.uuid4()
    path = store.console_log_path(iid)
    assert store.console_tail(path, 100).text == ""
    store.prepare_instance_dir(iid)
    path.write_bytes(b"a" * 1000 + b"END")
    tail = store.console_tail(path, 10)
    assert tail.text == "aaaaaaaEND" and tail.truncated
    whole = store.console_tail(path, 100 * 1024)
    assert len(whole.text) == 1003 and not whole.truncated
