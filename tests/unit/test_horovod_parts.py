"""The pure parts of ``tfyarn.horovod`` (issue 14): topology, argument checks, the
launcher's mapping, and the NumPy collectives between ranks in one process.

The collectives run on real rings over tcp listeners on 127.0.0.1
(``run_local(..., threads=True)``); the Keras parts on one rank of such a job. The
programs themselves run on Spark in ``tests/compat/test_horovod.py``.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tfyarn.horovod.keras as hvd_keras
import tfyarn.horovod.tensorflow as hvd_tf
from tfyarn import horovod
from tfyarn.errors import ConfigError
from tfyarn.exchange.local import LocalContext, run_local
from tfyarn.horovod._array_collectives import (
    allgather_array,
    allgather_object_on,
    broadcast_object_on,
    join_on,
    reduce_array,
    reducescatter_array,
    split_sizes,
)
from tfyarn.horovod._gradients import gradient_reduction
from tfyarn.horovod._reduce_ops import ReduceOp, resolve_op
from tfyarn.horovod._state import bind_context
from tfyarn.horovod._topology import Topology, topology
from tfyarn.horovod.spark import run_options

OPTIONS = {"timeout": 60.0}


# -- topology ----------------------------------------------------------------------------


def test_topology_of_two_hosts_with_two_ranks_each() -> None:
    hosts = ["a", "b", "a", "b"]
    assert [topology(hosts, r) for r in range(4)] == [
        Topology(0, 4, 0, 2, 0, 2),
        Topology(1, 4, 0, 2, 1, 2),
        Topology(2, 4, 1, 2, 0, 2),
        Topology(3, 4, 1, 2, 1, 2),
    ]


def test_topology_of_uneven_hosts_follows_horovods_cross_groups() -> None:
    hosts = ["a", "a", "a", "b"]
    # local ranks 0,1,2 on a and 0 on b; the cross group of local rank 0 is ranks 0 and 3
    assert topology(hosts, 3) == Topology(3, 4, 0, 1, 1, 2)
    assert topology(hosts, 2) == Topology(2, 4, 2, 3, 0, 1)
    with pytest.raises(ConfigError, match="rank 4"):
        topology(hosts, 4)


# -- argument checks ---------------------------------------------------------------------


def test_ops_resolve_like_horovods() -> None:
    assert resolve_op(None) is ReduceOp.AVERAGE
    assert resolve_op(None, average=False) is ReduceOp.SUM
    assert resolve_op(hvd_tf.Max) is ReduceOp.MAX
    with pytest.raises(ConfigError, match="not both"):
        resolve_op(hvd_tf.Sum, average=True)
    with pytest.raises(ConfigError, match="Adasum"):
        resolve_op(hvd_tf.Adasum)
    with pytest.raises(ConfigError, match="not a Horovod reduction"):
        resolve_op("median")
    with pytest.raises(ConfigError, match="cannot reduce gradients"):
        resolve_op(hvd_tf.Min, gradients=True)


OTHER_SET = object()

#: Every argument of the gradient APIs tfyarn refuses, with a value it refuses.
GRADIENT_REFUSALS: list[tuple[str, Any]] = [
    ("device_dense", "/gpu:0"),
    ("device_sparse", "/gpu:0"),
    ("num_groups", 2),
    ("groups", [[0, 1]]),
    ("process_set", OTHER_SET),
    ("scale_local_gradients", False),
    ("op", ReduceOp.ADASUM),
    ("op", ReduceOp.MAX),
    ("compression", "gzip"),
]


@pytest.mark.parametrize(("name", "value"), GRADIENT_REFUSALS)
@pytest.mark.parametrize(
    "api",
    [hvd_keras.DistributedOptimizer, hvd_tf.DistributedOptimizer, hvd_tf.DistributedGradientTape],
)
def test_gradient_apis_refuse_what_tfyarn_cannot_honour(api: Any, name: str, value: Any) -> None:
    # checked before anything else: no hvd.init(), no optimizer or tape needed
    with pytest.raises(ConfigError, match=name if name != "op" else "op=hvd"):
        api(object(), **{name: value})


def test_more_refusals_name_their_argument() -> None:
    with pytest.raises(ConfigError, match="use_locking"):
        hvd_tf.DistributedOptimizer(object(), use_locking=True)
    with pytest.raises(ConfigError, match=r"gradient_predivide_factor.*hvd\.Average"):
        hvd_keras.DistributedOptimizer(object(), op=hvd_keras.Sum, gradient_predivide_factor=2.0)
    with pytest.raises(ConfigError, match="comm"):
        horovod.init(comm=[0, 1])
    with pytest.raises(ConfigError, match="process_sets"):
        horovod.init(process_sets=[hvd_tf.ProcessSet()])
    with pytest.raises(ConfigError, match="only the global process set"):
        hvd_tf.ProcessSet([0, 1])
    with pytest.raises(ConfigError, match="device"):
        hvd_keras.callbacks.BroadcastGlobalVariablesCallback(0, device="/gpu:0")
    with pytest.raises(ConfigError, match="device"):
        hvd_tf.join(device="/gpu:0")
    with pytest.raises(ConfigError, match="session"):
        hvd_tf.broadcast_object(1, session=object())
    with pytest.raises(ConfigError, match="Adasum"):
        hvd_tf.allreduce(np.ones(2), op=hvd_tf.Adasum)
    with pytest.raises(ConfigError, match="device_dense"):
        hvd_tf.allreduce(np.ones(2), device_dense="/gpu:0")
    with pytest.raises(ConfigError, match=r"hvd\.Average or hvd\.Sum"):
        reducescatter_array(_OneRank(), np.ones(2), ReduceOp.MAX)


def test_unsupported_names_say_why_and_fail_hasattr() -> None:
    with pytest.raises(ConfigError, match="Horovod Elastic is not supported"):
        _ = hvd_keras.elastic
    with pytest.raises(ConfigError, match="TF1 graph mode"):
        _ = hvd_tf.broadcast_global_variables
    assert not hasattr(hvd_tf, "start_timeline")
    assert not hasattr(hvd_keras, "no_such_name")
    assert hvd_tf.mpi_built() is False and hvd_keras.nccl_built() is False


def test_init_outside_a_tfyarn_role_says_how_to_launch() -> None:
    assert not horovod.is_initialized()
    with pytest.raises(ConfigError, match=r"tfyarn\.horovod\.spark\.run"):
        horovod.init()
    with pytest.raises(ConfigError, match=r"call hvd\.init\(\) first"):
        hvd_keras.rank()


# -- the launcher's mapping ----------------------------------------------------------------


def test_run_options_map_horovods_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HOROVOD_SPARK_START_TIMEOUT", raising=False)
    assert run_options(2) == {
        "workers": 2, "ps": 0, "chief": False, "strategy": "allreduce", "progress": True,
    }  # fmt: skip
    options = run_options(
        3, start_timeout=45, env={"A": 1}, verbose=0, nics={"ib0"},
        tfyarn_options={"transport": "tcp", "max_restarts": 2},
    )  # fmt: skip
    assert options == {
        "workers": 3, "ps": 0, "chief": False, "strategy": "allreduce", "progress": False,
        "allocation_timeout": 45.0, "startup_timeout": 45.0, "env": {"A": "1"},
        "interface": "ib0", "transport": "tcp", "max_restarts": 2,
    }  # fmt: skip
    monkeypatch.setenv("HOROVOD_SPARK_START_TIMEOUT", "30")
    assert run_options(2)["startup_timeout"] == 30.0


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"extra_mpi_args": "-x NCCL_DEBUG"}, "extra_mpi_args"),
        ({"stdout": sys.stdout}, "stdout"),
        ({"stderr": sys.stderr}, "stderr"),
        ({"prefix_output_with_timestamp": True}, "prefix_output_with_timestamp"),
        ({"executable": "/usr/bin/python3"}, "executable"),
        ({"use_mpi": True}, "use_mpi"),
        ({"use_gloo": True}, "use_gloo"),
        ({"nics": ["eth0", "ib0"]}, "nics"),
        ({"num_proc": 0}, "num_proc"),
        ({"start_timeout": -1}, "start_timeout"),
        ({"tfyarn_options": {"workers": 4}}, "workers"),
    ],
)
def test_run_refuses_what_it_cannot_map(kwargs: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        run_options(**kwargs)
    with pytest.raises(ConfigError, match=named):  # before any Spark session is looked for
        horovod.spark.run(lambda: None, **kwargs)


# -- collectives between ranks -----------------------------------------------------------


class _OneRank:
    """A one-rank :class:`~tfyarn.exchange.collectives.Collectives` (nothing to exchange)."""

    rank, size = 0, 1

    def allreduce_(
        self, a: np.ndarray, average: bool = False, wire: np.dtype | None = None
    ) -> np.ndarray:
        return a

    def broadcast_(self, a: np.ndarray, root: int = 0) -> np.ndarray:
        return a

    def barrier(self) -> None:
        pass


def _inputs(rank: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(rank)
    return {
        "rows": rng.standard_normal((rank + 1, 2, 3)).astype(np.float32),
        "flags": np.array([rank % 2 == 0, True, rank == 1]),
        "x": rng.standard_normal(7).astype(np.float64),
        "n": np.array([5 * rank - 3, 7], np.int32),
        "scatter": np.arange(7 * 2, dtype=np.float32).reshape(7, 2) + rank,
    }


def _collectives_job(ctx: LocalContext) -> dict[str, Any]:
    coll = ctx.strategy().collectives
    mine = _inputs(coll.rank)
    out: dict[str, Any] = {
        "rows": allgather_array(coll, mine["rows"]),
        "flags": allgather_array(coll, mine["flags"]),
        "empty": allgather_array(coll, np.zeros((0, 4), np.int64)),
        "object": broadcast_object_on(coll, {"rank": coll.rank, "x": mine["x"]}, 2),
        "objects": allgather_object_on(coll, [coll.rank] * coll.rank),
        "join": join_on(coll),
    }
    for op in ReduceOp:
        if op is not ReduceOp.ADASUM:
            out[op.name] = reduce_array(coll, mine["x"], op)
            out[op.name, "int"] = reduce_array(coll, mine["n"], op)
    out["any"] = reduce_array(coll, mine["flags"], ReduceOp.MAX)
    out["scatter"] = reducescatter_array(coll, mine["scatter"], ReduceOp.AVERAGE)
    with pytest.raises(ConfigError, match="agree on dtype"):
        allgather_array(coll, np.zeros((1, 2 + coll.rank), np.float32))
    return out


def test_collectives_of_three_ranks_match_numpy() -> None:
    results = run_local(
        _collectives_job, threads=True, workers=3, strategy="allreduce", strategy_options=OPTIONS
    )
    inputs = [_inputs(r) for r in range(3)]
    xs, ns = np.stack([i["x"] for i in inputs]), np.stack([i["n"] for i in inputs])
    reference = {"AVERAGE": np.mean, "SUM": np.sum, "MIN": np.min, "MAX": np.max,
                 "PRODUCT": np.prod}  # fmt: skip
    scatter = np.mean([i["scatter"] for i in inputs], axis=0)
    joins = set()
    for task, got in results.items():
        rank = int(task.split(":")[1])
        np.testing.assert_array_equal(got["rows"], np.concatenate([i["rows"] for i in inputs]))
        np.testing.assert_array_equal(got["flags"], np.concatenate([i["flags"] for i in inputs]))
        assert got["flags"].dtype == bool and got["empty"].shape == (0, 4)
        assert got["object"]["rank"] == 2
        np.testing.assert_array_equal(got["object"]["x"], inputs[2]["x"])
        assert got["objects"] == [[], [1], [2, 2]]
        for name, fn in reference.items():
            np.testing.assert_allclose(got[name], fn(xs, axis=0), rtol=1e-12)
            want = ns.sum(0) // 3 if name == "AVERAGE" else fn(ns, axis=0)
            np.testing.assert_array_equal(got[name, "int"], want)
            assert got[name, "int"].dtype == np.int32
        np.testing.assert_array_equal(got["any"], np.array([True, True, True]))
        rows = split_sizes(7, 3)
        assert rows == [3, 2, 2]
        start = sum(rows[:rank])
        np.testing.assert_allclose(got["scatter"], scatter[start : start + rows[rank]])
        joins.add(got["join"])
    assert len(joins) == 1 and joins <= {0, 1, 2}


def _gradients_job(ctx: LocalContext) -> dict[str, Any]:
    import tensorflow as tf

    strategy = ctx.strategy()
    grads = [tf.constant([1.0, 2.0]) * (strategy.rank + 1), None, tf.constant(3.0)]
    out = {}
    for name, kwargs in {
        "average": {},
        "sum": {"op": ReduceOp.SUM},
        "predivide": {"gradient_predivide_factor": 4.0},
        "fp16": {"compression": hvd_tf.Compression.fp16},
    }.items():
        reduction = gradient_reduction("test", **kwargs)
        reduced = reduction.reduce(strategy, grads)
        out[name] = [None if g is None else (g.numpy(), g.dtype.name) for g in reduced]
    return out


def test_gradient_reductions_of_two_ranks() -> None:
    results = run_local(_gradients_job, threads=True, workers=2, strategy="allreduce")
    mean, total = np.array([1.5, 3.0]), np.array([3.0, 6.0])
    for got in results.values():
        for name in ("average", "predivide", "fp16"):
            (first, dtype), missing, (scalar, _) = got[name]
            np.testing.assert_allclose(first, mean, err_msg=name)
            assert dtype == "float32" and missing is None and scalar == 3.0
        np.testing.assert_allclose(got["sum"][0][0], total)
        assert got["sum"][2][0] == 6.0


def _keras_job(folder: Path, ctx: LocalContext) -> dict[str, Any]:
    import keras

    with bind_context(ctx):
        hvd_keras.init()
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        optimizer = hvd_keras.DistributedOptimizer(
            keras.optimizers.SGD(0.1, momentum=0.5), backward_passes_per_step=2
        )
        with pytest.raises(ConfigError, match="already distributed"):
            hvd_keras.DistributedOptimizer(optimizer)
        model.compile(optimizer=optimizer, loss="mse")
        rates: list[float] = []
        record = keras.callbacks.LambdaCallback(
            on_train_batch_begin=lambda batch, logs: rates.append(
                float(np.asarray(optimizer.learning_rate))
            )
        )
        warmup = hvd_keras.callbacks.LearningRateWarmupCallback(0.4, warmup_epochs=2)
        schedule = hvd_keras.callbacks.LearningRateScheduleCallback(
            0.4, multiplier=lambda epoch: 0.5**epoch, start_epoch=2
        )
        x = np.ones((8, 4), np.float32)
        model.fit(
            x, np.zeros(8), batch_size=4, epochs=4, verbose=0,
            callbacks=[hvd_keras.callbacks.BroadcastGlobalVariablesCallback(0), warmup,
                       schedule, record],
        )  # fmt: skip
        path = str(folder / "model.keras")
        model.save(path)
        loaded = hvd_keras.load_model(path)
        return {
            "loaded_distributed": getattr(loaded.optimizer, "_tfyarn_exchange", None) is not None,
            "rates": rates,
            "accumulation": optimizer.gradient_accumulation_steps,
            "steps": int(optimizer.iterations),
            "jit": model.jit_compile,
            "size": hvd_keras.size(),
        }


def test_keras_parts_on_one_rank(tmp_path: Path) -> None:
    job = functools.partial(_keras_job, tmp_path)
    got = run_local(job, threads=True, workers=1, strategy="allreduce")["worker:0"]
    # one rank: the warm-up starts at 0.4 / 1; then the schedule halves per epoch from 2 on
    assert got["size"] == 1
    np.testing.assert_allclose(got["rates"], [0.4, 0.4, 0.4, 0.4, 0.1, 0.1, 0.05, 0.05])
    assert got["accumulation"] == 2 and got["steps"] == 4  # 8 batches, applied every 2nd
    assert got["jit"] is False  # XLA cannot compile the exchange's numpy_function
    assert got["loaded_distributed"]  # hvd.load_model wraps the saved optimizer
