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
    "ROLE_NAMES",
    "TF_NATIVE_STRATEGIES",
    "RoleSpec",
    "data_roles",
    "plan_roles",
    "tf_cluster",
    "tf_config",
]

#: Role names in plan order, as TensorFlow's TF_CONFIG spells them.
ROLE_NAMES: tuple[str, ...] = ("chief", "worker", "ps", "evaluator")

#: Strategies TensorFlow itself runs from TF_CONFIG (over TF's own gRPC runtime).
TF_NATIVE_STRATEGIES: tuple[str, ...] = ("ps", "mwms")


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
