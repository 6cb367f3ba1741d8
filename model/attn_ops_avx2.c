/* model/attn_ops_avx2.c — AVX2/FMA/F16C attention loops (model/attn_ops.h); head_dim % 8 == 0.
 * Compiled with -mavx2 -mfma -mf16c; called only when the CPU has them. */
#include <immintrin.h>
#include <math.h>
#include <stdbool.h>

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

/* ---- the loops over stored rows: each row converted in registers, no f32 tile ---- */

#define INLINE static inline __attribute__((always_inline))

/* Elements d .. d+8 of a stored row of type T (a constant where this is inlined), as f32. */
INLINE __m256 ld8(uint32_t T, const uint8_t *row, int d)
{
    if (T == DT_Q8_0) {
        const block_q8_0 *b = (const block_q8_0 *)row + d / QK8_0;
        const __m128i q = _mm_loadl_epi64((const __m128i *)(b->qs + d % QK8_0));
        return _mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(b->d)),
                             _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)));
    }
    if (T == DT_F16)
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + d)));
    return _mm256_loadu_ps((const float *)row + d);
}

/* Scores of HN (1 or 2) heads against 4 rows: 8 accumulators, each row converted once. */
INLINE void scores4(uint32_t T, int HN, const float *q, int hd, const uint8_t *k0, size_t ks,
                    __m128 vs, __m128 b, float *sc, size_t ss)
{
    const uint8_t *k1 = k0 + ks, *k2 = k1 + ks, *k3 = k2 + ks;
    __m256 a[2][4];
#pragma GCC unroll 2
    for (int j = 0; j < 2; j++)
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++)
            a[j][r] = _mm256_setzero_ps();
    for (int d = 0; d < hd; d += 8) {
        const __m256 x0 = ld8(T, k0, d), x1 = ld8(T, k1, d), x2 = ld8(T, k2, d), x3 = ld8(T, k3, d);
#pragma GCC unroll 2
        for (int j = 0; j < HN; j++) {
            const __m256 qv = _mm256_loadu_ps(q + (size_t)j * hd + d);
            a[j][0] = _mm256_fmadd_ps(qv, x0, a[j][0]);
            a[j][1] = _mm256_fmadd_ps(qv, x1, a[j][1]);
            a[j][2] = _mm256_fmadd_ps(qv, x2, a[j][2]);
            a[j][3] = _mm256_fmadd_ps(qv, x3, a[j][3]);
        }
    }
#pragma GCC unroll 2
    for (int j = 0; j < HN; j++)
        _mm_storeu_ps(sc + (size_t)j * ss,
                      _mm_fmadd_ps(hsum4(a[j][0], a[j][1], a[j][2], a[j][3]), vs, b));
}

/* Scores of HN (1 or 2) heads against one row. */
INLINE void scores1(uint32_t T, int HN, const float *q, int hd, const uint8_t *k, float scale,
                    float b, float *sc, size_t ss)
{
    __m256 a[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int d = 0; d < hd; d += 8) {
        const __m256 x = ld8(T, k, d);
#pragma GCC unroll 2
        for (int j = 0; j < HN; j++)
            a[j] = _mm256_fmadd_ps(_mm256_loadu_ps(q + (size_t)j * hd + d), x, a[j]);
    }
#pragma GCC unroll 2
    for (int j = 0; j < HN; j++)
        sc[(size_t)j * ss] = hsum(a[j]) * scale + b;
}

INLINE void scores_rows_t(uint32_t T, const float *q, int g, int hd, const uint8_t *K, size_t ks,
                          int n, float scale, const float *bias, float *sc, size_t ss)
{
    const __m128 vs = _mm_set1_ps(scale);
    for (int h = 0; h < g; h += 2) {
        const float *qh = q + (size_t)h * hd;
        float *sh = sc + (size_t)h * ss;
        const bool two = g - h >= 2;
        int r = 0;
        for (; r + 4 <= n; r += 4) {
            if (h == 0) /* the rows' lines, once for every pair of heads */
                mdl_attn_row_ahead(K + (size_t)r * ks, 4 * ks);
            const __m128 b = bias ? _mm_loadu_ps(bias + r) : _mm_setzero_ps();
            if (two)
                scores4(T, 2, qh, hd, K + (size_t)r * ks, ks, vs, b, sh + r, ss);
            else
                scores4(T, 1, qh, hd, K + (size_t)r * ks, ks, vs, b, sh + r, ss);
        }
        for (; r < n; r++) {
            const float b = bias ? bias[r] : 0.0f;
            if (two)
                scores1(T, 2, qh, hd, K + (size_t)r * ks, scale, b, sh + r, ss);
            else
                scores1(T, 1, qh, hd, K + (size_t)r * ks, scale, b, sh + r, ss);
        }
    }
}

static void scores_avx2(uint32_t type, const float *q, int g, int hd, const void *K,
                        size_t k_stride, int n, float scale, const float *bias, float *sc,
                        size_t sc_stride)
{
    if (type == DT_F16)
        scores_rows_t(DT_F16, q, g, hd, K, k_stride, n, scale, bias, sc, sc_stride);
    else if (type == DT_Q8_0)
        scores_rows_t(DT_Q8_0, q, g, hd, K, k_stride, n, scale, bias, sc, sc_stride);
    else
        scores_rows_t(DT_F32, q, g, hd, K, k_stride, n, scale, bias, sc, sc_stride);
}

/* out[HN (1 or 2) heads][NV * 8 dims from d] += the rows weighted by p: HN * NV accumulators
 * held across all n rows, each row's NV vectors converted once for the HN heads; ahead: the
 * rows' lines MDL_ATTN_ROW_AHEAD on are asked for (the first chunk of the first heads). */
INLINE void accum_chunk(uint32_t T, int HN, int NV, float *out, int hd, int d, const uint8_t *V,
                        size_t vs, int n, const float *p, size_t ps, bool ahead)
{
    __m256 a[2][4];
#pragma GCC unroll 2
    for (int j = 0; j < HN; j++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            a[j][v] = _mm256_loadu_ps(out + (size_t)j * hd + d + 8 * v);
    for (int r = 0; r < n; r++) {
        const uint8_t *row = V + (size_t)r * vs;
        if (ahead)
            mdl_attn_row_ahead(row, vs);
        __m256 x[4];
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            x[v] = ld8(T, row, d + 8 * v);
#pragma GCC unroll 2
        for (int j = 0; j < HN; j++) {
            const __m256 w = _mm256_set1_ps(p[(size_t)j * ps + r]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++)
                a[j][v] = _mm256_fmadd_ps(w, x[v], a[j][v]);
        }
    }
#pragma GCC unroll 2
    for (int j = 0; j < HN; j++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            _mm256_storeu_ps(out + (size_t)j * hd + d + 8 * v, a[j][v]);
}

INLINE void accum_heads(uint32_t T, int HN, float *out, int hd, const uint8_t *V, size_t vs, int n,
                        const float *p, size_t ps, bool ahead)
{
    int d = 0;
    for (; d + 32 <= hd; d += 32)
        accum_chunk(T, HN, 4, out, hd, d, V, vs, n, p, ps, ahead && d == 0);
    for (; d < hd; d += 8)
        accum_chunk(T, HN, 1, out, hd, d, V, vs, n, p, ps, ahead && d == 0);
}

INLINE void accum_rows_t(uint32_t T, float *out, int g, int hd, const uint8_t *V, size_t vs, int n,
                         const float *p, size_t ps)
{
    for (int h = 0; h < g; h += 2) {
        float *oh = out + (size_t)h * hd;
        const float *ph = p + (size_t)h * ps;
        if (g - h >= 2)
            accum_heads(T, 2, oh, hd, V, vs, n, ph, ps, h == 0);
        else
            accum_heads(T, 1, oh, hd, V, vs, n, ph, ps, h == 0);
    }
}

static void accum_avx2(uint32_t type, float *out, int g, int hd, const void *V, size_t v_stride,
                       int n, const float *p, size_t p_stride)
{
    if (type == DT_F16)
        accum_rows_t(DT_F16, out, g, hd, V, v_stride, n, p, p_stride);
    else if (type == DT_Q8_0)
        accum_rows_t(DT_Q8_0, out, g, hd, V, v_stride, n, p, p_stride);
    else
        accum_rows_t(DT_F32, out, g, hd, V, v_stride, n, p, p_stride);
}

const mdl_attn_ops_t mdl_attn_ops_avx2 = {
    .name = "avx2",
    .dim_multiple = 8,
    .vmax = vmax_avx2,
    .exp_sum = exp_sum_avx2,
    .prob_acc = prob_acc_avx2,
    .to_f32 = to_f32_avx2,
    .scores = scores_avx2,
    .accum = accum_avx2,
};
