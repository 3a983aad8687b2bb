"""What ``tfyarn submit`` adds for YARN: env archive, GPUs, dev-YARN settings (pure parts),
and the YARN profiles rendered into a spark-submit command."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest

from tfyarn.cli.submit import build_plan
from tfyarn.errors import ConfigError
from tfyarn.yarn import submit_support as ys
from tfyarn.yarn.devcluster import DEV_MARKER
from tfyarn.yarn.envpack import ENV_ALIAS

REPO_CONF = Path(__file__).resolve().parents[2] / "conf"


def _options(profile: str, workers: int = 2, ps: int = 1) -> argparse.Namespace:
    return argparse.Namespace(
        profile=profile,
        conf_dir=None,
        workers=workers,
        ps=ps,
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


def _confs(argv: list[str]) -> dict[str, str]:
    out = {}
    for i, arg in enumerate(argv):
        if arg == "--conf":
            key, _, value = argv[i + 1].partition("=")
            out[key] = value
    return out


def _hadoop_conf(tmp_path: Path, dev: bool) -> Path:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "yarn-site.xml").write_text(
        "<configuration><property><name>yarn.resourcemanager.webapp.address</name>"
        "<value>127.0.0.1:18088</value></property></configuration>"
    )
    if dev:
        marker = {"base_dir": str(tmp_path), "staging_dir": str(tmp_path / "staging")}
        (conf / DEV_MARKER).write_text(json.dumps(marker))
    return conf


@pytest.mark.parametrize(
    ("profile", "mode"), [("yarn-client", "client"), ("yarn-cluster", "cluster")]
)
def test_yarn_profiles_render_one_container_per_role_with_tf_overhead(
    profile: str, mode: str
) -> None:
    plan = build_plan(_options(profile), [], "train.py", ["--epochs", "1"], {})
    assert plan.argv[1:5] == ["--master", "yarn", "--deploy-mode", mode]
    confs = _confs(plan.argv)
    assert confs["spark.executor.instances"] == "4"  # chief + 2 workers + 1 ps
    assert confs["spark.executor.cores"] == confs["spark.task.cpus"] == "1"
    assert confs["spark.dynamicAllocation.enabled"] == "false"
    assert confs["spark.executor.memoryOverhead"] == "1536m"
    assert "spark.executor.pyspark.memory" not in confs  # RLIMIT_AS would break TF
    assert confs["spark.yarn.maxAppAttempts"] == "1"
    assert confs["spark.tfyarn.yarn.envArchive"] == "auto"
    assert plan.argv[-3:] == ["train.py", "--epochs", "1"]


def test_rdma_profile_requests_gpus_and_rdma_and_names_missing_settings() -> None:
    with pytest.raises(ConfigError, match="TFYARN_IB_INTERFACE"):
        build_plan(_options("rdma"), [], "t.py", [], {})
    env = {"TFYARN_IB_INTERFACE": "ib0", "TFYARN_IB_DEVICE": "mlx5_0:1"}
    plan = build_plan(_options("rdma", workers=4, ps=0), [], "t.py", [], env)
    confs = _confs(plan.argv)
    assert confs["spark.executor.instances"] == "5"
    assert confs["spark.executor.resource.gpu.amount"] == "1"
    assert confs["spark.task.resource.gpu.amount"] == "1"
    assert confs["spark.executor.cores"] == confs["spark.task.cpus"]  # one role per executor
    assert confs["spark.tfyarn.transport"] == "rdma"
    assert confs["spark.tfyarn.interface"] == "ib0"
    assert confs["spark.executorEnv.UCX_NET_DEVICES"] == "mlx5_0:1"
    # The YARN container is heap + overhead: 12 GiB for TF + CUDA + pinned buffers.
    assert (confs["spark.executor.memory"], confs["spark.executor.memoryOverhead"]) == ("4g", "8g")


def test_gpu_properties_add_discovery_and_task_amount() -> None:
    assert ys.gpu_properties({}, "/x/gpus.sh") == {}
    added = ys.gpu_properties(
        {"spark.executor.resource.gpu.amount": "2", "spark.yarn.dist.files": "a.txt"}, "/x/gpus.sh"
    )
    assert added == {
        "spark.task.resource.gpu.amount": "2",
        "spark.yarn.dist.files": f"a.txt,/x/gpus.sh#{ys.GPU_SCRIPT_ALIAS}",
        "spark.executor.resource.gpu.discoveryScript": f"./{ys.GPU_SCRIPT_ALIAS}",
    }
    own = {
        "spark.executor.resource.gpu.amount": "1",
        "spark.task.resource.gpu.amount": "1",
        "spark.executor.resource.gpu.discoveryScript": "/opt/find-gpus.sh",
    }
    assert ys.gpu_properties(own, "/x/gpus.sh") == {}
    with pytest.raises(ConfigError, match="positive number of GPUs"):
        ys.gpu_properties({"spark.executor.resource.gpu.amount": "many"}, "/x")


def test_gpu_discovery_script_prints_spark_resource_json(tmp_path: Path) -> None:
    import subprocess

    # No nvidia-smi on PATH: no GPUs, valid JSON all the same.
    out = subprocess.run(
        [ys.gpu_script_path()],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        check=True,
    ).stdout
    assert json.loads(out) == {"name": "gpu", "addresses": []}
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nprintf '0\\n3\\n'\n")
    fake.chmod(0o755)
    out = subprocess.run(
        [ys.gpu_script_path()],
        capture_output=True,
        text=True,
        env={"PATH": f"{tmp_path}:/usr/bin:/bin"},
        check=True,
    ).stdout
    assert json.loads(out) == {"name": "gpu", "addresses": ["0", "3"]}


def test_env_archive_properties_by_deploy_mode() -> None:
    inside = f"./{ENV_ALIAS}/bin/python"
    client = ys.env_archive_properties(
        {"spark.submit.deployMode": "client"}, f"/c/env.tar#{ENV_ALIAS}", "/venv/bin/python"
    )
    assert client == {
        "spark.yarn.dist.archives": f"/c/env.tar#{ENV_ALIAS}",
        "spark.pyspark.python": inside,
        "spark.pyspark.driver.python": "/venv/bin/python",
    }
    cluster = ys.env_archive_properties(
        {"spark.submit.deployMode": "cluster", "spark.yarn.dist.archives": "d.zip#d"},
        f"/c/env.tar#{ENV_ALIAS}",
        "/venv/bin/python",
    )
    assert cluster["spark.yarn.dist.archives"] == f"d.zip#d,/c/env.tar#{ENV_ALIAS}"
    assert cluster["spark.pyspark.driver.python"] == inside


def test_dev_cluster_properties_fill_only_unset_keys() -> None:
    marker = {"staging_dir": "/d/staging"}
    out = ys.dev_cluster_properties({"spark.yarn.jars": "hdfs:///jars/*"}, marker, "/spark")
    assert "spark.yarn.jars" not in out
    assert out["spark.yarn.stagingDir"] == "viewfs://tfyarn/d/staging"
    assert out["spark.executorEnv.SPARK_LOCAL_IP"] == "127.0.0.1"
    assert out["spark.yarn.appMasterEnv.SPARK_LOCAL_IP"] == "127.0.0.1"
    assert ys.dev_cluster_properties({}, marker, "/spark")["spark.yarn.jars"] == (
        "local:/spark/jars/*"
    )
    # With HDFS the staging dir is Spark's default on it, as on a real cluster.
    on_hdfs = {**marker, "default_fs": "hdfs://127.0.0.1:8020"}
    assert "spark.yarn.stagingDir" not in ys.dev_cluster_properties({}, on_hdfs, "/spark")
    assert ys.dev_cluster_uri("/a/b.tar#x") == "viewfs://tfyarn/a/b.tar#x"
    assert ys.dev_cluster_uri("hdfs:///a/b.tar") == "hdfs:///a/b.tar"


@pytest.mark.parametrize("dev", [False, True])
def test_prepare_plan_with_a_given_archive_and_gpus(tmp_path: Path, dev: bool) -> None:
    profile = tmp_path / "gpu.conf"
    profile.write_text(
        "spark.master yarn\nspark.submit.deployMode cluster\n"
        "spark.executor.instances ${TFYARN_EXECUTORS}\n"
        "spark.executor.resource.gpu.amount 1\n"
        "spark.tfyarn.yarn.envArchive /envs/team-env.tar\n"
    )
    env = {"HADOOP_CONF_DIR": str(_hadoop_conf(tmp_path, dev)), "PATH": "/usr/bin"}
    plan = build_plan(
        _options(str(profile), workers=1, ps=0), ["--py-files", "m.py"], "t.py", ["-x"], env
    )
    prepared = ys.prepare_plan(plan)
    confs = _confs(prepared.argv)
    archive = "/envs/team-env.tar#tfyarn-env"
    assert confs["spark.yarn.dist.archives"] == (f"viewfs://tfyarn{archive}" if dev else archive)
    assert confs["spark.pyspark.python"] == f"./{ENV_ALIAS}/bin/python"
    assert confs["spark.executor.resource.gpu.discoveryScript"] == f"./{ys.GPU_SCRIPT_ALIAS}"
    assert confs["spark.task.resource.gpu.amount"] == "1"
    assert "spark.tfyarn.yarn.envArchive" not in confs  # consumed by tfyarn
    assert ("spark.yarn.jars" in confs) is dev
    assert (prepared.env.get("SPARK_LOCAL_IP") == "127.0.0.1") is dev
    assert prepared.argv[-4:] == ["--py-files", "m.py", "t.py", "-x"]
    assert prepared.argv[1:5] == ["--master", "yarn", "--deploy-mode", "cluster"]


def test_prepare_plan_needs_hadoop_conf_dir_for_yarn_and_ignores_other_masters() -> None:
    plan = build_plan(_options("yarn-client"), [], "t.py", [], {})
    with pytest.raises(ConfigError, match="HADOOP_CONF_DIR"):
        ys.prepare_plan(plan)
    local = build_plan(_options("local-cluster"), [], "t.py", [], {})
    assert ys.prepare_plan(local) is local


def test_app_id_pattern() -> None:
    line = "INFO YarnClientImpl: Submitted application application_1795291040070_0002"
    match = ys.APP_ID_RE.search(line)
    assert match and match.group(0) == "application_1795291040070_0002"
    assert ys.APP_ID_RE.search("appattempt_1_2") is None


def test_the_cluster_file_system_comes_from_core_site(tmp_path: Path) -> None:
    from tfyarn.yarn.envpack import cluster_env_url
    from tfyarn.yarn.hadoop_conf import render_site_xml

    conf = _hadoop_conf(tmp_path, dev=False)
    assert ys.cluster_default_fs({"HADOOP_CONF_DIR": str(conf)}) == "file:///"
    assert ys.cluster_default_fs({}) == "file:///"
    (conf / "core-site.xml").write_text(render_site_xml({"fs.defaultFS": "hdfs://nn:8020"}))
    assert ys.cluster_default_fs({"HADOOP_CONF_DIR": str(conf)}) == "hdfs://nn:8020"
    assert cluster_env_url("hdfs://nn:8020/", "alice", "env-ab12.tar") == (
        "hdfs://nn:8020/user/alice/.tfyarn/envs/env-ab12.tar"
    )


_RACE_OUTPUT = [
    "26/12/04 20:52:26 INFO Client: Application report for application_1_0002 (state: RUNNING)\n",
    "26/12/04 20:52:27 ERROR SparkContext: Error initializing SparkContext.\n",
    "java.util.ConcurrentModificationException\n",
    "\tat org.sparkproject.jetty.ee10.servlet.ServletHandler.initialize(ServletHandler.java:687)\n",
]


@pytest.mark.parametrize(
    ("profile", "lines", "race"),
    [
        ("yarn-client", _RACE_OUTPUT, True),
        ("yarn-cluster", _RACE_OUTPUT, False),  # the cluster-mode driver has no such race
        ("yarn-client", _RACE_OUTPUT[:2], False),  # another reason the context failed
        ("yarn-client", [_RACE_OUTPUT[0], _RACE_OUTPUT[2]], False),  # a CME elsewhere
    ],
)
def test_the_watcher_tells_sparks_yarn_client_ui_race(
    profile: str, lines: list[str], race: bool
) -> None:
    plan = build_plan(_options(profile), [], "t.py", [], {})
    watcher = ys.YarnAppWatcher(plan, out=io.StringIO())
    for line in lines:
        watcher.feed(line)
    assert watcher.hit_ui_start_race is race
    assert watcher.app_id == "application_1_0002"
    assert ys.spark_ui_start_race("".join(lines)) is (len(lines) == len(_RACE_OUTPUT))


def test_submit_launches_once_more_after_the_ui_race_only() -> None:
    from tfyarn.cli.submit import launch_again

    assert launch_again(1, hit_ui_start_race=True, launch=1)
    assert not launch_again(1, hit_ui_start_race=True, launch=2)  # never a third launch
    assert not launch_again(1, hit_ui_start_race=False, launch=1)  # any other failure
    assert not launch_again(0, hit_ui_start_race=True, launch=1)  # it succeeded after all
