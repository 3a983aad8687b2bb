"""The parameter server's parts on their own: wire, store, snapshots, the server loop.

The server tests run a real :class:`PSServer` on a real tcp listener with real
:class:`PSClient` trainers in threads; only the source of connections is the test's
(the trainer names itself in a first frame, where a job's mesh or a service's hello would).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tfyarn import transport
from tfyarn.errors import ConfigError, FrameError, TFYarnError, TransportError
from tfyarn.exchange import kernels
from tfyarn.exchange.buckets import TensorSpec
from tfyarn.exchange.ps import (
    BucketState,
    InitOutcome,
    InitPolicy,
    OptimizerConfig,
    PSClient,
    PSServer,
    Shard,
    ShardStore,
    Snapshotter,
    latest_snapshot,
    optimizer_config,
)
from tfyarn.exchange.ps.wire import Header, InitMeta, Op
from tfyarn.transport.auth import new_job_secret
from tfyarn.transport.base import Comm, Listener

SPECS = [TensorSpec("w", (4,), "float32")]
SGD1 = optimizer_config("sgd", learning_rate=1.0)


# -- wire ------------------------------------------------------------------------------------


def test_header_round_trips_and_refuses_unknown_ops_and_short_frames() -> None:
    h = Header(Op.ELASTIC, 3, 10, 0.25)
    assert len(h.pack()) == Header.SIZE == 24
    assert Header.unpack(h.pack()) == h
    bad = bytearray(h.pack())
    bad[0] = 9
    with pytest.raises(FrameError, match=r"^unknown ps op 9$"):
        Header.unpack(bytes(bad))
    with pytest.raises(FrameError, match=r"^a ps request header has 24 bytes, got 5$"):
        Header.unpack(b"\x01" * 5)


def test_optimizer_config_is_complete_read_only_and_round_trips() -> None:
    cfg = optimizer_config("momentum", learning_rate=0.1)
    assert cfg.to_dict() == {
        "name": "momentum",
        "learning_rate": 0.1,
        "momentum": 0.9,
        "nesterov": False,
    }
    assert OptimizerConfig.from_dict(cfg.to_dict()) == cfg and cfg.slots == 1
    with pytest.raises(TypeError):
        cfg.options["momentum"] = 0.5  # type: ignore[index]
    # A snapshot or a hand-written config may omit options: the defaults fill them in.
    assert OptimizerConfig.from_dict({"name": "sgd"}) == optimizer_config("sgd")
    with pytest.raises(ConfigError, match=r"lacks option\(s\) \['learning_rate'\]"):
        OptimizerConfig("sgd", {})
    with pytest.raises(ConfigError, match="option learning_rate must be a number, got str"):
        optimizer_config("adam", learning_rate="0.1")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['beta_1', 'momentum'\]"):
        optimizer_config("sgd", momentum=0.9, beta_1=0.5)


def test_init_meta_round_trips_and_malformed_metadata_is_a_frame_error() -> None:
    meta = InitMeta("bfloat16", optimizer_config("adam"))
    assert InitMeta.decode(meta.encode()) == meta
    with pytest.raises(FrameError, match="malformed ps INIT metadata"):
        InitMeta.decode(b'{"dtype": "float32"}')
    with pytest.raises(ConfigError, match="cannot run optimizer 'rmsprop'"):
        InitMeta.decode(b'{"dtype": "float32", "optimizer": {"name": "rmsprop"}}')


# -- store -----------------------------------------------------------------------------------


def test_replace_stores_every_init_and_keep_keeps_the_held_bucket() -> None:
    stored: list[int] = []
    replace = ShardStore("parameter server ps:0", InitPolicy.REPLACE, on_stored=stored.append)
    assert replace.init(0, np.zeros(4, np.float32), SGD1) is InitOutcome.STORED
    assert replace.init(0, np.ones(4, np.float32), SGD1) is InitOutcome.STORED
    np.testing.assert_array_equal(replace.shards()[0].values, np.ones(4, np.float32))
    assert stored == [0, 0]

    stored.clear()
    keep = ShardStore(
        "ps-0", InitPolicy.KEEP, mismatch_hint="attach that model", on_stored=stored.append
    )
    assert keep.init(0, np.zeros(4, np.float32), SGD1) is InitOutcome.STORED
    keep.shards()[0].push_gradient(-np.ones(4, np.float32))
    assert keep.init(0, np.full(4, 9.0, np.float32), SGD1) is InitOutcome.KEPT
    np.testing.assert_array_equal(keep.shards()[0].values, np.ones(4, np.float32))
    assert stored == [0] and keep.updates() == {0: 1}
    with pytest.raises(ConfigError) as err:
        keep.init(0, np.zeros(5, np.float64), SGD1)
    assert str(err.value) == (
        "ps-0 holds bucket 0 with 4 float32 values, this job's model has 5 float64: "
        "attach that model"
    )
    with pytest.raises(TransportError, match=r"^bucket 7 was never initialised by rank 0$"):
        keep.wait_for(7, timeout=0.05, check=lambda: None)


def test_bucket_state_must_match_its_optimizer_and_values() -> None:
    v = np.zeros(3, np.float32)
    with pytest.raises(
        ConfigError, match=r"optimizer adam keeps 2 slot\(s\) per bucket, this state has 1"
    ):
        BucketState(v, [v.copy()], 0, 0, optimizer_config("adam"))
    with pytest.raises(ConfigError, match="does not match the values"):
        BucketState(v, [np.zeros(3, np.float64)], 0, 0, optimizer_config("adagrad"))


def test_snapshotter_saves_when_counters_move_and_restores_a_store(tmp_path: Path) -> None:
    store = ShardStore("ps-0", InitPolicy.KEEP)
    snaps = Snapshotter(store, tmp_path, keep=2, name="ps-0")
    assert snaps.restore() is None and snaps.save() is None  # empty: nothing to write
    store.init(0, kernels.empty(8, np.float32), optimizer_config("adam", learning_rate=0.1))
    store.shards()[0].values[:] = 1.0
    rng = np.random.default_rng(0)
    for _ in range(3):
        store.shards()[0].push_gradient(rng.standard_normal(8).astype(np.float32))
    first = snaps.save()
    assert first is not None and Path(first).name == "snapshot-00000001.npz"
    assert snaps.save() is None  # no update since
    store.shards()[0].add(np.ones(8, np.float32))
    assert snaps.close() is not None  # the last one, on close
    expected = store.shards()[0].state()

    again = ShardStore("ps-0", InitPolicy.KEEP)
    restored = Snapshotter(again, tmp_path, keep=2, name="ps-0").restore()
    assert restored is not None and restored.seq == 2 and restored.updates == {0: 4}
    got = again.shards()[0].state()
    np.testing.assert_array_equal(got.values, expected.values)
    for a, b in zip(got.slots, expected.slots, strict=True):
        np.testing.assert_array_equal(a, b)
    assert (got.step, got.updates, got.optimizer) == (3, 4, expected.optimizer)
    # The restored shard continues exactly as the original would have.
    g = rng.standard_normal(8).astype(np.float32)
    reference = Shard.from_state(expected)
    reference.apply(g.copy())
    again.shards()[0].apply(g.copy())
    np.testing.assert_array_equal(again.shards()[0].values, reference.values)
    snap, problems = latest_snapshot(tmp_path)
    assert snap is not None and snap.seq == 2 and problems == []
    with pytest.raises(ConfigError, match="keep at least 1 snapshot, not 0"):
        Snapshotter(again, tmp_path, keep=0, name="ps-0")


# -- the server loop on a real listener ------------------------------------------------------


class NamedConnections:
    """A test source: connections on a real listener, named by their first frame."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener

    def next(self, timeout: float) -> tuple[str, Comm] | None:
        try:
            comm = self.listener.accept(timeout=timeout)
        except TFYarnError:
            return None
        return bytes(comm.recv()).decode(), comm


class Running:
    """A PSServer serving on a thread; ``error`` is what serve() raised, if anything."""

    def __init__(self, server: PSServer, address: str, secret: bytes) -> None:
        self.server, self.address, self.secret = server, address, secret
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.server.serve()
        except BaseException as exc:
            self.error = exc

    def client(self, trainer: str) -> PSClient:
        def connect(ps: str) -> Comm:
            comm = transport.connect(self.address, secret=self.secret)
            comm.send(trainer.encode())
            return comm

        return PSClient(connect, ["ps"], SPECS)


@pytest.fixture
def serving(request: pytest.FixtureRequest) -> Iterator[Running]:
    trainers, synchronous = request.param
    secret = new_job_secret()
    listener = transport.listen("tcp://127.0.0.1:0", secret=secret)
    store = ShardStore("parameter server ps", InitPolicy.REPLACE)
    server = PSServer(
        store,
        NamedConnections(listener),
        name="ps",
        timeout=20.0,
        trainers=trainers,
        synchronous=synchronous,
    )
    running = Running(server, listener.address, secret)
    try:
        yield running
    finally:
        server.stop()
        running.thread.join(timeout=20)
        listener.close()
    assert not running.thread.is_alive()


def _in_threads(*calls: object) -> list[object]:
    results: list[object] = [None] * len(calls)

    def run(i: int, fn: object) -> None:
        try:
            results[i] = fn()  # type: ignore[operator]
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return results


@pytest.mark.parametrize("serving", [(["w0", "w1"], True)], indirect=True)
def test_a_synchronous_round_applies_the_mean_once_and_ends_after_every_goodbye(
    serving: Running,
) -> None:
    w0, w1 = serving.client("w0"), serving.client("w1")
    assert w0.init([np.zeros(4, np.float32)], SGD1) is True
    got = _in_threads(
        lambda: w0.push_gradients([-np.ones(4, np.float32)]),
        lambda: w1.push_gradients([np.full(4, -3.0, np.float32)]),
    )
    for values in got:  # lr 1, mean gradient -2: both see the same single update
        np.testing.assert_array_equal(values[0], np.full(4, 2.0, np.float32))  # type: ignore[index]
    assert serving.server.store.updates() == {0: 2}
    w0.close()
    assert serving.thread.is_alive()  # w1 has not said goodbye yet
    w1.close()
    serving.thread.join(timeout=10)
    assert not serving.thread.is_alive() and serving.error is None


@pytest.mark.parametrize("serving", [(["w0", "w1"], True)], indirect=True)
def test_a_trainer_lost_without_goodbye_breaks_the_job_server(serving: Running) -> None:
    w0 = serving.client("w0")
    w0.init([np.zeros(4, np.float32)], SGD1)
    w1 = serving.client("w1")
    (waiting,) = _in_threads(
        lambda: (w1.comms["ps"].close(), w0.push_gradients([-np.ones(4, np.float32)]))
    )
    assert isinstance(waiting, TransportError)  # the round's wait failed instead of hanging
    serving.thread.join(timeout=10)
    assert isinstance(serving.error, TransportError)
    assert str(serving.error).startswith(
        "parameter server ps: trainer w1 failed or disconnected without goodbye ("
    )
    w0.close()


@pytest.mark.parametrize("serving", [(["w0"], False)], indirect=True)
def test_a_trainer_that_never_connects_fails_the_server_after_its_timeout(
    serving: Running,
) -> None:
    serving.server.timeout = 0.3
    serving.thread.join(timeout=10)
    assert isinstance(serving.error, TransportError)
    assert str(serving.error) == "parameter server ps: trainer(s) w0 never connected"


def test_synchronous_rounds_need_a_fixed_set_of_trainers() -> None:
    store = ShardStore("ps", InitPolicy.KEEP)
    source = NamedConnections(transport.listen("tcp://127.0.0.1:0", secret=new_job_secret()))
    try:
        with pytest.raises(ConfigError, match="synchronous rounds need a fixed set of trainers"):
            PSServer(store, source, name="ps", synchronous=True)
        with pytest.raises(ConfigError, match="was given no trainers"):
            PSServer(store, source, name="ps", trainers=[])
    finally:
        source.listener.close()
