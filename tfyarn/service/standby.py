"""The ``standby`` component: warm spare capacity next to the parameter servers.

A standby worker holds its container's resources in the queue and keeps the environment
localised on its node. It proves the environment works (imports TensorFlow and tfyarn's
native extension, exactly what a role needs) and connects to every ps of the service
(authenticated with the service secret) before it writes its report, so that
``tfyarn service status`` shows which nodes are ready to take training work and can
reach the ps. Operators flex it up before a burst of jobs and down afterwards; it stops
on SIGTERM and removes its report.

Reports: ``<state_dir>/standby/<container id>.json`` (host, pid, versions, the ps it
reached, last refresh), refreshed every ``--interval`` seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["main", "standby_reports"]


def standby_reports(state_dir: str | Path) -> list[dict[str, Any]]:
    """The reports of the standby workers of a service (any order)."""
    out = []
    for path in sorted((Path(state_dir) / "standby").glob("*.json")):
        with contextlib.suppress(OSError, ValueError):
            out.append(json.loads(path.read_text()))
    return out


def _reachable_ps(service: str) -> dict[str, bool]:
    """Which ps of the service accept an authenticated connection from here."""
    from tfyarn.errors import TFYarnError
    from tfyarn.service.attach import ServiceConnector, attach

    try:
        attachment = attach(service, wait_s=10.0)
    except TFYarnError as exc:
        print(f"standby: cannot attach to service {service}: {exc}", flush=True)
        return {}
    conn = ServiceConnector(attachment, f"standby/{socket.gethostname()}")
    reached = {}
    for ps in attachment.ps:
        try:
            conn.connect(ps).close()
            reached[ps] = True
        except (OSError, TFYarnError):
            reached[ps] = False
    return reached


def main(argv: list[str] | None = None) -> int:
    """Verify the environment, then report every ``--interval`` seconds until SIGTERM."""
    p = argparse.ArgumentParser(prog="python -m tfyarn.service.standby", description=__doc__)
    p.add_argument("--service", required=True)
    p.add_argument("--state-dir", required=True)
    p.add_argument("--interval", type=float, default=30.0)
    args = p.parse_args(argv)
    import tensorflow as tf

    import tfyarn._native  # noqa: F401  (the C extension must load from the archive)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    folder = Path(args.state_dir) / "standby"
    folder.mkdir(parents=True, exist_ok=True)
    report = folder / f"{os.environ.get('CONTAINER_ID', socket.gethostname())}.json"
    started = time.time()
    try:
        while not stop.is_set():
            info = {
                "host": socket.gethostname(),
                "container": os.environ.get("CONTAINER_ID", ""),
                "pid": os.getpid(),
                "tensorflow": tf.__version__,
                "started": started,
                "refreshed": time.time(),
                "ps_reachable": _reachable_ps(args.service),
            }
            tmp = report.with_suffix(".tmp")
            tmp.write_text(json.dumps(info))
            tmp.replace(report)
            print(f"standby ready: {json.dumps(info)}", flush=True)
            stop.wait(args.interval)
    finally:
        with contextlib.suppress(OSError):
            report.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
