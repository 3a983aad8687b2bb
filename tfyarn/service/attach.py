"""Jobs attach to a service's parameter servers by the service's name.

The driver calls :func:`attach` (``tfyarn.run(..., service="name")`` does): it asks the
ResourceManager for the service status, takes the hosts of the READY ``ps`` containers
and the ``tfyarn.*`` properties (port, transport, state dir), reads the service secret
from the state dir, and returns a picklable :class:`ServiceAttachment` that travels to the
training roles. There, :class:`ServiceConnector` opens the connections and, when a ps
is lost (its container died and YARN restarts it), asks the ResourceManager again where
it is and reconnects, for as long as ``reconnect_timeout`` allows.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tfyarn import __version__
from tfyarn.errors import ConfigError, TFYarnError, TransportError
from tfyarn.exchange.ps import Reconnect
from tfyarn.exchange.stats import CountedComm
from tfyarn.service.client import ServicesClient, configured_counts, rm_web_url
from tfyarn.service.ps_server import HELLO, PROTOCOL
from tfyarn.service.spec import PROPERTY_KEYS
from tfyarn.service.state import read_certificate, read_secret
from tfyarn.transport.options import TransportOptions
from tfyarn.transport.tls import JobCertificate

__all__ = ["ServiceAttachment", "ServiceConnector", "attach", "ps_hosts"]

log = logging.getLogger(__name__)


def _index(instance: str) -> int:
    return int(instance.rsplit("-", 1)[1])


def ps_hosts(status: Mapping[str, Any]) -> dict[str, str]:
    """``{"ps-0": host, ...}`` of the READY ps containers in a service status."""
    hosts: dict[str, str] = {}
    for comp in status.get("components") or []:
        if comp.get("name") != "ps":
            continue
        for c in comp.get("containers") or []:
            if c.get("state") == "READY" and c.get("ip"):
                hosts[str(c["component_instance_name"])] = str(c["ip"])
    return dict(sorted(hosts.items(), key=lambda kv: _index(kv[0])))


@dataclass(frozen=True)
class ServiceAttachment:
    """Where a service's parameter servers are and how to talk to them.

    Parameters
    ----------
    name : str
        Service name.
    rm_url : str
        ResourceManager web URL (asked again on reconnect).
    user : str
        User of the Services API calls.
    transport : str
        ``tcp`` or ``grpc``.
    port : int
        Port of every ps.
    hosts : dict
        ``{"ps-0": host, ...}``, every ps of the service.
    secret : bytes
        The service secret.
    certificate : JobCertificate or None
        The service's TLS certificate when it was launched with ``tls: true``: its ps
        serve TLS, and trainers trust that certificate only.
    reconnect_timeout : float
        Seconds a trainer waits for a lost ps to come back before failing.
    """

    name: str
    rm_url: str
    user: str
    transport: str
    port: int
    hosts: dict[str, str] = field(default_factory=dict)
    secret: bytes = field(default=b"", repr=False)
    certificate: JobCertificate | None = field(default=None, repr=False)
    reconnect_timeout: float = 300.0

    @property
    def ps(self) -> list[str]:
        """The ps instance names in index order."""
        return sorted(self.hosts, key=_index)

    def address(self, ps: str, host: str | None = None) -> str:
        """Transport address of ``ps``."""
        return f"{self.transport}://{host or self.hosts[ps]}:{self.port}"


def attach(
    name: str,
    *,
    rm_url: str | None = None,
    user: str | None = None,
    env: Mapping[str, str] | None = None,
    reconnect_timeout: float = 300.0,
    wait_s: float = 120.0,
) -> ServiceAttachment:
    """Find service ``name`` through the ResourceManager and prepare to attach to it.

    Waits up to ``wait_s`` for every ps to be READY (a service just launched or flexed).

    Raises
    ------
    ConfigError
        The service is not a tfyarn service, or its secret cannot be read here.
    YarnError
        No such service, or its ps are not READY in time.
    """
    env = os.environ if env is None else env
    client = ServicesClient(rm_url or rm_web_url(env), user=user)
    status = client.status(name)
    # First: the status of a stopped service has no configuration to check.
    if status.get("state") in ("STOPPED", "FAILED", "SUCCEEDED"):
        raise ConfigError(
            f"service {name} is {status['state']}: start it with `tfyarn service start {name}` "
            "(its ps reload their snapshots) before attaching jobs"
        )
    props = (status.get("configuration") or {}).get("properties") or {}
    missing = [k for k in ("state_dir", "ps_port", "transport") if PROPERTY_KEYS[k] not in props]
    if missing:
        raise ConfigError(
            f"service {name} is not a tfyarn parameter-server service (its configuration "
            f"lacks {', '.join(PROPERTY_KEYS[k] for k in missing)}); launch one with "
            "`tfyarn service launch`"
        )
    # Other components may still be flexing: only the ps matter to a job.
    wanted = {"ps": configured_counts(status).get("ps", 1)}
    status = client.wait(name, wanted, ("STABLE", "STARTED", "FLEXING"), timeout_s=wait_s)
    return ServiceAttachment(
        name=name,
        rm_url=client.rm_url,
        user=client.user,
        transport=str(props[PROPERTY_KEYS["transport"]]),
        port=int(props[PROPERTY_KEYS["ps_port"]]),
        hosts=ps_hosts(status),
        secret=read_secret(props[PROPERTY_KEYS["state_dir"]]),
        certificate=(
            read_certificate(props[PROPERTY_KEYS["state_dir"]])
            if str(props.get(PROPERTY_KEYS["tls"], "false")).lower() == "true"
            else None
        ),
        reconnect_timeout=reconnect_timeout,
    )


class ServiceConnector(Reconnect):
    """A trainer's connections to a service's ps: connect, and reconnect after a loss.

    Parameters
    ----------
    attachment : ServiceAttachment
        From :func:`attach`.
    trainer : str
        Who connects (job and task id), shown in the ps's log.
    """

    def __init__(self, attachment: ServiceAttachment, trainer: str) -> None:
        self.attachment = attachment
        self.trainer = trainer
        self.hosts = dict(attachment.hosts)
        #: The ps's hello of each connection made, per ps (the latest last).
        self.hellos: dict[str, list[dict[str, Any]]] = {}

    def connect(self, ps: str) -> Any:
        """Open an authenticated connection to ``ps`` and exchange hellos."""
        from tfyarn import transport

        a = self.attachment
        options = (
            TransportOptions() if a.certificate is None else a.certificate.apply(TransportOptions())
        )
        comm = transport.connect(
            a.address(ps, self.hosts.get(ps)), secret=a.secret, timeout=30.0, options=options
        )
        mine = {"trainer": self.trainer, "protocol": PROTOCOL, "tfyarn": __version__}
        try:
            comm.send(HELLO + json.dumps(mine).encode())
            hello = json.loads(bytes(comm.recv()))
            if "error" in hello:  # the ps refused us, and said why
                raise ConfigError(f"parameter server {ps} of service {a.name}: {hello['error']}")
        except BaseException:
            comm.close()
            raise
        self.hellos.setdefault(ps, []).append(hello)
        return CountedComm(comm)

    def _where(self, ps: str) -> str | None:
        a = self.attachment
        try:
            status = ServicesClient(a.rm_url, user=a.user, timeout_s=10.0).status(a.name)
        except TFYarnError as exc:
            log.info("service %s status unavailable (%s); retrying", a.name, exc)
            return None
        return ps_hosts(status).get(ps)

    def __call__(self, ps: str, error: BaseException) -> tuple[Any, dict[str, Any]]:
        """Wait for ``ps`` to be READY again, reconnect; return the comm and its hello."""
        a = self.attachment
        started = time.monotonic()
        deadline = started + a.reconnect_timeout
        log.warning(
            "lost parameter server %s of service %s (%s); waiting up to %.0f s for YARN to "
            "restart it", ps, a.name, error, a.reconnect_timeout,
        )  # fmt: skip
        delay = 0.5
        last: BaseException = error
        while time.monotonic() < deadline:
            host = self._where(ps)
            if host is not None:
                self.hosts[ps] = host
                try:
                    comm = self.connect(ps)
                except ConfigError:
                    raise  # refused (another protocol): waiting would not help
                except (OSError, TFYarnError) as exc:
                    last = exc
                else:
                    hello = self.hellos[ps][-1]
                    log.warning(
                        "parameter server %s is back after %.1f s (restored snapshot %s)",
                        ps, time.monotonic() - started, hello.get("restored_seq"),
                    )  # fmt: skip
                    return comm, hello
            time.sleep(delay)
            delay = min(delay * 1.5, 5.0)
        raise TransportError(
            f"parameter server {ps} of service {a.name} did not come back within "
            f"{a.reconnect_timeout:.0f} s (last error: {last}); see `tfyarn service status "
            f"{a.name}`"
        )
