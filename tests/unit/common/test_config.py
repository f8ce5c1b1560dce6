"""Config loading: merge order, named sections, errors naming file/section/key/value."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config import BaseConfig, load
from common.errors import ConfigError, ConfigFileError, ConfigSectionError

REPO = Path(__file__).resolve().parents[3]
SHARED = REPO / "etc" / "shared.conf"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_sample_shared_config_loads() -> None:
    cfg = load(BaseConfig, [SHARED])
    assert cfg.messaging.control_exchange == "agents"
    assert cfg.networks["net1"].type == "vxlan"
    assert cfg.flavors["m1.tiny"].memory_mb >= 96  # TCG guests hang below that (docs/platform.md)


def test_later_file_overrides_earlier_key_by_key(tmp_path: Path) -> None:
    override = write(
        tmp_path, "o.conf", "[messaging]\ncontrol_exchange = other\n[DEFAULT]\nhost = node7\n"
    )
    cfg = load(BaseConfig, [SHARED, override])
    assert cfg.messaging.control_exchange == "other"
    assert cfg.messaging.queue_type == "classic"  # untouched keys keep the earlier value
    assert cfg.DEFAULT.host == "node7"


def test_command_line_overrides_files(tmp_path: Path) -> None:
    cfg = load(BaseConfig, [SHARED], overrides={"DEFAULT": {"host": "cli-host"}})
    assert cfg.DEFAULT.host == "cli-host"


def test_bad_value_names_file_section_key_and_value(tmp_path: Path) -> None:
    bad = write(tmp_path, "bad.conf", "[flavor:big]\nvcpus = lots\nmemory_mb = 128\n")
    with pytest.raises(ConfigError) as err:
        load(BaseConfig, [SHARED, bad])
    text = str(err.value)
    assert str(bad) in text and "[flavor:big]" in text and "vcpus" in text and "'lots'" in text


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    bad = write(tmp_path, "bad.conf", "[messaging]\nqueue_typ = quorum\n")
    with pytest.raises(ConfigError, match="queue_typ.*unknown key"):
        load(BaseConfig, [bad])


def test_incoherent_network_names_the_section(tmp_path: Path) -> None:
    bad = write(
        tmp_path,
        "bad.conf",
        "[network:n]\nuuid = 5d3c0f6e-8a3b-4c1e-9f2a-0b7e6d5c4a32\ntype = vlan\nphysnet = p\n",
    )
    with pytest.raises(ConfigSectionError, match=r"\[network:n\].*segmentation_id"):
        load(BaseConfig, [bad])


def test_duplicate_network_uuid_is_refused(tmp_path: Path) -> None:
    text = "".join(
        f"[network:{n}]\nuuid = 5d3c0f6e-8a3b-4c1e-9f2a-0b7e6d5c4a32\n"
        "type = vxlan\nsegmentation_id = 5\n"
        for n in ("a", "b")
    )
    with pytest.raises(ConfigSectionError, match="share uuid"):
        load(BaseConfig, [write(tmp_path, "n.conf", text)])


def test_allocation_range_must_sit_inside_cidr(tmp_path: Path) -> None:
    bad = write(
        tmp_path,
        "bad.conf",
        "[network:n]\nuuid = 5d3c0f6e-8a3b-4c1e-9f2a-0b7e6d5c4a32\ntype = vxlan\n"
        "segmentation_id = 5\ncidr = 10.0.0.0/24\nallocation_start = 10.0.1.5\n",
    )
    with pytest.raises(ConfigSectionError, match="outside cidr"):
        load(BaseConfig, [bad])


def test_missing_and_unparsable_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="nope.conf"):
        load(BaseConfig, [tmp_path / "nope.conf"])
    junk = write(tmp_path, "junk.conf", "this is not ini\n")
    with pytest.raises(ConfigFileError, match="junk.conf"):
        load(BaseConfig, [junk])


def test_bad_transport_url(tmp_path: Path) -> None:
    bad = write(tmp_path, "bad.conf", "[messaging]\ntransport_url = http://x/\n")
    with pytest.raises(ConfigError, match="transport_url"):
        load(BaseConfig, [bad])


def test_allocation_pool_skips_gateway() -> None:
    from common.config import NetworkSpec

    net = NetworkSpec.model_validate(
        {
            "uuid": "5d3c0f6e-8a3b-4c1e-9f2a-0b7e6d5c4a32",
            "type": "vxlan",
            "segmentation_id": 5,
            "cidr": "10.0.0.0/29",
            "gateway": "10.0.0.1",
        }
    )
    assert [str(a) for a in net.allocation_pool() or ()] == ["10.0.0.2", "10.0.0.6"]


@pytest.mark.parametrize(
    "cidr", ["10.0.0.0/8", "10.0.0.0/20", "10.0.0.0/30", "10.0.0.0/31", "10.0.0.7/32"]
)
def test_allocation_pool_is_the_first_and_last_host(cidr: str) -> None:
    """Computed without listing the hosts (it runs on every create), the same edges as
    `hosts()`: /31 and /32 give every address, larger networks drop network and
    broadcast."""
    import ipaddress

    from common.config import NetworkSpec

    net = NetworkSpec.model_validate(
        {
            "uuid": "5d3c0f6e-8a3b-4c1e-9f2a-0b7e6d5c4a32",
            "type": "vxlan",
            "segmentation_id": 5,
            "cidr": cidr,
        }
    )
    network = ipaddress.IPv4Network(cidr)
    if network.num_addresses <= 1024:
        hosts = list(network.hosts())
        first, last = hosts[0], hosts[-1]
    else:
        first, last = network.network_address + 1, network.broadcast_address - 1
    assert net.allocation_pool() == (first, last)
