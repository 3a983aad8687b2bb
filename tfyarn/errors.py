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
    "ForgedFrameError",
    "FrameError",
    "RestartsExhaustedError",
    "RoleFailedError",
    "RoleLostError",
    "RoleSilentError",
    "RoleStuckError",
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

    Every failure of a role is one of these (or a subclass): an exception raised by the
    user's code, a role that exited or was killed, a role that failed to start. What kind
    of failure it was decides whether a restart can help (:attr:`restartable`).

    Parameters
    ----------
    role : str
        Role name with index, e.g. ``"worker:1"``.
    host : str
        Host the role ran on.
    remote_traceback : str
        The last lines of the failed role's traceback/output.
    message : str, optional
        The first line of the error; default "role R on host H failed".
    exit_status : int, optional
        The role process's exit status, when it exited with one.
    signal : int, optional
        The signal that killed the role process (9 for SIGKILL), when one did.
    spark_error : str, optional
        Spark's own text of the failure (JVM stack, SQLSTATE), kept here rather than in
        the message.

    Attributes
    ----------
    restartable : bool
        False here: the role's own code failed, running it again fails again.
    """

    restartable: bool = False

    def __init__(
        self,
        role: str,
        host: str,
        remote_traceback: str,
        message: str = "",
        *,
        exit_status: int | None = None,
        signal: int | None = None,
        spark_error: str = "",
    ) -> None:
        self.role = role
        self.host = host
        self.remote_traceback = remote_traceback
        self.exit_status = exit_status
        self.signal = signal
        self.spark_error = spark_error
        #: Set by the launcher: the job's id and the roles' TensorFlow ports (for checks
        #: that nothing was left behind).
        self.job_id = ""
        self.ports: list[int] = []
        head = message or f"role {role} on host {host} failed"
        super().__init__(f"{head}\n--- remote traceback ({role} @ {host}) ---\n{remote_traceback}")


class RoleLostError(RoleFailedError):
    """A role was lost to the infrastructure, not to its own code: a restart can help.

    Its process was killed by a signal (SIGKILL by the OOM killer, a container kill or
    YARN preemption), its executor, container or node was lost, or it went silent or made
    no progress past the limits.
    """

    restartable = True


class RoleSilentError(RoleLostError):
    """A role sent no heartbeat past ``silent_fail_after``: stopped, frozen or cut off."""


class RoleStuckError(RoleLostError):
    """A role kept sending heartbeats but made no step progress past ``stall_fail_after``."""


class RestartsExhaustedError(TFYarnError):
    """Every allowed restart was used and the job still failed.

    Parameters
    ----------
    message : str
        What happened, one line per attempt.
    attempts : list
        The attempts (``tfyarn.cluster.attempts.Attempt``), oldest first.
    last : RoleFailedError
        The failure that ended the last attempt.
    """

    def __init__(self, message: str, attempts: list[object], last: RoleFailedError) -> None:
        self.attempts = attempts
        self.last = last
        super().__init__(message)


class TransportError(TFYarnError):
    """A transport could not move bytes (connection lost, peer closed, timeout)."""


class TransportUnavailableError(TransportError):
    """The requested transport cannot run here (e.g. ``rdma`` without RDMA devices)."""


class AuthenticationError(TransportError):
    """A peer failed the HMAC challenge (it does not hold the job secret)."""


class FrameError(TransportError):
    """A peer sent a malformed frame (bad magic/version, absurd length, wrong dtype/shape)."""


class ForgedFrameError(FrameError, AuthenticationError):
    """A frame failed its authentication tag: forged, replayed, reordered or altered on the way.

    The connection it arrived on is closed; the listener keeps serving.
    """


class YarnError(TFYarnError):
    """The dev YARN or the YARN Services API failed."""
