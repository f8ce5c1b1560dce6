"""Images and per-instance files: the qemu-img and filesystem edge of the compute-agent.

It owns:
- resolving an image name inside `image_dir`, confined to it: a name that is not a
  plain name (`..`, `/`, absolute), that is unknown, or whose file or a symlink on the
  way resolves outside the directory is refused with a typed error;
- the cached base of a disk image (`instances_dir/_base/`, a hard link or copy made
  once per image version, so replacing an image never corrupts running overlays) and
  the per-instance copy-on-write qcow2 overlay on it, made with `qemu-img create`;
- the instance directory (`instances_dir/<uuid>/`: disk.qcow2, console.log) and reading
  the tail of the console log.

It must not decide anything about the guest (that is driver.py) nor talk to libvirt.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

from agents.compute.errors import ImageNotFound, ImageOutsideDir, ImageToolFailed

DISK_SUFFIXES = {".qcow2": "qcow2", ".raw": "raw"}
CONSOLE_LOG = "console.log"
OVERLAY = "disk.qcow2"
_BASE_DIR = "_base"


@dataclass(frozen=True)
class DiskImage:
    name: str
    path: Path
    format: str  # qcow2 | raw


@dataclass(frozen=True)
class KernelImage:
    name: str
    kernel: Path
    initrd: Path
    cmdline: str | None


Image = DiskImage | KernelImage


@dataclass(frozen=True)
class ConsoleTail:
    text: str
    truncated: bool


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


class ImageStore:
    def __init__(self, image_dir: Path, instances_dir: Path, qemu_img: str = "qemu-img") -> None:
        self.image_dir = image_dir
        self.instances_dir = instances_dir
        self.qemu_img = qemu_img
        self._base_lock = threading.Lock()
        # virtual size by base path: a base never changes once made (its name has the
        # source's size and mtime in it), so probing it once is enough.
        self._virtual_size: dict[Path, int] = {}

    # ------------------------------------------------------------------ images

    def resolve(self, name: str) -> Image:
        """Find image `name` in image_dir, refusing anything that reaches outside it."""
        if (
            not name
            or name in (".", "..")
            or "/" in name
            or "\\" in name
            or "\0" in name
            or name.startswith(_BASE_DIR)
        ):
            raise ImageOutsideDir(image=name, path=name, image_dir=str(self.image_dir))
        root = self.image_dir.resolve()
        for suffix, fmt in DISK_SUFFIXES.items():
            candidate = self.image_dir / f"{name}{suffix}"
            if candidate.is_symlink() or candidate.exists():
                real = self._confined(name, candidate, root)
                if real.is_file():
                    return DiskImage(name=name, path=real, format=fmt)
        directory = self.image_dir / name
        if directory.is_symlink() or directory.is_dir():
            real_dir = self._confined(name, directory, root)
            kernel = self._confined(name, real_dir / "kernel", root)
            initrd = self._confined(name, real_dir / "initrd", root)
            if kernel.is_file() and initrd.is_file():
                cmdline_path = real_dir / "cmdline"
                cmdline = None
                if cmdline_path.exists():
                    real_cmdline = self._confined(name, cmdline_path, root)
                    cmdline = real_cmdline.read_text(encoding="utf-8").strip() or None
                return KernelImage(name=name, kernel=kernel, initrd=initrd, cmdline=cmdline)
        raise ImageNotFound(
            image=name, image_dir=str(self.image_dir), available=", ".join(self.names()) or "none"
        )

    def names(self) -> list[str]:
        """Names of the images in image_dir, for an operator who asked for a wrong one."""
        found: set[str] = set()
        try:
            entries = list(self.image_dir.iterdir())
        except OSError:
            return []
        for entry in entries:
            if entry.name.startswith((".", _BASE_DIR)):
                continue
            if entry.suffix in DISK_SUFFIXES and entry.is_file():
                found.add(entry.name[: -len(entry.suffix)])
            elif (entry / "kernel").is_file() and (entry / "initrd").is_file():
                found.add(entry.name)
        return sorted(found)

    def _confined(self, name: str, path: Path, root: Path) -> Path:
        real = path.resolve()
        if not _inside(real, root):
            raise ImageOutsideDir(image=name, path=str(real), image_dir=str(root))
        return real

    def _run(self, image: str, command: str, args: list[str]) -> str:
        try:
            # Own session: a SIGTERM to the agent's process group (a terminal, a test)
            # must not kill a qemu-img mid-way; the agent decides when its builds stop.
            done = subprocess.run(
                [self.qemu_img, command, *args],
                capture_output=True,
                text=True,
                check=False,
                start_new_session=True,
            )
        except OSError as err:
            raise ImageToolFailed(image=image, command=command, problem=str(err)) from err
        if done.returncode != 0:
            problem = (done.stderr.strip() or f"exit {done.returncode}").splitlines()[-1]
            raise ImageToolFailed(image=image, command=command, problem=problem)
        return done.stdout

    def base_of(self, image: DiskImage) -> Path:
        """The cached base for this version of `image` (made once, then reused)."""
        st = image.path.stat()
        base_dir = self.instances_dir / _BASE_DIR
        base = base_dir / f"{image.name}-{st.st_size}-{st.st_mtime_ns}.{image.format}"
        with self._base_lock:
            if not base.exists():
                base_dir.mkdir(parents=True, exist_ok=True)
                partial = base.with_suffix(".part")
                partial.unlink(missing_ok=True)
                try:
                    os.link(image.path, partial)
                except OSError:  # another filesystem: copy instead
                    shutil.copyfile(image.path, partial)
                partial.rename(base)
            if base not in self._virtual_size:
                info = json.loads(self._run(image.name, "info", ["--output=json", str(base)]))
                self._virtual_size[base] = int(info["virtual-size"])
        return base

    def create_overlay(self, instance_uuid: UUID, image: DiskImage, disk_gb: int) -> Path:
        """Make instances_dir/<uuid>/disk.qcow2 backed by the image's cached base."""
        base = self.base_of(image)
        overlay = self.instance_dir(instance_uuid) / OVERLAY
        overlay.parent.mkdir(parents=True, exist_ok=True)
        args = ["-q", "-f", "qcow2", "-F", image.format, "-b", str(base), str(overlay)]
        wanted = disk_gb * 1024**3
        if wanted > self._virtual_size[base]:  # grow to the flavor's disk, never shrink
            args.append(str(wanted))
        self._run(image.name, "create", args)
        return overlay

    # ------------------------------------------------------------------ instance files

    def instance_dir(self, instance_uuid: UUID) -> Path:
        return self.instances_dir / str(instance_uuid)

    def prepare_instance_dir(self, instance_uuid: UUID) -> Path:
        path = self.instance_dir(instance_uuid)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def console_log_path(self, instance_uuid: UUID) -> Path:
        return self.instance_dir(instance_uuid) / CONSOLE_LOG

    def remove_instance_files(self, instance_uuid: UUID) -> bool:
        """Remove the instance directory; True if there was one."""
        path = self.instance_dir(instance_uuid)
        if not path.exists():
            return False
        shutil.rmtree(path)
        return True

    def instance_dirs(self) -> list[UUID]:
        """Instances that have files on this host (for reconcile)."""
        found = []
        if self.instances_dir.is_dir():
            for entry in self.instances_dir.iterdir():
                try:
                    found.append(UUID(entry.name))
                except ValueError:
                    continue  # _base and anything an operator put there
        return found

    def console_tail(self, path: Path, max_bytes: int) -> ConsoleTail:
        """The last `max_bytes` of a console log (empty when the guest wrote nothing)."""
        try:
            with path.open("rb") as fh:
                size = fh.seek(0, os.SEEK_END)
                start = max(0, size - max_bytes)
                fh.seek(start)
                data = fh.read(max_bytes)
        except FileNotFoundError:
            return ConsoleTail(text="", truncated=False)
        return ConsoleTail(text=data.decode("utf-8", errors="replace"), truncated=start > 0)
