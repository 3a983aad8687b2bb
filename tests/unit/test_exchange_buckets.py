"""Unit tests of the pure bucket and shard planning of tfyarn.exchange."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tfyarn.errors import ConfigError
from tfyarn.exchange.buckets import (
    TensorSpec,
    backward_buckets,
    chunk_ranges,
    pack,
    plan_buckets,
    plan_shards,
    unpack,
)

shapes = st.lists(st.integers(0, 40), min_size=0, max_size=3).map(tuple)
specs_strategy = st.lists(
    st.tuples(shapes, st.sampled_from(["float32", "float16", "float64"])), max_size=12
).map(lambda xs: [TensorSpec(f"t{i}", s, d) for i, (s, d) in enumerate(xs)])


@settings(max_examples=80, deadline=None)
@given(specs=specs_strategy, max_bytes=st.integers(1, 600))
def test_buckets_cover_every_element_once(specs: list[TensorSpec], max_bytes: int) -> None:
    buckets = plan_buckets(specs, max_bytes)
    covered = [np.zeros(s.size, dtype=np.int64) for s in specs]
    for i, b in enumerate(buckets):
        assert b.index == i
        assert b.size > 0
        # at most max_bytes, unless one element is already larger
        assert b.nbytes <= max(max_bytes, b.itemsize)
        pos = 0
        for slot in b.slots:
            assert specs[slot.tensor].dtype == b.dtype
            assert slot.bucket_offset == pos
            assert slot.size > 0
            covered[slot.tensor][slot.tensor_offset : slot.tensor_offset + slot.size] += 1
            pos += slot.size
        assert pos == b.size
    for c in covered:
        assert (c == 1).all()


def test_bucket_cut_splits_a_large_tensor() -> None:
    specs = [TensorSpec("a", (3,), "float32"), TensorSpec("emb", (10, 2), "float32")]
    buckets = plan_buckets(specs, max_bytes=32)  # 8 elements per bucket
    assert [b.size for b in buckets] == [8, 8, 7]
    assert buckets[0].slots[0].tensor == 0
    assert buckets[0].slots[1].size == 5 and buckets[1].slots[0].tensor_offset == 5


def test_dtypes_are_never_mixed() -> None:
    specs = [
        TensorSpec("a", (4,), "float32"),
        TensorSpec("b", (4,), "float16"),
        TensorSpec("c", (4,), "float32"),
    ]
    buckets = plan_buckets(specs, max_bytes=1 << 20)
    assert [(b.dtype, b.size) for b in buckets] == [("float32", 8), ("float16", 4)]


def test_bad_dtype_and_shape_are_named() -> None:
    with pytest.raises(ConfigError, match="bool"):
        plan_buckets([TensorSpec("flag", (), "bool")])
    with pytest.raises(ConfigError, match="'x'"):
        plan_buckets([TensorSpec("x", (-1, 3), "float32")])
    with pytest.raises(ConfigError, match="max_bytes"):
        plan_buckets([], 0)


def test_pack_unpack_round_trip() -> None:
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in [(2, 3), (7,), (), (4, 1)]]
    specs = [TensorSpec(f"t{i}", a.shape, "float32") for i, a in enumerate(arrays)]
    buckets = plan_buckets(specs, max_bytes=20)
    flats = [pack(b, arrays, np.empty(b.size, np.float32)) for b in buckets]
    out = [np.zeros_like(a) for a in arrays]
    for b, f in zip(buckets, flats, strict=True):
        unpack(b, f, out)
    for a, o in zip(arrays, out, strict=True):
        np.testing.assert_array_equal(a, o)


@settings(max_examples=80, deadline=None)
@given(sizes=st.lists(st.integers(1, 1000), min_size=1, max_size=30), n=st.integers(1, 6))
def test_shard_plan_is_a_balanced_partition(sizes: list[int], n: int) -> None:
    specs = [TensorSpec(f"t{i}", (s,), "float32") for i, s in enumerate(sizes)]
    buckets = plan_buckets(specs, max_bytes=256)
    shards = plan_shards(buckets, n)
    assert len(shards) == n
    flat = sorted(i for s in shards for i in s)
    assert flat == list(range(len(buckets)))
    loads = [sum(buckets[i].nbytes for i in s) for s in shards]
    # LPT bound: the heaviest shard exceeds the lightest by at most one bucket
    assert max(loads) - min(loads) <= max(b.nbytes for b in buckets)
    assert shards == plan_shards(buckets, n)  # deterministic


def test_shard_plan_rejects_zero_shards() -> None:
    with pytest.raises(ConfigError, match="parameter server"):
        plan_shards([], 0)


@given(n=st.integers(0, 500), parts=st.integers(1, 20))
def test_chunk_ranges(n: int, parts: int) -> None:
    r = chunk_ranges(n, parts)
    assert len(r) == parts and r[0][0] == 0 and r[-1][1] == n
    sizes = [b - a for a, b in r]
    assert max(sizes) - min(sizes) <= 1
    assert all(r[i][1] == r[i + 1][0] for i in range(parts - 1))


def test_backward_buckets_start_with_the_last_layer() -> None:
    # kernel/bias of three layers, first layer first: 4000, 40, 400, 16, 40, 4 bytes
    sizes = [4000, 40, 400, 16, 40, 4]
    assert backward_buckets(sizes, 64) == [[5, 4, 3], [2], [1], [0]]
    assert backward_buckets(sizes, 500) == [[5, 4, 3, 2, 1], [0]]
    assert backward_buckets(sizes, 1 << 20) == [[5, 4, 3, 2, 1, 0]]
    assert backward_buckets([], 64) == []
    with pytest.raises(ConfigError, match="bucket_bytes must be positive"):
        backward_buckets(sizes, 0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 5000), max_size=30), st.integers(1, 8000))
def test_backward_buckets_cover_every_gradient_once_in_reverse(
    sizes: list[int], bucket_bytes: int
) -> None:
    buckets = backward_buckets(sizes, bucket_bytes)
    flat = [i for b in buckets for i in b]
    assert flat == list(reversed(range(len(sizes))))
    for b in buckets:  # full, unless one gradient alone is larger
        assert len(b) == 1 or sum(sizes[i] for i in b) <= bucket_bytes
