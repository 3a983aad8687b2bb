"""Cluster profiles (conf/*.conf) and the spark-submit command built from them: pure functions.

A profile is a Spark properties file (``key value`` per line, ``#`` comments), the same
format as ``spark-defaults.conf``. tfyarn's own settings live in it as ``spark.tfyarn.*``
keys, which Spark passes through to the driver's SparkConf, where :func:`tfyarn.run`
reads them. Values may use ``${VAR}`` to take environment variables; ``tfyarn submit``
sets ``TFYARN_EXECUTORS`` to the number of roles the job plans.

The user's own ``--conf KEY=VALUE`` options win over the profile's values
(:func:`merge_user_conf`), except where a value would break what tfyarn needs (one task per
executor, a fixed executor set of at least one per role, the role counts that ``tfyarn
submit`` sets from its own options): those are refused, naming the setting and why
(:func:`check_required`). Nothing the user gave is dropped silently.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tfyarn.errors import ConfigError

__all__ = [
    "PROFILE_SUFFIX",
    "Override",
    "SubmitPlan",
    "check_required",
    "default_env",
    "expand",
    "find_profile",
    "load_profile",
    "local_ip_env",
    "merge_user_conf",
    "parse_properties",
    "profile_dirs",
    "roles_count",
    "spark_submit_argv",
    "take_user_conf",
]

PROFILE_SUFFIX = ".conf"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def parse_properties(text: str, source: str = "<profile>") -> dict[str, str]:
    """Parse ``key value`` (or ``key=value``) lines; ``#`` starts a comment line."""
    props: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"^([^\s=]+)\s*(?:=|\s)\s*(.*)$", line)
        if not match:
            raise ConfigError(f"{source}:{number}: expected 'key value', got {raw!r}")
        props[match.group(1)] = match.group(2).strip()
    return props


def expand(value: str, env: Mapping[str, str], *, key: str = "", source: str = "") -> str:
    """Replace ``${VAR}`` with ``env[VAR]``; an unset variable is an error naming it."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            where = f" (in {key} of {source})" if key else ""
            raise ConfigError(
                f"environment variable {name} is not set{where}; export it before submitting"
            )
        return env[name]

    return _VAR.sub(substitute, value)


def profile_dirs(conf_dir: str | None, env: Mapping[str, str]) -> list[Path]:
    """Profile lookup order: ``--conf-dir``, $TFYARN_CONF_DIR, then the repo's conf/."""
    dirs = []
    if conf_dir:
        dirs.append(Path(conf_dir))
    if env.get("TFYARN_CONF_DIR"):
        dirs.append(Path(env["TFYARN_CONF_DIR"]))
    dirs.append(Path(__file__).resolve().parents[2] / "conf")
    return dirs


def find_profile(name: str, dirs: Sequence[Path]) -> Path:
    """A profile by file path, or by name (``yarn-client`` -> ``<dir>/yarn-client.conf``)."""
    as_path = Path(name)
    if as_path.suffix == PROFILE_SUFFIX and as_path.is_file():
        return as_path
    for directory in dirs:
        candidate = directory / f"{name}{PROFILE_SUFFIX}"
        if candidate.is_file():
            return candidate
    known = sorted({p.stem for d in dirs if d.is_dir() for p in d.glob(f"*{PROFILE_SUFFIX}")})
    raise ConfigError(
        f"no profile named {name!r} in {', '.join(str(d) for d in dirs)}; "
        f"known profiles: {', '.join(known) or 'none'}"
    )


@dataclass(frozen=True)
class Override:
    """A profile setting replaced by the user's ``--conf``.

    Parameters
    ----------
    key : str
        The Spark setting.
    profile : str
        The profile's value.
    user : str
        The user's value, which the job runs with.
    """

    key: str
    profile: str
    user: str

    def __str__(self) -> str:
        return f"--conf {self.key}={self.user} overrides the profile's {self.key}={self.profile}"


@dataclass
class SubmitPlan:
    """A spark-submit invocation: the command line and the environment it runs in."""

    argv: list[str]
    env: dict[str, str]
    properties: dict[str, str] = field(default_factory=dict)
    #: The profile settings the user's ``--conf`` replaced (told to the user at submit).
    overrides: tuple[Override, ...] = ()

    @property
    def master(self) -> str:
        """The ``spark.master`` the job goes to."""
        return self.properties.get("spark.master", "")

    @property
    def deploy_mode(self) -> str:
        """``client`` or ``cluster``."""
        return self.properties.get("spark.submit.deployMode", "client")


def spark_submit_argv(
    spark_submit: str,
    properties: Mapping[str, str],
    passthrough: Sequence[str],
    script: str,
    script_args: Sequence[str],
) -> list[str]:
    """The spark-submit command line: properties as ``--conf``, then the user's arguments."""
    argv = [spark_submit]
    for key, value in properties.items():
        if key == "spark.master":
            argv += ["--master", value]
        elif key == "spark.submit.deployMode":
            argv += ["--deploy-mode", value]
        else:
            argv += ["--conf", f"{key}={value}"]
    return [*argv, *passthrough, script, *script_args]


def roles_count(workers: int, ps: int, chief: bool, evaluator: bool) -> int:
    """Executors a job needs: one per role."""
    return workers + ps + int(chief) + int(evaluator)


def default_env(env: Mapping[str, str], executors: int, python: str) -> dict[str, str]:
    """The environment spark-submit runs in: ours plus what tfyarn needs."""
    out = dict(env)
    out["TFYARN_EXECUTORS"] = str(executors)
    out.setdefault("PYSPARK_PYTHON", python)
    out.setdefault("PYSPARK_DRIVER_PYTHON", python)
    return out


def load_profile(path: Path, env: Mapping[str, str]) -> dict[str, str]:
    """Read a profile and expand its ``${VAR}`` references against ``env``."""
    raw = parse_properties(path.read_text(), str(path))
    return {k: expand(v, env, key=k, source=str(path)) for k, v in raw.items()}


def local_ip_env(properties: Mapping[str, str], env: Mapping[str, str]) -> dict[str, str]:
    """Local-cluster profiles bind Spark to the driver host (127.0.0.1 by default)."""
    master = properties.get("spark.master", "")
    if master.startswith("local-cluster") and "SPARK_LOCAL_IP" not in env:
        return {"SPARK_LOCAL_IP": properties.get("spark.driver.host", "127.0.0.1")}
    return {}


#: ``tfyarn submit`` options that set ``spark.tfyarn.*`` keys; ``--conf`` must not.
CLI_KEYS: dict[str, str] = {
    "spark.tfyarn.workers": "--workers",
    "spark.tfyarn.ps": "--ps",
    "spark.tfyarn.chief": "--chief / --no-chief",
}


def take_user_conf(passthrough: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Take the user's ``--conf KEY=VALUE`` (``--conf=``, ``-c``) out of the passthrough.

    Returns
    -------
    (dict, list)
        The settings, in the order given (a later one wins, as in spark-submit), and the
        remaining passthrough arguments.

    Raises
    ------
    ConfigError
        A ``--conf`` without ``KEY=VALUE``.
    """
    confs: dict[str, str] = {}
    rest: list[str] = []
    args = list(passthrough)
    i = 0
    while i < len(args):
        arg = args[i]
        flag, eq, inline = arg.partition("=")
        if flag not in ("--conf", "-c"):
            rest.append(arg)
            i += 1
            continue
        value = inline if eq else (args[i + 1] if i + 1 < len(args) else "")
        i += 1 if eq else 2
        key, has_value, setting = value.partition("=")
        if not key or not has_value:
            raise ConfigError(f"{flag} {value!r}: expected {flag} KEY=VALUE")
        confs[key.strip()] = setting.strip()
    return confs, rest


def merge_user_conf(
    properties: Mapping[str, str], user: Mapping[str, str]
) -> tuple[dict[str, str], tuple[Override, ...]]:
    """The profile's settings with the user's ``--conf`` on top, and what they replaced.

    Raises
    ------
    ConfigError
        The user sets a ``spark.tfyarn.*`` key that a ``tfyarn submit`` option owns.
    """
    for key in user:
        if key in CLI_KEYS:
            raise ConfigError(
                f"--conf {key}=... is set by tfyarn submit from {CLI_KEYS[key]}, which also "
                "sizes the cluster; use that option instead"
            )
    merged = dict(properties)
    overrides = tuple(
        Override(key, merged[key], value)
        for key, value in user.items()
        if key in merged and merged[key] != value
    )
    merged.update(user)
    return merged, overrides


def check_required(properties: Mapping[str, str], roles: int) -> None:
    """Refuse settings under which tfyarn cannot run ``roles`` roles, saying why.

    Raises
    ------
    ConfigError
        Dynamic allocation on; fewer ``spark.executor.instances`` than roles; or
        ``spark.task.cpus`` different from ``spark.executor.cores`` (two roles could share
        an executor, or none fit).
    """
    if properties.get("spark.dynamicAllocation.enabled", "false").strip().lower() == "true":
        raise ConfigError(
            "spark.dynamicAllocation.enabled=true cannot be used: a barrier stage needs a "
            "fixed set of executors, one per role (tfyarn's profiles set it to false)"
        )
    instances = properties.get("spark.executor.instances", "").strip()
    if instances.isdigit() and int(instances) < roles:
        raise ConfigError(
            f"spark.executor.instances={instances} is fewer than the job's {roles} roles "
            f"(one executor each); leave it to tfyarn submit, which sets {roles}"
        )
    cpus = properties.get("spark.task.cpus")
    cores = properties.get("spark.executor.cores")
    if cpus is not None and cores is not None and cpus.strip() != cores.strip():
        raise ConfigError(
            f"spark.task.cpus={cpus} differs from spark.executor.cores={cores}: tfyarn needs "
            "exactly one task (one role) per executor; set both to the same number"
        )
