"""Several "hosts" on one machine: network namespaces joined by a bridge, with Spark.

:class:`NetnsCluster` makes a switch namespace holding a Linux bridge and one namespace
per host, each linked to the bridge by a veth pair whose inner end is called ``tfy0`` in
every host (so ``interface="tfy0"`` names the cluster NIC on each, as on real nodes with
alike NICs). The driver's host runs a Spark standalone master; every other host runs a
standalone worker bound to its own address. Nothing touches the root namespace's
network; everything is stopped and deleted on exit.
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

from tfyarn.yarn.hadoop_conf import DEV_JVM_FLAGS

SUBNET = "10.217.0"
NIC = "tfy0"
SPARK_CLASS = str(Path(pyspark.__file__).parent / "bin" / "spark-class")


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
            self._spark()
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

    def _start(self, host: int, name: str, *args: str) -> None:
        log = open(self.base / f"{name}.log", "wb")  # noqa: SIM115 - kept open by the daemon
        self.procs.append(
            subprocess.Popen(
                self.netns(host, SPARK_CLASS, *args),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env(host),
                start_new_session=True,
            )
        )

    def _spark(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        master = "org.apache.spark.deploy.master.Master"
        self._start(0, "master", master, "--host", self.address(0), "--port", "7077",
                    "--webui-port", "8080")  # fmt: skip
        for i in range(1, len(self.hosts)):
            work = self.base / f"work-{i}"
            self._start(i, f"worker-{i}", "org.apache.spark.deploy.worker.Worker",
                        "--host", self.address(i), "--cores", "1", "--memory", "2g",
                        "--webui-port", "8081", "--work-dir", str(work),
                        self.master_url)  # fmt: skip
        self._wait_workers(timeout_s=120.0)

    def _wait_workers(self, timeout_s: float) -> None:
        """Until the master log shows every worker registered (bounded)."""
        deadline = time.monotonic() + timeout_s
        log = self.base / "master.log"
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace") if log.exists() else ""
            if text.count("Registering worker") >= self.workers:
                return
            dead = [p.args for p in self.procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"a Spark daemon exited: {dead}\n{self.logs()}")
            time.sleep(0.5)
        raise RuntimeError(f"workers did not register in {timeout_s:.0f} s\n{self.logs()}")

    def logs(self, lines: int = 15) -> str:
        """The last lines of every daemon's log."""
        out = []
        for path in sorted(self.base.glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name} ---\n" + "\n".join(tail))
        return "\n".join(out)

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for ns in reversed(self.made):
            with contextlib.suppress(RuntimeError):
                _ip("netns", "del", ns)
        self.made.clear()
