"""Several "hosts" on one machine: network namespaces joined by a bridge, with Spark and YARN.

:class:`NetnsCluster` makes a switch namespace holding a Linux bridge and one namespace
per host, each linked to the bridge by a veth pair whose inner end is called ``tfy0`` in
every host (so ``interface="tfy0"`` names the cluster NIC on each, as on real nodes with
alike NICs). The driver's host runs a Spark standalone master and a YARN ResourceManager;
every other host runs a standalone worker and a YARN NodeManager, both bound to its own
address. Each NodeManager offers room for one executor (:data:`NM_MEMORY_MB`), so a job
of two executors gets one on each worker host, as a real queue spreads them. Nothing
touches the root namespace's network; everything is stopped and deleted on exit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyspark

from tfyarn.yarn.devcluster import DevYarn
from tfyarn.yarn.hadoop_conf import DEV_JVM_FLAGS, DevYarnSettings

SUBNET = "10.217.0"
NIC = "tfy0"
SPARK_CLASS = str(Path(pyspark.__file__).parent / "bin" / "spark-class")
#: What each NodeManager offers: one executor container (512 MiB heap and 1 GiB overhead
#: for its Python worker and role process, multihost_job.yarn_session) and not two. Memory
#: alone counts (the capacity scheduler's default calculator).
NM_MEMORY_MB = 2048


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


@dataclass
class NetnsCluster:
    """A driver host and ``workers`` worker hosts, each its own network namespace."""

    base: Path
    workers: int = 2
    tag: str = field(default_factory=lambda: f"{os.getpid() % 100000}")
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    node_managers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    made: list[str] = field(default_factory=list)

    @property
    def hosts(self) -> list[str]:
        """Namespace names: the driver's first, then the workers'."""
        return [f"tfm{self.tag}-d", *(f"tfm{self.tag}-w{i}" for i in range(self.workers))]

    def address(self, host: int) -> str:
        """The cluster address of host ``host`` (0: the driver)."""
        return f"{SUBNET}.{10 + host}"

    def address_index(self, address: str) -> int:
        """The host whose cluster address is ``address``."""
        return next(i for i in range(len(self.hosts)) if self.address(i) == address)

    def link(self, host: int, *, up: bool) -> None:
        """Take host ``host``'s cluster NIC down (a cut cable, a dead switch port) or up."""
        _ip("-n", self.hosts[host], "link", "set", NIC, "up" if up else "down")

    def link_all_up(self) -> None:
        """Every host's link up again (after a test that cut one)."""
        for i in range(len(self.hosts)):
            with contextlib.suppress(RuntimeError):
                self.link(i, up=True)

    @property
    def master_url(self) -> str:
        return f"spark://{self.address(0)}:7077"

    def netns(self, host: int, *cmd: str) -> list[str]:
        """``cmd`` run inside host ``host``'s namespace."""
        return ["ip", "netns", "exec", self.hosts[host], *cmd]

    @property
    def yarn_conf_dir(self) -> Path:
        """HADOOP_CONF_DIR of a YARN client on the driver's host (the RM's own conf)."""
        return self._yarn(0).settings.conf_dir

    def _yarn(self, host: int) -> DevYarn:
        """The YARN daemon of host ``host``: the RM on the driver's, a NodeManager elsewhere.

        Every node has its own folder and conf (the RM's address, its own ``nm_host``);
        daemons in different namespaces keep Hadoop's default ports. Container logs stay
        in each node's log dir (no aggregation), where the test reads the roles' lines.
        """
        return DevYarn(
            DevYarnSettings(
                base_dir=self.base / f"yarn-{host}",
                host=self.address(0),
                nm_host=self.address(host) if host else None,
                nm_memory_mb=NM_MEMORY_MB,
                nm_vcores=2,
                extra={"yarn.log-aggregation-enable": "false"},
            )
        )

    def container_logs(self) -> str:
        """Every YARN container's stderr on the worker hosts (the executors' and roles')."""
        return "\n".join(
            p.read_text(errors="replace")
            for host in range(1, len(self.hosts))
            for p in sorted(self._yarn(host).settings.nm_log_dir.glob("*/*/stderr"))
        )

    def env(self, host: int) -> dict[str, str]:
        """Environment of Spark processes on host ``host``: bound to its address."""
        env = dict(os.environ)
        env.update(
            SPARK_LOCAL_IP=self.address(host),
            PYSPARK_PYTHON=sys.executable,
            PYSPARK_DRIVER_PYTHON=sys.executable,
            SPARK_HOME=str(Path(pyspark.__file__).parent),
            # the master and workers: short-lived JVMs, as the dev YARN's daemons
            SPARK_DAEMON_JAVA_OPTS=" ".join(DEV_JVM_FLAGS),
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        )
        for key in ("HADOOP_CONF_DIR", "YARN_CONF_DIR", "SPARK_CONF_DIR"):
            env.pop(key, None)
        return env

    def __enter__(self) -> NetnsCluster:
        try:
            self._network()
            self._start_spark()
            self._start_yarn()
            self._wait_registered(timeout_s=120.0)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _network(self) -> None:
        switch = f"tfm{self.tag}-s"
        _ip("netns", "add", switch)
        self.made.append(switch)
        _ip("-n", switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", switch, "link", "set", "br0", "up")
        for i, ns in enumerate(self.hosts):
            _ip("netns", "add", ns)
            self.made.append(ns)
            outer, inner = f"tfm{self.tag}p{i}", f"tfm{self.tag}h{i}"
            _ip("link", "add", inner, "type", "veth", "peer", "name", outer)
            _ip("link", "set", inner, "netns", ns)
            _ip("link", "set", outer, "netns", switch)
            _ip("-n", switch, "link", "set", outer, "master", "br0", "up")
            _ip("-n", ns, "link", "set", inner, "name", NIC)
            _ip("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", NIC)
            _ip("-n", ns, "link", "set", NIC, "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def _start(self, host: int, name: str, cmd: list[str], env: dict[str, str]) -> None:
        log = open(self.base / f"{name}.log", "wb")  # noqa: SIM115 - kept open by the daemon
        self.procs.append(
            subprocess.Popen(
                self.netns(host, *cmd),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        )

    def _start_spark(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        master = "org.apache.spark.deploy.master.Master"
        self._start(0, "master", [SPARK_CLASS, master, "--host", self.address(0), "--port",
                                  "7077", "--webui-port", "8080"], self.env(0))  # fmt: skip
        for i in range(1, len(self.hosts)):
            work = self.base / f"work-{i}"
            self._start(i, f"worker-{i}", [SPARK_CLASS, "org.apache.spark.deploy.worker.Worker",
                        "--host", self.address(i), "--cores", "1", "--memory", "2g",
                        "--webui-port", "8081", "--work-dir", str(work),
                        self.master_url], self.env(i))  # fmt: skip

    def _start_yarn(self) -> None:
        """The RM on the driver's host, a NodeManager on each worker host (own conf each)."""
        for host in range(len(self.hosts)):
            node = self._yarn(host)
            node.prepare()
            name = "nodemanager" if host else "resourcemanager"
            self._start(host, f"{name}-{host}", node.daemon_command(name), node.daemon_env())
            if host:
                self.node_managers.append(self.procs[-1])

    def _wait_registered(self, timeout_s: float) -> None:
        """Until the Spark master and the RM both log every worker host (bounded)."""
        deadline = time.monotonic() + timeout_s
        logs = {"Registering worker": self.base / "master.log",
                "registered with capability": self.base / "resourcemanager-0.log"}  # fmt: skip
        while time.monotonic() < deadline:
            texts = {
                k: p.read_text(errors="replace") if p.exists() else "" for k, p in logs.items()
            }
            if all(text.count(key) >= self.workers for key, text in texts.items()):
                return
            dead = [p.args for p in self.procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"a daemon exited: {dead}\n{self.logs()}")
            time.sleep(0.5)
        raise RuntimeError(f"the worker hosts did not register in {timeout_s:.0f} s\n{self.logs()}")

    def logs(self, lines: int = 15) -> str:
        """The last lines of every daemon's log."""
        out = []
        for path in sorted(self.base.glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name} ---\n" + "\n".join(tail))
        return "\n".join(out)

    def __exit__(self, *exc: object) -> None:
        # NodeManagers get SIGKILL: their graceful stop waits 18 s (for the finished
        # application's scheduled log deletion, then for their container monitor), and
        # they hold nothing worth it; what runs of their containers is killed below.
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                sig = signal.SIGKILL if proc in self.node_managers else signal.SIGTERM
                os.killpg(proc.pid, sig)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for host in range(1, len(self.hosts)):
            self._yarn(host).kill_leftover_containers()
        for ns in reversed(self.made):
            with contextlib.suppress(RuntimeError):
                _ip("netns", "del", ns)
        self.made.clear()
