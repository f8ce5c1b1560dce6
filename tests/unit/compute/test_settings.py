"""settings.py and the sample config: defaults, bounds, errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.compute.settings import ComputeConfig
from common.config import load
from common.errors import ConfigError

ETC = Path(__file__).resolve().parents[3] / "etc"


def test_sample_configs_load() -> None:
    config = load(ComputeConfig, [ETC / "shared.conf", ETC / "compute-agent.conf"])
    assert config.compute.domain_type == "qemu"
    assert config.compute.max_concurrent_builds == 10
    assert "m1.tiny" in config.flavors


def test_defaults_are_the_test_driver() -> None:
    config = ComputeConfig()
    assert (config.compute.libvirt_uri, config.compute.domain_type) == ("test:///default", "test")


@pytest.mark.parametrize(
    "key,value",
    [("domain_type", "xen"), ("max_concurrent_builds", "0"), ("vif_plugging_timeout", "-1")],
)
def test_bad_values_name_file_key_and_value(tmp_path: Path, key: str, value: str) -> None:
    conf = tmp_path / "c.conf"
    conf.write_text(f"[compute]\n{key} = {value}\n")
    with pytest.raises(ConfigError) as info:
        load(ComputeConfig, [conf])
    assert str(conf) in str(info.value) and key in str(info.value) and value in str(info.value)
