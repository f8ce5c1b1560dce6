"""The API's listening socket: connections accepted on it send small writes at once.

asyncio disables Nagle (TCP_NODELAY) only on sockets whose proto is IPPROTO_TCP, and an
accepted socket inherits the listener's; with proto 0 a response on a kept-alive
connection (headers, then body) waited about 40 ms for the client's delayed ACK.
"""

from __future__ import annotations

import asyncio
import socket

from agents.controller.service import bind


def test_accepted_connections_have_nagle_off() -> None:
    sock = bind("127.0.0.1:0")
    port = sock.getsockname()[1]
    seen: list[int] = []

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted = transport.get_extra_info("socket")
            seen.append(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
        async with server:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.01)
            writer.close()

    asyncio.run(main())
    assert seen and seen[0] != 0, f"TCP_NODELAY of the accepted socket: {seen}"
