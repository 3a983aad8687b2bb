"""tfyarn's files on the dev YARN's real HDFS, checked against Hadoop's own client.

tfyarn reaches HDFS over WebHDFS (tfyarn.storage); Hadoop's FsShell (``hadoop fs``, RPC to
the NameNode, block transfer from the DataNode) is the reference that reads back what
tfyarn wrote and writes what tfyarn must read; a job on the dev YARN reads its
InputMode.FILES input from HDFS. The default model_dir, checkpoints and the environment
archive on HDFS during a restart are in test_restarts_yarn.py.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest

from tfyarn import storage
from tfyarn.exchange.checkpoint import (
    Checkpoint,
    checkpoint_files,
    read_checkpoint,
    resume_point,
    write_checkpoint,
)

from .conftest import ClientApp, DevYarnFixture


@pytest.fixture(autouse=True)
def _cluster_conf(dev_yarn: DevYarnFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """This process finds the NameNode as a user's would: through HADOOP_CONF_DIR."""
    monkeypatch.setenv("HADOOP_CONF_DIR", str(dev_yarn.state.conf_dir))
    monkeypatch.delenv(storage.WEBHDFS_ENV, raising=False)


def _folder(dev_yarn: DevYarnFixture) -> str:
    return f"{dev_yarn.state.default_fs}/tmp/tfyarn-test-{uuid.uuid4().hex[:8]}"


def _names(dev_yarn: DevYarnFixture, url: str) -> list[str]:
    """The entries of ``url`` as ``hadoop fs -ls`` lists them."""
    out = dev_yarn.hdfs("-ls", "-C", url).stdout
    return sorted(line.rstrip("/").rsplit("/", 1)[-1] for line in out.split())


def test_bytes_round_trip_between_webhdfs_and_hadoops_client(
    dev_yarn: DevYarnFixture, tmp_path: Path
) -> None:
    folder = _folder(dev_yarn)
    data = np.random.default_rng(7).bytes(3 * 2**20 + 17)  # several WebHDFS chunks' worth
    ours = storage.join(folder, "ours.bin")
    storage.write_bytes_atomically(ours, b"an older version")
    storage.write_bytes_atomically(ours, data)  # replaces it: HDFS's rename does not
    dev_yarn.hdfs("-get", ours, str(tmp_path / "got.bin"))
    assert (tmp_path / "got.bin").read_bytes() == data

    (tmp_path / "theirs.bin").write_bytes(data[::-1])
    theirs = storage.join(folder, "theirs.bin")
    dev_yarn.hdfs("-put", str(tmp_path / "theirs.bin"), theirs)
    assert storage.read_bytes(theirs) == data[::-1]
    # No temporary file is left, and both sides list the same entries.
    assert storage.list_names(folder) == _names(dev_yarn, folder) == ["ours.bin", "theirs.bin"]
    storage.remove(theirs)
    assert not storage.exists(theirs)
    assert dev_yarn.hdfs("-test", "-e", theirs, check=False).returncode != 0


def _ckpt(step: int, attempt: int = 1) -> Checkpoint:
    rng = np.random.default_rng(step)
    return Checkpoint(
        epoch=step // 10,
        step=step % 10,
        global_step=step,
        attempt=attempt,
        weights=[rng.standard_normal((4, 3)).astype(np.float32), np.arange(3, dtype=np.int64)],
        optimizer=[rng.standard_normal(12).astype(np.float32)],
    )


def test_checkpoints_on_hdfs_are_atomic_pruned_and_a_torn_one_is_skipped(
    dev_yarn: DevYarnFixture, tmp_path: Path
) -> None:
    folder = _folder(dev_yarn)
    for step in (8, 16, 24):
        write_checkpoint(folder, _ckpt(step), keep=2)
    expected = ["ckpt-000000000016.npz", "ckpt-000000000024.npz"]
    assert [p.rsplit("/", 1)[-1] for p in checkpoint_files(folder)] == expected
    assert _names(dev_yarn, folder) == expected
    # What tfyarn reads over WebHDFS is what Hadoop's client fetched, array for array.
    dev_yarn.hdfs("-get", storage.join(folder, expected[-1]), str(tmp_path / "c.npz"))
    local, remote = (
        read_checkpoint(tmp_path / "c.npz"),
        read_checkpoint(checkpoint_files(folder)[-1]),
    )
    for a, b in zip(
        local.weights + local.optimizer, remote.weights + remote.optimizer, strict=True
    ):
        np.testing.assert_array_equal(a, b)
    want = _ckpt(24)
    np.testing.assert_array_equal(remote.weights[0], want.weights[0])
    # A newer file cut short (a writer killed before the rename would leave only its
    # temporary; this is a worse case) is skipped in favour of the newest whole one.
    torn = tmp_path / "ckpt-000000000032.npz"
    torn.write_bytes((tmp_path / "c.npz").read_bytes()[:500])
    dev_yarn.hdfs("-put", str(torn), storage.join(folder, torn.name))
    found, problems = resume_point(folder, attempt=2)
    assert found is not None and found.global_step == 24
    assert len(problems) == 1 and problems[0].startswith("ckpt-000000000032.npz"), problems


def test_input_files_on_hdfs_feed_each_trainer_its_share(
    dev_yarn: DevYarnFixture, client_app: ClientApp
) -> None:
    """InputMode.FILES with hdfs:// Parquet files, in the session's yarn-client job."""
    assert client_app.returncode == 0, client_app.output[-6000:]
    parts, urls, out = client_app.parts, client_app.urls, client_app.files_out
    for rank, task in enumerate(("worker-0", "worker-1")):
        seen = json.loads((out / f"{task}.json").read_text())
        mine = parts[rank::2]  # round robin, as feed.shard_files deals them
        assert seen["files"] == urls[rank::2]
        assert seen["rows"] == sum(len(x) for x in mine)
        assert abs(seen["total"] - float(np.concatenate(mine).sum())) < 1e-9
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "succeeded", result
    assert result["model_dir"].startswith(f"{dev_yarn.state.default_fs}/user/")
