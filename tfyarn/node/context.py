"""The node context: what ``train_fn(ctx)`` sees of the cluster it runs in."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from tfyarn.cluster.plan import RoleSpec
from tfyarn.errors import ConfigError
from tfyarn.node import feed
from tfyarn.node.job import InputMode, JobSpec
from tfyarn.node.messages import Member

if TYPE_CHECKING:
    import tensorflow as tf

    from tfyarn.exchange.checkpoint import Checkpoint, CheckpointPolicy
    from tfyarn.node.heartbeat import HeartbeatClient
    from tfyarn.node.ports import ReservedPort
    from tfyarn.service.attach import ServiceAttachment
    from tfyarn.transport.base import Listener
    from tfyarn.transport.options import TransportOptions

__all__ = ["Member", "NodeContext", "current_context", "set_current_context"]

log = logging.getLogger("tfyarn")


class NodeContext:
    """What a role knows about itself and the cluster; passed to ``train_fn``.

    Attributes
    ----------
    role : str
        ``"chief"``, ``"worker"``, ``"ps"`` or ``"evaluator"``.
    index : int
        Index among roles of the same name.
    task_id : str
        ``"role:index"``.
    is_chief : bool
        True for the role that saves the model and returns the result: the chief, or
        ``worker:0`` when the job has no chief.
    cluster_spec : dict
        TensorFlow cluster dict (every role but the evaluator).
    tf_config : str
        The TF_CONFIG JSON, also in ``os.environ["TF_CONFIG"]`` before ``train_fn`` runs.
    model_dir : str
        Where the chief saves the model.
    peers : dict
        ``task_id`` -> tfyarn transport address, when a transport was requested.
    listener : Listener or None
        This role's transport listener, when a transport was requested.
    transport : str or None
        The transport in use (what was actually picked, never a silent fallback).
    transport_options : TransportOptions or None
        The job's transport settings (``tfyarn.run(transport_options=...)``), if given.
    secret : bytes
        The job secret.
    files : list of str
        This trainer's share of the input files (:attr:`InputMode.FILES`).
    service : ServiceAttachment or None
        The long-running service whose parameter servers the job attached to
        (``tfyarn.run(service=...)``), else None.
    attempt : int
        Which attempt of the run this is (1, then 2 after a restart, ...).
    checkpoint : CheckpointPolicy or None
        Where and how often trainers checkpoint (``tfyarn.run(checkpoint_dir=...,
        checkpoint_every=...)``; on by default when restarts are), else None.
    log_dir : str
        This role's TensorBoard folder, ``<job log_dir>/<role>_<index>`` (e.g.
        ``.../logs/worker_1``), a path on the role's host; the exchange writes its own
        scalars under ``<log_dir>/exchange``. Empty when the job has no log folder.
    """

    def __init__(
        self,
        job: JobSpec,
        me: RoleSpec,
        members: Sequence[Member],
        *,
        workdir: str,
        data_path: str | None,
        heartbeat: HeartbeatClient | None,
        tf_port: ReservedPort | None,
        listener: Listener | None = None,
        transport: str | None = None,
        finished: threading.Event | None = None,
    ) -> None:
        self._job = job
        self._me = me
        self.members = {m.task_id: m for m in members}
        self.role = me.name
        self.index = me.index
        self.task_id = me.task_id
        has_chief = any(r.name == "chief" for r in job.plan)
        self.is_chief = me.name == "chief" or (not has_chief and me.task_id == "worker:0")
        from tfyarn.cluster.plan import tf_cluster, tf_config

        addresses = {r: self.members[r.task_id].tf_address for r in job.plan}
        self.cluster_spec = tf_cluster(addresses)
        self.tf_config = tf_config(addresses, me)
        self.model_dir = job.model_dir
        self.workdir = workdir
        self.secret = job.secret
        self.listener = listener
        self.transport = transport
        self.transport_options: TransportOptions | None = job.transport_options
        self.peers = {
            m.task_id: m.exchange_address
            for m in members
            if m.exchange_address and not m.task_id.startswith("evaluator")
        }
        self.strategy_name = job.strategy
        self.strategy_options = dict(job.strategy_options)
        self.service: ServiceAttachment | None = job.service
        self.attempt = job.attempt
        self.checkpoint: CheckpointPolicy | None = job.checkpoint
        self.log_dir = role_log_dir(job.log_dir, me.task_id)
        self._resume: tuple[Checkpoint | None] | None = None  # (resume,) once looked up
        self._heartbeat = heartbeat
        self._tf_port = tf_port
        self._data_path = data_path
        self._columns: dict[str, Any] | None = None
        self._batch_size: int | None = None
        self._strategy: Any = None
        self._finished = finished or threading.Event()
        trainers = [r.task_id for r in job.trainers]
        self.trainers = trainers
        self.num_trainers = len(trainers)
        self.trainer_rank = trainers.index(me.task_id) if me.task_id in trainers else None
        self.files: list[str] = []
        if job.input_mode is InputMode.FILES and self.trainer_rank is not None:
            self.files = feed.shard_files(job.files, self.trainer_rank, self.num_trainers)
        if heartbeat is not None:
            # Where the role runs, for the run's attempt records and for operators who
            # need to find the process (the fault tests kill it by this pid).
            heartbeat.report(executor=self.members[me.task_id].executor, pid=os.getpid())

    # -- restarts -------------------------------------------------------------------

    @property
    def resume(self) -> Checkpoint | None:
        """The checkpoint this attempt continues from, or None (start from scratch).

        The newest complete checkpoint in ``checkpoint.directory`` written by an earlier
        attempt (:func:`tfyarn.exchange.checkpoint.resume_point`), looked up once per role
        process, so that every use in this attempt sees the same one. Torn or unreadable
        files are skipped and logged.
        """
        if self._resume is None:
            self._resume = (self._find_resume(),)
        return self._resume[0]

    def _find_resume(self) -> Checkpoint | None:
        if self.checkpoint is None:
            return None
        from tfyarn.exchange.checkpoint import resume_point

        found, problems = resume_point(self.checkpoint.directory, self.attempt)
        if found is not None:  # an elastic restart may run with fewer or more trainers
            found = found.for_trainers(self.num_trainers)
        for problem in problems:
            log.warning("tfyarn %s: skipped an unreadable checkpoint: %s", self.task_id, problem)
        if found is not None and self._heartbeat is not None:
            self._heartbeat.report(resumed_from_step=found.global_step)  # for RunResult.attempts
        if found is not None:
            log.info(
                "tfyarn %s: attempt %d resumes from global step %d (written by attempt %d)",
                self.task_id, self.attempt, found.global_step, found.attempt,
            )  # fmt: skip
        return found

    # -- progress -------------------------------------------------------------------

    def report(self, **metrics: Any) -> None:
        """Send progress metrics to the driver's display (``step``, ``loss``, ``samples``...).

        ``samples`` is the number of samples processed since the previous report; the
        driver turns it into samples/s.
        """
        if self._heartbeat is not None:
            self._heartbeat.report(**metrics)

    def keras_callback(self, every: int = 10, batch_size: int | None = None) -> Any:
        """A Keras callback that reports loss, steps and samples every ``every`` batches.

        Samples are counted as ``batch_size`` per step (Keras 3 does not tell callbacks
        the size of a batch): by default the batch size last given to :meth:`dataset`;
        without either, no samples/s are reported.
        """
        from tfyarn.node.keras_progress import ProgressCallback

        size = batch_size if batch_size is not None else self._batch_size
        return ProgressCallback(self, every=every, batch_size=size)

    def tensorboard_callback(self, **kwargs: Any) -> Any:
        """A ``keras.callbacks.TensorBoard`` writing to :attr:`log_dir`.

        Keyword arguments go to the callback (``histogram_freq=1``, ``update_freq=50``,
        ...); ``log_dir`` is this role's and may not be given.

        Raises
        ------
        ConfigError
            The job has no log folder, or ``log_dir`` was given.
        """
        if "log_dir" in kwargs:
            raise ConfigError(
                "ctx.tensorboard_callback() writes to ctx.log_dir; give the job's folder as "
                "tfyarn.run(log_dir=...) instead of the callback's log_dir"
            )
        if not self.log_dir:
            raise ConfigError(
                "this job has no TensorBoard log folder: run it with tfyarn.run(log_dir=...) "
                "or tensorboard=True"
            )
        import keras

        return keras.callbacks.TensorBoard(log_dir=self.log_dir, **kwargs)

    def training_finished(self) -> bool:
        """For ps/evaluator roles running ``train_fn``: whether the trainers are all done."""
        return self._finished.is_set()

    def wait_training_finished(self, timeout: float | None = None) -> bool:
        """Block until the trainers are done (or ``timeout`` seconds); return whether they are."""
        return self._finished.wait(timeout)

    # -- data -----------------------------------------------------------------------

    def _rows_per_trainer(self) -> list[int]:
        return [self.members[t].rows for t in self.trainers]

    def steps_per_epoch(self, batch_size: int) -> int:
        """Steps per epoch at ``batch_size`` per trainer, the same for every trainer.

        Under ParameterServerStrategy (the chief schedules steps on any free worker) this is
        the total over all workers; otherwise the longest partition decides.
        """
        return feed.steps_per_epoch(
            self._rows_per_trainer(), batch_size, synchronous=self._job.strategy != "ps"
        )

    def columns(self) -> dict[str, Any]:
        """This trainer's data as NumPy arrays (views of the memory-mapped Arrow cache)."""
        if self._data_path is None:
            raise ConfigError(
                f"role {self.task_id} has no data: tfyarn.run(data=...) was not given, or this "
                "role does not train (data goes to the chief and workers only)"
            )
        if self._columns is None:
            self._columns = feed.load_columns(self._data_path)
        return self._columns

    def dataset(
        self,
        batch_size: int,
        epochs: int = 1,
        *,
        features: str | Sequence[str] | None = None,
        label: str | None = None,
        shuffle: bool = True,
        seed: int | None = None,
        steps_per_epoch: int | None = None,
    ) -> tf.data.Dataset:
        """This trainer's shard as a tf.data pipeline of ``steps_per_epoch * epochs`` batches.

        Parameters
        ----------
        batch_size : int
            Per-trainer batch size.
        epochs : int
            Epochs of ``steps_per_epoch`` batches each.
        features : str or list of str, optional
            A vector column, or scalar columns stacked into one float32 matrix. None: all
            columns but ``label`` (as a dict).
        label : str, optional
            The label column; the dataset then yields ``(x, y)``.
        shuffle : bool
            Reshuffle the rows on every pass.
        seed : int, optional
            Shuffle seed.
        steps_per_epoch : int, optional
            Batches per epoch, the same on every trainer; None: :meth:`steps_per_epoch`,
            one pass over the longest partition. The shard is cycled (reshuffled on each
            pass): an epoch may end mid-pass, and the next one goes on from there. Give
            ``model.fit`` the same number (``steps_per_epoch=``).

        When this attempt resumes from a checkpoint (:attr:`resume`), the pipeline skips
        the ``resume.shard_position`` batches already trained on, and so yields the rest:
        the position counts batches of this one sequence, whatever the epochs' length.

        The dataset is already this trainer's shard: TensorFlow's auto-sharding is off.
        Under ``mwms`` distribute it with ``strategy.distribute_datasets_from_function(
        lambda _: ctx.dataset(...))`` to keep ``batch_size`` per trainer;
        ``experimental_distribute_dataset`` takes its batches for global ones and splits
        each over the workers (every row still comes through, in smaller batches).

        Raises
        ------
        ConfigError
            Under ``strategy="ps"`` (see :meth:`per_worker_dataset`), or
            ``steps_per_epoch`` below 1.
        """
        if self._job.strategy == "ps":
            raise ConfigError(
                "under strategy='ps' the chief schedules steps on the workers: use "
                "ctx.per_worker_dataset(coordinator, batch_size, ...) instead of ctx.dataset()"
            )
        if steps_per_epoch is not None and steps_per_epoch < 1:
            raise ConfigError(f"steps_per_epoch must be at least 1, got {steps_per_epoch}")
        self._batch_size = batch_size  # what ctx.keras_callback() counts samples by
        per_epoch = steps_per_epoch or self.steps_per_epoch(batch_size)
        steps = per_epoch * epochs
        dataset = feed.make_dataset(
            self.columns(),
            batch_size=batch_size,
            steps=steps,
            features=features,
            label=label,
            shuffle=shuffle,
            seed=seed,
        )
        resume = self.resume
        if resume is None or resume.shard_position == 0:
            return dataset
        # The shard position: the same seed gives the same order, so skipping the batches
        # the checkpoint already trained on continues exactly where the lost attempt was.
        return dataset.skip(min(resume.shard_position, steps))

    def per_worker_dataset(
        self,
        coordinator: Any,
        batch_size: int,
        *,
        features: str | Sequence[str] | None = None,
        label: str | None = None,
        shuffle: bool = True,
    ) -> Any:
        """For the chief under ParameterServerStrategy: each worker's own shard, endless.

        Each worker saved its shard as a tf.data snapshot in its working directory before
        its server started; the dataset function loads it by a *relative* path, which every
        worker resolves against its own working directory. The chief schedules
        ``steps_per_epoch(batch_size) * epochs`` steps.
        """
        import tensorflow as tf

        from tfyarn.node.ps_data import SHARD_DIR, element_spec

        spec = element_spec(self._worker_data_spec())
        x_y = (features, label)

        def dataset_fn() -> tf.data.Dataset:
            ds = tf.data.Dataset.load(SHARD_DIR, element_spec=spec)
            ds = ds.map(lambda d: _pick(d, *x_y))
            if shuffle:
                ds = ds.shuffle(10_000, reshuffle_each_iteration=True)
            return feed.unsharded(ds.repeat().batch(batch_size, drop_remainder=True).prefetch(2))

        return coordinator.create_per_worker_dataset(dataset_fn)

    def _worker_data_spec(self) -> dict:
        for task_id in self.trainers:
            spec = self.members[task_id].data_spec
            if spec:
                return spec
        raise ConfigError(
            "no worker reported its data layout: tfyarn.run(data=...) was not given, or the "
            "workers received no rows"
        )

    # -- strategies -----------------------------------------------------------------

    def release_tf_port(self) -> None:
        """Stop holding this role's TensorFlow port; call right before TF binds it."""
        if self._tf_port is not None:
            self._tf_port.release()

    def strategy(self) -> Any:
        """The distribution strategy of this job, created once.

        ``"ps"``: ``tf.distribute.ParameterServerStrategy`` (chief only; use it with
        ``tf.distribute.coordinator.ClusterCoordinator``). ``"mwms"``:
        ``tf.distribute.MultiWorkerMirroredStrategy``. An exchange strategy name: the tfyarn
        exchange object (see :mod:`tfyarn.exchange`).
        """
        if self._strategy is not None:
            return self._strategy
        name = self._job.strategy
        if name is None:
            raise ConfigError("tfyarn.run(strategy=...) was not given, so there is no strategy")
        if name == "ps":
            if self.role != "chief":
                raise ConfigError("under strategy='ps' only the chief creates the strategy")
            import tensorflow as tf

            resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
            self.release_tf_port()
            self._strategy = tf.distribute.ParameterServerStrategy(resolver)
        elif name == "mwms":
            import tensorflow as tf

            self.release_tf_port()
            self._strategy = tf.distribute.MultiWorkerMirroredStrategy()
        else:
            from tfyarn import exchange

            self._strategy = exchange.for_context(self)
        return self._strategy

    def checkpoint_manager(
        self, checkpoint: Any, max_to_keep: int | None = None, step_counter: Any = None
    ) -> Any:
        """A ``tf.train.CheckpointManager`` over ``checkpoint_dir`` that resumes a restart.

        For TF-native custom loops (``"ps"``, ``"mwms"``): the chief writes, the other
        MWMS workers save into a private folder, and on ``attempt > 1`` the newest
        checkpoint is restored first (see :func:`tfyarn.node.tf_checkpoint.checkpoint_manager`).
        """
        from tfyarn.node.tf_checkpoint import checkpoint_manager, non_writer_dir

        return checkpoint_manager(
            checkpoint, self.checkpoint, attempt=self.attempt, is_writer=self.is_chief,
            temp_dir=non_writer_dir(self.workdir), max_to_keep=max_to_keep,
            step_counter=step_counter,
        )  # fmt: skip

    def save_model(self, model: Any, name: str = "model.keras") -> str:
        """Save the Keras ``model`` as ``<model_dir>/<name>``; return where it is.

        ``model_dir`` may be on HDFS (the default on a YARN cluster with one), where Keras
        cannot write: the model is then saved into this role's workspace first and
        uploaded (atomically: a reader never sees half a model).
        """
        from tfyarn import storage

        target = storage.join(self.model_dir, name)
        if storage.is_local(self.model_dir):
            _, local_dir = storage.filesystem(self.model_dir)
            os.makedirs(local_dir, exist_ok=True)
            model.save(os.path.join(local_dir, name))
            return target
        local = os.path.join(self.workdir, name)
        model.save(local)
        storage.upload(local, target)
        return target

    def close(self) -> None:
        """Release what the strategy holds (exchange connections); idempotent."""
        strategy, self._strategy = self._strategy, None
        close = getattr(strategy, "close", None)
        if callable(close) and self._job.strategy not in ("ps", "mwms"):
            close()


def role_log_dir(job_log_dir: str, task_id: str) -> str:
    """``<job_log_dir>/<role>_<index>`` (``worker:1`` -> ``worker_1``); empty without one."""
    return os.path.join(job_log_dir, task_id.replace(":", "_")) if job_log_dir else ""


def _pick(d: dict[str, Any], features: Any, label: str | None) -> Any:
    """Select model inputs from a dict element inside a tf.data map function."""
    import tensorflow as tf

    if features is None:
        x: Any = {k: v for k, v in d.items() if k != label}
    elif isinstance(features, str):
        x = d[features]
    else:
        x = tf.stack([tf.cast(d[f], tf.float32) for f in features], axis=-1)
    return x if label is None else (x, d[label])


def load_tf_config_env(ctx: NodeContext) -> None:
    """Put TF_CONFIG in the environment (before TensorFlow is imported by ``train_fn``)."""
    os.environ["TF_CONFIG"] = ctx.tf_config
    json.loads(ctx.tf_config)  # it must be valid JSON; fail here rather than inside TF


TrainFn = Callable[[NodeContext], Any]


#: The context of the role this process runs (a role process runs exactly one role).
_current: NodeContext | None = None


def set_current_context(ctx: NodeContext | None) -> None:
    """Make ``ctx`` what :func:`current_context` returns (the role process does, before
    ``train_fn`` runs)."""
    global _current
    _current = ctx


def current_context() -> NodeContext | None:
    """The context of the role this process runs, else None (outside a role process).

    For code that needs the role without being handed ``ctx``: ``tfyarn.horovod``'s
    ``hvd.init()`` inside a ``tfyarn.run`` train_fn.
    """
    return _current
