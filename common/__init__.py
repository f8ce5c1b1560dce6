"""Contracts every process of the project shares: wire models, messaging, config, logging.

Nothing in here knows about libvirt or netlink; agents depend on common, never the reverse.
`__version__` is read from the package metadata only when asked for (PEP 562): that read
costs about 20 ms, which agentctl, importing only `common.errors`, must not pay.
"""

from __future__ import annotations

from functools import cache


@cache
def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("agents")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "0.0.0+src"


def __getattr__(name: str) -> str:
    if name == "__version__":
        return _version()
    raise AttributeError(f"module 'common' has no attribute {name!r}")
