"""RM REST reports, the logs command, the jar cache and the environment packer's rules."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tfyarn.errors import ConfigError, YarnError
from tfyarn.yarn import envpack, logs, maven
from tfyarn.yarn.rest import (
    AppReport,
    ResourceManagerClient,
    check_app_id,
    check_container_id,
)


def test_app_report_from_rest_json() -> None:
    app = {
        "id": "application_1_0001",
        "state": "FINISHED",
        "finalStatus": "SUCCEEDED",
        "name": "digits",
        "trackingUrl": "http://127.0.0.1:8088/proxy/application_1_0001/",
        "diagnostics": "",
        "logAggregationStatus": "SUCCEEDED",
    }
    report = AppReport.from_json(app)
    assert report.done
    assert (report.app_id, report.state, report.final_status) == (
        "application_1_0001",
        "FINISHED",
        "SUCCEEDED",
    )
    assert not AppReport.from_json({**app, "state": "RUNNING"}).done


@pytest.mark.parametrize("bad", ["app_1_2", "application_1", "application_x_2", "job_1_2"])
def test_bad_application_ids_are_rejected(bad: str) -> None:
    with pytest.raises(YarnError, match="not a YARN application id"):
        check_app_id(bad)
    check_app_id("application_1795291040070_0002")


@pytest.mark.parametrize(
    "bad", ["container_1_2_3", "container_x_1_01_000002", "application_1_2", "container_e1_1_2"]
)
def test_bad_container_ids_are_rejected_before_any_call(bad: str) -> None:
    with pytest.raises(YarnError, match="not a YARN container id"):
        check_container_id(bad)
    client = ResourceManagerClient("http://127.0.0.1:9")
    with pytest.raises(YarnError, match="not a YARN container id"):
        client.signal_container(bad)
    with pytest.raises(YarnError, match="unknown container signal 'KILL'; one of"):
        client.signal_container("container_1795291040070_0002_01_000003", "KILL")
    check_container_id("container_1795291040070_0002_01_000003")
    check_container_id("container_e17_1410901177871_0001_01_000005")  # after an RM restart


def test_rest_client_needs_http_and_says_when_unreachable() -> None:
    with pytest.raises(YarnError, match="http://"):
        ResourceManagerClient("127.0.0.1:8088")
    # A port nothing listens on (bound then closed) on loopback.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rm = ResourceManagerClient(f"http://127.0.0.1:{port}", timeout_s=2.0)
    assert not rm.reachable()
    with pytest.raises(YarnError, match="cannot reach the ResourceManager"):
        rm.app("application_1_1")


def test_logs_command_with_yarn_or_with_the_cached_jars(tmp_path: Path) -> None:
    assert logs.logs_command("application_1_2", tmp_path, yarn="/usr/bin/yarn") == [
        "/usr/bin/yarn",
        "logs",
        "-applicationId",
        "application_1_2",
    ]
    cmd = logs.logs_command(
        "application_1_2", tmp_path, am_only=True, log_files=["stdout", "stderr"], jars=tmp_path
    )
    assert cmd[:3] == ["java", "-cp", f"{tmp_path}:{tmp_path}/*"]
    assert cmd[3] == "org.apache.hadoop.yarn.client.cli.LogsCLI"
    assert cmd[4:] == [
        "-applicationId",
        "application_1_2",
        "-am",
        "1",
        "-log_files",
        "stdout,stderr",
    ]
    with pytest.raises(ConfigError):
        logs.logs_command("application_1_2", tmp_path)


def test_rm_web_url_from_yarn_site(tmp_path: Path) -> None:
    site = tmp_path / "yarn-site.xml"
    site.write_text(
        "<configuration><property><name>yarn.resourcemanager.hostname</name>"
        "<value>rm.example</value></property></configuration>"
    )
    assert logs.rm_web_url(tmp_path) == "http://rm.example:8088"
    site.write_text(
        "<configuration><property><name>yarn.resourcemanager.webapp.address</name>"
        "<value>127.0.0.1:18088</value></property></configuration>"
    )
    assert logs.rm_web_url(tmp_path) == "http://127.0.0.1:18088"
    assert logs.site_property(tmp_path, "missing") is None


def test_hadoop_conf_dir_is_required_and_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="HADOOP_CONF_DIR is not set"):
        logs.hadoop_conf_dir({})
    with pytest.raises(ConfigError, match=r"no yarn-site\.xml"):
        logs.hadoop_conf_dir({"HADOOP_CONF_DIR": str(tmp_path)})


def test_pom_lists_the_daemons_at_the_spark_client_version() -> None:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    root = ET.parse(maven.pom_path()).getroot()
    artifacts = {
        d.findtext("m:artifactId", namespaces=ns)
        for d in root.findall("m:dependencies/m:dependency", ns)
    }
    assert {
        "hadoop-yarn-server-resourcemanager",
        "hadoop-yarn-server-nodemanager",
        "hadoop-yarn-client",
    } <= artifacts
    assert root.findtext("m:properties/m:hadoop.version", namespaces=ns) == "3.5.0"
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    assert (jars / f"hadoop-client-api-{maven.DEFAULT_HADOOP_VERSION}.jar").is_file()


def test_cache_root_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TFYARN_CACHE_DIR", str(tmp_path / "c"))
    assert maven.cache_root() == tmp_path / "c"
    assert maven.jar_dir("3.5.0") == tmp_path / "c" / "hadoop-3.5.0" / "lib"
    monkeypatch.delenv("TFYARN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert maven.cache_root() == tmp_path / "x" / "tfyarn"


def test_env_pack_leaves_out_pyspark_and_editable_hooks() -> None:
    import sys

    patterns = [p for _, p in envpack._excludes(Path(sys.prefix))]
    site = "lib/python3.11/site-packages"
    for needed in (
        f"{site}/pyspark/*",  # shipped by spark-submit as pyspark.zip
        f"{site}/__editable__*",  # points at a source tree no node has
        f"{site}/tfyarn/*",  # added as a real package instead
        f"{site}/tensorflow/include/*",
    ):
        assert needed in patterns
    assert not any("tensorflow/python" in p for p in patterns)


def test_env_fingerprint_is_stable_and_rejects_non_venvs(tmp_path: Path) -> None:
    assert envpack.env_fingerprint() == envpack.env_fingerprint()
    with pytest.raises(ConfigError, match="not a virtualenv"):
        envpack.env_fingerprint(tmp_path)
    with pytest.raises(ConfigError, match="not a virtualenv"):
        envpack.ensure_env_archive(tmp_path)


def test_cached_jars_are_used_offline_without_maven(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TFYARN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no mvn reachable
    with pytest.raises(YarnError, match=r"Maven \(mvn\) is needed"):
        maven.ensure_hadoop_jars("3.5.0")
    lib = maven.jar_dir("3.5.0")
    lib.mkdir(parents=True)
    (lib / ".tfyarn-complete").write_text(maven._pom_digest("3.5.0", services=False) + "\n")
    assert maven.ensure_hadoop_jars("3.5.0") == lib
    # A changed pom (another digest) means the cache is stale: fetch again.
    (lib / ".tfyarn-complete").write_text("0" * 16 + "\n")
    with pytest.raises(YarnError, match=r"Maven \(mvn\) is needed"):
        maven.ensure_hadoop_jars("3.5.0")


def test_services_jars_have_their_own_cache_and_version(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TFYARN_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("TFYARN_HADOOP_VERSION", raising=False)
    assert maven.hadoop_version() == "3.5.0"
    assert maven.hadoop_version(services=True) == maven.SERVICES_HADOOP_VERSION == "3.4.2"
    assert maven.jar_dir(services=True) == tmp_path / "hadoop-3.4.2-services" / "lib"
    assert maven._pom_digest("3.4.2", services=True) != maven._pom_digest("3.4.2")


def test_rm_web_url_comes_from_the_environment_or_yarn_site(tmp_path: Path) -> None:
    from tfyarn.service.client import rm_web_url

    assert rm_web_url({"TFYARN_RM_URL": "http://rm:8088/"}) == "http://rm:8088"
    (tmp_path / "yarn-site.xml").write_text(
        "<configuration><property><name>yarn.resourcemanager.webapp.address</name>"
        "<value>10.0.0.5:18088</value></property></configuration>"
    )
    assert rm_web_url({"HADOOP_CONF_DIR": str(tmp_path)}) == "http://10.0.0.5:18088"
    (tmp_path / "yarn-site.xml").write_text(
        "<configuration><property><name>yarn.resourcemanager.hostname</name>"
        "<value>rm1</value></property></configuration>"
    )
    assert rm_web_url({"HADOOP_CONF_DIR": str(tmp_path)}) == "http://rm1:8088"
    with pytest.raises(ConfigError, match=r"HADOOP_CONF_DIR is not set.*TFYARN_RM_URL"):
        rm_web_url({})
