"""The dev YARN itself: real RM and NM processes, a plain spark-submit, the CLI."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tfyarn import storage
from tfyarn.yarn.checks import check_yarn
from tfyarn.yarn.devcluster import DevYarnState
from tfyarn.yarn.envpack import ENV_ALIAS, publish_env_archive
from tfyarn.yarn.hadoop_conf import DevYarnSettings
from tfyarn.yarn.submit_support import spark_ui_start_race

from .conftest import APPS, TFYARN, DevYarnFixture

pytestmark = pytest.mark.yarn


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def test_rm_and_nm_are_separate_java_processes_and_the_node_is_running(
    dev_yarn: DevYarnFixture,
) -> None:
    pids = dev_yarn.state.pids
    assert pids["resourcemanager"] != pids["nodemanager"]
    assert "yarn.server.resourcemanager.ResourceManager" in _cmdline(pids["resourcemanager"])
    assert "yarn.server.nodemanager.NodeManager" in _cmdline(pids["nodemanager"])
    assert "java" in _cmdline(pids["nodemanager"]).split()[0]
    info = dev_yarn.rm.cluster_info()
    assert info["state"] == "STARTED"
    # The session's YARN runs the Services API, whose jars exist up to Hadoop 3.4.2.
    assert info["hadoopVersion"] == dev_yarn.state.hadoop_version == "3.4.2"
    assert "ZooKeeperServerMain" in _cmdline(pids["zookeeper"])  # the registry's
    nodes = dev_yarn.rm.running_nodes()
    assert len(nodes) == 1
    node = nodes[0]
    settings = DevYarnSettings(base_dir=Path(dev_yarn.state.base_dir))
    total_mb = node["availMemoryMB"] + node["usedMemoryMB"]
    assert total_mb == settings.nm_memory_mb
    assert node["availableVirtualCores"] + node["usedVirtualCores"] == settings.nm_vcores
    # The client, scheduler, tracker and web ports answer on loopback.
    for name in ("rm", "rm_scheduler", "rm_tracker", "rm_webapp", "nm", "nm_webapp"):
        with socket.create_connection(("127.0.0.1", dev_yarn.state.ports[name]), timeout=5):
            pass


def test_plain_spark_submit_runs_on_the_dev_yarn(
    dev_yarn: DevYarnFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyspark

    spark_home = Path(pyspark.__file__).parent
    staging = Path(dev_yarn.state.base_dir) / "staging"
    monkeypatch.setenv("HADOOP_CONF_DIR", dev_yarn.env["HADOOP_CONF_DIR"])
    archive = publish_env_archive(dev_yarn.packed.path, dev_yarn.state.default_fs)
    for launch in (1, 2):
        proc = _plain_submit(dev_yarn, spark_home, staging, archive)
        output = proc.stdout + proc.stderr
        if proc.returncode == 0 or launch == 2 or not spark_ui_start_race(output):
            break
        print("the driver hit Spark's yarn-client UI start-up race; launching once more")
    assert proc.returncode == 0, _failed_app_story(dev_yarn, output)
    assert "plain-app sums=[(0, 2450), (1, 2500)]" in output
    match = re.search(r"plain-app driver_pid=(\d+) executor_pids=\[([\d, ]+)\]", output)
    assert match, output[-3000:]
    executor_pids = {int(p) for p in match.group(2).split(",")}
    assert int(match.group(1)) not in executor_pids
    app_id = re.search(r"application_\d+_\d+", output)
    assert app_id, output[-3000:]
    report = dev_yarn.final(app_id.group(0))
    assert (report.state, report.final_status) == ("FINISHED", "SUCCEEDED")
    assert report.name == "tfyarn-yarn-plain"


def _failed_app_story(dev_yarn: DevYarnFixture, output: str) -> str:
    """Why a spark-submit failed: the RM's diagnostics and the lines that name an error.

    Spark's own tail is its shutdown noise; the cause (an AM container that exited, a
    refused submission) is in the RM's report and in the first ERROR lines.
    """
    app_id = re.search(r"application_\d+_\d+", output)
    diagnostics = "-"
    if app_id:
        diagnostics = dev_yarn.final(app_id.group(0)).diagnostics or "-"
    errors = [line for line in output.splitlines() if " ERROR " in line or "Exception" in line]
    return (
        f"RM diagnostics: {diagnostics}\nerror lines:\n"
        + "\n".join(errors[:30])
        + "\n--- tail ---\n"
        + output[-2000:]
    )


def test_yarn_dev_cli_up_status_down(
    dev_yarn: DevYarnFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second, small cluster with HDFS through the CLI; stopping it leaves the session's alone."""
    base = tmp_path / "cli-yarn"

    def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [TFYARN, "yarn-dev", *args, "--dir", str(base)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    up = cli("up", "--free-ports", "--hdfs", "--memory-mb", "2048", "--vcores", "2")
    daemons = ("namenode", "datanode", "resourcemanager", "nodemanager")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"export HADOOP_CONF_DIR={base / 'conf'}" in up.stdout
        assert (base / "conf" / "yarn-site.xml").is_file()
        state = DevYarnState(**json.loads((base / "state.json").read_text()))
        assert state.alive() == dict.fromkeys(daemons, True)
        assert f"HDFS: {state.default_fs}" in up.stdout

        status = cli("status", "--json")
        assert status.returncode == 0, status.stderr
        info = json.loads(status.stdout)
        assert info["running"] is True
        assert [(n["state"], n["memory_mb"], n["vcores"]) for n in info["nodes"]] == [
            ("RUNNING", 2048, 2)
        ]
        assert info["default_fs"] == state.default_fs
        # Its HDFS takes files, with a home for the user, found through HADOOP_CONF_DIR.
        monkeypatch.setenv("HADOOP_CONF_DIR", str(base / "conf"))
        monkeypatch.delenv(storage.WEBHDFS_ENV, raising=False)
        home = f"{state.default_fs}/user/{storage.hdfs_user()}"
        storage.write_bytes_atomically(f"{home}/probe.txt", b"hello hdfs")
        assert storage.read_bytes(f"{home}/probe.txt") == b"hello hdfs"

        # tfyarn doctor: this cluster answers, but has no Services API.
        checks = {c.name: c for c in check_yarn()}
        assert checks["yarn"].ok
        assert not checks["yarn services api"].ok
        assert "yarn-dev up --services" in checks["yarn services api"].fix

        again = cli("up", "--free-ports")
        assert again.returncode == 1
        assert "already running" in again.stderr
    finally:
        down = cli("down")
    assert down.returncode == 0, down.stderr
    assert "stopped" in down.stdout
    assert state.alive() == dict.fromkeys(daemons, False)
    assert cli("status").returncode == 3
    # The session's cluster is untouched.
    assert dev_yarn.state.alive() == dict.fromkeys(
        ("namenode", "datanode", "zookeeper", "resourcemanager", "nodemanager"), True
    )
    assert dev_yarn.rm.running_nodes()


def test_doctor_finds_the_services_api_of_the_session_yarn(
    dev_yarn: DevYarnFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HADOOP_CONF_DIR", dev_yarn.env["HADOOP_CONF_DIR"])
    checks = {c.name: c for c in check_yarn()}
    assert checks["yarn"].ok, checks["yarn"].detail
    services = checks["yarn services api"]
    assert services.ok and "(Hadoop 3.4.2)" in services.detail, services.detail


def _plain_submit(
    dev_yarn: DevYarnFixture, spark_home: Path, staging: Path, archive: str
) -> subprocess.CompletedProcess[str]:
    """Plain ``spark-submit`` of apps/plain_app.py in yarn-client mode.

    As a user without tfyarn's launcher would on a node without Python: the session's
    environment archive, on HDFS (localised once per NodeManager, as a PUBLIC resource),
    goes with ``--archives`` and the executors run its interpreter.
    """
    return subprocess.run(
        [
            str(spark_home / "bin" / "spark-submit"),
            "--master",
            "yarn",
            "--deploy-mode",
            "client",
            "--archives",
            f"{archive}#{ENV_ALIAS}",
            "--conf",
            f"spark.pyspark.python=./{ENV_ALIAS}/bin/python",
            "--conf",
            f"spark.pyspark.driver.python={sys.executable}",
            "--num-executors",
            "2",
            "--executor-memory",
            "512m",
            "--conf",
            f"spark.yarn.jars=local:{spark_home}/jars/*",
            "--conf",
            f"spark.yarn.stagingDir=file://{staging}",
            "--conf",
            "spark.executorEnv.SPARK_LOCAL_IP=127.0.0.1",
            "--conf",
            "spark.yarn.am.extraJavaOptions=-XX:TieredStopAtLevel=1",
            "--conf",
            "spark.executor.extraJavaOptions=-XX:TieredStopAtLevel=1",
            str(APPS / "plain_app.py"),
        ],
        capture_output=True,
        text=True,
        env=dev_yarn.env,
        timeout=600,
    )
