"""The service spec (a YAML file in conf/) and the Yarnfile built from it: pure functions.

A tfyarn service is a long-lived YARN application run by the YARN Services framework:
parameter servers that keep a model between training jobs, an optional TensorBoard over
the jobs' log directory, and optional standby workers. :func:`load_spec` reads and
validates the YAML (``${VAR}`` takes environment variables); :func:`yarnfile` turns the
validated :class:`ServiceSpec` into the JSON document the Services REST API takes
(``POST /app/v1/services``). Neither touches the network or the disk beyond reading the
YAML, so every rule here is unit-tested.

How the pieces find each other without the Registry DNS: every parameter server listens
on the same ``ps.port`` on its own host (anti-affinity keeps one per node), so a job
needs only the hosts of the READY ``ps`` containers, which the service status from the
ResourceManager lists. The service-level ``configuration.properties`` carry the rest
(``tfyarn.*`` keys, see :data:`PROPERTY_KEYS`).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tfyarn.cluster.profiles import expand
from tfyarn.errors import ConfigError

__all__ = [
    "ENV_DIR",
    "PROPERTY_KEYS",
    "RESTART_POLICIES",
    "ComponentSpec",
    "PSSpec",
    "ServiceSpec",
    "StandbySpec",
    "TensorBoardSpec",
    "load_spec",
    "parse_spec",
    "yarnfile",
]

#: Where YARN unpacks the environment archive inside each container.
ENV_DIR = "lib"

#: YARN Services restart policies (``restart_policy`` of a component).
RESTART_POLICIES: tuple[str, ...] = ("ALWAYS", "ON_FAILURE", "NEVER")

#: Service-level properties a job reads from the service status to attach.
PROPERTY_KEYS: dict[str, str] = {
    "state_dir": "tfyarn.state_dir",
    "ps_port": "tfyarn.ps.port",
    "transport": "tfyarn.transport",
    "tensorboard_port": "tfyarn.tensorboard.port",
    "logdir": "tfyarn.logdir",
    "tls": "tfyarn.tls",
}

#: Transports a service ps can listen on (stream transports with a fixed port).
SERVICE_TRANSPORTS: tuple[str, ...] = ("tcp", "grpc")

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


def _take(data: Mapping[str, Any], where: str, allowed: Mapping[str, Any]) -> dict[str, Any]:
    """``allowed`` defaults overridden by ``data``; unknown keys are an error."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; allowed: {sorted(allowed)}")
    return {**allowed, **data}


def _int(value: Any, where: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ConfigError(f"{where} must be {bound}, got {value}")
    return value


@dataclass(frozen=True)
class ComponentSpec:
    """Resources and restart behaviour shared by every component.

    Parameters
    ----------
    instances : int
        Containers YARN keeps running (``number_of_containers``).
    cpus : int
        vcores per container.
    memory_mb : int
        Memory per container (MiB); the process is killed above it.
    restart_policy : str
        One of :data:`RESTART_POLICIES`.
    """

    instances: int = 1
    cpus: int = 1
    memory_mb: int = 1024
    restart_policy: str = "ALWAYS"

    def check(self, where: str, min_instances: int = 0) -> None:
        """Raise :class:`ConfigError` naming ``where`` for any bad field."""
        _int(self.instances, f"{where}.instances", min_instances)
        _int(self.cpus, f"{where}.cpus", 1)
        _int(self.memory_mb, f"{where}.memory_mb", 256)
        if self.restart_policy not in RESTART_POLICIES:
            raise ConfigError(
                f"{where}.restart_policy must be one of {', '.join(RESTART_POLICIES)}, "
                f"got {self.restart_policy!r}"
            )

    def resource(self) -> dict[str, Any]:
        """The Yarnfile ``resource`` object."""
        return {"cpus": self.cpus, "memory": str(self.memory_mb)}


@dataclass(frozen=True)
class PSSpec(ComponentSpec):
    """The parameter servers.

    Parameters
    ----------
    port : int
        Port every ps listens on, on its own host.
    snapshot_interval_s : float
        Seconds between snapshots of a ps's state (only when something changed).
    snapshots_kept : int
        Snapshots kept per ps (older ones are deleted).
    anti_affinity : bool
        At most one ps per node (a YARN placement constraint). Needed for more than one
        ps unless ``port`` differs per host, which it cannot: turn it off only for a
        single ps.
    """

    port: int = 7070
    snapshot_interval_s: float = 30.0
    snapshots_kept: int = 3
    anti_affinity: bool = True


@dataclass(frozen=True)
class TensorBoardSpec(ComponentSpec):
    """TensorBoard over the jobs' log directory.

    Parameters
    ----------
    enabled : bool
        Run it.
    port : int
        Its HTTP port.
    """

    enabled: bool = False
    port: int = 6006


@dataclass(frozen=True)
class StandbySpec(ComponentSpec):
    """Standby workers: containers that keep resources reserved in the queue and the
    environment localised and checked (TensorFlow imported) on their nodes, reporting
    the ps they can reach; flexed up before a burst of jobs and down after.
    """

    instances: int = 0
    memory_mb: int = 2048


@dataclass(frozen=True)
class ServiceSpec:
    """A validated tfyarn service.

    Parameters
    ----------
    name : str
        YARN service name (lowercase letters, digits, dashes; starts with a letter).
    environment : str
        URI of the packed Python environment (``tfyarn``'s env archive, an uncompressed or
        gzipped tar) that YARN localises into ``./lib`` of every container.
    state_dir : str
        Shared directory of the service: snapshots, the service secret. The ps
        containers and the drivers of attaching jobs must all see it at this path.
    logdir : str
        TensorBoard's log directory (jobs write event files under it).
    transport : str
        Transport the ps listen on (``tcp`` or ``grpc``).
    tls : bool
        The ps serve TLS with the service's certificate (``tls.pem`` in ``state_dir``,
        made at launch), and attaching jobs trust that certificate only.
    version : str
        Spec version (YARN upgrades the containers when it changes).
    queue : str
        YARN queue.
    lifetime_s : int
        Seconds the service lives; -1 until stopped.
    ps, tensorboard, standby : component specs
    environment_public : bool
        Localise the environment as a PUBLIC resource: once per NodeManager, shared with
        every later service and Spark application that uses the same archive (an archive
        readable by all, as ``tfyarn service launch`` publishes it). Otherwise it is
        localised again for each application (a restarted service, a new one).
    """

    name: str
    environment: str
    state_dir: str
    logdir: str = ""
    transport: str = "tcp"
    tls: bool = False
    version: str = "1"
    queue: str = "default"
    lifetime_s: int = -1
    ps: PSSpec = field(default_factory=PSSpec)
    tensorboard: TensorBoardSpec = field(default_factory=TensorBoardSpec)
    standby: StandbySpec = field(default_factory=StandbySpec)
    environment_public: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ConfigError(
                f"service name {self.name!r} must be 1-63 lowercase letters, digits or dashes, "
                "starting with a letter (a YARN service name)"
            )
        if not self.environment:
            raise ConfigError(
                "environment is required: the env archive to localise (e.g. the one "
                "`tfyarn submit` packs, ~/.cache/tfyarn/envs/env-*.tar)"
            )
        if not self.state_dir or not self.state_dir.startswith("/"):
            raise ConfigError(
                f"state_dir must be an absolute path on storage every node sees, got "
                f"{self.state_dir!r}"
            )
        if not isinstance(self.tls, bool):
            raise ConfigError(f"tls must be true or false, got {self.tls!r}")
        if self.transport not in SERVICE_TRANSPORTS:
            raise ConfigError(
                f"transport must be one of {', '.join(SERVICE_TRANSPORTS)}, got {self.transport!r}"
            )
        _int(self.lifetime_s, "lifetime_s", -1)
        if self.lifetime_s == 0:
            raise ConfigError("lifetime_s must be -1 (until stopped) or a positive number")
        self.ps.check("ps", min_instances=1)
        _int(self.ps.port, "ps.port", 1024, 65535)
        if not self.ps.snapshot_interval_s > 0:
            raise ConfigError(
                f"ps.snapshot_interval_s must be > 0, got {self.ps.snapshot_interval_s}"
            )
        _int(self.ps.snapshots_kept, "ps.snapshots_kept", 1)
        if self.ps.instances > 1 and not self.ps.anti_affinity:
            raise ConfigError(
                f"{self.ps.instances} ps share port {self.ps.port}: keep ps.anti_affinity "
                "true so that YARN places at most one per node"
            )
        self.standby.check("standby")
        if self.tensorboard.enabled:
            self.tensorboard.check("tensorboard")
            _int(self.tensorboard.port, "tensorboard.port", 1024, 65535)
            if self.tensorboard.port == self.ps.port:
                raise ConfigError(
                    f"tensorboard.port and ps.port are both {self.ps.port}; they may share a "
                    "node, give them different ports"
                )
            if not self.logdir:
                raise ConfigError("tensorboard.enabled needs logdir (the jobs' log directory)")

    @property
    def environment_uri(self) -> str:
        """``environment`` as a URI (a plain absolute path becomes ``file://``)."""
        env = self.environment
        return f"file://{env}" if env.startswith("/") else env

    @property
    def python(self) -> str:
        """The Python of the localised environment, relative to a container's directory."""
        return f"./{ENV_DIR}/bin/python"


def parse_spec(
    data: Mapping[str, Any], env: Mapping[str, str], source: str = "<spec>"
) -> ServiceSpec:
    """Build a :class:`ServiceSpec` from parsed YAML; ``${VAR}`` in strings take ``env``."""

    def sub(value: Any, key: str) -> Any:
        if isinstance(value, str):
            return expand(value, env, key=key, source=source)
        if isinstance(value, Mapping):
            return {k: sub(v, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
        return value

    data = sub(dict(data), "")
    top = _take(
        data,
        source,
        {
            "name": None, "environment": "", "state_dir": "", "logdir": "", "transport": "tcp",
            "tls": False, "version": "1", "queue": "default", "lifetime_s": -1,
            "ps": {}, "tensorboard": {}, "standby": {},
        },
    )  # fmt: skip
    if top["name"] is None:
        raise ConfigError(f"{source}: name is required (the YARN service name)")

    def component(cls: type[ComponentSpec], key: str) -> Any:
        defaults = {f: getattr(cls(), f) for f in cls.__dataclass_fields__}
        return cls(**_take(top[key] or {}, f"{source}: {key}", defaults))

    return ServiceSpec(
        name=top["name"],
        environment=str(top["environment"]),
        state_dir=str(top["state_dir"]),
        logdir=str(top["logdir"]),
        transport=top["transport"],
        tls=top["tls"],
        version=str(top["version"]),
        queue=str(top["queue"]),
        lifetime_s=top["lifetime_s"],
        ps=component(PSSpec, "ps"),
        tensorboard=component(TensorBoardSpec, "tensorboard"),
        standby=component(StandbySpec, "standby"),
    )


def load_spec(path: str | Path, env: Mapping[str, str]) -> ServiceSpec:
    """Read and validate a service YAML file (see ``conf/service.yaml``)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read service spec {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    return parse_spec(data or {}, env, source=str(path))


def _component(
    spec: ServiceSpec,
    name: str,
    comp: ComponentSpec,
    command: list[str],
    readiness: dict[str, Any] | None,
    env: Mapping[str, str] | None = None,
    placement: dict[str, Any] | None = None,
    dependencies: tuple[str, ...] = (),
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": name,
        "number_of_containers": comp.instances,
        # One command: YARN appends its stdout/stderr redirection to the end of the line.
        "launch_command": shlex.join(command),
        "resource": comp.resource(),
        "restart_policy": comp.restart_policy,
        "configuration": {
            "env": {"PYTHONUNBUFFERED": "1", **(env or {})},
            "files": [_environment_file(spec)],
        },
        "dependencies": list(dependencies),
    }
    if readiness is not None:
        out["readiness_check"] = readiness
    if placement is not None:
        out["placement_policy"] = placement
    return out


def _environment_file(spec: ServiceSpec) -> dict[str, str]:
    """The environment archive, unpacked into ``./lib`` of each container.

    A static ARCHIVE file rather than a TARBALL artifact: YARN localises artifacts with
    APPLICATION visibility only (1-2 GB unpacked again for every service launch), a file
    with the visibility asked for.
    """
    return {
        "type": "ARCHIVE",
        "src_file": spec.environment_uri,
        "dest_file": ENV_DIR,
        "visibility": "PUBLIC" if spec.environment_public else "APPLICATION",
    }


def _anti_affinity(tag: str) -> dict[str, Any]:
    return {"constraints": [{"type": "ANTI_AFFINITY", "scope": "NODE", "target_tags": [tag]}]}


def yarnfile(spec: ServiceSpec) -> dict[str, Any]:
    """The Services API JSON of ``spec`` (``POST /app/v1/services``).

    Components: ``ps`` (readiness: its port accepts connections), ``tensorboard`` when
    enabled (readiness: HTTP 200), ``standby`` when it has instances or may be flexed
    (always present, possibly with 0 containers, so that ``flex`` can grow it).
    ``${COMPONENT_ID}`` is replaced by YARN with the instance number.
    """
    ps = spec.ps
    ps_command = [spec.python, "-m", "tfyarn.service.ps_server", "--service", spec.name]
    ps_command += ["--instance", "${COMPONENT_ID}", "--port", str(ps.port)]
    ps_command += ["--state-dir", spec.state_dir, "--transport", spec.transport]
    ps_command += ["--snapshot-interval", str(ps.snapshot_interval_s)]
    ps_command += ["--snapshots-kept", str(ps.snapshots_kept)]
    if spec.tls:
        ps_command.append("--tls")
    components = [
        _component(
            spec,
            "ps",
            ps,
            ps_command,
            {"type": "PORT", "properties": {"port": str(ps.port)}},
            placement=_anti_affinity("ps") if ps.anti_affinity else None,
        )
    ]
    if spec.tensorboard.enabled:
        tb = spec.tensorboard
        tb_command = [spec.python, "-m", "tfyarn.service.tensorboard"]
        tb_command += ["--logdir", spec.logdir, "--port", str(tb.port)]
        # YARN's HTTP probe replaces ${THIS_HOST} with the container's address.
        url = f"http://${{THIS_HOST}}:{tb.port}/"
        components.append(
            _component(
                spec, "tensorboard", tb, tb_command, {"type": "HTTP", "properties": {"url": url}}
            )
        )
    components.append(
        _component(
            spec,
            "standby",
            spec.standby,
            [
                *(spec.python, "-m", "tfyarn.service.standby", "--service", spec.name),
                *("--state-dir", spec.state_dir),
            ],
            None,
            dependencies=("ps",),
        )
    )
    properties = {
        PROPERTY_KEYS["state_dir"]: spec.state_dir,
        PROPERTY_KEYS["ps_port"]: str(ps.port),
        PROPERTY_KEYS["transport"]: spec.transport,
        PROPERTY_KEYS["tls"]: "true" if spec.tls else "false",
    }
    if spec.tensorboard.enabled:
        properties[PROPERTY_KEYS["tensorboard_port"]] = str(spec.tensorboard.port)
        properties[PROPERTY_KEYS["logdir"]] = spec.logdir
    return {
        "name": spec.name,
        "version": spec.version,
        "lifetime": spec.lifetime_s,
        "queue": spec.queue,
        "configuration": {"properties": properties},
        "components": components,
    }
