"""``tfyarn.run``'s arguments, settled and checked once: :class:`LaunchOptions`.

:func:`launch_options` fills in what the call left out from ``spark.tfyarn.*`` settings
(which ``tfyarn submit`` writes), works out the input mode, and attaches a named service;
the :class:`LaunchOptions` it returns checks every field when it is built and names every
bad one in a single :class:`~tfyarn.errors.ConfigError`, before anything starts.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import InitVar, dataclass, field
from typing import TYPE_CHECKING, Any

from tfyarn.cluster.history import DEFAULT_INTERVAL as DEFAULT_HISTORY_INTERVAL
from tfyarn.cluster.history import default_history_dir
from tfyarn.cluster.plan import TF_NATIVE_STRATEGIES
from tfyarn.errors import ConfigError
from tfyarn.exchange import STRATEGY_NAMES as EXCHANGE_STRATEGIES
from tfyarn.exchange.checkpoint import CheckpointPolicy
from tfyarn.node.job import InputMode
from tfyarn.transport.select import CHOICES as TRANSPORTS

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from tfyarn.service.attach import ServiceAttachment
    from tfyarn.transport.options import TransportOptions

__all__ = [
    "DEFAULT_CHECKPOINT_EVERY",
    "DEFAULT_SILENT_FAIL_AFTER",
    "ConfLookup",
    "LaunchOptions",
    "launch_options",
]

#: How often trainers checkpoint when restarts are on and ``checkpoint_every`` is not
#: given: by time, so that the cost stays a small share of training whatever a step costs.
DEFAULT_CHECKPOINT_EVERY = "60s"
#: Seconds of heartbeat silence after which a role is taken for lost (heartbeats come
#: from a thread of their own every ``heartbeat_interval``, busy training or not).
DEFAULT_SILENT_FAIL_AFTER = 120.0

#: ``spark.tfyarn.<key>`` -> its value, or None when unset.
ConfLookup = Callable[[str], "str | None"]

_WORKERS_MISSING = "say how many workers: tfyarn.run(..., workers=N) or --workers N"


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_seconds(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _seconds_problem(name: str, value: object, optional: bool = False) -> list[str]:
    if value is None and optional:
        return []
    if not _is_seconds(value):
        none = " or None" if optional else ""
        return [f"{name} must be positive seconds{none}, got {value!r}"]
    return []


def _restart_problems(options: LaunchOptions) -> list[str]:
    """``max_restarts``, the failure limits and the checkpoint interval."""
    problems = _count_problem("max_restarts", options.max_restarts, 0)
    problems += _seconds_problem("silent_fail_after", options.silent_fail_after, optional=True)
    problems += _seconds_problem("stall_fail_after", options.stall_fail_after, optional=True)
    silent, beat = options.silent_fail_after, options.heartbeat_interval
    if _is_seconds(silent) and _is_seconds(beat) and silent <= 2 * beat:  # type: ignore[operator]
        problems.append(
            f"silent_fail_after={silent} s would take a role for lost between two heartbeats "
            f"(heartbeat_interval={beat} s): make it more than twice the interval"
        )
    problems += _min_workers_problems(options)
    if not isinstance(options.retry_on_errors, bool):
        problems.append(f"retry_on_errors must be True or False, got {options.retry_on_errors!r}")
    if options.checkpoint_dir is not None and not (
        isinstance(options.checkpoint_dir, str) and options.checkpoint_dir
    ):
        problems.append(f"checkpoint_dir must name a folder, got {options.checkpoint_dir!r}")
    try:
        CheckpointPolicy.parse_every(options.checkpoint_every)
    except ConfigError as exc:
        problems.append(str(exc))
    return problems


def _tls_problems(options: LaunchOptions) -> list[str]:
    """``tls``: a bool, for a job whose tensors travel over tcp or grpc."""
    if not isinstance(options.tls, bool):
        return [f"tls must be True or False, got {options.tls!r}"]
    if not options.tls:
        return []
    problems = []
    given = options.transport_options
    if given is not None and (given.tls_cert_chain is not None or given.tls_root_certs is not None):
        problems.append(
            "tls=True makes a certificate for the job; transport_options already has tls_* "
            "settings (the site's own certificates): give one or the other"
        )
    if options.transport in ("ucx", "rdma", "shm"):
        problems.append(
            f"tls=True cannot go with transport={options.transport!r}: UCX has no TLS; use "
            "'tcp', 'grpc' or 'auto' (which then picks tcp)"
        )
    elif options.transport is None:
        problems.append(
            f"tls=True protects tfyarn's transports, but this job opens none (strategy="
            f"{options.strategy!r}): TensorFlow's own gRPC (ps, mwms) has no TLS; use an "
            "exchange strategy, or run on an isolated network (docs/operators.md)"
        )
    return problems


def _watch_problems(options: LaunchOptions) -> list[str]:
    """TensorBoard, metrics and history settings."""
    problems = []
    if not isinstance(options.tensorboard, bool):
        problems.append(f"tensorboard must be True or False, got {options.tensorboard!r}")
    log_dir = options.log_dir
    if log_dir is not None and (not isinstance(log_dir, str) or not log_dir):
        problems.append(f"log_dir must be a folder path or None, got {log_dir!r}")
    elif log_dir is not None and "://" in log_dir and not log_dir.startswith("file://"):
        problems.append(
            f"log_dir={log_dir!r} is not a local path: TensorFlow 2.21 writes summaries to "
            "local paths only (no hdfs://); give a folder on the chief's host, or none (the "
            "default is <model_dir>/logs, or a temp folder on the chief's host)"
        )
    port = options.metrics_port
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        problems.append(f"metrics_port must be a port number (0: off), got {port!r}")
    if not isinstance(options.history_dir, str):
        problems.append(
            f"history_dir must be a folder path ('' for none), got {options.history_dir!r}"
        )
    if not _is_seconds(options.history_interval):
        problems.append(
            f"history_interval must be positive seconds, got {options.history_interval!r}"
        )
    return problems


def _min_workers_problems(options: LaunchOptions) -> list[str]:
    """``min_workers``: a count between 1 and ``workers``, for a run that restarts."""
    least = options.min_workers
    if least is None:
        return []
    problems = _count_problem("min_workers", least, 1)
    if problems or not _is_count(options.workers):
        return problems
    if least > options.workers:
        problems.append(
            f"min_workers={least} is more than workers={options.workers}: a restart may run "
            "with fewer workers than asked for, never more"
        )
    if not options.max_restarts:
        problems.append(
            f"min_workers={least} only applies to restarts, and max_restarts is 0: set "
            "max_restarts (spark.tfyarn.maxRestarts, tfyarn submit --max-restarts)"
        )
    return problems


def _count_problem(name: str, value: object, minimum: int) -> list[str]:
    if not _is_count(value):
        return [f"{name} must be a whole number, got {value!r}"]
    if value < minimum:  # type: ignore[operator]
        return [f"{name} must be at least {minimum}, got {value}"]
    return []


def _strategy_problems(strategy: str | None, ps: object, transport: str | None) -> list[str]:
    """Unknown strategy or transport names, and strategies that contradict ``ps``."""
    known = (*TF_NATIVE_STRATEGIES, *EXCHANGE_STRATEGIES)
    problems = []
    if strategy is not None and strategy not in known:
        problems.append(f"unknown strategy {strategy!r}; choose one of {', '.join(known)}")
    if strategy == "ps" and ps == 0:
        problems.append("strategy='ps' needs at least one parameter server: pass ps=1 or more")
    if strategy == "mwms" and _is_count(ps) and ps:
        problems.append("strategy='mwms' has no parameter servers: pass ps=0")
    if transport is not None and transport not in TRANSPORTS:
        problems.append(f"unknown transport {transport!r}; choose one of {', '.join(TRANSPORTS)}")
    return problems


def _service_problems(service: object, strategy: str | None, ps: object) -> list[str]:
    """Why the job cannot attach to ``service`` (ps roles of its own, a sync strategy)."""
    from tfyarn.exchange.algorithms import SERVICE_STRATEGIES

    problems = []
    if ps:
        problems.append(f"service={service!r} brings its own parameter servers: pass ps=0")
    if strategy not in SERVICE_STRATEGIES:
        problems.append(
            f"strategy {strategy!r} cannot attach to a service; use one of "
            f"{', '.join(SERVICE_STRATEGIES)}"
        )
    return problems


def _data_problems(mode: InputMode, data: object) -> list[str]:
    """Whether ``data`` is what ``mode`` reads: file paths for FILES, a DataFrame for SPARK."""
    if mode is InputMode.FILES:
        if not isinstance(data, tuple) or not all(isinstance(f, str) for f in data):
            return ["input_mode=FILES needs data= as a list of file paths"]
    elif mode is InputMode.SPARK:
        from pyspark.sql import DataFrame

        if not isinstance(data, DataFrame):
            return [f"input_mode=SPARK needs data= as a Spark DataFrame, got {type(data).__name__}"]
        from tfyarn.cluster.validate import unfeedable_columns

        return unfeedable_columns(data.schema)
    return []


@dataclass(frozen=True)
class LaunchOptions:
    """Everything :func:`tfyarn.run` was asked to do, settled and checked.

    The fields are :func:`tfyarn.run`'s parameters of the same names, with defaults
    filled in, except:

    Parameters
    ----------
    input_mode : InputMode
        Resolved: SPARK for a DataFrame, FILES for a list of paths, NONE without data.
    data : DataFrame or tuple of str or None
        The DataFrame (SPARK), the file paths (FILES), or None.
    service : ServiceAttachment or None
        The attached service (a name given to ``run`` is already looked up).
    service_name : str, optional
        Init-only: a service name not yet looked up, so that the attachment rules are
        checked before the ResourceManager is asked.

    Raises
    ------
    ConfigError
        Naming every field that is wrong, one per line when there are several.
    """

    workers: int
    ps: int = 0
    chief: bool | None = None
    evaluator: bool = False
    input_mode: InputMode = InputMode.NONE
    data: DataFrame | tuple[str, ...] | None = None
    strategy: str | None = None
    strategy_options: Mapping[str, Any] = field(default_factory=dict)
    transport: str | None = None
    interface: str | None = None
    model_dir: str | None = None
    timeout: float | None = None
    allocation_timeout: float = 120.0
    startup_timeout: float = 300.0
    heartbeat_interval: float = 2.0
    silent_warning_after: float = 60.0
    env: Mapping[str, str] = field(default_factory=dict)
    progress: bool = True
    service: ServiceAttachment | None = None
    transport_options: TransportOptions | None = None
    max_restarts: int = 0
    checkpoint_dir: str | None = None
    checkpoint_every: int | float | str | None = None
    retry_on_errors: bool = False
    silent_fail_after: float | None = DEFAULT_SILENT_FAIL_AFTER
    stall_fail_after: float | None = None
    min_workers: int | None = None
    tls: bool = False
    tensorboard: bool = False
    log_dir: str | None = None
    metrics_port: int = 0
    history_dir: str = ""
    history_interval: float = DEFAULT_HISTORY_INTERVAL
    service_name: InitVar[str | None] = None

    def __post_init__(self, service_name: str | None) -> None:
        problems = self._problems(service_name)
        if len(problems) == 1:
            raise ConfigError(problems[0])
        if problems:
            lines = "\n".join(f"- {p}" for p in problems)
            raise ConfigError(f"{len(problems)} problems with tfyarn.run's arguments:\n{lines}")

    def _problems(self, service_name: str | None) -> list[str]:
        problems = self._count_problems()
        problems += _strategy_problems(self.strategy, self.ps, self.transport)
        service = self.service if self.service is not None else service_name
        if service is not None:
            problems += _service_problems(service, self.strategy, self.ps)
        problems += _data_problems(self.input_mode, self.data)
        problems += _restart_problems(self)
        problems += _tls_problems(self)
        problems += _watch_problems(self)
        for name in ("allocation_timeout", "startup_timeout", "heartbeat_interval"):
            if not _is_seconds(getattr(self, name)):
                problems.append(f"{name} must be positive seconds, got {getattr(self, name)!r}")
        if not _is_seconds(self.silent_warning_after):
            problems.append(
                f"silent_warning_after must be positive seconds, got {self.silent_warning_after!r}"
            )
        if self.timeout is not None and not _is_seconds(self.timeout):
            problems.append(f"timeout must be positive seconds or None, got {self.timeout!r}")
        if not isinstance(self.strategy_options, Mapping):
            problems.append(f"strategy_options must be a dict, got {self.strategy_options!r}")
        elif self.strategy in EXCHANGE_STRATEGIES:
            from tfyarn.exchange.algorithms import option_problems

            problems += option_problems(self.strategy, self.strategy_options)
        env = self.env
        if not isinstance(env, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            problems.append(f"env must map names to strings, got {env!r}")
        return problems

    def _count_problems(self) -> list[str]:
        """Role counts: whole numbers, enough of them (worded as the role plan words it)."""
        if self.workers is None:
            return [_WORKERS_MISSING, *_count_problem("ps", self.ps, 0)]
        least = 0 if self.chief is not False else 1  # None: plan_job decides
        return [*_count_problem("workers", self.workers, least), *_count_problem("ps", self.ps, 0)]

    def checkpoint_policy(self, model_dir: str) -> CheckpointPolicy | None:
        """Where and how often trainers checkpoint; None when nothing asks for it.

        Checkpoints are on when restarts are (``max_restarts`` > 0) or when
        ``checkpoint_dir``/``checkpoint_every`` is given; the folder defaults to
        ``<model_dir>/checkpoints`` and the interval to :data:`DEFAULT_CHECKPOINT_EVERY`.
        """
        if not self.max_restarts and self.checkpoint_dir is None and self.checkpoint_every is None:
            return None
        every = self.checkpoint_every
        steps, seconds = CheckpointPolicy.parse_every(
            DEFAULT_CHECKPOINT_EVERY if every is None else every
        )
        directory = self.checkpoint_dir or os.path.join(model_dir, "checkpoints")
        return CheckpointPolicy(directory, every_steps=steps, every_seconds=seconds)

    @property
    def files(self) -> tuple[str, ...]:
        """The input files (:attr:`InputMode.FILES`), else empty."""
        if self.input_mode is InputMode.FILES and isinstance(self.data, tuple):
            return self.data
        return ()


def _settle(
    value: Any, conf: ConfLookup, key: str, cast: Callable[[str], Any], default: Any
) -> Any:
    """An argument given in code wins; else ``spark.tfyarn.<key>``; else the default."""
    if value is not None:
        return value
    raw = conf(key)
    if raw is None or raw == "":
        return default
    try:
        return cast(raw)
    except ValueError:
        raise ConfigError(f"spark.tfyarn.{key}={raw!r} is not valid") from None


def _boolean(raw: str) -> bool:
    """A Spark-style boolean property (``true``/``false``, any case)."""
    word = raw.strip().lower()
    if word not in ("true", "false"):
        raise ValueError(raw)
    return word == "true"


def _history_dir(raw: str) -> str:
    """``spark.tfyarn.history.dir``: a folder, or ``none`` for no history."""
    return "" if raw.strip().lower() in ("none", "off", "false") else raw.strip()


def _every(raw: str) -> int | str:
    """``spark.tfyarn.checkpoint.every``: a bare number is steps, else a time (``30s``)."""
    return int(raw) if raw.strip().isdigit() else raw.strip()


def _input_mode(data: Any, input_mode: InputMode | str | None) -> tuple[InputMode, Any]:
    """The input mode (from ``data`` unless given), and ``data`` as that mode keeps it."""
    if input_mode is None:
        if data is None:
            mode = InputMode.NONE
        elif isinstance(data, list | tuple):
            mode = InputMode.FILES
        else:
            mode = InputMode.SPARK
    elif isinstance(input_mode, str):
        try:
            mode = InputMode(input_mode)
        except ValueError:
            choices = ", ".join(m.value for m in InputMode)
            raise ConfigError(
                f"unknown input_mode {input_mode!r}; choose one of {choices}"
            ) from None
    else:
        mode = input_mode
    if mode is InputMode.FILES and isinstance(data, list | tuple):
        return mode, tuple(data)
    return mode, data if mode is not InputMode.NONE else None


def launch_options(
    conf: ConfLookup,
    *,
    workers: int | None,
    ps: int | None,
    transport: str | None,
    interface: str | None,
    service: str | ServiceAttachment | None,
    data: Any,
    input_mode: InputMode | str | None,
    strategy: str | None,
    max_restarts: int | None = None,
    checkpoint_dir: str | None = None,
    checkpoint_every: int | float | str | None = None,
    min_workers: int | None = None,
    tls: bool | None = None,
    tensorboard: bool | None = None,
    log_dir: str | None = None,
    metrics_port: int | None = None,
    history_dir: str | None = None,
    history_interval: float | None = None,
    **given: Any,
) -> LaunchOptions:
    """Settle :func:`tfyarn.run`'s arguments into checked :class:`LaunchOptions`.

    Parameters
    ----------
    conf : callable
        ``spark.tfyarn.<key>`` lookup, for the arguments the call left as None.
    workers, ps, transport, interface, service
        As given to :func:`tfyarn.run`; None: ``spark.tfyarn.<name>``, else the default.
    data, input_mode, strategy
        As given to :func:`tfyarn.run`.
    max_restarts, checkpoint_dir, checkpoint_every, min_workers, tls
        As given to :func:`tfyarn.run`; None: ``spark.tfyarn.maxRestarts``,
        ``spark.tfyarn.checkpoint.dir``, ``spark.tfyarn.checkpoint.every``,
        ``spark.tfyarn.minWorkers``, ``spark.tfyarn.tls``, else 0 restarts, the
        checkpoint defaults (:meth:`LaunchOptions.checkpoint_policy`), no scaling down
        and no TLS.
    tensorboard, log_dir, metrics_port, history_dir, history_interval
        As given to :func:`tfyarn.run`; None: ``spark.tfyarn.tensorboard``,
        ``spark.tfyarn.logDir``, ``spark.tfyarn.metrics.port``,
        ``spark.tfyarn.history.dir``, ``spark.tfyarn.history.interval``, else no
        TensorBoard, no log folder, no metrics endpoint, the user's history folder
        (:func:`~tfyarn.cluster.history.default_history_dir`) and 5 s between samples.
    **given
        :func:`tfyarn.run`'s other arguments, taken as they are.

    Raises
    ------
    ConfigError
        Naming every bad argument; a named service is looked up only once all is well.
    """
    transport = _settle(transport, conf, "transport", str, None)
    if transport is None and strategy in EXCHANGE_STRATEGIES:
        transport = "auto"
    mode, data = _input_mode(data, input_mode)
    service = _settle(service, conf, "service", str, None)
    # None means "none given" for run()'s dict arguments; the options hold a dict.
    given = {
        k: {} if v is None and k in ("env", "strategy_options") else v for k, v in given.items()
    }
    named = service if isinstance(service, str) else None
    attachment: ServiceAttachment | None = None if isinstance(service, str) else service
    options = LaunchOptions(
        workers=_settle(workers, conf, "workers", int, None),
        ps=_settle(ps, conf, "ps", int, 0),
        transport=transport,
        interface=interface or conf("interface"),
        input_mode=mode,
        data=data,
        strategy=strategy,
        service=attachment,
        service_name=named,
        max_restarts=_settle(max_restarts, conf, "maxRestarts", int, 0),
        checkpoint_dir=_settle(checkpoint_dir, conf, "checkpoint.dir", str, None),
        checkpoint_every=_settle(checkpoint_every, conf, "checkpoint.every", _every, None),
        min_workers=_settle(min_workers, conf, "minWorkers", int, None),
        tls=_settle(tls, conf, "tls", _boolean, False),
        tensorboard=_settle(tensorboard, conf, "tensorboard", _boolean, False),
        log_dir=_settle(log_dir, conf, "logDir", str, None),
        metrics_port=_settle(metrics_port, conf, "metrics.port", int, 0),
        history_dir=_settle(history_dir, conf, "history.dir", _history_dir, default_history_dir()),
        history_interval=_settle(
            history_interval, conf, "history.interval", float, DEFAULT_HISTORY_INTERVAL
        ),
        **given,
    )
    if named is None:
        return options
    from tfyarn.service.attach import attach

    return dataclasses.replace(options, service=attach(named))
