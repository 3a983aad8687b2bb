"""The driver's Prometheus endpoint: ``/metrics`` for a running job.

Served by prometheus-client on ``spark.tfyarn.metrics.port`` (``tfyarn.run(
metrics_port=...)``; 0, the default, serves nothing), on the driver's address, for the
whole run (every attempt). Values are read when Prometheus scrapes, from the heartbeats
the driver last received (:class:`RunView`); nothing is kept in between.

Per role (labels ``job``, ``role``, ``host``):

- ``tfyarn_role_state{state=...}``: 1 for the role's state, 0 for the others;
- ``tfyarn_role_step``, ``tfyarn_role_loss``, ``tfyarn_role_samples_per_second``;
- ``tfyarn_role_heartbeat_age_seconds``: since its last heartbeat;
- ``tfyarn_role_restarts_total``: attempts of the run this role's failure ended;
- ``tfyarn_role_exchange_sent_bytes_total``, ``..._received_bytes_total``,
  ``tfyarn_role_exchange_seconds_total``, ``tfyarn_role_exchange_share``,
  ``tfyarn_role_ps_requests_total`` (counters restart at each attempt: new processes).

Per job (label ``job``): ``tfyarn_job_attempt`` (the attempt running),
``tfyarn_job_attempts_total`` (attempts ended), ``tfyarn_job_wall_seconds``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from tfyarn.cluster.attempts import Attempt
    from tfyarn.cluster.progress import RoleState

__all__ = ["STATES", "MetricsServer", "RunView", "collect"]

#: The states ``tfyarn_role_state`` enumerates (a role is in exactly one).
STATES = ("starting", "running", "serving", "done", "failed")


@dataclass
class RunView:
    """What the endpoint shows of a run; the launcher updates it as the run goes.

    Attributes
    ----------
    job_id : str
        The run's id.
    begun : float
        When the run started (monotonic clock).
    attempt : int
        The attempt running (or the last one).
    ended : list of Attempt
        The attempts that ended.
    roles : callable
        The current attempt's role states (the progress server's snapshot).
    """

    job_id: str
    begun: float = field(default_factory=time.monotonic)
    attempt: int = 1
    ended: list[Attempt] = field(default_factory=list)
    roles: Callable[[], Sequence[RoleState]] = lambda: ()
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def attempt_ended(self, attempt: Attempt) -> None:
        with self._lock:
            self.ended.append(attempt)

    def restarts_of(self, task_id: str) -> int:
        """Attempts this role's failure ended."""
        with self._lock:
            return sum(1 for a in self.ended if not a.succeeded and a.role == task_id)


def _role_families(view: RunView, states: Sequence[RoleState], now: float) -> list[Metric]:
    labels = ["job", "role", "host"]
    state = GaugeMetricFamily(
        "tfyarn_role_state", "1 for the state the role is in", labels=[*labels, "state"]
    )
    gauges = {
        "step": GaugeMetricFamily("tfyarn_role_step", "last training step reported", labels=labels),
        "loss": GaugeMetricFamily("tfyarn_role_loss", "last loss reported", labels=labels),
        "samples_per_s": GaugeMetricFamily(
            "tfyarn_role_samples_per_second", "samples trained per second", labels=labels
        ),
        "exchange_share": GaugeMetricFamily(
            "tfyarn_role_exchange_share",
            "share of the time between two heartbeats spent in the exchange",
            labels=labels,
        ),
    }
    age = GaugeMetricFamily(
        "tfyarn_role_heartbeat_age_seconds", "seconds since the last heartbeat", labels=labels
    )
    restarts = CounterMetricFamily(
        "tfyarn_role_restarts", "attempts of the run this role's failure ended", labels=labels
    )
    counters = {
        "bytes_sent": CounterMetricFamily(
            "tfyarn_role_exchange_sent_bytes", "payload bytes the exchange sent", labels=labels
        ),
        "bytes_received": CounterMetricFamily(
            "tfyarn_role_exchange_received_bytes",
            "payload bytes the exchange received",
            labels=labels,
        ),
        "seconds": CounterMetricFamily(
            "tfyarn_role_exchange_seconds", "seconds spent in exchange operations", labels=labels
        ),
        "ps_requests": CounterMetricFamily(
            "tfyarn_role_ps_requests", "requests served as a parameter server", labels=labels
        ),
    }
    for s in states:
        values = [view.job_id, s.task_id, s.host or ""]
        for name in STATES:
            state.add_metric([*values, name], 1.0 if s.state == name else 0.0)
        for attr, family in gauges.items():
            value = s.samples_rate(now) if attr == "samples_per_s" else getattr(s, attr)
            if value is not None:
                family.add_metric(values, float(value))
        age.add_metric(values, max(0.0, now - s.last_seen))
        restarts.add_metric(values, float(view.restarts_of(s.task_id)))
        if s.exchange is not None:
            figures = s.exchange.to_json()
            for key, counter in counters.items():
                counter.add_metric(values, float(figures[key]))
    families: list[Metric] = [state, *gauges.values(), age, restarts]
    return families + list(counters.values())


def collect(view: RunView) -> list[Metric]:
    """Every metric of ``view`` now (what a scrape returns)."""
    now = time.monotonic()
    job = [view.job_id]
    attempt = GaugeMetricFamily("tfyarn_job_attempt", "the attempt running", labels=["job"])
    attempt.add_metric(job, float(view.attempt))
    ended = CounterMetricFamily("tfyarn_job_attempts", "attempts that ended", labels=["job"])
    ended.add_metric(job, float(len(view.ended)))
    wall = GaugeMetricFamily(
        "tfyarn_job_wall_seconds", "seconds since the run began", labels=["job"]
    )
    wall.add_metric(job, now - view.begun)
    return [attempt, ended, wall, *_role_families(view, list(view.roles()), now)]


class _ViewCollector(Collector):
    def __init__(self, view: RunView) -> None:
        self._view = view

    def collect(self) -> Iterator[Metric]:
        yield from collect(self._view)


class MetricsServer:
    """``http://host:port/metrics`` for one run, in a thread of the driver.

    Parameters
    ----------
    view : RunView
        What to serve.
    host : str
        The address to bind (the driver's).
    port : int
        The port (> 0).
    """

    def __init__(self, view: RunView, host: str, port: int) -> None:
        from prometheus_client import start_http_server

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_ViewCollector(view))
        server: WSGIServer
        server, self._thread = start_http_server(port, addr=host, registry=registry)
        self._server = server
        self.url = f"http://{host}:{server.server_port}/metrics"

    def close(self) -> None:
        """Stop serving and free the port; idempotent."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
