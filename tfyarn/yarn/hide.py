"""Run a daemon with parts of the host's file system hidden from it and its children.

The dev YARN uses this to start its NodeManager as a node without the host's Python:
every container the NodeManager launches inherits its private mount namespace, in which
each hidden folder is an empty, tiny tmpfs and each hidden file is ``/dev/null``. A job that
runs there proves that the environment archive carries its own interpreter and standard
library (:mod:`tfyarn.yarn.interpreter`).

Paths to *keep* may lie inside hidden ones (Spark's jars inside the venv, which the dev
YARN uses in place through ``spark.yarn.jars=local:...``): each is bind-mounted aside
before hiding, and moved back onto an empty folder of the same name afterwards.

Needs ``unshare`` and ``mount`` (util-linux) and the right to mount: root, as on the CI
machine. :func:`can_hide` says whether this process has it.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path

from tfyarn.errors import ConfigError

__all__ = ["can_hide", "hiding_command"]


def can_hide() -> str | None:
    """None when :func:`hiding_command` can work here, else why not (for a skip reason)."""
    missing = [tool for tool in ("unshare", "mount") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} (util-linux) not installed"
    if os.geteuid() != 0:
        return "hiding paths needs a private mount namespace, which only root may make here"
    return None


def hiding_command(
    command: Sequence[str], hide: Sequence[str], keep: Sequence[str] = (), *, stage: Path
) -> list[str]:
    """``command`` wrapped to run with ``hide`` hidden and ``keep`` visible (pure).

    Parameters
    ----------
    command : sequence of str
        What to run; it is ``exec``'d, so its pid is the wrapper's.
    hide : sequence of str
        Absolute paths: folders become an empty tmpfs (64 KiB), files ``/dev/null``. A
        path that is gone by its turn (a link into a folder hidden before) is skipped.
    keep : sequence of str
        Absolute paths, inside hidden folders, that stay as they are.
    stage : Path
        An existing folder where kept paths wait while hiding (one subfolder each).

    Raises
    ------
    ConfigError
        A path is relative, or a kept path is not inside a hidden folder.
    """
    for p in (*hide, *keep):
        if not os.path.isabs(p):
            raise ConfigError(f"paths to hide or keep must be absolute, not {p!r}")
    for p in keep:
        if not any(Path(p).is_relative_to(h) for h in hide):
            raise ConfigError(f"{p} is kept visible but lies in no hidden folder: {list(hide)}")
    q = shlex.quote
    lines = ["set -e"]
    for i, p in enumerate(keep):
        lines.append(f"mkdir -p {q(str(stage / str(i)))}")
        lines.append(f"mount --bind {q(p)} {q(str(stage / str(i)))}")
    for p in hide:
        lines.append(
            f"if [ -d {q(p)} ]; then mount -t tmpfs -o size=64k,mode=0755 tfyarn-hidden {q(p)}; "
            f"elif [ -e {q(p)} ]; then mount --bind /dev/null {q(p)}; fi"
        )
    for i, p in enumerate(keep):
        lines.append(f"mkdir -p {q(p)}")  # in the (tiny) tmpfs over its hidden folder
        lines.append(f"mount --move {q(str(stage / str(i)))} {q(p)}")
    lines.append('exec "$@"')
    script = "\n".join(lines)
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "/bin/sh",
        "-c",
        script,
        "tfyarn-hide",
        *command,
    ]
