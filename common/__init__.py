"""Contracts every process of the project shares: wire models, messaging, config, logging.

Nothing in here knows about libvirt or netlink; agents depend on common, never the reverse.
"""

from importlib import metadata

try:
    __version__ = metadata.version("agents")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+src"
