"""Sweeping stale role workspaces must never touch a job that is still starting."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from tfyarn.node.workspace import remove_workspace, sweep_stale_workspaces


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _role_dir(parent: Path, job: str, role: str, pids: list[int]) -> Path:
    workdir = parent / f"tfyarn-{job}" / role
    workdir.mkdir(parents=True)
    (workdir / "owner.pid").write_text(" ".join(map(str, pids)))
    return workdir


def test_sweep_removes_only_what_dead_processes_left(tmp_path: Path) -> None:
    dead = _role_dir(tmp_path, "old", "worker-0", [_dead_pid(), _dead_pid()])
    alive = _role_dir(tmp_path, "running", "worker-0", [os.getpid()])
    current = _role_dir(tmp_path, "mine", "ps-0", [_dead_pid()])
    young_empty = tmp_path / "tfyarn-starting"
    young_empty.mkdir()
    old_empty = tmp_path / "tfyarn-abandoned"
    old_empty.mkdir()
    long_ago = time.time() - 3600
    os.utime(old_empty, (long_ago, long_ago))

    removed = sweep_stale_workspaces(tmp_path, keep=current.parent)

    assert removed == [dead]
    assert not dead.exists()
    assert alive.exists()
    assert current.exists()  # the current job is never swept, even with dead pids
    assert young_empty.exists()  # a job whose roles may still be creating workspaces
    assert not old_empty.exists()


def test_removal_wins_over_a_thread_still_writing_into_the_workspace(tmp_path: Path) -> None:
    """A resumed role's own threads may write files while its watchdog removes it."""
    workdir = _role_dir(tmp_path, "job", "worker-1", [os.getpid()])
    for i in range(200):
        (workdir / f"cached-{i}").write_bytes(b"x" * 1024)
    started, stop = threading.Event(), threading.Event()

    def write() -> None:
        for i in range(100_000):  # bounded; ends once the folder is gone
            if stop.is_set():
                return
            try:
                (workdir / f"late-{i}").write_text("traceback")
            except FileNotFoundError:
                return
            started.set()

    writer = threading.Thread(target=write)
    writer.start()
    started.wait(timeout=5)
    try:
        gone = remove_workspace(workdir)
    finally:
        stop.set()
        writer.join(timeout=10)
    assert gone and not workdir.exists()
    assert not workdir.parent.exists()  # the job's folder went with its last role


def test_a_workspace_half_removed_by_a_killed_owner_is_removed_by_the_other(
    tmp_path: Path,
) -> None:
    """A cancelled task's Python worker is SIGKILLed, perhaps in the middle of removing
    the workspace it had renamed; the role process, ending after it, finishes the job."""
    workdir = _role_dir(tmp_path, "job", "worker-0", [_dead_pid(), os.getpid()])
    half_removed = workdir.with_name(f".{workdir.name}.removing-{_dead_pid()}")
    workdir.rename(half_removed)
    (half_removed / "cached-0").write_bytes(b"x")

    assert remove_workspace(workdir)
    assert not half_removed.exists()
    assert not workdir.parent.exists()


def test_the_sweep_takes_half_removed_workspaces_of_dead_processes(tmp_path: Path) -> None:
    job_dir = tmp_path / "tfyarn-old"
    abandoned = job_dir / f".worker-0.removing-{_dead_pid()}"
    abandoned.mkdir(parents=True)
    in_progress = job_dir / f".worker-1.removing-{os.getpid()}"
    in_progress.mkdir()

    removed = sweep_stale_workspaces(tmp_path)

    assert removed == [abandoned]
    assert in_progress.exists()
