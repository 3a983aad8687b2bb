"""The argument checks that refuse what tfyarn cannot honour, and their errors.

:func:`check_unsupported` refuses every Horovod argument set to a value tfyarn ignores
(devices, groups, sessions, process sets, ...), naming it and what to do instead;
:func:`unsupported_attribute` is the error for a Horovod name tfyarn does not provide;
:data:`LAUNCH_HINT` says how to launch a Horovod program on tfyarn.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tfyarn.errors import ConfigError
from tfyarn.horovod._process_set import global_process_set

__all__ = [
    "LAUNCH_HINT",
    "UnsupportedError",
    "check_unsupported",
    "unsupported_attribute",
]


LAUNCH_HINT = (
    "launch the program with tfyarn.horovod.spark.run(fn, num_proc=N), or call hvd.init() "
    "inside the train_fn of tfyarn.run(spark, train_fn, workers=N, strategy='allreduce')"
)


class UnsupportedError(ConfigError, AttributeError):
    """A Horovod API tfyarn does not provide (an ``AttributeError`` too, for ``hasattr``)."""


#: Horovod arguments with the values tfyarn honours, and what to do otherwise. An argument
#: given any other value is refused by :func:`check_unsupported`: none is ignored.
_ACCEPTED: dict[str, tuple[tuple[Any, ...], str]] = {
    "device_dense": (("", None), "tfyarn reduces on the host CPU; leave device_dense out"),
    "device_sparse": (("", None), "tfyarn reduces on the host CPU; leave device_sparse out"),
    "device": (("", None), "tfyarn broadcasts from the host CPU; leave device out"),
    "num_groups": (
        (0, None),
        "tfyarn always fuses every gradient into one buffer per dtype; leave num_groups out",
    ),
    "groups": (
        (None,),
        "tfyarn always fuses every gradient into one buffer per dtype; leave groups out",
    ),
    "scale_local_gradients": (
        (True,),
        "tfyarn has no local (unreduced) variables; leave scale_local_gradients out",
    ),
    "use_locking": ((False,), "TF1 locking optimizers are not supported; leave use_locking out"),
    "session": ((None,), "TF1 sessions are not supported: run eagerly or in tf.function"),
    "comm": ((None,), "tfyarn has no MPI communicator: " + LAUNCH_HINT),
    "process_sets": (
        (None,),
        "tfyarn.horovod has only the global process set: leave process_sets out",
    ),
}


def check_unsupported(api: str, **given: Any) -> None:
    """Refuse every argument of ``api`` set to a value tfyarn cannot honour.

    Raises
    ------
    ConfigError
        Naming the argument, its value and what to do instead.
    """
    for name, value in given.items():
        if name == "process_set":
            if value is not None and value is not global_process_set:
                raise ConfigError(
                    f"{api}(process_set={value!r}): tfyarn.horovod has only the global "
                    "process set; leave process_set out"
                )
            continue
        accepted, hint = _ACCEPTED[name]
        if not any(value is a or (type(value) is type(a) and value == a) for a in accepted):
            raise ConfigError(f"{api}({name}={value!r}) is not supported: {hint}")


def unsupported_attribute(module: str, name: str, reasons: Mapping[str, str]) -> UnsupportedError:
    """The error for ``module.name``: why tfyarn lacks it, or that Horovod lacks it too."""
    if name in reasons:
        return UnsupportedError(f"{module}.{name} is not supported by tfyarn: {reasons[name]}")
    return UnsupportedError(f"module {module!r} has no attribute {name!r}")
