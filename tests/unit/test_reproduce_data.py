"""DebDesc-20 split rule and the pure data helpers of `tfyarn bench reproduce`."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.reproductions import debdesc, debdesc_mlp, easgd_adagrad, lstm_iris
from tfyarn.errors import ConfigError


def test_split_rule_is_sha1_of_the_package_mod_5() -> None:
    for package in ("0install", "python3-numpy", "libc6", "zsh", "ünïcode"):
        digest = int(hashlib.sha1(package.encode("utf-8")).hexdigest(), 16)
        assert debdesc.is_test(package) is (digest % 5 == 0)
    # a fixed pair, so that a change of the hash input (e.g. adding a newline) is caught
    picks = [p for p in (f"pkg{i}" for i in range(40)) if debdesc.is_test(p)]
    assert picks == [
        p
        for p in (f"pkg{i}" for i in range(40))
        if int(hashlib.sha1(p.encode()).hexdigest(), 16) % 5 == 0
    ]
    assert 0 < len(picks) < 40


def test_the_shared_data_set_splits_into_9998_test_records() -> None:
    records = debdesc.read_records()
    train, test = debdesc.split_counts(records)
    assert (train, test) == (49_944 - debdesc.TEST_RECORDS, debdesc.TEST_RECORDS)
    assert len(debdesc.label_index(r.label for r in records)) == 20


def test_records_from_a_small_file_and_clear_errors(tmp_path: Path) -> None:
    good = tmp_path / "d.jsonl.gz"
    lines = [
        {"package": f"p{i}", "label": "libs" if i % 2 else "doc", "text": "t"} for i in range(10)
    ]
    with gzip.open(good, "wt") as f:
        f.write("\n".join(json.dumps(x) for x in lines) + "\n\n")
    records = debdesc.read_records(good)
    assert [r.package for r in records] == [f"p{i}" for i in range(10)]
    assert [r.test for r in records] == [debdesc.is_test(f"p{i}") for i in range(10)]
    assert debdesc.label_index(r.label for r in records) == {"doc": 0, "libs": 1}

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"package": "a", "label": "x", "text": "t"}\n{"package": "b"}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: not a DebDesc-20 record"):
        debdesc.read_records(bad)
    with pytest.raises(ConfigError, match="TFYARN_DEBDESC"):
        debdesc.read_records(tmp_path / "missing.jsonl.gz")


def test_pad_sparse_pads_with_zeros_and_keeps_the_largest_weights() -> None:
    idx, val, cut = debdesc_mlp.pad_sparse([3, 7], [0.5, 2.0], width=4)
    assert (idx, val, cut) == ([3, 7, 0, 0], [0.5, 2.0, 0.0, 0.0], False)
    idx, val, cut = debdesc_mlp.pad_sparse([1, 2, 3, 4, 5], [0.1, 5.0, 0.3, 4.0, 0.2], width=3)
    assert cut and idx == [2, 3, 4] and val == [5.0, 0.3, 4.0]


def test_mlp_forward_follows_mllib_weight_layout() -> None:
    """Column-major (out, in) matrices then biases; sigmoid hidden, softmax output."""
    rng = np.random.default_rng(0)
    layers = (5, 4, 3)
    w1, b1 = rng.normal(size=(4, 5)), rng.normal(size=4)  # (out, in) as MLlib holds them
    w2, b2 = rng.normal(size=(3, 4)), rng.normal(size=3)
    flat = np.concatenate([w1.ravel(order="F"), b1, w2.ravel(order="F"), b2])
    x = rng.normal(size=(6, 5))
    h = 1 / (1 + np.exp(-(x @ w1.T + b1)))
    z = h @ w2.T + b2
    expected = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(debdesc_mlp.mlp_forward(flat, layers, x), expected, rtol=1e-12)
    with pytest.raises(ValueError, match="do not fit"):
        debdesc_mlp.mlp_forward(np.concatenate([flat, [0.0]]), layers, x)


def test_iris_split_is_stratified_and_scaled() -> None:
    xtr, _, xte, yte = lstm_iris.iris_split()
    assert xtr.shape == (120, 4) and xte.shape == (30, 4)
    assert np.bincount(yte).tolist() == [10, 10, 10]
    assert xtr.min() == 0.0 and xtr.max() == 1.0


def test_part3_data_has_the_published_size() -> None:
    xtr, ytr, xte, _ = easgd_adagrad.make_data(instances=2_000, held_out=200)
    assert xtr.shape == (2_000, easgd_adagrad.FEATURES) and xte.shape == (200, 30)
    assert set(np.unique(ytr)) == {0, 1}
    np.testing.assert_allclose(xtr.mean(axis=0), 0, atol=1e-5)
    assert easgd_adagrad.INSTANCES == 250_000
