"""Hadoop configuration of the dev YARN, rendered from settings (pure functions).

The dev YARN is a pseudo-distributed YARN on one host: one ResourceManager and one
NodeManager, each a plain ``java`` process. Without HDFS they share the local file system
(``fs.defaultFS`` is ``file:///``, which works because the client, the RM and the NM all
see the same disk); with ``hdfs=True`` a NameNode and a DataNode run beside them and
``fs.defaultFS`` is that HDFS, as on a production cluster. Everything here is a pure
function of :class:`DevYarnSettings`, so the rendered files are unit-tested without
starting anything.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

from tfyarn.errors import ConfigError

__all__ = [
    "DEV_JVM_FLAGS",
    "HDFS_PORT_NAMES",
    "PORT_NAMES",
    "VIEWFS_MOUNT_TABLE",
    "DevYarnSettings",
    "core_site",
    "hdfs_site",
    "render_site_xml",
    "resource_types_xml",
    "site_property",
    "yarn_site",
]

#: The ports one dev YARN listens on, by role: on ``settings.host``, the NodeManager's (nm*) on
#: ``settings.node_host``.
PORT_NAMES: tuple[str, ...] = (
    "rm",  # client <-> RM (yarn.resourcemanager.address)
    "rm_scheduler",  # AM <-> RM
    "rm_tracker",  # NM <-> RM
    "rm_admin",
    "rm_webapp",  # REST API and UI
    "nm",  # container manager
    "nm_localizer",
    "nm_webapp",
    "nm_collector",
    "zookeeper",  # the YARN registry's ZooKeeper (only with ``services=True``)
    "namenode",  # HDFS client <-> NameNode RPC (only with ``hdfs=True``, as the rest below)
    "namenode_http",  # NameNode web UI and WebHDFS
    "datanode",  # block data transfer
    "datanode_http",  # DataNode web, where WebHDFS redirects reads and writes
    "datanode_ipc",
)

#: The ports that only a cluster with HDFS listens on.
HDFS_PORT_NAMES: tuple[str, ...] = (
    "namenode",
    "namenode_http",
    "datanode",
    "datanode_http",
    "datanode_ipc",
)

#: JVM flags of the dev YARN's daemons, of its NodeManager's resource localizers and of
#: its containers (and of the tests' Spark JVMs: tests/conftest.py).
#: C1 only and the serial collector: quick start-up and little JIT CPU on a small box
#: shared with the tests. vfork: without Hadoop's native library (not on Maven Central)
#: the localizer forks one ``chmod`` per file and directory it unpacks (~24k for the
#: Python environment archive); the JDK's default posix_spawn goes through its
#: ``jspawnhelper``, an extra exec per command.
DEV_JVM_FLAGS: tuple[str, ...] = (
    "-XX:TieredStopAtLevel=1",
    "-XX:+UseSerialGC",
    "-Djdk.lang.Process.launchMechanism=VFORK",
)

#: Authority of the viewfs:// alias of the local file system (see :func:`core_site`).
VIEWFS_MOUNT_TABLE = "tfyarn"

#: Ports used when none are given: Hadoop's own defaults, so the usual URLs work.
DEFAULT_PORTS: dict[str, int] = {
    "rm": 8032,
    "rm_scheduler": 8030,
    "rm_tracker": 8031,
    "rm_admin": 8033,
    "rm_webapp": 8088,
    "nm": 8041,
    "nm_localizer": 8040,
    "nm_webapp": 8042,
    "nm_collector": 8048,
    "zookeeper": 2181,
    "namenode": 8020,
    "namenode_http": 9870,
    "datanode": 9866,
    "datanode_http": 9864,
    "datanode_ipc": 9867,
}


@dataclass(frozen=True)
class DevYarnSettings:
    """What the dev YARN looks like: where it listens, what it offers, where it writes.

    The defaults fit the reference machine (2 cores, 24 GiB) running one tfyarn job of
    chief + 2 workers + 1 ps next to the rest of the test suite: the NodeManager offers
    10 GiB and 8 virtual cores (YARN vcores are a scheduling quota, not pinned cores;
    five 1-vcore containers must fit on a 2-core host).

    Parameters
    ----------
    base_dir : Path
        Root of everything the cluster writes: ``conf/``, ``logs/``, NM local dirs,
        aggregated logs, the Spark staging dir.
    host : str
        Address every daemon binds to and advertises (the NodeManager: see ``nm_host``).
    ports : Mapping[str, int]
        One port per name in :data:`PORT_NAMES`; missing names take :data:`DEFAULT_PORTS`.
    nm_memory_mb : int
        Memory the NodeManager offers to containers.
    nm_vcores : int
        Virtual cores the NodeManager offers.
    min_allocation_mb, max_allocation_mb : int
        Scheduler allocation bounds; container requests are rounded up to a multiple of
        the minimum, so it is kept small.
    max_allocation_vcores : int
        Largest vcore request one container may make.
    nm_gpus : int
        ``yarn.io/gpu`` the NodeManager advertises. 0 (the default) leaves the resource type
        undeclared, as on a cluster without GPUs.
    pmem_check : bool
        Whether the NM kills containers that exceed their memory (as production clusters
        do; it is what makes ``spark.executor.memoryOverhead`` matter for TensorFlow).
    services : bool
        Run the YARN Services API (``/app/v1/services`` in the RM web app) and a ZooKeeper
        for the YARN registry the service ApplicationMaster writes to. Needs the Hadoop
        jars with the services profile (:data:`~tfyarn.yarn.maven.SERVICES_HADOOP_VERSION`).
    service_am_memory_mb : int
        Memory of each service's ApplicationMaster container.
    hdfs : bool
        Run HDFS (one NameNode, one DataNode, replication 1) and make it the cluster file
        system (``fs.defaultFS``): aggregated logs, the services' base path and every
        path without a scheme then live on HDFS.
    extra : Mapping[str, str]
        Further yarn-site properties, applied last.
    nm_hidden : tuple of str
        Paths hidden from the NodeManager and every container it launches (a private
        mount namespace, :mod:`tfyarn.yarn.hide`; needs root): with the host's Python
        installation (:func:`~tfyarn.yarn.devcluster.hide_host_python`) the NodeManager
        is a node without Python, whose jobs run the archive's own interpreter.
    nm_kept : tuple of str
        Paths inside ``nm_hidden`` that stay visible (Spark's jars, which the dev YARN
        uses in place).
    nm_host : str or None
        Address the NodeManager binds to and advertises; None: ``host``. A dev YARN over
        several hosts (tests/multihost: network namespaces) renders one conf dir per node:
        ``host`` the ResourceManager's address, where the node registers, and ``nm_host``
        the node's own, which YARN gives Spark as its executors' host.
    """

    base_dir: Path
    host: str = "127.0.0.1"
    ports: Mapping[str, int] = field(default_factory=dict)
    nm_memory_mb: int = 10240
    nm_vcores: int = 8
    min_allocation_mb: int = 128
    max_allocation_mb: int = 4096
    max_allocation_vcores: int = 4
    nm_gpus: int = 0
    pmem_check: bool = True
    services: bool = False
    service_am_memory_mb: int = 512
    hdfs: bool = False
    extra: Mapping[str, str] = field(default_factory=dict)
    nm_hidden: tuple[str, ...] = ()
    nm_kept: tuple[str, ...] = ()
    nm_host: str | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.ports) - set(PORT_NAMES))
        if unknown:
            raise ConfigError(f"unknown dev YARN port name(s) {unknown}; use {list(PORT_NAMES)}")
        for name, port in self.ports.items():
            if not 0 < int(port) < 65536:
                raise ConfigError(f"dev YARN port {name}={port} is not in 1..65535")
        if self.nm_memory_mb < self.min_allocation_mb:
            raise ConfigError(
                f"nm_memory_mb={self.nm_memory_mb} is below min_allocation_mb="
                f"{self.min_allocation_mb}: no container could ever start"
            )
        if not self.min_allocation_mb <= self.max_allocation_mb:
            raise ConfigError("min_allocation_mb must not exceed max_allocation_mb")
        if self.nm_vcores < 1 or self.max_allocation_vcores < 1:
            raise ConfigError("nm_vcores and max_allocation_vcores must be at least 1")
        if self.nm_gpus < 0:
            raise ConfigError(f"nm_gpus={self.nm_gpus} must be >= 0")

    def port(self, name: str) -> int:
        """The port for ``name`` (one of :data:`PORT_NAMES`)."""
        if name not in PORT_NAMES:
            raise ConfigError(f"unknown dev YARN port name {name!r}; use {list(PORT_NAMES)}")
        return int(self.ports.get(name, DEFAULT_PORTS[name]))

    @property
    def port_names(self) -> tuple[str, ...]:
        """The ports this cluster listens on (ZooKeeper only with services, HDFS's with hdfs)."""
        return tuple(
            n
            for n in PORT_NAMES
            if (self.services or n != "zookeeper") and (self.hdfs or n not in HDFS_PORT_NAMES)
        )

    def address(self, name: str) -> str:
        """``host:port`` for the port ``name`` (a NodeManager's on :attr:`node_host`)."""
        host = self.node_host if name.startswith("nm_") or name == "nm" else self.host
        return f"{host}:{self.port(name)}"

    @property
    def node_host(self) -> str:
        """The NodeManager's address: ``nm_host``, else ``host``."""
        return self.nm_host or self.host

    @property
    def conf_dir(self) -> Path:
        """The HADOOP_CONF_DIR clients export."""
        return self.base_dir / "conf"

    @property
    def log_dir(self) -> Path:
        """Where the daemons' own logs go."""
        return self.base_dir / "logs"

    @property
    def nm_local_dir(self) -> Path:
        """NodeManager local dir: localized resources and container working dirs."""
        return self.base_dir / "nm-local"

    @property
    def nm_log_dir(self) -> Path:
        """Container logs while an application runs."""
        return self.base_dir / "nm-logs"

    @property
    def remote_log_dir(self) -> Path:
        """Aggregated container logs after an application ends (read by ``yarn logs``)."""
        return self.base_dir / "app-logs"

    @property
    def zookeeper_dir(self) -> Path:
        """ZooKeeper's data dir (with services)."""
        return self.base_dir / "zookeeper"

    @property
    def services_dir(self) -> Path:
        """``yarn.service.base.path``: service definitions and the AM's jars (with services)."""
        return self.base_dir / "services"

    @property
    def hdfs_name_dir(self) -> Path:
        """The NameNode's metadata (fsimage, edits), with hdfs."""
        return self.base_dir / "hdfs" / "name"

    @property
    def hdfs_data_dir(self) -> Path:
        """The DataNode's block storage, with hdfs."""
        return self.base_dir / "hdfs" / "data"

    @property
    def default_fs(self) -> str:
        """``fs.defaultFS``: ``hdfs://host:port`` with hdfs, else ``file:///``."""
        return f"hdfs://{self.address('namenode')}" if self.hdfs else "file:///"

    @property
    def webhdfs_url(self) -> str:
        """Base URL of the NameNode's web app (WebHDFS under ``/webhdfs/v1``), with hdfs."""
        return f"http://{self.address('namenode_http')}"

    @property
    def staging_dir(self) -> Path:
        """Spark's ``spark.yarn.stagingDir`` and YARN's AM staging dir."""
        return self.base_dir / "staging"

    @property
    def rm_web_url(self) -> str:
        """Base URL of the RM web app (REST API under ``/ws/v1/cluster``)."""
        return f"http://{self.address('rm_webapp')}"


def render_site_xml(properties: Mapping[str, str]) -> str:
    """Render a Hadoop ``*-site.xml`` document from ``name -> value``.

    Properties are written in sorted order so the output is stable (diffable, cacheable).
    """
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        "<!-- generated by tfyarn -->",
        "<configuration>",
    ]
    for name in sorted(properties):
        value = properties[name]
        lines.append(
            f"  <property><name>{escape(name)}</name><value>{escape(str(value))}</value></property>"
        )
    lines.append("</configuration>")
    return "\n".join(lines) + "\n"


def site_property(conf_dir: Path, name: str, file: str = "yarn-site.xml") -> str | None:
    """The value of ``name`` in ``conf_dir/file`` (a Hadoop ``*-site.xml``), or None."""
    path = conf_dir / file
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    for prop in root.iter("property"):
        if (prop.findtext("name") or "").strip() == name:
            return (prop.findtext("value") or "").strip()
    return None


def core_site(settings: DevYarnSettings) -> dict[str, str]:
    """core-site properties: HDFS (with ``hdfs``) or the local file system is the cluster's."""
    return {
        "fs.defaultFS": settings.default_fs,
        "hadoop.tmp.dir": str(settings.base_dir / "tmp"),
        # Simple auth as the submitting user; no Kerberos on a dev cluster.
        "hadoop.security.authentication": "simple",
        # Large buffers: the NodeManager localizes the ~2 GB Python environment archive
        # through this (the default is 4 KiB).
        "io.file.buffer.size": "1048576",
        # viewfs://tfyarn/<path> is the local file system under another name. Spark copies
        # every file:// resource into the staging dir, so YARN sees a new path per
        # application and localizes the environment archive again each time (minutes:
        # without Hadoop's native library the NM forks one chmod per unpacked file).
        # Staging dir and archive both on viewfs:// are used in place, and the NM's
        # cache keeps the unpacked archive across applications.
        f"fs.viewfs.mounttable.{VIEWFS_MOUNT_TABLE}.linkFallback": "file:///",
    }


def hdfs_site(settings: DevYarnSettings) -> dict[str, str]:
    """hdfs-site properties of the one-NameNode, one-DataNode HDFS (with ``hdfs``).

    Permissions stay on, as on a production cluster: the user who starts the NameNode is
    HDFS's superuser, and ``DevYarn.up`` makes ``/user/<name>`` and a world-writable
    ``/tmp`` for everybody else.
    """
    s = settings
    return {
        "dfs.namenode.rpc-address": s.address("namenode"),
        "dfs.namenode.rpc-bind-host": s.host,
        "dfs.namenode.http-address": s.address("namenode_http"),
        "dfs.namenode.http-bind-host": s.host,
        "dfs.namenode.servicerpc-bind-host": s.host,
        "dfs.datanode.address": s.address("datanode"),
        "dfs.datanode.http.address": s.address("datanode_http"),
        "dfs.datanode.ipc.address": s.address("datanode_ipc"),
        # The DataNode registers under this name: WebHDFS redirects clients to it.
        "dfs.datanode.hostname": s.host,
        "dfs.namenode.name.dir": f"file://{s.hdfs_name_dir}",
        "dfs.datanode.data.dir": f"file://{s.hdfs_data_dir}",
        "dfs.replication": "1",
        "dfs.webhdfs.enabled": "true",
        # One DataNode: leave safe mode at once instead of 30 s after the block threshold.
        "dfs.namenode.safemode.extension": "0",
        # Register and report quickly (defaults: 3 s heartbeats, 6 h block reports).
        "dfs.heartbeat.interval": "1",
        "dfs.namenode.heartbeat.recheck-interval": "15000",
        # Few handler threads on a 2-core box; a dev NameNode serves one client at a time.
        "dfs.namenode.handler.count": "4",
        "dfs.namenode.service.handler.count": "2",
        "dfs.datanode.handler.count": "3",
        # Shared dev disks fill up: refuse writes only when almost nothing is left.
        "dfs.namenode.resource.du.reserved": str(256 * 2**20),
        "dfs.datanode.du.reserved": str(256 * 2**20),
    }


def resource_types_xml(settings: DevYarnSettings) -> dict[str, str]:
    """resource-types properties: declares ``yarn.io/gpu`` only when GPUs are offered."""
    if settings.nm_gpus <= 0:
        return {}
    return {"yarn.resource-types": "yarn.io/gpu"}


def yarn_site(settings: DevYarnSettings) -> dict[str, str]:
    """yarn-site properties of the dev YARN."""
    s = settings
    props: dict[str, str] = {
        "yarn.resourcemanager.hostname": s.host,
        "yarn.resourcemanager.bind-host": s.host,
        "yarn.resourcemanager.address": s.address("rm"),
        "yarn.resourcemanager.scheduler.address": s.address("rm_scheduler"),
        "yarn.resourcemanager.resource-tracker.address": s.address("rm_tracker"),
        "yarn.resourcemanager.admin.address": s.address("rm_admin"),
        "yarn.resourcemanager.webapp.address": s.address("rm_webapp"),
        "yarn.nodemanager.hostname": s.node_host,
        "yarn.nodemanager.bind-host": s.node_host,
        "yarn.nodemanager.address": s.address("nm"),
        "yarn.nodemanager.localizer.address": s.address("nm_localizer"),
        "yarn.nodemanager.webapp.address": s.address("nm_webapp"),
        "yarn.nodemanager.collector-service.address": s.address("nm_collector"),
        # What the one node offers.
        "yarn.nodemanager.resource.memory-mb": str(s.nm_memory_mb),
        "yarn.nodemanager.resource.cpu-vcores": str(s.nm_vcores),
        "yarn.nodemanager.resource.detect-hardware-capabilities": "false",
        "yarn.scheduler.minimum-allocation-mb": str(s.min_allocation_mb),
        "yarn.scheduler.maximum-allocation-mb": str(s.max_allocation_mb),
        "yarn.scheduler.minimum-allocation-vcores": "1",
        "yarn.scheduler.maximum-allocation-vcores": str(s.max_allocation_vcores),
        # A job's AM plus its executors must all fit: let the AM use most of the queue.
        "yarn.scheduler.capacity.maximum-am-resource-percent": "0.5",
        "yarn.nodemanager.pmem-check-enabled": str(s.pmem_check).lower(),
        # Virtual memory is meaningless for JVMs and TensorFlow (huge reserved mappings).
        "yarn.nodemanager.vmem-check-enabled": "false",
        # Shared dev disks fill up; an 'unhealthy' NM would silently stop taking containers.
        "yarn.nodemanager.disk-health-checker.max-disk-utilization-per-disk-percentage": "99.0",
        "yarn.nodemanager.disk-health-checker.min-free-space-per-disk-mb": "512",
        "yarn.nodemanager.local-dirs": str(s.nm_local_dir),
        "yarn.nodemanager.log-dirs": str(s.nm_log_dir),
        # Aggregated logs on the (local) cluster file system: `yarn logs` / `tfyarn logs`.
        "yarn.log-aggregation-enable": "true",
        "yarn.nodemanager.remote-app-log-dir": str(s.remote_log_dir),
        "yarn.log-aggregation.retain-seconds": "86400",
        "yarn.nodemanager.delete.debug-delay-sec": "0",
        # The JVM that localises an application's private resources (the env archive).
        "yarn.nodemanager.container-localizer.java.opts": " ".join(("-Xmx256m", *DEV_JVM_FLAGS)),
        "yarn.app.mapreduce.am.staging-dir": str(s.staging_dir),
        # The containers' JVMs (Spark's AM, executors, a cluster-mode driver) are
        # short-lived on a small box too: the daemons' flags, through the environment
        # (each JVM notes "Picked up JAVA_TOOL_OPTIONS" on its stderr).
        "yarn.nodemanager.admin-env": (
            "MALLOC_ARENA_MAX=$MALLOC_ARENA_MAX,JAVA_TOOL_OPTIONS=" + " ".join(DEV_JVM_FLAGS)
        ),
        # Containers see the env vars the client expects (JAVA_HOME, the Python path).
        "yarn.nodemanager.env-whitelist": (
            "JAVA_HOME,HADOOP_COMMON_HOME,HADOOP_HDFS_HOME,HADOOP_CONF_DIR,"
            "CLASSPATH_PREPEND_DISTCACHE,HADOOP_YARN_HOME,HADOOP_HOME,PATH,LANG,TZ"
        ),
        # Killed/finished containers go quickly: a killed app must free its TF roles fast.
        "yarn.nodemanager.sleep-delay-before-sigkill.ms": "2000",
        "yarn.resourcemanager.recovery.enabled": "false",
        "yarn.nodemanager.recovery.enabled": "false",
        "yarn.timeline-service.enabled": "false",
        # Faster heartbeats: a one-node cluster for tests should react in well under a second.
        "yarn.resourcemanager.nodemanagers.heartbeat-interval-ms": "500",
        "yarn.nodemanager.health-checker.interval-ms": "60000",
        "yarn.resourcemanager.am.max-attempts": "1",
    }
    if s.nm_gpus > 0:
        # A countable resource: the NM advertises it; no isolation plugin on a dev box.
        props["yarn.nodemanager.resource-type.yarn.io/gpu"] = str(s.nm_gpus)
        props["yarn.scheduler.capacity.resource-calculator"] = (
            "org.apache.hadoop.yarn.util.resource.DominantResourceCalculator"
        )
    if s.services:
        props.update(services_site(s))
    props.update({k: str(v) for k, v in s.extra.items()})
    return props


def services_site(settings: DevYarnSettings) -> dict[str, str]:
    """yarn-site properties of the YARN Services API and the service AM."""
    s = settings
    return {
        # The REST API (/app/v1/services) inside the RM web app.
        "yarn.webapp.api-service.enable": "true",
        # Where the API server's ServiceClient keeps service definitions and the AM's jars:
        # the default (/user/<name>/.yarn on fs.defaultFS) is not writable on file:///.
        "yarn.service.base.path": str(s.services_dir),
        # The YARN registry (service records of the AM and its containers) in ZooKeeper.
        "hadoop.registry.zk.quorum": s.address("zookeeper"),
        "hadoop.registry.zk.root": "/registry",
        "yarn.service.am-resource.memory": str(s.service_am_memory_mb),
        # Anti-affinity placement of ps containers: the capacity scheduler handles
        # placement constraints itself (the default handler rejects them).
        "yarn.resourcemanager.placement-constraints.handler": "scheduler",
        # YARN otherwise waits 30 s between a container's exit and its relaunch.
        "yarn.service.container-failure.retry-interval-ms": "2000",
        # A readiness check probes every 6 s by default; tests should see READY sooner.
        "yarn.service.readiness-check-interval.seconds": "2",
    }


def zookeeper_cfg(settings: DevYarnSettings) -> str:
    """zoo.cfg of the registry's ZooKeeper: one server on ``settings.host`` only."""
    s = settings
    return "\n".join(
        [
            "# generated by tfyarn: the YARN registry's ZooKeeper of the dev YARN",
            "tickTime=2000",
            f"dataDir={s.zookeeper_dir}",
            f"clientPort={s.port('zookeeper')}",
            f"clientPortAddress={s.host}",
            # Its admin web server would take port 8080 on every interface.
            "admin.enableServer=false",
            "maxClientCnxns=100",
            "",
        ]
    )


def capacity_scheduler(settings: DevYarnSettings) -> dict[str, str]:
    """capacity-scheduler properties: one ``default`` queue with the whole cluster."""
    props = {
        "yarn.scheduler.capacity.root.queues": "default",
        "yarn.scheduler.capacity.root.default.capacity": "100",
        "yarn.scheduler.capacity.root.default.maximum-capacity": "100",
        "yarn.scheduler.capacity.root.default.state": "RUNNING",
        "yarn.scheduler.capacity.maximum-am-resource-percent": "0.5",
        "yarn.scheduler.capacity.root.default.acl_submit_applications": "*",
        "yarn.scheduler.capacity.root.default.acl_administer_queue": "*",
    }
    if settings.nm_gpus > 0:
        props["yarn.scheduler.capacity.resource-calculator"] = (
            "org.apache.hadoop.yarn.util.resource.DominantResourceCalculator"
        )
    return props


def conf_files(settings: DevYarnSettings) -> dict[str, str]:
    """Every file of HADOOP_CONF_DIR, ``file name -> XML text``."""
    files = {
        "core-site.xml": render_site_xml(core_site(settings)),
        "yarn-site.xml": render_site_xml(yarn_site(settings)),
        "capacity-scheduler.xml": render_site_xml(capacity_scheduler(settings)),
    }
    types = resource_types_xml(settings)
    if types:
        files["resource-types.xml"] = render_site_xml(types)
    if settings.services:
        files["zoo.cfg"] = zookeeper_cfg(settings)
    if settings.hdfs:
        files["hdfs-site.xml"] = render_site_xml(hdfs_site(settings))
    return files
