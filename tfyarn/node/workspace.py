"""Role workspaces: one folder per role and attempt, under one folder per job and host.

A role's workspace holds what its task hands the role process (the job spec, the cached
input) and what the role leaves for its task (``error.txt``); the role's checkpoint
temp files go there too. Made by the barrier task, removed by whichever of the task and
the role process ends last; a crash of both is swept up by the next job on the host.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path

from tfyarn.node.job import JobSpec
from tfyarn.processes import pid_alive

__all__ = ["make_workspace", "remove_workspace", "sweep_stale_workspaces", "workspace_root"]


def workspace_root(job: JobSpec) -> Path:
    """Parent of this job's role workspaces on this host.

    ``job.tmp_root`` if set; in a YARN container its working directory (YARN deletes it
    with the container, even when the container is killed outright); else the temp dir.
    """
    if job.tmp_root:
        parent = Path(job.tmp_root)
    elif os.environ.get("CONTAINER_ID"):
        parent = Path.cwd()
    else:
        parent = Path(tempfile.gettempdir())
    return parent / f"tfyarn-{job.job_id}"


#: An empty job directory younger than this may belong to a job whose roles are still
#: creating their workspaces on this host; the sweep leaves it alone.
_EMPTY_JOB_DIR_GRACE = 120.0


def sweep_stale_workspaces(parent: Path, *, keep: Path | None = None) -> list[Path]:
    """Remove role workspaces whose owning processes are all gone; return what was removed.

    A role process removes its workspace itself when its task dies, but a host crash or a
    SIGKILL of both can still leave one behind; the next job on the host cleans it up.
    Empty job directories go too, once they are old enough that no role of theirs can
    still be starting; ``keep`` (the current job's directory) is never touched.
    """
    removed = []
    now = time.time()
    for job_dir in parent.glob("tfyarn-*"):
        # The current job's folder is left alone even where its pids look dead: roles
        # in other containers (other pid namespaces) of this host may share it.
        if job_dir == keep:
            continue
        removed += _sweep_job_dir(job_dir)
        with contextlib.suppress(OSError):
            if now - job_dir.stat().st_mtime > _EMPTY_JOB_DIR_GRACE:
                job_dir.rmdir()  # only succeeds when empty
    return removed


def _sweep_job_dir(job_dir: Path) -> list[Path]:
    """Remove the workspaces in one job's folder whose owners are all gone.

    Two kinds: a workspace whose ``owner.pid`` names no live process (task and role
    process both killed), and a workspace half removed by a process killed in the middle
    of it (``.<name>.removing-<pid>``, ``<pid>`` gone). A workspace without ``owner.pid``
    is still being made and is left alone.
    """
    removed = []
    for owner in job_dir.glob("*/owner.pid"):
        with contextlib.suppress(OSError, ValueError):
            pids = [int(p) for p in owner.read_text().split()]
            if not any(pid_alive(p) for p in pids):
                shutil.rmtree(owner.parent, ignore_errors=True)
                removed.append(owner.parent)
    for doomed in job_dir.glob(".*.removing-*"):
        with contextlib.suppress(ValueError):
            if not pid_alive(int(doomed.name.rsplit("-", 1)[1])):
                shutil.rmtree(doomed, ignore_errors=True)
                removed.append(doomed)
    return removed


def make_workspace(workdir: Path, attempts: int = 5) -> None:
    """Create the role's workspace; retry if its job directory vanishes meanwhile.

    Another role of the same job on this host may remove the (then empty) job directory
    as it exits (:mod:`tfyarn.node.role_process`), between our creating it and our
    subdirectory.
    """
    for attempt in range(attempts):
        try:
            # 0700: the workspace holds the job spec, and so the job secret and key.
            workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
            return
        except FileNotFoundError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.05)


def remove_workspace(workdir: Path, budget: float = 1.0) -> bool:
    """Remove ``workdir``, and the job's folder above it once that is empty; whether gone.

    The role's own threads may still write into the workspace while it goes (a resumed
    role's training loop leaving its traceback, a checkpoint's temp file). Renamed first,
    the folder is out of their way at once: a file written by path then fails, where it
    would otherwise land behind ``rmtree``'s listing and keep the folder. What is written
    through the role's working directory (the folder itself) can still land, so the
    removal is retried for up to ``budget`` seconds.

    Task and role process both call this, and either may be killed half-way (a
    cancelled Spark task's Python worker is SIGKILLed): the other then finds the
    workspace already renamed, and removes the half-removed folder as well.
    """
    doomed = workdir.with_name(f".{workdir.name}.removing-{os.getpid()}")
    try:
        os.rename(workdir, doomed)
    except FileNotFoundError:
        pass  # already renamed by the other of task and role process
    except OSError:
        doomed = workdir  # e.g. a leftover of that name: remove in place
    deadline = time.monotonic() + budget
    while True:
        # Ours, and the other owner's if it was killed while removing (or is at it now:
        # two rmtrees of one folder, errors ignored, leave nothing).
        targets = [doomed, *workdir.parent.glob(f".{workdir.name}.removing-*")]
        for target in targets:
            shutil.rmtree(target, ignore_errors=True)
        if not any(t.exists() for t in targets) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    with contextlib.suppress(OSError):
        workdir.parent.rmdir()  # the job's folder, once its last role on this host is gone
    return not workdir.exists() and not doomed.exists()
