"""Rendering of the dev YARN's Hadoop configuration (pure functions)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tfyarn.errors import ConfigError
from tfyarn.yarn import hadoop_conf
from tfyarn.yarn.hadoop_conf import DEFAULT_PORTS, HDFS_PORT_NAMES, PORT_NAMES, DevYarnSettings


def _parse(xml: str) -> dict[str, str]:
    root = ET.fromstring(xml)
    return {p.findtext("name"): p.findtext("value") for p in root.iter("property")}


def test_site_xml_round_trips_and_escapes() -> None:
    props = {"b.key": "x<y&z", "a.key": "1"}
    xml = hadoop_conf.render_site_xml(props)
    assert _parse(xml) == props
    assert xml.index("a.key") < xml.index("b.key")  # sorted: stable output


def test_yarn_site_binds_everything_to_the_host_and_ports(tmp_path: Path) -> None:
    ports = {name: 20000 + i for i, name in enumerate(PORT_NAMES)}
    s = DevYarnSettings(base_dir=tmp_path, ports=ports)
    site = hadoop_conf.yarn_site(s)
    assert site["yarn.resourcemanager.address"] == f"127.0.0.1:{ports['rm']}"
    assert site["yarn.resourcemanager.webapp.address"] == f"127.0.0.1:{ports['rm_webapp']}"
    assert site["yarn.resourcemanager.scheduler.address"] == f"127.0.0.1:{ports['rm_scheduler']}"
    assert (
        site["yarn.resourcemanager.resource-tracker.address"] == f"127.0.0.1:{ports['rm_tracker']}"
    )
    assert site["yarn.nodemanager.address"] == f"127.0.0.1:{ports['nm']}"
    assert site["yarn.nodemanager.bind-host"] == "127.0.0.1"
    assert site["yarn.nodemanager.local-dirs"] == str(tmp_path / "nm-local")
    assert site["yarn.nodemanager.remote-app-log-dir"] == str(tmp_path / "app-logs")
    assert site["yarn.log-aggregation-enable"] == "true"


def test_a_node_of_a_multi_host_yarn_binds_its_own_address_and_registers_with_the_rm(
    tmp_path: Path,
) -> None:
    s = DevYarnSettings(base_dir=tmp_path, host="10.217.0.10", nm_host="10.217.0.11")
    site = hadoop_conf.yarn_site(s)
    # Where the node registers and where clients find the RM: the RM's host.
    for key in ("address", "resource-tracker.address", "scheduler.address", "webapp.address"):
        assert site[f"yarn.resourcemanager.{key}"].startswith("10.217.0.10:"), key
    assert site["yarn.resourcemanager.hostname"] == "10.217.0.10"
    # What the node binds and advertises (YARN hands this host to Spark's executors).
    assert site["yarn.nodemanager.hostname"] == site["yarn.nodemanager.bind-host"] == "10.217.0.11"
    for key in ("address", "localizer.address", "webapp.address", "collector-service.address"):
        assert site[f"yarn.nodemanager.{key}"].startswith("10.217.0.11:"), key
    assert s.node_host == "10.217.0.11" and s.rm_web_url == "http://10.217.0.10:8088"
    one_host = hadoop_conf.yarn_site(DevYarnSettings(base_dir=tmp_path, host="10.217.0.10"))
    assert one_host["yarn.nodemanager.address"] == "10.217.0.10:8041"


def test_defaults_fit_the_reference_machine_and_a_four_role_job(tmp_path: Path) -> None:
    s = DevYarnSettings(base_dir=tmp_path)
    site = hadoop_conf.yarn_site(s)
    memory = int(site["yarn.nodemanager.resource.memory-mb"])
    # 4 executors of 512m heap + 1536m overhead, plus a 1g + 1g cluster-mode driver
    assert memory >= 4 * (512 + 1536) + (1024 + 1024)
    assert memory <= 12 * 1024  # a 24 GiB box shared with the rest of the test suite
    assert int(site["yarn.nodemanager.resource.cpu-vcores"]) >= 5  # 4 roles + the AM
    assert site["yarn.nodemanager.vmem-check-enabled"] == "false"
    assert site["yarn.nodemanager.pmem-check-enabled"] == "true"
    assert int(site["yarn.scheduler.minimum-allocation-mb"]) <= 256
    assert s.port("rm_webapp") == DEFAULT_PORTS["rm_webapp"] == 8088


def test_core_site_is_the_local_file_system_with_a_viewfs_alias(tmp_path: Path) -> None:
    core = hadoop_conf.core_site(DevYarnSettings(base_dir=tmp_path))
    assert core["fs.defaultFS"] == "file:///"
    table = hadoop_conf.VIEWFS_MOUNT_TABLE
    assert core[f"fs.viewfs.mounttable.{table}.linkFallback"] == "file:///"


def test_gpus_declare_the_yarn_resource_type_only_when_offered(tmp_path: Path) -> None:
    none = DevYarnSettings(base_dir=tmp_path)
    assert "resource-types.xml" not in hadoop_conf.conf_files(none)
    assert "yarn.nodemanager.resource-type.yarn.io/gpu" not in hadoop_conf.yarn_site(none)
    two = DevYarnSettings(base_dir=tmp_path, nm_gpus=2)
    files = hadoop_conf.conf_files(two)
    assert _parse(files["resource-types.xml"]) == {"yarn.resource-types": "yarn.io/gpu"}
    site = _parse(files["yarn-site.xml"])
    assert site["yarn.nodemanager.resource-type.yarn.io/gpu"] == "2"
    # Memory-only scheduling would ignore GPU requests.
    assert (
        "DominantResourceCalculator"
        in _parse(files["capacity-scheduler.xml"])["yarn.scheduler.capacity.resource-calculator"]
    )


def test_extra_properties_win(tmp_path: Path) -> None:
    s = DevYarnSettings(base_dir=tmp_path, extra={"yarn.nodemanager.pmem-check-enabled": "false"})
    assert hadoop_conf.yarn_site(s)["yarn.nodemanager.pmem-check-enabled"] == "false"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ports": {"rm": 0}}, "not in 1..65535"),
        ({"ports": {"bogus": 1234}}, "unknown dev YARN port"),
        ({"nm_memory_mb": 64}, "no container could ever start"),
        ({"min_allocation_mb": 8192}, "no container could ever start|must not exceed"),
        ({"nm_vcores": 0}, "at least 1"),
        ({"nm_gpus": -1}, ">= 0"),
    ],
)
def test_bad_settings_are_rejected_with_the_reason(
    tmp_path: Path, kwargs: dict, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        DevYarnSettings(base_dir=tmp_path, **kwargs)


def test_services_add_the_api_the_registry_zookeeper_and_placement(tmp_path: Path) -> None:
    plain = DevYarnSettings(base_dir=tmp_path)
    assert "zookeeper" not in plain.port_names
    assert "yarn.webapp.api-service.enable" not in hadoop_conf.yarn_site(plain)
    assert "zoo.cfg" not in hadoop_conf.conf_files(plain)
    s = DevYarnSettings(base_dir=tmp_path, services=True, ports={"zookeeper": 21810})
    assert s.port_names == tuple(n for n in PORT_NAMES if n not in HDFS_PORT_NAMES)
    site = hadoop_conf.yarn_site(s)
    assert site["yarn.webapp.api-service.enable"] == "true"
    assert site["yarn.service.base.path"] == str(tmp_path / "services")
    assert site["hadoop.registry.zk.quorum"] == "127.0.0.1:21810"
    # The default placement handler refuses the ps component's anti-affinity constraint.
    assert site["yarn.resourcemanager.placement-constraints.handler"] == "scheduler"
    zoo = hadoop_conf.conf_files(s)["zoo.cfg"]
    assert "clientPort=21810" in zoo and "clientPortAddress=127.0.0.1" in zoo
    assert "admin.enableServer=false" in zoo  # else a web server on 0.0.0.0:8080
    assert f"dataDir={tmp_path / 'zookeeper'}" in zoo


def test_hdfs_is_the_cluster_file_system_bound_to_the_host(tmp_path: Path) -> None:
    plain = DevYarnSettings(base_dir=tmp_path)
    assert not set(HDFS_PORT_NAMES) & set(plain.port_names)
    assert hadoop_conf.core_site(plain)["fs.defaultFS"] == "file:///"
    assert "hdfs-site.xml" not in hadoop_conf.conf_files(plain)
    ports = {name: 30000 + i for i, name in enumerate(PORT_NAMES)}
    s = DevYarnSettings(base_dir=tmp_path, hdfs=True, services=True, ports=ports)
    assert s.port_names == PORT_NAMES
    files = hadoop_conf.conf_files(s)
    core = _parse(files["core-site.xml"])
    assert core["fs.defaultFS"] == f"hdfs://127.0.0.1:{ports['namenode']}" == s.default_fs
    hdfs = _parse(files["hdfs-site.xml"])
    assert hdfs["dfs.namenode.rpc-address"] == f"127.0.0.1:{ports['namenode']}"
    assert hdfs["dfs.namenode.http-address"] == f"127.0.0.1:{ports['namenode_http']}"
    assert s.webhdfs_url == f"http://127.0.0.1:{ports['namenode_http']}"
    for key in ("dfs.datanode.address", "dfs.datanode.http.address", "dfs.datanode.ipc.address"):
        assert hdfs[key].startswith("127.0.0.1:"), key
    # WebHDFS redirects clients to the DataNode under the name it registers with.
    assert hdfs["dfs.datanode.hostname"] == "127.0.0.1"
    assert hdfs["dfs.replication"] == "1"
    assert hdfs["dfs.namenode.name.dir"] == f"file://{tmp_path}/hdfs/name"
    assert hdfs["dfs.datanode.data.dir"] == f"file://{tmp_path}/hdfs/data"
    assert "dfs.permissions.enabled" not in hdfs  # on, as on a production cluster


def test_site_property_reads_a_rendered_file(tmp_path: Path) -> None:
    (tmp_path / "hdfs-site.xml").write_text(
        hadoop_conf.render_site_xml({"dfs.namenode.http-address": "nn:9870"})
    )
    assert hadoop_conf.site_property(tmp_path, "dfs.namenode.http-address", "hdfs-site.xml") == (
        "nn:9870"
    )
    assert hadoop_conf.site_property(tmp_path, "missing", "hdfs-site.xml") is None
    assert hadoop_conf.site_property(tmp_path, "x", "absent.xml") is None
