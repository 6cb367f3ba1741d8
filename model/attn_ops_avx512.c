/* model/attn_ops_avx512.c — AVX-512 attention loops (model/attn_ops.h); head_dim % 16 == 0.
 * Compiled with AVX-512 F/BW/VL/DQ flags; called only when the CPU has them. */
#include <immintrin.h>

#include "common/dtype.h"
#include "model/attn_ops.h"
#include "model/simd_exp.h"

/* The four horizontal sums of a, b, c, d, as one vector [sa, sb, sc, sd]. */
static inline __m128 hsum4(__m512 a, __m512 b, __m512 c, __m512 d)
{
#define HALF(x) _mm256_add_ps(_mm512_castps512_ps256(x), _mm512_extractf32x8_ps(x, 1))
    const __m256 t0 = _mm256_hadd_ps(HALF(a), HALF(b));
    const __m256 t1 = _mm256_hadd_ps(HALF(c), HALF(d));
#undef HALF
    const __m256 t2 = _mm256_hadd_ps(t0, t1);
    return _mm_add_ps(_mm256_castps256_ps128(t2), _mm256_extractf128_ps(t2, 1));
}

static void scores_avx512(const float *q, int g, int hd, const float *K, size_t k_stride, int n,
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
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (int d = 0; d < hd; d += 16) {
                const __m512 qv = _mm512_loadu_ps(qh + d);
                a0 = _mm512_fmadd_ps(qv, _mm512_loadu_ps(k0 + d), a0);
                a1 = _mm512_fmadd_ps(qv, _mm512_loadu_ps(k1 + d), a1);
                a2 = _mm512_fmadd_ps(qv, _mm512_loadu_ps(k2 + d), a2);
                a3 = _mm512_fmadd_ps(qv, _mm512_loadu_ps(k3 + d), a3);
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
            __m512 a = _mm512_setzero_ps();
            for (int d = 0; d < hd; d += 16)
                a = _mm512_fmadd_ps(_mm512_loadu_ps(qh + d), _mm512_loadu_ps(k + d), a);
            sc[(size_t)h * sc_stride + r] = _mm512_reduce_add_ps(a) * scale + b;
        }
    }
}

static void accum_avx512(float *out, int g, int hd, const float *V, size_t v_stride, int n,
                         const float *p, size_t p_stride)
{
    for (int h = 0; h < g; h++) {
        float *o = out + (size_t)h * hd;
        const float *ph = p + (size_t)h * p_stride;
        for (int d = 0; d < hd; d += 16) {
            /* four chains of rows so the FMAs do not wait on each other */
            __m512 a0 = _mm512_loadu_ps(o + d), a1 = _mm512_setzero_ps(), a2 = a1, a3 = a1;
            const float *v = V + d;
            int r = 0;
            for (; r + 4 <= n; r += 4, v += 4 * v_stride) {
                a0 = _mm512_fmadd_ps(_mm512_set1_ps(ph[r]), _mm512_loadu_ps(v), a0);
                a1 = _mm512_fmadd_ps(_mm512_set1_ps(ph[r + 1]), _mm512_loadu_ps(v + v_stride), a1);
                a2 = _mm512_fmadd_ps(_mm512_set1_ps(ph[r + 2]), _mm512_loadu_ps(v + 2 * v_stride),
                                     a2);
                a3 = _mm512_fmadd_ps(_mm512_set1_ps(ph[r + 3]), _mm512_loadu_ps(v + 3 * v_stride),
                                     a3);
            }
            for (; r < n; r++, v += v_stride)
                a0 = _mm512_fmadd_ps(_mm512_set1_ps(ph[r]), _mm512_loadu_ps(v), a0);
            _mm512_storeu_ps(o + d, _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
        }
    }
}

static float vmax_avx512(const float *p, size_t n)
{
    __m512 m = _mm512_set1_ps(p[0]);
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        m = _mm512_max_ps(m, _mm512_loadu_ps(p + i));
    if (i < n)
        m = _mm512_mask_max_ps(m, (__mmask16)((1u << (n - i)) - 1), m,
                               _mm512_maskz_loadu_ps((__mmask16)((1u << (n - i)) - 1), p + i));
    return _mm512_reduce_max_ps(m);
}

static float exp_sum_avx512(float *p, size_t n, float max)
{
    const __m512 m = _mm512_set1_ps(max);
    __m512 acc = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 y = exp16(_mm512_sub_ps(_mm512_loadu_ps(p + i), m));
        _mm512_storeu_ps(p + i, y);
        acc = _mm512_add_ps(acc, y);
    }
    if (i < n) {
        const __mmask16 k = (__mmask16)((1u << (n - i)) - 1);
        const __m512 y =
            _mm512_maskz_mov_ps(k, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, p + i), m)));
        _mm512_mask_storeu_ps(p + i, k, y);
        acc = _mm512_add_ps(acc, y);
    }
    return _mm512_reduce_add_ps(acc);
}

static void prob_acc_avx512(const float *sc, size_t sc_stride, int g, size_t n, const float *lse,
                            float *acc)
{
    for (size_t r = 0; r < n; r += 16) {
        const __mmask16 k = n - r >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - r)) - 1);
        __m512 tot = _mm512_setzero_ps();
        for (int h = 0; h < g; h++) {
            const __m512 x = _mm512_sub_ps(
                _mm512_maskz_loadu_ps(k, sc + (size_t)h * sc_stride + r), _mm512_set1_ps(lse[2 * h]));
            tot = _mm512_fmadd_ps(exp16(x), _mm512_set1_ps(lse[2 * h + 1]), tot);
        }
        _mm512_mask_storeu_ps(acc + r, k, _mm512_add_ps(_mm512_maskz_loadu_ps(k, acc + r), tot));
    }
}

static void to_f32_avx512(uint32_t type, const void *src, float *dst, size_t n)
{
    if (type == DT_F16) {
        const uint16_t *h = src;
        size_t i = 0;
        for (; i + 16 <= n; i += 16)
            _mm512_storeu_ps(dst + i,
                             _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + i))));
        for (; i < n; i++)
            dst[i] = dt_f16_to_f32(h[i]);
        return;
    }
    if (type == DT_Q8_0) {
        const block_q8_0 *b = src;
        for (size_t k = 0; k < n / QK8_0; k++, dst += QK8_0) {
            const __m512 d = _mm512_set1_ps(_cvtsh_ss(b[k].d));
            for (int j = 0; j < QK8_0; j += 16) {
                const __m128i q = _mm_loadu_si128((const __m128i *)(b[k].qs + j));
                _mm512_storeu_ps(dst + j,
                                 _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q))));
            }
        }
        return;
    }
    dt_to_f32(type, src, dst, n);
}

const mdl_attn_ops_t mdl_attn_ops_avx512 = {
    .name = "avx512",
    .dim_multiple = 16,
    .scores = scores_avx512,
    .accum = accum_avx512,
    .vmax = vmax_avx512,
    .exp_sum = exp_sum_avx512,
    .prob_acc = prob_acc_avx512,
    .to_f32 = to_f32_avx512,
};
