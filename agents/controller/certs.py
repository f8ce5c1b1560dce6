"""A private CA and the certificates of one deployment (`agents-controller certs ...`).

What it owns: making a CA (key + self-signed certificate), and certificates it signs
for a server (the broker's TLS listener: DNS names and IP addresses in the
subjectAltName, which is what clients check) or a client; files written with the key
readable by its owner only (0600) and never overwritten unless asked.

For an operator without a CA of their own (install.sh uses it); one that has a CA
gives its files to `[messaging] ssl_ca_file` etc. instead. Must not: print a key.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.errors import AgentsError

CA_DAYS = 3650
CERT_DAYS = 825


class TlsFileError(AgentsError):
    msg_fmt = "{path}: {problem}"


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "agents"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write_new(path: Path, data: bytes, mode: int, force: bool) -> None:
    if path.exists() and not force:
        raise TlsFileError(path=str(path), problem="exists (pass --force to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_ca(directory: Path, name: str = "agents CA", force: bool = False) -> Pair:
    """`ca.pem` and `ca.key` in `directory`."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    pair = Pair(directory / "ca.pem", directory / "ca.key")
    _write_new(pair.key, _key_pem(key), 0o600, force)
    _write_new(pair.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644, force)
    return pair


def _load_ca(ca: Pair) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
        key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    except (OSError, ValueError) as err:
        raise TlsFileError(path=str(ca.cert), problem=f"cannot load the CA: {err}") from err
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TlsFileError(path=str(ca.key), problem="not an EC key made by `tls make-ca`")
    return cert, key


def make_cert(
    ca: Pair,
    directory: Path,
    name: str,
    sans: Sequence[str] = (),
    server: bool = True,
    force: bool = False,
) -> Pair:
    """`<name>.pem` and `<name>.key` in `directory`, signed by `ca`; `sans` are DNS
    names or IP addresses (a server's clients check the one they connect to)."""
    ca_cert, ca_key = _load_ca(ca)
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = []
    for san in sans or [name]:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(san)))
        except ValueError:
            alt.append(x509.DNSName(san))
    now = datetime.datetime.now(datetime.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pair = Pair(directory / f"{name}.pem", directory / f"{name}.key")
    _write_new(pair.key, _key_pem(key), 0o600, force)
    _write_new(pair.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644, force)
    return pair
