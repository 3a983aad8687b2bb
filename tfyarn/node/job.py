"""What the driver hands to every barrier task: a small, picklable job description.

The driver builds one :class:`JobSpec`; Spark ships it to the executors inside the barrier
stage's closure; the task writes it to the role's workspace for the role process. It holds
plain values only (no Spark objects), so the node layer never needs the driver.
"""

from __future__ import annotations

import enum
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tfyarn.cluster.plan import RoleSpec

if TYPE_CHECKING:
    from tfyarn.exchange.checkpoint import CheckpointPolicy
    from tfyarn.service.attach import ServiceAttachment
    from tfyarn.transport.options import TransportOptions

__all__ = ["InputMode", "JobSpec"]


class InputMode(enum.Enum):
    """Where the training roles' data comes from."""

    #: No data from tfyarn: ``train_fn`` loads its own.
    NONE = "none"
    #: A Spark DataFrame, spread over the training roles as Arrow record batches.
    SPARK = "spark"
    #: A list of files (Parquet, Arrow IPC, CSV or TFRecord); each training role reads its shard.
    FILES = "files"


@dataclass(frozen=True)
class JobSpec:
    """Everything a role needs to start, apart from what the cluster wiring adds.

    Parameters
    ----------
    job_id : str
        Unique id of this run; names temp dirs, processes and log lines.
    plan : tuple of RoleSpec
        Role of each barrier partition.
    trainers : tuple of RoleSpec
        The roles that train on data (see :func:`tfyarn.cluster.plan.data_roles`).
    train_fn : bytes
        ``train_fn`` pickled with cloudpickle.
    secret : bytes
        Per-job secret: authenticates heartbeats and transport connections.
    driver_address : tuple of (str, int)
        Where roles send heartbeats.
    strategy : str or None
        ``"ps"``, ``"mwms"``, an exchange strategy name, or None (``train_fn`` decides).
    strategy_options : dict
        Options for the strategy.
    transport : str or None
        Requested tfyarn transport (``"auto"``, ``"tcp"``, ``"grpc"``, ``"ucx"``, ``"rdma"``),
        or None when no tfyarn transport endpoint is wanted.
    transport_options : TransportOptions or None
        Settings of the role's transport listener and connections; None: the defaults.
    interface : str or None
        Interface name or address roles bind to; None: the address Spark uses.
    input_mode : InputMode
        Where data comes from.
    files : tuple of str
        For :attr:`InputMode.FILES`: all files, sharded over the trainers.
    key_column : str or None
        For :attr:`InputMode.SPARK`: the routing column added by the driver, dropped here.
    routing_keys : tuple of int
        For :attr:`InputMode.SPARK`: the routing key each partition's rows carry.
    model_dir : str
        Where the chief saves the model (must be reachable by the chief).
    heartbeat_interval : float
        Seconds between heartbeats.
    startup_timeout : float
        Seconds a role process may take to come up and for the cluster to be wired.
    shutdown_grace : float
        Seconds ps/evaluator roles get to finish once training is over.
    env : dict
        Extra environment variables for the role processes.
    tmp_root : str or None
        Parent of the per-job workspace; None: the system temp dir.
    service : ServiceAttachment or None
        The long-running service whose parameter servers the trainers use instead of ps
        roles (``tfyarn.run(service=...)``), else None.
    attempt : int
        Which attempt of the run this stage is: 1 for the first, n after n - 1 restarts
        (``tfyarn.run(max_restarts=...)``). Every attempt is one fresh barrier stage.
    checkpoint : CheckpointPolicy or None
        Where and how often trainers checkpoint, so that a later attempt resumes; None
        when the run neither restarts nor asked for checkpoints.
    progress_tls : bool
        The driver's progress channel is served over TLS with the job's certificate
        (``transport_options``): ``tfyarn.run(tls=True)``.
    log_dir : str
        The job's TensorBoard log folder (a path on each role's host); each role writes
        under ``<log_dir>/<role>_<index>`` (``ctx.log_dir``). Empty: none.
    tensorboard : bool
        The chief serves TensorBoard over ``log_dir`` (``tfyarn.run(tensorboard=True)``).
    """

    job_id: str
    plan: tuple[RoleSpec, ...]
    trainers: tuple[RoleSpec, ...]
    train_fn: bytes
    secret: bytes = field(repr=False)  # never in a log line or a traceback's locals
    driver_address: tuple[str, int]
    strategy: str | None = None
    strategy_options: dict = field(default_factory=dict)
    transport: str | None = None
    transport_options: TransportOptions | None = None
    interface: str | None = None
    input_mode: InputMode = InputMode.NONE
    files: tuple[str, ...] = ()
    key_column: str | None = None
    routing_keys: tuple[int, ...] = ()
    model_dir: str = ""
    heartbeat_interval: float = 2.0
    startup_timeout: float = 300.0
    shutdown_grace: float = 30.0
    env: dict = field(default_factory=dict)
    tmp_root: str | None = None
    service: ServiceAttachment | None = None
    attempt: int = 1
    checkpoint: CheckpointPolicy | None = None
    progress_tls: bool = False
    log_dir: str = ""
    tensorboard: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.attempt, bool) or not isinstance(self.attempt, int):
            raise TypeError(f"JobSpec.attempt must be a whole number, got {self.attempt!r}")
        if self.attempt < 1:
            raise ValueError(f"JobSpec.attempt counts from 1, got {self.attempt}")

    def workspace_name(self, role: RoleSpec) -> str:
        """The folder name of ``role``'s workspace in this attempt: ``worker-1``, ``worker-1.a2``.

        Each attempt gets its own: a role of an earlier attempt that is still cleaning up
        on this host removes its own workspace, never the new attempt's.
        """
        name = role.task_id.replace(":", "-")
        return name if self.attempt == 1 else f"{name}.a{self.attempt}"

    def role(self, partition: int) -> RoleSpec:
        """The role of barrier partition ``partition``."""
        return self.plan[partition]

    def is_trainer(self, role: RoleSpec) -> bool:
        """Whether ``role`` trains on data."""
        return role in self.trainers

    def finishes_by_itself(self, role: RoleSpec) -> bool:
        """Whether ``role`` ends on its own (trainers), or serves until told (ps, evaluator).

        Under ParameterServerStrategy only the chief trains; its workers serve.
        """
        if role.name == "chief":
            return True
        if role.name == "worker":
            return self.strategy != "ps"
        return False

    def save(self, path: Path) -> None:
        """Write the spec for the role process, readable by its owner only (the secret)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pickle.dumps(self))

    @staticmethod
    def load(path: Path) -> JobSpec:
        """Read a spec written by :meth:`save`."""
        spec = pickle.loads(path.read_bytes())
        if not isinstance(spec, JobSpec):
            raise TypeError(f"{path} does not hold a JobSpec")
        return spec
