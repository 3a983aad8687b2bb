"""Hadoop jars from Maven Central, resolved once through the packaged pom and cached.

``ensure_hadoop_jars()`` returns a folder holding every jar the dev YARN's daemons and
client tools need. The first call runs ``mvn dependency:copy-dependencies`` on
``hadoop-pom.xml`` (shipped inside the package, so an installed tfyarn works too); later
calls find the folder complete and return at once, without Maven or the network.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import time
from importlib import resources
from pathlib import Path

from tfyarn.errors import YarnError

__all__ = [
    "DEFAULT_HADOOP_VERSION",
    "SERVICES_HADOOP_VERSION",
    "cache_root",
    "ensure_hadoop_jars",
    "hadoop_classpath",
    "hadoop_version",
    "jar_dir",
    "pom_path",
]

#: Matches hadoop-client-api/runtime shipped with pyspark 4.3 (its YARN client).
DEFAULT_HADOOP_VERSION = "3.5.0"

#: The newest Hadoop whose YARN Services jars (API server, service AM) are on Maven Central.
SERVICES_HADOOP_VERSION = "3.4.2"

#: Pinned so resolution does not depend on the local Maven's default plugin versions.
_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.6.1"

#: Marker written last into a complete jar folder; holds the pom's hash.
_COMPLETE = ".tfyarn-complete"

#: A first download takes ~1 minute here; a stalled network should not hang forever.
_MVN_TIMEOUT_S = 1200


def cache_root() -> Path:
    """tfyarn's cache folder: ``$TFYARN_CACHE_DIR`` or ``$XDG_CACHE_HOME/tfyarn``.

    It lives outside the repository (``~/.cache/tfyarn`` by default), so a fresh clone on
    the same machine reuses what an earlier one downloaded.
    """
    explicit = os.environ.get("TFYARN_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "tfyarn"


def hadoop_version(services: bool = False) -> str:
    """The Hadoop version to run: ``$TFYARN_HADOOP_VERSION`` or the default.

    The default is :data:`DEFAULT_HADOOP_VERSION`, or :data:`SERVICES_HADOOP_VERSION` for a
    cluster with the YARN Services API (``services=True``).
    """
    default = SERVICES_HADOOP_VERSION if services else DEFAULT_HADOOP_VERSION
    return os.environ.get("TFYARN_HADOOP_VERSION", default)


def pom_path() -> Path:
    """The pom listing the Hadoop artifacts (package data of :mod:`tfyarn.yarn`)."""
    path = Path(str(resources.files("tfyarn.yarn").joinpath("hadoop-pom.xml")))
    if not path.is_file():
        raise YarnError(
            f"{path} is missing from the tfyarn installation; reinstall tfyarn "
            "(hadoop-pom.xml is declared as package data in pyproject.toml)"
        )
    return path


def _pom_digest(version: str, services: bool = False) -> str:
    digest = hashlib.sha256(pom_path().read_bytes())
    digest.update(version.encode())
    digest.update(b"+services" if services else b"")
    return digest.hexdigest()[:16]


def jar_dir(version: str | None = None, services: bool = False) -> Path:
    """Where the jars of ``version`` (with the YARN Services jars or not) are cached."""
    suffix = "-services" if services else ""
    return cache_root() / f"hadoop-{version or hadoop_version(services)}{suffix}" / "lib"


def _is_complete(folder: Path, digest: str) -> bool:
    marker = folder / _COMPLETE
    return marker.is_file() and marker.read_text().strip() == digest


def ensure_hadoop_jars(
    version: str | None = None, *, services: bool = False, quiet: bool = True
) -> Path:
    """Return a folder with every jar of the dev YARN, downloading them on first use.

    Parameters
    ----------
    version : str, optional
        Hadoop version; default :func:`hadoop_version`.
    services : bool
        Add the YARN Services jars (the pom's ``services`` profile).
    quiet : bool
        Pass ``-q`` to Maven.

    Returns
    -------
    Path
        The folder of jars (the classpath is this folder plus the conf dir).

    Raises
    ------
    YarnError
        Maven is missing, or it could not resolve the artifacts (offline before the first
        download, or the version does not exist on Maven Central).
    """
    version = version or hadoop_version(services)
    target = jar_dir(version, services)
    digest = _pom_digest(version, services)
    if _is_complete(target, digest):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Two test sessions (or a test and a developer) may start at once: one downloads.
    with open(target.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _is_complete(target, digest):
            return target
        _download(version, target, services=services, quiet=quiet)
        (target / _COMPLETE).write_text(digest + "\n")
    return target


def _download(version: str, target: Path, *, services: bool, quiet: bool) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise YarnError(
            "Maven (mvn) is needed once to fetch the Hadoop jars of the dev YARN; "
            "install it (apt-get install maven, as scripts/setup-system.sh does)"
        )
    staging = target.with_name(f"lib.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    cmd = [
        mvn,
        "-B",
        *(["-q"] if quiet else []),
        "-f",
        str(pom_path()),
        f"{_DEPENDENCY_PLUGIN}:copy-dependencies",
        f"-Dhadoop.version={version}",
        *(["-Pservices"] if services else []),
        f"-DoutputDirectory={staging}",
        "-DincludeScope=runtime",
        "-DexcludeClassifiers=tests",
    ]
    started = time.monotonic()
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=_MVN_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise YarnError(
            f"Maven did not finish fetching the Hadoop {version} jars in {_MVN_TIMEOUT_S} s; "
            "check access to Maven Central and retry"
        ) from exc
    if proc.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise YarnError(
            f"Maven could not fetch the Hadoop {version} jars (exit {proc.returncode}); "
            f"Maven Central must be reachable for the first run.\n{tail}"
        )
    if not any(staging.glob("hadoop-yarn-server-resourcemanager-*.jar")):
        shutil.rmtree(staging, ignore_errors=True)
        raise YarnError(f"Maven succeeded but no ResourceManager jar appeared in {staging}")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    (target.parent / "download-seconds").write_text(f"{time.monotonic() - started:.1f}\n")


def hadoop_classpath(conf_dir: Path, jars: Path) -> str:
    """The JVM classpath of the daemons and client tools: conf dir first, then the jars."""
    return f"{conf_dir}{os.pathsep}{jars}/*"
