"""The README example: unchanged Keras ``model.fit`` through ``tfyarn.run`` on a real
local Spark cluster (separate executor processes), with the exchange's all-reduce and
with parameter servers served by a ps executor."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import tfyarn

pytestmark = pytest.mark.integration

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import cloudpickle  # noqa: E402
import keras_fit_allreduce as example  # noqa: E402

# The example is imported from a path the executors do not have: ship it by value.
cloudpickle.register_pickle_by_value(example)


# The example with allreduce runs, with these checks, in tests/watching/test_watching.py
# (watched by TensorBoard, Prometheus and the history): one job fewer in make test.
@pytest.mark.parametrize(("strategy", "ps"), [("sync_ps", 1)])
def test_keras_fit_example_trains_across_executors(spark: Any, strategy: str, ps: int) -> None:
    x_train, _, y_train, _ = example.load_split()
    df = spark.createDataFrame(
        pa.table(
            {
                "x": pa.FixedSizeListArray.from_arrays(pa.array(x_train.reshape(-1)), 64),
                "y": pa.array(y_train),
            }
        )
    )
    result = tfyarn.run(
        spark,
        example.make_train_fn(epochs=4, batch_size=32, learning_rate=3e-3),
        workers=2,
        ps=ps,
        chief=False,
        strategy=strategy,
        transport="tcp",
        data=df,
        progress=False,
    )
    value = result.value
    assert result.transport == "tcp"
    assert value["workers"] == 2
    assert value["test_accuracy"] >= 0.90, value
    losses = value["history"]["loss"]
    assert losses[-1] < losses[0]
    assert Path(value["model_path"]).is_file()
