"""tfyarn.native kernels against NumPy (add/scale) and against Keras (optimizers).

Both compiled copies of the kernels are checked: the one picked on this CPU in-process,
and the portable baseline copy in a child process (TFYARN_KERNELS=baseline).
"""

from __future__ import annotations

import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

from tfyarn import native
from tfyarn.errors import ConfigError

BF16 = np.dtype(ml_dtypes.bfloat16)
SIZES = (1, 7, 8, 33, 1000, 4099)


def _rand(rng: np.random.Generator, n: int, dtype: np.dtype) -> np.ndarray:
    return (rng.standard_normal(n) * 10).astype(np.float32).astype(dtype)


def check_add_scale() -> None:
    """Compare add_/scale_ with float32 arithmetic rounded once, for every dtype/size."""
    rng = np.random.default_rng(0)
    for dtype in (np.dtype(np.float32), np.dtype(np.float16), BF16):
        for n in SIZES:
            a, b = _rand(rng, n, dtype), _rand(rng, n, dtype)
            want = (a.astype(np.float32) + b.astype(np.float32)).astype(dtype)
            got = a.copy()
            native.add_(got, b)
            np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))
            want = (a.astype(np.float32) * np.float32(0.37)).astype(dtype)
            got = a.copy()
            native.scale_(got, 0.37)
            np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))
    # Every float16 bit pattern survives widening and rounding back (scale by 1),
    # including subnormals, infinities and NaN (which stays NaN).
    allh = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    for n in (len(allh), len(allh) - 3):  # full SIMD blocks, and a scalar tail
        got = allh[:n].copy()
        native.scale_(got, 1.0)
        finite = ~np.isnan(allh[:n])
        np.testing.assert_array_equal(got[finite].view(np.uint16), allh[:n][finite].view(np.uint16))
        assert np.isnan(got[~finite]).all()
    # float32 -> float16 rounding across the range: subnormal results, ties, overflow.
    for mag in (1e-7, 1e-5, 1.0, 3e4):
        for dtype in (np.dtype(np.float16), BF16):
            with np.errstate(over="ignore"):  # overflow to infinity is part of the check
                a = (rng.standard_normal(1001) * mag).astype(np.float32).astype(dtype)
                b = (rng.standard_normal(1001) * mag).astype(np.float32).astype(dtype)
                want = (a.astype(np.float32) + b.astype(np.float32)).astype(dtype)
            got = a.copy()
            native.add_(got, b)
            np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))
    edge = np.array([65504, 65504, 65504, 2**-24, 1.0], np.float16)
    native.add_(edge, np.array([16, 8, -65504, 2**-24, 2**-11], np.float16))
    np.testing.assert_array_equal(edge, np.array([np.inf, 65504, 0, 2**-23, 1.0], np.float16))
    # bfloat16 NaN must not round into infinity.
    nan = np.array([np.nan] * 9, BF16)
    native.scale_(nan, 2.0)
    assert np.isnan(nan.astype(np.float32)).all()


def check_narrow_widen() -> None:
    """narrow_/widen_ (gradient compression) against NumPy's and ml_dtypes' own casts."""
    rng = np.random.default_rng(2)
    for dtype in (np.dtype(np.float16), BF16):
        for n in SIZES:
            # magnitudes from half subnormals to float16 overflow, and the specials
            x = (rng.standard_normal(n) * np.logspace(-9, 5, n)).astype(np.float32)
            x[: min(n, 3)] = np.array([np.nan, np.inf, -0.0], np.float32)[: min(n, 3)]
            with np.errstate(over="ignore", invalid="ignore"):
                want = x.astype(dtype)
            got = np.empty(n, dtype)
            native.narrow_(got, x)
            same = ~np.isnan(x)
            np.testing.assert_array_equal(got.view(np.uint16)[same], want.view(np.uint16)[same])
            assert np.isnan(got[~same].astype(np.float32)).all()
            wide = np.empty(n, np.float32)
            native.widen_(wide, got)
            np.testing.assert_array_equal(wide[same], want.astype(np.float32)[same])
            acc = np.full(n, 0.5, np.float32)
            native.widen_(acc, got, accumulate=True)
            wide_want = want.astype(np.float32)[same]
            np.testing.assert_array_equal(acc[same], np.float32(0.5) + wide_want)


def check_optimizers() -> None:
    """Compare the optimizer kernels with NumPy float32 formulas (Keras' math)."""
    rng = np.random.default_rng(1)
    for n in SIZES:
        p = rng.standard_normal(n).astype(np.float32)
        g = rng.standard_normal(n).astype(np.float32)
        got = p.copy()
        native.sgd_(got, g, 0.1)
        np.testing.assert_allclose(got, p - np.float32(0.1) * g, rtol=1e-6, atol=1e-7)
        for nesterov in (False, True):
            v = rng.standard_normal(n).astype(np.float32)
            gp, gv = p.copy(), v.copy()
            native.momentum_(gp, g, gv, 0.05, 0.9, nesterov=nesterov)
            wv = np.float32(0.9) * v - np.float32(0.05) * g
            wp = p + (np.float32(0.9) * wv - np.float32(0.05) * g if nesterov else wv)
            np.testing.assert_allclose(gv, wv, rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(gp, wp, rtol=1e-6, atol=1e-6)


def test_add_and_scale_match_numpy():
    check_add_scale()


def test_narrow_and_widen_match_numpy_casts():
    check_narrow_widen()


def test_optimizers_match_numpy_formulas():
    check_optimizers()


def test_baseline_copy_matches_too():
    """The portable (non-AVX2) kernels, forced in a child process, pass the same checks."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import test_native_kernels as t, tfyarn.native as n;"
        "assert n.KERNEL_ISA == 'baseline', n.KERNEL_ISA;"
        "t.check_add_scale(); t.check_narrow_widen(); t.check_optimizers();"
        "print('baseline ok')"
    )
    env = dict(os.environ, TFYARN_KERNELS="baseline")
    out = subprocess.run(
        [sys.executable, "-c", code, os.path.dirname(__file__)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "baseline ok" in out.stdout


def test_kernels_on_buffers_with_dtype():
    with native.BufferPool(slab_bytes=1 << 20) as pool:
        a, b = pool.alloc(4000), pool.alloc(4000)
        a.as_array(np.float16)[:] = 1.5
        b.as_array(np.float16)[:] = 2.25
        native.add_(a, b, dtype=np.float16)
        native.scale_(a, 2.0, dtype=np.float16)
        assert (a.as_array(np.float16) == 7.5).all()
        with pytest.raises(ConfigError, match="pass dtype"):
            native.add_(a, b)
        wide = np.zeros(2000, np.float32)
        native.widen_(wide, a, dtype=np.float16)
        assert (wide == 7.5).all()
        native.narrow_(b, wide * 2, dtype=BF16)
        assert (b.as_array(BF16).astype(np.float32) == 15.0).all()
        a.release()
        b.release()


def test_bad_operands_are_clear_errors():
    f = np.zeros(10, np.float32)
    with pytest.raises(ConfigError, match="src has 11 elements, expected 10"):
        native.add_(f, np.zeros(11, np.float32))
    with pytest.raises(ConfigError, match="dtype"):
        native.add_(f, np.zeros(10, np.float16))
    with pytest.raises(ConfigError, match="float32, float16 or bfloat16"):
        native.add_(np.zeros(10), np.zeros(10))
    with pytest.raises(ConfigError, match="C-contiguous"):
        native.scale_(np.zeros((10, 10), np.float32)[:, 1], 2.0)
    with pytest.raises(ConfigError, match="half operand must be float16 or bfloat16"):
        native.narrow_(np.zeros(10, np.float32), f)
    with pytest.raises(ConfigError, match="full-precision operand must be float32"):
        native.widen_(np.zeros(10), np.zeros(10, np.float16))
    with pytest.raises(ConfigError, match="9 half elements against 10 float32"):
        native.narrow_(np.zeros(9, np.float16), f)
    ro = np.zeros(10, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ConfigError, match="read-only"):
        native.scale_(ro, 2.0)
    with pytest.raises(ConfigError, match="must be float32"):
        native.sgd_(np.zeros(10, np.float16), np.zeros(10, np.float16), 0.1)
    with pytest.raises(ConfigError, match="velocity has 9 elements"):
        native.momentum_(f, f, np.zeros(9, np.float32), 0.1, 0.9)
    with pytest.raises(ConfigError, match="step"):
        native.adam_(f, f, f.copy(), f.copy(), 0.1, 0.9, 0.999, 1e-7, 0)


@pytest.fixture(scope="module")
def keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras as k

    return k


def _keras_steps(keras, opt, p0: np.ndarray, grads: list[np.ndarray]) -> np.ndarray:
    var = keras.Variable(p0.copy())
    for g in grads:
        opt.apply_gradients([(keras.ops.convert_to_tensor(g), var)])
    return np.asarray(var.numpy())


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_matches_keras_sgd(keras, nesterov):
    rng = np.random.default_rng(2)
    p0 = rng.standard_normal(257).astype(np.float32)
    grads = [rng.standard_normal(257).astype(np.float32) for _ in range(4)]
    want = _keras_steps(
        keras, keras.optimizers.SGD(0.05, momentum=0.9, nesterov=nesterov), p0, grads
    )
    p, v = p0.copy(), np.zeros_like(p0)
    for g in grads:
        native.momentum_(p, g, v, 0.05, 0.9, nesterov=nesterov)
    np.testing.assert_allclose(p, want, rtol=1e-5, atol=1e-6)


def test_adam_matches_keras(keras):
    rng = np.random.default_rng(3)
    p0 = rng.standard_normal(257).astype(np.float32)
    grads = [rng.standard_normal(257).astype(np.float32) for _ in range(5)]
    want = _keras_steps(
        keras, keras.optimizers.Adam(0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-7), p0, grads
    )
    p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for step, g in enumerate(grads, start=1):
        native.adam_(p, g, m, v, 0.01, 0.9, 0.999, 1e-7, step)
    np.testing.assert_allclose(p, want, rtol=1e-5, atol=1e-6)


def test_adagrad_matches_keras(keras):
    rng = np.random.default_rng(4)
    p0 = rng.standard_normal(257).astype(np.float32)
    grads = [rng.standard_normal(257).astype(np.float32) for _ in range(4)]
    want = _keras_steps(
        keras,
        keras.optimizers.Adagrad(0.1, initial_accumulator_value=0.1, epsilon=1e-7),
        p0,
        grads,
    )
    p, acc = p0.copy(), np.full_like(p0, 0.1)
    for g in grads:
        native.adagrad_(p, g, acc, 0.1, 1e-7)
    np.testing.assert_allclose(p, want, rtol=1e-5, atol=1e-6)
