"""The object ``ctx.strategy()`` returns under an exchange strategy.

:class:`ExchangeStrategy` ties one role's mesh, ring and algorithm together and is the
user's handle: ``distributed_optimizer`` and ``callbacks`` for ``model.fit``;
``begin``/``step_end``/``end`` for a ``tf.GradientTape`` loop; ``allreduce``,
``broadcast`` and ``barrier`` for anything else.

When the job checkpoints (``ctx.checkpoint``), both paths checkpoint and resume without
user code: ``callbacks()`` starts with a
:class:`~tfyarn.exchange.keras_checkpoint.CheckpointCallback`, and ``begin`` restores the
attempt's resume point (returning the global step to start at) while ``step_end``/``end``
write checkpoints from rank 0. Right before each write rank 0 asks the job's parameter
servers for a snapshot tagged with that checkpoint; :func:`serve_ps` restores the one of
the checkpoint the trainers resume from, so ps and trainers continue from the same step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tfyarn import storage
from tfyarn.errors import ConfigError
from tfyarn.exchange.algorithms import COMMON_OPTIONS, Algorithm, make_algorithm
from tfyarn.exchange.checkpoint import Checkpointer, optimizer_variables
from tfyarn.exchange.collectives import LazyRing, allreduce_arrays
from tfyarn.exchange.collectives import broadcast_variables as _broadcast_variables
from tfyarn.exchange.context import ExchangeContext, exchange_listener
from tfyarn.exchange.fusion import FusionCycle
from tfyarn.exchange.hierarchy import HostPlan, HostRing, plan_hosts
from tfyarn.exchange.mesh import Mesh, ps_tasks, training_tasks
from tfyarn.exchange.ps import SnapshotPlan, SnapshotTag
from tfyarn.exchange.ps_access import (
    ParameterServers,
    job_parameter_servers,
    service_parameter_servers,
)
from tfyarn.exchange.ring import Ring
from tfyarn.exchange.tensors import Variable

if TYPE_CHECKING:
    from tfyarn.service.attach import ServiceAttachment

__all__ = ["ExchangeStrategy", "for_context", "ps_snapshot_plan", "serve_ps"]


def _mesh(ctx: ExchangeContext, timeout: float) -> Mesh:
    """This role's mesh over ``ctx``'s listener (a :class:`ConfigError` without one).

    Its connections take the listener's transport options: those are
    ``ctx.transport_options`` already merged with the transport selection's settings.
    """
    return Mesh(ctx.task_id, exchange_listener(ctx), ctx.peers, ctx.secret, timeout)


class ExchangeStrategy:
    """One training role's handle on the exchange.

    Parameters
    ----------
    ctx : ExchangeContext
        The context of a chief or worker (``tfyarn.node.context.NodeContext`` or
        :class:`~tfyarn.exchange.local.LocalContext`).
    name : str, optional
        Algorithm name; defaults to ``ctx.strategy_name``, else ``"allreduce"``.
    options : mapping, optional
        Algorithm options; default ``ctx.strategy_options``.
    service : ServiceAttachment, optional
        A long-lived service whose parameter servers to use instead of the job's own
        (:func:`for_context` passes ``ctx.service``).

    Attributes
    ----------
    rank, size : int
        Position among the training roles (chief first, then workers) and their number.
    collectives : LazyRing
        The ring of training roles, connected on first use.
    ps : list of str
        The parameter servers the algorithm may use (the service's, or the job's).
    attempt : int
        The job's attempt (``ctx.attempt``).
    checkpoint : CheckpointPolicy or None
        The job's checkpoints (``ctx.checkpoint``); None: no checkpoints, no resume.
    resume : Checkpoint or None
        What this attempt resumes from (``ctx.resume``).
    checkpointer : Checkpointer or None
        The checkpoints of a GradientTape loop, from :meth:`begin` on (``model.fit``
        uses its callback's own).
    """

    def __init__(
        self,
        ctx: ExchangeContext,
        name: str | None = None,
        options: Mapping[str, Any] | None = None,
        *,
        service: ServiceAttachment | None = None,
    ) -> None:
        name = name or ctx.strategy_name or "allreduce"
        opts = dict(options if options is not None else ctx.strategy_options)
        if "service" in opts:
            raise ConfigError(
                "the service is not a strategy option: pass ExchangeStrategy(ctx, "
                "service=attachment) (for_context passes ctx.service)"
            )
        self.name = name
        self.task_id: str = ctx.task_id
        self.members = training_tasks(ctx.peers)
        if self.task_id not in self.members:
            raise ConfigError(f"{self.task_id} is not a training role; only chief/workers train")
        self.rank = self.members.index(self.task_id)
        self.size = len(self.members)
        #: A long-lived service's parameter servers (``tfyarn.run(service=...)``), if any.
        self.service = service
        self.attempt = ctx.attempt
        self.checkpoint = ctx.checkpoint
        self.resume = ctx.resume if ctx.checkpoint is not None else None
        self.checkpointer: Checkpointer | None = None
        self._optimizer: Any = None
        self._steps_per_epoch: int | None = None
        #: The fusion cycles of the distributed optimizer (``cycle_time_ms``), closed with it.
        self.fusions: list[FusionCycle] = []
        self.options = {**COMMON_OPTIONS, **{k: v for k, v in opts.items() if k in COMMON_OPTIONS}}
        self.mesh = _mesh(ctx, self.options["timeout"])
        #: Which trainers share a host; hierarchical when the option and the hosts say so.
        self.plan: HostPlan = plan_hosts(self.members, ctx.peers, self.options["hierarchical"])
        self.collectives = LazyRing(self.mesh, self.members, self.options["chunk_bytes"], self.plan)
        try:
            servers = self._servers(ctx)
            self.ps: list[str] = list(servers.names) if servers is not None else []
            self.algorithm: Algorithm = make_algorithm(name, opts, self.collectives, servers)
        except BaseException:
            self.mesh.close()
            raise

    def _servers(self, ctx: ExchangeContext) -> ParameterServers | None:
        bucket_bytes = int(self.options["bucket_bytes"])
        if self.service is not None:
            return service_parameter_servers(self.service, self.task_id, bucket_bytes)
        return job_parameter_servers(self.mesh, ps_tasks(ctx.peers), bucket_bytes)

    # -- collectives -------------------------------------------------------------------
    @property
    def ring(self) -> Ring | HostRing:
        """The training roles' collectives, connected on first use (by every rank).

        A flat :class:`Ring`, or a :class:`~tfyarn.exchange.hierarchy.HostRing` when
        :attr:`plan` is hierarchical (the role's log says which).
        """
        return self.collectives.ring

    def allreduce(self, value: Any, average: bool = True) -> np.ndarray:
        """Sum (or average) ``value`` (array-like, any shape) over all trainers; a new array."""
        a = np.array(value, copy=True)
        if a.dtype.kind not in "fi":
            raise ConfigError(f"allreduce needs a numeric array, got dtype {a.dtype}")
        flat = np.ascontiguousarray(a.reshape(-1))
        self.collectives.allreduce_(flat, average=average and a.dtype.kind == "f")
        return flat.reshape(a.shape)

    def broadcast(self, value: Any, root: int = 0) -> np.ndarray:
        """Rank ``root``'s ``value`` on every rank (same shape and dtype everywhere)."""
        a = np.array(value, copy=True)
        flat = np.ascontiguousarray(a.reshape(-1))
        self.collectives.broadcast_(flat, root)
        return flat.reshape(a.shape)

    def allreduce_arrays(
        self, arrays: Sequence[np.ndarray], average: bool = True
    ) -> list[np.ndarray]:
        """Sum or average float ``arrays`` over all trainers, fused into one pass per dtype.

        Returns new arrays (views of one fresh buffer per dtype).
        """
        return allreduce_arrays(self.collectives, arrays, average=average)

    def allreduce_tensors(self, tensors: Sequence[Any], average: bool = True) -> list[Any]:
        """All-reduce float TensorFlow tensors as graph ops (works inside ``tf.function``).

        See :func:`tfyarn.exchange.keras.allreduce_tensors`.
        """
        from tfyarn.exchange.keras import allreduce_tensors

        return allreduce_tensors(self, list(tensors), average=average)

    def barrier(self) -> None:
        """Wait until every trainer got here."""
        self.collectives.barrier()

    def broadcast_variables(self, variables: Sequence[Variable], root: int = 0) -> None:
        """Give every trainer rank ``root``'s values of ``variables`` (fused, one pass)."""
        _broadcast_variables(self.collectives, variables, root)

    # -- Keras / training-loop integration ----------------------------------------------
    def distributed_optimizer(self, optimizer: Any) -> Any:
        """Make a Keras 3 optimizer exchange gradients as this strategy requires.

        See :func:`tfyarn.exchange.keras.distributed_optimizer`.
        """
        from tfyarn.exchange.keras import distributed_optimizer

        return distributed_optimizer(self, optimizer)

    def callbacks(self, average_metrics: bool = True) -> list[Any]:
        """Keras callbacks for ``model.fit``: checkpoints, initial state, schedules, metrics.

        With checkpoints on, the first one restores the resume point on every rank before
        the algorithm synchronises the start (broadcast, ps INIT), and checkpoints as
        ``ctx.checkpoint`` says.
        """
        from tfyarn.exchange.keras import callbacks

        return callbacks(self, average_metrics=average_metrics)

    # -- checkpoints ---------------------------------------------------------------------
    @property
    def start_step(self) -> int:
        """The shard position this attempt starts at: the resume point's, else 0."""
        return self.resume.shard_position if self.resume is not None else 0

    @property
    def start_epoch(self) -> int:
        """The epoch this attempt starts in (from ``steps_per_epoch`` given to :meth:`begin`)."""
        if self._steps_per_epoch:
            return self.start_step // self._steps_per_epoch
        return self.resume.epoch if self.resume is not None else 0

    def new_checkpointer(self) -> Checkpointer:
        """A :class:`Checkpointer` for one training run of this trainer (checkpoints on).

        Raises
        ------
        ConfigError
            The job does not checkpoint.
        """
        if self.checkpoint is None:
            raise ConfigError(
                "this job does not checkpoint: pass tfyarn.run(checkpoint_dir=..., "
                "checkpoint_every=...)"
            )
        return Checkpointer(
            self.checkpoint, rank=self.rank, attempt=self.attempt, resume=self.resume,
            before_write=self.snapshot_parameter_servers, trainers=self.size,
        )  # fmt: skip

    def snapshot_parameter_servers(self, global_step: int, attempt: int) -> None:
        """Have the job's parameter servers snapshot for the checkpoint of ``global_step``.

        Rank 0 calls it right before it writes that checkpoint; without a ps client (no
        ps algorithm, or before :meth:`begin`), or with a service's ps (which snapshots on
        its own schedule), it does nothing.
        """
        client = self.algorithm.client
        if client is not None and self.service is None:
            client.snapshot(SnapshotTag(global_step, attempt))

    def _optimizer_vars(self) -> list[Any]:
        opt = self._optimizer
        return list(opt.variables) if opt is not None else []

    # -- training-loop hooks -------------------------------------------------------------
    def begin(
        self, model: Any, optimizer: Any = None, *, steps_per_epoch: int | None = None
    ) -> int:
        """Before a custom loop's first step: resume, then synchronise the starting state.

        With checkpoints on, every rank first loads the attempt's resume point (weights
        and optimizer state; another model's checkpoint is refused naming both shapes).

        Parameters
        ----------
        model : object
            With ``weights`` and ``trainable_weights`` (a Keras model).
        optimizer : object, optional
            Its optimizer; default ``model.optimizer``.
        steps_per_epoch : int, optional
            The loop's epoch length: checkpoints then record epoch and step in it, and
            :attr:`start_epoch` follows.

        Returns
        -------
        int
            The shard position to start at (:attr:`start_step`): skip that many batches
            (the resume point's global step, unless an elastic restart changed the
            trainer count).
        """
        opt = optimizer if optimizer is not None else getattr(model, "optimizer", None)
        self._steps_per_epoch = steps_per_epoch
        if self.checkpoint is not None:
            self.checkpointer = self.new_checkpointer()
            self.checkpointer.steps_per_epoch = steps_per_epoch
            if self.resume is not None:
                trainable, saved = list(model.trainable_weights), self.resume.optimizer
                opt_vars = optimizer_variables(opt, trainable, saved)
                self.checkpointer.restore(list(model.weights), opt_vars)
        self.synchronise_start(model, opt)
        return self.start_step

    def synchronise_start(self, model: Any, optimizer: Any = None) -> None:
        """The algorithm's start (broadcast of rank 0's state, ps INIT), without restoring.

        :meth:`begin` calls it after the restore; the ``model.fit`` callbacks call it
        after their checkpoint callback restored. A resumed run's step schedules (EASGD's
        ``tau``, averaging every k) continue at the resume point's step.
        """
        opt = optimizer if optimizer is not None else getattr(model, "optimizer", None)
        self._optimizer = opt
        extra = list(opt.variables) if opt is not None and getattr(opt, "built", False) else []
        if self.resume is not None:
            self.algorithm.steps = self.resume.global_step
        self.algorithm.begin(list(model.weights), list(model.trainable_weights), extra)

    def step_end(self, model: Any, steps: int = 1) -> None:
        """After each optimizer step of a custom loop (or after ``steps`` of them).

        Runs the algorithm's step schedule, then checkpoints when one is due.
        """
        self.algorithm.step_end(list(model.weights), list(model.trainable_weights), steps)
        if self.checkpointer is not None:
            self.checkpointer.step(list(model.weights), self._optimizer_vars(), steps)

    def epoch_end(self, model: Any) -> None:
        """After each epoch of a custom loop (a checkpoint when the policy has no interval)."""
        self.algorithm.epoch_end(list(model.weights), list(model.trainable_weights))
        if self.checkpointer is not None:
            self.checkpointer.epoch_end(list(model.weights), self._optimizer_vars())

    def end(self, model: Any) -> None:
        """After a custom loop's last step: checkpoint the finished state, leave the final
        model in ``model`` (the checkpoint first: ps algorithms say goodbye here).
        """
        if self.checkpointer is not None:
            self.checkpointer.finish(list(model.weights), self._optimizer_vars())
        self.algorithm.end(list(model.weights), list(model.trainable_weights))

    def close(self) -> None:
        """Say goodbye to the parameter servers and close every connection; idempotent."""
        for fusion in self.fusions:
            fusion.close()
        with contextlib.suppress(Exception):
            self.algorithm.close()
        self.collectives.close()
        self.mesh.close()


def for_context(ctx: ExchangeContext) -> ExchangeStrategy:
    """The exchange strategy of a chief/worker context (``ctx.strategy()`` returns it)."""
    return ExchangeStrategy(ctx, service=ctx.service)


def ps_snapshot_plan(ctx: ExchangeContext) -> SnapshotPlan | None:
    """How ps role ``ctx`` snapshots: ``<checkpoint_dir>/ps-<index>``; None without checkpoints.

    It restores the snapshot taken for the checkpoint the trainers resume from
    (``ctx.resume``), so a first attempt, or one with nothing to resume, starts empty
    whatever the folder holds. It keeps one snapshot more than the trainers keep
    checkpoints: it writes each one before theirs, so theirs never outnumber its own.
    """
    policy = ctx.checkpoint
    if policy is None:
        return None
    resume = ctx.resume
    tag = SnapshotTag(resume.global_step, resume.attempt) if resume is not None else None
    return SnapshotPlan(storage.join(policy.directory, f"ps-{ctx.index}"), policy.keep + 1, tag)


def serve_ps(ctx: ExchangeContext) -> None:
    """Serve this parameter server's shards until every trainer said goodbye.

    Synchronous for ``sync_ps``, asynchronous otherwise (DOWNPOUR, and the center
    variable of EASGD/ADAG, which only sees ELASTIC/ADD requests). With checkpoints on,
    it snapshots when rank 0 checkpoints and resumes as :func:`ps_snapshot_plan` says.

    Raises
    ------
    TransportError
        A trainer disconnected without saying goodbye (it failed).
    """
    from tfyarn.exchange.ps import job_server

    timeout = float(ctx.strategy_options.get("timeout", COMMON_OPTIONS["timeout"]))
    mesh = _mesh(ctx, timeout)
    try:
        sync = ctx.strategy_name == "sync_ps"
        plan = ps_snapshot_plan(ctx)
        job_server(mesh, training_tasks(ctx.peers), synchronous=sync, snapshots=plan).serve()
    finally:
        mesh.close()
