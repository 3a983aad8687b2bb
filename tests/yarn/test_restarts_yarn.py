"""The fault matrix on the dev YARN (issue 12): an executor's container killed by YARN.

The shared fault job (tests/integration/fault_job.py) runs under ``tfyarn submit
--profile yarn-client`` (the session's ``client_app``, whose first job is test_hdfs.py's
FILES job): once uninterrupted, then with restarts and checkpoints while the fixture has
the ResourceManager kill the container of worker:1's executor
(``POST /ws/v1/cluster/containers/{id}/signal/FORCEFUL_SHUTDOWN``: the RM tells the
NodeManager, which kills the container as preemption does). Spark's YARN allocator
replaces the executor; tfyarn restarts the attempt from the last checkpoint. The app
runs with ``spark.task.maxFailures=4``: Spark's own retry of the barrier stage must
neither run a role twice nor hang. The job
ends SUCCEEDED, within one point of the uninterrupted run, redoing at most one
checkpoint interval, and the killed container leaves no process behind.
"""

from __future__ import annotations

import getpass
import json
import re
import sys
from pathlib import Path

import pytest

from tfyarn.yarn.submit_support import APP_ID_RE

from .conftest import REPO, ClientApp, DevYarnFixture
from .test_submit_yarn import _role_pids

pytestmark = pytest.mark.yarn

sys.path.insert(0, str(REPO / "tests" / "integration"))
from fault_job import EVERY, read_mark  # noqa: E402


def test_a_container_killed_through_the_rm_restarts_from_the_checkpoint(
    dev_yarn: DevYarnFixture, client_app: ClientApp
) -> None:
    output, container, out = client_app.output, client_app.container, client_app.result
    assert client_app.returncode == 0, output[-6000:]
    app = APP_ID_RE.search(output)
    assert app is not None, output[-3000:]
    assert app.group(0).removeprefix("application_") in container, container
    report = dev_yarn.final(app.group(0))
    assert (report.state, report.final_status) == ("FINISHED", "SUCCEEDED")

    runs = json.loads(out.read_text())
    reference, faulted = runs["reference"], runs["faulted"]
    assert [a["kind"] for a in reference["attempts"]] == [None]
    lost, resumed = faulted["attempts"]
    assert (lost["kind"], lost["role"], resumed["kind"]) == ("lost", "worker:1", None), lost
    assert resumed["resumed_from_step"] is not None and resumed["resumed_from_step"] >= EVERY
    assert resumed["steps_redone"] is not None and 0 <= resumed["steps_redone"] <= EVERY
    # Spark was allowed to retry the stage (maxFailures=4), and did not run attempt 1's
    # roles again: the last to write each trainer's attempt-1 marks are the processes
    # that ran when the container was killed.
    assert "overrides the profile's spark.task.maxFailures=1" in output, output[-3000:]
    for role, pid in zip(("worker-0", "worker-1"), client_app.struck_pids, strict=True):
        mark = read_mark(client_app.marks / "faulted" / f"{role}.a1")
        assert mark is not None and mark[0] == pid, (role, mark, pid)
    accuracy, expected = faulted["value"]["accuracy"], reference["value"]["accuracy"]
    assert abs(accuracy - expected) <= 0.01, (accuracy, expected)
    # model_dir and checkpoints defaulted to the cluster file system (HDFS), where
    # Hadoop's own client finds them; the environment archive came from there too.
    fs = dev_yarn.state.default_fs
    model_dir = faulted["model_dir"]
    assert model_dir.startswith(f"{fs}/user/{getpass.getuser()}/tfyarn/"), model_dir
    saved = faulted["value"]["model_path"]
    assert saved == f"{model_dir}/fault.keras"
    assert int(dev_yarn.hdfs("-stat", "%b", saved).stdout) > 0
    ckpts = dev_yarn.hdfs("-ls", "-C", f"{model_dir}/checkpoints").stdout.split()
    assert ckpts and all(c.rsplit("/", 1)[-1].startswith("ckpt-") for c in ckpts), ckpts
    assert f"{fs}/user/{getpass.getuser()}/.tfyarn/envs/" in output, output[-3000:]
    # What `tfyarn submit --profile yarn-client` tells its user, and the archive used in
    # place from HDFS, not copied into the application's staging dir.
    assert f"tfyarn: YARN application {app.group(0)}" in output
    assert re.search(r"tfyarn: tracking URL: http://127\.0\.0\.1:\d+/", output)
    assert f"tfyarn: {app.group(0)} FINISHED/SUCCEEDED" in output
    uploads = [line for line in output.splitlines() if "Uploading resource" in line]
    assert not any(".tar" in line for line in uploads), uploads
    # The killed container's processes (executor, Python workers, role) are all gone.
    app_dir = Path(dev_yarn.state.base_dir, "nm-local/usercache", getpass.getuser(), "appcache")
    assert _role_pids(app_dir / app.group(0) / container) == []
    print(
        f"\ncontainer {container} killed through the RM: {lost['cause']}; resumed from step "
        f"{resumed['resumed_from_step']}, {resumed['steps_redone']} steps redone, accuracy "
        f"{accuracy:.4f} (uninterrupted {expected:.4f})"
    )
