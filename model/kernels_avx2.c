/*
 * model/kernels_avx2.c — the AVX2/FMA/F16C path of the kernels (see kernels_impl.h).
 *
 * Compiled with -mavx2 -mfma -mf16c; kernels.c calls it only on a CPU that has them.
 * Each row is read once and dotted with up to KERN_MAX_NX vectors; F16/BF16 are widened
 * to f32 in registers; Q8_0/Q4_0 use int8 dot products (maddubs) against the activations
 * quantised in the simple layout, one block of 32 per 256-bit register; K-quants do the
 * same against the K layout, one sub-block of 32 per register weighted by its integer scale.
 */
#include "common/dtype.h"
#include "model/kernels_impl.h"
#include "model/simd_exp.h"

#include <immintrin.h>
#include <math.h>
#include <stddef.h>
#include <string.h>

#define INLINE static inline __attribute__((always_inline))

INLINE float hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

INLINE float f16_f32(uint16_t h)
{
    return _cvtsh_ss(h);
}

INLINE float bf16_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* 8 stored elements of a float type, widened to f32. */
INLINE __m256 load8(int kt, const uint8_t *p)
{
    if (kt == KT_F32)
        return _mm256_loadu_ps((const float *)p);
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    if (kt == KT_F16)
        return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

INLINE float load1(int kt, const uint8_t *p, int c)
{
    if (kt == KT_F32)
        return ((const float *)p)[c];
    uint16_t h;
    memcpy(&h, p + 2 * c, 2);
    return kt == KT_F16 ? f16_f32(h) : bf16_f32(h);
}

/* Rows of a float type (F32, F16, BF16) against NX f32 vectors. */
INLINE void rows_float(const int kt, const int NX, const uint8_t *W, size_t w_stride,
                       const uint8_t *x, size_t x_stride, int n_cols, float *y, size_t y_stride,
                       int r0, int r1)
{
    const size_t esz = kt == KT_F32 ? 4 : 2;
    const float *xs[KERN_MAX_NX];
#pragma GCC unroll 4
    for (int i = 0; i < NX; i++)
        xs[i] = (const float *)(x + i * x_stride);
    for (int r = r0; r < r1; r++) {
        const uint8_t *w = W + r * w_stride;
        __m256 acc[KERN_MAX_NX][2];
#pragma GCC unroll 4
        for (int i = 0; i < NX; i++)
            acc[i][0] = acc[i][1] = _mm256_setzero_ps();
        int c = 0;
        for (; c + 16 <= n_cols; c += 16) {
            __m256 w0 = load8(kt, w + c * esz), w1 = load8(kt, w + (c + 8) * esz);
#pragma GCC unroll 4
            for (int i = 0; i < NX; i++) {
                acc[i][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xs[i] + c), acc[i][0]);
                acc[i][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xs[i] + c + 8), acc[i][1]);
            }
        }
        if (c + 8 <= n_cols) {
            __m256 w0 = load8(kt, w + c * esz);
#pragma GCC unroll 4
            for (int i = 0; i < NX; i++)
                acc[i][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xs[i] + c), acc[i][0]);
            c += 8;
        }
#pragma GCC unroll 4
        for (int i = 0; i < NX; i++) {
            float s = hsum(_mm256_add_ps(acc[i][0], acc[i][1]));
            for (int t = c; t < n_cols; t++)
                s += load1(kt, w, t) * xs[i][t];
            y[i * y_stride + r] = s;
        }
    }
}

/* One q8_0/q4_0 weight block as 32 bytes for maddubs: q8_0 gives |w| (unsigned) and its
 * signs are moved onto x; q4_0 gives the raw nibbles 0..15 and the -8 is applied through
 * the activation block sums. */
INLINE __m256i q4_nibbles(const uint8_t *qs)
{
    __m128i v = _mm_loadu_si128((const __m128i *)qs);
    __m128i m = _mm_set1_epi8(15);
    __m128i lo = _mm_and_si128(v, m);
    __m128i hi = _mm_and_si128(_mm_srli_epi16(v, 4), m);
    return _mm256_set_m128i(hi, lo);
}

INLINE void rows_quant(const int kt, const int NX, const uint8_t *W, size_t w_stride,
                       const uint8_t *x, size_t x_stride, int n_cols, float *y, size_t y_stride,
                       int r0, int r1)
{
    const int nb = n_cols / 32;
    const size_t bsz = kt == KT_Q8_0 ? sizeof(block_q8_0) : sizeof(block_q4_0);
    const __m256i ones = _mm256_set1_epi16(1);
    const int8_t *xq[KERN_MAX_NX];
    const float *xd[KERN_MAX_NX];
    const int32_t *xsum[KERN_MAX_NX];
#pragma GCC unroll 4
    for (int i = 0; i < NX; i++) {
        xq[i] = (const int8_t *)(x + i * x_stride);
        xd[i] = (const float *)(x + i * x_stride + n_cols);
        xsum[i] = (const int32_t *)(xd[i] + nb);
    }
    for (int r = r0; r < r1; r++) {
        const uint8_t *row = W + r * w_stride;
        __m256 acc[KERN_MAX_NX];
#pragma GCC unroll 4
        for (int i = 0; i < NX; i++)
            acc[i] = _mm256_setzero_ps();
        for (int k = 0; k < nb; k++) {
            const uint8_t *blk = row + k * bsz;
            _mm_prefetch((const char *)blk + KERN_WEIGHT_AHEAD, _MM_HINT_T0);
            uint16_t dh;
            memcpy(&dh, blk, 2);
            float dw = f16_f32(dh);
            __m256i wv, wabs = _mm256_setzero_si256();
            if (kt == KT_Q8_0) {
                wv = _mm256_loadu_si256((const __m256i *)(blk + 2));
                wabs = _mm256_sign_epi8(wv, wv);
            } else {
                wv = q4_nibbles(blk + 2);
            }
#pragma GCC unroll 4
            for (int i = 0; i < NX; i++) {
                __m256i xv = _mm256_loadu_si256((const __m256i *)(xq[i] + 32 * k));
                __m256i p16;
                if (kt == KT_Q8_0)
                    p16 = _mm256_maddubs_epi16(wabs, _mm256_sign_epi8(xv, wv));
                else
                    p16 = _mm256_maddubs_epi16(wv, xv);
                __m256i p32 = _mm256_madd_epi16(p16, ones);
                if (kt == KT_Q4_0)
                    p32 = _mm256_add_epi32(
                        p32, _mm256_zextsi128_si256(_mm_cvtsi32_si128(-8 * xsum[i][k])));
                acc[i] =
                    _mm256_fmadd_ps(_mm256_set1_ps(dw * xd[i][k]), _mm256_cvtepi32_ps(p32), acc[i]);
            }
        }
#pragma GCC unroll 4
        for (int i = 0; i < NX; i++)
            y[i * y_stride + r] = hsum(acc[i]);
    }
}

/* ---- K-quants, against the K layout ---- */

/* The levels of one q4_K/q5_K super-block: sub-block j's 32 levels as bytes in w[j]. */
INLINE void k45_levels(const int kt, const uint8_t *blk, __m256i w[8])
{
    const __m256i m4 = _mm256_set1_epi8(15);
    const uint8_t *qs = blk + (kt == KT_Q5_K ? offsetof(block_q5_K, qs) : offsetof(block_q4_K, qs));
    __m256i hb = _mm256_setzero_si256();
    if (kt == KT_Q5_K)
        hb = _mm256_loadu_si256((const __m256i *)(blk + offsetof(block_q5_K, qh)));
    for (int i = 0; i < 4; i++) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(qs + 32 * i));
        w[2 * i] = _mm256_and_si256(v, m4);
        w[2 * i + 1] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
        if (kt == KT_Q5_K) {
            for (int h = 0; h < 2; h++) {
                const __m256i bit = _mm256_set1_epi8((char)(1 << (2 * i + h)));
                __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(hb, bit), bit);
                w[2 * i + h] =
                    _mm256_or_si256(w[2 * i + h], _mm256_and_si256(set, _mm256_set1_epi8(16)));
            }
        }
    }
}

/* q4_K/q5_K rows: per super-block, sum_j scale_j * (levels . x) in int32 lanes (maddubs,
 * then madd by the scale), and the mins through the activation sums of each 16. */
INLINE void rows_k45(const int kt, const int NX, const uint8_t *W, size_t w_stride,
                     const uint8_t *x, size_t x_stride, int n_cols, float *y, size_t y_stride,
                     int r0, int r1)
{
    const int nb = n_cols / QK_K;
    const size_t bsz = kt == KT_Q4_K ? sizeof(block_q4_K) : sizeof(block_q5_K);
    const int8_t *xq[KERN_MAX_NX];
    const float *xd[KERN_MAX_NX];
    const int16_t *xs[KERN_MAX_NX];
#pragma GCC unroll 4
    for (int i = 0; i < NX; i++) {
        xq[i] = (const int8_t *)(x + i * x_stride);
        xd[i] = (const float *)(x + i * x_stride + n_cols);
        xs[i] = (const int16_t *)(xd[i] + nb);
    }
    for (int r = r0; r < r1; r++) {
        const uint8_t *row = W + r * w_stride;
        __m256 acc[KERN_MAX_NX];
        float accm[KERN_MAX_NX];
#pragma GCC unroll 4
        for (int i = 0; i < NX; i++) {
            acc[i] = _mm256_setzero_ps();
            accm[i] = 0;
        }
        for (int b = 0; b < nb; b++) {
            const uint8_t *blk = row + b * bsz;
            uint16_t dh, dmh;
            memcpy(&dh, blk, 2);
            memcpy(&dmh, blk + 2, 2);
            const float d = f16_f32(dh), dmin = f16_f32(dmh);
            uint8_t sc[8], mn[8];
            for (int j = 0; j < 8; j++)
                dt_k_scale_min(j, blk + 4, &sc[j], &mn[j]);
            __m256i w[8];
            k45_levels(kt, blk, w);
#pragma GCC unroll 4
            for (int i = 0; i < NX; i++) {
                const int8_t *q = xq[i] + QK_K * b;
                __m256i sum = _mm256_setzero_si256();
                for (int j = 0; j < 8; j++) {
                    __m256i p16 = _mm256_maddubs_epi16(
                        w[j], _mm256_loadu_si256((const __m256i *)(q + 32 * j)));
                    sum = _mm256_add_epi32(sum, _mm256_madd_epi16(p16, _mm256_set1_epi16(sc[j])));
                }
                const int16_t *bs = xs[i] + 16 * b;
                int summ = 0;
                for (int j = 0; j < 8; j++)
                    summ += mn[j] * (bs[2 * j] + bs[2 * j + 1]);
                acc[i] =
                    _mm256_fmadd_ps(_mm256_set1_ps(d * xd[i][b]), _mm256_cvtepi32_ps(sum), acc[i]);
                accm[i] += dmin * xd[i][b] * (float)summ;
            }
        }
#pragma GCC unroll 4
        for (int i = 0; i < NX; i++)
            y[i * y_stride + r] = hsum(acc[i]) - accm[i];
    }
}

/* q6_K rows: the unsigned levels (0..63) against x by maddubs, each half of a register
 * weighted by its sub-block's scale (madd), the -32 of every level through the sums of 16. */
INLINE void rows_q6k(const int kt, const int NX, const uint8_t *W, size_t w_stride,
                     const uint8_t *x, size_t x_stride, int n_cols, float *y, size_t y_stride,
                     int r0, int r1)
{
    (void)kt;
    const int nb = n_cols / QK_K;
    const __m256i m4 = _mm256_set1_epi8(15), m3 = _mm256_set1_epi8(3);
    const int8_t *xq[KERN_MAX_NX];
    const float *xd[KERN_MAX_NX];
    const int16_t *xs[KERN_MAX_NX];
#pragma GCC unroll 4
    for (int i = 0; i < NX; i++) {
        xq[i] = (const int8_t *)(x + i * x_stride);
        xd[i] = (const float *)(x + i * x_stride + n_cols);
        xs[i] = (const int16_t *)(xd[i] + nb);
    }
    for (int r = r0; r < r1; r++) {
        const block_q6_K *row = (const block_q6_K *)(W + r * w_stride);
        __m256 acc[KERN_MAX_NX];
        float accm[KERN_MAX_NX];
#pragma GCC unroll 4
        for (int i = 0; i < NX; i++) {
            acc[i] = _mm256_setzero_ps();
            accm[i] = 0;
        }
        for (int b = 0; b < nb; b++) {
            const block_q6_K *blk = row + b;
            const float d = f16_f32(blk->d);
            __m256i u[8], scv[8];
            for (int c = 0; c < 2; c++) {
                const __m256i l0 = _mm256_loadu_si256((const __m256i *)(blk->ql + 64 * c));
                const __m256i l1 = _mm256_loadu_si256((const __m256i *)(blk->ql + 64 * c + 32));
                const __m256i h = _mm256_loadu_si256((const __m256i *)(blk->qh + 32 * c));
                const __m256i lo[4] = {_mm256_and_si256(l0, m4), _mm256_and_si256(l1, m4),
                                       _mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                       _mm256_and_si256(_mm256_srli_epi16(l1, 4), m4)};
                for (int g = 0; g < 4; g++) {
                    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(h, 2 * g), m3);
                    u[4 * c + g] = _mm256_or_si256(lo[g], _mm256_slli_epi16(hi, 4));
                    const int k = 8 * c + 2 * g;
                    scv[4 * c + g] = _mm256_set_m128i(_mm_set1_epi16(blk->scales[k + 1]),
                                                      _mm_set1_epi16(blk->scales[k]));
                }
            }
#pragma GCC unroll 4
            for (int i = 0; i < NX; i++) {
                const int8_t *q = xq[i] + QK_K * b;
                __m256i sum = _mm256_setzero_si256();
                for (int g = 0; g < 8; g++) {
                    __m256i p16 = _mm256_maddubs_epi16(
                        u[g], _mm256_loadu_si256((const __m256i *)(q + 32 * g)));
                    sum = _mm256_add_epi32(sum, _mm256_madd_epi16(p16, scv[g]));
                }
                const int16_t *bs = xs[i] + 16 * b;
                int corr = 0;
                for (int k = 0; k < 16; k++)
                    corr += blk->scales[k] * bs[k];
                const float dd = d * xd[i][b];
                acc[i] = _mm256_fmadd_ps(_mm256_set1_ps(dd), _mm256_cvtepi32_ps(sum), acc[i]);
                accm[i] += dd * (float)(32 * corr);
            }
        }
#pragma GCC unroll 4
        for (int i = 0; i < NX; i++)
            y[i * y_stride + r] = hsum(acc[i]) - accm[i];
    }
}

/* Instantiates a rows function of a type for each NX (the loops then unroll). */
#define ROWS_FN(name, body, kt)                                                                    \
    static void name(const uint8_t *W, size_t w_stride, const uint8_t *x, size_t x_stride, int nx, \
                     int n_cols, float *y, size_t y_stride, int r0, int r1)                        \
    {                                                                                              \
        switch (nx) {                                                                              \
        case 1:                                                                                    \
            body(kt, 1, W, w_stride, x, x_stride, n_cols, y, y_stride, r0, r1);                    \
            break;                                                                                 \
        case 2:                                                                                    \
            body(kt, 2, W, w_stride, x, x_stride, n_cols, y, y_stride, r0, r1);                    \
            break;                                                                                 \
        case 3:                                                                                    \
            body(kt, 3, W, w_stride, x, x_stride, n_cols, y, y_stride, r0, r1);                    \
            break;                                                                                 \
        default:                                                                                   \
            body(kt, 4, W, w_stride, x, x_stride, n_cols, y, y_stride, r0, r1);                    \
            break;                                                                                 \
        }                                                                                          \
    }

ROWS_FN(rows_f32, rows_float, KT_F32)
ROWS_FN(rows_f16, rows_float, KT_F16)
ROWS_FN(rows_bf16, rows_float, KT_BF16)
ROWS_FN(rows_q8_0, rows_quant, KT_Q8_0)
ROWS_FN(rows_q4_0, rows_quant, KT_Q4_0)
ROWS_FN(rows_q4_K, rows_k45, KT_Q4_K)
ROWS_FN(rows_q5_K, rows_k45, KT_Q5_K)
ROWS_FN(rows_q6_K, rows_q6k, KT_Q6_K)

/* ---- conversion to f32 (sgemm tiles) ---- */

static void to_f32_f32(const uint8_t *src, float *dst, int n)
{
    memcpy(dst, src, (size_t)n * 4);
}

INLINE void to_f32_half(int kt, const uint8_t *src, float *dst, int n)
{
    int c = 0;
    for (; c + 8 <= n; c += 8)
        _mm256_storeu_ps(dst + c, load8(kt, src + 2 * c));
    for (; c < n; c++)
        dst[c] = load1(kt, src, c);
}

static void to_f32_f16(const uint8_t *src, float *dst, int n)
{
    to_f32_half(KT_F16, src, dst, n);
}

static void to_f32_bf16(const uint8_t *src, float *dst, int n)
{
    to_f32_half(KT_BF16, src, dst, n);
}

static void to_f32_q8_0(const uint8_t *src, float *dst, int n)
{
    for (int k = 0; k < n / 32; k++) {
        const uint8_t *blk = src + k * sizeof(block_q8_0);
        uint16_t dh;
        memcpy(&dh, blk, 2);
        __m256 d = _mm256_set1_ps(f16_f32(dh));
        for (int j = 0; j < 4; j++) {
            __m128i q = _mm_loadl_epi64((const __m128i *)(blk + 2 + 8 * j));
            __m256 v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
            _mm256_storeu_ps(dst + 32 * k + 8 * j, _mm256_mul_ps(d, v));
        }
    }
}

static void to_f32_q4_0(const uint8_t *src, float *dst, int n)
{
    const __m256i eight = _mm256_set1_epi8(8);
    for (int k = 0; k < n / 32; k++) {
        const uint8_t *blk = src + k * sizeof(block_q4_0);
        uint16_t dh;
        memcpy(&dh, blk, 2);
        __m256 d = _mm256_set1_ps(f16_f32(dh));
        __m256i q = _mm256_sub_epi8(q4_nibbles(blk + 2), eight);
        __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
        __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
        for (int j = 0; j < 4; j++) {
            __m256 v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(parts[j]));
            _mm256_storeu_ps(dst + 32 * k + 8 * j, _mm256_mul_ps(d, v));
        }
    }
}

/* The simple layout of kernels_impl.h, with the arithmetic of kern_quant_block. */
static void qx_make(const float *x, int n_cols, uint8_t *out)
{
    int nb = n_cols / 32;
    int8_t *qs = (int8_t *)out;
    float *dx = (float *)(out + n_cols);
    int32_t *sum = (int32_t *)(dx + nb);
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int k = 0; k < nb; k++) {
        __m256 v[4];
        for (int j = 0; j < 4; j++)
            v[j] = _mm256_loadu_ps(x + 32 * k + 8 * j);
        __m256 m = _mm256_max_ps(
            _mm256_max_ps(_mm256_and_ps(v[0], absmask), _mm256_and_ps(v[1], absmask)),
            _mm256_max_ps(_mm256_and_ps(v[2], absmask), _mm256_and_ps(v[3], absmask)));
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        float d = _mm_cvtss_f32(h) / 127.0f;
        __m256 id = _mm256_set1_ps(d != 0 ? 1.0f / d : 0.0f);
        __m256i q[4];
        for (int j = 0; j < 4; j++)
            q[j] = _mm256_cvtps_epi32(_mm256_mul_ps(v[j], id));
        __m256i s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
        sum[k] = _mm_cvtsi128_si32(s4);
        /* int32 -> int16 -> int8 packs work within 128-bit lanes: put the lanes back */
        __m256i p16a = _mm256_packs_epi32(q[0], q[1]), p16b = _mm256_packs_epi32(q[2], q[3]);
        __m256i p8 = _mm256_packs_epi16(p16a, p16b);
        p8 = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)(qs + 32 * k), p8);
        dx[k] = d;
    }
}

static void swiglu(float *g, const float *u, int n)
{
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 x = _mm256_loadu_ps(g + i);
        const __m256 e = exp8(_mm256_sub_ps(zero, x));
        _mm256_storeu_ps(
            g + i, _mm256_mul_ps(_mm256_div_ps(x, _mm256_add_ps(one, e)), _mm256_loadu_ps(u + i)));
    }
    for (; i < n; i++)
        g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

const kern_path_t kern_path_avx2 = {
    .name = "avx2",
    .rows = {rows_f32, rows_f16, rows_bf16, rows_q8_0, rows_q4_0, kern_rows_q5_0_portable,
             kern_rows_q5_1_portable, rows_q4_K, rows_q5_K, rows_q6_K},
    .to_f32 = {to_f32_f32, to_f32_f16, to_f32_bf16, to_f32_q8_0, to_f32_q4_0, kern_to_f32_q5_0,
               kern_to_f32_q5_1, kern_to_f32_q4_K, kern_to_f32_q5_K, kern_to_f32_q6_K},
    .rows[KT_Q8_0_R16] = kern_rows_q8_0_r16_simple,
    .qx_bytes = kern_qx_simple_bytes,
    .qx_make = qx_make,
    .swiglu = swiglu,
};
