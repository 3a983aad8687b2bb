"""Trainer checkpoints: what a restarted attempt needs to continue a training run.

A checkpoint holds a trainer's model weights, its optimizer's variables and where it was:
epochs completed, steps into the current epoch, the global step (which is also the
position in this trainer's shard: ``ctx.dataset`` skips that many batches on resume) and
the attempt that wrote it. One file per checkpoint, ``ckpt-<global step>.npz``, written by
one writer (rank 0) to a temporary name, fsynced and renamed, so that a reader sees a
whole checkpoint or none. A torn or unreadable file is skipped in favour of the one
before it; only the newest ``keep`` are kept.

Resume is decided per attempt, never by "the newest file now": attempt *a* resumes from
the newest complete checkpoint written by an attempt before *a*. Every trainer of attempt
*a* therefore picks the same one, even when rank 0 has already written newer checkpoints
of attempt *a* by the time a slower trainer looks (local-update algorithms such as EASGD
do not wait for each other at every step).

This module is pure NumPy: the Keras side is :mod:`tfyarn.exchange.keras_checkpoint`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tfyarn.errors import ConfigError, TFYarnError
from tfyarn.exchange.ps.wire import np_dtype

__all__ = [
    "Checkpoint",
    "CheckpointMismatchError",
    "CheckpointPolicy",
    "check_fits",
    "checkpoint_files",
    "describe_shapes",
    "read_checkpoint",
    "resume_point",
    "write_checkpoint",
]

_NAME = re.compile(r"^ckpt-(\d{12})\.npz$")
#: Format version written in every checkpoint's header.
FORMAT = 1


class CheckpointMismatchError(TFYarnError):
    """A checkpoint does not fit the model it should be loaded into (other shapes)."""


@dataclass(frozen=True)
class CheckpointPolicy:
    """Where and how often trainers checkpoint.

    Parameters
    ----------
    directory : str
        Folder of the checkpoints (shared storage on a real cluster: every trainer of a
        restarted attempt reads it).
    every_steps : int, optional
        Checkpoint every this many optimizer steps.
    every_seconds : float, optional
        Checkpoint when this many seconds passed since the last one (checked after each
        step). With both, whichever comes first; with neither, only at epoch ends.
    keep : int
        Checkpoints kept (the newest; at least 1).
    """

    directory: str
    every_steps: int | None = None
    every_seconds: float | None = None
    keep: int = 2

    def __post_init__(self) -> None:
        if not self.directory:
            raise ConfigError("checkpoint_dir must name a folder")
        if self.every_steps is not None and self.every_steps < 1:
            raise ConfigError(f"checkpoint_every steps must be >= 1, not {self.every_steps}")
        if self.every_seconds is not None and not self.every_seconds > 0:
            raise ConfigError(f"checkpoint_every seconds must be > 0, not {self.every_seconds}")
        if self.keep < 1:
            raise ConfigError(f"keep at least 1 checkpoint, not {self.keep}")

    @staticmethod
    def parse_every(every: int | float | str | None) -> tuple[int | None, float | None]:
        """``checkpoint_every`` as (steps, seconds): ``100`` steps, ``"30s"``/``"5m"``.

        Raises
        ------
        ConfigError
            For anything else, with the accepted forms.
        """
        if every is None:
            return None, None
        if isinstance(every, bool):
            raise ConfigError(f"checkpoint_every={every!r}: give steps (100) or time ('30s')")
        if isinstance(every, int):
            return every, None
        text = str(every).strip().lower()
        match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|m|h|steps?)?", text)
        if not match:
            raise ConfigError(
                f"checkpoint_every={every!r} is neither a step count (100, '100 steps') nor "
                "a time ('30s', '5m', '1h')"
            )
        number, unit = float(match.group(1)), match.group(2) or "steps"
        if unit.startswith("step"):
            if not number.is_integer():
                raise ConfigError(f"checkpoint_every={every!r}: a step count is a whole number")
            return int(number), None
        return None, number * {"s": 1.0, "m": 60.0, "h": 3600.0}[unit]


@dataclass(frozen=True)
class Checkpoint:
    """One trainer checkpoint.

    Attributes
    ----------
    epoch : int
        Epochs completed when it was written.
    step : int
        Steps into epoch ``epoch`` (0 at an epoch boundary).
    global_step : int
        Steps since the start of training (all attempts): the shard position.
    attempt : int
        The attempt (1, 2, ...) that wrote it.
    weights, optimizer : list of ndarray
        The model's weights (``model.weights`` order) and optimizer variables.
    """

    epoch: int
    step: int
    global_step: int
    attempt: int
    weights: list[np.ndarray]
    optimizer: list[np.ndarray]


def describe_shapes(arrays: Sequence[np.ndarray]) -> str:
    """A short text of shapes and dtypes, as error messages name them."""
    return "[" + ", ".join(f"{tuple(a.shape)}:{a.dtype}" for a in arrays) + "]"


def _raw(a: np.ndarray) -> np.ndarray:
    # Raw bytes plus a dtype name in the header: bfloat16 (ml_dtypes) would need pickle.
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def _layout(arrays: Sequence[np.ndarray]) -> list[dict[str, object]]:
    return [{"shape": list(a.shape), "dtype": str(a.dtype)} for a in arrays]


def write_checkpoint(folder: str | os.PathLike[str], ckpt: Checkpoint, keep: int) -> Path:
    """Write ``ckpt`` atomically into ``folder``; delete all but the newest ``keep``."""
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    header = {
        "format": FORMAT,
        "epoch": ckpt.epoch,
        "step": ckpt.step,
        "global_step": ckpt.global_step,
        "attempt": ckpt.attempt,
        "weights": _layout(ckpt.weights),
        "optimizer": _layout(ckpt.optimizer),
    }
    arrays = {f"w{i}": _raw(a) for i, a in enumerate(ckpt.weights)}
    arrays.update({f"o{i}": _raw(a) for i, a in enumerate(ckpt.optimizer)})
    arrays["meta"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    final = path / f"ckpt-{ckpt.global_step:012d}.npz"
    tmp = path / f".{final.name}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        np.savez(f, allow_pickle=False, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    for old in checkpoint_files(path)[:-keep]:
        with contextlib.suppress(OSError):
            old.unlink()
    return final


def checkpoint_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The checkpoint files in ``folder``, oldest first (none if it cannot be listed)."""
    try:
        found = [p for p in Path(folder).iterdir() if _NAME.match(p.name)]
    except OSError:
        return []
    return sorted(found)


def _arrays(z: Any, prefix: str, layout: list[dict[str, Any]]) -> list[np.ndarray]:
    # ``z``: an open NpzFile; ``layout``: the header's shapes and dtypes, in order.
    return [
        z[f"{prefix}{i}"].view(np_dtype(str(spec["dtype"]))).reshape(spec["shape"]).copy()
        for i, spec in enumerate(layout)
    ]


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Load one checkpoint file (raises on a torn, foreign or newer-format file)."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(z["meta"].tobytes())
        if meta.get("format") != FORMAT:
            raise ValueError(f"checkpoint format {meta.get('format')!r}, expected {FORMAT}")
        return Checkpoint(
            epoch=int(meta["epoch"]),
            step=int(meta["step"]),
            global_step=int(meta["global_step"]),
            attempt=int(meta["attempt"]),
            weights=_arrays(z, "w", meta["weights"]),
            optimizer=_arrays(z, "o", meta["optimizer"]),
        )


def resume_point(
    folder: str | os.PathLike[str], attempt: int
) -> tuple[Checkpoint | None, list[str]]:
    """The checkpoint attempt ``attempt`` resumes from, and what was wrong with newer ones.

    The newest readable checkpoint written by an earlier attempt; None on a first attempt
    or when there is none (training starts from scratch).
    """
    problems: list[str] = []
    if attempt <= 1:
        return None, problems
    for path in reversed(checkpoint_files(folder)):
        try:
            ckpt = read_checkpoint(path)
        except Exception as exc:  # torn write, foreign file: fall back to the one before
            problems.append(f"{path.name}: {exc}")
            continue
        if ckpt.attempt < attempt:
            return ckpt, problems
    return None, problems


def check_fits(
    ckpt: Checkpoint, weights: Sequence[np.ndarray], optimizer: Sequence[np.ndarray] | None
) -> None:
    """Raise :class:`CheckpointMismatchError` unless ``ckpt`` fits these variables.

    ``optimizer`` None skips the optimizer check (it is not built yet).
    """
    pairs: list[tuple[str, Sequence[np.ndarray], Sequence[np.ndarray]]] = [
        ("model weights", ckpt.weights, weights)
    ]
    if optimizer is not None:
        pairs.append(("optimizer variables", ckpt.optimizer, optimizer))
    for what, saved, now in pairs:
        if [(a.shape, a.dtype) for a in saved] != [(b.shape, b.dtype) for b in now]:
            raise CheckpointMismatchError(
                f"the checkpoint at global step {ckpt.global_step} does not fit this model's "
                f"{what}: checkpoint {describe_shapes(saved)} vs model "
                f"{describe_shapes(list(now))}; point checkpoint_dir at a new folder for a "
                "changed model"
            )
