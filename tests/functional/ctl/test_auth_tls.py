"""The API behind tokens and TLS, end to end: the real `agents-controller token` command,
agentctl's exit 6, https verified against a throwaway CA, and no secret in any log.

Each test runs a lab (the controller as a process, SQLite, its token file made by the
lab); the TLS test makes its CA and the controller's certificate with the openssl
program in a temporary directory; the secrets test also runs the lab on a broker account
of its own with a random password (made with rabbitmqctl and deleted afterwards).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.controller.api_tls import TlsConfigError, check_files
from agents.lab.broker import BrokerScope
from agents.lab.lab import Lab
from agents.lab.procs import console_script, run, unique

pytestmark = pytest.mark.functional


def controller_cmd(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    files = []
    for name in ("shared.conf", "controller.conf"):
        files += ["--config-file", str(lab.etc / name)]
    return subprocess.run(
        [console_script("agents-controller"), *files, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def agentctl(lab: Lab, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """agentctl against the lab with the environment given (no lab token unless given)."""
    base = {**lab.agentctl_env(), "XDG_CONFIG_HOME": str(lab.dir / "no-home"), **env}
    return subprocess.run(
        lab.agentctl_cmd(*args), env=base, capture_output=True, text=True, timeout=60
    )


def test_token_command_roles_and_removal(lab: Lab) -> None:
    made = controller_cmd(lab, "token", "add", "--role", "reader", "ci")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("agt_") and "\n" not in secret
    assert "shown this once" in made.stderr and secret not in made.stderr
    assert secret not in lab.tokens_file.read_text()
    listed = controller_cmd(lab, "token", "list")
    assert listed.stdout.splitlines() == ["admin\tlab", "reader\tci"]

    no_file = {"AGENTS_CONFIG": "/dev/null"}
    assert agentctl(lab, "list", AGENTS_TOKEN=secret, **no_file).returncode == 0
    res = agentctl(lab, "send", "build", AGENTS_TOKEN=secret, **no_file)
    assert res.returncode == 6, res.stderr
    assert "403 auth.forbidden): token 'ci' has role reader" in res.stderr

    res = agentctl(lab, "list", **no_file)
    assert res.returncode == 6
    assert "wants a token (401 auth.required) and none was sent" in res.stderr

    assert controller_cmd(lab, "token", "remove", "ci").returncode == 0
    res = agentctl(lab, "list", AGENTS_TOKEN=secret, **no_file)
    assert res.returncode == 6
    assert "refused the token (401 auth.invalid)" in res.stderr

    again = controller_cmd(lab, "token", "add", "--role", "admin", "lab")
    assert again.returncode == 2 and "a token of that name exists" in again.stderr
    assert lab.agentctl("list").returncode == 0  # the lab's own token file still works


# --------------------------------------------------------------------------- TLS


EC_REQ = "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2"


def make_ca(dir: Path, name: str) -> tuple[Path, Path]:
    """A throwaway CA: (certificate, key)."""
    cert, key = dir / f"{name}.pem", dir / f"{name}.key"
    run([*EC_REQ.split(), "-x509", "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}"])
    return cert, key


def make_server_cert(dir: Path, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    cert, key, csr, ext = (dir / f"server.{x}" for x in ("pem", "key", "csr", "ext"))
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run([*EC_REQ.split(), "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1"])
    sign = f"openssl x509 -req -days 2 -CAcreateserial -in {csr} -CA {ca[0]} -CAkey {ca[1]}"
    run([*sign.split(), "-out", str(cert), "-extfile", str(ext)])
    key.chmod(0o600)
    return cert, key


@pytest.fixture
def tls_lab(
    root: None, broker_scope: BrokerScope, tmp_path: Path
) -> Iterator[tuple[Lab, Path, Path]]:
    ca = make_ca(tmp_path, "test-ca")
    other_ca, _ = make_ca(tmp_path, "other-ca")
    cert, key = make_server_cert(tmp_path, ca)
    lab = Lab.create(prefix="tls-", scope=broker_scope, stop_signal=signal.SIGKILL)
    try:
        lab.start_controller(settings={"tls_cert_file": cert, "tls_key_file": key}, ca_file=ca[0])
        yield lab, ca[0], other_ca
    finally:
        print(lab.logs())
        lab.close()


def test_https_api_verified_against_the_ca(tls_lab: tuple[Lab, Path, Path]) -> None:
    lab, ca, other_ca = tls_lab
    assert lab.controller is not None and lab.controller.url.startswith("https://127.0.0.1:")
    res = lab.agentctl("--debug", "list")  # agentctl.conf: url https://..., ca_file
    assert res.returncode == 0, res.stderr
    assert f"https verified against {ca}" in res.stderr

    token = lab.token_file.read_text().strip()
    bare = {"AGENTS_CONFIG": "/dev/null", "AGENTS_TOKEN": token}
    res = agentctl(lab, "list", **bare)  # the system's CAs do not know the test CA
    assert res.returncode == 3, res.stderr
    assert (
        f"the controller at {lab.controller.url} cannot be used over TLS:"
        " its TLS certificate is not trusted: unable to get local issuer certificate"
    ) in res.stderr
    assert "set [agentctl] ca_file or --ca-file" in res.stderr
    res = agentctl(lab, "--ca-file", str(other_ca), "list", **bare)
    assert res.returncode == 3 and "not trusted" in res.stderr, res.stderr
    assert agentctl(lab, "--ca-file", str(ca), "list", **bare).returncode == 0

    plain = lab.controller.url.replace("https://", "http://")
    res = agentctl(lab, "list", AGENTS_URL=plain, **bare)
    assert res.returncode != 0 and "Traceback" not in res.stderr


def test_tls_files_are_checked_before_serving(tmp_path: Path) -> None:
    ca = make_ca(tmp_path, "ca")
    cert, key = make_server_cert(tmp_path, ca)
    check_files(cert, key)
    with pytest.raises(TlsConfigError, match=r"tls_cert_file = .*: no such file"):
        check_files(tmp_path / "nope.pem", key)
    with pytest.raises(TlsConfigError, match="the key does not belong to the certificate"):
        check_files(cert, ca[1].rename(tmp_path / "ca-600.key"))
    key.chmod(0o640)
    with pytest.raises(TlsConfigError, match=r"tls_key_file = .*: mode 0640 lets group"):
        check_files(cert, key)


# --------------------------------------------------------------------------- secrets


@pytest.fixture
def broker_account() -> Iterator[tuple[str, str]]:
    user, password = unique("secret-test-"), secrets.token_urlsafe(18)
    run(["rabbitmqctl", "add_user", user, password])
    try:
        run(["rabbitmqctl", "set_permissions", "-p", "/", user, ".*", ".*", ".*"])
        yield user, password
    finally:
        run(["rabbitmqctl", "delete_user", user], check=False)


def test_secrets_never_reach_a_log_or_debug_output(
    root: None, broker_account: tuple[str, str]
) -> None:
    user, password = broker_account
    scope = BrokerScope.new("sec-", transport_url=f"rabbit://{user}:{password}@127.0.0.1:5672/")
    outputs: list[str] = []
    lab = Lab.create(prefix="sec-", scope=scope, stop_signal=signal.SIGKILL)
    try:
        lab.start_controller()
        lab.add_host("node1")
        admin = lab.token_file.read_text().strip()
        reader = controller_cmd(lab, "token", "add", "--role", "reader", "ro").stdout.strip()
        wrong = "agt_" + secrets.token_urlsafe(32)
        runs = [
            lab.agentctl("--debug", "send", "build", "--name", "s1", "--wait", "--timeout", "60"),
            lab.agentctl("--debug", "show", "s1", "--timeout"),  # bad usage
            lab.agentctl("--debug", "send", "build", "--flavor", "nope"),
            lab.agentctl("--debug", "--json", "watch", "--duration", "1"),
            agentctl(lab, "--debug", "list", AGENTS_TOKEN=wrong, AGENTS_CONFIG="/dev/null"),
            agentctl(lab, "--debug", "send", "delete", "s1", AGENTS_TOKEN=reader),
            agentctl(lab, "--debug", "--json", "list", AGENTS_TOKEN=reader),
            agentctl(lab, "--debug", "list", AGENTS_TOKEN=f"{admin} trailing"),
            lab.agentctl("--debug", "send", "delete", "s1", "--wait", "--timeout", "60"),
        ]
        codes = [r.returncode for r in runs]
        assert codes == [0, 2, 2, 0, 6, 6, 0, 6, 0], [r.stderr for r in runs]
        for r in runs:
            outputs += [r.stdout, r.stderr]
        assert any("Authorization: Bearer ***" in r.stderr for r in runs)
        # the refusals were logged (with their reason), just not the tokens
        assert "api_auth_refused" in lab.controller.log.read_text()  # type: ignore[union-attr]
    finally:
        lab_dir = lab.dir
        logs = {str(p): p.read_text(errors="replace") for p in lab_dir.rglob("*.log")}
        logs["lab.logs()"] = lab.logs()
        lab.close()
    assert len(logs) >= 3, sorted(logs)  # controller, l2-agent, compute-agent
    texts = {**logs, **{f"agentctl output {i}": o for i, o in enumerate(outputs)}}
    for name, text in texts.items():
        for label, secret in (
            ("admin token", admin),
            ("reader token", reader),
            ("wrong token", wrong),
            ("broker password", password),
        ):
            assert secret not in text, f"the {label} is in {name}"
    assert os.path.exists(lab_dir) is False
