"""The parameter-server wire protocol: header, op and reply codes, dtypes, optimizer config.

One connection per (trainer, ps), channel :data:`CHANNEL`; on it, strictly request then
reply, each request starting with a :class:`Header`:

=========  =====================================  =======================================
op         request (header, then payload)         reply
=========  =====================================  =======================================
INIT       :class:`InitMeta`, then values         :class:`Reply` (REFUSED: then a message)
GET        (none)                                 values (waits for INIT)
GRAD       gradient                               values after the update
ELASTIC    the worker's weights ``x``; ``alpha``  ``d = alpha (x - c)``, after ``c += d``
ADD        delta                                  values after ``c += delta``
BYE        (none)                                 ``Reply.ACK`` (the trainer is done)
SNAPSHOT   :class:`SnapshotTag`                   :class:`Reply` (REFUSED: then a message)
=========  =====================================  =======================================

INIT answers ``ACK`` when the server stored the values, ``KEPT`` when it already held
that bucket and keeps it (a long-lived server: the trainer then starts from the held
values), or ``REFUSED`` followed by a message frame (the held bucket has another size or
dtype). Both ends of this module only ever see flat buckets, never variables or models.

SNAPSHOT (one per ps, not per bucket) comes from rank 0 of a job that checkpoints, right
before it writes a trainer checkpoint: the ps writes a snapshot tagged with that
checkpoint's global step and attempt, so that a restarted attempt restores the ps state
that matches the trainers' checkpoint. Only a job's own ps roles are asked (a service's
ps snapshots on its own schedule), so the op needs no new :data:`PROTOCOL` version.
"""

from __future__ import annotations

import enum
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar

import numpy as np

from tfyarn.errors import ConfigError, FrameError

__all__ = [
    "CHANNEL",
    "OPTIMIZERS",
    "PROTOCOL",
    "Header",
    "InitMeta",
    "Op",
    "OptimizerConfig",
    "Reply",
    "SnapshotTag",
    "as_bytes",
    "np_dtype",
    "optimizer_config",
]

#: Mesh channel of a job's ps connections.
CHANNEL = "ps"

#: Version of the ps wire protocol (these ops, and a service's hello). A service keeps
#: running across tfyarn upgrades of the jobs' environments, so both sides check it.
PROTOCOL = 1

_HEADER = struct.Struct("<B3xIQd")  # op, bucket, elements, float parameter


class Op(enum.IntEnum):
    """Request codes (first byte of a :class:`Header`)."""

    INIT = 1
    GET = 2
    GRAD = 3
    ELASTIC = 4
    ADD = 5
    BYE = 6
    SNAPSHOT = 7


class Reply(bytes, enum.Enum):
    """One-byte answers: to INIT (all three), SNAPSHOT (``ACK``, ``REFUSED``) and BYE."""

    ACK = b"\x01"
    KEPT = b"\x02"
    REFUSED = b"\x03"


@dataclass(frozen=True)
class Header:
    """The fixed-size head of every request.

    Parameters
    ----------
    op : Op
        What is asked.
    bucket : int
        Bucket index (0 for BYE).
    elements : int
        Number of elements of the bucket (the payload's length, in elements).
    param : float
        ELASTIC's ``alpha``; 0 otherwise.
    """

    op: Op
    bucket: int = 0
    elements: int = 0
    param: float = 0.0

    #: Bytes of a packed header.
    SIZE: ClassVar[int] = _HEADER.size

    def pack(self) -> bytes:
        """The header as sent."""
        return _HEADER.pack(int(self.op), self.bucket, self.elements, self.param)

    @classmethod
    def unpack(cls, data: bytes | bytearray) -> Header:
        """Parse a received header.

        Raises
        ------
        FrameError
            Wrong length, or an op this protocol does not have.
        """
        if len(data) != _HEADER.size:
            raise FrameError(f"a ps request header has {_HEADER.size} bytes, got {len(data)}")
        op, bucket, elements, param = _HEADER.unpack(data)
        try:
            code = Op(op)
        except ValueError:
            raise FrameError(f"unknown ps op {op}") from None
        return cls(code, bucket, elements, param)


def np_dtype(name: str) -> np.dtype:
    """NumPy dtype of a bucket's dtype name (``bfloat16`` from ml_dtypes)."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def as_bytes(a: np.ndarray) -> memoryview:
    """A writable byte view of contiguous ``a`` (what the transports send and fill)."""
    # ndarray.data rather than memoryview(a): NumPy's stubs give arrays the buffer
    # protocol only from Python 3.12 on, and the view is the same.
    return a.reshape(-1).view(np.uint8).data


#: Optimizers a parameter server can run, with their options and defaults (Keras's).
OPTIMIZERS: Mapping[str, Mapping[str, float | bool]] = MappingProxyType(
    {
        "sgd": {"learning_rate": 0.01},
        "momentum": {"learning_rate": 0.01, "momentum": 0.9, "nesterov": False},
        "adam": {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7},
        "adagrad": {"learning_rate": 0.001, "epsilon": 1e-7, "initial_accumulator_value": 0.1},
    }
)

#: Slot arrays (optimizer state the size of the values) each optimizer keeps.
_SLOTS = {"sgd": 0, "momentum": 1, "adam": 2, "adagrad": 1}


def _option(name: str, key: str, value: object) -> float | bool:
    """One validated option value of ps optimizer ``name``."""
    if key not in OPTIMIZERS[name]:
        raise ConfigError(f"unknown option(s) [{key!r}] for ps optimizer {name!r}")
    if key == "nesterov":
        return bool(value)
    if not isinstance(value, int | float):
        raise ConfigError(
            f"ps optimizer option {key} must be a number, got {type(value).__name__} "
            "(learning-rate schedules cannot run on a parameter server)"
        )
    return value


def _known(name: str) -> Mapping[str, float | bool]:
    """The defaults of optimizer ``name``; a clear error for one a ps cannot run."""
    if name not in OPTIMIZERS:
        raise ConfigError(
            f"parameter servers cannot run optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}"
        )
    return OPTIMIZERS[name]


@dataclass(frozen=True)
class OptimizerConfig:
    """A complete, validated ps optimizer configuration (build it with :func:`optimizer_config`).

    Parameters
    ----------
    name : str
        One of :data:`OPTIMIZERS`.
    options : mapping of str to number
        Every option of that optimizer (``nesterov`` is a bool, the others numbers).

    Raises
    ------
    ConfigError
        Unknown optimizer, missing or unknown option, or an option that is not a number.
    """

    name: str
    options: Mapping[str, float | bool]

    def __post_init__(self) -> None:
        missing = sorted(set(_known(self.name)) - set(self.options))
        if missing:
            raise ConfigError(
                f"ps optimizer {self.name!r} lacks option(s) {missing}: build it with "
                "optimizer_config(), which fills in the defaults"
            )
        checked = {k: _option(self.name, k, v) for k, v in self.options.items()}
        # Read-only: one configuration is shared by every shard of a model.
        object.__setattr__(self, "options", MappingProxyType(checked))

    def number(self, option: str) -> float:
        """A numeric option, e.g. ``number("learning_rate")``."""
        return float(self.options[option])

    @property
    def slots(self) -> int:
        """Slot arrays this optimizer keeps per bucket (momentum, Adam's moments ...)."""
        return _SLOTS[self.name]

    def to_dict(self) -> dict[str, str | float | bool]:
        """``{"name": ..., **options}``: the JSON form (on the wire, in snapshots)."""
        return {"name": self.name, **self.options}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> OptimizerConfig:
        """Parse the JSON form; options it omits take their defaults.

        Raises
        ------
        ConfigError
            As :func:`optimizer_config`.
        """
        name = str(data.get("name"))
        defaults = _known(name)
        unknown = sorted(set(data) - {"name"} - set(defaults))
        if unknown:
            raise ConfigError(f"unknown option(s) {unknown} for ps optimizer {name!r}")
        given = {k: _option(name, k, v) for k, v in data.items() if k != "name"}
        return cls(name, {**defaults, **given})


def optimizer_config(name: str, **options: float | bool) -> OptimizerConfig:
    """Validate and complete a ps optimizer configuration.

    Parameters
    ----------
    name : str
        One of :data:`OPTIMIZERS`.
    **options
        Overrides of the defaults (``learning_rate`` ...); must be plain numbers.

    Returns
    -------
    OptimizerConfig
        ``name`` with every option (the defaults where not given).

    Raises
    ------
    ConfigError
        Unknown optimizer or option, or an option that is not a number.
    """
    return OptimizerConfig.from_dict({"name": name, **options})


@dataclass(frozen=True)
class InitMeta:
    """What INIT says of a bucket before its values: dtype and the optimizer to run."""

    dtype: str
    optimizer: OptimizerConfig

    def __post_init__(self) -> None:
        try:
            np_dtype(self.dtype)
        except TypeError as exc:
            raise ConfigError(f"INIT names an unknown dtype {self.dtype!r}: {exc}") from exc

    def encode(self) -> bytes:
        """The JSON frame sent after the header."""
        return json.dumps({"dtype": self.dtype, "optimizer": self.optimizer.to_dict()}).encode()

    @classmethod
    def decode(cls, data: bytes) -> InitMeta:
        """Parse the frame.

        Raises
        ------
        FrameError
            Not the JSON object INIT sends.
        ConfigError
            An optimizer or dtype this server cannot run.
        """
        try:
            meta = json.loads(data)
            dtype, optimizer = str(meta["dtype"]), dict(meta["optimizer"])
        except (ValueError, KeyError, TypeError) as exc:
            raise FrameError(f"malformed ps INIT metadata ({exc}): {data[:80]!r}") from exc
        return cls(dtype, OptimizerConfig.from_dict(optimizer))


@dataclass(frozen=True)
class SnapshotTag:
    """Which trainer checkpoint a ps snapshot goes with (the SNAPSHOT request's frame).

    Parameters
    ----------
    global_step : int
        The checkpoint's global step (steps since the start of training, all attempts).
    attempt : int
        The attempt that wrote it (1, 2, ...).

    Raises
    ------
    ConfigError
        A negative step or an attempt below 1.
    """

    global_step: int
    attempt: int

    def __post_init__(self) -> None:
        if self.global_step < 0 or self.attempt < 1:
            raise ConfigError(
                f"a snapshot tag needs global_step >= 0 and attempt >= 1, not "
                f"{self.global_step} and {self.attempt}"
            )

    def to_dict(self) -> dict[str, int]:
        """The JSON form (on the wire, in snapshot headers)."""
        return {"global_step": self.global_step, "attempt": self.attempt}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> SnapshotTag:
        """Parse the JSON form.

        Raises
        ------
        FrameError
            Not an object with integer ``global_step`` and ``attempt``.
        """
        try:
            step, attempt = data["global_step"], data["attempt"]
            if not isinstance(step, int) or not isinstance(attempt, int):
                raise TypeError("global_step and attempt must be integers")
            return cls(step, attempt)
        except (KeyError, TypeError, ConfigError) as exc:
            raise FrameError(f"malformed snapshot tag ({exc}): {dict(data)!r}") from exc

    def encode(self) -> bytes:
        """The JSON frame SNAPSHOT sends after its header."""
        return json.dumps(self.to_dict()).encode()

    @classmethod
    def decode(cls, data: bytes) -> SnapshotTag:
        """Parse the frame (raises :class:`FrameError` on anything else)."""
        try:
            meta = json.loads(data)
        except ValueError as exc:
            raise FrameError(f"malformed snapshot request ({exc}): {data[:80]!r}") from exc
        if not isinstance(meta, dict):
            raise FrameError(f"a snapshot request is a JSON object, got {data[:80]!r}")
        return cls.from_dict(meta)
