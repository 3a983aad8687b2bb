"""Pack the Python environment for YARN containers, as real clusters need it.

YARN nodes do not share the client's virtualenv. The environment is packed with
``venv-pack`` into an archive that ``spark-submit --archives ARCHIVE#tfyarn-env`` ships;
YARN unpacks it into every container's working directory, and executors (and the driver,
in cluster mode) run ``./tfyarn-env/bin/python``.

What goes in, and why:

- everything of the venv except ``pyspark``: spark-submit already ships ``pyspark.zip``
  and ``py4j-*.zip`` and puts them first on the containers' ``PYTHONPATH``; the pip
  pyspark (~500 MB, mostly jars) would only be dead weight;
- tfyarn itself, copied as an importable package (with its built C extension) plus a
  ``dist-info``: an editable install (a ``.pth`` pointing at the source tree) would not
  exist on a real node, so its hooks are left out;
- not needed to run, and costly to unpack file by file: TensorFlow's C++ headers,
  packages' ``tests`` folders, pip, Ansible, and the development tools a venv may hold
  (type checkers, linters, test runners: :data:`DEV_TOOLS`). The NodeManager forks one
  ``chmod`` per file and folder it unpacks (Hadoop's native library is not on Maven
  Central), so on the dev YARN localisation takes about 2-3 ms per entry;
- ``__pycache__`` stays: TensorFlow imports thousands of modules, recompiling them in
  every container would cost seconds per role.

The archive is an uncompressed ``.tar`` (YARN unpacks ``.tar`` as well as ``.tar.gz``):
packing is I/O only (~10 s instead of minutes of gzip on a 2-core box) and unpacking in the
NodeManager is faster. It is cached under ``<cache>/envs/`` keyed by the installed
distributions, the interpreter and tfyarn's own files, so a test session packs once and
later sessions not at all.

Self-contained: venv-pack archives link ``bin/python`` to the interpreter the venv was
made from, so nodes would need that Python at the same path. The venv's links are left
out and :mod:`tfyarn.yarn.interpreter` appends the interpreter itself (binary,
``libpython``, standard library: ~100 MB, ~2,000 files), so a node needs no Python at all;
the dev YARN of the test session proves it with the host's Python hidden from its
NodeManager.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from tfyarn.errors import ConfigError, YarnError
from tfyarn.yarn import maven
from tfyarn.yarn.interpreter import VENV_LINKS, add_interpreter, base_interpreter

__all__ = [
    "DEV_TOOLS",
    "ENV_ALIAS",
    "PackedEnv",
    "cluster_env_url",
    "ensure_env_archive",
    "env_fingerprint",
    "publish_env_archive",
]

#: Name of the folder YARN unpacks the archive into (the ``#alias`` of ``--archives``).
ENV_ALIAS = "tfyarn-env"

#: Development tools left out of the archive, as ``site-packages`` entries (fnmatch
#: patterns; their ``dist-info`` goes too): no role imports a type checker, a linter or a
#: test runner, and they are ~2,800 files (~100 MB) of a dev venv. Runtime libraries that
#: tools also use (pygments, rich, setuptools) stay.
DEV_TOOLS: tuple[str, ...] = (
    "mypy",
    "mypyc",
    "*__mypyc*",  # mypy's compiled core, one 40 MB .so at the top of site-packages
    "_pytest",
    "pytest",
    "py.py",
    "pytest_timeout",
    "hypothesis",
    "_hypothesis_*",
    "ansiblelint",
    "ansible_lint",
    "ansible_compat",
    "black",
    "blib2to3",
    "_black_version",
    "yamllint",
    "ruff",
)

#: Archives kept in the cache; older ones are removed (each is ~2 GB).
_KEEP = 2

#: Version of the archive's layout, part of the fingerprint: a change to what is packed
#: (2: the interpreter inside) must not reuse archives packed the old way.
_LAYOUT = 2


@dataclass(frozen=True)
class PackedEnv:
    """A packed environment ready for ``--archives``.

    Parameters
    ----------
    path : Path
        The ``.tar`` archive.
    fingerprint : str
        Key of what is inside (see :func:`env_fingerprint`).
    size_bytes : int
        Size of the archive.
    pack_s : float
        Seconds it took to pack; 0.0 when it came from the cache.
    """

    path: Path
    fingerprint: str
    size_bytes: int
    pack_s: float

    @property
    def archives_arg(self) -> str:
        """Value for ``--archives`` / ``spark.yarn.dist.archives``."""
        return f"{self.path}#{ENV_ALIAS}"


def _site_packages(prefix: Path) -> Path:
    return (
        prefix
        / "lib"
        / f"python{sys.version_info.major}.{sys.version_info.minor}"
        / "site-packages"
    )


def _tfyarn_dir() -> Path:
    import tfyarn

    return Path(tfyarn.__file__).resolve().parent


def _package_files(root: Path) -> list[Path]:
    """tfyarn's importable files (sources, the C extension, package data)."""
    files = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in {".o"}:
            files.append(path)
    return files


def env_fingerprint(prefix: Path | None = None) -> str:
    """A key that changes when the packed content would: distributions and tfyarn's files.

    Distributions are identified by their ``*.dist-info`` folder names (name + version);
    tfyarn by the path, size and mtime of each of its files (it is usually editable, so
    its version alone says nothing).
    """
    prefix = (prefix or Path(sys.prefix)).resolve()
    site = _site_packages(prefix)
    if not site.is_dir():
        raise ConfigError(f"{prefix} has no {site.relative_to(prefix)}: not a virtualenv to pack")
    h = hashlib.sha256()
    base = base_interpreter()
    h.update(f"{_LAYOUT}|{sys.version_info[:3]}|{prefix}|{_excludes(prefix)}".encode())
    h.update(f"{base.executable}|{base.executable.stat().st_mtime_ns}".encode())
    for d in sorted(p.name for p in site.glob("*.dist-info")):
        h.update(d.encode())
    root = _tfyarn_dir()
    for f in _package_files(root):
        st = f.stat()
        h.update(f"{f.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _excludes(prefix: Path) -> list[tuple[str, str]]:
    site = _site_packages(prefix).relative_to(prefix)
    return [
        ("exclude", f"{site}/pyspark/*"),
        ("exclude", f"{site}/pyspark-*.dist-info/*"),
        # editable-install hooks of tfyarn (and of anything else): they point at a source tree
        ("exclude", f"{site}/__editable__*"),
        ("exclude", f"{site}/*.egg-link"),
        ("exclude", f"{site}/tfyarn-*.dist-info/*"),
        ("exclude", f"{site}/tfyarn/*"),
        # Not needed to run, and each file costs the NodeManager a chmod when it unpacks
        # (37k files -> ~17k): C++ headers for building TF ops, packages' own test
        # suites, installers and the Ansible control-node tooling.
        ("exclude", f"{site}/tensorflow/include/*"),
        ("exclude", f"{site}/*/tests/*"),
        ("exclude", f"{site}/pip/*"),
        ("exclude", f"{site}/ansible/*"),
        ("exclude", f"{site}/ansible_test/*"),
        ("exclude", f"{site}/ansible_collections/*"),
        ("exclude", "bin/ruff"),  # the linter's 24 MB binary
        # links to the host's interpreter: the archive gets the interpreter itself
        *(("exclude", link) for link in VENV_LINKS),
        *_dev_tool_excludes(str(site)),
    ]


def _dev_tool_excludes(site: str) -> list[tuple[str, str]]:
    """venv-pack filters for :data:`DEV_TOOLS`: package, module and ``dist-info``."""
    out: list[tuple[str, str]] = []
    for name in DEV_TOOLS:
        out += [
            ("exclude", f"{site}/{name}/*"),  # a package
            ("exclude", f"{site}/{name}.*"),  # a module (.py, .so)
            ("exclude", f"{site}/{name}-*.dist-info/*"),
        ]
    return out


def _add_tfyarn(tar: tarfile.TarFile, prefix: Path) -> None:
    """Append tfyarn (package + minimal dist-info) to an uncompressed tar."""
    from tfyarn import __version__ as version

    site = _site_packages(prefix).relative_to(prefix)
    root = _tfyarn_dir()
    for f in _package_files(root):
        tar.add(f, arcname=f"{site}/tfyarn/{f.relative_to(root)}", recursive=False)
    metadata = f"Metadata-Version: 2.1\nName: tfyarn\nVersion: {version}\n".encode()
    info = tarfile.TarInfo(f"{site}/tfyarn-{version}.dist-info/METADATA")
    info.size = len(metadata)
    info.mtime = int(time.time())
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(metadata))


def ensure_env_archive(
    prefix: Path | None = None, cache_dir: Path | None = None, *, force: bool = False
) -> PackedEnv:
    """Return the packed archive of the environment at ``prefix``, packing it if needed.

    Parameters
    ----------
    prefix : Path, optional
        The virtualenv to pack; default the running one (``sys.prefix``).
    cache_dir : Path, optional
        Where archives are kept; default ``<tfyarn cache>/envs``.
    force : bool
        Pack again even if a cached archive matches.

    Raises
    ------
    ConfigError
        ``prefix`` is not a virtualenv (venv-pack packs venv/virtualenv environments).
    YarnError
        venv-pack is not installed or failed.
    """
    prefix = (prefix or Path(sys.prefix)).resolve()
    if not (prefix / "pyvenv.cfg").is_file():
        raise ConfigError(
            f"{prefix} is not a virtualenv (no pyvenv.cfg); run tfyarn from the venv to ship, "
            "or pass a packed archive with spark.tfyarn.yarn.envArchive"
        )
    try:
        import venv_pack
    except ImportError as exc:
        raise YarnError(
            "venv-pack is needed to pack the environment: pip install venv-pack"
        ) from exc
    fingerprint = env_fingerprint(prefix)
    cache_dir = cache_dir or (maven.cache_root() / "envs")
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"env-{fingerprint}.tar"
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file() and not force:
            return PackedEnv(target, fingerprint, target.stat().st_size, 0.0)
        started = time.monotonic()
        partial = target.with_suffix(f".partial-{os.getpid()}")
        partial.unlink(missing_ok=True)
        try:
            venv_pack.pack(
                prefix=str(prefix),
                output=str(partial),
                format="tar",
                filters=_excludes(prefix),
            )
            # One append for both: opening a 2 GB tar to append reads all its headers (~4 s).
            with tarfile.open(partial, "a") as tar:
                _add_tfyarn(tar, prefix)
                add_interpreter(tar)
        except Exception as exc:
            partial.unlink(missing_ok=True)
            raise YarnError(f"packing {prefix} failed: {exc}") from exc
        partial.replace(target)
        _prune(cache_dir, keep=target)
        return PackedEnv(
            target, fingerprint, target.stat().st_size, round(time.monotonic() - started, 1)
        )


def cluster_env_url(default_fs: str, user: str, name: str) -> str:
    """Where an archive named ``name`` lives on the cluster file system (pure)."""
    return f"{default_fs.rstrip('/')}/user/{user}/.tfyarn/envs/{name}"


def publish_env_archive(local: Path, default_fs: str, user: str | None = None) -> str:
    """Put the archive ``local`` on the cluster file system once; return its URL there.

    On a cluster with HDFS, shipping a local archive makes spark-submit upload it (GBs)
    into every application's staging dir, and every NodeManager localises it again per
    application. Uploaded once under ``/user/<user>/.tfyarn/envs/`` and world-readable,
    it is used in place and localised as a PUBLIC resource: once per NodeManager, shared
    by every later application. Archive names carry the environment's fingerprint, so
    one with the same name and size is the same archive.
    """
    from tfyarn import storage

    url = cluster_env_url(default_fs, user or storage.hdfs_user(), local.name)
    fs, path = storage.filesystem(url)
    try:
        if int(fs.info(path)["size"]) == local.stat().st_size:
            return url
    except FileNotFoundError:
        pass
    started = time.monotonic()
    storage.upload(local, url, mode=0o644)
    print(
        f"tfyarn: uploaded the Python environment to {url} in "
        f"{time.monotonic() - started:.0f} s (later submits use it in place)",
        file=sys.stderr,
    )
    return url


def _prune(cache_dir: Path, keep: Path) -> None:
    """Remove all but the newest archives (they are large)."""
    archives = sorted(cache_dir.glob("env-*.tar"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in [a for a in archives if a != keep][_KEEP - 1 :]:
        old.unlink(missing_ok=True)
