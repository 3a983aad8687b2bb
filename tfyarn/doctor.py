"""``tfyarn doctor``: find what is wrong with this machine's set-up and say what to do.

Each check is a small function returning :class:`Check` objects; :data:`CHECKS` lists
them in report order. A layer that knows about a piece of the environment (the
transport knows RDMA and UCX, the yarn package knows Hadoop) provides its own check
function and is listed here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = ["CHECKS", "Check", "run_checks"]


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
    """

    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


CheckFn = Callable[[], Iterable[Check]]

#: Filled in below, once every check function is defined.
CHECKS: list[CheckFn] = []


def run_checks(checks: Iterable[CheckFn] | None = None) -> list[Check]:
    """Run every check, turning a crashing check into a failed :class:`Check`."""
    results: list[Check] = []
    for fn in checks if checks is not None else CHECKS:
        try:
            results.extend(fn())
        except Exception as exc:  # a broken check must not hide the others
            results.append(Check(fn.__name__, False, f"check crashed: {exc!r}", "report a bug"))
    return results
