"""Progress on the driver: a heartbeat server fed by the roles, and a live display.

Roles connect once (HMAC handshake on the job secret) and send newline-delimited JSON
(:mod:`tfyarn.node.heartbeat`). The server keeps one :class:`RoleState` per role; the
launcher polls it for errors (a failed role is reported here seconds before Spark's own
task failure reaches the driver) and the display renders it. The same connections carry
the driver's ``finish`` to the serving roles when training is over (:meth:`tell`).

A failure arrives as an ``error`` message, from the role itself (its own exception) or
from its barrier task (a role process that was killed or exited: a
:class:`~tfyarn.node.failure.RoleFailure` record); a role's first report is the one kept.
:func:`timeout_message` says what a job that ran out of time was waiting for.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tfyarn.errors import FrameError
from tfyarn.exchange.stats import ExchangeFigures, waiting_share
from tfyarn.node.failure import RoleFailure, likeliest_cause
from tfyarn.transport.auth import server_handshake
from tfyarn.transport.integrity import TaggedLines
from tfyarn.transport.tls import server_context

if TYPE_CHECKING:
    from tfyarn.transport.options import TransportOptions

__all__ = [
    "AttemptNumber",
    "ProgressDisplay",
    "ProgressServer",
    "RoleState",
    "describe_roles",
    "progress_line",
    "roles_table",
    "timeout_message",
]

log = logging.getLogger("tfyarn")

#: Seconds without a samples report after which a role's samples/s shows as 0.
_RATE_STALE_AFTER = 10.0

#: A heartbeat line longer than this is not a heartbeat.
_MAX_LINE = 1 << 20


@dataclass
class RoleState:
    """What the driver knows about one role."""

    task_id: str
    state: str = "starting"
    host: str | None = None
    step: int | None = None
    loss: float | None = None
    samples_per_s: float | None = None
    last_seen: float = field(default_factory=time.monotonic)
    ready_at: float | None = None
    error: str | None = None
    traceback: str | None = None
    #: How the role failed (the first report), and when that report arrived.
    failure: RoleFailure | None = None
    failed_at: float | None = None
    #: When the role's step last changed (monotonic clock); None before its first step.
    step_at: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    warned_silent: bool = False
    warned_stalled: bool = False
    #: The role's exchange counters (totals), from its latest heartbeat.
    exchange: ExchangeFigures | None = None
    #: Share of the time between its last two heartbeats the role spent in the exchange.
    exchange_share: float | None = None
    _rate_mark: tuple[float, int] | None = None
    _exchange_mark: tuple[float, float] | None = None

    def update(self, message: dict[str, Any]) -> None:
        """Fold one heartbeat message into the state."""
        now = time.monotonic()
        self.last_seen = now
        self.warned_silent = False
        kind = message.get("kind")
        if "exchange" in message:
            self._count_exchange(now, ExchangeFigures.from_json(message["exchange"]))
        if kind == "ready":
            self.state, self.ready_at = "running", now
            self.host = message.get("host", self.host)
            self.metrics["tf_port"] = message.get("tf_port")
            self.metrics["transport"] = message.get("transport")
        elif kind == "done":
            self.state = "done"
        elif kind == "error":
            self._fail(message, now)
        elif kind == "metrics":
            if message.get("state"):
                self.state = str(message["state"])
            if message.get("step") is not None:
                step = int(message["step"])
                if step != self.step:
                    self.step, self.step_at = step, now
                    self.warned_stalled = False
            if message.get("loss") is not None:
                self.loss = float(message["loss"])
            samples = message.get("samples")
            if samples:
                self._count_samples(now, int(samples))
            skip = {"task", "kind", "time", "state", "samples"}
            self.metrics.update({k: v for k, v in message.items() if k not in skip})

    def _fail(self, message: dict[str, Any], now: float) -> None:
        """Record the role's failure; a later report (its task's, after its own) is ignored."""
        if self.state == "failed":
            return
        self.state, self.failed_at = "failed", now
        self.error = message.get("error")
        self.traceback = message.get("traceback")
        record = message.get("failure")
        if isinstance(record, dict):
            try:
                self.failure = RoleFailure.from_json(record)
                return
            except ValueError as exc:
                log.warning("tfyarn: %s sent a bad failure record: %s", self.task_id, exc)
        host = self.host or "?"
        self.failure = RoleFailure(
            self.task_id,
            host,
            f"role {self.task_id} on host {host} failed: {self.error}",
            str(self.traceback or self.error or ""),
            peer_lost=bool(message.get("peer_lost")),
        )

    def _count_exchange(self, now: float, figures: ExchangeFigures | None) -> None:
        if figures is None:
            return
        self.exchange = figures
        if self._exchange_mark is not None:
            since, seconds = self._exchange_mark
            if now > since:
                self.exchange_share = waiting_share(figures.seconds - seconds, now - since)
        self._exchange_mark = (now, figures.seconds)

    def samples_rate(self, now: float) -> float | None:
        """Samples/s now: the last measured rate, 0 once no samples came for 10 s (a role
        that stopped training, or a stalled one); None before it reported any."""
        if self.samples_per_s is None or self._rate_mark is None:
            return None
        return 0.0 if now - self._rate_mark[0] > _RATE_STALE_AFTER else self.samples_per_s

    def stalled_for(self, now: float) -> float | None:
        """Seconds a running role has made no step progress (None before its first step)."""
        if self.state != "running" or self.step_at is None:
            return None
        return now - self.step_at

    def _count_samples(self, now: float, samples: int) -> None:
        if self._rate_mark is not None:
            since, _ = self._rate_mark
            if now > since:
                self.samples_per_s = samples / (now - since)
        self._rate_mark = (now, samples)


class ProgressServer:
    """Accepts heartbeat connections from the roles and keeps their state.

    Parameters
    ----------
    host : str
        Address to listen on (the driver's address as Spark uses it).
    secret : bytes
        The job secret.
    tasks : iterable of str
        The roles' task ids.
    tls : TransportOptions, optional
        Serve TLS with its ``tls_cert_chain``/``tls_private_key`` (a job run with
        ``tls=True``); None: plain TCP (the lines are tagged either way).
    """

    def __init__(
        self,
        host: str,
        secret: bytes,
        tasks: Iterable[str],
        tls: TransportOptions | None = None,
    ) -> None:
        self._secret = secret
        self._tls = None if tls is None else server_context(tls)
        self._lock = threading.Lock()
        self.roles = {t: RoleState(t) for t in tasks}
        self._sock = socket.create_server((host, 0))
        self._sock.settimeout(0.5)
        self.address = (host, self._sock.getsockname()[1])
        self._closed = threading.Event()
        self._conns: list[socket.socket] = []
        self._by_task: dict[str, tuple[socket.socket, TaggedLines]] = {}
        self._thread = threading.Thread(target=self._accept, name="tfyarn-progress", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, peer = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn, peer), daemon=True).start()

    def _serve(self, conn: socket.socket, peer: Any) -> None:
        if self._tls is not None:
            conn.settimeout(10)
            try:
                conn = self._tls.wrap_socket(conn, server_side=True)
            except (OSError, ValueError) as exc:
                conn.close()
                log.warning("tfyarn: refused a progress connection from %s: TLS: %s", peer, exc)
                return
        with conn:
            try:
                keys = server_handshake(conn, self._secret, timeout=10)
            except Exception as exc:
                log.warning("tfyarn: refused a progress connection from %s: %s", peer, exc)
                return
            tagged = TaggedLines(keys.frame_auth(), f"{peer[0]}:{peer[1]}", _MAX_LINE)
            with self._lock:
                self._conns.append(conn)
            conn.settimeout(None)
            while not self._closed.is_set():
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                try:
                    payloads = tagged.feed(chunk)
                except FrameError as exc:  # a forged line, or one without end
                    log.warning("tfyarn: dropped a progress connection: %s", exc)
                    return
                for payload in payloads:
                    self._handle(payload, conn, tagged)

    def _handle(self, payload: bytes, conn: socket.socket, tagged: TaggedLines) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            return
        task = message.get("task")
        with self._lock:
            if task in self.roles:
                self.roles[task].update(message)
                self._by_task[task] = (conn, tagged)

    def tell(self, tasks: Iterable[str], message: dict[str, Any]) -> list[str]:
        """Send ``message`` to the roles ``tasks``; return those that could not be reached."""
        payload = json.dumps(message).encode()
        missed = []
        for task in tasks:
            with self._lock:
                known = self._by_task.get(task)
            try:
                if known is None:
                    raise OSError("not connected")
                conn, tagged = known
                conn.sendall(tagged.seal(payload))
            except OSError:
                missed.append(task)
        return missed

    def all_done(self, tasks: Iterable[str]) -> bool:
        """Whether every role of ``tasks`` reported ``done``."""
        with self._lock:
            return all(self.roles[t].state == "done" for t in tasks)

    def failed_role(self) -> RoleState | None:
        """The failed role whose failure is the likeliest cause, if any role failed.

        Of the failures reported so far, in the order they arrived, a lost role comes
        before a role's own error, which comes before a lost connection to a peer (see
        :func:`~tfyarn.node.failure.likeliest_cause`).
        """
        with self._lock:
            failed = [s for s in self.roles.values() if s.state == "failed"]
        failed.sort(key=lambda s: s.failed_at or 0.0)
        by_failure = {id(s.failure): s for s in failed if s.failure is not None}
        cause = likeliest_cause(s.failure for s in failed if s.failure is not None)
        if cause is not None:
            return by_failure[id(cause)]
        return failed[0] if failed else None

    def all_ready_at(self) -> float | None:
        """When the last role became ready (monotonic clock), or None."""
        with self._lock:
            times = [s.ready_at for s in self.roles.values()]
        return None if any(t is None for t in times) else max(t for t in times if t is not None)

    def silent_roles(self, after: float) -> list[RoleState]:
        """Roles still running but not heard from for ``after`` seconds (each named once)."""
        now = time.monotonic()
        found = []
        with self._lock:
            for state in self.roles.values():
                if state.state in ("done", "failed") or state.warned_silent:
                    continue
                if now - state.last_seen > after:
                    state.warned_silent = True
                    found.append(state)
        return found

    def stalled_roles(self, after: float) -> list[RoleState]:
        """Roles heard from but with no step progress for ``after`` seconds (each named once)."""
        now = time.monotonic()
        found = []
        with self._lock:
            for state in self.roles.values():
                still = state.stalled_for(now)
                if still is None or still <= after or state.warned_stalled:
                    continue
                if now - state.last_seen > after:
                    continue  # silent, not stalled: named by silent_roles
                state.warned_stalled = True
                found.append(state)
        return found

    def snapshot(self) -> list[RoleState]:
        """A copy of every role's state."""
        import copy

        with self._lock:
            return [copy.copy(s) for s in self.roles.values()]

    def close(self) -> None:
        """Stop accepting and close every connection; idempotent."""
        self._closed.set()
        with contextlib.suppress(OSError):
            self._sock.close()
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=2)


def _describe(state: RoleState, now: float, silent_after: float) -> tuple[bool, str]:
    """Whether the job waits on ``state``'s role, and what that role is doing."""
    task, quiet = state.task_id, now - state.last_seen
    if state.state == "done":
        return False, f"{task} is done"
    if state.state == "failed":
        return True, f"{task} failed"
    if quiet > silent_after:
        return True, f"{task} has sent no heartbeat for {quiet:.0f} s"
    if state.state == "starting":
        return True, f"{task} is still starting"
    if state.state == "serving":
        return False, f"{task} is serving"
    since = state.step_at if state.step_at is not None else state.ready_at
    still = now - (since if since is not None else state.last_seen)
    return True, f"{task} has been running with no step progress for {still:.0f} s"


def describe_roles(states: Iterable[RoleState], now: float, silent_after: float) -> str:
    """One clause per role, the roles the job waits on first.

    E.g. ``"worker:1 has been running with no step progress for 42 s; worker:0 is
    done"``. A running role's time counts from its last step change (from when it became
    ready, before its first step); a role not heard from for ``silent_after`` seconds is
    named as silent instead.
    """
    waiting: list[str] = []
    others: list[str] = []
    for state in states:
        waits, text = _describe(state, now, silent_after)
        (waiting if waits else others).append(text)
    return "; ".join(waiting + others)


def timeout_message(
    timeout: float, states: Iterable[RoleState], heartbeat_interval: float, now: float | None = None
) -> str:
    """What a job cancelled after ``timeout`` seconds says: what it was waiting for.

    Parameters
    ----------
    timeout : float
        The job's ``timeout=``.
    states : iterable of RoleState
        The roles as the progress server last saw them.
    heartbeat_interval : float
        Seconds between heartbeats; a role silent for three of them (at least 10 s) is
        named as silent.
    now : float, optional
        The monotonic clock's time (default: now).
    """
    now = time.monotonic() if now is None else now
    roles = describe_roles(states, now, max(3 * heartbeat_interval, 10.0))
    return (
        f"the job did not finish within timeout={timeout:.0f} s and was cancelled: {roles}. "
        "Raise timeout= if training legitimately takes longer; a role with no step progress "
        "is blocked (on a peer, on data) or does not report its steps (ctx.report(step=...))"
    )


@dataclass(frozen=True)
class AttemptNumber:
    """Which attempt of a run the display shows: ``number`` of at most ``of``.

    Parameters
    ----------
    number : int
        The attempt, from 1.
    of : int
        The most attempts the run makes (``max_restarts + 1``).
    """

    number: int = 1
    of: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.number <= self.of:
            raise ValueError(
                f"attempt {self.number} of {self.of} is not an attempt: the number counts "
                "from 1 up to max_restarts + 1"
            )

    @property
    def label(self) -> str:
        """``"attempt 2 of 4"``; empty for a run that cannot restart (one attempt only)."""
        # Without restarts every run is "attempt 1 of 1": saying so is noise.
        return "" if self.of == 1 else f"attempt {self.number} of {self.of}"


def _state_word(state: RoleState, now: float, stalled_after: float | None) -> str:
    """The role's state, ``stalled`` when running with no step progress for too long."""
    still = state.stalled_for(now)
    if stalled_after is not None and still is not None and still > stalled_after:
        return f"stalled {still:.0f}s"
    return state.state


def _share(state: RoleState) -> str | None:
    return None if state.exchange_share is None else f"{100 * state.exchange_share:.0f}%"


def progress_line(
    states: Iterable[RoleState],
    attempt: AttemptNumber,
    now: float | None = None,
    stalled_after: float | None = None,
) -> str:
    """The periodic progress line of a display that is not a terminal.

    E.g. ``"tfyarn progress (attempt 2 of 3): worker:0:running step=40 loss=0.3120
    samples/s=812 exchange=31%  worker:1:stalled 75s step=38"``; without restarts there
    is no attempt in it. ``exchange`` is the share of the role's time spent waiting for
    the exchange; ``stalled`` names a role whose heartbeats arrive but whose step has not
    moved for ``stalled_after`` seconds.
    """
    now = time.monotonic() if now is None else now
    parts = []
    for s in states:
        fields = [f"{s.task_id}:{_state_word(s, now, stalled_after)}"]
        if s.step is not None:
            fields.append(f"step={s.step}")
        if s.loss is not None:
            fields.append(f"loss={s.loss:.4f}")
        if (rate := s.samples_rate(now)) is not None:
            fields.append(f"samples/s={rate:.0f}")
        if (share := _share(s)) is not None:
            fields.append(f"exchange={share}")
        parts.append(" ".join(fields))
    where = f" ({attempt.label})" if attempt.label else ""
    return f"tfyarn progress{where}: " + "  ".join(parts)


def roles_table(
    states: Iterable[RoleState],
    attempt: AttemptNumber,
    now: float,
    stalled_after: float | None = None,
) -> Any:
    """The live display's table (a ``rich.table.Table``): one row per role.

    Its title names the attempt when the run can restart (``tfyarn roles, attempt 2 of
    3``); ``now`` is the monotonic clock's time, for the "last seen" column. The
    "exchange" column is the share of the role's time spent waiting for the exchange
    (between its last two heartbeats); a role with no step progress for
    ``stalled_after`` seconds shows as ``stalled``.
    """
    from rich.table import Table

    title = "tfyarn roles" + (f", {attempt.label}" if attempt.label else "")
    table = Table(title=title, expand=False)
    columns = ("role", "host", "state", "step", "samples/s", "loss", "exchange", "last seen")
    for column in columns:
        table.add_column(column)
    for s in states:
        table.add_row(
            s.task_id,
            s.host or "-",
            _state_word(s, now, stalled_after),
            "-" if s.step is None else str(s.step),
            "-" if (rate := s.samples_rate(now)) is None else f"{rate:,.0f}",
            "-" if s.loss is None else f"{s.loss:.4f}",
            _share(s) or "-",
            f"{now - s.last_seen:.0f}s ago",
        )
    return table


class ProgressDisplay:
    """Live table of the roles (rich) on a terminal; a periodic log line elsewhere.

    Parameters
    ----------
    server : ProgressServer
        Where the state comes from.
    silent_after : float
        Seconds without a heartbeat, or without step progress while heartbeats arrive,
        after which a role is named in a warning (as silent, or as stalled).
    enabled : bool
        False: show nothing (warnings are still logged).
    attempt : AttemptNumber
        The attempt shown (its number is in the table's title and the log line).
    """

    def __init__(
        self,
        server: ProgressServer,
        silent_after: float,
        enabled: bool = True,
        attempt: AttemptNumber | None = None,
    ) -> None:
        from rich.console import Console

        self._server = server
        self._silent_after = silent_after
        self._attempt = attempt or AttemptNumber()
        self._console = Console(stderr=True)
        self._enabled = enabled
        self._live: Any = None
        self._last_line = 0.0
        if enabled and self._console.is_terminal:
            from rich.live import Live

            self._live = Live(self._table(), console=self._console, refresh_per_second=2)
            self._live.start()

    def _table(self) -> Any:
        now = time.monotonic()
        return roles_table(self._server.snapshot(), self._attempt, now, self._silent_after)

    def refresh(self) -> None:
        """Redraw, and warn about silent roles and stalled ones."""
        for state in self._server.silent_roles(self._silent_after):
            log.warning(
                "tfyarn: role %s (host %s) has sent no heartbeat for %.0f s",
                state.task_id,
                state.host or "?",
                time.monotonic() - state.last_seen,
            )
        for state in self._server.stalled_roles(self._silent_after):
            log.warning(
                "tfyarn: role %s (host %s) is stalled: its heartbeats arrive but its step "
                "(%s) has not moved for %.0f s; it waits on a peer or on data, or is stuck",
                state.task_id,
                state.host or "?",
                state.step,
                state.stalled_for(time.monotonic()) or 0.0,
            )
        if self._live is not None:
            self._live.update(self._table())
        elif self._enabled and time.monotonic() - self._last_line > 10:
            self._last_line = time.monotonic()
            snapshot = self._server.snapshot()
            line = progress_line(snapshot, self._attempt, stalled_after=self._silent_after)
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        """Stop the live display."""
        if self._live is not None:
            self._live.update(self._table())
            self._live.stop()
            self._live = None
