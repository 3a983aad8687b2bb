"""Cluster profiles (conf/*.conf) and the spark-submit command built from them: pure functions.

A profile is a Spark properties file (``key value`` per line, ``#`` comments), the same
format as ``spark-defaults.conf``. tfyarn's own settings live in it as ``spark.tfyarn.*``
keys, which Spark passes through to the driver's SparkConf, where :func:`tfyarn.run`
reads them. Values may use ``${VAR}`` to take environment variables; ``tfyarn submit``
sets ``TFYARN_EXECUTORS`` to the number of roles the job plans.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tfyarn.errors import ConfigError

__all__ = [
    "PROFILE_SUFFIX",
    "SubmitPlan",
    "default_env",
    "expand",
    "find_profile",
    "load_profile",
    "local_ip_env",
    "parse_properties",
    "profile_dirs",
    "roles_count",
    "spark_submit_argv",
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


@dataclass
class SubmitPlan:
    """A spark-submit invocation: the command line and the environment it runs in."""

    argv: list[str]
    env: dict[str, str]
    properties: dict[str, str] = field(default_factory=dict)

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
