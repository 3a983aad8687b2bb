"""The role plan and TF_CONFIG: pure functions, no Spark, no sockets.

A job is one Spark barrier stage with one task per role. Partition ``p`` of that stage runs
role ``plan[p]``. Roles are laid out chief, workers, parameter servers, evaluator, so the
data-carrying partitions are contiguous and the chief is always partition 0.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tfyarn.errors import ConfigError

__all__ = [
    "CHIEF_STRATEGIES",
    "ROLE_NAMES",
    "TF_NATIVE_STRATEGIES",
    "RoleSpec",
    "choose_chief",
    "data_roles",
    "default_chief",
    "describe",
    "plan_job",
    "plan_roles",
    "tf_cluster",
    "tf_config",
]

#: Role names in plan order, as TensorFlow's TF_CONFIG spells them.
ROLE_NAMES: tuple[str, ...] = ("chief", "worker", "ps", "evaluator")

#: Strategies TensorFlow itself runs from TF_CONFIG (over TF's own gRPC runtime).
TF_NATIVE_STRATEGIES: tuple[str, ...] = ("ps", "mwms")

#: Strategies that get a dedicated chief when neither ``run(chief=...)`` nor ``tfyarn
#: submit`` says: ``"ps"``, whose ClusterCoordinator runs on the chief, and no strategy
#: (TensorFlowOnSpark-style code that branches on ``ctx.role``). Every other strategy
#: trains on all its roles alike and worker 0 acts as the chief (``ctx.is_chief``), so a
#: dedicated chief would only be one more trainer that nobody asked for.
CHIEF_STRATEGIES: tuple[str | None, ...] = (None, "ps")

#: How ``spark.tfyarn.chief`` (set by ``tfyarn submit``) may be spelled.
_FLAGS = {"true": True, "false": False}


@dataclass(frozen=True, order=True)
class RoleSpec:
    """One role of the cluster.

    Parameters
    ----------
    partition : int
        The barrier-stage partition (task) that runs this role.
    name : str
        ``"chief"``, ``"worker"``, ``"ps"`` or ``"evaluator"``.
    index : int
        Index among the roles of the same name.
    """

    partition: int
    name: str
    index: int

    @property
    def task_id(self) -> str:
        """``"name:index"``, e.g. ``"worker:1"``: how logs and errors name the role."""
        return f"{self.name}:{self.index}"


def _count(value: object, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{what} must be a whole number, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{what} must be at least {minimum}, got {value}")
    return value


def plan_roles(
    *, workers: int, ps: int = 0, chief: bool = True, evaluator: bool = False
) -> tuple[RoleSpec, ...]:
    """Lay out the roles of a job, one per barrier partition.

    Parameters
    ----------
    workers : int
        Number of workers (at least 1 unless ``chief`` is true).
    ps : int
        Number of parameter servers.
    chief : bool
        Whether a dedicated chief runs (partition 0).
    evaluator : bool
        Whether an evaluator runs (last partition).

    Returns
    -------
    tuple of RoleSpec
        Indexed by partition.
    """
    workers = _count(workers, "workers", 0 if chief else 1)
    ps = _count(ps, "ps", 0)
    names: list[str] = []
    if chief:
        names.append("chief")
    names += ["worker"] * workers + ["ps"] * ps
    if evaluator:
        names.append("evaluator")
    seen: dict[str, int] = {}
    roles = []
    for partition, name in enumerate(names):
        roles.append(RoleSpec(partition, name, seen.get(name, 0)))
        seen[name] = seen.get(name, 0) + 1
    return tuple(roles)


def data_roles(plan: Sequence[RoleSpec], strategy: str | None) -> tuple[RoleSpec, ...]:
    """The roles that compute gradients and so receive training data.

    Workers always do. The chief does too, except under ParameterServerStrategy, where it
    only coordinates and the workers run the steps. Parameter servers and the evaluator
    never get training data.
    """
    trainers = [r for r in plan if r.name == "worker"]
    if strategy != "ps":
        trainers = [r for r in plan if r.name == "chief"] + trainers
    return tuple(trainers)


def tf_cluster(addresses: Mapping[RoleSpec, str]) -> dict[str, list[str]]:
    """The TF_CONFIG ``cluster`` dict: every role but the evaluator, ordered by index."""
    cluster: dict[str, list[str]] = {}
    for role in sorted(addresses, key=lambda r: (ROLE_NAMES.index(r.name), r.index)):
        if role.name != "evaluator":
            cluster.setdefault(role.name, []).append(addresses[role])
    return cluster


def tf_config(addresses: Mapping[RoleSpec, str], me: RoleSpec) -> str:
    """TF_CONFIG for role ``me``, as the JSON string TensorFlow reads from the environment.

    The evaluator is kept out of the ``cluster`` dict of every task (TensorFlow expects it
    outside the training cluster); its own TF_CONFIG names the same cluster plus its task.
    """
    if me not in addresses:
        raise ConfigError(f"role {me.task_id} has no address in the cluster")
    return json.dumps(
        {
            "cluster": tf_cluster(addresses),
            "task": {"type": me.name, "index": me.index},
        },
        sort_keys=True,
    )


def default_chief(strategy: str | None) -> bool:
    """Whether a job of ``strategy`` gets a dedicated chief when nobody says (see
    :data:`CHIEF_STRATEGIES`)."""
    return strategy in CHIEF_STRATEGIES


def _submitted_flag(raw: str) -> bool:
    flag = _FLAGS.get(raw.strip().lower())
    if flag is None:
        raise ConfigError(f"spark.tfyarn.chief={raw!r} is not valid: use true or false")
    return flag


def choose_chief(in_code: bool | None, submitted: str | None, strategy: str | None) -> bool:
    """Whether the job runs a dedicated chief: the code's word, else tfyarn submit's, else
    the strategy's default.

    Parameters
    ----------
    in_code : bool or None
        ``run(chief=...)``; None when the code does not say.
    submitted : str or None
        ``spark.tfyarn.chief``: what ``tfyarn submit`` sized the cluster for.
    strategy : str or None
        The job's strategy (for :func:`default_chief`).

    Raises
    ------
    ConfigError
        The code and ``tfyarn submit`` disagree: the cluster was started for the other
        layout, so an executor would sit idle or one would be missing.
    """
    if submitted is None or submitted == "":
        return default_chief(strategy) if in_code is None else in_code
    planned = _submitted_flag(submitted)
    if in_code is None or in_code == planned:
        return planned
    if planned:
        raise ConfigError(
            "run(chief=False) disagrees with tfyarn submit, which started an executor for a "
            "dedicated chief (spark.tfyarn.chief=true) that would sit idle: submit with "
            "--no-chief, or leave chief= out of run() to follow tfyarn submit"
        )
    raise ConfigError(
        "run(chief=True) disagrees with tfyarn submit, which started no executor for a "
        "dedicated chief (spark.tfyarn.chief=false, from --no-chief): submit with --chief, "
        "or leave chief= out of run() to follow tfyarn submit"
    )


def _check_workers(workers: object, chief: bool, explicit: bool, strategy: str | None) -> None:
    """Refuse ``workers=0`` unless a chief-only job was asked for in so many words."""
    if isinstance(workers, bool) or workers != 0:
        return  # plan_roles checks the type and the other counts
    if strategy == "ps":
        raise ConfigError(
            "strategy='ps' needs at least one worker: the chief only coordinates and the "
            "workers run the steps; pass workers=1 or more (tfyarn submit --workers N)"
        )
    if chief and not explicit:
        raise ConfigError(
            "workers=0 leaves the chief alone in the job; for a chief-only job say so with "
            "chief=True (tfyarn submit --chief), else pass workers=1 or more"
        )


def plan_job(
    *,
    workers: int,
    ps: int = 0,
    chief: bool | None = None,
    evaluator: bool = False,
    strategy: str | None = None,
    submitted_chief: str | None = None,
) -> tuple[RoleSpec, ...]:
    """The role plan of one job: :func:`choose_chief`, the worker count checked, then
    :func:`plan_roles`.

    Parameters
    ----------
    workers, ps, evaluator
        As for :func:`plan_roles`.
    chief : bool or None
        ``run(chief=...)``; None: follow ``submitted_chief``, else the strategy.
    strategy : str or None
        The job's strategy.
    submitted_chief : str or None
        ``spark.tfyarn.chief``, which ``tfyarn submit`` sets to the layout it sized the
        cluster for.

    Raises
    ------
    ConfigError
        Bad counts; ``workers=0`` without a chief-only job asked for explicitly (or under
        ``strategy="ps"``); the code and ``tfyarn submit`` disagree about the chief.
    """
    chosen = choose_chief(chief, submitted_chief, strategy)
    explicit = chief is not None or bool(submitted_chief)
    _check_workers(workers, chosen, explicit, strategy)
    return plan_roles(workers=workers, ps=ps, chief=chosen, evaluator=evaluator)


def _count_of(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def describe(plan: Sequence[RoleSpec], strategy: str | None) -> str:
    """One line for the start of a job: its roles, the executors it needs, its trainers.

    For ``plan_roles(workers=2, ps=1)`` under ``"ps"``: ``tfyarn: 4 roles, 4 executors
    needed (one per role): chief:0, worker:0, worker:1, ps:0; strategy 'ps'; trainers
    (they get the data): worker:0, worker:1``.
    """
    roles = ", ".join(r.task_id for r in plan)
    how = f"strategy {strategy!r}" if strategy else "no strategy"
    trainers = ", ".join(r.task_id for r in data_roles(plan, strategy)) or "none"
    line = (
        f"tfyarn: {_count_of(len(plan), 'role')}, {_count_of(len(plan), 'executor')} needed "
        f"(one per role): {roles}; {how}; trainers (they get the data): {trainers}"
    )
    if any(r.name == "worker" for r in plan) and not any(r.name == "chief" for r in plan):
        line += "; no dedicated chief: worker:0 acts as chief"
    return line
