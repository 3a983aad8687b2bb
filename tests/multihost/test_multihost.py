"""Training across several hosts: network namespaces joined by a bridge, Spark and YARN.

Three "hosts" (namespaces made here, see apps/netns_cluster.py): the driver's, with the
Spark standalone master and the YARN ResourceManager, and two worker hosts, each with its
own standalone worker and its own NodeManager, bound to its own address. One driver
process runs a data-parallel job per transport on Spark standalone (tcp with TLS and a
certificate made for the job, grpc over the NIC named ``tfy0``, ucx over tcp on each
host's address in the bridge's network) and one during which a host's link goes down;
beside it a second driver runs a job with transport auto as a YARN application (client
mode), whose executors are containers of the two NodeManagers. Each job's two trainers
land on the two worker hosts. Checked for every job:
the roles ran on their hosts' addresses and TensorFlow's cluster spec and tfyarn's peers
carry those addresses (never 127.0.0.1); the transport is the one asked for (auto: tcp
across hosts, said why); and the weights equal, on both trainers, single-process SGD on
the two trainers' combined batches (a missing or broken exchange would leave the
trainers apart).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent / "apps"))
from netns_cluster import NIC, SUBNET, NetnsCluster

APP = Path(__file__).parent / "apps" / "multihost_job.py"
# grpc binds the NIC by name, ucx each host's address in the bridge's network.
# tcp with TLS and a per-job certificate (plain tcp across hosts: auto and linkcut).
JOBS = ("tcp+tls", f"grpc:{NIC}", f"ucx:{SUBNET}.0/24", "linkcut")
LINKCUT = JOBS.index("linkcut")
#: The YARN application's jobs (its own driver, beside the standalone one).
YARN_JOBS = ("auto",)
CUT_S = 8.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsCluster]:
    if shutil.which("ip") is None or os.geteuid() != 0:
        pytest.fail("the multi-host tests create network namespaces: they need iproute2 and root")
    started = time.monotonic()
    with NetnsCluster(tmp_path_factory.mktemp("multihost")) as c:
        print(f"\n3 hosts, Spark standalone and YARN up in {time.monotonic() - started:.1f} s")
        yield c
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"tfm{c.tag}-" not in left, left


def _reference(steps: int | None = None) -> list[np.ndarray]:
    """Single-process SGD on the mean gradient of both trainers' batches, step by step."""
    import multihost_job as job

    model = job.Model()
    w = [v.numpy() for v in model.trainable_weights]
    for step in range(job.STEPS if steps is None else steps):
        g = [job.grads(w, *job.batch(rank, step)) for rank in (0, 1)]
        w = [a - job.LR * (b0 + b1) / 2 for a, b0, b1 in zip(w, *g, strict=True)]
    return w


@dataclass
class Runs:
    """The standalone driver's one run of every job (see :data:`JOBS`), and the link cut;
    the YARN driver's run of :data:`YARN_JOBS` beside it."""

    returncode: int
    stderr: str
    out: Path
    seconds: float
    cut_host: int | None
    cut_to_end: float
    yarn_returncode: int
    yarn_stderr: str
    yarn_out: Path
    yarn_seconds: float


@pytest.fixture(scope="module")
def runs(cluster: NetnsCluster, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """Run every job in one driver (one Spark application); cut a link during the last.

    Once worker:1 of the link-cut job passed step 15, its host's NIC goes down for
    :data:`CUT_S` seconds.
    """
    out = tmp_path_factory.mktemp("multihost-out")
    yarn_out = tmp_path_factory.mktemp("multihost-yarn-out")
    # The YARN driver's stderr goes to a file: nobody reads its pipe while the standalone
    # driver runs.
    yarn_log = yarn_out / "driver.log"
    yarn_env = {**cluster.env(0), "HADOOP_CONF_DIR": str(cluster.yarn_conf_dir)}
    with open(yarn_log, "w") as log:
        on_yarn = subprocess.Popen(
            cluster.netns(0, sys.executable, str(APP), "yarn", str(yarn_out), *YARN_JOBS),
            stdout=subprocess.DEVNULL, stderr=log, text=True, env=yarn_env,
        )  # fmt: skip
    proc = subprocess.Popen(
        cluster.netns(0, sys.executable, str(APP), cluster.master_url, str(out), *JOBS),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=cluster.env(0),
    )  # fmt: skip
    started, started_at = time.monotonic(), time.time()
    mark = out / f"{LINKCUT}-worker-1.mark"
    host, cut = None, started
    try:
        while time.monotonic() - started < 300 and proc.poll() is None:
            text = mark.read_text().split() if mark.exists() else []
            if len(text) == 3 and int(text[2]) >= 15:
                host, cut = cluster.address_index(text[0]), time.monotonic()
                cluster.link(host, up=False)
                time.sleep(CUT_S)
                cluster.link(host, up=True)
                break
            time.sleep(0.1)
        _, stderr = proc.communicate(timeout=300)
        ended = time.monotonic()
        on_yarn.wait(timeout=max(1.0, 300 - (ended - started)))
    finally:
        for driver in (proc, on_yarn):
            if driver.poll() is None:
                driver.kill()
                driver.wait(timeout=30)
        cluster.link_all_up()
    # The YARN driver's end: its last job's result, written just before it stops Spark.
    last = yarn_out / f"{len(YARN_JOBS) - 1}-result.json"
    yarn_seconds = last.stat().st_mtime - started_at if last.exists() else float("nan")
    return Runs(
        proc.returncode, stderr, out, ended - started, host, ended - cut,
        on_yarn.returncode, yarn_log.read_text(errors="replace"), yarn_out, yarn_seconds,
    )  # fmt: skip


def _check_job(cluster: NetnsCluster, out: Path, n: int, entry: str) -> list[dict[str, Any]]:
    """Job ``n`` (``entry``) ran its trainers on both worker hosts' addresses, on its
    transport, and ended with the weights of single-process SGD on the combined batches."""
    transport = entry.partition(":")[0]
    want = _reference()
    roles = [json.loads((out / f"{n}-worker-{i}.json").read_text()) for i in (0, 1)]
    assert {r["host"] for r in roles} == {cluster.address(1), cluster.address(2)}, (entry, roles)
    for r in roles:
        addresses = [a for task in r["cluster"].values() for a in task]
        assert addresses and all(a.startswith(f"{SUBNET}.") for a in addresses), r
        assert r["peers"] and all(p and "127.0.0.1" not in p for p in r["peers"].values())
        assert r["transport"] == ("tcp" if transport == "auto" else transport), (entry, r)
        for got, expected in zip(r["weights"], want, strict=True):
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=entry)
    result = json.loads((out / f"{n}-result.json").read_text())
    assert result["transport"] == roles[0]["transport"]
    return roles


def test_jobs_train_across_hosts_on_every_transport(cluster: NetnsCluster, runs: Runs) -> None:
    assert runs.returncode == 0, _story(runs.stderr, cluster)
    for n, entry in enumerate(JOBS[:LINKCUT]):
        roles = _check_job(cluster, runs.out, n, entry)
        assert all(r["container"] is None for r in roles), roles  # not YARN's
    print(f"\n{len(JOBS)} standalone jobs across hosts ({', '.join(JOBS)}): {runs.seconds:.1f} s")


def test_a_yarn_job_trains_across_node_managers(cluster: NetnsCluster, runs: Runs) -> None:
    """Each trainer ran in a container of its own host's NodeManager; auto took tcp."""
    assert runs.yarn_returncode == 0, _story(runs.yarn_stderr, cluster, cluster.container_logs())
    for n, entry in enumerate(YARN_JOBS):
        roles = _check_job(cluster, runs.yarn_out, n, entry)
        assert all(r["nm_host"] == r["host"] for r in roles), roles
        containers = {r["container"] for r in roles}
        assert len(containers) == 2 and all(c.startswith("container_") for c in containers), roles
    # auto says why it took tcp: the peers are on two hosts.
    assert "auto: tcp (peers on 2 hosts" in cluster.container_logs()
    print(f"\nYARN application across 2 NodeManagers ({', '.join(YARN_JOBS)}): "
          f"{runs.yarn_seconds:.1f} s")  # fmt: skip


def test_a_host_whose_link_goes_down_mid_training_is_restarted_from_the_checkpoint(
    cluster: NetnsCluster, runs: Runs
) -> None:
    """worker:1's host loses its link (``ip link set tfy0 down`` in its namespace).

    Its role falls silent to the driver, which ends the attempt after 4 s of silence
    (``silent_fail_after``); the link comes back, and the second attempt resumes from the
    last checkpoint on both hosts and ends with the uninterrupted run's weights.
    """
    import multihost_job as job

    assert runs.cut_host is not None, "worker:1 of the link-cut job never passed step 15"
    assert runs.returncode == 0, _story(runs.stderr, cluster)
    result = json.loads((runs.out / f"{LINKCUT}-result.json").read_text())
    first, second = result["attempts"]
    assert first["kind"] == "silent" and first["role"] == "worker:1", first
    assert second["kind"] is None and second["resumed_from_step"] >= job.LINKCUT_EVERY, second
    want = _reference(job.LINKCUT_STEPS)
    for i in (0, 1):
        role = json.loads((runs.out / f"{LINKCUT}-worker-{i}.json").read_text())
        assert role["start"] == second["resumed_from_step"]
        for got, expected in zip(role["weights"], want, strict=True):
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    print(
        f"\nlink of {cluster.address(runs.cut_host)} down for {CUT_S:.0f} s at step >= 15: "
        f"{first['cause']}; resumed from step {second['resumed_from_step']}; "
        f"cut -> end of the job {runs.cut_to_end:.1f} s"
    )


def _story(stderr: str, cluster: NetnsCluster, executors: str | None = None) -> str:
    """What a failed driver said: its error lines first, then its end and the executors'."""
    errors = [ln for ln in stderr.splitlines() if "Error" in ln or ln.startswith("tfyarn")]
    executors = _executor_logs(cluster) if executors is None else executors
    return "\n".join(
        ["error lines:", *errors[:40], "--- driver tail ---", stderr[-3000:],
         "--- executors ---", executors[-4000:], "--- daemons ---", cluster.logs()]
    )  # fmt: skip


def _executor_logs(cluster: NetnsCluster) -> str:
    """The executors' stderr (the roles' own lines go there), from the workers' work dirs."""
    return "\n".join(p.read_text(errors="replace") for p in cluster.base.glob("work-*/*/*/stderr"))
