"""What a test may find left behind on this host, scoped to what the test itself made.

``make test`` runs three groups of tests at once (scripts/test-suite.sh), so
/dev/shm may gain entries of the other groups' live jobs while a test runs. A leaked
segment is one that appeared during the test and that no live process maps any more.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

SHM = Path("/dev/shm")


def shm_entries(*needles: str) -> set[str]:
    """Names in /dev/shm that contain any of ``needles`` (case-insensitive)."""
    if not SHM.exists():
        return set()
    wanted = [n.lower() for n in needles]
    return {p.name for p in SHM.iterdir() if any(n in p.name.lower() for n in wanted)}


def mapped_shm() -> set[str]:
    """Names of /dev/shm files that some live process has mapped."""
    names: set[str] = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:  # gone, or not ours to read
            continue
        for line in maps.splitlines():
            _, sep, path = line.partition("/dev/shm/")
            if sep:
                names.add(path.split(" ", 1)[0])
    return names


def leaked_shm(before: set[str], *needles: str) -> set[str]:
    """Entries named by ``needles`` that are new since ``before`` and mapped by no one."""
    new = shm_entries(*needles) - before
    return new - mapped_shm() if new else set()


def session_driver(spark: Any) -> str:
    """The ``--driver-url`` that every executor JVM of ``spark``'s session was started with.

    Not the application id: each group's local Spark cluster names its application
    ``app-<second it started>-0000``, so two groups that start in the same second share
    one (a test then counted the other group's 3 executors as its own). The driver's RPC
    address is one port per live driver.
    """
    conf = spark.sparkContext.getConf()
    host, port = conf.get("spark.driver.host"), conf.get("spark.driver.port")
    return f"spark://CoarseGrainedScheduler@{host}:{port}"


def executor_driver(argv: list[bytes]) -> str | None:
    """The ``--driver-url`` of an executor JVM's command line (None: not an executor)."""
    if not any(b"CoarseGrainedExecutorBackend" in a for a in argv):
        return None
    try:
        return argv[argv.index(b"--driver-url") + 1].decode()
    except (ValueError, IndexError):  # its argv already emptied on exit
        return None


def spark_driver_of(pid: int) -> str | None:
    """The driver URL of the executor JVM above ``pid`` (None: under none).

    Role processes of the other test groups' jobs (YARN containers, their own local Spark
    clusters) run on this host too; a test that looks for "new role processes" keeps those
    of its own session's executors (:func:`session_driver`).
    """
    while pid > 1:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if any(b"CoarseGrainedExecutorBackend" in a for a in argv):
                return executor_driver(argv)
            pid = _parent(pid)
        except (OSError, ValueError, IndexError):  # gone
            return None
    return None


def _parent(pid: int) -> int:
    """The parent of ``pid`` (OSError when it is gone)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def _ancestors(pid: int) -> set[int]:
    """``pid`` and the pids above it, up to init (bounded by the depth of the tree)."""
    seen: set[int] = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        try:
            pid = _parent(pid)
        except OSError:
            break
    return seen


def _socket_inodes(port: int) -> set[str]:
    """Inodes of the TCP sockets on local ``port`` that are not connections.

    The kernel's tables list listening sockets (0A) and closed ones still on the port
    (07); a socket that is only bound, never listening, is in neither.
    """
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] in ("0A", "07"):
                    inodes.add(fields[9])
    return inodes


def port_held_by_this_session(port: int) -> list[int]:
    """Pids under this pytest process (its Spark cluster, its roles) listening on ``port``.

    A port a job released may be bound again at once by anyone on the host: the other
    test group's JVMs and servers pick free ports the kernel hands out. Only a holder
    descended from this session can be the job's leak.
    """
    inodes = _socket_inodes(port)
    if not inodes:
        return []
    me = os.getpid()
    holders = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:  # gone, or not ours to read
            continue
        links = set()
        for fd in fds:
            try:
                links.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:  # closed meanwhile (the listing's own fd, for one)
                continue
        if any(f"socket:[{i}]" in links for i in inodes) and me in _ancestors(int(pid)):
            holders.append(int(pid))
    return holders
