"""What the tests that run ``ansible-playbook`` share: its environment and its recap.

``tests/`` is on ``sys.path`` in every test session (``tests/conftest.py`` puts it
there), so test modules import this as ``ansible_support``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["ansible_env", "play_recap"]


def ansible_env(root: Path, **settings: str) -> dict[str, str]:
    """This process's environment for ``ansible-playbook``, kept inside ``root``.

    Inherited ``ANSIBLE_*`` and ``PYTHON*`` variables are dropped (a developer's settings
    must not change a test); Ansible's home and temp dirs go under ``root``; output is
    plain text with one JSON line per result; modules are pipelined. ``settings`` are added
    last.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "PYTHON"))}
    env.update(
        ANSIBLE_HOME=str(root / "ansible-home"),
        ANSIBLE_LOCAL_TEMP=str(root / "ansible-tmp"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_CALLBACK_RESULT_FORMAT="json",
        ANSIBLE_LOCALHOST_WARNING="0",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
        ANSIBLE_DEPRECATION_WARNINGS="0",
        # Each task's module goes to the local python on stdin: no temp dir, copy and
        # cleanup commands per task (ansible.cfg pipelines only ssh connections).
        ANSIBLE_PIPELINING="1",
    )
    env.update(settings)
    return env


def play_recap(out: str, host: str = "localhost") -> dict[str, int]:
    """The PLAY RECAP counters of ``host`` (ok, changed, failed, ...) in the output."""
    m = re.search(rf"^{re.escape(host)}\s*:\s*(.*)$", out, re.MULTILINE)
    assert m, f"no PLAY RECAP for {host} in the output:\n{out[-3000:]}"
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))}
