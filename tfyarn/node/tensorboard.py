"""TensorBoard for a running job: the chief's TensorBoard, and the exchange's own scalars.

:class:`TensorBoardServer` runs ``python -m tensorboard.main`` over the job's log folder
as a child of the chief's role process, bound to the chief's address on a free port (its
own ``--port 0``), and reads the URL TensorBoard prints. The child gets SIGTERM from
Linux when the role process dies in any way (``PR_SET_PDEATHSIG``), and
:meth:`TensorBoardServer.close` stops it when the role ends: no TensorBoard outlives its
job. Why on the chief's host and not the driver's: TensorFlow 2.21 writes summaries only
to local paths (no ``hdfs://``), so the log folder is on the chief's host.

:class:`ExchangeSummaries` writes what :mod:`tfyarn.exchange.stats` counted to
``<role log_dir>/exchange`` every few seconds: seconds and megabytes per training step,
the share of the time spent waiting for the exchange, and for a parameter server its
requests per second.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from tfyarn.errors import TFYarnError
from tfyarn.exchange.stats import ExchangeFigures, ExchangeStats, waiting_share

__all__ = ["ExchangeSummaries", "TensorBoardServer"]

log = logging.getLogger("tfyarn")

_URL = re.compile(r"TensorBoard \S+ at (http://\S+?)/? \(Press CTRL\+C to quit\)")
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class TensorBoardServer:
    """TensorBoard over ``log_dir``, bound to ``host`` on a free port.

    Start it from the role process's main thread: Linux sends the parent-death signal
    when the *thread* that started the child ends.

    Parameters
    ----------
    log_dir : str
        The folder to serve (created if missing).
    host : str
        The address to bind (the role's own).
    """

    def __init__(self, log_dir: str, host: str) -> None:
        os.makedirs(log_dir, exist_ok=True)
        self.log_dir = log_dir
        self.url: str | None = None
        self._found = threading.Event()
        self._tail: collections.deque[str] = collections.deque(maxlen=20)
        command = [sys.executable, "-m", "tensorboard.main", "--logdir", log_dir]
        command += ["--host", host, "--port", "0", "--reload_interval", "5"]
        self._proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
            preexec_fn=_die_with_parent,
        )
        self._reader = threading.Thread(target=self._read, name="tfyarn-tensorboard", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for raw in self._proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            self._tail.append(line)
            found = _URL.search(line)
            if found and self.url is None:
                self.url = found.group(1)
                self._found.set()
        self._found.set()  # TensorBoard exited: wait_url says so

    def wait_url(self, timeout: float) -> str:
        """TensorBoard's URL, once it serves.

        Raises
        ------
        TFYarnError
            TensorBoard exited or did not serve within ``timeout`` seconds; the error
            carries the last lines of its output.
        """
        self._found.wait(timeout)
        if self.url is not None:
            return self.url
        tail = "\n".join(self._tail)
        if self._proc.poll() is not None:
            raise TFYarnError(
                f"TensorBoard exited with status {self._proc.returncode} before serving "
                f"{self.log_dir}; its last output:\n{tail}"
            )
        raise TFYarnError(
            f"TensorBoard did not serve {self.log_dir} within {timeout:.0f} s; its last "
            f"output:\n{tail}"
        )

    def close(self) -> None:
        """Stop TensorBoard (SIGTERM, then SIGKILL after 5 s); idempotent."""
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        self._reader.join(timeout=2)


class ExchangeSummaries:
    """A thread writing a role's exchange figures as TensorBoard scalars.

    Nothing is written (and TensorFlow is not imported) until the exchange did
    something: a job without an exchange strategy gets no ``exchange`` run.

    Parameters
    ----------
    log_dir : str
        The role's log folder; scalars go to ``<log_dir>/exchange``.
    stats : ExchangeStats
        The counters to read.
    step : callable
        The role's latest training step (None before the first, and for roles that do
        not train: their scalars are then indexed by seconds since the role started).
    interval : float
        Seconds between writes.
    """

    def __init__(
        self,
        log_dir: str,
        stats: ExchangeStats,
        step: Callable[[], int | None],
        interval: float = 5.0,
    ) -> None:
        self.folder = os.path.join(log_dir, "exchange")
        self._stats = stats
        self._step = step
        self._interval = interval
        self._begun = time.monotonic()
        self._stop = threading.Event()
        self._writer: object = None
        self._last: tuple[float, int | None, ExchangeFigures] | None = None
        self._thread = threading.Thread(target=self._run, name="tfyarn-summaries", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._write_once()

    def _write_once(self) -> None:
        figures = self._stats.figures()
        if not figures.active:
            return
        now, step = time.monotonic(), self._step()
        last, self._last = self._last, (now, step, figures)
        if last is None:
            return
        then, last_step, before = last
        scalars: dict[str, float] = {
            "exchange/waiting_share": waiting_share(figures.seconds - before.seconds, now - then),
            "exchange/megabytes_sent": figures.bytes_sent / 1e6,
        }
        if figures.ps_requests:
            scalars["exchange/ps_requests_per_second"] = (
                figures.ps_requests - before.ps_requests
            ) / max(now - then, 1e-9)
        if step is not None and last_step is not None and step > last_step:
            steps = step - last_step
            scalars["exchange/seconds_per_step"] = (figures.seconds - before.seconds) / steps
            scalars["exchange/megabytes_sent_per_step"] = (
                (figures.bytes_sent - before.bytes_sent) / steps / 1e6
            )
        index = step if step is not None else int(now - self._begun)
        try:
            self._emit(scalars, index)
        except Exception as exc:  # summaries are a view; training goes on without them
            log.warning("tfyarn: cannot write the exchange's TensorBoard scalars: %s", exc)
            self._stop.set()

    def _emit(self, scalars: dict[str, float], step: int) -> None:
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.folder)
        writer: tf.summary.SummaryWriter = self._writer
        with writer.as_default():
            for name, value in scalars.items():
                tf.summary.scalar(name, value, step=step)
        writer.flush()

    def close(self) -> None:
        """Write the last figures and stop; idempotent."""
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join(timeout=self._interval + 5)
            with contextlib.suppress(Exception):
                self._write_once()
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()  # type: ignore[attr-defined]
            self._writer = None
