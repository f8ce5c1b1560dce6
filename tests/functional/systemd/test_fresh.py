"""The README's set-up on a fresh Debian 12: tools/setup.sh in a container, as a new user runs it.

The base root of nspawn.py is debootstrap's Debian 12 (minbase + systemd, dbus,
ca-certificates) with nothing of the project in it. A throwaway copy of it is booted
with `systemd-nspawn --boot --private-network`, the checkout is copied to /root/agents
(what a clone holds) and `tools/setup.sh` runs there. Afterwards every program in
setup.sh's PROGRAMS list must be found, the daemons' modules must import in the venv it
made, and, because no broker answers on 127.0.0.1:5672 inside (the container has a
network of its own), setup.sh must have installed and started Debian's rabbitmq-server.

That list is only as good as what it names, so a second test (no container, no marker:
it runs with every functional run) reads the Python code of agents/, common/, tests/,
bench/ and tools/ and finds each program it runs (the first word of a command given to
subprocess.run / Popen / the tests' run helpers, what `ip netns exec NS` runs,
shutil.which's argument) and each `command -v` of tools/*.sh: each must be in
PROGRAMS, or be part of every Debian (coreutils, bash, dpkg, apt).

What the copy gets besides the checkout is this machine's way out, not project set-up:
an apt proxy setting and http(s)_proxy for pip (relay.py's proxy, the container's
only route out), this machine's pip configuration and trusted CAs, and dpkg's
force-unsafe-io (no fsync per file: the copy is thrown away). Downloaded .debs and
pip's cache live under nspawn.CACHE and are reused by the next run.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from agents.lab.procs import REPO
from tests.functional.systemd import nspawn
from tests.functional.systemd.nspawn import Container, Overlay, Relay, timed

IMPORTS = (
    "import agents.controller.service, agents.compute.manager, agents.l2.manager, agents.ctl.cli"
)
# Where the code that runs programs lives.
SOURCES = ("agents", "common", "tests", "bench", "tools")
# Calls whose first argument is a command line: subprocess's, agents.lab.procs.run,
# nspawn.sh, Container.run, NamespaceHost.exec_check / spawn.
RUNNERS = {"run", "Popen", "check_output", "check_call", "call", "sh", "exec_check", "spawn"}
# Programs of Debian's Essential packages (and apt): on every Debian 12, a fresh one too.
ESSENTIAL = {
    "bash", "sh", "cat", "cp", "mv", "rm", "ln", "mkdir", "rmdir", "chmod", "chown", "touch",
    "tee", "test", "env", "true", "false", "ls", "find", "grep", "sed", "sort", "head", "tail",
    "cut", "du", "cmp", "sha256sum", "mktemp", "realpath", "dpkg", "apt-get", "apt-cache",
}  # fmt: skip


def setup_programs() -> list[str]:
    """The PROGRAMS list of tools/setup.sh: what it promises is there afterwards."""
    text = (REPO / "tools/setup.sh").read_text()
    found = re.search(r"^PROGRAMS=\((.*?)^\)", text, re.MULTILINE | re.DOTALL)
    assert found, "tools/setup.sh has no PROGRAMS=( ... ) list"
    words = re.sub(r"#[^\n]*", "", found.group(1)).split()
    assert words, "tools/setup.sh's PROGRAMS list is empty"
    return words


def programs_the_code_runs() -> dict[str, set[str]]:
    """program -> the files that run it, found in the Python code and tools/*.sh."""
    found: dict[str, set[str]] = {}

    def add(program: str, path: Path) -> None:
        found.setdefault(program, set()).add(str(path.relative_to(REPO)))

    for top in SOURCES:
        for path in sorted((REPO / top).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not isinstance(node, ast.Call) or not node.args:
                    continue
                func = node.func
                name = getattr(func, "id", None) or getattr(func, "attr", None)
                first = node.args[0]
                if name == "which" and isinstance(first, ast.Constant):
                    add(str(first.value), path)
                    continue
                if name not in RUNNERS or not isinstance(first, ast.List | ast.Tuple):
                    continue
                words = [e.value if isinstance(e, ast.Constant) else None for e in first.elts]
                if words and isinstance(words[0], str):
                    add(words[0], path)
                # ip netns exec NAME PROGRAM ...
                program = (
                    words[4] if words[:3] == ["ip", "netns", "exec"] and len(words) > 4 else None
                )
                if isinstance(program, str):
                    add(program, path)
    for path in sorted((REPO / "tools").glob("*.sh")):
        for program in re.findall(r"command -v ([A-Za-z][\w.-]*)", path.read_text()):
            add(program, path)
    return found


def test_setup_programs_name_every_program_the_code_runs() -> None:
    """A program run somewhere in the code and missing from PROGRAMS would not be checked
    on a fresh machine (nor its package installed): it would fail later, elsewhere."""
    listed = set(setup_programs())
    runs = programs_the_code_runs()
    assert {"ip", "qemu-img", "rabbitmqctl", "git"} <= set(runs), sorted(runs)  # the scan works
    unlisted = {
        program: sorted(paths)
        for program, paths in runs.items()
        if program not in listed and program not in ESSENTIAL and "/" not in program
    }
    assert not unlisted, (
        f"programs the code runs that tools/setup.sh's PROGRAMS does not name: {unlisted}; "
        "add each there, and its Debian package to PACKAGES"
    )


PG_CHECK = (
    "import psycopg\n"
    "with psycopg.connect('postgresql://postgres@127.0.0.1:5432/postgres') as c:\n"
    "    print(c.execute('SELECT 1').fetchone()[0])\n"
)


def missing_programs(container: Container, programs: list[str]) -> list[str]:
    # type -P: a file on PATH, not a shell builtin (kill) or function; as setup.sh checks
    script = 'for p in "$@"; do type -P "$p" >/dev/null || echo "$p"; done'
    out = container.run(["bash", "-c", script, "check", *programs]).stdout
    return out.split()


@pytest.mark.fresh
@pytest.mark.timeout(1800)
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
        assert not nspawn.port_answers(container, 5432), "a database answers before the set-up"
        assert container.run(["test", "-x", "/usr/bin/python3"], check=False).returncode != 0, (
            "the base root is not fresh: python3 is installed"
        )

        with timed("fresh: tools/setup.sh (apt, rabbitmq-server, postgresql, venv)"):
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
            # PostgreSQL as the tests connect to it: user postgres over TCP, no password
            assert "installing Debian's postgresql" in output, summary
            connected = container.run(
                ["/root/agents/.venv/bin/python", "-c", PG_CHECK], check=False, timeout=120
            )
            assert connected.returncode == 0 and connected.stdout.strip() == "1", (
                connected.stdout + connected.stderr
            )
            container.run(["systemctl", "stop", "rabbitmq-server", "postgresql"], timeout=120)
            assert not nspawn.port_answers(container, 5672)
    finally:
        with timed("fresh: power off and clean up"):
            if container is not None:
                container.poweroff()
            if proxy is not None:
                proxy.stop()
            if overlay is not None:
                overlay.remove()
