"""``tfyarn doctor`` checks for YARN: Hadoop jars, Maven, HADOOP_CONF_DIR and the RM."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from tfyarn.diagnosis import Check

__all__ = ["check_yarn"]


def check_yarn() -> Iterable[Check]:
    """Whether the dev YARN can start, and whether the configured YARN answers.

    None of these is required: tfyarn runs on local and standalone Spark without YARN.
    """
    from tfyarn.yarn import maven
    from tfyarn.yarn.logs import rm_web_url
    from tfyarn.yarn.rest import ResourceManagerClient

    jars = maven.jar_dir()
    cached = (jars / ".tfyarn-complete").is_file()
    mvn = shutil.which("mvn")
    yield Check(
        "hadoop jars",
        cached or mvn is not None,
        f"Hadoop {maven.hadoop_version()} jars cached in {jars}"
        if cached
        else (
            "not cached yet; Maven will fetch them on the first `tfyarn yarn-dev up`"
            if mvn
            else "not cached and Maven (mvn) is missing"
        ),
        "" if cached or mvn else "apt-get install maven (scripts/setup-system.sh)",
        required=False,
    )
    conf = os.environ.get("HADOOP_CONF_DIR") or os.environ.get("YARN_CONF_DIR")
    if not conf:
        yield Check(
            "yarn",
            False,
            "HADOOP_CONF_DIR is not set",
            "export HADOOP_CONF_DIR (for the dev YARN: `tfyarn yarn-dev up` prints it)",
            required=False,
        )
        return
    if not (Path(conf) / "yarn-site.xml").is_file():
        yield Check(
            "yarn", False, f"{conf} has no yarn-site.xml", "fix HADOOP_CONF_DIR", required=False
        )
        return
    url = rm_web_url(Path(conf))
    rm = ResourceManagerClient(url, timeout_s=3.0)
    try:
        info = rm.cluster_info()
        nodes = rm.running_nodes()
    except Exception as exc:  # any failure is the finding
        yield Check(
            "yarn",
            False,
            f"ResourceManager {url}: {exc}",
            "start YARN (`tfyarn yarn-dev up`) or fix HADOOP_CONF_DIR",
            required=False,
        )
        return
    yield Check(
        "yarn",
        bool(nodes),
        f"ResourceManager {url}: Hadoop {info.get('hadoopVersion', '?')}, "
        f"{len(nodes)} NodeManager(s) RUNNING",
        "" if nodes else "no NodeManager is RUNNING: check the NodeManager logs",
        required=False,
    )
    yield _check_services_api(url)


def _check_services_api(url: str) -> Check:
    """Whether the RM serves the YARN Services API (``tfyarn service`` needs it)."""
    from tfyarn.errors import TFYarnError
    from tfyarn.service.client import ServicesClient

    try:
        version = ServicesClient(url, timeout_s=3.0).api_version()
    except TFYarnError as exc:
        return Check(
            "yarn services api",
            False,
            f"{url}/app/v1/services: {exc}",
            "for `tfyarn service`: set yarn.webapp.api-service.enable=true and put the "
            "hadoop-yarn-services jars on the RM classpath (the Ansible yarn role does; "
            "`tfyarn yarn-dev up --services` for the dev YARN)",
            required=False,
        )
    return Check("yarn services api", True, f"{url}/app/v1/services (Hadoop {version})")
