"""How a role failed, as one record that travels from the executor to the driver.

A barrier task that sees its role fail builds a :class:`RoleFailure` and sends it twice:
over the heartbeat channel (the driver acts on it within a second) and as a note on the
exception the task raises (:meth:`RoleFailure.note`), which Spark carries inside its own
stage-failure text, where the driver finds it again (:meth:`RoleFailure.find`). Either
way the driver raises :meth:`RoleFailure.error`: a :class:`~tfyarn.errors.RoleLostError`
when the infrastructure took the role (a restart can help), a
:class:`~tfyarn.errors.RoleFailedError` when the role's own code failed.
"""

from __future__ import annotations

import json
import signal as signals
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

from tfyarn.errors import RoleFailedError, RoleLostError

__all__ = [
    "CRASH_SIGNALS",
    "EXIT_ORPHANED",
    "MARKER",
    "RoleFailure",
    "exit_failure",
    "likeliest_cause",
]

#: Exit status of a role process whose watchdog found its task or its executor's JVM
#: gone (:mod:`tfyarn.node.role_process`). A task that outlived its JVM reports it.
EXIT_ORPHANED = 3

#: Prefix of the one-line record in the task's exception text (see :meth:`RoleFailure.note`).
MARKER = "tfyarn-role-failure: "

#: Signals a process raises on itself when its own (native) code crashes: a restart runs the
#: same code again. Every other signal comes from outside (the kernel's out-of-memory
#: killer, a container kill, preemption, an operator): the role was lost.
CRASH_SIGNALS = frozenset(
    {
        signals.SIGSEGV,
        signals.SIGABRT,
        signals.SIGBUS,
        signals.SIGFPE,
        signals.SIGILL,
        signals.SIGSYS,
        signals.SIGTRAP,
    }
)

#: Characters of a traceback or output tail kept in a failure record.
TEXT_LIMIT = 8000


def _signal_name(number: int) -> str:
    try:
        return signals.Signals(number).name
    except ValueError:
        return f"signal {number}"


@dataclass(frozen=True)
class RoleFailure:
    """One role's failure, as the driver will report it.

    Parameters
    ----------
    role : str
        Task id of the failed role, e.g. ``"worker:1"``.
    host : str
        Host the role ran on.
    message : str
        The error's first line: what happened, naming the role and host.
    traceback : str
        The role's Python traceback, or its last output when it left none.
    exit_status : int, optional
        Exit status of the role process, when it exited.
    signal : int, optional
        The signal that killed the role process, when one did.
    lost : bool
        The infrastructure took the role (signal from outside, executor lost): a restart
        can help.
    peer_lost : bool
        The role's own error is a lost connection to a peer (a
        :class:`~tfyarn.errors.TransportError`): most likely a consequence of another
        role's failure, so that one is the cause to report.

    Raises
    ------
    ValueError
        An inconsistent record (empty role, both an exit status and a signal, ...).
    """

    role: str
    host: str
    message: str
    traceback: str
    exit_status: int | None = None
    signal: int | None = None
    lost: bool = False
    peer_lost: bool = False

    def __post_init__(self) -> None:
        problems = []
        for name in ("role", "host", "message", "traceback"):
            if not isinstance(getattr(self, name), str):
                problems.append(f"{name} must be a string, got {getattr(self, name)!r}")
        if not self.role:
            problems.append("role must name the failed role")
        for name in ("exit_status", "signal"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                problems.append(f"{name} must be an int or None, got {value!r}")
        if self.exit_status is not None and self.signal is not None:
            problems.append("a process either exits with a status or is killed by a signal")
        if self.signal is not None and isinstance(self.signal, int) and self.signal <= 0:
            problems.append(f"signal must be positive, got {self.signal}")
        if problems:
            raise ValueError("bad role failure record: " + "; ".join(problems))

    def error(self, spark_error: str = "") -> RoleFailedError:
        """The exception the driver raises for this failure."""
        cls = RoleLostError if self.lost else RoleFailedError
        return cls(
            self.role,
            self.host,
            self.traceback.strip()[-TEXT_LIMIT:] or "(no output)",
            self.message,
            exit_status=self.exit_status,
            signal=self.signal,
            spark_error=spark_error,
        )

    def carrier(self) -> RoleFailedError:
        """The exception a barrier task raises: :meth:`error`, with this record as a note.

        The note is not part of ``str(error)``; it is part of the formatted traceback,
        which is what Spark reports of a failed Python task.
        """
        error = self.error()
        error.add_note(self.note())
        return error

    def to_json(self) -> dict[str, object]:
        """The record as JSON-able values (see :meth:`from_json`)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> RoleFailure:
        """The record :meth:`to_json` wrote.

        Raises
        ------
        ValueError
            ``data`` is not such a record.
        """

        def text(name: str) -> str:
            value = data.get(name)
            if not isinstance(value, str):
                raise ValueError(f"bad role failure record: {name} is {value!r}, not a string")
            return value

        def number(name: str) -> int | None:
            value = data.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"bad role failure record: {name} is {value!r}, not an int")
            return value

        return cls(
            text("role"),
            text("host"),
            text("message"),
            text("traceback"),
            exit_status=number("exit_status"),
            signal=number("signal"),
            lost=bool(data.get("lost", False)),
            peer_lost=bool(data.get("peer_lost", False)),
        )

    def note(self) -> str:
        """One line that carries this record inside an exception's text."""
        return MARKER + json.dumps(self.to_json())

    @classmethod
    def find(cls, text: str) -> RoleFailure | None:
        """The record a :meth:`note` left in ``text`` (Spark's error text), if any."""
        at = text.find(MARKER)
        if at < 0:
            return None
        try:
            data, _ = json.JSONDecoder().raw_decode(text, at + len(MARKER))
            return cls.from_json(data) if isinstance(data, dict) else None
        except ValueError:
            return None


def exit_failure(
    role: str, host: str, returncode: int, traceback: str, output: str, *, starting: bool
) -> RoleFailure:
    """The failure of a role process that ended with ``returncode`` (non-zero).

    Parameters
    ----------
    role, host : str
        The role and its host.
    returncode : int
        ``Popen.returncode``: negative for a signal.
    traceback : str
        The Python traceback the role left (empty if it left none).
    output : str
        The role's last output lines, reported when it left no traceback.
    starting : bool
        The role ended before it was wired into the cluster.
    """
    where = f"role {role} on host {host}"
    when = " while starting" if starting else ""
    if returncode < 0:
        number = -returncode
        name = _signal_name(number)
        if number in CRASH_SIGNALS:
            message = (
                f"{where} crashed with signal {number} ({name}){when}: its native code "
                "(TensorFlow, a C extension) failed; its last output is below"
            )
            return RoleFailure(role, host, message, output, signal=number)
        message = (
            f"{where} was killed by signal {number} ({name}){when}: something outside it "
            "stopped it (the kernel's out-of-memory killer, a container kill or YARN "
            "preemption, an operator); a restart can help (max_restarts=)"
        )
        return RoleFailure(role, host, message, output, signal=number, lost=True)
    if returncode == EXIT_ORPHANED and not traceback.strip():
        message = (
            f"{where} ended{when} because its executor is gone (its JVM was stopped or "
            "killed: an executor kill, a container kill or YARN preemption, a lost node); a "
            "restart can help (max_restarts=)"
        )
        return RoleFailure(role, host, message, output, exit_status=returncode, lost=True)
    if traceback.strip():
        last = traceback.strip().splitlines()[-1]
        verb = "failed to start" if starting else "failed"
        return RoleFailure(role, host, f"{where} {verb}: {last}", traceback, exit_status=returncode)
    message = (
        f"{where} exited with status {returncode}{when} without a Python traceback; "
        "its last output is below"
    )
    return RoleFailure(role, host, message, output, exit_status=returncode)


def likeliest_cause(failures: Iterable[RoleFailure]) -> RoleFailure | None:
    """Of several roles' failures (earliest first), the one to report as the cause.

    A lost role comes first: its peers fail right after it, as their connections to it
    break. Then a role's own error, then a lost connection to a peer (a consequence of
    some other failure, unless it is all there is). The earliest wins among equals.
    """

    def rank(failure: RoleFailure) -> int:
        return 0 if failure.lost else 2 if failure.peer_lost else 1

    ordered = sorted(enumerate(failures), key=lambda item: (rank(item[1]), item[0]))
    return ordered[0][1] if ordered else None
