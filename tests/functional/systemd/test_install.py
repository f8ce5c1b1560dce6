"""tools/install.sh into a scratch root: install, install again, uninstall, purge.

The script runs for real (a venv made by pip from this checkout, accounts made by
groupadd/useradd --prefix, units verified by `systemd-analyze verify --root`), but with
`--root DIR` so nothing outside DIR changes; the test checks that too. The RabbitMQ
policy goes to a vhost the test creates and deletes, so no other test's queues are
bounded by it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import uuid
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest

from agents.lab.procs import REPO
from tests.functional.systemd.units import UNITS

pytestmark = [
    pytest.mark.functional,
    pytest.mark.skipif(os.geteuid() != 0, reason="install.sh runs as root"),
    pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl"),
]

# What install.sh reads from a checkout; the test installs from a snapshot of it, so
# that edits made meanwhile in a shared work tree cannot change the package under it.
CHECKOUT_PARTS = ("pyproject.toml", "README.md", "agents", "common", "etc", "systemd", "docs")
SCRIPTS = ("agentctl", "compute-agent", "l2-agent")
POLICY = "agents-notifications"
# What the real system has at these paths must be exactly the same after the test.
REAL_PATHS = [
    "/opt/agents",
    "/etc/agents",
    "/usr/local/bin/l2-agent",
    "/usr/local/bin/compute-agent",
    "/etc/systemd/system/l2-agent.service",
    "/etc/systemd/system/compute-agent.service",
    "/etc/systemd/system/agents-controller.service",
    "/usr/local/bin/agents-controller",
]


def scratch_root(path: Path) -> Path:
    """An empty root with just enough for useradd --prefix and systemd-analyze --root."""
    path.mkdir(mode=0o755)
    etc = path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (etc / "gshadow").write_text("root:*::\n")
    for name in ("shadow", "gshadow"):
        (etc / name).chmod(0o640)
    # ExecReload= runs /bin/kill, which the base system provides
    (path / "bin").mkdir()
    shutil.copy2(shutil.which("kill") or "/bin/kill", path / "bin" / "kill")
    # the targets and slices our units are ordered against
    (path / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", path / "usr/lib/systemd/system", symlinks=True)
    return path


def snapshot(dest: Path) -> Path:
    dest.mkdir()
    for part in CHECKOUT_PARTS:
        source = REPO / part
        if source.is_dir():
            shutil.copytree(source, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            shutil.copy2(source, dest / part)
    (dest / "tools").mkdir()
    shutil.copy2(REPO / "tools" / "install.sh", dest / "tools" / "install.sh")
    return dest


def install(checkout: Path, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["bash", str(checkout / "tools" / "install.sh"), "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def account_names(root: Path, db: str) -> list[str]:
    return [line.split(":")[0] for line in (root / "etc" / db).read_text().splitlines()]


def gid(root: Path, group: str) -> int:
    for line in (root / "etc/group").read_text().splitlines():
        name, _, number, *_ = line.split(":")
        if name == group:
            return int(number)
    raise KeyError(group)


def uid(root: Path, user: str) -> int:
    for line in (root / "etc/passwd").read_text().splitlines():
        name, _, number, *_ = line.split(":")
        if name == user:
            return int(number)
    raise KeyError(user)


def policies(vhost: str) -> dict[str, dict[str, object]]:
    out = subprocess.run(
        ["rabbitmqctl", "list_policies", "-p", vhost, "--formatter", "json", "-q"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return {p["name"]: p for p in json.loads(out or "[]")}


def real_state() -> dict[str, object]:
    state: dict[str, object] = {p: os.path.lexists(p) for p in REAL_PATHS}
    state["groups"] = sorted(account_names(Path("/"), "group"))
    state["users"] = sorted(account_names(Path("/"), "passwd"))
    return state


@pytest.fixture
def vhost() -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex[:12]}"
    subprocess.run(["rabbitmqctl", "add_vhost", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["rabbitmqctl", "delete_vhost", name], capture_output=True)


def test_install_reinstall_uninstall_purge(tmp_path: Path, vhost: str) -> None:
    before = real_state()
    root = scratch_root(tmp_path / "root")
    checkout = snapshot(tmp_path / "checkout")
    venv_bin = root / "opt/agents/venv/bin"
    etc = root / "etc/agents"
    samples = sorted(p.name for p in (checkout / "etc").glob("*.conf"))
    try:
        # ------------------------------------------------------------ install
        install(checkout, root, "--vhost", vhost)

        for script in SCRIPTS:
            link = root / "usr/local/bin" / script
            assert os.readlink(link) == f"/opt/agents/venv/bin/{script}"
            out = subprocess.run(
                [str(venv_bin / script), "--version"], capture_output=True, text=True, timeout=60
            )
            assert out.stdout.strip() == f"{script} {version('agents')}", out.stderr

        assert {"agents", "kvm"} <= set(account_names(root, "group"))
        assert "libvirt-qemu" in account_names(root, "passwd")
        assert stat.S_IMODE(etc.stat().st_mode) == 0o750
        assert sorted(p.name for p in etc.iterdir()) == sorted([*samples, "tokens"])
        # the API's token file (hashes, the controller's) and root's admin token
        tokens = etc / "tokens"
        assert stat.S_IMODE(tokens.stat().st_mode) == 0o600
        assert (tokens.stat().st_uid, tokens.stat().st_gid) == (
            uid(root, "agents"),
            gid(root, "agents"),
        )
        root_token = root / "root/.config/agents/token"
        assert stat.S_IMODE(root_token.stat().st_mode) == 0o600
        secret = root_token.read_text().strip()
        assert secret.startswith("agt_") and secret not in tokens.read_text()
        digest = hashlib.sha256(secret.encode()).hexdigest()
        assert re.search(rf"^admin root-\d+ sha256:{digest}$", tokens.read_text(), re.M)
        for name in samples:
            conf = etc / name
            assert conf.read_bytes() == (checkout / "etc" / name).read_bytes()
            # the broker password is in there
            assert stat.S_IMODE(conf.stat().st_mode) == 0o640
            assert (conf.stat().st_uid, conf.stat().st_gid) == (0, gid(root, "agents"))

        for unit in UNITS:
            installed = root / "etc/systemd/system" / unit
            assert installed.read_bytes() == (checkout / "systemd" / unit).read_bytes()
        # The installed units, with the installed executables, inside the scratch root.
        verify = subprocess.run(
            ["systemd-analyze", "verify", f"--root={root}", *UNITS],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert verify.returncode == 0, verify.stderr
        for sub in ("", "images", "instances"):
            assert (root / "var/lib/agents" / sub).is_dir()

        policy = policies(vhost)[POLICY]
        assert policy["pattern"] == r"^(agents_events|vif_events)\."
        assert policy["apply-to"] == "queues"
        definition = policy["definition"]
        definition = json.loads(definition) if isinstance(definition, str) else definition
        assert definition == {"max-length": 10000, "message-ttl": 3600000}

        # ------------------------------------------------------------ install again
        edited = etc / "shared.conf"
        edited.write_text(edited.read_text() + "\n# operator: our broker\n")
        edited_bytes = edited.read_bytes()
        l2_unit = root / "etc/systemd/system/l2-agent.service"
        l2_unit.write_text("[Service]\nExecStart=/bin/false\n")  # a stale unit is replaced
        groups_before = (root / "etc/group").read_text()

        second = install(checkout, root, "--vhost", vhost)

        assert "kept" in second.stdout
        assert root_token.read_text().strip() == secret  # not minted twice
        assert "package unchanged" in second.stdout  # same sources: no rebuild
        assert edited.read_bytes() == edited_bytes
        assert l2_unit.read_bytes() == (checkout / "systemd/l2-agent.service").read_bytes()
        assert (root / "etc/group").read_text() == groups_before  # nobody made twice
        manifest = (root / "opt/agents/manifest").read_text().splitlines()
        assert len(manifest) == len(set(manifest)), manifest

        # ------------------------------------------------------------ uninstall
        disk = root / "var/lib/agents/instances/disk.qcow2"
        disk.write_bytes(b"an instance disk")

        install(checkout, root, "--uninstall")

        assert not venv_bin.exists()
        assert not (root / "opt/agents/share").exists()
        for script in SCRIPTS:
            assert not os.path.lexists(root / "usr/local/bin" / script)
        for unit_name in UNITS:
            assert not (root / "etc/systemd/system" / unit_name).exists()
        # the edited config and the data stay; untouched samples go
        assert sorted(p.name for p in etc.iterdir()) == ["shared.conf", "tokens"]
        assert root_token.read_text().strip() == secret
        assert edited.read_bytes() == edited_bytes
        assert disk.read_bytes() == b"an instance disk"
        assert "agents" in account_names(root, "group")
        assert POLICY not in policies(vhost)

        install(checkout, root, "--uninstall")  # twice is harmless too

        # ------------------------------------------------------------ purge
        install(checkout, root, "--uninstall", "--purge")

        assert not etc.exists()
        assert not root_token.exists()
        assert not (root / "var/lib/agents").exists()
        assert not (root / "opt/agents").exists()
        assert not {"agents", "kvm"} & set(account_names(root, "group"))
        assert "libvirt-qemu" not in account_names(root, "passwd")
    finally:
        with contextlib.suppress(Exception):
            subprocess.run(
                [
                    *("bash", str(checkout / "tools/install.sh"), "--root", str(root)),
                    *("--uninstall", "--purge"),
                ],
                capture_output=True,
                timeout=120,
            )
    assert real_state() == before
