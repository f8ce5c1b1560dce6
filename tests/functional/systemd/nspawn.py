"""A Debian 12 root file system booted by a real systemd in systemd-nspawn, for the tests.

The test machines do not run systemd as PID 1, so the pid1 and fresh tests boot one in
a container: `debootstrap --variant=minbase --include=systemd,dbus,ca-certificates`
gives the *base* root (a fresh Debian 12 with nothing of the project in it); the *pid1*
root is the base plus the Debian packages tools/install.sh needs (docs/operations.md,
"Install"). Both are cached outside the checkout under CACHE (/var/cache/agents-test by
default, $AGENTS_TEST_CACHE to move it), each in a directory named by a hash of what
goes into it, and rebuilt when missing. Downloaded .debs and pip's wheel cache stay
there too, so a second run downloads nothing it already has.

A test never changes a cached root: it boots a throwaway copy (an overlayfs whose upper
layer is removed afterwards). The container gets a network namespace of its own
(--private-network): nothing in it can touch the machine's links, and its 127.0.0.1 is
its own (the controller's :8780, the agents' metrics ports do not collide with anything
on the machine). relay.py, running on the machine, listens inside that namespace for the
few things the container needs from outside: the machine's RabbitMQ as 127.0.0.1:5672
and an HTTP proxy for apt and pip as 127.0.0.1:3128.

machinectl does not work without a systemd on the machine: commands run inside through
`nsenter -t LEADER -a` with a clean environment, LEADER being the container's PID 1 (the
child of the systemd-nspawn process).

Nothing here writes into the checkout; the Debian mirror and the pip configuration come
from this machine's own apt and pip set-up at run time.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agents.lab.procs import REPO

CACHE = Path(os.environ.get("AGENTS_TEST_CACHE", "/var/cache/agents-test"))
SUITE = "bookworm"
# What a Debian 12 server has anyway, and what `systemd-nspawn --boot` needs.
BASE_INCLUDE = ("systemd", "dbus", "ca-certificates")
# An operator's prerequisites of tools/install.sh (docs/operations.md, "Install"): a venv,
# and what building libvirt-python needs; qemu-img for the compute-agent's overlays.
PID1_PACKAGES = ("python3-venv", "python3-dev", "gcc", "pkg-config", "libvirt-dev", "qemu-utils")
# Bump to rebuild the cached roots when the recipe below changes in a way the inputs miss.
RECIPE = "1"
HOSTNAME = "debian12"
PROXY_PORT = 3128
NSPAWN_RUN = Path("/run/systemd/nspawn")
RELAY = Path(__file__).with_name("relay.py")
TOOLS = {
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "nsenter": "util-linux",
    "mount": "mount",
}
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Directories of the container's own system: never bound over from the machine.
SYSTEM_DIRS = {"bin", "boot", "dev", "etc", "lib", "lib64", "proc", "root", "run", "sbin"}
SYSTEM_DIRS |= {"sys", "tmp", "usr", "var"}

# Seconds each phase took, in order, and what the tests found (security scores,
# capabilities, restart times): printed by conftest.py at the end of the run.
TIMINGS: list[tuple[str, float]] = []
NOTES: list[str] = []


class ContainerError(Exception):
    """A step inside or around the container failed; the message shows its own words."""


def note(text: str) -> None:
    """A finding worth seeing in CI's log even when the test passes."""
    NOTES.append(text)
    print(text, flush=True)


@contextlib.contextmanager
def timed(phase: str) -> Iterator[None]:
    began = time.monotonic()
    try:
        yield
    finally:
        took = time.monotonic() - began
        TIMINGS.append((phase, took))
        print(f"[nspawn] {phase}: {took:.1f} s", flush=True)


def require_root_and_tools() -> None:
    """Skip without root; fail, naming the package, when a tool is missing."""
    if os.geteuid() != 0:
        pytest.skip("needs root (debootstrap, systemd-nspawn, mounts)")
    missing = [
        f"{tool} (Debian package {pkg})" for tool, pkg in TOOLS.items() if not shutil.which(tool)
    ]
    if missing:
        pytest.fail(
            "missing " + ", ".join(missing) + ": run tools/setup.sh (its PACKAGES list has them)",
            pytrace=False,
        )


def sh(cmd: Sequence[str], timeout: float = 600) -> str:
    """Run a command on the machine; ContainerError with its output when it fails."""
    result = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise ContainerError(
            f"{' '.join(cmd)} exited {result.returncode}:\n"
            f"{(result.stdout + result.stderr)[-4000:]}"
        )
    return str(result.stdout)


# ------------------------------------------------------------------------ apt and pip


def apt_mirror() -> str:
    """The Debian mirror this machine's apt uses for `bookworm` (deb822 or one-line)."""
    candidates: list[str] = []
    sources = Path("/etc/apt/sources.list.d")
    for path in sorted(sources.glob("*.sources")) if sources.is_dir() else []:
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line:
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if (
                "deb" in fields.get("types", "").split()
                and SUITE in fields.get("suites", "").split()
                and fields.get("enabled", "yes").lower() != "no"
            ):
                candidates += fields.get("uris", "").split()
    lists = [Path("/etc/apt/sources.list"), *sorted(sources.glob("*.list"))]
    for path in lists:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            words = re.sub(r"\[[^]]*\]", "", line).split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                candidates.append(words[1])
    if not candidates:
        raise ContainerError(
            f"no Debian mirror for {SUITE!r} in /etc/apt/sources.list{{,.d/*}}: "
            "debootstrap needs one"
        )
    return candidates[0].rstrip("/")


def pip_environment() -> dict[str, str]:
    """The PIP_* variables of this process: part of how pip is configured here."""
    return {k: v for k, v in os.environ.items() if k.startswith("PIP_")}


def _pip_config_files() -> list[Path]:
    names = [
        "/etc/pip.conf",
        "/etc/xdg/pip/pip.conf",
        str(Path.home() / ".config/pip/pip.conf"),
        str(Path.home() / ".pip/pip.conf"),
    ]
    if os.environ.get("PIP_CONFIG_FILE"):
        names.append(os.environ["PIP_CONFIG_FILE"])
    return [Path(n) for n in names if Path(n).is_file()]


def carry_pip_setup(root: Path) -> list[str]:
    """Copy this machine's pip configuration and trusted CAs into `root`.

    Returns the host directories the configuration names (find-links, file:// indexes)
    that exist here: the caller binds them read-only at the same path. pip's own cache
    is bound separately (CACHE/pip). The CA bundle is carried because this machine's
    trust store may hold an extra CA that HTTPS goes through; it also goes to
    /usr/local/share/ca-certificates, so an update-ca-certificates inside keeps it.
    """
    texts = []
    for path in _pip_config_files():
        target = root / str(path).lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        texts.append(path.read_text())
    texts += list(pip_environment().values())
    dirs: set[str] = set()
    for text in texts:
        for token in re.findall(r"(?:file://)?(/[^\s'\",]+)", text):
            path = Path(token)
            if path.is_dir() and path.parts[1:2] and path.parts[1] not in SYSTEM_DIRS:
                # a PEP 503 index `.../simple` links its files relative to it (../../files)
                dirs.add(str(path.parent if path.name == "simple" else path))
            elif path.is_file() and str(path).startswith("/etc/"):
                target = root / str(path).lstrip("/")  # a constraints file, a CA bundle
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if bundle.is_file():
        local = root / "usr/local/share/ca-certificates"
        local.mkdir(parents=True, exist_ok=True)
        shutil.copy2(bundle, local / "machine-trust.crt")
        shutil.copy2(bundle, root / "etc/ssl/certs/ca-certificates.crt")
    return sorted(dirs)


def copy_checkout(dest: Path) -> None:
    """What a clone of this checkout holds now (tracked and new files, not ignored ones)."""
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    dest.mkdir(parents=True, exist_ok=True)
    for raw in listed:
        if not raw:
            continue
        rel = raw.decode()
        src = REPO / rel
        if not src.is_file():  # deleted in the work tree, not yet committed
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


# ------------------------------------------------------------------------ cached roots


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:12]


def base_key() -> str:
    return _key(RECIPE, SUITE, "minbase", BASE_INCLUDE, HOSTNAME)


def pid1_key() -> str:
    return _key(base_key(), PID1_PACKAGES)


@contextlib.contextmanager
def _lock(name: str) -> Iterator[None]:
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _prune(prefix: str, keep: Path) -> None:
    """Roots of an older recipe: gone, so the cache does not grow with every change."""
    for old in (CACHE / "rootfs").glob(f"{prefix}-*"):
        if old != keep and old.is_dir() and ".tmp-" not in old.name:
            shutil.rmtree(old, ignore_errors=True)


def _finish_tmp(tmp: Path, final: Path) -> Path:
    tmp.rename(final)
    return final


def base_root() -> Path:
    """debootstrap's Debian 12 (minbase + systemd, dbus, ca-certificates), cached."""
    final = CACHE / "rootfs" / f"debian12-base-{base_key()}"
    with _lock("rootfs"):
        if final.is_dir():
            return final
        _prune("debian12-base", final)
        tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        debs = CACHE / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        with timed("debootstrap (base root, cached afterwards)"):
            sh(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={','.join(BASE_INCLUDE)}",
                    f"--cache-dir={debs}",
                    SUITE,
                    str(tmp),
                    apt_mirror(),
                ],
                timeout=900,
            )
        # What the Debian installer writes and a minbase lacks: the host's own name
        # resolves (Erlang, so RabbitMQ, refuses to start otherwise).
        (tmp / "etc/hostname").write_text(f"{HOSTNAME}\n")
        (tmp / "etc/hosts").write_text(
            f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\n"
        )
        return _finish_tmp(tmp, final)


def pid1_root() -> Path:
    """The base root plus an operator's prerequisites of install.sh, cached."""
    base = base_root()
    final = CACHE / "rootfs" / f"debian12-pid1-{pid1_key()}"
    with _lock("rootfs"):
        if final.is_dir():
            return final
        _prune("debian12-pid1", final)
        tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        with timed("pid1 root: copy base + apt-get install (cached afterwards)"):
            sh(["cp", "-a", "--reflink=auto", str(base), str(tmp)])
            mounted = ensure_nspawn_run()
            packages = " ".join(PID1_PACKAGES)
            # Not booted, the machine's network: apt reaches the mirror directly.
            try:
                sh(
                    [
                        "systemd-nspawn",
                        "--quiet",
                        "--register=no",
                        "--keep-unit",
                        f"--machine=agents-build-{uuid.uuid4().hex[:8]}",
                        "-D",
                        str(tmp),
                        f"--bind={CACHE / 'debs'}:/var/cache/apt/archives",
                        "--setenv=DEBIAN_FRONTEND=noninteractive",
                        "/bin/sh",
                        "-c",
                        "apt-get update -q && apt-get install -y -q --no-install-recommends "
                        f"{packages} && rm -rf /var/lib/apt/lists/*",
                    ],
                    timeout=1200,
                )
            finally:
                if mounted:
                    release_nspawn_run()
        return _finish_tmp(tmp, final)


def ensure_nspawn_run() -> bool:
    """systemd-nspawn refuses to work under a /run that is not tmpfs (this machine's is
    part of /): give it a tmpfs at /run/systemd/nspawn. True if this call mounted it."""
    NSPAWN_RUN.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mountpoint", "-q", str(NSPAWN_RUN)], check=False).returncode == 0:
        return False
    sh(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(NSPAWN_RUN)])
    return True


def release_nspawn_run() -> None:
    """Unmount the tmpfs unless another container still uses it (then it stays)."""
    propagate = NSPAWN_RUN / "propagate"
    if propagate.is_dir() and any(propagate.iterdir()):
        print(f"[nspawn] {NSPAWN_RUN} left mounted: another container uses it", flush=True)
        return
    subprocess.run(["umount", str(NSPAWN_RUN)], check=False, capture_output=True)


# ------------------------------------------------------------------------ throwaway copy


@dataclass
class Overlay:
    """A copy-on-write copy of `lower` at `self.root`; remove() drops every change."""

    lower: Path
    work: Path = field(init=False)
    root: Path = field(init=False)

    def __post_init__(self) -> None:
        runs = CACHE / "run"
        runs.mkdir(parents=True, exist_ok=True)
        _remove_stale_runs(runs)
        self.work = runs / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.root = self.work / "root"
        for sub in ("upper", "work", "root"):
            (self.work / sub).mkdir(parents=True)
        sh(
            [
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={self.lower},upperdir={self.work / 'upper'},"
                f"workdir={self.work / 'work'}",
                str(self.root),
            ]
        )

    def remove(self) -> None:
        if subprocess.run(["umount", str(self.root)], check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", str(self.root)], check=False)
        shutil.rmtree(self.work, ignore_errors=True)


def _remove_stale_runs(runs: Path) -> None:
    """Copies left by a test run that was killed (its pid is gone)."""
    for old in runs.iterdir():
        pid = old.name.split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            subprocess.run(
                ["umount", "--lazy", str(old / "root")], check=False, capture_output=True
            )
            shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------ the container


@dataclass
class Relay:
    """relay.py listening inside the container's network namespace (see its docstring)."""

    netns: str
    forwards: Sequence[str] = ()
    proxy: bool = False
    proc: subprocess.Popen[str] | None = None

    def start(self) -> Relay:
        cmd = [sys.executable, str(RELAY), "--netns", self.netns]
        for spec in self.forwards:
            cmd += ["--forward", spec]
        if self.proxy:
            cmd += ["--proxy", f"127.0.0.1:{PROXY_PORT}"]
        # stderr to a file: a pipe nobody reads would block the relay once it is full
        with tempfile.TemporaryFile("w+") as err:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline().strip()
            if line != "ready":
                self.stop()
                err.seek(0)
                raise ContainerError(f"relay.py did not start: {line} {err.read()[-3000:]}")
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


class Container:
    """`systemd-nspawn --boot` of `root` with its own network; run() executes inside."""

    def __init__(
        self,
        root: Path,
        log: Path,
        *,
        binds: Mapping[str, str] | None = None,
        binds_ro: Sequence[str] = (),
    ) -> None:
        self.root = root
        self.log = log
        self.name = f"agents-{uuid.uuid4().hex[:8]}"
        self.binds = dict(binds or {})
        self.binds_ro = list(binds_ro)
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0
        self.mounted_run = False

    @property
    def netns(self) -> str:
        return f"/proc/{self.leader}/ns/net"

    def boot(self, timeout: float = 90) -> None:
        self.mounted_run = ensure_nspawn_run()
        cmd = [
            "systemd-nspawn",
            "--quiet",
            "--boot",
            "--register=no",  # no systemd-machined here
            "--keep-unit",  # and no system bus to make a scope unit on
            "--private-network",
            f"--machine={self.name}",
            "-D",
            str(self.root),
        ]
        cmd += [f"--bind={src}:{dst}" for src, dst in self.binds.items()]
        cmd += [f"--bind-ro={path}" for path in self.binds_ro]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while not self.leader:
            if self.proc.poll() is not None:
                raise ContainerError(
                    f"systemd-nspawn exited {self.proc.returncode}:\n{self.tail()}"
                )
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
            with contextlib.suppress(OSError):
                for pid in children.read_text().split():
                    if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                        self.leader = int(pid)
            if time.monotonic() > deadline:
                raise ContainerError(
                    f"no systemd in the container after {timeout} s:\n{self.tail()}"
                )
            time.sleep(0.1)
        state = ""
        while time.monotonic() < deadline:
            state = self.run(["systemctl", "is-system-running"], check=False).stdout.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.2)
        else:
            raise ContainerError(f"the container's systemd is {state!r} after {timeout} s")
        if state == "degraded":
            failed = self.run(["systemctl", "--failed", "--no-pager"], check=False).stdout
            print(f"[nspawn] booted degraded:\n{failed}", flush=True)

    def tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def run(
        self,
        cmd: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        timeout: float = 120,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """`cmd` inside the container (all its namespaces), with a clean environment."""
        clean = {"PATH": CLEAN_PATH, "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb"}
        clean.update(env or {})
        full = [
            "nsenter",
            "-t",
            str(self.leader),
            "-a",
            "--",
            "/usr/bin/env",
            "-i",
            *[f"{k}={v}" for k, v in clean.items()],
            *cmd,
        ]
        result = subprocess.run(
            full, capture_output=True, text=True, timeout=timeout, input=input, check=False
        )
        if check and result.returncode != 0:
            raise ContainerError(
                f"inside the container: {' '.join(cmd)} exited {result.returncode}:\n"
                f"{(result.stdout + result.stderr)[-6000:]}"
            )
        return result

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run(["systemctl", "show", unit, "-p", ",".join(props)]).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def poweroff(self, timeout: float = 60) -> None:
        """`systemctl poweroff`, then SIGKILL to the container's PID 1 if it hangs."""
        if self.proc is None:
            return
        if self.proc.poll() is None and self.leader:
            self.run(["systemctl", "poweroff", "--no-block"], check=False, timeout=30)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"[nspawn] {self.name} did not power off in {timeout} s: killing", flush=True)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.leader, signal.SIGKILL)  # its PID namespace goes with it
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(15)
        elif self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(15)
        self.proc = None
        if self.mounted_run:
            release_nspawn_run()


def port_answers(container: Container, port: int) -> bool:
    probe = f"exec 3<>/dev/tcp/127.0.0.1/{port}"
    return container.run(["bash", "-c", probe], check=False, timeout=10).returncode == 0


def proxy_env() -> dict[str, str]:
    url = f"http://127.0.0.1:{PROXY_PORT}"
    return {"http_proxy": url, "https_proxy": url, "HTTP_PROXY": url, "HTTPS_PROXY": url}


def apt_through_proxy(root: Path) -> None:
    (root / "etc/apt/apt.conf.d/00agents-test-proxy").write_text(
        f'Acquire::http::Proxy "http://127.0.0.1:{PROXY_PORT}/";\n'
        f'Acquire::https::Proxy "http://127.0.0.1:{PROXY_PORT}/";\n'
    )


CAPABILITIES = [
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID",
    "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST",
    "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO",
    "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE",
    "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM",
    "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
]  # fmt: skip


def decode_caps(mask: int) -> list[str]:
    return [
        f"CAP_{CAPABILITIES[bit]}" if bit < len(CAPABILITIES) else f"cap_{bit}"
        for bit in range(64)
        if mask >> bit & 1
    ]
