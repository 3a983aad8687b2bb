"""tfyarn.native: the buffer pool, the buffer protocol and DLPack export (no copies)."""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import pytest

from tfyarn import native
from tfyarn.errors import ConfigError


@pytest.fixture
def pool():
    p = native.BufferPool(slab_bytes=1 << 20)
    yield p
    # No gc.collect() here: in a long session (Spark, TensorFlow, py4j objects) a full
    # collection took 21 s; a test whose buffers sit in cycles collects them itself.
    p.close()


def test_buffers_are_page_aligned_by_default(pool):
    bufs = [pool.alloc(n) for n in (1, 100, 4096, 5000, 70000)]
    for b in bufs:
        assert b.address % mmap.PAGESIZE == 0
        assert isinstance(b, native.Buffer)
    assert [b.nbytes for b in bufs] == [1, 100, 4096, 5000, 70000]
    assert len({b.address for b in bufs}) == len(bufs)
    for b in bufs:
        b.release()
    assert pool.live_buffers == 0


def test_custom_alignment_and_bad_alignment():
    with native.BufferPool(slab_bytes=1 << 20, alignment=1 << 16) as p:
        bufs = [p.alloc(10) for _ in range(3)]
        assert all(b.address % (1 << 16) == 0 for b in bufs)
        for b in bufs:
            b.release()
    with pytest.raises(ValueError, match="power of two"):
        native.BufferPool(alignment=3000)


def test_hugepage_pool_is_2mib_aligned():
    with native.BufferPool(slab_bytes=4 << 20, hugepages=True) as p:
        b = p.alloc(1 << 20)
        assert b.address % (2 << 20) == 0
        assert p.hugepages
        thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
        if thp.exists() and "[never]" not in thp.read_text():
            assert p.huge_slabs == 1  # hugetlbfs pages, or THP advised
        b.release()


def test_trim_unmaps_empty_slabs(pool):
    b = pool.alloc(10)
    assert pool.trim() == 0  # the slab is in use
    b.release()
    assert pool.trim() == 1
    assert pool.nslabs == 0 and pool.mapped_bytes == 0


def test_numpy_view_shares_memory_without_copy(pool):
    b = pool.alloc(4096)
    arr = np.frombuffer(b, dtype=np.float32)
    assert arr.ctypes.data == b.address
    assert arr.flags.writeable
    arr[:] = 3.5
    typed = b.as_array(np.float32, (32, 32))
    assert typed.ctypes.data == b.address
    assert typed[31, 31] == 3.5
    typed[0, 0] = -1.0
    assert arr[0] == -1.0
    mv = memoryview(b)
    assert mv.nbytes == 4096 and not mv.readonly
    del arr, typed, mv
    b.release()


def test_release_refuses_while_views_are_alive(pool):
    b = pool.alloc(1024)
    arr = b.as_array(np.uint8)
    with pytest.raises(BufferError, match="view"):
        b.release()
    del arr
    b.release()
    assert b.released
    with pytest.raises(ValueError, match="released"):
        _ = b.address
    b.release()  # idempotent


def test_memory_is_reused_after_release(pool):
    b = pool.alloc(8192)
    addr = b.address
    b.release()
    c = pool.alloc(8192)
    assert c.address == addr
    c.release()


def test_large_buffer_gets_dedicated_slab_unmapped_on_release(pool):
    small = pool.alloc(100)
    assert pool.nslabs == 1
    big = pool.alloc(3 << 20)
    assert pool.nslabs == 2
    assert big.nbytes == 3 << 20
    big.as_array(np.uint8)[-1] = 7  # the whole range is mapped
    big.release()
    assert pool.nslabs == 1
    small.release()


def test_close_refuses_with_live_buffers():
    p = native.BufferPool(slab_bytes=1 << 20)
    b = p.alloc(10)
    with pytest.raises(BufferError, match="still allocated"):
        p.close()
    b.release()
    p.close()
    with pytest.raises(ValueError, match="closed"):
        p.alloc(10)


def test_dropping_the_last_reference_releases(pool):
    # at once, by reference counting: no collection (a full one took 30 s in a long session)
    pool.alloc(100)
    assert pool.live_buffers == 0


def test_as_array_too_big_is_a_clear_error(pool):
    b = pool.alloc(100)
    with pytest.raises(ConfigError, match="needs 400 bytes"):
        b.as_array(np.float32, 100)
    b.release()


def test_default_pool_is_shared():
    assert native.default_pool() is native.default_pool()


def test_dlpack_into_numpy_and_tensorflow_without_copy(pool):
    tf = pytest.importorskip("tensorflow")  # a dependency of the tf extra, installed in CI
    import ml_dtypes

    b = pool.alloc(4096)
    arr = b.as_array(np.float32, (32, 32))
    arr[:] = np.arange(1024, dtype=np.float32).reshape(32, 32)
    assert b.__dlpack_device__() == (1, 0)

    # NumPy consumes the raw buffer (uint8 vector) through DLPack.
    raw = np.from_dlpack(b)
    assert raw.dtype == np.uint8 and raw.shape == (4096,)
    assert raw.ctypes.data == b.address

    view = b.view(np.float32, (32, 32))
    t = tf.experimental.dlpack.from_dlpack(view.__dlpack__())
    assert t.shape == (32, 32) and t.dtype == tf.float32
    assert float(tf.reduce_sum(t)) == float(arr.sum())
    # Same memory: the tensor's data pointer is the buffer, and writes show through.
    assert t.__array__().ctypes.data == b.address
    arr[0, 0] = 12345.0
    assert float(t[0, 0]) == 12345.0

    bf = b.view(ml_dtypes.bfloat16, (16,), offset=64)
    tb = tf.experimental.dlpack.from_dlpack(bf.__dlpack__())
    assert tb.dtype == tf.bfloat16
    assert tb.__array__().ctypes.data == b.address + 64

    with pytest.raises(BufferError):
        b.release()  # TF still holds the memory
    del t, tb, view, bf, raw, arr  # freed at once (no gc.collect(): slow in a long session)
    assert b.exports == 0
    b.release()


def test_unconsumed_dlpack_capsule_frees_its_reference(pool):
    b = pool.alloc(64)
    cap = b.__dlpack__()
    assert b.exports == 1
    del cap
    assert b.exports == 0
    b.release()


def test_view_bounds_are_checked(pool):
    b = pool.alloc(64)
    with pytest.raises(ValueError, match="does not fit"):
        b.view(np.float32, (17,))
    with pytest.raises(BufferError, match="stream=None"):
        b.__dlpack__(stream=1)
    b.release()
