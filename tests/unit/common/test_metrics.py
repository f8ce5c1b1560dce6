"""common.metrics: private registries, and the HTTP endpoint opened and released."""

from __future__ import annotations

import gc
import socket
import urllib.request
import warnings

from common.metrics import Registry


def scrape(port: int) -> str:
    body: bytes = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    return body.decode()


def test_two_registries_in_one_process_do_not_collide() -> None:
    a, b = Registry("agent_a"), Registry("agent_a")
    a.counter("builds", "builds", ["result"]).labels("ok").inc()
    b.counter("builds", "builds", ["result"])  # same name, other registry: no error
    assert a.registry.get_sample_value("agent_a_builds_total", {"result": "ok"}) == 1
    assert b.registry.get_sample_value("agent_a_builds_total", {"result": "ok"}) is None


def test_serve_scrape_close_releases_the_port() -> None:
    registry = Registry("toy")
    registry.histogram("step_seconds", "latency", ["step"]).labels("define").observe(0.003)
    port = registry.serve("127.0.0.1:0")
    assert port
    text = scrape(port)
    assert 'toy_step_seconds_bucket{le="0.005",step="define"} 1.0' in text
    # The listening socket is closed by close() itself, not left to the garbage
    # collector (which would warn about an unclosed socket). What other tests of this
    # process left unclosed is collected first, and only a warning naming this port
    # counts.
    gc.collect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        registry.close()
        gc.collect()
    unclosed = [
        w
        for w in caught
        if issubclass(w.category, ResourceWarning) and f", {port})" in str(w.message)
    ]
    assert not unclosed, [str(w.message) for w in unclosed]
    # A restarted agent binds the same port straight away (SO_REUSEADDR, as every HTTP
    # server sets it: the scrape left a TIME_WAIT behind).
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()
    registry.close()  # closing twice is harmless
