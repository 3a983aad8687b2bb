"""Where one rank sits among the training roles, in Horovod's terms.

:func:`topology` computes a rank's :class:`Topology` (``rank``, ``local_rank``,
``cross_rank`` and their sizes) from the hosts of the training roles: a pure function,
kept apart from the per-process state, so that it is tested without a job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tfyarn.errors import ConfigError

__all__ = [
    "Topology",
    "topology",
]


@dataclass(frozen=True)
class Topology:
    """Where one rank sits among the training roles, in Horovod's terms.

    Attributes
    ----------
    rank, size : int
        Position among all ranks, and their number.
    local_rank, local_size : int
        Position among the ranks on the same host (by rank), and their number.
    cross_rank, cross_size : int
        Position among the ranks with the same ``local_rank`` (one per host that has
        that many ranks), and their number: Horovod's "cross" communicator.
    """

    rank: int
    size: int
    local_rank: int
    local_size: int
    cross_rank: int
    cross_size: int


def topology(hosts: Sequence[str], rank: int) -> Topology:
    """The :class:`Topology` of ``rank`` when rank ``r`` runs on ``hosts[r]``.

    Raises
    ------
    ConfigError
        ``rank`` is not a position in ``hosts``.
    """
    if not 0 <= rank < len(hosts):
        raise ConfigError(f"rank {rank} is not one of the {len(hosts)} ranks")
    seen: dict[str, int] = {}
    local: list[int] = []  # each rank's position on its host
    for host in hosts:
        local.append(seen.get(host, 0))
        seen[host] = local[-1] + 1
    cross = [r for r in range(len(hosts)) if local[r] == local[rank]]
    return Topology(
        rank=rank,
        size=len(hosts),
        local_rank=local[rank],
        local_size=seen[hosts[rank]],
        cross_rank=cross.index(rank),
        cross_size=len(cross),
    )
