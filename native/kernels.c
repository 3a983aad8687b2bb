/* In-place element-wise kernels: reduce (add, scale) and optimizer updates.
 *
 * Python passes raw addresses and element counts (tfyarn/native.py validates dtypes,
 * sizes, contiguity and writability first, and keeps the arrays alive during the call);
 * the loops run with the GIL released. On x86-64 an AVX2/FMA/F16C copy of every kernel is
 * compiled next to the baseline one and chosen once at import, so the extension itself
 * needs no -march flag and runs on any x86-64.
 */
#include "tfyarn_native.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define TFY_X86_DISPATCH 1
#include <immintrin.h>
#endif

enum { DT_F32 = 0, DT_F16 = 1, DT_BF16 = 2 };

/* ---------------------------------------------------------------- conversions */

static inline float bits_to_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint32_t f32_to_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float bf16_to_f32(uint16_t h) { return bits_to_f32((uint32_t)h << 16); }

/* Round to nearest even; NaN stays a (quiet) NaN instead of rounding into infinity. */
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u = f32_to_bits(f);
    uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    uint32_t nan = (u >> 16) | 0x40u;
    return (uint16_t)((u & 0x7FFFFFFFu) > 0x7F800000u ? nan : rounded);
}

/* IEEE binary16 -> binary32, exact. */
static inline float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1Fu;
    uint32_t man = h & 0x3FFu;
    if (exp == 0) {
        /* zero or subnormal: man * 2^-24, exact in float32 */
        float mag = (float)man * 5.9604644775390625e-8f;
        return bits_to_f32(f32_to_bits(mag) | sign);
    }
    if (exp == 31) return bits_to_f32(sign | 0x7F800000u | (man << 13));
    return bits_to_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

/* binary32 -> binary16, round to nearest even, overflow to infinity. */
static inline uint16_t f32_to_f16(float f) {
    uint32_t u = f32_to_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7FFFFFFFu;
    if (a >= 0x7F800000u) /* inf or nan (keep a quiet nan) */
        return sign | 0x7C00u | (a > 0x7F800000u ? 0x200u : 0u);
    if (a >= 0x477FF000u) return sign | 0x7C00u; /* >= 65520 rounds to infinity */
    if (a < 0x38800000u) {
        /* below the smallest normal half (2^-14): the result is man * 2^-24 */
        float scaled = bits_to_f32(a) * 16777216.0f; /* exact: power-of-two scaling */
        return sign | (uint16_t)lrintf(scaled);     /* default rounding: nearest even */
    }
    uint32_t r = a + 0xFFFu + ((a >> 13) & 1u);
    return sign | (uint16_t)((r - 0x38000000u) >> 13);
}

/* ---------------------------------------------------------------- kernel copies */

#define KN(name) name##_base
#include "kernels_impl.h"
#undef KN

static void add_f16_base(uint16_t *restrict d, const uint16_t *restrict s, size_t n) {
    for (size_t i = 0; i < n; i++) d[i] = f32_to_f16(f16_to_f32(d[i]) + f16_to_f32(s[i]));
}

static void scale_f16_base(uint16_t *restrict d, float a, size_t n) {
    for (size_t i = 0; i < n; i++) d[i] = f32_to_f16(f16_to_f32(d[i]) * a);
}

static void narrow_f16_base(uint16_t *restrict d, const float *restrict s, size_t n) {
    for (size_t i = 0; i < n; i++) d[i] = f32_to_f16(s[i]);
}

static void widen_f16_base(float *restrict d, const uint16_t *restrict s, size_t n, int acc) {
    if (acc) {
        for (size_t i = 0; i < n; i++) d[i] += f16_to_f32(s[i]);
    } else {
        for (size_t i = 0; i < n; i++) d[i] = f16_to_f32(s[i]);
    }
}

#ifdef TFY_X86_DISPATCH
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define KN(name) name##_avx2
#include "kernels_impl.h"
#undef KN

static void add_f16_avx2(uint16_t *restrict d, const uint16_t *restrict s, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(d + i)));
        __m256 y = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + i)));
        _mm_storeu_si128((__m128i *)(d + i),
                         _mm256_cvtps_ph(_mm256_add_ps(x, y), _MM_FROUND_TO_NEAREST_INT));
    }
    for (; i < n; i++) d[i] = f32_to_f16(f16_to_f32(d[i]) + f16_to_f32(s[i]));
}

static void scale_f16_avx2(uint16_t *restrict d, float a, size_t n) {
    __m256 va = _mm256_set1_ps(a);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(d + i)));
        _mm_storeu_si128((__m128i *)(d + i),
                         _mm256_cvtps_ph(_mm256_mul_ps(x, va), _MM_FROUND_TO_NEAREST_INT));
    }
    for (; i < n; i++) d[i] = f32_to_f16(f16_to_f32(d[i]) * a);
}

static void narrow_f16_avx2(uint16_t *restrict d, const float *restrict s, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(d + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(s + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) d[i] = f32_to_f16(s[i]);
}

static void widen_f16_avx2(float *restrict d, const uint16_t *restrict s, size_t n, int acc) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 y = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + i)));
        _mm256_storeu_ps(d + i, acc ? _mm256_add_ps(_mm256_loadu_ps(d + i), y) : y);
    }
    for (; i < n; i++) d[i] = acc ? d[i] + f16_to_f32(s[i]) : f16_to_f32(s[i]);
}
#pragma GCC pop_options
#endif

/* The implementation chosen at import. */
static struct {
    void (*add_f32)(float *restrict, const float *restrict, size_t);
    void (*scale_f32)(float *restrict, float, size_t);
    void (*add_f16)(uint16_t *restrict, const uint16_t *restrict, size_t);
    void (*scale_f16)(uint16_t *restrict, float, size_t);
    void (*add_bf16)(uint16_t *restrict, const uint16_t *restrict, size_t);
    void (*scale_bf16)(uint16_t *restrict, float, size_t);
    void (*narrow_f16)(uint16_t *restrict, const float *restrict, size_t);
    void (*widen_f16)(float *restrict, const uint16_t *restrict, size_t, int);
    void (*narrow_bf16)(uint16_t *restrict, const float *restrict, size_t);
    void (*widen_bf16)(float *restrict, const uint16_t *restrict, size_t, int);
    void (*sgd)(float *restrict, const float *restrict, size_t, float);
    void (*momentum)(float *restrict, const float *restrict, float *restrict, size_t, float,
                     float, int);
    void (*adam)(float *restrict, const float *restrict, float *restrict, float *restrict,
                 size_t, float, float, float, float);
    void (*adagrad)(float *restrict, const float *restrict, float *restrict, size_t, float,
                    float);
    const char *isa;
} K;

#define PICK(sfx)                                                                          \
    do {                                                                                   \
        K.add_f32 = add_f32_##sfx;                                                         \
        K.scale_f32 = scale_f32_##sfx;                                                     \
        K.add_f16 = add_f16_##sfx;                                                         \
        K.scale_f16 = scale_f16_##sfx;                                                     \
        K.add_bf16 = add_bf16_##sfx;                                                       \
        K.scale_bf16 = scale_bf16_##sfx;                                                   \
        K.narrow_f16 = narrow_f16_##sfx;                                                   \
        K.widen_f16 = widen_f16_##sfx;                                                     \
        K.narrow_bf16 = narrow_bf16_##sfx;                                                 \
        K.widen_bf16 = widen_bf16_##sfx;                                                   \
        K.sgd = sgd_##sfx;                                                                 \
        K.momentum = momentum_##sfx;                                                       \
        K.adam = adam_##sfx;                                                               \
        K.adagrad = adagrad_##sfx;                                                         \
    } while (0)

/* ---------------------------------------------------------------- Python entry points */

#define ADDR(x) ((void *)(uintptr_t)(x))

static PyObject *py_add(PyObject *m, PyObject *args) {
    unsigned long long dst, src;
    Py_ssize_t n;
    int dt;
    if (!PyArg_ParseTuple(args, "KKni:add", &dst, &src, &n, &dt)) return NULL;
    if (n < 0 || dt < 0 || dt > 2) {
        PyErr_SetString(PyExc_ValueError, "add: bad element count or dtype code");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    if (dt == DT_F32) K.add_f32(ADDR(dst), ADDR(src), (size_t)n);
    else if (dt == DT_F16) K.add_f16(ADDR(dst), ADDR(src), (size_t)n);
    else K.add_bf16(ADDR(dst), ADDR(src), (size_t)n);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_scale(PyObject *m, PyObject *args) {
    unsigned long long dst;
    Py_ssize_t n;
    int dt;
    float a;
    if (!PyArg_ParseTuple(args, "Knif:scale", &dst, &n, &dt, &a)) return NULL;
    if (n < 0 || dt < 0 || dt > 2) {
        PyErr_SetString(PyExc_ValueError, "scale: bad element count or dtype code");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    if (dt == DT_F32) K.scale_f32(ADDR(dst), a, (size_t)n);
    else if (dt == DT_F16) K.scale_f16(ADDR(dst), a, (size_t)n);
    else K.scale_bf16(ADDR(dst), a, (size_t)n);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* narrow(dst_half, src_f32, n, code): dst = round-to-nearest-even(src). */
static PyObject *py_narrow(PyObject *m, PyObject *args) {
    unsigned long long dst, src;
    Py_ssize_t n;
    int dt;
    if (!PyArg_ParseTuple(args, "KKni:narrow", &dst, &src, &n, &dt)) return NULL;
    if (n < 0 || (dt != DT_F16 && dt != DT_BF16)) {
        PyErr_SetString(PyExc_ValueError, "narrow: bad element count or half dtype code");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    if (dt == DT_F16) K.narrow_f16(ADDR(dst), ADDR(src), (size_t)n);
    else K.narrow_bf16(ADDR(dst), ADDR(src), (size_t)n);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* widen(dst_f32, src_half, n, code, accumulate): dst = src, or dst += src (in float32). */
static PyObject *py_widen(PyObject *m, PyObject *args) {
    unsigned long long dst, src;
    Py_ssize_t n;
    int dt, acc;
    if (!PyArg_ParseTuple(args, "KKnip:widen", &dst, &src, &n, &dt, &acc)) return NULL;
    if (n < 0 || (dt != DT_F16 && dt != DT_BF16)) {
        PyErr_SetString(PyExc_ValueError, "widen: bad element count or half dtype code");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    if (dt == DT_F16) K.widen_f16(ADDR(dst), ADDR(src), (size_t)n, acc);
    else K.widen_bf16(ADDR(dst), ADDR(src), (size_t)n, acc);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_sgd(PyObject *m, PyObject *args) {
    unsigned long long p, g;
    Py_ssize_t n;
    float lr;
    if (!PyArg_ParseTuple(args, "KKnf:sgd", &p, &g, &n, &lr)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    K.sgd(ADDR(p), ADDR(g), (size_t)n, lr);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_momentum(PyObject *m, PyObject *args) {
    unsigned long long p, g, v;
    Py_ssize_t n;
    float lr, mom;
    int nesterov;
    if (!PyArg_ParseTuple(args, "KKKnffp:momentum", &p, &g, &v, &n, &lr, &mom, &nesterov))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    K.momentum(ADDR(p), ADDR(g), ADDR(v), (size_t)n, lr, mom, nesterov);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_adam(PyObject *m, PyObject *args) {
    unsigned long long p, g, mm, vv;
    Py_ssize_t n;
    double lr, b1, b2, eps;
    long long step;
    if (!PyArg_ParseTuple(args, "KKKKnddddL:adam", &p, &g, &mm, &vv, &n, &lr, &b1, &b2, &eps,
                          &step))
        return NULL;
    if (step < 1) {
        PyErr_Format(PyExc_ValueError, "adam: step counts from 1, got %lld", step);
        return NULL;
    }
    /* Bias correction in double: b^t underflows gracefully and stays exact for small t. */
    double alpha = lr * sqrt(1.0 - pow(b2, (double)step)) / (1.0 - pow(b1, (double)step));
    Py_BEGIN_ALLOW_THREADS
    K.adam(ADDR(p), ADDR(g), ADDR(mm), ADDR(vv), (size_t)n, (float)alpha, (float)(1.0 - b1),
           (float)(1.0 - b2), (float)eps);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_adagrad(PyObject *m, PyObject *args) {
    unsigned long long p, g, a;
    Py_ssize_t n;
    float lr, eps;
    if (!PyArg_ParseTuple(args, "KKKnff:adagrad", &p, &g, &a, &n, &lr, &eps)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    K.adagrad(ADDR(p), ADDR(g), ADDR(a), (size_t)n, lr, eps);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef kernel_methods[] = {
    {"add", py_add, METH_VARARGS, "add(dst_addr, src_addr, n, dtype_code): dst += src"},
    {"scale", py_scale, METH_VARARGS, "scale(dst_addr, n, dtype_code, alpha): dst *= alpha"},
    {"narrow", py_narrow, METH_VARARGS, "narrow(dst_half, src_f32, n, dtype_code)"},
    {"widen", py_widen, METH_VARARGS, "widen(dst_f32, src_half, n, dtype_code, accumulate)"},
    {"sgd", py_sgd, METH_VARARGS, "sgd(p, g, n, lr)"},
    {"momentum", py_momentum, METH_VARARGS, "momentum(p, g, v, n, lr, momentum, nesterov)"},
    {"adam", py_adam, METH_VARARGS, "adam(p, g, m, v, n, lr, beta1, beta2, eps, step)"},
    {"adagrad", py_adagrad, METH_VARARGS, "adagrad(p, g, accum, n, lr, eps)"},
    {NULL, NULL, 0, NULL},
};

int tfy_kernels_setup(PyObject *module) {
    PICK(base);
    K.isa = "baseline";
#ifdef TFY_X86_DISPATCH
    __builtin_cpu_init();
    /* TFYARN_KERNELS=baseline forces the portable copy (tests check both copies). */
    const char *force = getenv("TFYARN_KERNELS");
    int allow_simd = force == NULL || strcmp(force, "baseline") != 0;
    if (allow_simd && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c")) {
        PICK(avx2);
        K.isa = "avx2";
    }
#endif
    if (PyModule_AddFunctions(module, kernel_methods) < 0) return -1;
    return PyModule_AddStringConstant(module, "KERNEL_ISA", K.isa);
}
