"""What watches a run from the driver: its history, its metrics endpoint, its TensorBoard link.

One :class:`RunObservers` per :func:`tfyarn.run` call, for all its attempts. The
launcher tells it when an attempt starts (with that attempt's progress server), calls
:meth:`RunObservers.poll` from its poll loop, hands it each ended attempt's record, and
the run's end. Each part is optional:

- the history file (:mod:`tfyarn.cluster.history`), on unless the history dir is empty;
- ``/metrics`` (:mod:`tfyarn.cluster.metrics`), with a metrics port;
- the TensorBoard link (:mod:`tfyarn.cluster.tensorboard_link`), with ``tensorboard``.

Each is a view of the job, not part of it: one that cannot start (a port taken, a history
folder not writable, as ``~`` may be in a YARN container) or stops working (a full disk)
is logged as a warning, and the job goes on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tfyarn.cluster.history import HistoryWriter, role_sample
from tfyarn.cluster.metrics import MetricsServer, RunView

if TYPE_CHECKING:
    from tfyarn.cluster.attempts import Attempt
    from tfyarn.cluster.progress import ProgressServer
    from tfyarn.cluster.tensorboard_link import TensorBoardLink

__all__ = ["RunObservers"]

log = logging.getLogger("tfyarn")


class RunObservers:
    """The run's history, metrics endpoint and TensorBoard link (see the module).

    Parameters
    ----------
    job_id : str
        The run's id.
    host : str
        The driver's address, where the endpoints listen.
    settings : mapping
        The run's settings, recorded in the history's ``job`` event.
    history_dir : str
        The history folder; empty: no history.
    history_interval : float
        Seconds between two samples of the roles in the history.
    metrics_port : int
        Port of ``/metrics``; 0: none.
    tensorboard : bool
        Serve the TensorBoard link.
    """

    def __init__(
        self,
        job_id: str,
        host: str,
        settings: Mapping[str, Any],
        *,
        history_dir: str,
        history_interval: float,
        metrics_port: int,
        tensorboard: bool,
    ) -> None:
        self.view = RunView(job_id)
        self._interval = history_interval
        self._server: ProgressServer | None = None
        self._sampled = 0.0
        self._announced: set[str] = set()
        self.tensorboard_target: str | None = None
        self.history: HistoryWriter | None = None
        self.metrics: MetricsServer | None = None
        self.link: TensorBoardLink | None = None
        self._history_path: str | None = None
        # Each part is a view of the job: one that cannot start is said, and the job runs.
        if metrics_port:
            try:
                self.metrics = MetricsServer(self.view, host, metrics_port)
                print(f"tfyarn: Prometheus metrics at {self.metrics.url}", flush=True)
            except OSError as exc:
                log.warning(
                    "tfyarn: no Prometheus metrics: cannot serve %s:%d (%s); choose another "
                    "port (spark.tfyarn.metrics.port)", host, metrics_port, exc,
                )  # fmt: skip
        if tensorboard:
            from tfyarn.cluster.tensorboard_link import TensorBoardLink

            try:
                self.link = TensorBoardLink(host, lambda: self.tensorboard_target)
                print(f"tfyarn: TensorBoard at {self.link.url} (once it serves)", flush=True)
            except OSError as exc:
                log.warning("tfyarn: no TensorBoard link on %s: %s", host, exc)
        if history_dir:
            try:
                self.history = HistoryWriter(history_dir, job_id)
                self._history_path = self.history.path
            except OSError as exc:
                log.warning(
                    "tfyarn: no history of this job: cannot write to %s (%s); set "
                    "spark.tfyarn.history.dir to a writable folder", history_dir, exc,
                )  # fmt: skip
        self._append(
            "job",
            job_id=job_id,
            settings=dict(settings),
            tensorboard_url=self.tensorboard_url,
            metrics_url=None if self.metrics is None else self.metrics.url,
        )

    def _append(self, event: str, **fields: Any) -> None:
        """Append to the history; a failed write (a full disk) ends the history, not the job."""
        if self.history is None:
            return
        try:
            self.history.append(event, **fields)
        except OSError as exc:
            log.warning("tfyarn: the job's history stops here: %s: %s", self.history.path, exc)
            self.history.close()
            self.history = None

    @property
    def tensorboard_url(self) -> str | None:
        """The run's TensorBoard address (the driver's link), if it has one."""
        return None if self.link is None else self.link.url

    @property
    def history_path(self) -> str | None:
        """The run's history file, if it has one (also after a failed write ended it)."""
        return self._history_path

    def attempt_started(self, number: int, of: int, server: ProgressServer) -> None:
        """Attempt ``number`` (of at most ``of``) starts, reporting to ``server``."""
        self._server = server
        self.view.attempt = number
        self.view.roles = server.snapshot
        self.tensorboard_target = None  # the new chief starts its own
        self._announced.clear()
        self._append("attempt", number=number, of=of)

    def poll(self) -> None:
        """Called every half second or so: sample the roles, notice TensorBoard."""
        if self._server is None:
            return
        states = self._server.snapshot()
        for s in states:
            self._notice(s.task_id, s.metrics)
        now = time.monotonic()
        if self.history is not None and now - self._sampled >= self._interval:
            self._sampled = now
            roles = [role_sample(s, now) for s in states]
            self._append("roles", attempt=self.view.attempt, roles=roles)

    def _notice(self, task_id: str, metrics: Mapping[str, Any]) -> None:
        url, error = metrics.get("tensorboard_url"), metrics.get("tensorboard_error")
        if url and url != self.tensorboard_target:
            self.tensorboard_target = str(url)
            log.info("tfyarn: TensorBoard of %s serves at %s", task_id, url)
        if error and task_id not in self._announced:
            self._announced.add(task_id)
            log.warning("tfyarn: TensorBoard on %s: %s", task_id, error)

    def attempt_ended(self, attempt: Attempt) -> None:
        """Record an ended attempt (``run_attempts``'s ``record``)."""
        self._sampled = 0.0
        self.poll()  # the roles as the attempt left them
        self.view.attempt_ended(attempt)
        self._append("attempt_end", attempt=dataclasses.asdict(attempt))

    def finished(self, outcome: Mapping[str, Any]) -> None:
        """Record the run's end (``status``, and the result's figures or the error)."""
        self._append("end", tensorboard_url=self.tensorboard_url, **outcome)

    def close(self) -> None:
        """Stop the endpoints and close the history; idempotent."""
        for part in (self.metrics, self.link, self.history):
            if part is not None:
                with contextlib.suppress(Exception):
                    part.close()
        self.metrics = self.link = None
