"""Reach the machine's network from a container that has none (systemd-nspawn --private-network).

Run as root, as its own process:

    python relay.py --netns /proc/PID/ns/net --forward 127.0.0.1:5672=127.0.0.1:5672 \
        --proxy 127.0.0.1:3128

Every listening socket is made inside the network namespace given by --netns (setns(2)
on this thread, then back), every outgoing connection in this process's own namespace.
So inside the container 127.0.0.1:5672 is the machine's RabbitMQ (which sees a loopback
peer, so the `guest` user works) and 127.0.0.1:3128 is an HTTP proxy for apt and pip
(CONNECT for https, absolute-URI GET for http), while the container's network stays its
own: nothing in it can touch the machine's links or ports.

Prints `ready` on stdout once every socket listens; runs until SIGTERM or SIGINT.
Nothing is written anywhere; nothing outlives the process.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable

CLONE_NEWNET = 0x40000000
HEAD_LIMIT = 64 * 1024


def setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def listen_in(netns: str, addresses: list[tuple[str, int]]) -> list[socket.socket]:
    """Listening sockets bound in `netns`; the calling thread ends up back where it was."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(netns, os.O_RDONLY)
    sockets = []
    try:
        setns(target)
        try:
            for addr in addresses:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(addr)
                s.listen(64)
                sockets.append(s)
        finally:
            setns(home)
    finally:
        os.close(home)
        os.close(target)
    return sockets


def pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def splice(a: socket.socket, b: socket.socket, first: bytes = b"") -> None:
    """Copy both ways until both sides are done, then close both."""
    try:
        if first:
            b.sendall(first)
        back = threading.Thread(target=pump, args=(b, a), daemon=True)
        back.start()
        pump(a, b)
        back.join()
    except OSError:
        pass
    finally:
        a.close()
        b.close()


def forward(client: socket.socket, upstream: tuple[str, int]) -> None:
    try:
        remote = socket.create_connection(upstream, timeout=10)
    except OSError:
        client.close()
        return
    remote.settimeout(None)
    splice(client, remote)


def read_head(client: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = client.recv(65536)
        if not chunk or len(data) > HEAD_LIMIT:
            raise OSError("no complete request head")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def proxy(client: socket.socket) -> None:
    """A minimal forward proxy: CONNECT host:port, or GET http://host[:port]/path."""
    try:
        head, rest = read_head(client)
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ", 2)
        if method == "CONNECT":
            remote = socket.create_connection(address(target), timeout=30)
            remote.settimeout(None)
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            splice(client, remote, rest)
            return
        if not target.startswith("http://"):
            client.sendall(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
            client.close()
            return
        hostport, _, path = target[len("http://") :].partition("/")
        host, _, port = hostport.partition(":")
        remote = socket.create_connection((host, int(port or 80)), timeout=30)
        remote.settimeout(None)
        # One request per connection: the answer's end is then the server's close, so
        # the proxy never has to parse a response. The client reconnects for the next.
        kept = [
            line
            for line in lines[1:]
            if line.split(":", 1)[0].strip().lower()
            not in ("connection", "proxy-connection", "keep-alive")
        ]
        request = "\r\n".join([f"{method} /{path} {version}", *kept, "Connection: close"])
        splice(client, remote, request.encode("latin-1") + b"\r\n\r\n" + rest)
    except (OSError, ValueError):
        with contextlib.suppress(OSError):
            client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\n\r\n")
        client.close()


def serve(listener: socket.socket, handle: Callable[[socket.socket], None]) -> None:
    while True:
        client, _ = listener.accept()
        threading.Thread(target=handle, args=(client,), daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--netns", required=True, help="e.g. /proc/PID/ns/net of the container")
    parser.add_argument(
        "--forward", action="append", default=[], help="LISTEN_HOST:PORT=UPSTREAM_HOST:PORT"
    )
    parser.add_argument("--proxy", help="HOST:PORT of an HTTP proxy inside the namespace")
    args = parser.parse_args(argv)

    handlers: list[Callable[[socket.socket], None]] = []
    addresses = []
    for spec in args.forward:
        listen, _, upstream = spec.partition("=")
        addresses.append(address(listen))
        handlers.append(functools.partial(forward, upstream=address(upstream)))
    if args.proxy:
        addresses.append(address(args.proxy))
        handlers.append(proxy)
    listeners = listen_in(args.netns, addresses)
    for listener, handle in zip(listeners, handlers, strict=True):
        threading.Thread(target=serve, args=(listener, handle), daemon=True).start()

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print("ready", flush=True)
    done.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
