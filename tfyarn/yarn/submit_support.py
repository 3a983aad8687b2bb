"""What ``tfyarn submit`` adds when the master is YARN.

- the Python environment archive (``spark.tfyarn.yarn.envArchive``): packed and shipped
  with ``spark.yarn.dist.archives`` (``$TFYARN_ENV_ARCHIVE``, when set, replaces ``auto``
  with a prebuilt archive); executors, and the driver in cluster mode, run the
  Python inside it;
- GPU discovery for ``spark.executor.resource.gpu.amount`` (Spark turns that amount into
  YARN's ``yarn.io/gpu`` request);
- on the dev YARN (a HADOOP_CONF_DIR written by ``tfyarn yarn-dev``): Spark's jars used in
  place (``local:``), its own staging dir, every Spark process bound to 127.0.0.1;
- while spark-submit runs: the application id and tracking URL printed as soon as YARN
  assigns them; at the end, the final YARN state and, when a cluster-mode driver failed,
  the end of its output (with the role's traceback) from the aggregated logs.

The ``*_properties`` functions are pure and unit-tested; :func:`prepare_plan` and
:class:`YarnAppWatcher` do the I/O.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from tfyarn.errors import ConfigError, YarnError
from tfyarn.yarn.devcluster import DEV_MARKER
from tfyarn.yarn.envpack import ENV_ALIAS, ensure_env_archive, publish_env_archive
from tfyarn.yarn.hadoop_conf import VIEWFS_MOUNT_TABLE, site_property
from tfyarn.yarn.logs import fetch_logs, rm_web_url
from tfyarn.yarn.rest import ResourceManagerClient

if TYPE_CHECKING:
    from tfyarn.cluster.profiles import SubmitPlan

__all__ = [
    "APP_ID_RE",
    "GPU_SCRIPT_ALIAS",
    "YarnAppWatcher",
    "cluster_default_fs",
    "dev_cluster_marker",
    "dev_cluster_properties",
    "dev_cluster_uri",
    "env_archive_properties",
    "gpu_properties",
    "gpu_script_path",
    "is_yarn",
    "prepare_plan",
    "spark_ui_start_race",
]

APP_ID_RE = re.compile(r"\bapplication_\d+_\d+\b")

#: Name the GPU discovery script gets in each container's working dir.
GPU_SCRIPT_ALIAS = "tfyarn-gpus.sh"

#: Fast JVM start-up for the dev YARN's short test jobs on a small shared box.
_DEV_JAVA_OPTS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


def is_yarn(properties: Mapping[str, str]) -> bool:
    """Whether these submit properties target YARN."""
    return properties.get("spark.master", "").strip() == "yarn"


def _add_csv(current: str | None, item: str) -> str:
    return f"{current},{item}" if current else item


def env_archive_properties(
    properties: Mapping[str, str], archive_arg: str, driver_python: str
) -> dict[str, str]:
    """Properties that ship an environment archive and run its Python (pure).

    Parameters
    ----------
    properties : Mapping[str, str]
        The submit properties so far (reads deploy mode and existing archives).
    archive_arg : str
        ``PATH_OR_URI#tfyarn-env``.
    driver_python : str
        The local Python for a client-mode driver.

    Returns
    -------
    dict
        Properties to add or override.
    """
    inside = f"./{ENV_ALIAS}/bin/python"
    cluster = properties.get("spark.submit.deployMode", "client") == "cluster"
    return {
        "spark.yarn.dist.archives": _add_csv(
            properties.get("spark.yarn.dist.archives"), archive_arg
        ),
        "spark.pyspark.python": inside,
        "spark.pyspark.driver.python": inside if cluster else driver_python,
    }


def gpu_properties(properties: Mapping[str, str], script: str) -> dict[str, str]:
    """GPU discovery for executors that request GPUs (pure).

    Spark asks YARN for ``yarn.io/gpu`` = ``spark.executor.resource.gpu.amount`` per
    executor container; each executor then runs the discovery script to learn which GPUs
    YARN gave it. When the profile requests GPUs without a script, tfyarn ships its own
    (``nvidia-smi`` inside the container, which YARN's GPU isolation restricts to the
    container's devices). Without a GPU request nothing is added.
    """
    amount = properties.get("spark.executor.resource.gpu.amount", "").strip()
    if not amount:
        return {}
    try:
        if float(amount) <= 0:
            raise ValueError
    except ValueError:
        raise ConfigError(
            f"spark.executor.resource.gpu.amount={amount!r} must be a positive number of GPUs"
        ) from None
    out: dict[str, str] = {}
    if not properties.get("spark.task.resource.gpu.amount"):
        # One task per executor (one role): the task gets every GPU of its executor.
        out["spark.task.resource.gpu.amount"] = amount
    if not properties.get("spark.executor.resource.gpu.discoveryScript"):
        out["spark.yarn.dist.files"] = _add_csv(
            properties.get("spark.yarn.dist.files"), f"{script}#{GPU_SCRIPT_ALIAS}"
        )
        out["spark.executor.resource.gpu.discoveryScript"] = f"./{GPU_SCRIPT_ALIAS}"
    return out


def gpu_script_path() -> str:
    """The GPU discovery script shipped in the package."""
    return str(Path(__file__).with_name("gpus.sh"))


def dev_cluster_marker(env: Mapping[str, str]) -> dict[str, Any] | None:
    """The dev YARN's marker when HADOOP_CONF_DIR was written by ``tfyarn yarn-dev``."""
    conf = env.get("HADOOP_CONF_DIR")
    if not conf:
        return None
    try:
        return dict(json.loads((Path(conf) / DEV_MARKER).read_text()))
    except (OSError, ValueError):
        return None


def dev_cluster_properties(
    properties: Mapping[str, str], marker: Mapping[str, Any], spark_home: str
) -> dict[str, str]:
    """Dev-YARN settings for keys the profile leaves unset (pure).

    Every container runs on this host, so Spark's jars are used where they are
    (``local:``) instead of being zipped and uploaded for each application, and every
    Spark process binds 127.0.0.1. Without HDFS the staging dir is the cluster's own
    folder under its ``viewfs://`` name.
    """
    wanted = {
        "spark.yarn.jars": f"local:{spark_home}/jars/*",
        # viewfs:// (the local FS under another name, see hadoop_conf.core_site): resources
        # on it are used in place, not copied per application. With HDFS the staging dir
        # is Spark's default on it (/user/<name>/.sparkStaging), as on a real cluster:
        # resources on the staging dir's file system are used in place, others copied.
        "spark.yarn.stagingDir": dev_cluster_uri(str(marker["staging_dir"])),
        "spark.yarn.appMasterEnv.SPARK_LOCAL_IP": "127.0.0.1",
        "spark.executorEnv.SPARK_LOCAL_IP": "127.0.0.1",
        "spark.driver.extraJavaOptions": _DEV_JAVA_OPTS,
        "spark.executor.extraJavaOptions": _DEV_JAVA_OPTS,
        "spark.yarn.am.extraJavaOptions": _DEV_JAVA_OPTS,
    }
    if str(marker.get("default_fs", "file:///")).startswith("hdfs://"):
        del wanted["spark.yarn.stagingDir"]
    return {k: v for k, v in wanted.items() if k not in properties}


def dev_cluster_uri(path: str) -> str:
    """The dev YARN's ``viewfs://`` URI of a local absolute path (other URIs unchanged)."""
    if "://" in path or not path.startswith("/"):
        return path
    return f"viewfs://{VIEWFS_MOUNT_TABLE}{path}"


def _spark_home(env: Mapping[str, str]) -> str:
    if env.get("SPARK_HOME"):
        return str(env["SPARK_HOME"])
    import pyspark

    return str(Path(pyspark.__file__).parent)


def prepare_plan(plan: SubmitPlan) -> SubmitPlan:
    """Add the YARN specifics to a submit plan; plans for other masters come back as is.

    Packs the environment (cached) when ``spark.tfyarn.yarn.envArchive`` is ``auto``.
    """
    props = dict(plan.properties)
    if not is_yarn(props):
        return plan
    env = dict(plan.env)
    if not (env.get("HADOOP_CONF_DIR") or env.get("YARN_CONF_DIR")):
        raise ConfigError(
            "the YARN profiles need HADOOP_CONF_DIR (the cluster's Hadoop configuration); "
            "for the dev YARN run `tfyarn yarn-dev up` and export what it prints"
        )
    additions: dict[str, str] = {}
    marker = dev_cluster_marker(env)
    if marker is not None:
        additions.update(dev_cluster_properties(props, marker, _spark_home(env)))
        env["SPARK_LOCAL_IP"] = "127.0.0.1"
    setting = props.pop("spark.tfyarn.yarn.envArchive", "auto").strip()
    if setting.lower() != "none":
        if setting.lower() == "auto" and env.get("TFYARN_ENV_ARCHIVE"):
            # A prebuilt archive pinned for this run (CI, or a test session that packed once).
            setting = env["TFYARN_ENV_ARCHIVE"]
        if setting.lower() == "auto":
            packed = ensure_env_archive()
            setting = str(packed.path)
            print(
                f"tfyarn: shipping the Python environment {packed.path} "
                f"({packed.size_bytes / 2**30:.1f} GiB"
                + (f", packed in {packed.pack_s:.0f} s" if packed.pack_s else ", cached")
                + ")",
                file=sys.stderr,
            )
        archive_arg = _archive_arg(setting, env, dev=marker is not None)
        print(f"tfyarn: environment archive {archive_arg}", file=sys.stderr)
        python = env.get("PYSPARK_DRIVER_PYTHON") or sys.executable
        additions.update(env_archive_properties({**props, **additions}, archive_arg, python))
    additions.update(gpu_properties({**props, **additions}, gpu_script_path()))
    props.update(additions)
    argv = _rebuild_argv(plan.argv, plan.properties, props)
    return replace(plan, argv=argv, env=env, properties=props)


def cluster_default_fs(env: Mapping[str, str]) -> str:
    """``fs.defaultFS`` of the cluster whose HADOOP_CONF_DIR is in ``env`` (``file:///``)."""
    conf = env.get("HADOOP_CONF_DIR") or env.get("YARN_CONF_DIR")
    found = site_property(Path(conf), "fs.defaultFS", "core-site.xml") if conf else None
    return found or "file:///"


def _archive_arg(setting: str, env: Mapping[str, str], *, dev: bool) -> str:
    """``ARCHIVE#tfyarn-env`` for spark.yarn.dist.archives from a path or URL.

    A local archive goes to the cluster file system once when that is HDFS
    (:func:`~tfyarn.yarn.envpack.publish_env_archive`); on the dev YARN without HDFS it
    is used in place through its viewfs:// name.
    """
    path, _, alias = setting.partition("#")
    default_fs = cluster_default_fs(env)
    if "://" not in path and default_fs.startswith("hdfs://"):
        path = publish_env_archive(Path(path), default_fs)
    elif dev:
        path = dev_cluster_uri(path)
    return f"{path}#{alias or ENV_ALIAS}"


def _rebuild_argv(argv: list[str], old: Mapping[str, str], new: Mapping[str, str]) -> list[str]:
    """Swap the properties' part of a spark-submit argv (see profiles.spark_submit_argv)."""
    from tfyarn.cluster.profiles import spark_submit_argv

    # spark_submit_argv writes two items per property right after the executable.
    head = 1 + 2 * len(old)
    if spark_submit_argv(argv[0], old, [], "", [])[:-1] != argv[:head]:
        raise YarnError("unexpected spark-submit command layout; cannot add the YARN settings")
    return [*spark_submit_argv(argv[0], new, [], "", [])[:-1], *argv[head:]]


#: What Spark's yarn-client UI start-up race prints (YarnAppWatcher.hit_ui_start_race).
_CONTEXT_FAILED = "Error initializing SparkContext"
_UI_RACE_SIGNS = (
    "java.util.ConcurrentModificationException",
    "No filter named org.apache.spark.deploy.yarn.AmIpFilter",
)


def spark_ui_start_race(output: str) -> bool:
    """Whether a yarn-client driver's ``output`` shows Spark's UI start-up race (pure).

    See :attr:`YarnAppWatcher.hit_ui_start_race`; for output of a plain spark-submit.
    """
    return _CONTEXT_FAILED in output and any(sign in output for sign in _UI_RACE_SIGNS)


class YarnAppWatcher:
    """Follows spark-submit's output for a YARN application and reports on it.

    Parameters
    ----------
    plan : SubmitPlan
        The (prepared) plan being run.
    out : TextIO
        Where tfyarn's own lines go (stderr by default, like spark-submit's logs).
    """

    def __init__(self, plan: SubmitPlan, out: TextIO | None = None) -> None:
        self.plan = plan
        self.out = out or sys.stderr
        self.app_id: str | None = None
        conf = plan.env.get("HADOOP_CONF_DIR") or plan.env.get("YARN_CONF_DIR") or ""
        self.rm = ResourceManagerClient(rm_web_url(Path(conf))) if conf else None
        self._context_failed = False
        self._race_sign = False

    @property
    def hit_ui_start_race(self) -> bool:
        """Whether a yarn-client driver failed in Spark's UI start-up race (see below).

        Spark 4's yarn-client driver attaches its UI handlers after the application
        master registered; the AM's ``AddWebUIFilter`` (the YARN proxy filter), handled
        on another thread, may modify them meanwhile, and ``SparkContext`` fails to
        start with a ConcurrentModificationException or "No filter named ...AmIpFilter"
        (a few times in the dev YARN's test runs, with its fast AM). No Spark job has run
        then: submitting once more is safe, and what a user would do.
        """
        return self.plan.deploy_mode == "client" and self._context_failed and self._race_sign

    def feed(self, line: str) -> None:
        """Look at one line of spark-submit output; announce the application once."""
        if _CONTEXT_FAILED in line:
            self._context_failed = True
        elif any(sign in line for sign in _UI_RACE_SIGNS):
            self._race_sign = True
        if self.app_id is not None:
            return
        match = APP_ID_RE.search(line)
        if match is None:
            return
        self.app_id = match.group(0)
        url = ""
        if self.rm is not None:
            try:
                url = self.rm.app(self.app_id).tracking_url
            except YarnError:
                url = ""
            url = url or f"{self.rm.base_url}/cluster/app/{self.app_id}"
        print(f"tfyarn: YARN application {self.app_id}", file=self.out, flush=True)
        print(f"tfyarn: tracking URL: {url}", file=self.out, flush=True)

    def finish(self, code: int) -> int:
        """Report the final YARN state; show a failed cluster-mode driver's output tail.

        Returns the exit status to use: spark-submit's, or 1 if YARN says the
        application did not succeed although spark-submit exited 0.
        """
        if self.app_id is None or self.rm is None:
            return code
        try:
            report = self.rm.wait_for_state(self.app_id, timeout_s=60.0)
        except YarnError as exc:
            print(f"tfyarn: could not read the final state of {self.app_id}: {exc}", file=self.out)
            return code
        print(
            f"tfyarn: {self.app_id} {report.state}/{report.final_status}",
            file=self.out,
            flush=True,
        )
        failed = report.final_status != "SUCCEEDED"
        if failed and self.plan.deploy_mode == "cluster":
            self._show_driver_tail()
        if failed and code == 0:
            return 1
        return code

    def _show_driver_tail(self, lines: int = 60) -> None:
        """Print the end of the cluster-mode driver's stderr/stdout (its traceback)."""
        try:
            text = fetch_logs(
                self.app_id or "",
                self.plan.env,
                am_only=True,
                log_files=("stdout", "stderr"),
                wait_s=60.0,
            )
        except (YarnError, ConfigError) as exc:
            print(f"tfyarn: the driver's logs are not available: {exc}", file=self.out)
            return
        tail = text.strip().splitlines()[-lines:]
        print(
            f"tfyarn: --- end of the driver's output ({self.app_id}, from the aggregated "
            f"logs; all of it: tfyarn logs {self.app_id}) ---",
            file=self.out,
        )
        print("\n".join(tail), file=self.out, flush=True)
