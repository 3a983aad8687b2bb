"""One attempt of a run: :class:`Attempt`, as ``RunResult.attempts`` lists them.

A run (one :func:`tfyarn.run` call) is one or more attempts; each attempt is one fresh
barrier stage of every role. An attempt that fails for a cause a restart can help
(``max_restarts``) is followed by the next, which resumes from the newest checkpoint an
earlier attempt wrote.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

__all__ = ["KINDS", "Attempt", "AttemptKind"]

#: Why an attempt ended, when it failed: ``"lost"`` (the infrastructure took a role: a
#: signal, a lost executor, container or node), ``"error"`` (the role's own code
#: raised), ``"silent"`` (no heartbeat past ``silent_fail_after``), ``"stuck"``
#: (heartbeats but no step progress past ``stall_fail_after``).
AttemptKind = Literal["lost", "error", "silent", "stuck"]
KINDS: tuple[AttemptKind, ...] = ("lost", "error", "silent", "stuck")


def _clock(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(seconds))


@dataclass(frozen=True)
class Attempt:
    """What happened in one attempt of a run.

    Parameters
    ----------
    number : int
        1 for the first attempt, n for the (n - 1)-th restart.
    started, ended : float
        When the attempt started and ended (seconds since the epoch).
    cause : str
        Why it ended, the failure's first line; empty for the attempt that succeeded.
    kind : {"lost", "error", "silent", "stuck"} or None
        The kind of failure (see :data:`AttemptKind`); None for success.
    role, host, executor : str
        The role that failed, its host and its Spark executor (``host:port``), where
        known; empty for success.
    steps_redone : int or None
        Steps this attempt trained again because the one before it got further than
        the checkpoint this one resumed from; None for the first attempt or when the
        driver could not tell.
    resumed_from_step : int or None
        The global step of the checkpoint this attempt resumed from; None when it
        started from scratch.
    workers, wanted_workers : int or None
        The workers this attempt ran with, and those the run asked for: fewer when an
        elastic restart (``min_workers``) went on without executors YARN did not give
        back within ``allocation_timeout``. None where not recorded.

    Raises
    ------
    ValueError
        For an inconsistent record (a failure without a cause, negative steps, ...).
    """

    number: int
    started: float
    ended: float
    cause: str = ""
    kind: AttemptKind | None = None
    role: str = ""
    host: str = ""
    executor: str = ""
    steps_redone: int | None = None
    resumed_from_step: int | None = None
    workers: int | None = None
    wanted_workers: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.number, bool) or not isinstance(self.number, int) or self.number < 1:
            problems.append(f"number counts from 1, got {self.number!r}")
        if not (math.isfinite(self.started) and math.isfinite(self.ended)):
            problems.append(f"started/ended must be times, got {self.started!r}, {self.ended!r}")
        elif self.ended < self.started:
            problems.append(f"it ended ({self.ended}) before it started ({self.started})")
        if self.kind is not None and self.kind not in KINDS:
            problems.append(f"kind must be one of {', '.join(KINDS)} or None, got {self.kind!r}")
        if (self.kind is None) != (not self.cause):
            problems.append("a failed attempt needs a cause and kind, a successful one neither")
        for name in ("steps_redone", "resumed_from_step", "workers", "wanted_workers"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                problems.append(f"{name} must be a count (0 or more) or None, got {value!r}")
        if problems:
            raise ValueError("bad Attempt: " + "; ".join(problems))

    @property
    def succeeded(self) -> bool:
        """Whether this attempt finished the run."""
        return self.kind is None

    @property
    def scaled_down(self) -> bool:
        """Whether this attempt ran with fewer workers than the run asked for."""
        return None not in (self.workers, self.wanted_workers) and (
            self.workers < self.wanted_workers  # type: ignore[operator]
        )

    @property
    def duration(self) -> float:
        """Seconds the attempt took."""
        return self.ended - self.started

    def describe(self) -> str:
        """One line for logs and error messages.

        E.g. ``attempt 1 (12:00:01, 31 s): lost - worker:1 on 10.0.0.7 (executor
        10.0.0.7:40211): role worker:1 ... killed by signal 9``.
        """
        head = f"attempt {self.number} ({_clock(self.started)}, {self.duration:.0f} s)"
        if self.resumed_from_step is not None:
            head += f", resumed from step {self.resumed_from_step}"
        if self.steps_redone is not None:
            head += f", {self.steps_redone} steps redone"
        if self.scaled_down:
            head += f", with {self.workers} of {self.wanted_workers} workers"
        if self.succeeded:
            return f"{head}: succeeded"
        where = self.role or "?"
        if self.host:
            where += f" on {self.host}"
        if self.executor:
            where += f" (executor {self.executor})"
        first = self.cause.strip().splitlines()[0] if self.cause.strip() else self.cause
        return f"{head}: {self.kind} - {where}: {first}"
