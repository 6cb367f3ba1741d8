/* model/attn_ops_avx2.c — AVX2/FMA/F16C attention loops (model/attn_ops.h); head_dim % 8 == 0.
 * Compiled with -mavx2 -mfma -mf16c; called only when the CPU has them. */
#include <immintrin.h>
#include <math.h>

#include "common/dtype.h"
#include "model/attn_ops.h"
#include "model/simd_exp.h"

/* The four horizontal sums of a, b, c, d, as one vector [sa, sb, sc, sd]. */
static inline __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d)
{
    const __m256 t0 = _mm256_hadd_ps(a, b);
    const __m256 t1 = _mm256_hadd_ps(c, d);
    const __m256 t2 = _mm256_hadd_ps(t0, t1);
    return _mm_add_ps(_mm256_castps256_ps128(t2), _mm256_extractf128_ps(t2, 1));
}

static inline float hsum(__m256 a)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_hadd_ps(s, s);
    s = _mm_hadd_ps(s, s);
    return _mm_cvtss_f32(s);
}

static void scores_avx2(const float *q, int g, int hd, const float *K, size_t k_stride, int n,
                        float scale, const float *bias, float *sc, size_t sc_stride)
{
    const __m128 vs = _mm_set1_ps(scale);
    int r = 0;
    for (; r + 4 <= n; r += 4) {
        const float *k0 = K + (size_t)r * k_stride, *k1 = k0 + k_stride;
        const float *k2 = k1 + k_stride, *k3 = k2 + k_stride;
        const __m128 b = bias ? _mm_loadu_ps(bias + r) : _mm_setzero_ps();
        for (int h = 0; h < g; h++) {
            const float *qh = q + (size_t)h * hd;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (int d = 0; d < hd; d += 8) {
                const __m256 qv = _mm256_loadu_ps(qh + d);
                a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + d), a0);
                a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k1 + d), a1);
                a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k2 + d), a2);
                a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k3 + d), a3);
            }
            _mm_storeu_ps(sc + (size_t)h * sc_stride + r,
                          _mm_fmadd_ps(hsum4(a0, a1, a2, a3), vs, b));
        }
    }
    for (; r < n; r++) {
        const float *k = K + (size_t)r * k_stride;
        const float b = bias ? bias[r] : 0.0f;
        for (int h = 0; h < g; h++) {
            const float *qh = q + (size_t)h * hd;
            __m256 a = _mm256_setzero_ps();
            for (int d = 0; d < hd; d += 8)
                a = _mm256_fmadd_ps(_mm256_loadu_ps(qh + d), _mm256_loadu_ps(k + d), a);
            sc[(size_t)h * sc_stride + r] = hsum(a) * scale + b;
        }
    }
}

static void accum_avx2(float *out, int g, int hd, const float *V, size_t v_stride, int n,
                       const float *p, size_t p_stride)
{
    for (int h = 0; h < g; h++) {
        float *o = out + (size_t)h * hd;
        const float *ph = p + (size_t)h * p_stride;
        for (int d = 0; d < hd; d += 8) {
            /* four chains of rows so the FMAs do not wait on each other */
            __m256 a0 = _mm256_loadu_ps(o + d), a1 = _mm256_setzero_ps(), a2 = a1, a3 = a1;
            const float *v = V + d;
            int r = 0;
            for (; r + 4 <= n; r += 4, v += 4 * v_stride) {
                a0 = _mm256_fmadd_ps(_mm256_set1_ps(ph[r]), _mm256_loadu_ps(v), a0);
                a1 = _mm256_fmadd_ps(_mm256_set1_ps(ph[r + 1]), _mm256_loadu_ps(v + v_stride), a1);
                a2 = _mm256_fmadd_ps(_mm256_set1_ps(ph[r + 2]), _mm256_loadu_ps(v + 2 * v_stride),
                                     a2);
                a3 = _mm256_fmadd_ps(_mm256_set1_ps(ph[r + 3]), _mm256_loadu_ps(v + 3 * v_stride),
                                     a3);
            }
            for (; r < n; r++, v += v_stride)
                a0 = _mm256_fmadd_ps(_mm256_set1_ps(ph[r]), _mm256_loadu_ps(v), a0);
            _mm256_storeu_ps(o + d, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
        }
    }
}

static float vmax_avx2(const float *p, size_t n)
{
    __m256 m = _mm256_set1_ps(p[0]);
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        m = _mm256_max_ps(m, _mm256_loadu_ps(p + i));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    float r = _mm_cvtss_f32(h);
    for (; i < n; i++)
        r = p[i] > r ? p[i] : r;
    return r;
}

static float exp_sum_avx2(float *p, size_t n, float max)
{
    const __m256 m = _mm256_set1_ps(max);
    __m256 acc = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 y = exp8(_mm256_sub_ps(_mm256_loadu_ps(p + i), m));
        _mm256_storeu_ps(p + i, y);
        acc = _mm256_add_ps(acc, y);
    }
    if (i < n) {
        float t[8];
        size_t rest = n - i;
        for (size_t j = 0; j < 8; j++)
            t[j] = j < rest ? p[i + j] - max : -INFINITY;
        const __m256 y = exp8(_mm256_loadu_ps(t));
        _mm256_storeu_ps(t, y);
        acc = _mm256_add_ps(acc, y);
        for (size_t j = 0; j < rest; j++)
            p[i + j] = t[j];
    }
    return hsum(acc);
}

static void prob_acc_avx2(const float *sc, size_t sc_stride, int g, size_t n, const float *lse,
                          float *acc)
{
    size_t r = 0;
    for (; r + 8 <= n; r += 8) {
        __m256 tot = _mm256_setzero_ps();
        for (int h = 0; h < g; h++) {
            const __m256 x = _mm256_sub_ps(_mm256_loadu_ps(sc + (size_t)h * sc_stride + r),
                                           _mm256_set1_ps(lse[2 * h]));
            tot = _mm256_fmadd_ps(exp8(x), _mm256_set1_ps(lse[2 * h + 1]), tot);
        }
        _mm256_storeu_ps(acc + r, _mm256_add_ps(_mm256_loadu_ps(acc + r), tot));
    }
    for (; r < n; r++) {
        float tot = 0.0f;
        for (int h = 0; h < g; h++)
            tot += expf(sc[(size_t)h * sc_stride + r] - lse[2 * h]) * lse[2 * h + 1];
        acc[r] += tot;
    }
}

static void to_f32_avx2(uint32_t type, const void *src, float *dst, size_t n)
{
    if (type == DT_F16) {
        const uint16_t *h = src;
        size_t i = 0;
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
        for (; i < n; i++)
            dst[i] = dt_f16_to_f32(h[i]);
        return;
    }
    if (type == DT_Q8_0) {
        const block_q8_0 *b = src;
        for (size_t k = 0; k < n / QK8_0; k++, dst += QK8_0) {
            const __m256 d = _mm256_set1_ps(_cvtsh_ss(b[k].d));
            for (int j = 0; j < QK8_0; j += 8) {
                const __m128i q = _mm_loadl_epi64((const __m128i *)(b[k].qs + j));
                _mm256_storeu_ps(dst + j,
                                 _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q))));
            }
        }
        return;
    }
    dt_to_f32(type, src, dst, n);
}

const mdl_attn_ops_t mdl_attn_ops_avx2 = {
    .name = "avx2",
    .dim_multiple = 8,
    .scores = scores_avx2,
    .accum = accum_avx2,
    .vmax = vmax_avx2,
    .exp_sum = exp_sum_avx2,
    .prob_acc = prob_acc_avx2,
    .to_f32 = to_f32_avx2,
};
