"""KerasEstimator / KerasModel without a Spark cluster (issue 15): several outputs (their
names, their label columns, per-output losses and metrics, one prediction column each),
``stepsPerEpoch`` (every trainer runs the same steps, its shard cycled) and a restart
under it landing on the lost step. tests/sparkml runs the same paths on a local cluster.

Bad labels are refused by ``_fit`` on a stand-in frame that has a schema and nothing
else: the refusal comes before anything could reach Spark.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from pyspark.sql.types import ArrayType, DoubleType, FloatType, StructField, StructType

from tfyarn.cluster.plan import RoleSpec
from tfyarn.errors import ConfigError, RoleFailedError
from tfyarn.exchange.checkpoint import CheckpointPolicy, checkpoint_files, read_checkpoint
from tfyarn.exchange.local import LocalContext, run_local
from tfyarn.ml import KerasEstimator, KerasModel
from tfyarn.ml.columns import FEATURES, label_columns
from tfyarn.ml.estimator import (
    _check_per_output,
    _layout_of,
    _loss_config,
    _loss_object,
    _match_labels,
    _metrics_for,
    _train,
    _TrainingSpec,
)
from tfyarn.ml.inference import ScoringSpec, model_to_bytes, predict_array
from tfyarn.node import feed
from tfyarn.node.context import NodeContext
from tfyarn.node.job import JobSpec
from tfyarn.node.messages import Member

keras = pytest.importorskip("keras")


def two_outputs(as_dict: bool = False) -> Any:
    """Two inputs; a 3-way ``digit`` output and a 1-wide ``size`` output."""
    left, right = keras.Input((4,), name="left"), keras.Input((2,), name="right")
    hidden = keras.layers.Dense(8, activation="relu")(keras.layers.Concatenate()([left, right]))
    digit = keras.layers.Dense(3, name="digit")(hidden)
    size = keras.layers.Dense(1, name="size")(hidden)
    outputs = {"z_digit": digit, "a_size": size} if as_dict else [digit, size]
    return keras.Model([left, right], outputs)


def test_outputs_are_named_by_their_layers_or_the_dict_keys() -> None:
    listed = _layout_of(two_outputs())
    assert (listed.inputs, listed.outputs, listed.sparse_width) == (
        ("left", "right"),
        ("digit", "size"),
        0,
    )
    # A dict of outputs: its keys, in the order the model was built with (predict's).
    assert _layout_of(two_outputs(as_dict=True)).outputs == ("z_digit", "a_size")
    one = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    assert _layout_of(one).outputs == ()
    inputs = keras.Input((3,))
    nested = keras.Model(inputs, [keras.layers.Dense(1)(inputs), [keras.layers.Dense(2)(inputs)]])
    with pytest.raises(ConfigError, match="outputs are nested"):
        _layout_of(nested)


def test_label_columns_follow_the_output_order_or_the_output_names() -> None:
    outputs = ("digit", "size")
    assert _match_labels(outputs, ["y", "s"], "labelCols") == ["y", "s"]
    assert _match_labels(outputs, {"size": "s", "digit": "y"}, "labelCols") == ["y", "s"]
    assert _match_labels((), ["label"], "labelCol") == ["label"]
    refusals = [
        (outputs, ["label"], "labelCol",
         r"model has 2 outputs \(digit, size\) and labelCol names 1 column \(label\): give "
         r"labelCols=\[\.\.\.\]"),
        (outputs, ["y", "s", "t"], "labelCols", r"labelCols names 3 columns \(y, s, t\)"),
        (outputs, {"digit": "y", "colour": "c"}, "labelCols",
         "labelCols has no output named colour and no column for size"),
        ((), ["y", "s"], "labelCols", r"one output and labelCols names 2 columns \(y, s\)"),
        ((), {"digit": "y"}, "labelCols", "names outputs, but the model has one output"),
    ]  # fmt: skip
    for outs, labels, param, problem in refusals:
        with pytest.raises(ConfigError, match=problem):
            _match_labels(outs, labels, param)


def test_label_col_and_label_cols_are_one_or_the_other() -> None:
    assert KerasEstimator()._labels() == ("labelCol", ["label"])
    assert KerasEstimator(labelCols={"digit": "y"})._labels() == ("labelCols", {"digit": "y"})
    with pytest.raises(ConfigError, match=r"give labelCol .* or labelCols .*, not both"):
        KerasEstimator(labelCol="y", labelCols=["y", "s"])._labels()
    with pytest.raises(ConfigError, match="labelCols is empty"):
        KerasEstimator(labelCols=[])._labels()
    with pytest.raises(TypeError):
        KerasEstimator(labelCols={"digit": 3})


SCHEMA = StructType(
    [
        StructField("left", ArrayType(FloatType())),
        StructField("right", ArrayType(FloatType())),
        StructField("y", DoubleType()),
        StructField("s", DoubleType()),
    ]
)


def _refused_by_fit(**params: Any) -> str:
    """What ``_fit`` says of a frame that is only a schema (no Spark behind it)."""
    estimator = KerasEstimator(
        **{"model": two_outputs, "loss": "mse", "featureCols": ["left", "right"], **params}
    )
    with pytest.raises(ConfigError) as refused:
        estimator._fit(SimpleNamespace(schema=SCHEMA))  # type: ignore[arg-type]
    return str(refused.value)


def test_bad_labels_and_steps_are_refused_before_spark_is_used() -> None:
    assert "2 outputs (digit, size) and labelCol names 1 column (y)" in _refused_by_fit(
        labelCol="y"
    )
    assert "2 outputs (digit, size) and labelCol names 1 column (label)" in _refused_by_fit()
    assert "label column 'nope' is not in the DataFrame" in _refused_by_fit(labelCols=["y", "nope"])
    assert "loss lists 3 entries for the model's 2 outputs" in _refused_by_fit(
        labelCols=["y", "s"], loss=["mse", "mse", "mse"]
    )
    assert "metrics names outputs the model does not have (colour)" in _refused_by_fit(
        labelCols=["y", "s"], metrics={"colour": ["mae"]}
    )
    assert "stepsPerEpoch must be 0" in _refused_by_fit(labelCols=["y", "s"], stepsPerEpoch=-1)


def test_losses_and_metrics_per_output_keep_their_structure() -> None:
    losses = [keras.losses.SparseCategoricalCrossentropy(from_logits=True), "mse"]
    config = _loss_config(losses)
    assert config[1] == "mse" and config[0]["class_name"] == "SparseCategoricalCrossentropy"
    again = _loss_object(config)
    assert type(again[0]) is keras.losses.SparseCategoricalCrossentropy
    assert again[0].get_config()["from_logits"]
    by_name = _loss_object(_loss_config({"digit": losses[0], "size": "mse"}))
    assert set(by_name) == {"digit", "size"} and by_name["size"] == "mse"
    one = _loss_config(keras.losses.MeanSquaredError())
    assert _loss_object(one).name == "mean_squared_error"
    _check_per_output("loss", one, ())  # a Keras config is one loss, not one per output
    with pytest.raises(ConfigError, match=r"loss is given per output .* one output"):
        _check_per_output("loss", ["mse", "mse"], ())
    outputs = ("digit", "size")
    assert _metrics_for(["mae"], outputs) == {"digit": ["mae"], "size": ["mae"]}
    assert _metrics_for({"digit": ["accuracy"]}, outputs) == {"digit": ["accuracy"]}
    assert _metrics_for(["accuracy"], ()) == ["accuracy"]
    assert _metrics_for([], outputs) == []


def test_several_outputs_score_into_one_column_each_as_predict_gives_them() -> None:
    rng = np.random.default_rng(0)
    left = rng.normal(size=(50, 4)).astype(np.float32)
    right = rng.normal(size=(50, 2)).astype(np.float32)
    features = pa.StructArray.from_arrays(
        [
            pa.array(list(left), pa.list_(pa.float32())),
            pa.array(list(right), pa.list_(pa.float32())),
        ],
        ["a", "b"],
    )
    for as_dict, names in ((False, ("digit", "size")), (True, ("z_digit", "a_size"))):
        model = two_outputs(as_dict)
        spec = ScoringSpec(
            model=model_to_bytes(model), prediction="p", raw_prediction="r", batch_size=16,
            inputs=2, outputs=names,
        )  # fmt: skip
        assert spec.columns() == [
            (f"p_{names[0]}", f"r_{names[0]}"),
            (f"p_{names[1]}", f"r_{names[1]}"),
        ]
        got = predict_array(spec, features)
        predicted = model.predict([left, right], verbose=0)
        digit, size = (predicted[n] for n in names) if as_dict else predicted
        np.testing.assert_allclose(np.stack(got.field("raw_0").to_pylist()), digit, atol=1e-5)
        np.testing.assert_array_equal(got.field("prediction_0").to_numpy(), digit.argmax(axis=1))
        np.testing.assert_allclose(got.field("prediction_1").to_numpy(), size[:, 0], atol=1e-5)
    assert ScoringSpec(model=b"", prediction="p").columns() == [("p", "")]


def test_a_model_names_its_prediction_columns_after_its_outputs() -> None:
    scorer = KerasModel(featureCols=["left", "right"], predictionCol="pred", rawPredictionCol="")
    scorer._model_bytes = model_to_bytes(two_outputs())
    assert scorer.predictionCols() == ["pred_digit", "pred_size"]
    assert scorer.rawPredictionCols() == []
    copied = scorer.copy({scorer.rawPredictionCol: "raw"})
    assert copied.rawPredictionCols() == ["raw_digit", "raw_size"]


# -- stepsPerEpoch --------------------------------------------------------------------


def _node(
    tmp: Path, rows: list[int], rank: int, *, attempt: int = 1, policy: Any = None
) -> NodeContext:
    """Trainer ``rank``'s context of a job whose trainers hold ``rows`` rows each, its
    shard a cache of ``features`` (``rows x 4``) and two label columns (row numbers)."""
    plan = tuple(RoleSpec(i, "worker", i) for i in range(len(rows)))
    job = JobSpec(
        job_id="steps", plan=plan, trainers=plan, train_fn=b"", secret=b"s" * 32,
        driver_address=("127.0.0.1", 1), strategy="allreduce", attempt=attempt, checkpoint=policy,
    )  # fmt: skip
    members = [
        Member(task_id=f"worker:{i}", host="127.0.0.1", tf_port=2222 + i, exchange_address=None,
               rows=n, executor=str(i))
        for i, n in enumerate(rows)
    ]  # fmt: skip
    n = rows[rank]
    x = np.random.default_rng(rank).normal(size=(n, 4)).astype(np.float32)
    first, second = label_columns(2)
    table = pa.table(
        {
            FEATURES: pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 4),
            first: pa.array(np.arange(n, dtype=np.float64) % 3),
            second: pa.array(x.sum(axis=1).astype(np.float64)),
        }
    )
    work = tmp / f"work-{rank}-{attempt}"
    work.mkdir(parents=True, exist_ok=True)
    info = feed.write_cache(table.to_batches(), work / "data.arrow")
    return NodeContext(job, plan[rank], members, workdir=str(work), data_path=info.path,
                       heartbeat=None, tf_port=None)  # fmt: skip


def test_steps_per_epoch_runs_the_same_steps_on_every_trainer_cycling_its_shard(
    tmp_path: Path,
) -> None:
    second = label_columns(2)[1]
    for rank, rows in enumerate((10, 25)):
        ctx = _node(tmp_path, [10, 25], rank)
        assert ctx.steps_per_epoch(4) == 7  # one pass over the longest shard
        batches = list(ctx.dataset(4, epochs=3, steps_per_epoch=5, seed=1).as_numpy_iterator())
        assert len(batches) == 15 and all(len(b[FEATURES]) == 4 for b in batches)
        # The shard cycled: 60 rows drawn from 10 (6 passes) or 25, every row in each pass.
        seen = np.concatenate([b[second] for b in batches])
        passes = 60 // rows
        expected = np.sort(np.tile(np.asarray(ctx.columns()[second]), passes))
        np.testing.assert_array_equal(np.sort(seen[: passes * rows]), expected)
    with pytest.raises(ConfigError, match="steps_per_epoch must be at least 1"):
        ctx.dataset(4, steps_per_epoch=0)


class _Trainer:
    """What ``_train`` uses of a role's context: the exchange of a local run's role
    (``run_local``), the data and step counts of a :class:`NodeContext`."""

    is_chief = True

    def __init__(self, local: LocalContext, node: NodeContext) -> None:
        self._local, self._node = local, node
        self.steps_per_epoch, self.dataset = node.steps_per_epoch, node.dataset

    def strategy(self) -> Any:
        return self._local.strategy()

    def keras_callback(self) -> Any:
        return keras.callbacks.Callback()


class _Count(keras.callbacks.Callback):
    """Counts this attempt's steps; raises (a lost role) after step ``kill_at``."""

    def __init__(self, kill_at: int | None) -> None:
        super().__init__()
        self.kill_at, self.steps = kill_at, 0

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.steps += 1
        if self.kill_at is not None and self.steps == self.kill_at:
            raise RuntimeError("lost")


EPOCHS, STEPS, BATCH, ROWS = 3, 7, 8, 37  # one pass: 5 steps; an epoch: 7


def _fit_in_process(tmp: Path, *, attempt: int, policy: Any, kill_at: int | None) -> dict:
    """``_train`` of a two-output model with ``stepsPerEpoch`` on one local trainer."""
    keras.utils.set_random_seed(3)  # the same initial weights in every attempt
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    model = keras.Model(
        inputs,
        [keras.layers.Dense(3, name="digit")(hidden), keras.layers.Dense(1, name="size")(hidden)],
    )
    node = _node(tmp, [ROWS], 0, attempt=attempt, policy=policy)
    count = _Count(kill_at)
    spec = _TrainingSpec(
        model=model_to_bytes(model),
        optimizer=keras.optimizers.serialize(keras.optimizers.SGD(0.05, momentum=0.9)),
        loss=_loss_config([keras.losses.SparseCategoricalCrossentropy(from_logits=True), "mse"]),
        metrics=_metrics_for({"digit": ["accuracy"]}, ("digit", "size")),
        batch_size=BATCH, epochs=EPOCHS, shuffle=True, seed=3,
        validation={name: np.asarray(column)[:10] for name, column in node.columns().items()},
        callbacks=(count,), outputs=("digit", "size"), steps_per_epoch=STEPS,
    )  # fmt: skip

    def fn(local: LocalContext) -> dict:
        result = _train(spec)(_Trainer(local, node))  # type: ignore[arg-type]
        return {**result, "steps": count.steps}

    return run_local(fn, workers=1, strategy="allreduce", threads=True, attempt=attempt,
                     checkpoint=policy)["worker:0"]  # fmt: skip


def test_a_restart_under_steps_per_epoch_resumes_at_the_lost_step(tmp_path: Path) -> None:
    from tfyarn.ml.inference import model_from_bytes

    reference = _fit_in_process(tmp_path / "ref", attempt=1, policy=None, kill_at=None)
    assert reference["steps"] == EPOCHS * STEPS  # not EPOCHS * 5: the shard cycled
    assert len(reference["history"]["loss"]) == EPOCHS
    assert {"digit_loss", "size_loss", "digit_accuracy", "val_size_loss"} <= set(
        reference["history"]
    )
    policy = CheckpointPolicy(str(tmp_path / "ckpt"), every_steps=5, keep=2)
    with pytest.raises(RoleFailedError), contextlib.suppress(RuntimeError):
        _fit_in_process(tmp_path / "a1", attempt=1, policy=policy, kill_at=13)
    assert read_checkpoint(checkpoint_files(policy.directory)[-1]).global_step == 10
    resumed = _fit_in_process(tmp_path / "a2", attempt=2, policy=policy, kill_at=None)
    assert resumed["steps"] == EPOCHS * STEPS - 10  # from step 10: mid-epoch 2 of 3
    want = model_from_bytes(reference["model"]).get_weights()
    for got, expected in zip(model_from_bytes(resumed["model"]).get_weights(), want, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
