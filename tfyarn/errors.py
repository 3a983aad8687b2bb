"""One exception hierarchy for tfyarn.

Every error a user can see derives from :class:`TFYarnError`, so ``except TFYarnError``
catches all of them. Subclasses say *which layer* failed; the message says what was
wrong and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "AllocationError",
    "AuthenticationError",
    "ConfigError",
    "FrameError",
    "RoleFailedError",
    "TFYarnError",
    "TransportError",
    "TransportUnavailableError",
    "YarnError",
]


class TFYarnError(Exception):
    """Base class of every tfyarn error."""


class ConfigError(TFYarnError, ValueError):
    """Bad arguments or settings, detected before anything was started."""


class AllocationError(TFYarnError):
    """The cluster does not offer the executor slots the job needs."""


class RoleFailedError(TFYarnError):
    """A TensorFlow role failed; carries the role, its host and the remote traceback.

    Parameters
    ----------
    role : str
        Role name with index, e.g. ``"worker:1"``.
    host : str
        Host the role ran on.
    remote_traceback : str
        The last lines of the failed role's traceback/output.
    """

    def __init__(self, role: str, host: str, remote_traceback: str, message: str = "") -> None:
        self.role = role
        self.host = host
        self.remote_traceback = remote_traceback
        #: Set by the launcher: the job's id and the roles' TensorFlow ports (for checks
        #: that nothing was left behind).
        self.job_id = ""
        self.ports: list[int] = []
        head = message or f"role {role} on host {host} failed"
        super().__init__(f"{head}\n--- remote traceback ({role} @ {host}) ---\n{remote_traceback}")


class TransportError(TFYarnError):
    """A transport could not move bytes (connection lost, peer closed, timeout)."""


class TransportUnavailableError(TransportError):
    """The requested transport cannot run here (e.g. ``rdma`` without RDMA devices)."""


class AuthenticationError(TransportError):
    """A peer failed the HMAC challenge (it does not hold the job secret)."""


class FrameError(TransportError):
    """A peer sent a malformed frame (bad magic/version, absurd length, wrong dtype/shape)."""


class YarnError(TFYarnError):
    """The dev YARN or the YARN Services API failed."""
