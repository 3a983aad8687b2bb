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
        chief=False,
        no_chief=False,
        evaluator=False,
        transport=None,
        interface=None,
        service=None,
        output_json=None,
        max_restarts=None,
        min_workers=None,
        checkpoint_dir=None,
        checkpoint_every=None,
        tls=False,
        tensorboard=False,
        log_dir=None,
        metrics_port=None,
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
    assert not any(a.startswith("spark.tfyarn.tls=") for a in argv)
    assert "spark.tfyarn.tls=true" in build_plan(_options(tls=True), [], "t.py", [], {}).argv
    assert not any(a.startswith(("spark.tfyarn.tensorboard", "spark.tfyarn.metrics")) for a in argv)
    watched = build_plan(
        _options(tensorboard=True, log_dir="/data/logs", metrics_port=9464), [], "t.py", [], {}
    ).argv
    assert "spark.tfyarn.tensorboard=true" in watched
    assert "spark.tfyarn.logDir=/data/logs" in watched
    assert "spark.tfyarn.metrics.port=9464" in watched


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


def _confs(argv: list[str]) -> dict[str, str]:
    return {
        argv[i + 1].partition("=")[0]: argv[i + 1].partition("=")[2]
        for i, arg in enumerate(argv)
        if arg == "--conf"
    }


def test_the_users_conf_overrides_the_profile_and_is_reported() -> None:
    plan = build_plan(
        _options(),
        ["--conf", "spark.task.maxFailures=4", "--conf=spark.a=b=c", "--driver-memory", "1g"],
        "train.py",
        [],
        {},
    )
    confs = _confs(plan.argv)
    assert confs["spark.task.maxFailures"] == "4"  # the profile says 1
    assert confs["spark.a"] == "b=c"
    assert plan.argv.count("--conf") == len(confs)  # each key once: no profile value left
    assert [str(o) for o in plan.overrides] == [
        "--conf spark.task.maxFailures=4 overrides the profile's spark.task.maxFailures=1"
    ]
    assert plan.argv[-3:] == ["--driver-memory", "1g", "train.py"]


def test_conf_is_not_taken_for_an_abbreviated_conf_dir(capsys: pytest.CaptureFixture) -> None:
    from tfyarn.cli.main import main

    argv = ["submit", "--dry-run", "--conf", "spark.task.maxFailures=4", "t.py", "--x"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert " --conf spark.task.maxFailures=4 " in out and "maxFailures=1" not in out
    assert out.rstrip().endswith(" t.py --x")
    assert err == (
        "tfyarn: --conf spark.task.maxFailures=4 overrides the profile's spark.task.maxFailures=1\n"
    )


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        (
            "spark.dynamicAllocation.enabled=true",
            "spark.dynamicAllocation.enabled=true cannot be used: a barrier stage needs a "
            "fixed set of executors, one per role (tfyarn's profiles set it to false)",
        ),
        (
            "spark.executor.instances=2",
            "spark.executor.instances=2 is fewer than the job's 4 roles (one executor each); "
            "leave it to tfyarn submit, which sets 4",
        ),
        (
            "spark.task.cpus=2",
            "spark.task.cpus=2 differs from spark.executor.cores=1: tfyarn needs exactly one "
            "task (one role) per executor; set both to the same number",
        ),
        (
            "spark.tfyarn.workers=5",
            "--conf spark.tfyarn.workers=... is set by tfyarn submit from --workers, which "
            "also sizes the cluster; use that option instead",
        ),
        ("spark.task.cpus", "--conf 'spark.task.cpus': expected --conf KEY=VALUE"),
    ],
)
def test_a_conf_that_breaks_what_tfyarn_needs_is_refused(conf: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_plan(_options(profile="yarn-client"), ["--conf", conf], "t.py", [], {})
    assert str(err.value) == message


def test_submit_sizes_for_a_chief_unless_told_and_tells_the_job() -> None:
    default = build_plan(_options(ps=0), [], "t.py", [], {})
    assert default.env["TFYARN_EXECUTORS"] == "3"
    assert _confs(default.argv)["spark.tfyarn.chief"] == "true"
    no_chief = build_plan(_options(ps=0, no_chief=True), [], "t.py", [], {})
    assert no_chief.env["TFYARN_EXECUTORS"] == "2"
    assert _confs(no_chief.argv)["spark.tfyarn.chief"] == "false"
    with pytest.raises(ConfigError, match=r"workers=0 leaves the chief alone .* --chief"):
        build_plan(_options(workers=0, ps=0), [], "t.py", [], {})
    alone = build_plan(_options(workers=0, ps=0, chief=True), [], "t.py", [], {})
    assert alone.env["TFYARN_EXECUTORS"] == "1"


def test_split_argv_lets_help_through_without_a_script() -> None:
    assert split_argv(["--workers", "2", "--help"]) == (["--workers", "2", "--help"], "", [])
    assert split_argv(["-h"]) == (["-h"], "", [])
