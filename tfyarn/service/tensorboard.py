"""The ``tensorboard`` component: TensorBoard over the jobs' log directory.

Runs ``python -m tensorboard.main`` (replacing this process, so YARN's SIGTERM reaches
TensorBoard itself) bound to this node's address, after creating the log directory if
it is missing (TensorBoard would otherwise show nothing until the first job writes).
"""

from __future__ import annotations

import argparse
import os
import sys

from tfyarn.service.ps_server import bind_host

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Exec TensorBoard; returns only if that fails."""
    p = argparse.ArgumentParser(prog="python -m tfyarn.service.tensorboard", description=__doc__)
    p.add_argument("--logdir", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", help="address to listen on (default: the NodeManager's host)")
    args = p.parse_args(argv)
    if "://" not in args.logdir:
        os.makedirs(args.logdir, exist_ok=True)
    host = args.host or bind_host()
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", args.logdir]
    cmd += ["--host", host, "--port", str(args.port)]
    print("exec", " ".join(cmd), flush=True)
    os.execv(sys.executable, cmd)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
