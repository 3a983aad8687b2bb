"""Horovod's process sets: tfyarn has only the global one (every rank).

:class:`ProcessSet` refuses a subset of ranks; :data:`global_process_set` is the default
``process_set=`` of every collective, and the only value :func:`check_unsupported
<tfyarn.horovod._checks.check_unsupported>` accepts.
"""

from __future__ import annotations

from collections.abc import Sequence

from tfyarn.errors import ConfigError

__all__ = [
    "ProcessSet",
    "global_process_set",
]


class ProcessSet:
    """Horovod's process set; tfyarn has only the global one (every rank)."""

    def __init__(self, ranks: Sequence[int] | None = None) -> None:
        if ranks is not None:
            raise ConfigError(
                "tfyarn.horovod has only the global process set (every rank): leave "
                "process_set= out, or run a separate tfyarn.horovod.spark.run for the subset"
            )
        self.ranks = None

    def __repr__(self) -> str:
        return "ProcessSet(global)"


#: The only process set: every rank.
global_process_set = ProcessSet()
