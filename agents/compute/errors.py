"""Typed errors of the compute-agent, each carrying the value that caused it.

Raised by the pure core and the edges (images, libvirt); caught and reported only at
the RPC endpoint boundary (manager). Nothing here logs.
"""

from __future__ import annotations

from common.errors import AgentsError


class GuestXmlError(AgentsError):
    msg_fmt = "domain XML <{element}>: {problem}"


class UnknownFlavor(AgentsError):
    msg_fmt = "flavor {flavor!r} is not configured on this host (known: {known})"


class ImageError(AgentsError):
    """Base of image problems."""

    msg_fmt = "image {image!r}: {problem}"


class ImageNotFound(ImageError):
    msg_fmt = "image {image!r} not found in {image_dir}; available: {available}"


class ImageOutsideDir(ImageError):
    msg_fmt = "image {image!r} resolves to {path}, outside the image directory {image_dir}"


class ImageToolFailed(ImageError):
    msg_fmt = "qemu-img {command} for {image!r} failed: {problem}"


class HypervisorError(AgentsError):
    msg_fmt = "libvirt {operation} failed for {instance}: {problem}"


class HypervisorUnavailable(AgentsError):
    msg_fmt = "cannot connect to libvirt at {uri}: {problem}"


class InstanceNotFound(AgentsError):
    msg_fmt = "instance {instance} is not on this host"


class InstanceBuilding(AgentsError):
    msg_fmt = (
        "instance {instance} is still being built (request {request_id}); {action} it once it runs"
    )


class VifPlugTimeout(AgentsError):
    msg_fmt = "timeout after {timeout}s waiting for vif-plugged of port(s) {ports}"


class VifPlugFailed(AgentsError):
    msg_fmt = "port {port} failed to plug: {reason}"


class BuildAborted(AgentsError):
    msg_fmt = "build of {instance} aborted: {reason}"

    @property
    def reason_given(self) -> str:
        return str(self.fields.get("reason", ""))


class ReplugFailed(AgentsError):
    msg_fmt = "re-plug of port {port} of instance {instance} failed: {problem}"
