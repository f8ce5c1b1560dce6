"""The README's set-up on a fresh Debian 12: tools/setup.sh in a container, as a new user runs it.

The base root of nspawn.py is debootstrap's Debian 12 (minbase + systemd, dbus,
ca-certificates) with nothing of the project in it. A throwaway copy of it is booted
with `systemd-nspawn --boot --private-network`, the checkout is copied to /root/agents
(what a clone holds) and `tools/setup.sh` runs there. Afterwards every program in
setup.sh's PROGRAMS list must be found, the daemons' modules must import in the venv it
made, and, because no broker answers on 127.0.0.1:5672 inside (the container has a
network of its own), setup.sh must have installed and started Debian's rabbitmq-server.

What the copy gets besides the checkout is this machine's way out, not project set-up:
an apt proxy setting and http(s)_proxy for pip (relay.py's proxy, the container's
only route out), this machine's pip configuration and trusted CAs, and dpkg's
force-unsafe-io (no fsync per file: the copy is thrown away). Downloaded .debs and
pip's cache live under nspawn.CACHE and are reused by the next run.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agents.lab.procs import REPO
from tests.functional.systemd import nspawn
from tests.functional.systemd.nspawn import Container, Overlay, Relay, timed

pytestmark = [pytest.mark.fresh, pytest.mark.timeout(1800)]

IMPORTS = (
    "import agents.controller.service, agents.compute.manager, agents.l2.manager, agents.ctl.cli"
)


def setup_programs() -> list[str]:
    """The PROGRAMS list of tools/setup.sh: what it promises is there afterwards."""
    text = (REPO / "tools/setup.sh").read_text()
    found = re.search(r"^PROGRAMS=\((.*?)^\)", text, re.MULTILINE | re.DOTALL)
    assert found, "tools/setup.sh has no PROGRAMS=( ... ) list"
    words = re.sub(r"#[^\n]*", "", found.group(1)).split()
    assert words, "tools/setup.sh's PROGRAMS list is empty"
    return words


def missing_programs(container: Container, programs: list[str]) -> list[str]:
    script = 'for p in "$@"; do command -v "$p" >/dev/null || echo "$p"; done'
    out = container.run(["bash", "-c", script, "check", *programs]).stdout
    return out.split()


def test_setup_sh_on_a_fresh_debian12(tmp_path: Path) -> None:
    nspawn.require_root_and_tools()
    programs = setup_programs()
    base = nspawn.base_root()
    overlay: Overlay | None = None
    container: Container | None = None
    proxy: Relay | None = None
    try:
        with timed("fresh: prepare a throwaway copy of the base root"):
            overlay = Overlay(base)
            root = overlay.root
            assert not (root / "opt/agents").exists() and not (root / "etc/agents").exists()
            nspawn.apt_through_proxy(root)
            (root / "etc/dpkg/dpkg.cfg.d/agents-test-unsafe-io").write_text("force-unsafe-io\n")
            binds_ro = nspawn.carry_pip_setup(root)
            nspawn.copy_checkout(root / "root/agents")
        debs, pip_cache = nspawn.CACHE / "debs", nspawn.CACHE / "pip"
        debs.mkdir(parents=True, exist_ok=True)
        pip_cache.mkdir(parents=True, exist_ok=True)
        container = Container(
            root,
            tmp_path / "console.log",
            binds={str(debs): "/var/cache/apt/archives", str(pip_cache): "/root/.cache/pip"},
            binds_ro=binds_ro,
        )
        with timed("fresh: boot to multi-user"):
            container.boot()
        proxy = Relay(container.netns, proxy=True).start()

        before = missing_programs(container, programs)
        nspawn.note(f"[fresh] missing before setup.sh: {' '.join(before)}")
        assert not nspawn.port_answers(container, 5672), "a broker answers before the set-up"
        assert container.run(["test", "-x", "/usr/bin/python3"], check=False).returncode != 0, (
            "the base root is not fresh: python3 is installed"
        )

        with timed("fresh: tools/setup.sh (apt, rabbitmq-server, venv)"):
            env = {**nspawn.pip_environment(), **nspawn.proxy_env()}
            result = container.run(
                ["bash", "/root/agents/tools/setup.sh"], env=env, check=False, timeout=1500
            )
        output = result.stdout + result.stderr
        summary = [line for line in output.splitlines() if line.startswith("setup.sh:")]
        nspawn.note("[fresh] " + "\n[fresh] ".join(summary))
        assert result.returncode == 0, (
            f"tools/setup.sh exited {result.returncode}:\n{output[-6000:]}"
        )

        with timed("fresh: checks"):
            missing = missing_programs(container, programs)
            assert not missing, (
                f"after tools/setup.sh these programs are missing: {' '.join(missing)}; "
                "add the Debian package that provides each to PACKAGES in tools/setup.sh"
            )
            imported = container.run(
                ["/root/agents/.venv/bin/python", "-c", IMPORTS], check=False, timeout=120
            )
            assert imported.returncode == 0, (
                f"the venv made by setup.sh cannot import the daemons:\n{imported.stderr[-3000:]}"
            )
            assert nspawn.port_answers(container, 5672), (
                "no broker answers on 127.0.0.1:5672 after tools/setup.sh"
            )
            active = container.run(["systemctl", "is-active", "rabbitmq-server"], check=False)
            assert active.stdout.strip() == "active", active.stdout + active.stderr
            assert "installing Debian's rabbitmq-server" in output, summary
            container.run(["systemctl", "stop", "rabbitmq-server"], timeout=120)
            assert not nspawn.port_answers(container, 5672)
    finally:
        with timed("fresh: power off and clean up"):
            if container is not None:
                container.poweroff()
            if proxy is not None:
                proxy.stop()
            if overlay is not None:
                overlay.remove()
