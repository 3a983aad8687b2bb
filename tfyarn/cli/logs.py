"""``tfyarn logs APP_ID``: the aggregated YARN logs of an application.

The logs of every container (the driver's in cluster mode, each role's executor) as YARN
collected them when the application ended; a role's traceback is in its container's
stderr. Uses ``yarn logs`` when ``yarn`` is on PATH, else Hadoop's LogsCLI from the jars
tfyarn caches, against ``HADOOP_CONF_DIR``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``logs`` subcommand."""
    parser = subparsers.add_parser(
        "logs",
        help="print the aggregated YARN logs of an application",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("app_id", metavar="APP_ID", help="application_<timestamp>_<n>")
    parser.add_argument(
        "--am", action="store_true", help="only the application master (the driver in cluster mode)"
    )
    parser.add_argument(
        "--log-files",
        default="",
        help="comma-separated log files, e.g. stdout,stderr (default: all)",
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=60.0,
        help="seconds to wait for YARN to finish aggregating a just-ended application (60)",
    )
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from tfyarn.yarn.logs import fetch_logs
    from tfyarn.yarn.rest import check_app_id

    check_app_id(args.app_id)
    files = [f for f in args.log_files.split(",") if f]
    text = fetch_logs(args.app_id, am_only=args.am, log_files=files, wait_s=args.wait)
    sys.stdout.write(text)
    return 0
