"""The parameter-server optimizers (native kernels) follow Keras 3's optimizers."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tfyarn.errors import ConfigError
from tfyarn.exchange import kernels
from tfyarn.exchange.ps import Shard, optimizer_config

CASES = [
    (keras.optimizers.SGD(0.05), "sgd"),
    (keras.optimizers.SGD(0.05, momentum=0.9), "momentum"),
    (keras.optimizers.SGD(0.05, momentum=0.8, nesterov=True), "momentum"),
    (keras.optimizers.Adam(0.01), "adam"),
    (keras.optimizers.Adagrad(0.1), "adagrad"),
]


@pytest.mark.parametrize(("optimizer", "name"), CASES)
def test_ps_update_matches_keras(optimizer: object, name: str) -> None:
    from tfyarn.exchange.keras import keras_optimizer_config

    assert kernels.BACKEND == "native"  # the extension is built by the package install
    cfg = keras_optimizer_config(optimizer)
    assert cfg.name == name
    rng = np.random.default_rng(0)
    start = rng.standard_normal(1000).astype(np.float32)
    var = keras.Variable(start.copy())
    shard = Shard(kernels.empty(1000, np.float32), cfg)
    shard.values[:] = start
    for _ in range(5):
        g = rng.standard_normal(1000).astype(np.float32)
        optimizer.apply([g], [var])
        shard.apply(g.copy())
    np.testing.assert_allclose(shard.values, np.asarray(var.numpy()), rtol=2e-5, atol=2e-6)


def test_keras_settings_a_ps_cannot_run_are_refused() -> None:
    from tfyarn.exchange.keras import keras_optimizer_config

    with pytest.raises(ConfigError, match="RMSprop"):
        keras_optimizer_config(keras.optimizers.RMSprop())
    with pytest.raises(ConfigError, match="clipnorm"):
        keras_optimizer_config(keras.optimizers.SGD(clipnorm=1.0))
    sched = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.9)
    with pytest.raises(ConfigError, match="schedule"):
        keras_optimizer_config(keras.optimizers.Adam(sched))
    with pytest.raises(ConfigError, match="rmsprop"):
        optimizer_config("rmsprop")
    with pytest.raises(ConfigError, match="momentum"):
        optimizer_config("sgd", momentum=0.9)


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam", "adagrad"])
def test_float64_buckets_follow_the_same_formulas(name: str) -> None:
    """float64 buckets run NumPy formulas; they must agree with the native float32 ones."""
    cfg = optimizer_config(name)
    rng = np.random.default_rng(1)
    start = rng.standard_normal(257)
    s32 = Shard(start.astype(np.float32), cfg)
    s64 = Shard(start.copy(), cfg)
    for _ in range(4):
        g = rng.standard_normal(257)
        s32.apply(g.astype(np.float32))
        s64.apply(g)
    np.testing.assert_allclose(s64.values, s32.values, rtol=1e-4, atol=1e-5)
    kernels.add_(s64.values, np.ones(257))
    kernels.scale_(s64.values, 0.5)
    np.testing.assert_allclose(s64.values, (s32.values.astype(np.float64) + 1) * 0.5, rtol=1e-4)
