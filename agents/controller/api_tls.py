"""The API's TLS: checking `[controller] tls_cert_file` / `tls_key_file` before serving.

uvicorn loads the files itself, but inside its server thread, where a bad file ends as
"the HTTP server did not start". Here they are loaded once at start into an
`ssl.SSLContext` the way uvicorn will, so a missing file, a key open to others, a file
that is not PEM or a key that does not match the certificate fails the start with the
key and the file named. Stdlib only; nothing here logs.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from agents.controller.tokens import TokenFileError, check_mode
from common.errors import AgentsError


class TlsConfigError(AgentsError):
    msg_fmt = "[controller] {key} = {path}: {problem}"


def check_files(cert: Path, key: Path) -> None:
    for name, path in (("tls_cert_file", cert), ("tls_key_file", key)):
        if not path.is_file():
            raise TlsConfigError(key=name, path=path, problem="no such file")
    try:
        check_mode(key, what="private key")
    except TokenFileError as err:
        raise TlsConfigError(
            key="tls_key_file", path=key, problem=err.fields.get("problem", str(err))
        ) from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as err:
        problem = err.reason or str(err)
        if "KEY_VALUES_MISMATCH" in str(err).upper():
            problem = "the key does not belong to the certificate"
        raise TlsConfigError(
            key="tls_cert_file", path=cert, problem=f"cannot load it with tls_key_file: {problem}"
        ) from None
    except OSError as err:
        raise TlsConfigError(
            key="tls_cert_file", path=cert, problem=err.strerror or str(err)
        ) from None
