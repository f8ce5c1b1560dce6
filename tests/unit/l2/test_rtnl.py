"""The rtnetlink link parser on hand-built messages (pure; the functional suite checks
it against `ip -d -j link` on a real namespace)."""

from __future__ import annotations

import struct

from agents.l2 import _rtnl as rt


def attr(kind: int, payload: bytes, nested: bool = False) -> bytes:
    length = 4 + len(payload)
    head = struct.pack("=HH", length, kind | (0x8000 if nested else 0))
    return head + payload + b"\0" * (((length + 3) & ~3) - length)


def newlink(index: int, flags: int, *attrs: bytes) -> bytes:
    body = struct.pack("=BxHiII", 0, 1, index, flags, 0) + b"".join(attrs)
    return struct.pack("=IHHII", 16 + len(body), rt.RTM_NEWLINK, 2, 1, 0) + body


def test_parse_vxlan_link_with_master_and_mac() -> None:
    msg = newlink(
        7,
        rt.IFF_UP | 0x1000,
        attr(rt.IFLA_IFNAME, b"vxlan-1001\0"),
        attr(rt.IFLA_MTU, struct.pack("=I", 1450)),
        attr(rt.IFLA_MASTER, struct.pack("=I", 5)),
        attr(rt.IFLA_ADDRESS, bytes([0xFE, 0x16, 0x3E, 0, 0, 1])),
        attr(99, b"ignored attribute"),
        attr(
            rt.IFLA_LINKINFO,
            attr(rt.IFLA_INFO_KIND, b"vxlan\0")
            + attr(rt.IFLA_INFO_DATA, attr(rt.IFLA_VXLAN_ID, struct.pack("=I", 1001)), True),
            True,
        ),
    )
    [(kind, start, end)] = list(rt.parse_messages(msg))
    assert kind == rt.RTM_NEWLINK
    link = rt.parse_link(msg, start, end)
    assert link == rt.Link(
        index=7,
        name="vxlan-1001",
        kind="vxlan",
        master=5,
        up=True,
        mtu=1450,
        mac="fe:16:3e:00:00:01",
        vni=1001,
    )


def test_parse_bridge_fields_and_a_plain_link_without_master() -> None:
    bridge = newlink(
        3,
        0,
        attr(rt.IFLA_IFNAME, b"brq5d3c0f6e-8a\0"),
        attr(
            rt.IFLA_LINKINFO,
            attr(rt.IFLA_INFO_KIND, b"bridge\0")
            + attr(
                rt.IFLA_INFO_DATA,
                attr(rt.IFLA_BR_STP_STATE, struct.pack("=I", 0))
                + attr(rt.IFLA_BR_FORWARD_DELAY, struct.pack("=I", 0)),
                True,
            ),
            True,
        ),
    )
    lo = newlink(
        1, rt.IFF_UP, attr(rt.IFLA_IFNAME, b"lo\0"), attr(rt.IFLA_MTU, struct.pack("=I", 65536))
    )
    parsed = [rt.parse_link(bridge + lo, s, e) for _, s, e in rt.parse_messages(bridge + lo)]
    assert [(p.name, p.kind, p.up, p.master) for p in parsed] == [
        ("brq5d3c0f6e-8a", "bridge", False, None),
        ("lo", None, True, None),
    ]
    assert (parsed[0].stp_state, parsed[0].forward_delay) == (0, 0)
    assert parsed[1].mtu == 65536 and parsed[1].mac is None


def test_truncated_input_stops_cleanly() -> None:
    msg = newlink(2, 0, attr(rt.IFLA_IFNAME, b"tap1\0"))
    assert list(rt.parse_messages(msg[:10])) == []
    [(_, start, end)] = list(rt.parse_messages(msg))
    assert rt.parse_link(msg, start, end - 2).name == "tap1"  # only padding lost
    assert rt.parse_link(msg, start, end - 6).name == "ta"  # clamped to what is there
