"""Process probes shared by the layers that start processes (role tasks, dev YARN)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["pid_alive"]


def pid_alive(pid: int, *, reap: bool = False) -> bool:
    """Whether process ``pid`` still runs (a zombie does not).

    Parameters
    ----------
    pid : int
        The process.
    reap : bool
        Also reap it if it is a child of this process that has exited (so that the
        caller's own children do not linger as zombies).
    """
    if reap:
        with contextlib.suppress(ChildProcessError, OSError):
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: it exists
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False
