"""``tfyarn doctor`` checks owned by the exchange layer."""

from __future__ import annotations

from collections.abc import Iterable

from tfyarn.diagnosis import Check

__all__ = ["check_exchange"]


def check_exchange() -> Iterable[Check]:
    """Native reduction/optimizer kernels in use; Open MPI for the benchmark baseline."""
    import shutil

    from tfyarn.exchange import kernels

    native = kernels.BACKEND == "native"
    isa = ""
    if native:
        from tfyarn import native as nat

        isa = f" ({nat.KERNEL_ISA})"
    yield Check(
        "exchange kernels",
        native,
        f"{kernels.BACKEND}{isa}",
        "" if native else "rebuild the C extension: .venv/bin/pip install -e . (needs gcc)",
    )
    mpirun = shutil.which("mpirun")
    yield Check(
        "Open MPI (bench baseline)",
        mpirun is not None,
        mpirun or "mpirun not found",
        "" if mpirun else "bash scripts/setup-system.sh (installs openmpi-bin, python3-mpi4py)",
        required=False,
    )
