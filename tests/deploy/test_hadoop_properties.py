"""The pure merge behind the yarn role's hadoop_properties module (no Ansible run)."""

from __future__ import annotations

import importlib.util
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType

import pytest

MODULE = (
    Path(__file__).resolve().parents[2] / "deploy/ansible/roles/yarn/library/hadoop_properties.py"
)

SITE = """<?xml version="1.0"?>
<?xml-stylesheet type="text/xsl" href="configuration.xsl"?>
<!-- operator's file -->
<configuration>
  <property>
    <name>a</name>
    <value>1</value>
  </property>
  <property><name>plugins</name><value>yarn.io/fpga</value></property>
  <property><name>locked</name><value>x</value><final>true</final></property>
</configuration>
"""


@pytest.fixture(scope="module")
def hp() -> ModuleType:
    spec = importlib.util.spec_from_file_location("hadoop_properties", MODULE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _props(text: str) -> list[tuple[str, str]]:
    root = ET.fromstring(text.encode())
    return [(p.findtext("name", ""), p.findtext("value", "")) for p in root.iter("property")]


def test_merge_adds_sets_and_appends_and_keeps_the_rest(hp: ModuleType) -> None:
    new, updated, conflicts = hp.merge(
        SITE, {"a": "1", "b": True, "c": 7}, {"plugins": ["yarn.io/gpu", "yarn.io/fpga"]}
    )
    assert conflicts == []
    assert sorted(updated) == ["b", "c", "plugins"]  # a already had its value
    assert _props(new) == [
        ("a", "1"),
        ("plugins", "yarn.io/fpga,yarn.io/gpu"),
        ("locked", "x"),
        ("b", "true"),
        ("c", "7"),
    ]
    assert "<!-- operator's file -->" in new and 'href="configuration.xsl"' in new
    # The untouched part of the file is byte for byte what it was.
    assert "  <property>\n    <name>a</name>\n    <value>1</value>\n  </property>\n" in new


def test_merge_is_idempotent(hp: ModuleType) -> None:
    wanted = ({"b": "2"}, {"plugins": ["yarn.io/gpu"]})
    once, _, _ = hp.merge(SITE, *wanted)
    twice, updated, conflicts = hp.merge(once, *wanted)
    assert (twice, updated, conflicts) == (once, [], [])


def test_final_property_is_a_conflict_not_a_change(hp: ModuleType) -> None:
    _, updated, conflicts = hp.merge(SITE, {"locked": "y"}, {})
    assert updated == []
    assert conflicts == ["locked (final, value 'x', wanted 'y')"]
    # The same value is no conflict.
    assert hp.merge(SITE, {"locked": "x"}, {})[2] == []


def test_empty_configuration_gets_properties(hp: ModuleType) -> None:
    new, updated, _ = hp.merge(hp.EMPTY_CONFIGURATION, {"x": "1"}, {"l": ["a", "b"]})
    assert updated == ["x", "l"]
    assert _props(new) == [("x", "1"), ("l", "a,b")]


def test_not_a_hadoop_configuration_is_refused(hp: ModuleType) -> None:
    with pytest.raises(ValueError, match="expected <configuration>"):
        hp.merge("<beans/>", {"x": "1"}, {})
