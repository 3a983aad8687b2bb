"""The role process's watchdog sees the executor's JVM above its task, not only its parent.

A process tree as Spark's: a process named ``java`` (a shell script of that name: Linux
names a script's process after its file) runs a Python child, as the executor JVM runs
the Python worker above a role process.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tfyarn.node.role_process import (
    EXIT_FAILED,
    EXIT_ORPHANED,
    _Ancestor,
    _proc_stat,
    _task_ancestors,
)

_CHILD = (
    "import os, sys; from tfyarn.node.role_process import _task_ancestors; "
    "print(' '.join(f'{a.pid}:{a.started}' for a in _task_ancestors(os.getpid())), flush=True); "
    "sys.stdin.read()"
)


def test_the_chain_ends_at_the_jvm_and_breaks_when_it_dies(tmp_path: Path) -> None:
    java = tmp_path / "java"
    java.write_text(f'#!/bin/sh\n"{sys.executable}" -c "{_CHILD}"\n')
    java.chmod(0o755)
    jvm = subprocess.Popen([str(java)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert jvm.stdout is not None
        line = jvm.stdout.readline().split()
        chain = [_Ancestor(int(p), int(s)) for p, s in (item.split(":") for item in line)]
        # The child itself, then the "java" above it; the test's own processes not at all.
        assert [a.pid for a in chain][1:] == [jvm.pid], (line, jvm.pid)
        assert all(a.alive() for a in chain)
        os.kill(jvm.pid, signal.SIGKILL)
        jvm.wait(timeout=10)
        assert not chain[1].alive()
    finally:
        jvm.kill()
        jvm.wait(timeout=10)


def test_without_a_jvm_above_only_the_parent_is_watched() -> None:
    chain = _task_ancestors(os.getpid())
    stat = _proc_stat(os.getpid())
    assert stat is not None
    assert chain == [_Ancestor(os.getpid(), stat[2])]


def test_a_reused_pid_is_not_the_process_watched() -> None:
    stat = _proc_stat(os.getpid())
    assert stat is not None
    assert _Ancestor(os.getpid(), stat[2]).alive()
    assert not _Ancestor(os.getpid(), stat[2] + 1).alive()
    assert not _Ancestor(2**22 + 1, 0).alive()  # above the largest pid_max: no such process


def test_a_role_whose_task_is_gone_as_it_starts_leaves_no_workspace(tmp_path: Path) -> None:
    """The task cancelled while its role process starts (Ctrl-C on the driver).

    The watchdog sees the task gone and removes the workspace while the main thread,
    finding its job spec renamed away, exits: that exit must wait for the removal, which
    it cut short before (the renamed folder stayed). Every other try the role's log, a
    pipe to the task, is closed too, as when the task was killed: writing the traceback
    there must not end the process either. A few tries: it is a race.
    """
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    job_dir = tmp_path / "tfyarn-job"
    for i in range(4):
        workdir = job_dir / f"worker-{i}"
        workdir.mkdir(parents=True)
        (workdir / "job.pkl").write_bytes(b"no job spec: the main thread fails at once")
        control_r, control_w = os.pipe()
        log_r, log_w = os.pipe()
        if i % 2:
            os.close(log_r)  # the task's end of the role's log
        with socket.socket() as tf_port:
            tf_port.bind(("127.0.0.1", 0))
            fds = (control_r, control_w, tf_port.fileno())
            role = subprocess.Popen(
                [sys.executable, "-m", "tfyarn.node.role_process", str(workdir),
                 *map(str, fds), str(gone.pid)],
                pass_fds=fds, stdout=log_w, stderr=log_w,
            )  # fmt: skip
            os.close(log_w)
            log = b""
            if not i % 2:
                with os.fdopen(log_r, "rb") as reader:
                    log = reader.read()
            returncode = role.wait(timeout=60)
        os.close(control_r)
        os.close(control_w)
        assert returncode in (EXIT_ORPHANED, EXIT_FAILED), log[-2000:]
        assert not job_dir.exists(), (i, sorted(job_dir.rglob("*")), log[-2000:])
