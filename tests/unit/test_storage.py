"""tfyarn.storage: paths and URLs, WebHDFS endpoint resolution, atomic local writes.

The hdfs:// side against a real NameNode and DataNode is in tests/yarn/test_hdfs.py.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tfyarn import storage
from tfyarn.errors import ConfigError
from tfyarn.yarn.hadoop_conf import render_site_xml


def _conf(tmp_path: Path, rpc: str, http: str, default_fs: str = "") -> dict[str, str]:
    (tmp_path / "hdfs-site.xml").write_text(
        render_site_xml({"dfs.namenode.rpc-address": rpc, "dfs.namenode.http-address": http})
    )
    (tmp_path / "core-site.xml").write_text(render_site_xml({"fs.defaultFS": default_fs}))
    return {"HADOOP_CONF_DIR": str(tmp_path)}


def test_local_paths_and_urls_are_told_apart_and_joined_keeping_the_scheme() -> None:
    assert storage.is_local("/a/b") and storage.is_local("rel/x") and storage.is_local("file:///a")
    assert not storage.is_local("hdfs://nn:8020/a")
    assert storage.join("hdfs://nn:8020/user/me", "ckpt", "x.npz") == (
        "hdfs://nn:8020/user/me/ckpt/x.npz"
    )
    assert storage.join("/tmp/a", "b") == os.path.join("/tmp/a", "b")


def test_the_namenode_web_address_comes_from_the_env_then_the_conf_then_the_default(
    tmp_path: Path,
) -> None:
    env = _conf(tmp_path, "nn.example:8020", "nn.example:50070")
    assert storage.webhdfs_url_for("nn.example:8020", env) == "http://nn.example:50070"
    # A wildcard bind address is replaced by the NameNode's own host.
    env = _conf(tmp_path, "nn.example:8020", "0.0.0.0:9870")
    assert storage.webhdfs_url_for("nn.example:8020", env) == "http://nn.example:9870"
    # Found through fs.defaultFS when the rpc address is not set under that name.
    env = _conf(tmp_path, "", "nn2:9871", default_fs="hdfs://nn2:9000")
    assert storage.webhdfs_url_for("nn2:9000", env) == "http://nn2:9871"
    # Another NameNode than the configured one: Hadoop 3's default web port.
    assert storage.webhdfs_url_for("other:8020", env) == "http://other:9870"
    # What the driver resolved wins over everything.
    env[storage.WEBHDFS_ENV] = json.dumps({"other:8020": "http://10.0.0.9:1234"})
    assert storage.webhdfs_url_for("other:8020", env) == "http://10.0.0.9:1234"


def test_the_driver_hands_its_resolution_to_the_roles(tmp_path: Path) -> None:
    env = _conf(tmp_path, "nn:8020", "nn:9870")
    out = storage.endpoints_env(["hdfs://nn:8020/user/me/model", "/local/x"], env)
    assert json.loads(out[storage.WEBHDFS_ENV]) == {"nn:8020": "http://nn:9870"}
    assert storage.endpoints_env(["/local/only", "file:///x"], env) == {}


def test_bad_addresses_and_schemes_are_refused_with_what_to_do() -> None:
    with pytest.raises(ConfigError, match="not JSON"):
        storage.webhdfs_url_for("nn:8020", {storage.WEBHDFS_ENV: "{nope"})
    with pytest.raises(ConfigError, match=r"hdfs:///path\) needs fs.defaultFS"):
        storage.webhdfs_url_for("", {})
    with pytest.raises(ConfigError, match="not s3://"):
        storage.filesystem("s3://bucket/key")
    with pytest.raises(ConfigError, match="not an http"):
        storage.webhdfs("nn:9870")


def test_local_atomic_writes_leave_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.bin"
    storage.write_bytes_atomically(str(target), b"one")
    storage.write_bytes_atomically(str(target), b"two")
    assert target.read_bytes() == b"two"
    assert storage.list_names(str(tmp_path / "sub")) == ["f.bin"]
    assert storage.read_bytes(f"file://{target}") == b"two"
    copy = tmp_path / "copy" / "g.bin"
    storage.upload(target, str(copy), mode=0o640)
    assert copy.read_bytes() == b"two" and (copy.stat().st_mode & 0o777) == 0o640
    storage.remove(str(copy))
    storage.remove(str(copy))  # gone already: no error
    assert not storage.exists(str(copy))
    assert storage.list_names(str(tmp_path / "missing")) == []


def test_the_default_model_dir_is_on_the_cluster_file_system_when_there_is_one() -> None:
    from tfyarn.cluster.cluster_fs import default_model_dir

    assert default_model_dir("j1", "hdfs://nn:8020", "alice", "/tmp") == (
        "hdfs://nn:8020/user/alice/tfyarn/j1"
    )
    assert default_model_dir("j1", "hdfs://nn:8020/", "alice", "/tmp") == (
        "hdfs://nn:8020/user/alice/tfyarn/j1"
    )
    for local in ("file:///", None, ""):
        assert default_model_dir("j1", local, "alice", "/tmp") == "/tmp/tfyarn-model-j1"


def test_tf_native_checkpoints_refuse_hdfs_with_the_reason() -> None:
    from tfyarn.exchange.checkpoint import CheckpointPolicy
    from tfyarn.node.tf_checkpoint import checkpoint_manager

    policy = CheckpointPolicy("hdfs://nn:8020/user/me/ckpt", every_steps=5)
    with pytest.raises(ConfigError, match=r"TensorFlow 2\.21 cannot write hdfs://"):
        checkpoint_manager(object(), policy, attempt=1, is_writer=True, temp_dir="/tmp/x")


def test_inside_a_yarn_container_the_conf_spark_shipped_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = tmp_path / "__spark_conf__" / "__hadoop_conf__"
    shipped.mkdir(parents=True)
    _conf(shipped, "nn:8020", "nn:50070")
    monkeypatch.chdir(tmp_path)
    assert storage.webhdfs_url_for("nn:8020", {}) == "http://nn:50070"


def test_input_files_are_read_by_path_or_url_in_every_format(tmp_path: Path) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from tfyarn.node.feed import read_files

    table = pa.table({"x": np.arange(5.0), "y": np.arange(5)})
    pq.write_table(table, tmp_path / "a.parquet")
    pacsv.write_csv(table, tmp_path / "b.csv")
    with (
        pa.OSFile(str(tmp_path / "c.arrow"), "wb") as sink,
        pa.ipc.new_file(sink, table.schema) as writer,
    ):
        writer.write_table(table)
    files = [f"file://{tmp_path}/a.parquet", str(tmp_path / "b.csv"), f"{tmp_path}/c.arrow"]
    batches = list(read_files(files, env={}))
    x = np.concatenate([b.column("x").to_numpy().astype(float) for b in batches])
    np.testing.assert_array_equal(x, np.tile(np.arange(5.0), 3))
    with pytest.raises(ConfigError, match=r"tfyarn reads \.parquet"):
        list(read_files([str(tmp_path / "d.tfrecord")]))


def test_public_means_readable_by_all_under_folders_all_may_search() -> None:
    """YARN's rule for the PUBLIC cache, checked before a service asks for it."""
    # Not under tmp_path: pytest's base folder is private to the user (0700).
    top = Path(tempfile.mkdtemp(prefix="tfyarn-public-"))
    try:
        (top / "envs").mkdir()
        archive = top / "envs" / "env.tar"
        archive.write_bytes(b"x")
        top.chmod(0o755)
        (top / "envs").chmod(0o755)
        archive.chmod(0o644)
        assert storage.is_public(f"file://{archive}")
        archive.chmod(0o640)
        assert not storage.is_public(str(archive))
        archive.chmod(0o644)
        (top / "envs").chmod(0o750)
        assert not storage.is_public(str(archive))
        assert not storage.is_public(str(top / "missing.tar"))
    finally:
        shutil.rmtree(top)
