"""Every job's history: what it ran, its roles over time, its attempts and how it ended.

The driver appends one JSON object per line to ``<history dir>/<job id>.jsonl`` while
the job runs (:class:`HistoryWriter`), so the file survives the driver's crash: each
line is one ``write(2)`` to a file opened with ``O_APPEND``, and a reader skips a torn
last line. The events, in order:

``job``
    once: the job's id, user, Spark application and its settings;
``attempt``
    when an attempt starts (its number, of how many);
``roles``
    every ``spark.tfyarn.history.interval`` seconds: each role's state, host, step,
    loss, samples/s, exchange share and counters (from the heartbeats);
``attempt_end``
    when an attempt ends: the :class:`~tfyarn.cluster.attempts.Attempt` record;
``end``
    once: status, error, transport, wall and start-up time, TensorBoard URL.

:func:`read_history` and :func:`list_histories` read them back for ``tfyarn history``;
:func:`plot_history` draws loss and samples/s per role over time with the restarts
marked.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tfyarn.cluster.progress import RoleState
from tfyarn.errors import ConfigError

__all__ = [
    "DEFAULT_INTERVAL",
    "HistoryWriter",
    "JobHistory",
    "default_history_dir",
    "find_history",
    "list_histories",
    "plot_history",
    "read_history",
    "role_sample",
]

#: Seconds between two ``roles`` samples by default (``spark.tfyarn.history.interval``).
DEFAULT_INTERVAL = 5.0
_SUFFIX = ".jsonl"


def default_history_dir() -> str:
    """``$TFYARN_HISTORY_DIR``, else ``$XDG_CACHE_HOME/tfyarn/history``, else
    ``~/.cache/tfyarn/history``."""
    if os.environ.get("TFYARN_HISTORY_DIR"):
        return os.environ["TFYARN_HISTORY_DIR"]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "tfyarn", "history")


def _local_folder(folder: str) -> str:
    if "://" in folder and not folder.startswith("file://"):
        raise ConfigError(
            f"history dir {folder!r} is not a local folder: the driver appends to its files "
            "as the job runs; give a local path (spark.tfyarn.history.dir)"
        )
    return folder.removeprefix("file://")


def role_sample(state: RoleState, now: float) -> dict[str, Any]:
    """One role's line of a ``roles`` event (``now``: the monotonic clock's time)."""
    return {
        "task": state.task_id,
        "host": state.host,
        "state": state.state,
        "step": state.step,
        "loss": state.loss,
        "samples_per_s": state.samples_rate(now),
        "exchange_share": state.exchange_share,
        "exchange": None if state.exchange is None else state.exchange.to_json(),
        "heartbeat_age": round(now - state.last_seen, 3),
    }


class HistoryWriter:
    """Appends one job's events to ``<folder>/<job_id>.jsonl`` as they happen.

    Parameters
    ----------
    folder : str
        The history folder (local; created with mode 0700: the records name hosts and
        paths of the user's jobs).
    job_id : str
        The run's id.
    """

    def __init__(self, folder: str, job_id: str) -> None:
        folder = _local_folder(folder)
        os.makedirs(folder, mode=0o700, exist_ok=True)
        self.path = os.path.join(folder, job_id + _SUFFIX)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def append(self, event: str, **fields: Any) -> None:
        """Append one event, stamped with the time (seconds since the epoch)."""
        if self._fd is None:
            return
        line = json.dumps({"event": event, "time": time.time(), **fields}, default=str)
        os.write(self._fd, (line + "\n").encode())  # one write: whole, or torn at the end

    def close(self) -> None:
        """Close the file; idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass(frozen=True)
class JobHistory:
    """One job's history as read back.

    Attributes
    ----------
    job_id : str
        The run's id.
    path : str
        Its file.
    events : tuple of dict
        Every whole event, in order.
    torn : int
        Lines skipped because they were not whole JSON objects (a crash mid-write).
    """

    job_id: str
    path: str
    events: tuple[Mapping[str, Any], ...]
    torn: int = 0

    def _of(self, kind: str) -> list[Mapping[str, Any]]:
        return [e for e in self.events if e.get("event") == kind]

    @property
    def job(self) -> Mapping[str, Any]:
        """The ``job`` event (empty if the file lacks it)."""
        found = self._of("job")
        return found[0] if found else {}

    @property
    def started(self) -> float | None:
        """When the job started (its first event)."""
        return float(self.events[0]["time"]) if self.events else None

    @property
    def attempts(self) -> list[Mapping[str, Any]]:
        """The ``attempt_end`` events: one record per attempt that ended."""
        return [e["attempt"] for e in self._of("attempt_end") if isinstance(e.get("attempt"), dict)]

    @property
    def restarts(self) -> list[tuple[float, int]]:
        """``(time, attempt number)`` of every attempt after the first."""
        return [
            (float(e["time"]), int(e["number"])) for e in self._of("attempt") if e["number"] > 1
        ]

    @property
    def samples(self) -> list[Mapping[str, Any]]:
        """The ``roles`` events."""
        return self._of("roles")

    @property
    def end(self) -> Mapping[str, Any] | None:
        """The ``end`` event; None while the job runs, or after the driver died."""
        found = self._of("end")
        return found[-1] if found else None

    @property
    def status(self) -> str:
        """``succeeded``/``failed``, or ``unfinished`` (running, or the driver died)."""
        return str(self.end["status"]) if self.end else "unfinished"

    def series(self, field: str) -> dict[str, tuple[list[float], list[float]]]:
        """``{task: (seconds since start, values)}`` of a sampled role field (e.g. ``loss``)."""
        start = self.started or 0.0
        out: dict[str, tuple[list[float], list[float]]] = {}
        for sample in self.samples:
            for role in sample.get("roles", ()):
                value = role.get(field)
                if isinstance(value, int | float):
                    times, values = out.setdefault(str(role["task"]), ([], []))
                    times.append(float(sample["time"]) - start)
                    values.append(float(value))
        return out


def read_history(path: str | os.PathLike[str]) -> JobHistory:
    """Read one history file, skipping torn lines.

    Raises
    ------
    ConfigError
        The file cannot be read.
    """
    events: list[Mapping[str, Any]] = []
    torn = 0
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as exc:
        raise ConfigError(f"cannot read the job history {path}: {exc}") from None
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            torn += 1
            continue
        if isinstance(event, dict) and "event" in event and "time" in event:
            events.append(event)
        else:
            torn += 1
    job_id = Path(path).name.removesuffix(_SUFFIX)
    return JobHistory(job_id, str(path), tuple(events), torn)


def list_histories(folder: str) -> list[JobHistory]:
    """Every job's history in ``folder``, oldest first (none if the folder is missing)."""
    base = Path(_local_folder(folder))
    if not base.is_dir():
        return []
    found = [read_history(p) for p in base.glob("*" + _SUFFIX)]
    return sorted(found, key=lambda h: (h.started or 0.0, h.job_id))


def find_history(folder: str, job: str) -> JobHistory:
    """The history of ``job``: its id, or a prefix of one id only.

    Raises
    ------
    ConfigError
        No job, or several, match.
    """
    base = Path(_local_folder(folder))
    exact = base / (job + _SUFFIX)
    if exact.is_file():
        return read_history(exact)
    matches = sorted(p for p in base.glob(job + "*" + _SUFFIX)) if base.is_dir() else []
    if len(matches) == 1:
        return read_history(matches[0])
    if not matches:
        raise ConfigError(
            f"no job {job!r} in the history folder {folder}; `tfyarn history` lists them"
        )
    names = ", ".join(p.name.removesuffix(_SUFFIX) for p in matches)
    raise ConfigError(f"{job!r} names several jobs ({names}): give more of the id")


def _mark_restarts(axes: Iterable[Any], history: JobHistory) -> None:
    start = history.started or 0.0
    for when, number in history.restarts:
        for ax in axes:
            ax.axvline(when - start, color="tab:red", linestyle="--", linewidth=1)
        first = next(iter(axes))
        first.annotate(
            f"restart: attempt {number}",
            xy=(when - start, 1.0),
            xycoords=("data", "axes fraction"),
            rotation=90,
            va="top",
            ha="right",
            fontsize=8,
            color="tab:red",
        )


def plot_history(history: JobHistory, out: str | os.PathLike[str]) -> str:
    """Write a PNG of loss and samples/s per role over time, restarts marked.

    Raises
    ------
    ConfigError
        matplotlib is missing, or the history has no samples to draw.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; never a window
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError(
            "tfyarn history plot needs matplotlib: pip install 'tfyarn[plot]'"
        ) from None
    panels = [("loss", "loss"), ("samples_per_s", "samples/s")]
    series = {field: history.series(field) for field, _ in panels}
    if not any(series.values()):
        raise ConfigError(
            f"job {history.job_id} has no samples of loss or samples/s to plot: its roles "
            "reported no steps (ctx.report(step=..., loss=...), or ctx.keras_callback())"
        )
    fig, axes = plt.subplots(len(panels), 1, sharex=True, figsize=(9, 6), constrained_layout=True)
    for ax, (field, label) in zip(axes, panels, strict=True):
        for task, (times, values) in sorted(series[field].items()):
            ax.plot(times, values, marker=".", label=task)
        ax.set_ylabel(label)
        values = [v for _, vs in series[field].values() for v in vs]
        if field == "loss" and values and min(values) > 0 and max(values) > 100 * min(values):
            ax.set_yscale("log")  # a converging loss spans decades
        ax.grid(alpha=0.3)
        if series[field]:
            ax.legend(fontsize=8, loc="best")
    _mark_restarts(list(axes), history)
    axes[-1].set_xlabel("seconds since the job started")
    axes[0].set_title(f"tfyarn job {history.job_id} ({history.status})")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return str(out)
