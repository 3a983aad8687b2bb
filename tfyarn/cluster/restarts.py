"""The restart loop: a run survives the loss of any role by starting a fresh attempt.

:func:`run_attempts` runs one attempt (one barrier stage of every role) after another
until one succeeds, a failure that a restart cannot help ends the run, or the restarts
are used up. The decisions are small pure functions, tested without Spark:

- :func:`should_restart`: a role lost to the infrastructure (:class:`RoleLostError`:
  a signal, a lost executor or container, silence, no progress) restarts while
  ``max_restarts`` allows; a role whose own code raised fails the run at once, with its
  traceback, unless the user asked for ``retry_on_errors``;
- :func:`pick_cause`: when a role is lost, its peers fail too a moment later (their
  connections to it break); the loss is the attempt's cause, not their errors;
- :func:`exhausted_message`: the one error of a run whose restarts are used up, one line
  per attempt.

:class:`LivenessWatch` is the driver's check for roles that stopped (no heartbeat past
``silent_fail_after``) or stalled (heartbeats but no step progress past
``stall_fail_after``): either ends the attempt with a :class:`RoleLostError`, so that the
run restarts instead of hanging. :class:`AttemptProgress` follows how far an attempt
trained, for the steps the next one redoes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from tfyarn.cluster.attempts import Attempt, AttemptKind
from tfyarn.errors import (
    ConfigError,
    RestartsExhaustedError,
    RoleFailedError,
    RoleLostError,
    RoleSilentError,
    RoleStuckError,
)
from tfyarn.node.failure import EXIT_ORPHANED

if TYPE_CHECKING:
    from tfyarn.cluster.progress import RoleState

__all__ = [
    "AttemptProgress",
    "LivenessWatch",
    "RestartPolicy",
    "RoleSilentError",
    "RoleStuckError",
    "Stalled",
    "exhausted_message",
    "failure_kind",
    "least_executors",
    "pick_cause",
    "run_attempts",
    "should_restart",
    "steps_redone",
]

log = logging.getLogger("tfyarn")

R = TypeVar("R")


@dataclass(frozen=True)
class RestartPolicy:
    """How many times a run may restart, and on what.

    Parameters
    ----------
    max_restarts : int
        Restarts allowed after the first attempt (0: the first failure ends the run).
    retry_on_errors : bool
        Restart on exceptions raised by the roles' own code too (by default those fail
        the run at once: running the same code again would fail again).
    """

    max_restarts: int = 0
    retry_on_errors: bool = False

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_restarts, bool)
            or not isinstance(self.max_restarts, int)
            or self.max_restarts < 0
        ):
            raise ConfigError(f"max_restarts must be 0 or more, got {self.max_restarts!r}")

    @property
    def attempts(self) -> int:
        """The most attempts a run makes."""
        return self.max_restarts + 1


def failure_kind(error: RoleFailedError) -> AttemptKind:
    """The :data:`~tfyarn.cluster.attempts.AttemptKind` of a failed attempt's cause."""
    if isinstance(error, RoleSilentError):
        return "silent"
    if isinstance(error, RoleStuckError):
        return "stuck"
    return "lost" if error.restartable else "error"


def should_restart(
    error: BaseException, attempts: Sequence[Attempt], policy: RestartPolicy
) -> bool:
    """Whether the run starts another attempt after ``error`` ended the last of ``attempts``.

    Only role failures restart: bad settings, too few executors, the job's own
    ``timeout`` and Ctrl-C end the run whatever the policy.
    """
    if not isinstance(error, RoleFailedError):
        return False
    if len(attempts) >= policy.attempts:
        return False
    return error.restartable or policy.retry_on_errors


def pick_cause(first: RoleFailedError, others: Iterable[BaseException]) -> RoleFailedError:
    """The cause of an attempt that several roles failed: the first loss, else ``first``.

    A lost role takes its peers down with it (their connections to it break, and they
    raise); their errors follow from the loss, which a restart can help. Of two reports
    of one role's loss, Spark's (the executor lost, with its reason) says more than the
    role's task saying the executor is gone (:data:`~tfyarn.node.failure.EXIT_ORPHANED`),
    which may arrive first.
    """
    losses = [c for c in (first, *others) if isinstance(c, RoleFailedError) and c.restartable]
    if not losses:
        return first
    head = losses[0]
    if head.exit_status == EXIT_ORPHANED:
        for other in losses[1:]:
            if other.role == head.role and other.spark_error:
                return other
    return head


def exhausted_message(attempts: Sequence[Attempt], policy: RestartPolicy) -> str:
    """The text of :class:`RestartsExhaustedError`: what ended each attempt."""
    lines = "\n".join(f"- {a.describe()}" for a in attempts)
    return (
        f"the job failed in all {len(attempts)} attempts (max_restarts={policy.max_restarts}); "
        f"what ended each:\n{lines}\n"
        "The same role or host failing every time points at that host or at the job's "
        "resources (memory, disk); otherwise raise max_restarts (spark.tfyarn.maxRestarts, "
        "tfyarn submit --max-restarts)."
    )


@dataclass
class AttemptProgress:
    """How far one attempt got, as the driver saw it (updated while the attempt runs).

    Attributes
    ----------
    resumed_from : int or None
        The global step of the checkpoint the attempt resumed from (the trainers report
        it; before they do, what the driver found in the checkpoint folder).
    reached : int or None
        The highest global step a trainer reported.
    executors : dict
        Task id -> the Spark executor the role ran in.
    workers, wanted_workers : int or None
        The workers the attempt runs with and those the run asked for (set once its
        executors are there; fewer after an elastic scale-down).
    """

    resumed_from: int | None = None
    reached: int | None = None
    executors: dict[str, str] = field(default_factory=dict)
    workers: int | None = None
    wanted_workers: int | None = None

    def observe(self, states: Iterable[RoleState], trainers: Iterable[str]) -> None:
        """Fold the roles' latest heartbeats in."""
        states = list(states)
        for s in states:
            executor = s.metrics.get("executor")
            if isinstance(executor, str):
                self.executors[s.task_id] = executor
            resumed = s.metrics.get("resumed_from_step")
            if isinstance(resumed, int) and not isinstance(resumed, bool):
                self.resumed_from = resumed
        names = set(trainers)
        for s in states:
            if s.task_id not in names:
                continue
            step = s.metrics.get("global_step")
            if not isinstance(step, int) or isinstance(step, bool):
                # Steps of this attempt only (the progress callback counts from 0).
                step = None if s.step is None else (self.resumed_from or 0) + s.step
            if step is not None and (self.reached is None or step > self.reached):
                self.reached = step


def steps_redone(previous: AttemptProgress | None, current: AttemptProgress) -> int | None:
    """Steps ``current`` trains again: where ``previous`` got, less where ``current`` resumed."""
    if previous is None or previous.reached is None:
        return None
    return max(previous.reached - (current.resumed_from or 0), 0)


@dataclass(frozen=True)
class Stalled:
    """A role the driver takes for lost: silent (no heartbeat) or stuck (no progress)."""

    task_id: str
    host: str
    kind: AttemptKind
    quiet_for: float
    limit: float

    def error(self) -> RoleLostError:
        """The error that ends the attempt."""
        if self.kind == "silent":
            what = (
                f"sent no heartbeat for {self.quiet_for:.0f} s (silent_fail_after="
                f"{self.limit:g} s): it is stopped, frozen or cut off from the driver"
            )
            cls: type[RoleLostError] = RoleSilentError
        else:
            what = (
                f"made no step progress for {self.quiet_for:.0f} s while alive "
                f"(stall_fail_after={self.limit:g} s): it is blocked, e.g. on a lost peer"
            )
            cls = RoleStuckError
        return cls(
            self.task_id,
            self.host,
            f"(no traceback: the driver ended the attempt because the role {what})",
            f"role {self.task_id} on host {self.host} {what}",
        )


class LivenessWatch:
    """Finds roles that went silent or stopped making progress.

    Parameters
    ----------
    silent_after : float or None
        Seconds without a heartbeat after which a running role is lost; None: never.
    stall_after : float or None
        Seconds without a new step (while heartbeats arrive) after which a trainer is
        stuck; None: never. Counted from the role's first reported step, so that set-up
        and TensorFlow's import are not taken for a stall.
    """

    def __init__(self, silent_after: float | None, stall_after: float | None) -> None:
        self.silent_after = silent_after
        self.stall_after = stall_after
        self._steps: dict[str, tuple[int, float]] = {}

    def check(self, states: Iterable[RoleState], now: float | None = None) -> Stalled | None:
        """The first role (of ``states``, the progress server's) that is silent or stuck."""
        now = time.monotonic() if now is None else now
        for s in states:
            if s.state in ("starting", "done", "failed"):
                continue  # not yet heard from (startup_timeout covers it), or ended
            host = s.host or "?"
            quiet = now - s.last_seen
            if self.silent_after is not None and quiet > self.silent_after:
                return Stalled(s.task_id, host, "silent", quiet, self.silent_after)
            if self.stall_after is None or s.step is None:
                continue
            mark = self._steps.get(s.task_id)
            if mark is None or mark[0] != s.step:
                self._steps[s.task_id] = (s.step, now)
            elif now - mark[1] > self.stall_after:
                return Stalled(s.task_id, host, "stuck", now - mark[1], self.stall_after)
        return None


def least_executors(number: int, roles: int, workers: int, min_workers: int | None) -> int | None:
    """The fewest executors attempt ``number`` of a ``roles``-role plan may start with.

    None (every role needs its executor) for a first attempt and without ``min_workers``;
    a restart with ``min_workers`` may go on with that many workers and every other role
    (chief, ps, evaluator) once ``allocation_timeout`` passed.
    """
    if number <= 1 or min_workers is None or min_workers >= workers:
        return None
    return roles - workers + min_workers


def _failed(
    number: int,
    started: float,
    error: RoleFailedError,
    progress: AttemptProgress,
    redone: int | None,
) -> Attempt:
    return Attempt(
        number=number,
        started=started,
        ended=time.time(),
        cause=str(error).splitlines()[0] if str(error) else type(error).__name__,
        kind=failure_kind(error),
        role=error.role,
        host=error.host,
        executor=progress.executors.get(error.role, ""),
        steps_redone=redone,
        resumed_from_step=progress.resumed_from,
        workers=progress.workers,
        wanted_workers=progress.wanted_workers,
    )


def run_attempts(
    launch: Callable[[int, AttemptProgress], R],
    policy: RestartPolicy,
    *,
    resume_step: Callable[[int], int | None],
    say: Callable[[str], None] = log.warning,
    record: Callable[[Attempt], None] | None = None,
) -> tuple[R, list[Attempt]]:
    """Run attempts until one succeeds; return its result and every attempt.

    Parameters
    ----------
    launch : callable
        ``launch(number, progress)`` runs attempt ``number`` (a fresh barrier stage),
        keeping ``progress`` up to date, and returns the run's result or raises.
    policy : RestartPolicy
        How many restarts, and on what.
    resume_step : callable
        ``resume_step(number)``: the global step attempt ``number`` will resume from, as
        the driver can tell beforehand (None: from scratch, or unknown).
    say : callable
        Where the one line per attempt goes (the log by default).
    record : callable, optional
        Called with each attempt's record as soon as the attempt ended (the job's
        history, its metrics).

    Raises
    ------
    RoleFailedError
        A failure no restart can help (the role's own code raised), or any failure
        when ``max_restarts`` is 0: the error as the role raised it.
    RestartsExhaustedError
        The last allowed attempt failed too; lists every attempt's cause.
    """
    attempts: list[Attempt] = []
    previous: AttemptProgress | None = None
    for number in range(1, policy.attempts + 1):
        progress = AttemptProgress(resumed_from=resume_step(number))
        if number > 1:
            where = progress.resumed_from
            start = "from scratch" if where is None else f"from the checkpoint at step {where}"
            say(f"tfyarn: attempt {number} of {policy.attempts} starts, {start}")
        started = time.time()
        try:
            result = launch(number, progress)
        except RoleFailedError as error:
            attempts.append(
                _failed(number, started, error, progress, steps_redone(previous, progress))
            )
            say(f"tfyarn: {attempts[-1].describe()}")
            if record is not None:
                record(attempts[-1])
            if should_restart(error, attempts, policy):
                previous = progress
                continue
            if policy.max_restarts and (error.restartable or policy.retry_on_errors):
                raise RestartsExhaustedError(
                    exhausted_message(attempts, policy), list(attempts), error
                ) from error
            raise
        attempts.append(
            Attempt(
                number=number,
                started=started,
                ended=time.time(),
                steps_redone=steps_redone(previous, progress),
                resumed_from_step=progress.resumed_from,
                workers=progress.workers,
                wanted_workers=progress.wanted_workers,
            )
        )
        if record is not None:
            record(attempts[-1])
        return result, attempts
    raise AssertionError("unreachable: the last attempt either returns or raises")
