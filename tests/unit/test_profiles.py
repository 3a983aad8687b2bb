"""Profiles and the spark-submit command line (pure functions)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tfyarn.cli.submit import build_plan, split_argv
from tfyarn.cluster import profiles
from tfyarn.errors import ConfigError

REPO_CONF = Path(__file__).resolve().parents[2] / "conf"


def test_parse_properties_accepts_space_and_equals_and_skips_comments() -> None:
    text = "# comment\nspark.master  local-cluster[3,1,1024]\n\nspark.a=b c\n"
    assert profiles.parse_properties(text) == {
        "spark.master": "local-cluster[3,1,1024]",
        "spark.a": "b c",
    }


def test_parse_properties_names_the_bad_line() -> None:
    with pytest.raises(ConfigError, match=r"p.conf:2"):
        profiles.parse_properties("a b\n=oops\n", "p.conf")


def test_expand_names_the_missing_variable() -> None:
    assert profiles.expand("x-${A}-y", {"A": "1"}) == "x-1-y"
    with pytest.raises(ConfigError, match="TFYARN_SPARK_MASTER is not set"):
        profiles.expand("${TFYARN_SPARK_MASTER}", {}, key="spark.master", source="s.conf")


def test_find_profile_lists_known_profiles_when_missing() -> None:
    with pytest.raises(ConfigError, match="local-cluster"):
        profiles.find_profile("nope", [REPO_CONF])


def _options(**over: object) -> argparse.Namespace:
    base = dict(
        profile="local-cluster",
        conf_dir=None,
        workers=2,
        ps=1,
        no_chief=False,
        evaluator=False,
        transport=None,
        interface=None,
        service=None,
        output_json=None,
    )
    base.update(over)
    return argparse.Namespace(**base)


def test_local_cluster_submit_sizes_the_cluster_to_the_roles(tmp_path: Path) -> None:
    plan = build_plan(
        _options(output_json=str(tmp_path / "r.json")),
        ["--driver-memory", "2g"],
        "train.py",
        ["--epochs", "3"],
        {},
    )
    argv = plan.argv
    assert argv[argv.index("--master") + 1] == "local-cluster[4,1,1024]"
    assert "spark.tfyarn.workers=2" in argv and "spark.tfyarn.ps=1" in argv
    assert f"spark.tfyarn.outputJson={tmp_path / 'r.json'}" in argv
    assert argv[-5:] == ["--driver-memory", "2g", "train.py", "--epochs", "3"]
    assert plan.env["SPARK_LOCAL_IP"] == "127.0.0.1"
    assert plan.env["TFYARN_EXECUTORS"] == "4"
    assert not any(a.startswith("spark.tfyarn.service=") for a in argv)
    attached = build_plan(_options(ps=0, service="tfyarn-ps"), [], "train.py", [], {})
    assert "spark.tfyarn.service=tfyarn-ps" in attached.argv  # tfyarn.run reads it
    assert attached.env["TFYARN_EXECUTORS"] == "3"  # no ps roles: the service has them


def test_standalone_profile_needs_the_master_variable() -> None:
    with pytest.raises(ConfigError, match="TFYARN_SPARK_MASTER"):
        build_plan(_options(profile="standalone"), [], "t.py", [], {})
    plan = build_plan(
        _options(profile="standalone"),
        [],
        "t.py",
        [],
        {"TFYARN_SPARK_MASTER": "spark://127.0.0.1:7077"},
    )
    assert plan.master == "spark://127.0.0.1:7077"
    assert "spark.cores.max=4" in plan.argv


def test_split_argv_separates_options_script_and_script_args() -> None:
    assert split_argv(["--workers", "2", "--num-executors", "3", "a.py", "--x", "b.py"]) == (
        ["--workers", "2", "--num-executors", "3"],
        "a.py",
        ["--x", "b.py"],
    )
    with pytest.raises(ConfigError, match="no training script"):
        split_argv(["--workers", "2"])
