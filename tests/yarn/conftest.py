"""The real dev YARN shared by every test in tests/yarn: started once per test session.

A ResourceManager and a NodeManager, and a NameNode and a DataNode whose HDFS is the
cluster file system (separate ``java`` processes, Hadoop jars from Maven Central, cached
under ``~/.cache/tfyarn``) on free ports of 127.0.0.1, in a temp folder
that is removed at the end, together with everything the cluster started. The Python
environment archive is packed (or taken from the cache) once as well.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tfyarn.errors import YarnError
from tfyarn.yarn import hide, maven
from tfyarn.yarn.devcluster import DevYarn, DevYarnState, hide_host_python, up_on_free_ports
from tfyarn.yarn.envpack import PackedEnv, ensure_env_archive
from tfyarn.yarn.hadoop_conf import DevYarnSettings
from tfyarn.yarn.rest import AppReport, ResourceManagerClient

REPO = Path(__file__).resolve().parents[2]
APPS = Path(__file__).parent / "apps"
TFYARN = str(Path(sys.executable).parent / "tfyarn")


@dataclass
class YarnRun:
    """One ``tfyarn submit`` / ``spark-submit`` run against the dev YARN."""

    returncode: int
    output: str
    app_id: str | None
    seconds: float


@dataclass
class DevYarnFixture:
    """What tests get: the cluster, a REST client and the environment to submit with."""

    cluster: DevYarn
    state: DevYarnState
    rm: ResourceManagerClient
    env: dict[str, str]
    packed: PackedEnv

    def submit(self, args: list[str], timeout: float = 600.0) -> YarnRun:
        """Run ``tfyarn submit ARGS`` and return its output and the application id."""
        from tfyarn.yarn.submit_support import APP_ID_RE

        started = time.monotonic()
        proc = subprocess.run(
            [TFYARN, "submit", *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=REPO,
            timeout=timeout,
        )
        output = proc.stdout + proc.stderr
        match = APP_ID_RE.search(output)
        return YarnRun(
            proc.returncode, output, match.group(0) if match else None, time.monotonic() - started
        )

    def final(self, app_id: str) -> AppReport:
        """The application's report once it reached a final state."""
        return self.rm.wait_for_state(app_id, timeout_s=120.0)

    def hdfs(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run Hadoop's own client, ``hadoop fs ARGS`` (FsShell), against the dev HDFS.

        The reference for what tfyarn wrote over WebHDFS: Hadoop's RPC client reads the
        NameNode and the DataNode directly.
        """
        cmd = self.cluster.client_command("org.apache.hadoop.fs.FsShell", *args)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"hadoop fs {' '.join(args)}: exit {proc.returncode}\n{proc.stderr}"
            )
        return proc


def _fetch_jars_in_background(services: bool) -> threading.Thread:
    """Fetch (or find cached) the Hadoop jars of one kind of dev YARN in a thread.

    On a fresh machine each kind is a Maven download, bound by the network, which then
    overlaps disk- and CPU-bound work here instead of adding to it. A failure is left to
    the code that needs the jars: its own ``ensure_hadoop_jars`` call retries and reports
    it, and waits on the cache's file lock while a download is in progress.
    """

    def fetch() -> None:
        with contextlib.suppress(YarnError, OSError):
            maven.ensure_hadoop_jars(services=services)

    thread = threading.Thread(target=fetch, name=f"hadoop-jars-{services}", daemon=True)
    thread.start()
    return thread


@pytest.fixture(scope="session")
def dev_yarn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevYarnFixture]:
    """Start the dev YARN once for the session; stop it and remove its folder at the end."""
    base = tmp_path_factory.mktemp("dev-yarn")
    # Two yarn.io/gpu (a countable resource: no GPU plugin, no devices) so that GPU
    # requests can be scheduled and accounted for by the real RM without GPUs. With the
    # YARN Services API (Hadoop 3.4.2), so that one YARN serves jobs and services alike.
    # HDFS as the cluster file system, as on a production cluster.
    settings = DevYarnSettings(base_dir=base, nm_gpus=2, services=True, hdfs=True)
    # As a node without Python: the NodeManager and its containers do not see the host's
    # (the venv, its base interpreter, /usr's python3), so every YARN test's executors and
    # cluster-mode drivers run the archive's own interpreter (test_submit_yarn checks it).
    why_not = hide.can_hide()
    if why_not is None:
        settings = hide_host_python(settings)
    else:
        print(f"\nthe dev YARN's NodeManager sees the host's Python: {why_not}")
    # The session's jars download while the environment is packed; the daemons start after
    # packing (both are heavy, one at a time is faster on 2 cores).
    fetching = _fetch_jars_in_background(services=True)
    packed = ensure_env_archive()
    fetching.join()
    # Ports drawn right before the start, fresh ones if one is taken meanwhile.
    cluster, state = up_on_free_ports(settings, timeout_s=300.0)
    # The default Hadoop's jars (the plain cluster of `tfyarn yarn-dev up`, `tfyarn logs`)
    # meanwhile: after the first download, as Maven 3.8 does not lock its local repository.
    prefetch = _fetch_jars_in_background(services=False)
    how = f"packed in {packed.pack_s:.1f} s" if packed.pack_s else "cached"
    print(f"\ndev YARN up in {state.startup_s:.1f} s; env archive {packed.path.name} ({how})")
    env = dict(os.environ)
    env.update(
        {
            "HADOOP_CONF_DIR": str(state.conf_dir),
            "SPARK_LOCAL_IP": "127.0.0.1",
            "PYSPARK_PYTHON": sys.executable,
            "PYSPARK_DRIVER_PYTHON": sys.executable,
            # Every submit ships this archive, even if tfyarn's files change meanwhile.
            "TFYARN_ENV_ARCHIVE": str(packed.path),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        }
    )
    env.pop("SPARK_HOME", None)
    try:
        yield DevYarnFixture(cluster, state, ResourceManagerClient(state.rm_web_url), env, packed)
    finally:
        # A download cut short at exit would leave a partial folder behind.
        prefetch.join(timeout=600.0)
        stopping = time.monotonic()
        cluster.down(timeout_s=30.0)
        stopped = time.monotonic()
        shutil.rmtree(base, ignore_errors=True)
        print(
            f"\ndev YARN down in {stopped - stopping:.1f} s, "
            f"folder removed in {time.monotonic() - stopped:.1f} s"
        )


# -- the session's yarn-client application: FILES from HDFS, the fault job struck ---------


@dataclass
class ClientApp:
    """``apps/restart_app.py`` run once under ``tfyarn submit --profile yarn-client``.

    Its FILES job is test_hdfs.py's, its fault jobs test_restarts_yarn.py's: one YARN
    application (executors, localisation, TensorFlow import) serves both.
    """

    returncode: int
    output: str
    container: str
    #: The pids of worker:0's and worker:1's role processes (attempt 1) at the kill.
    struck_pids: tuple[int, int]
    marks: Path
    result: Path
    parts: list[np.ndarray]
    urls: list[str]
    files_out: Path


def _container_of(pid: int) -> str:
    """The YARN container a process runs in (``CONTAINER_ID`` of it or an ancestor)."""
    while pid > 1:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        for item in environ:
            if item.startswith(b"CONTAINER_ID="):
                return item.split(b"=", 1)[1].decode()
        stat = Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    raise AssertionError("the role process runs in no YARN container")


def _strike(
    dev_yarn: DevYarnFixture, victim: Path, proc: subprocess.Popen[str]
) -> tuple[str, tuple[int, int]]:
    """Kill the victim role's container once it is past the strike step.

    Returns its id and the pids of the victim's and its peer's role processes then.
    """
    from fault_job import STRIKE_AFTER, read_mark

    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        mark = read_mark(victim)
        peer = read_mark(victim.with_name(victim.name.replace("worker-1", "worker-0")))
        if mark is not None and peer is not None and mark[1] > STRIKE_AFTER:
            container = _container_of(mark[0])
            dev_yarn.rm.signal_container(container, "FORCEFUL_SHUTDOWN")
            return container, (peer[0], mark[0])
        time.sleep(0.1)
    raise AssertionError(f"{victim.name} never passed step {STRIKE_AFTER}")


def _files_on_hdfs(dev_yarn: DevYarnFixture, local: Path) -> tuple[list[np.ndarray], list[str]]:
    """Three Parquet files of different lengths, put on HDFS with Hadoop's own client."""
    folder = f"{dev_yarn.state.default_fs}/tmp/tfyarn-files-{uuid.uuid4().hex[:8]}"
    rng = np.random.default_rng(3)
    parts = [rng.standard_normal(n) for n in (50, 70, 90)]
    names = []
    for i, x in enumerate(parts):
        names.append(local / f"part-{i}.parquet")
        pq.write_table(pa.table({"x": x, "y": np.zeros(len(x))}), names[-1])
    dev_yarn.hdfs("-mkdir", "-p", folder)
    dev_yarn.hdfs("-put", *map(str, names), folder)
    return parts, [f"{folder}/{n.name}" for n in names]


@pytest.fixture(scope="session")
def client_app(dev_yarn: DevYarnFixture, tmp_path_factory: pytest.TempPathFactory) -> ClientApp:
    sys.path.insert(0, str(REPO / "tests" / "integration"))
    root = tmp_path_factory.mktemp("client-app")
    parts, urls = _files_on_hdfs(dev_yarn, root)
    marks, out, files_out = root / "marks", root / "result.json", root / "files"
    # spark.task.maxFailures=4 (YARN's own default, which the profile sets to 1), as a
    # cluster's spark-defaults may say: Spark's retries must not run attempt 1's roles
    # twice (it aborts a failed barrier result stage; tfyarn restarts the attempt).
    proc = subprocess.Popen(
        [TFYARN, "submit", "--profile", "yarn-client", "--workers", "2", "--no-chief",
         "--conf", "spark.task.maxFailures=4",
         str(APPS / "restart_app.py"), str(marks), str(out), ",".join(urls), str(files_out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dev_yarn.env, cwd=REPO, start_new_session=True,
    )  # fmt: skip
    lines: list[str] = []
    # Drain the output all along: a full pipe would block spark-submit.
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    reader.start()
    try:
        try:
            container, struck = _strike(dev_yarn, marks / "faulted" / "worker-1.a1", proc)
        except AssertionError as exc:
            proc.wait(timeout=60)
            reader.join(timeout=30)
            raise AssertionError(f"{exc}; the job said:\n{''.join(lines)[-5000:]}") from None
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(timeout=30)
    return ClientApp(
        proc.returncode, "".join(lines), container, struck, marks, out, parts, urls, files_out
    )
