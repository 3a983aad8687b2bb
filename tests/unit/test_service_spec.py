"""The service spec (conf/service.yaml) and the Yarnfile built from it: pure functions."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from tfyarn.errors import ConfigError
from tfyarn.service.spec import PROPERTY_KEYS, load_spec, parse_spec, yarnfile

REPO = Path(__file__).resolve().parents[2]
ENV = {"TFYARN_ENV_ARCHIVE": "/opt/envs/env-1.tar", "HOME": "/home/ops"}


def _base(**over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "ps-svc",
        "environment": "/opt/envs/env-1.tar",
        "state_dir": "/shared/svc",
        "logdir": "/shared/svc/logs",
    }
    data.update(over)
    return data


def _components(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in doc["components"]}


def test_the_shipped_spec_loads_and_renders() -> None:
    spec = load_spec(REPO / "conf/service.yaml", ENV)
    assert spec.name == "tfyarn-ps"
    assert spec.state_dir == "/home/ops/tfyarn-services/tfyarn-ps"
    doc = yarnfile(spec)
    assert doc["name"] == "tfyarn-ps" and doc["lifetime"] == -1 and doc["queue"] == "default"
    comps = _components(doc)
    assert list(comps) == ["ps", "tensorboard", "standby"]
    for comp in comps.values():  # the environment archive is localised into ./lib
        assert "artifact" not in comp
        assert comp["configuration"]["files"] == [
            {
                "type": "ARCHIVE",
                "src_file": "file:///opt/envs/env-1.tar",
                "dest_file": "lib",
                "visibility": "APPLICATION",
            }
        ]
        assert comp["launch_command"].startswith("./lib/bin/python -m tfyarn.service.")


def test_ps_component_has_port_readiness_anti_affinity_and_restart_policy() -> None:
    doc = yarnfile(parse_spec(_base(ps={"instances": 3, "port": 7100, "cpus": 2}), ENV))
    ps = _components(doc)["ps"]
    assert ps["number_of_containers"] == 3
    assert ps["resource"] == {"cpus": 2, "memory": "1024"}
    assert ps["restart_policy"] == "ALWAYS"
    assert ps["readiness_check"] == {"type": "PORT", "properties": {"port": "7100"}}
    assert ps["placement_policy"] == {
        "constraints": [{"type": "ANTI_AFFINITY", "scope": "NODE", "target_tags": ["ps"]}]
    }
    cmd = ps["launch_command"]
    # YARN substitutes ${COMPONENT_ID} with the instance number (ps-0, ps-1, ...).
    assert "--instance '${COMPONENT_ID}'" in cmd
    assert "--port 7100" in cmd and "--state-dir /shared/svc" in cmd
    props = doc["configuration"]["properties"]
    assert props[PROPERTY_KEYS["ps_port"]] == "7100"
    assert props[PROPERTY_KEYS["state_dir"]] == "/shared/svc"
    assert props[PROPERTY_KEYS["transport"]] == "tcp"


def test_tensorboard_is_optional_and_probed_over_http() -> None:
    without = _components(yarnfile(parse_spec(_base(), ENV)))
    assert "tensorboard" not in without
    doc = yarnfile(parse_spec(_base(tensorboard={"enabled": True, "port": 6010}), ENV))
    tb = _components(doc)["tensorboard"]
    assert tb["readiness_check"] == {
        "type": "HTTP",
        "properties": {"url": "http://${THIS_HOST}:6010/"},
    }
    assert "--logdir /shared/svc/logs" in tb["launch_command"]
    assert doc["configuration"]["properties"][PROPERTY_KEYS["tensorboard_port"]] == "6010"


def test_standby_workers_start_after_the_ps_and_may_start_at_zero() -> None:
    comps = _components(yarnfile(parse_spec(_base(), ENV)))
    assert comps["standby"]["number_of_containers"] == 0  # present so that flex can grow it
    assert comps["standby"]["dependencies"] == ["ps"]
    two = _components(yarnfile(parse_spec(_base(standby={"instances": 2}), ENV)))
    assert two["standby"]["number_of_containers"] == 2
    assert "--service ps-svc" in two["standby"]["launch_command"]


def test_uri_environments_are_kept_and_paths_with_spaces_are_quoted() -> None:
    spec = parse_spec(
        _base(environment="hdfs:///apps/tfyarn/env.tar.gz", state_dir="/shared/my svc"), ENV
    )
    ps = _components(yarnfile(spec))["ps"]
    assert ps["configuration"]["files"][0]["src_file"] == "hdfs:///apps/tfyarn/env.tar.gz"
    # An archive all may read is localised once per node, for every application.
    public = _components(yarnfile(replace(spec, environment_public=True)))["ps"]
    assert public["configuration"]["files"][0]["visibility"] == "PUBLIC"
    assert "--state-dir '/shared/my svc'" in ps["launch_command"]


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"name": "PS_svc"}, "lowercase letters"),
        ({"name": None}, "name is required"),
        ({"environment": ""}, "environment is required"),
        ({"state_dir": "relative/dir"}, "absolute path"),
        ({"transport": "ucx"}, "transport must be one of tcp, grpc"),
        ({"lifetime_s": 0}, "lifetime_s must be -1"),
        ({"ps": {"instances": 0}}, "ps.instances must be >= 1"),
        ({"ps": {"port": 80}}, "ps.port must be between 1024 and 65535"),
        ({"ps": {"memory_mb": 64}}, "ps.memory_mb must be >= 256"),
        ({"ps": {"restart_policy": "SOMETIMES"}}, "ps.restart_policy must be one of"),
        ({"ps": {"instances": 2, "anti_affinity": False}}, "keep ps.anti_affinity"),
        ({"ps": {"snapshot_interval_s": 0}}, "snapshot_interval_s must be > 0"),
        ({"ps": {"replicas": 2}}, r"unknown key\(s\) \['replicas'\]"),
        ({"tensorboard": {"enabled": True, "port": 7070}}, "different ports"),
        ({"tensorboard": {"enabled": True}, "logdir": ""}, "needs logdir"),
        ({"standby": {"instances": -1}}, "standby.instances must be >= 0"),
        ({"extra": 1}, r"unknown key\(s\) \['extra'\]"),
    ],
)
def test_bad_specs_are_refused_with_the_field_named(over: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_spec(_base(**over), ENV)


def test_unset_variables_and_bad_yaml_are_named(tmp_path: Path) -> None:
    spec = tmp_path / "svc.yaml"
    spec.write_text(yaml.safe_dump(_base(environment="${NOT_SET_ANYWHERE}")))
    with pytest.raises(ConfigError, match="NOT_SET_ANYWHERE is not set"):
        load_spec(spec, {})
    spec.write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_spec(spec, {})
    with pytest.raises(ConfigError, match="cannot read service spec"):
        load_spec(tmp_path / "missing.yaml", {})


def test_cli_prints_the_yarnfile_and_refuses_to_flex_ps(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tfyarn.cli.main import main

    monkeypatch.setenv("TFYARN_ENV_ARCHIVE", "/opt/envs/env-1.tar")
    assert main(["service", "launch", str(REPO / "conf/service.yaml"), "--print"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == yarnfile(load_spec(REPO / "conf/service.yaml", os.environ))
    assert main(["service", "launch", str(REPO / "conf/service.yaml"), "--print",
                 "--name", "other-ps"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["name"] == "other-ps"
    # Refused before any YARN is asked: the ps count shards the held model.
    monkeypatch.delenv("HADOOP_CONF_DIR", raising=False)
    assert main(["service", "flex", "tfyarn-ps", "ps", "3"]) == 1
    assert "number of ps of a service is fixed" in capsys.readouterr().err
    monkeypatch.delenv("TFYARN_ENV_ARCHIVE")
    assert main(["service", "launch", str(REPO / "conf/service.yaml"), "--print"]) == 1
    assert "TFYARN_ENV_ARCHIVE is not set" in capsys.readouterr().err
