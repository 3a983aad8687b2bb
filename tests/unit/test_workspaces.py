"""Sweeping stale role workspaces must never touch a job that is still starting."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tfyarn.node.task import sweep_stale_workspaces


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
