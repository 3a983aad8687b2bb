"""Files on the cluster file system: local paths, ``file://`` and ``hdfs://`` URLs.

tfyarn writes checkpoints, parameter-server snapshots and the shipped Python environment
to wherever the job's paths point: a local folder on a one-host cluster, HDFS on a real
one. Every such access goes through this module, on top of fsspec's file systems.

``hdfs://`` goes over **WebHDFS** (fsspec's ``WebHDFS``, plain HTTP to the NameNode and
DataNodes) and not over ``pyarrow.fs.HadoopFileSystem``: pyarrow needs ``libhdfs.so`` and
a JVM with Hadoop's jars inside every Python process; libhdfs is not published on Maven
Central (only in Hadoop's binary tarball, absent from most NodeManagers' Python
environments), and TensorFlow 2.21 has no ``hdfs://`` file system of its own (it moved to
tensorflow-io, which is not built for it). WebHDFS is on by default on every Hadoop 3
NameNode, needs nothing but ``requests``, and speaks Kerberos through requests-kerberos.

Where the NameNode's web address comes from, for ``hdfs://AUTHORITY/path``:

1. ``$TFYARN_WEBHDFS``: JSON ``{"AUTHORITY": "http://host:port", ...}``; the driver puts
   what it resolved there for every role (see :func:`endpoints_env`);
2. the Hadoop configuration (Spark's on the driver, then ``$HADOOP_CONF_DIR``, then the
   copy Spark ships into each YARN container): ``dfs.namenode.http-address`` when
   ``dfs.namenode.rpc-address`` (or ``fs.defaultFS``) names AUTHORITY;
3. Hadoop 3's default, port 9870 on AUTHORITY's host.

High availability (a nameservice with several NameNodes) is not resolved here: name the
active NameNode's RPC address, or list its web address in ``$TFYARN_WEBHDFS``.
"""

from __future__ import annotations

import contextlib
import getpass
import io
import json
import logging
import os
import posixpath
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from tfyarn.errors import ConfigError

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem
    from fsspec.implementations.webhdfs import WebHDFS

__all__ = [
    "WEBHDFS_ENV",
    "HadoopConf",
    "conf_dir_lookup",
    "endpoints_env",
    "exists",
    "filesystem",
    "hdfs_user",
    "is_local",
    "is_public",
    "join",
    "list_names",
    "makedirs",
    "read_bytes",
    "read_npz_source",
    "remove",
    "upload",
    "webhdfs",
    "webhdfs_url_for",
    "write_bytes_atomically",
]

log = logging.getLogger("tfyarn.storage")

#: Environment variable carrying ``{hdfs authority: NameNode web URL}`` as JSON.
WEBHDFS_ENV = "TFYARN_WEBHDFS"

#: Hadoop 3's default NameNode web port (dfs.namenode.http-address).
_DEFAULT_HTTP_PORT = 9870

#: Where Spark on YARN puts the client's Hadoop configuration in each container's folder.
_SPARK_SHIPPED_CONF = "__spark_conf__/__hadoop_conf__"

#: Chunk of one WebHDFS write request: few APPEND calls for big files, bounded memory.
_UPLOAD_CHUNK = 64 * 2**20


def is_local(url: str | os.PathLike[str]) -> bool:
    """Whether ``url`` is a local path (no scheme, or ``file://``)."""
    text = os.fspath(url)
    scheme = urlsplit(text).scheme
    return scheme in ("", "file")


def join(base: str | os.PathLike[str], *parts: str) -> str:
    """``base`` joined with ``parts`` by ``/``, keeping a URL's scheme and authority."""
    text = os.fspath(base)
    if is_local(text) and not text.startswith("file:"):
        return os.path.join(text, *parts)
    return posixpath.join(text, *parts)


def hdfs_user() -> str:
    """The user HDFS sees (simple authentication): as Hadoop's own client decides it.

    ``$HADOOP_USER_NAME``, else ``$SPARK_USER`` (what Spark sets in YARN containers),
    else the process's user.
    """
    return os.environ.get("HADOOP_USER_NAME") or os.environ.get("SPARK_USER") or getpass.getuser()


def webhdfs(base_url: str, user: str | None = None) -> WebHDFS:
    """A WebHDFS file system on the NameNode web app at ``base_url`` (``http://host:port``)."""
    from fsspec.implementations.webhdfs import WebHDFS

    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"WebHDFS address {base_url!r} is not an http(s)://host:port URL of a NameNode"
        )
    return WebHDFS(
        parts.hostname,
        port=parts.port or _DEFAULT_HTTP_PORT,
        user=user or hdfs_user(),
        use_https=parts.scheme == "https",
        # The file system object is cached per arguments by fsspec; a fresh one per
        # process is what a forked role needs (requests sessions are not fork-safe).
        skip_instance_cache=True,
    )


def _endpoints_from_env(env: Mapping[str, str]) -> dict[str, str]:
    raw = env.get(WEBHDFS_ENV, "").strip()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(
            f'${WEBHDFS_ENV} is not JSON ({exc}); give {{"namenode:8020": "http://namenode:9870"}}'
        ) from None
    if not isinstance(value, dict):
        raise ConfigError(f"${WEBHDFS_ENV} must be a JSON object of authority -> URL")
    return {str(k): str(v) for k, v in value.items()}


#: Reads one Hadoop property (``None`` when unset): from ``*-site.xml`` files, or from
#: Spark's Hadoop configuration on the driver (see :func:`conf_dir_lookup`).
HadoopConf = Callable[[str], "str | None"]


def conf_dir_lookup(env: Mapping[str, str]) -> HadoopConf | None:
    """A :data:`HadoopConf` over ``$HADOOP_CONF_DIR``'s core-site and hdfs-site, if set."""
    from tfyarn.yarn.hadoop_conf import site_property

    conf = env.get("HADOOP_CONF_DIR") or env.get("YARN_CONF_DIR")
    if not conf and Path(_SPARK_SHIPPED_CONF).is_dir():
        conf = _SPARK_SHIPPED_CONF  # inside a YARN container that Spark launched
    if not conf:
        return None
    conf_dir = Path(conf)

    def lookup(name: str) -> str | None:
        for file in ("hdfs-site.xml", "core-site.xml"):
            value = site_property(conf_dir, name, file)
            if value is not None:
                return value
        return None

    return lookup


def _endpoint_from_conf(authority: str, conf: HadoopConf) -> str | None:
    rpc = conf("dfs.namenode.rpc-address") or ""
    default_fs = conf("fs.defaultFS") or ""
    names = {rpc, urlsplit(default_fs).netloc} - {""}
    if authority not in names:
        return None
    http = conf("dfs.namenode.http-address")
    if not http:
        return None
    host, _, port = http.rpartition(":")
    if host in ("0.0.0.0", ""):
        host = authority.rpartition(":")[0] or authority
    return f"http://{host}:{port}"


def webhdfs_url_for(
    authority: str, env: Mapping[str, str] | None = None, conf: HadoopConf | None = None
) -> str:
    """The NameNode web URL serving ``hdfs://authority`` (see the module's docstring).

    ``conf`` reads the Hadoop configuration; ``$HADOOP_CONF_DIR`` of ``env`` comes next.
    """
    env = os.environ if env is None else env
    known = _endpoints_from_env(env)
    if authority in known:
        return known[authority]
    for lookup in (conf, conf_dir_lookup(env)):
        found = _endpoint_from_conf(authority, lookup) if lookup is not None else None
        if found:
            return found
    host = authority.rpartition(":")[0] if ":" in authority else authority
    if not host:
        raise ConfigError(
            "an hdfs:// URL without a NameNode (hdfs:///path) needs fs.defaultFS from "
            "HADOOP_CONF_DIR; write hdfs://namenode:8020/path instead"
        )
    return f"http://{host}:{_DEFAULT_HTTP_PORT}"


def endpoints_env(
    urls: Sequence[str], env: Mapping[str, str] | None = None, conf: HadoopConf | None = None
) -> dict[str, str]:
    """``{WEBHDFS_ENV: json}`` resolving the NameNodes of ``urls`` here, for other processes.

    The driver calls it with the job's paths so that every role, which may not have the
    cluster's Hadoop configuration, reaches the same NameNodes. Empty without hdfs URLs.
    """
    mapping: dict[str, str] = {}
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme == "hdfs" and parts.netloc:
            mapping[parts.netloc] = webhdfs_url_for(parts.netloc, env, conf)
    return {WEBHDFS_ENV: json.dumps(mapping, sort_keys=True)} if mapping else {}


def filesystem(
    url: str | os.PathLike[str], env: Mapping[str, str] | None = None
) -> tuple[AbstractFileSystem, str]:
    """The file system holding ``url`` and the path on it.

    ``env`` is where ``$TFYARN_WEBHDFS`` and ``$HADOOP_CONF_DIR`` are looked up
    (default: this process's environment).

    Raises
    ------
    ConfigError
        A scheme tfyarn cannot reach (only local paths, ``file://`` and ``hdfs://``).
    """
    text = os.fspath(url)
    parts = urlsplit(text)
    if parts.scheme in ("", "file"):
        from fsspec.implementations.local import LocalFileSystem

        path = parts.path if parts.scheme == "file" else text
        return LocalFileSystem(), path
    if parts.scheme == "hdfs":
        return webhdfs(webhdfs_url_for(parts.netloc, env)), parts.path or "/"
    raise ConfigError(
        f"{text}: tfyarn reads and writes local paths, file:// and hdfs:// URLs, not "
        f"{parts.scheme}://; put the job's files on the cluster file system"
    )


def exists(url: str) -> bool:
    """Whether ``url`` names an existing file or folder."""
    fs, path = filesystem(url)
    return bool(fs.exists(path))


def is_public(url: str) -> bool:
    """Whether YARN may localise ``url`` as a PUBLIC resource (shared by every application).

    The NodeManager's rule (``FSDownload.isPublic``): the file is readable by others and
    every folder above it is searchable (``o+x``) by others.
    """
    fs, path = filesystem(url)
    if not fs.exists(path):
        return False
    parts = path.rstrip("/").split("/")
    folders = ["/".join(parts[:i]) or "/" for i in range(1, len(parts))]
    if _mode(fs, path) & 0o004 == 0:
        return False
    return all(_mode(fs, folder) & 0o001 for folder in folders)


def _mode(fs: AbstractFileSystem, path: str) -> int:
    """The permission bits of ``path`` (WebHDFS gives them as an octal string)."""
    info = fs.info(path)
    if "permission" in info:
        return int(str(info["permission"]), 8)
    return int(info["mode"]) & 0o7777


def makedirs(url: str) -> None:
    """Create the folder ``url`` and its parents (no error if it exists)."""
    fs, path = filesystem(url)
    fs.makedirs(path, exist_ok=True)


def list_names(folder: str) -> list[str]:
    """The names of the entries of ``folder``, sorted; empty if it cannot be listed."""
    fs, path = filesystem(folder)
    try:
        entries = fs.ls(path, detail=False)
    except (OSError, RuntimeError, ValueError):
        return []
    return sorted(posixpath.basename(str(e).rstrip("/")) for e in entries)


def read_bytes(url: str) -> bytes:
    """The whole content of the file ``url``."""
    fs, path = filesystem(url)
    return bytes(fs.cat_file(path))


def remove(url: str) -> None:
    """Delete the file ``url``; no error if it is gone already."""
    fs, path = filesystem(url)
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(path)


def write_bytes_atomically(url: str, data: bytes) -> str:
    """Write ``data`` to ``url`` so that a reader sees the whole file or none; return ``url``.

    The bytes go to a temporary name in the same folder (named after this process, so
    two writers never share one), are made durable (fsync locally; a closed HDFS file is
    on its DataNodes) and renamed over ``url``: a rename is atomic on a POSIX file system
    and on the NameNode alike.
    """
    fs, path = filesystem(url)
    if is_local(url):
        folder, name = os.path.split(path)
        os.makedirs(folder or ".", exist_ok=True)
        tmp = os.path.join(folder, f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return url
    _write_remote(fs, path, lambda f: f.write(data))
    return url


def _write_remote(
    fs: AbstractFileSystem, path: str, fill: Callable[[Any], object], mode: int | None = None
) -> None:
    """Write ``path`` on a remote file system atomically: a temporary name, then a rename.

    ``fill`` writes the content into the open file; ``mode`` sets its permissions before
    the rename. The temporary file is removed if anything fails.
    """
    folder, name = posixpath.split(path)
    tmp = posixpath.join(folder, f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    fs.makedirs(folder, exist_ok=True)
    try:
        with fs.open(tmp, "wb", block_size=_UPLOAD_CHUNK) as f:
            fill(f)
        if mode is not None:
            fs.chmod(tmp, f"{mode:o}")
        _rename(fs, tmp, path)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm_file(tmp)
        raise


def _rename(fs: AbstractFileSystem, src: str, dst: str) -> None:
    # HDFS's RENAME does not replace an existing file and answers "false" instead of an
    # error, which fsspec does not check: remove the old one first, then verify.
    if fs.exists(dst):
        fs.rm_file(dst)
    fs.mv(src, dst)
    if fs.exists(src) or not fs.exists(dst):
        raise OSError(f"renaming {src} to {dst} on HDFS did not take effect")


def upload(local: str | os.PathLike[str], url: str, *, mode: int = 0o644) -> str:
    """Copy the local file ``local`` to ``url`` atomically, readable by ``mode``; return ``url``.

    Used for the Python environment archive (GBs): streamed in chunks of
    :data:`_UPLOAD_CHUNK`, never held in memory.
    """
    fs, path = filesystem(url)
    if is_local(url):
        folder = os.path.dirname(path)
        os.makedirs(folder or ".", exist_ok=True)
        tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
        shutil.copyfile(local, tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        return url
    with open(local, "rb") as src:
        _write_remote(fs, path, lambda dst: shutil.copyfileobj(src, dst, _UPLOAD_CHUNK), mode)
    return url


def read_npz_source(url: str) -> io.BytesIO | str:
    """What ``numpy.load`` reads ``url`` from: the path itself, or its bytes if remote."""
    return url if is_local(url) else io.BytesIO(read_bytes(url))
