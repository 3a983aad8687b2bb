"""``tfyarn submit`` on the real dev YARN: the digits example in cluster mode (with the
packed environment; client mode is the session's ``client_app``, checked in
test_restarts_yarn.py), a failing role (asking for GPUs, which the dev NodeManager
counts without having any), a killed application, ``tfyarn logs``."""

from __future__ import annotations

import getpass
import importlib.util
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from xml.etree import ElementTree

import pytest

from tfyarn.yarn import hide
from tfyarn.yarn.envpack import ENV_ALIAS

from .conftest import APPS, REPO, TFYARN, DevYarnFixture

pytestmark = pytest.mark.yarn

EXAMPLE = REPO / "examples" / "digits_ps.py"
ENV_PYTHON = f"/{ENV_ALIAS}/bin/python"
#: Files of the host's Python that a container must not read where the NodeManager hides
#: it: the base interpreter's os.py and binary, and TensorFlow in the venv.
_HOST_FILES = (
    os.path.join(os.path.dirname(os.__file__), "os.py"),
    os.path.realpath(sys.executable),
    str(importlib.util.find_spec("tensorflow").origin),  # type: ignore[union-attr]
)


def _accuracy(text: str) -> float:
    match = re.search(r"test accuracy: ([0-9.]+)", text)
    assert match, text[-4000:]
    return float(match.group(1))


def _logs(dev_yarn: DevYarnFixture, app_id: str, *extra: str) -> str:
    proc = subprocess.run(
        [TFYARN, "logs", app_id, *extra],
        capture_output=True,
        text=True,
        env=dev_yarn.env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_yarn_cluster_runs_the_example_in_the_shipped_environment(
    dev_yarn: DevYarnFixture, tmp_path: Path
) -> None:
    run = dev_yarn.submit(
        [
            "--profile",
            "yarn-cluster",
            "--workers",
            "2",
            "--ps",
            "1",
            "--py-files",
            str(EXAMPLE),
            "--conf",
            f"spark.yarn.appMasterEnv.TFYARN_PROBE_HOST_FILES={os.pathsep.join(_HOST_FILES)}",
            str(APPS / "digits_in_env.py"),
            "--epochs",
            "3",
        ]
    )
    assert run.returncode == 0, run.output[-6000:]
    assert run.app_id is not None
    assert f"tfyarn: YARN application {run.app_id}" in run.output
    assert "tracking URL: http://" in run.output
    # The archive is used in place from HDFS (uploaded there once by the first submit),
    # not copied into each application's staging dir.
    on_hdfs = f"{dev_yarn.state.default_fs}/user/{getpass.getuser()}/.tfyarn/envs"
    assert f"Not copying {on_hdfs}/{dev_yarn.packed.path.name}#{ENV_ALIAS}" in run.output
    assert ".tar" not in _uploads(run.output)
    report = dev_yarn.final(run.app_id)
    assert (report.state, report.final_status) == ("FINISHED", "SUCCEEDED")
    driver = _logs(dev_yarn, run.app_id, "--am", "--log-files", "stdout")
    assert _accuracy(driver) >= 0.8
    _assert_saved_on_hdfs(dev_yarn, driver)
    # Where this process may mount, the session's NodeManager hides the host's Python.
    assert dev_yarn.state.nm_hidden or hide.can_hide() is not None
    drivers = re.findall(r"env-probe driver=(.+)", driver)
    executors = re.findall(r"env-probe executor=(.+)", driver)
    assert len(drivers) == 1 and executors, driver[-3000:]
    for line in [*drivers, *executors]:
        python, tfyarn_file, stdlib_file, host_files = line.split()
        # The archive's interpreter, its standard library and the tfyarn copy inside it.
        assert python.endswith(ENV_PYTHON), line
        env_root = python[: -len("/bin/python")]
        assert tfyarn_file.startswith(f"{env_root}/lib/"), line
        assert stdlib_file.startswith(f"{env_root}/lib/python3."), line
        if dev_yarn.state.nm_hidden:  # a node without the host's Python (conftest.py)
            assert host_files == "-", f"the container read the host's Python: {line}"
    # Executors are other containers than the driver's.
    assert {Path(p.split()[0]).parents[2].name for p in executors}.isdisjoint(
        {Path(drivers[0].split()[0]).parents[2].name}
    )
    print(f"yarn-cluster submit -> finish: {run.seconds:.1f} s")


def _assert_saved_on_hdfs(dev_yarn: DevYarnFixture, output: str) -> None:
    """The example's model went to the default model_dir on HDFS; Hadoop's client sees it."""
    saved = re.search(r"model saved to: (\S+)", output)
    assert saved, output[-3000:]
    home = f"{dev_yarn.state.default_fs}/user/{getpass.getuser()}/tfyarn/"
    assert saved.group(1).startswith(home) and saved.group(1).endswith("/digits.keras")
    assert int(dev_yarn.hdfs("-stat", "%b", saved.group(1)).stdout) > 0


def _uploads(output: str) -> str:
    return "\n".join(line for line in output.splitlines() if "Uploading resource" in line)


def test_failing_role_fails_the_application_with_its_traceback(
    dev_yarn: DevYarnFixture, tmp_path: Path
) -> None:
    """Also a GPU request through YARN without GPUs: Spark's executor GPU amount becomes a
    ``yarn.io/gpu`` allocation of the real dev YARN, and the role is pinned to its GPU.

    (One application for both: each costs a minute or two of JVM start-ups.)
    """
    profile = tmp_path / "yarn-gpu.conf"
    base = (REPO / "conf" / "yarn-cluster.conf").read_text()
    profile.write_text(
        base
        + "spark.executor.resource.gpu.amount 1\n"
        + f"spark.executor.resource.gpu.discoveryScript {APPS / 'stand_in_gpus.sh'}\n"
    )
    run = dev_yarn.submit(
        ["--profile", str(profile), "--workers", "1", str(APPS / "failing_role.py")]
    )
    assert run.returncode != 0
    assert run.app_id is not None, run.output[-4000:]
    report = dev_yarn.final(run.app_id)
    # Spark's AM unregisters with final status FAILED: YARN shows FINISHED/FAILED (state
    # FAILED proper is for an AM that dies without unregistering).
    assert report.final_status == "FAILED", report
    assert report.state in {"FINISHED", "FAILED"}
    assert f"tfyarn: {run.app_id} {report.state}/FAILED" in run.output
    mark = "tfyarn-yarn-test deliberate failure in worker:0"
    # tfyarn submit shows the cluster-mode driver's output, with the role's traceback.
    assert mark in run.output, run.output[-6000:]
    assert "RoleFailedError" in run.output
    assert "worker:0" in run.output
    logs = _logs(dev_yarn, run.app_id)
    assert mark in logs
    assert "Traceback (most recent call last)" in logs
    # tfyarn submit added the task amount (one task, one role, per executor), and the
    # role was pinned to the one stand-in GPU its executor got.
    assert f"{mark} (CUDA_VISIBLE_DEVICES=0)" in run.output, run.output[-3000:]
    # YARN accounted GPU-seconds to the application: the containers held yarn.io/gpu.
    seconds = _resource_seconds(dev_yarn.state.rm_web_url, run.app_id)
    assert seconds.get("yarn.io/gpu", 0) > 0, seconds


def _resource_seconds(rm_url: str, app_id: str) -> dict[str, int]:
    """The application's resourceSecondsMap, read as XML.

    Hadoop 3.4's JSON (Jersey 1) writes the map as an object with a repeated "entry" key,
    which JSON parsers collapse to the last entry; the XML lists every entry.
    """
    req = urllib.request.Request(
        f"{rm_url}/ws/v1/cluster/apps/{app_id}?user.name={getpass.getuser()}",
        headers={"Accept": "application/xml"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        root = ElementTree.fromstring(resp.read())
    found = root.find("resourceSecondsMap")
    entries = found.findall("entry") if found is not None else []
    return {e.findtext("key", ""): int(e.findtext("value", "0")) for e in entries}


def _role_pids(app_dir: Path) -> list[int]:
    """Processes of the application's containers: working dir or program inside them.

    Role processes run the container's Python (``<container>/tfyarn-env/bin/python``) but
    work in their own temp dir, so the command line is what ties them to the application.
    """
    root = str(app_dir)
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if cwd.startswith(root) or root in cmdline:
            pids.append(int(entry.name))
    return pids


def _has_tensorflow(pid: int) -> bool:
    try:
        return "libtensorflow" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def _start_long_roles(
    dev_yarn: DevYarnFixture,
) -> tuple[subprocess.Popen[str], list[str], threading.Thread]:
    proc = subprocess.Popen(
        [
            TFYARN,
            "submit",
            "--profile",
            "yarn-client",
            "--workers",
            "1",
            str(APPS / "long_roles.py"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dev_yarn.env,
        cwd=REPO,
        start_new_session=True,
    )
    lines: list[str] = []
    # Drain the output all along: a full pipe would block spark-submit before it can exit.
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    reader.start()
    return proc, lines, reader


def test_killing_the_application_stops_every_role_within_30_s(dev_yarn: DevYarnFixture) -> None:
    proc, lines, reader = _start_long_roles(dev_yarn)
    user = getpass.getuser()
    try:
        app_id = None
        app_dir = Path()
        tf_roles: list[int] = []
        deadline = time.monotonic() + 480
        # Wait until both roles (chief, worker) run TensorFlow inside their containers.
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(1.0)
            # The newest application: tfyarn submit launches once more after Spark's
            # yarn-client UI start-up race (YarnAppWatcher.hit_ui_start_race).
            found = re.findall(r"tfyarn: YARN application (\S+)", "".join(lines))
            if found and found[-1] != app_id:
                app_id = found[-1]
                app_dir = Path(
                    dev_yarn.state.base_dir, "nm-local/usercache", user, "appcache", app_id
                )
            if app_id is not None:
                tf_roles = [p for p in _role_pids(app_dir) if _has_tensorflow(p)]
                if len(tf_roles) >= 2:
                    break
        assert app_id is not None and len(tf_roles) >= 2, "".join(lines)[-5000:]

        killed_at = time.monotonic()
        dev_yarn.rm.kill(app_id)
        remaining = _role_pids(app_dir)
        while remaining and time.monotonic() - killed_at < 30:
            time.sleep(0.5)
            remaining = _role_pids(app_dir)
        elapsed = time.monotonic() - killed_at
        assert not remaining, f"still running {elapsed:.0f} s after the kill: {remaining}"
        assert not any(_exists(p) for p in tf_roles)
        report = dev_yarn.final(app_id)
        assert report.state == "KILLED"
        # The client-mode driver notices and exits with an error.
        proc.wait(timeout=120)
        assert proc.returncode != 0
        print(f"kill -> every role gone: {elapsed:.1f} s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        reader.join(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
