"""``tfyarn yarn-dev up|down|status``: a real Hadoop YARN on 127.0.0.1 for development.

``up`` starts a ResourceManager and a NodeManager (separate ``java`` processes, Hadoop jars
fetched once from Maven Central and cached), with ``--hdfs`` also a NameNode and a
DataNode whose HDFS becomes the cluster file system (``fs.defaultFS``), waits until the
NodeManager is RUNNING and prints the ``HADOOP_CONF_DIR`` to export; with
``--hide-python`` the NodeManager and its containers do not see this host's Python, as on
a node without it. ``down`` stops what ``up`` started.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tfyarn.errors import ConfigError

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``yarn-dev`` subcommand."""
    parser = subparsers.add_parser(
        "yarn-dev",
        help="start/stop/inspect a pseudo-distributed Hadoop YARN on 127.0.0.1",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("action", choices=("up", "down", "status"))
    parser.add_argument(
        "--dir",
        help="cluster folder: conf, logs, NM dirs (default: ~/.cache/tfyarn/yarn-dev, "
        "or $TFYARN_CACHE_DIR/yarn-dev)",
    )
    parser.add_argument(
        "--memory-mb", type=int, default=10240, help="memory the NodeManager offers (10240)"
    )
    parser.add_argument("--vcores", type=int, default=8, help="vcores the NodeManager offers (8)")
    parser.add_argument(
        "--gpus", type=int, default=0, help="yarn.io/gpu the NodeManager advertises (0: none)"
    )
    parser.add_argument(
        "--services",
        action="store_true",
        help="with the YARN Services API (/app/v1/services) and the registry's ZooKeeper, "
        "as `tfyarn service` needs (Hadoop 3.4.2: the newest with services jars)",
    )
    parser.add_argument(
        "--hdfs",
        action="store_true",
        help="with HDFS (a NameNode and a DataNode) as the cluster file system: "
        "hdfs:// model_dir, checkpoints and environment archive, logs aggregated into it",
    )
    parser.add_argument(
        "--hide-python",
        action="store_true",
        help="run the NodeManager as a node without this host's Python (the venv, its base "
        "interpreter and /usr's python3 hidden in a private mount namespace; needs root): "
        "jobs must run the environment archive's own interpreter",
    )
    parser.add_argument(
        "--free-ports",
        action="store_true",
        help="use free ports instead of Hadoop's defaults (8088, 8032, ...)",
    )
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait (180)")
    parser.add_argument("--json", action="store_true", help="status as JSON")
    parser.set_defaults(func=_main)


def _cluster(args: argparse.Namespace) -> Any:
    from tfyarn.yarn.devcluster import DevYarn, default_base_dir
    from tfyarn.yarn.hadoop_conf import DevYarnSettings

    base = Path(args.dir).expanduser().resolve() if args.dir else default_base_dir()
    ports: dict[str, int] = {}
    # `up --free-ports` draws its ports at start (up_on_free_ports), not here.
    if args.action != "up":
        # down/status: the ports of the running cluster are in its state file.
        state = DevYarn(DevYarnSettings(base_dir=base)).load_state()
        ports = dict(state.ports) if state else {}
        args.services = bool(state and state.services)
        args.hdfs = bool(state and state.hdfs)
    if args.memory_mb < 1024:
        raise ConfigError(f"--memory-mb {args.memory_mb} is too small: give at least 1024")
    settings = DevYarnSettings(
        base_dir=base,
        ports=ports,
        nm_memory_mb=args.memory_mb,
        nm_vcores=args.vcores,
        nm_gpus=args.gpus,
        services=args.services,
        hdfs=args.hdfs,
    )
    if args.action == "up" and args.hide_python:
        from tfyarn.yarn.devcluster import hide_host_python

        settings = hide_host_python(settings)
    return DevYarn(settings)


def _main(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    if args.action == "up":
        if args.free_ports:
            from tfyarn.yarn.devcluster import up_on_free_ports

            cluster, state = up_on_free_ports(cluster.settings, timeout_s=args.timeout)
        else:
            state = cluster.up(timeout_s=args.timeout)
        print(
            f"dev YARN up in {state.startup_s:.1f} s (Hadoop {state.hadoop_version}): "
            f"ResourceManager pid {state.pids['resourcemanager']}, "
            f"NodeManager pid {state.pids['nodemanager']}"
        )
        print(f"ResourceManager UI/REST: {state.rm_web_url}")
        if state.services:
            print(f"YARN Services API: {state.rm_web_url}/app/v1/services")
        if state.hdfs:
            print(f"HDFS: {state.default_fs} (NameNode UI/WebHDFS: {state.webhdfs_url})")
        if state.nm_hidden:
            print(f"hidden from the NodeManager's containers: {' '.join(state.nm_hidden)}")
        print("export for spark-submit / tfyarn submit --profile yarn-client|yarn-cluster:")
        print(f"export HADOOP_CONF_DIR={state.conf_dir}")
        return 0
    if args.action == "down":
        stopped = cluster.down()
        print("dev YARN stopped" if stopped else f"no dev YARN running from {cluster.base_dir}")
        return 0
    status = cluster.status()
    if args.json:
        print(json.dumps(status, indent=2))
    elif not status["running"]:
        print(f"dev YARN: not running ({status['base_dir']})")
    else:
        print(f"dev YARN: running (Hadoop {status['hadoop_version']}), {status['rm_web_url']}")
        print(f"HADOOP_CONF_DIR={status['hadoop_conf_dir']}")
        if status.get("hdfs"):
            print(f"HDFS: {status['default_fs']} (WebHDFS: {status['webhdfs_url']})")
        for node in status.get("nodes", []):
            print(
                f"node {node['id']}: {node['state']}, {node['memory_mb']} MB, "
                f"{node['vcores']} vcores"
            )
        print(f"running applications: {', '.join(status.get('running_apps', [])) or 'none'}")
    return 0 if status["running"] else 3
