"""The parameter servers a trainer may use, as the algorithms see them.

An algorithm that keeps its state on parameter servers gets a :class:`ParameterServers`:
their names, whether they belong to a long-lived service, and a factory that opens a
:class:`~tfyarn.exchange.ps.PSClient` for a list of tensors. Where the connections go
(the job's own ps roles through the mesh, or a service's ps with reconnection) is decided
here, once, by :func:`job_parameter_servers` or :func:`service_parameter_servers`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tfyarn.errors import ConfigError
from tfyarn.exchange.buckets import DEFAULT_BUCKET_BYTES, TensorSpec
from tfyarn.exchange.mesh import Mesh
from tfyarn.exchange.ps import CHANNEL, PSClient

if TYPE_CHECKING:
    from tfyarn.service.attach import ServiceAttachment

__all__ = [
    "PSClientFactory",
    "ParameterServers",
    "job_parameter_servers",
    "service_parameter_servers",
]

#: ``open_client(specs) -> PSClient``: a client holding ``specs`` on the servers.
PSClientFactory = Callable[[Sequence[TensorSpec]], PSClient]


@dataclass(frozen=True)
class ParameterServers:
    """Parameter servers and how to open a client on them.

    Parameters
    ----------
    names : tuple of str
        The servers, in index order (at least one).
    open_client : callable
        ``open_client(specs) -> PSClient``, called once per training run.
    service : str or None
        Name of the long-lived service the servers belong to; None for a job's own ps.
    """

    names: tuple[str, ...]
    open_client: PSClientFactory
    service: str | None = None

    def __post_init__(self) -> None:
        if not self.names:
            raise ConfigError("ParameterServers needs at least one server name")
        if len(set(self.names)) != len(self.names):
            raise ConfigError(f"parameter server names repeat: {list(self.names)}")
        if self.service == "":
            raise ConfigError("ParameterServers(service=...) must name the service, not ''")


def job_parameter_servers(
    mesh: Mesh, names: Sequence[str], bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> ParameterServers | None:
    """The job's own ps roles ``names``, reached through ``mesh``; None without any."""
    if not names:
        return None
    servers = tuple(names)

    def open_client(specs: Sequence[TensorSpec]) -> PSClient:
        return PSClient(lambda ps: mesh.connect(ps, CHANNEL), servers, specs, bucket_bytes)

    return ParameterServers(servers, open_client)


def service_parameter_servers(
    attachment: ServiceAttachment, task_id: str, bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> ParameterServers:
    """The ps of a long-lived service; clients reconnect when YARN restarts a ps.

    Raises
    ------
    ConfigError
        The attachment lists no parameter server.
    """
    if not attachment.ps:
        raise ConfigError(
            f"service {attachment.name} has no ready parameter server to attach to; "
            f"check it with `tfyarn service status {attachment.name}`"
        )

    def open_client(specs: Sequence[TensorSpec]) -> PSClient:
        # the service layer imports the exchange: import it only when used
        from tfyarn.service.attach import ServiceConnector

        # named by job and role in the ps's log (the role process has TFYARN_JOB)
        trainer = f"{os.environ.get('TFYARN_JOB', 'local')}/{task_id}"
        conn = ServiceConnector(attachment, trainer)
        return PSClient(conn.connect, attachment.ps, specs, bucket_bytes, conn)

    return ParameterServers(tuple(attachment.ps), open_client, service=attachment.name)
