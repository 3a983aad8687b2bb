/* Kernel bodies, compiled twice by kernels.c: once for the baseline ISA and once with
 * AVX2/FMA enabled (picked at run time). KN(name) gives each copy its own names.
 * Loops are plain and restrict-qualified so that -O3 vectorises them; half-precision
 * values are widened to float32, combined, and rounded once (round to nearest even). */

static void KN(add_f32)(float *restrict d, const float *restrict s, size_t n) {
    for (size_t i = 0; i < n; i++) d[i] += s[i];
}

static void KN(scale_f32)(float *restrict d, float a, size_t n) {
    for (size_t i = 0; i < n; i++) d[i] *= a;
}

static void KN(add_bf16)(uint16_t *restrict d, const uint16_t *restrict s, size_t n) {
    for (size_t i = 0; i < n; i++) d[i] = f32_to_bf16(bf16_to_f32(d[i]) + bf16_to_f32(s[i]));
}

static void KN(scale_bf16)(uint16_t *restrict d, float a, size_t n) {
    for (size_t i = 0; i < n; i++) d[i] = f32_to_bf16(bf16_to_f32(d[i]) * a);
}

/* Gradient compression: narrow float32 to bfloat16 for the wire, and widen it back
 * (accumulating into float32, so that a reduction never adds in half precision). */
static void KN(narrow_bf16)(uint16_t *restrict d, const float *restrict s, size_t n) {
    for (size_t i = 0; i < n; i++) d[i] = f32_to_bf16(s[i]);
}

static void KN(widen_bf16)(float *restrict d, const uint16_t *restrict s, size_t n, int acc) {
    if (acc) {
        for (size_t i = 0; i < n; i++) d[i] += bf16_to_f32(s[i]);
    } else {
        for (size_t i = 0; i < n; i++) d[i] = bf16_to_f32(s[i]);
    }
}

static void KN(sgd)(float *restrict p, const float *restrict g, size_t n, float lr) {
    for (size_t i = 0; i < n; i++) p[i] -= lr * g[i];
}

/* Keras SGD(momentum): v = m*v - lr*g; p += v (nesterov: p += m*v - lr*g). */
static void KN(momentum)(float *restrict p, const float *restrict g, float *restrict v,
                         size_t n, float lr, float m, int nesterov) {
    if (nesterov) {
        for (size_t i = 0; i < n; i++) {
            float vi = m * v[i] - lr * g[i];
            v[i] = vi;
            p[i] += m * vi - lr * g[i];
        }
    } else {
        for (size_t i = 0; i < n; i++) {
            float vi = m * v[i] - lr * g[i];
            v[i] = vi;
            p[i] += vi;
        }
    }
}

/* Keras Adam: m += (g-m)(1-b1); v += (g^2-v)(1-b2); p -= alpha*m/(sqrt(v)+eps),
 * alpha = lr*sqrt(1-b2^t)/(1-b1^t) computed by the caller. */
static void KN(adam)(float *restrict p, const float *restrict g, float *restrict m,
                     float *restrict v, size_t n, float alpha, float one_b1, float one_b2,
                     float eps) {
    for (size_t i = 0; i < n; i++) {
        float gi = g[i];
        float mi = m[i] + (gi - m[i]) * one_b1;
        float vi = v[i] + (gi * gi - v[i]) * one_b2;
        m[i] = mi;
        v[i] = vi;
        p[i] -= (mi * alpha) / (sqrtf(vi) + eps);
    }
}

/* Keras Adagrad: a += g^2; p -= lr*g/sqrt(a + eps). */
static void KN(adagrad)(float *restrict p, const float *restrict g, float *restrict a,
                        size_t n, float lr, float eps) {
    for (size_t i = 0; i < n; i++) {
        float ai = a[i] + g[i] * g[i];
        a[i] = ai;
        p[i] -= lr * g[i] / sqrtf(ai + eps);
    }
}
