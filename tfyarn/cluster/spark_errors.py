"""Read Spark's stage-failure text: which task failed, why, in one clean sentence.

When a barrier task fails, ``collect()`` raises a Py4J error whose text is Spark's: a
header, the failed task's reason (a Python traceback, ``ExecutorLostFailure ...``), some
forty lines of JVM stack and an ``SQLSTATE``. :func:`parse_stage_failure` pulls out the
partition Spark blames, the kind of failure and the reason without the JVM's part, and
the :class:`~tfyarn.node.failure.RoleFailure` record a tfyarn task left in its exception
(:meth:`~tfyarn.node.failure.RoleFailure.note`). :func:`lost_role` turns a lost executor
or Python worker into the failure of the role that ran there. Pure functions: the unit
tests feed them texts captured from Spark 4.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from tfyarn.node.failure import RoleFailure

__all__ = ["StageFailure", "StageFailureKind", "lost_role", "parse_stage_failure", "strip_jvm"]

#: ``"python"``: the task's Python code raised; ``"executor_lost"``: the executor (JVM,
#: container, node) went away; ``"worker_crashed"``: the Python worker running the task
#: died; ``"killed"``: Spark killed the task (a consequence of another failure, or a
#: cancel); ``"other"``: anything else.
StageFailureKind = Literal["python", "executor_lost", "worker_crashed", "killed", "other"]

_BARRIER_TASK = re.compile(
    r"barrier task ResultTask\(\d+, (?P<partition>\d+)\) finished unsuccessfully\.\s*"
)
_LOST_TASK = re.compile(
    r"Lost task (?P<partition>\d+)\.\d+ in stage [\d.]+ \(TID \d+\)(?: \([^)]*\))?: "
)
_PY4J_HEAD = re.compile(r"^An error occurred while calling [\w.]+\.\s*\n?:?\s*")
_EXCEPTION_CLASS = re.compile(r"^(?:[a-z]\w*\.)+\w+(?:Exception|Error): ")
_PYTHON_HEAD = re.compile(
    r"^(?:\[PYTHON_EXCEPTION\] )?An exception was thrown from the Python worker\.?:?\s*"
)
_SQLSTATE = re.compile(r"\s*SQLSTATE: \w+")
_EXECUTOR_LOST = re.compile(r"ExecutorLostFailure|Executor \S+ (?:exited|lost)")
_JVM_LINE = re.compile(r"^\s+at [\w$.<>/]+\(.*\)$|^\s+\.\.\. \d+ more$|^Caused by: [\w$.]+")


def strip_jvm(text: str) -> str:
    """``text`` without JVM stack frames, ``Caused by`` lines and ``SQLSTATE`` codes."""
    lines = [line for line in text.splitlines() if not _JVM_LINE.match(line)]
    return _SQLSTATE.sub("", "\n".join(lines)).strip()


@dataclass(frozen=True)
class StageFailure:
    """What Spark's text says about a failed barrier stage.

    Attributes
    ----------
    partition : int or None
        The partition (tfyarn role) of the task Spark blames, when it names one.
    kind : str
        See :data:`StageFailureKind`.
    reason : str
        The failed task's reason without the JVM's part: for ``"python"`` the task's
        Python traceback.
    record : RoleFailure or None
        The failure record a tfyarn task left in its exception text.
    """

    partition: int | None
    kind: StageFailureKind
    reason: str
    record: RoleFailure | None

    @property
    def summary(self) -> str:
        """The reason's first line (for ``"python"``: the exception's line)."""
        lines = [line for line in self.reason.splitlines() if line.strip()]
        if not lines:
            return "(Spark gave no reason)"
        if self.kind == "python":
            exception = [line for line in lines if not line.startswith((" ", "Traceback"))]
            return exception[0] if exception else lines[-1]
        return lines[0]


def _kind(reason: str) -> StageFailureKind:
    if _EXECUTOR_LOST.match(reason):
        return "executor_lost"
    if "Python worker exited unexpectedly" in reason:
        return "worker_crashed"
    if reason.startswith("TaskKilled"):
        return "killed"
    if "An exception was thrown from the Python worker" in reason or "Traceback" in reason:
        return "python"
    return "other"


def parse_stage_failure(text: str) -> StageFailure:
    """What Spark's stage-failure ``text`` (``str()`` of the Py4J error) says."""
    partition = None
    reason = text
    for pattern in (_BARRIER_TASK, _LOST_TASK):
        found = pattern.search(text)
        if found is not None:
            partition = int(found["partition"])
            reason = text[found.end() :]
            break
    else:
        reason = _PY4J_HEAD.sub("", reason)
    reason = strip_jvm(reason)
    kind = _kind(reason)
    reason = _EXCEPTION_CLASS.sub("", reason, count=1)
    if kind == "python":
        reason = _PYTHON_HEAD.sub("", reason, count=1)
    return StageFailure(partition, kind, reason, RoleFailure.find(text))


def lost_role(stage: StageFailure, role: str, host: str) -> RoleFailure | None:
    """The failure of ``role`` (on ``host``) when its executor or Python worker was lost.

    None for any other kind of stage failure: the role's own error, or a task Spark
    killed because of another failure, is not the role's loss.
    """
    if stage.kind == "executor_lost":
        message = (
            f"role {role} on host {host} was lost with its Spark executor ({stage.summary}); "
            "a restart can help (max_restarts=)"
        )
    elif stage.kind == "worker_crashed":
        message = (
            f"role {role} on host {host} was lost: the Spark Python worker running its task "
            "died (killed from outside, e.g. by the out-of-memory killer); a restart can "
            "help (max_restarts=)"
        )
    else:
        return None
    where = f"the executor's log on host {host}"
    return RoleFailure(
        role, host, message, f"(no traceback: the role's executor was lost; see {where})", lost=True
    )
