"""What the exchange reads of a role's context: the :class:`ExchangeContext` Protocol.

Two contexts implement it: the launcher's ``tfyarn.node.context.NodeContext`` (a role of
a Spark barrier stage) and :class:`tfyarn.exchange.local.LocalContext` (a process of
:func:`tfyarn.exchange.local.run_local`). :class:`~tfyarn.exchange.strategy.ExchangeStrategy`
and :func:`~tfyarn.exchange.strategy.serve_ps` accept either, and read nothing else.

The members are read-only properties so that a context may hold them as plain
attributes (``NodeContext``) or compute them (``LocalContext.task_id``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from tfyarn.errors import ConfigError

if TYPE_CHECKING:
    from tfyarn.exchange.checkpoint import Checkpoint, CheckpointPolicy
    from tfyarn.service.attach import ServiceAttachment
    from tfyarn.transport.base import Listener
    from tfyarn.transport.options import TransportOptions

__all__ = ["ExchangeContext", "exchange_listener"]


@runtime_checkable
class ExchangeContext(Protocol):
    """A chief's, worker's or parameter server's view of its job, as the exchange needs it.

    Attributes
    ----------
    role : str
        ``"chief"``, ``"worker"`` or ``"ps"``.
    index : int
        Index among the roles of the same name.
    task_id : str
        ``"role:index"``.
    is_chief : bool
        The role that saves the model: the chief, or ``worker:0`` without a chief.
    secret : bytes
        The job secret; authenticates every exchange connection.
    transport : str or None
        The transport actually in use (None when the job asked for none).
    listener : Listener or None
        This role's transport listener (None when the job asked for no transport).
    transport_options : TransportOptions or None
        The job's own transport settings (``tfyarn.run(transport_options=...)``), if
        given. The listener was opened with them merged into the transport selection's,
        and the exchange's connections take the listener's (``listener.options``).
    peers : mapping of str to str
        Task id -> transport address of every role of the job, this one included.
    strategy_name : str or None
        The exchange strategy (``tfyarn.run(strategy=...)``).
    strategy_options : mapping
        The strategy's options, as the user gave them.
    model_dir : str
        Where the chief saves the model.
    service : ServiceAttachment or None
        The long-lived service whose parameter servers the job attached to
        (``tfyarn.run(service=...)``), else None.
    attempt : int
        Which attempt of the job this is: 1, then 2, ... after each restart.
    checkpoint : CheckpointPolicy or None
        Where and how often trainers checkpoint (``tfyarn.run(checkpoint_dir=...,
        checkpoint_every=...)``); None: no checkpoints.
    resume : Checkpoint or None
        The checkpoint this attempt resumes from: the newest complete one written by an
        earlier attempt (:func:`tfyarn.exchange.checkpoint.resume_point`), computed once
        per role process; None on a first attempt, without checkpoints, or with none yet.
    """

    @property
    def role(self) -> str: ...

    @property
    def index(self) -> int: ...

    @property
    def task_id(self) -> str: ...

    @property
    def is_chief(self) -> bool: ...

    @property
    def secret(self) -> bytes: ...

    @property
    def transport(self) -> str | None: ...

    @property
    def listener(self) -> Listener | None: ...

    @property
    def transport_options(self) -> TransportOptions | None: ...

    @property
    def peers(self) -> Mapping[str, str]: ...

    @property
    def strategy_name(self) -> str | None: ...

    @property
    def strategy_options(self) -> Mapping[str, Any]: ...

    @property
    def model_dir(self) -> str: ...

    @property
    def service(self) -> ServiceAttachment | None: ...

    @property
    def attempt(self) -> int: ...

    @property
    def checkpoint(self) -> CheckpointPolicy | None: ...

    @property
    def resume(self) -> Checkpoint | None: ...

    def report(self, **metrics: Any) -> None:
        """Send progress metrics (``step``, ``loss``, ``samples``...) to whoever watches."""
        ...


def exchange_listener(ctx: ExchangeContext) -> Listener:
    """``ctx.listener``, or a :class:`ConfigError` saying how to get one.

    Raises
    ------
    ConfigError
        The job was started without a transport, so the role has no listener.
    """
    if ctx.listener is None:
        raise ConfigError(
            f"the node context of {ctx.task_id} lacks listener: exchange strategies need a "
            "transport listener and the peers' addresses (tfyarn.run(..., strategy=NAME) "
            "provides them)"
        )
    return ctx.listener
