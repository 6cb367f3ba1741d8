/* model/attn_ops_avx512.c — AVX-512 attention loops (model/attn_ops.h); head_dim % 16 == 0.
 * Compiled with AVX-512 F/BW/VL/DQ flags; called only when the CPU has them. */
#include <immintrin.h>
#include <stdbool.h>

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
            const __m512 x = _mm512_sub_ps(_mm512_maskz_loadu_ps(k, sc + (size_t)h * sc_stride + r),
                                           _mm512_set1_ps(lse[2 * h]));
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

/* ---- the loops over stored rows: each row converted in registers, no f32 tile ---- */

#define INLINE static inline __attribute__((always_inline))

/* Elements d .. d+32 of a stored row of type T (a constant where this is inlined), as f32. */
INLINE void ld32(uint32_t T, const uint8_t *row, int d, __m512 *lo, __m512 *hi)
{
    if (T == DT_Q8_0) { /* one block: d is a multiple of 32 */
        const block_q8_0 *b = (const block_q8_0 *)row + d / QK8_0;
        const __m512 s = _mm512_set1_ps(_cvtsh_ss(b->d));
        const __m128i q0 = _mm_loadu_si128((const __m128i *)b->qs);
        const __m128i q1 = _mm_loadu_si128((const __m128i *)(b->qs + 16));
        *lo = _mm512_mul_ps(s, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q0)));
        *hi = _mm512_mul_ps(s, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q1)));
    } else if (T == DT_F16) {
        const uint16_t *h = (const uint16_t *)row + d;
        *lo = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)h));
        *hi = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + 16)));
    } else {
        *lo = _mm512_loadu_ps((const float *)row + d);
        *hi = _mm512_loadu_ps((const float *)row + d + 16);
    }
}

/* Elements d .. d+16 of an f16 or f32 row (the last 16 of a head_dim that is not a multiple
 * of 32; q8_0 rows always are). */
INLINE __m512 ld16(uint32_t T, const uint8_t *row, int d)
{
    if (T == DT_F16)
        return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)row + d)));
    return _mm512_loadu_ps((const float *)row + d);
}

/* The sums of v[0..8), each over its 16 lanes, as [s0 .. s7]: a tree that halves the vectors
 * at each level, every lane then holding partials of two inputs (24 operations for 8 sums;
 * hsum4 takes 19 for 4). */
INLINE __m256 hsum8(const __m512 *v)
{
    /* per 128-bit lane: (a, b, a, b) from v0, v1; (c, d, c, d) ... */
    const __m512 t0 = _mm512_add_ps(_mm512_unpacklo_ps(v[0], v[1]), _mm512_unpackhi_ps(v[0], v[1]));
    const __m512 t1 = _mm512_add_ps(_mm512_unpacklo_ps(v[2], v[3]), _mm512_unpackhi_ps(v[2], v[3]));
    const __m512 t2 = _mm512_add_ps(_mm512_unpacklo_ps(v[4], v[5]), _mm512_unpackhi_ps(v[4], v[5]));
    const __m512 t3 = _mm512_add_ps(_mm512_unpacklo_ps(v[6], v[7]), _mm512_unpackhi_ps(v[6], v[7]));
    /* per 128-bit lane: (a, b, c, d) and (e, f, g, h) */
    const __m512 u0 = _mm512_add_ps(_mm512_shuffle_ps(t0, t1, _MM_SHUFFLE(1, 0, 1, 0)),
                                    _mm512_shuffle_ps(t0, t1, _MM_SHUFFLE(3, 2, 3, 2)));
    const __m512 u1 = _mm512_add_ps(_mm512_shuffle_ps(t2, t3, _MM_SHUFFLE(1, 0, 1, 0)),
                                    _mm512_shuffle_ps(t2, t3, _MM_SHUFFLE(3, 2, 3, 2)));
    /* 128-bit lanes: a-d of lanes 0+1 and 2+3 of u0, then e-h of u1's */
    const __m512 w = _mm512_add_ps(_mm512_shuffle_f32x4(u0, u1, _MM_SHUFFLE(2, 0, 2, 0)),
                                   _mm512_shuffle_f32x4(u0, u1, _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm256_add_ps(
        _mm512_castps512_ps256(_mm512_shuffle_f32x4(w, w, _MM_SHUFFLE(3, 1, 2, 0))),
        _mm512_castps512_ps256(_mm512_shuffle_f32x4(w, w, _MM_SHUFFLE(2, 0, 3, 1))));
}

/* f(T, HN, args...) with HN = hn (1 to 3) as a constant, so that each count gets its own
 * unrolled loops. */
#define BY_HEADS(hn, f, ...)                                                                       \
    do {                                                                                           \
        if ((hn) == 3)                                                                             \
            f(T, 3, __VA_ARGS__);                                                                  \
        else if ((hn) == 2)                                                                        \
            f(T, 2, __VA_ARGS__);                                                                  \
        else                                                                                       \
            f(T, 1, __VA_ARGS__);                                                                  \
    } while (0)

/* Scores of HN (1 to 3) heads against 8 rows: 24 accumulators, each row converted once and
 * the query read from L1 as the products' operand. */
INLINE void scores8(uint32_t T, int HN, const float *q, int hd, const uint8_t *k0, size_t ks,
                    __m256 vs, __m256 b, float *sc, size_t ss)
{
    __m512 a[3][8];
#pragma GCC unroll 3
    for (int j = 0; j < 3; j++)
#pragma GCC unroll 8
        for (int r = 0; r < 8; r++)
            a[j][r] = _mm512_setzero_ps();
    int d = 0;
    for (; d + 32 <= hd; d += 32)
#pragma GCC unroll 8
        for (int r = 0; r < 8; r++) {
            __m512 x0, x1;
            ld32(T, k0 + (size_t)r * ks, d, &x0, &x1);
#pragma GCC unroll 3
            for (int j = 0; j < HN; j++)
                a[j][r] = _mm512_fmadd_ps(
                    _mm512_loadu_ps(q + (size_t)j * hd + d + 16), x1,
                    _mm512_fmadd_ps(_mm512_loadu_ps(q + (size_t)j * hd + d), x0, a[j][r]));
        }
    if (d < hd)
#pragma GCC unroll 8
        for (int r = 0; r < 8; r++) {
            const __m512 x = ld16(T, k0 + (size_t)r * ks, d);
#pragma GCC unroll 3
            for (int j = 0; j < HN; j++)
                a[j][r] = _mm512_fmadd_ps(_mm512_loadu_ps(q + (size_t)j * hd + d), x, a[j][r]);
        }
#pragma GCC unroll 3
    for (int j = 0; j < HN; j++)
        _mm256_storeu_ps(sc + (size_t)j * ss, _mm256_fmadd_ps(hsum8(a[j]), vs, b));
}

/* Scores of HN (1 to 3) heads against 4 rows: 12 accumulators, each row converted once. */
INLINE void scores4(uint32_t T, int HN, const float *q, int hd, const uint8_t *k0, size_t ks,
                    __m128 vs, __m128 b, float *sc, size_t ss)
{
    const uint8_t *k1 = k0 + ks, *k2 = k1 + ks, *k3 = k2 + ks;
    __m512 a[3][4];
#pragma GCC unroll 3
    for (int j = 0; j < 3; j++)
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++)
            a[j][r] = _mm512_setzero_ps();
    int d = 0;
    for (; d + 32 <= hd; d += 32) {
        __m512 x[4][2];
        ld32(T, k0, d, &x[0][0], &x[0][1]);
        ld32(T, k1, d, &x[1][0], &x[1][1]);
        ld32(T, k2, d, &x[2][0], &x[2][1]);
        ld32(T, k3, d, &x[3][0], &x[3][1]);
#pragma GCC unroll 3
        for (int j = 0; j < HN; j++) {
            const __m512 q0 = _mm512_loadu_ps(q + (size_t)j * hd + d);
            const __m512 q1 = _mm512_loadu_ps(q + (size_t)j * hd + d + 16);
#pragma GCC unroll 4
            for (int r = 0; r < 4; r++)
                a[j][r] = _mm512_fmadd_ps(q1, x[r][1], _mm512_fmadd_ps(q0, x[r][0], a[j][r]));
        }
    }
    if (d < hd) {
        const __m512 x0 = ld16(T, k0, d), x1 = ld16(T, k1, d), x2 = ld16(T, k2, d),
                     x3 = ld16(T, k3, d);
#pragma GCC unroll 3
        for (int j = 0; j < HN; j++) {
            const __m512 qv = _mm512_loadu_ps(q + (size_t)j * hd + d);
            a[j][0] = _mm512_fmadd_ps(qv, x0, a[j][0]);
            a[j][1] = _mm512_fmadd_ps(qv, x1, a[j][1]);
            a[j][2] = _mm512_fmadd_ps(qv, x2, a[j][2]);
            a[j][3] = _mm512_fmadd_ps(qv, x3, a[j][3]);
        }
    }
#pragma GCC unroll 3
    for (int j = 0; j < HN; j++)
        _mm_storeu_ps(sc + (size_t)j * ss,
                      _mm_fmadd_ps(hsum4(a[j][0], a[j][1], a[j][2], a[j][3]), vs, b));
}

/* Scores of HN (1 to 3) heads against one row. */
INLINE void scores1(uint32_t T, int HN, const float *q, int hd, const uint8_t *k, float scale,
                    float b, float *sc, size_t ss)
{
    __m512 a[3] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    int d = 0;
    for (; d + 32 <= hd; d += 32) {
        __m512 x0, x1;
        ld32(T, k, d, &x0, &x1);
#pragma GCC unroll 3
        for (int j = 0; j < HN; j++)
            a[j] =
                _mm512_fmadd_ps(_mm512_loadu_ps(q + (size_t)j * hd + d + 16), x1,
                                _mm512_fmadd_ps(_mm512_loadu_ps(q + (size_t)j * hd + d), x0, a[j]));
    }
    if (d < hd) {
        const __m512 x = ld16(T, k, d);
#pragma GCC unroll 3
        for (int j = 0; j < HN; j++)
            a[j] = _mm512_fmadd_ps(_mm512_loadu_ps(q + (size_t)j * hd + d), x, a[j]);
    }
#pragma GCC unroll 3
    for (int j = 0; j < HN; j++)
        sc[(size_t)j * ss] = _mm512_reduce_add_ps(a[j]) * scale + b;
}

INLINE void scores_rows_t(uint32_t T, const float *q, int g, int hd, const uint8_t *K, size_t ks,
                          int n, float scale, const float *bias, float *sc, size_t ss)
{
    const __m128 vs = _mm_set1_ps(scale);
    const __m256 vs8 = _mm256_set1_ps(scale);
    for (int h = 0; h < g; h += 3) {
        const int hn = g - h < 3 ? g - h : 3;
        const float *qh = q + (size_t)h * hd;
        float *sh = sc + (size_t)h * ss;
        int r = 0;
        for (; r + 8 <= n; r += 8) {
            if (h == 0) /* the rows' lines, once for every group of heads */
                mdl_attn_row_ahead(K + (size_t)r * ks, 8 * ks);
            const __m256 b = bias ? _mm256_loadu_ps(bias + r) : _mm256_setzero_ps();
            BY_HEADS(hn, scores8, qh, hd, K + (size_t)r * ks, ks, vs8, b, sh + r, ss);
        }
        for (; r + 4 <= n; r += 4) {
            if (h == 0)
                mdl_attn_row_ahead(K + (size_t)r * ks, 4 * ks);
            const __m128 b = bias ? _mm_loadu_ps(bias + r) : _mm_setzero_ps();
            BY_HEADS(hn, scores4, qh, hd, K + (size_t)r * ks, ks, vs, b, sh + r, ss);
        }
        for (; r < n; r++) {
            const float b = bias ? bias[r] : 0.0f;
            BY_HEADS(hn, scores1, qh, hd, K + (size_t)r * ks, scale, b, sh + r, ss);
        }
    }
}

static void scores_avx512(uint32_t type, const float *q, int g, int hd, const void *K,
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

/* out[HN heads][NV * 16 dims from d] += the rows weighted by p: HN * NV accumulators held
 * across all n rows, each row's NV vectors converted once for the HN heads; ahead: the rows'
 * lines MDL_ATTN_ROW_AHEAD on are asked for (the first chunk of the first heads). */
INLINE void accum_chunk(uint32_t T, int HN, int NV, float *out, int hd, int d, const uint8_t *V,
                        size_t vs, int n, const float *p, size_t ps, bool ahead)
{
    __m512 a[3][4];
#pragma GCC unroll 3
    for (int j = 0; j < HN; j++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            a[j][v] = _mm512_loadu_ps(out + (size_t)j * hd + d + 16 * v);
    for (int r = 0; r < n; r++) {
        const uint8_t *row = V + (size_t)r * vs;
        if (ahead)
            mdl_attn_row_ahead(row, vs);
        __m512 x[4];
        if (NV == 1)
            x[0] = ld16(T, row, d);
        else
#pragma GCC unroll 2
            for (int v = 0; v < NV; v += 2)
                ld32(T, row, d + 16 * v, &x[v], &x[v + 1]);
#pragma GCC unroll 3
        for (int j = 0; j < HN; j++) {
            const __m512 w = _mm512_set1_ps(p[(size_t)j * ps + r]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++)
                a[j][v] = _mm512_fmadd_ps(w, x[v], a[j][v]);
        }
    }
#pragma GCC unroll 3
    for (int j = 0; j < HN; j++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            _mm512_storeu_ps(out + (size_t)j * hd + d + 16 * v, a[j][v]);
}

INLINE void accum_heads(uint32_t T, int HN, float *out, int hd, const uint8_t *V, size_t vs, int n,
                        const float *p, size_t ps, bool ahead)
{
    int d = 0;
    for (; d + 64 <= hd; d += 64)
        accum_chunk(T, HN, 4, out, hd, d, V, vs, n, p, ps, ahead && d == 0);
    if (d + 32 <= hd) {
        accum_chunk(T, HN, 2, out, hd, d, V, vs, n, p, ps, ahead && d == 0);
        d += 32;
    }
    if (d < hd)
        accum_chunk(T, HN, 1, out, hd, d, V, vs, n, p, ps, ahead && d == 0);
}

INLINE void accum_rows_t(uint32_t T, float *out, int g, int hd, const uint8_t *V, size_t vs, int n,
                         const float *p, size_t ps)
{
    for (int h = 0; h < g; h += 3) {
        const int hn = g - h < 3 ? g - h : 3;
        float *oh = out + (size_t)h * hd;
        BY_HEADS(hn, accum_heads, oh, hd, V, vs, n, p + (size_t)h * ps, ps, h == 0);
    }
}

static void accum_avx512(uint32_t type, float *out, int g, int hd, const void *V, size_t v_stride,
                         int n, const float *p, size_t p_stride)
{
    if (type == DT_F16)
        accum_rows_t(DT_F16, out, g, hd, V, v_stride, n, p, p_stride);
    else if (type == DT_Q8_0)
        accum_rows_t(DT_Q8_0, out, g, hd, V, v_stride, n, p, p_stride);
    else
        accum_rows_t(DT_F32, out, g, hd, V, v_stride, n, p, p_stride);
}

const mdl_attn_ops_t mdl_attn_ops_avx512 = {
    .name = "avx512",
    .dim_multiple = 16,
    .vmax = vmax_avx512,
    .exp_sum = exp_sum_avx512,
    .prob_acc = prob_acc_avx512,
    .to_f32 = to_f32_avx512,
    .scores = scores_avx512,
    .accum = accum_avx512,
};
