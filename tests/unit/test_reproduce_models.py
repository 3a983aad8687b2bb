"""The reproductions' models have the published sizes (TensorFlow, no cluster)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.reproductions import debdesc_mlp, easgd_adagrad, lstm_iris

pytest.importorskip("keras", reason="the models need Keras (the `tf` extra)")


def test_part3_model_has_380402_parameters() -> None:
    model = easgd_adagrad.build_model(0)
    assert model.count_params() == easgd_adagrad.PARAMETERS == 380_402


def test_part1_model_is_the_original_two_layer_lstm() -> None:
    model = lstm_iris.build_model(0)
    lstm = [4 * (h * (i + h) + h) for i, h in ((4, 128), (128, 256))]
    assert model.count_params() == sum(lstm) + 256 * 3 + 3
    assert model(np.zeros((2, 4), np.float32)).shape == (2, 3)


def test_part2_sparse_first_layer_is_a_dense_layer_on_the_sparse_vector() -> None:
    model = debdesc_mlp.build_model(0)
    n, h1, h2, c = debdesc_mlp.LAYERS
    assert model.count_params() == n * h1 + h1 + h1 * h2 + h2 + h2 * c + c
    # the embedding bag equals x @ W for the sparse x it encodes
    idx, val, _ = debdesc_mlp.pad_sparse([5, 70_000, 262_143], [0.5, 1.5, 2.0])
    w = model.get_layer("sparse_dense").get_weights()[0]
    dense = np.zeros(n, np.float32)
    dense[[5, 70_000, 262_143]] = [0.5, 1.5, 2.0]
    first = model.get_layer("sparse_dense")(np.array([idx]))
    bag = (first.numpy() * np.array(val, np.float32)[None, :, None]).sum(axis=1)
    np.testing.assert_allclose(bag[0], dense @ w, rtol=1e-5, atol=1e-6)
