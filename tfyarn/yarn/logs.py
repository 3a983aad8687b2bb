"""Aggregated YARN logs of an application (what ``yarn logs -applicationId`` prints).

After an application ends, each NodeManager uploads its containers' logs (stdout, stderr,
Spark's logs) to the cluster file system; Hadoop's ``LogsCLI`` reads them back. tfyarn
runs that tool with ``yarn`` when it is on PATH (a real cluster's client), else with the
Hadoop jars cached for the dev YARN, against ``HADOOP_CONF_DIR``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from tfyarn.errors import ConfigError, YarnError
from tfyarn.yarn import maven
from tfyarn.yarn.hadoop_conf import site_property
from tfyarn.yarn.rest import ResourceManagerClient

__all__ = [
    "fetch_logs",
    "logs_command",
    "rm_web_url",
    "site_property",
]

_LOGS_CLI = "org.apache.hadoop.yarn.client.cli.LogsCLI"


def rm_web_url(conf_dir: Path) -> str:
    """The RM web app URL from ``yarn-site.xml`` (Hadoop's defaults where unset)."""
    address = site_property(conf_dir, "yarn.resourcemanager.webapp.address")
    if not address:
        host = site_property(conf_dir, "yarn.resourcemanager.hostname") or "0.0.0.0"
        address = f"{host}:8088"
    return f"http://{address}"


def hadoop_conf_dir(env: Mapping[str, str]) -> Path:
    """``HADOOP_CONF_DIR`` (or ``YARN_CONF_DIR``) from ``env``, which must exist."""
    value = env.get("HADOOP_CONF_DIR") or env.get("YARN_CONF_DIR")
    if not value:
        raise ConfigError(
            "HADOOP_CONF_DIR is not set; export the cluster's Hadoop configuration dir "
            "(`tfyarn yarn-dev up` prints it for the dev YARN)"
        )
    path = Path(value)
    if not (path / "yarn-site.xml").is_file():
        raise ConfigError(f"HADOOP_CONF_DIR={path} has no yarn-site.xml")
    return path


def logs_command(
    app_id: str,
    conf_dir: Path,
    *,
    am_only: bool = False,
    log_files: Sequence[str] = (),
    yarn: str | None = None,
    jars: Path | None = None,
    java: str = "java",
) -> list[str]:
    """The command that prints the aggregated logs of ``app_id`` (pure).

    Parameters
    ----------
    app_id : str
        The application.
    conf_dir : Path
        HADOOP_CONF_DIR.
    am_only : bool
        Only the application master container (the driver, in cluster mode).
    log_files : Sequence[str]
        Only these log files (e.g. ``stdout``, ``stderr``); all when empty.
    yarn : str, optional
        A ``yarn`` executable; when given it is used as is.
    jars : Path, optional
        Folder of Hadoop jars, used with ``java`` when ``yarn`` is None.
    """
    args = ["-applicationId", app_id]
    if am_only:
        args += ["-am", "1"]
    if log_files:
        args += ["-log_files", ",".join(log_files)]
    if yarn:
        return [yarn, "logs", *args]
    if jars is None:
        raise ConfigError("logs_command needs either a yarn executable or a jar folder")
    return [java, "-cp", maven.hadoop_classpath(conf_dir, jars), _LOGS_CLI, *args]


def fetch_logs(
    app_id: str,
    env: Mapping[str, str] | None = None,
    *,
    am_only: bool = False,
    log_files: Sequence[str] = (),
    wait_s: float = 60.0,
) -> str:
    """Return the aggregated logs of ``app_id`` as text.

    Waits up to ``wait_s`` for the NodeManagers to finish uploading them (the RM reports
    ``logAggregationStatus``); a still-running application gives what is there so far.

    Raises
    ------
    YarnError
        The logs tool failed (unknown application, logs not aggregated).
    """
    env = dict(os.environ if env is None else env)
    conf_dir = hadoop_conf_dir(env)
    rm = ResourceManagerClient(rm_web_url(conf_dir))
    if wait_s > 0 and rm.reachable():
        report = rm.app(app_id)
        if report.done:
            rm.wait_for_log_aggregation(app_id, timeout_s=wait_s)
    yarn = shutil.which("yarn", path=env.get("PATH"))
    jars = None if yarn else maven.ensure_hadoop_jars()
    cmd = logs_command(app_id, conf_dir, am_only=am_only, log_files=log_files, yarn=yarn, jars=jars)
    env["HADOOP_CONF_DIR"] = str(conf_dir)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise YarnError(
            f"could not read the logs of {app_id} (exit {proc.returncode}): "
            + (proc.stderr.strip().splitlines() or ["no output"])[-1]
        )
    return proc.stdout
