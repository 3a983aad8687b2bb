"""The result type of a ``tfyarn doctor`` check.

This module imports nothing of tfyarn on purpose: every layer that contributes a check
(transport, exchange, yarn) imports :class:`Check` from here, and :mod:`tfyarn.doctor`
imports those layers to list their checks. Keeping :class:`Check` in a leaf module is
what keeps that graph free of cycles.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = ["Check", "CheckFn"]


@dataclass(frozen=True)
class Check:
    """The outcome of one check.

    Parameters
    ----------
    name : str
        What was checked, e.g. ``"java"``.
    ok : bool
        Whether it is usable.
    detail : str
        What was found (a version, a device list, an error).
    fix : str
        What to do when ``ok`` is false; empty otherwise.
    required : bool
        Whether tfyarn cannot run at all without it (RDMA, for example, is optional).

    Raises
    ------
    ValueError
        When ``name`` is empty (the report would not say what was checked).
    """

    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a doctor Check needs a name saying what was checked")


#: A check function: run it to get its :class:`Check` results, in report order.
CheckFn = Callable[[], Iterable[Check]]
