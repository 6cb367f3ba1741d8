/*
 * model/kernels_avx512.c — the AVX-512 path of the kernels (see kernels_impl.h).
 *
 * Compiled with AVX-512 F/BW/VL/DQ flags (plus VNNI, enabled below); kernels.c calls it
 * only on a CPU that has them. Float types: 32 elements per step in two zmm registers,
 * masked loads for a ragged end. Q8_0/Q4_0: two weight blocks per zmm, multiplied with
 * int8 activations by vpdpbusd (unsigned x signed bytes, summed into int32 lanes). The
 * weight bytes are made unsigned (q8_0: w + 128; q4_0: the raw nibble q, not q - 8) and
 * the offset is taken back exactly through the activation block sums, which the
 * quantised layout stores as the initial value of the accumulating lanes (for q4_0
 * shifted right by 4: -128 * sum / 16 = -8 * sum, exact; one layout for both types).
 * Keeping the weight bytes small matters: each lane is converted to f32 on its own, so
 * an offset as large as 128 on 0..15 would turn into rounding error of the lane sums.
 *
 *   pair layout, per pair p of blocks (2p, 2p+1), zero-padded to whole pairs:
 *     qs   int8[64]    the activation bytes of both blocks, in element order
 *     bias int32[16]   lane 0: -128 * sum(qs of block 2p), lane 8: the same for 2p+1, else 0
 *     dx   float[16]   lanes 0-7: the f32 scale of block 2p, lanes 8-15: of block 2p+1
 *   the arrays follow each other (all qs, all bias, all dx).
 *
 * K-quants (q4_K, q5_K, q6_K) take the K layout: vpdpbusd of 64 unsigned levels with 64
 * activation bytes, the int32 lanes of each sub-block multiplied by its integer scale.
 *
 * "avx512-fma" is the same path with Q8_0/Q4_0 dequantised to f32 in registers and
 * multiplied with f32 activations instead; kept to measure the int8 choice against
 * (bench_kernels compare). On the Zen 4 this was written on, one thread: Q4_0 decode
 * streaming from DRAM 1.6-1.7x faster with int8; Q8_0 decode from DRAM within 5% either
 * way (memory-bound), from L2 1.15x faster with int8; four vectors per pass (batches,
 * prefill) 1.5x faster with int8 for both.
 */
#pragma GCC target("avx512vnni")

#include "common/dtype.h"
#include "model/kernels_impl.h"
#include "model/simd_exp.h"

#include <immintrin.h>
#include <stddef.h>
#include <string.h>

#define INLINE static inline __attribute__((always_inline))

INLINE float f16_f32(uint16_t h)
{
    return _cvtsh_ss(h);
}

/* 16 stored elements of a float type (the first n of them, n <= 16), widened to f32. */
INLINE __m512 load16(int kt, const uint8_t *p, int n)
{
    if (n == 16) {
        if (kt == KT_F32)
            return _mm512_loadu_ps(p);
        __m256i h = _mm256_loadu_si256((const __m256i *)p);
        if (kt == KT_F16)
            return _mm512_cvtph_ps(h);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    __mmask16 m = (__mmask16)((1u << n) - 1);
    if (kt == KT_F32)
        return _mm512_maskz_loadu_ps(m, p);
    __m256i h = _mm256_maskz_loadu_epi16(m, p);
    if (kt == KT_F16)
        return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

INLINE __m512 xload16(const float *p, int n)
{
    return n == 16 ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), p);
}

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
        __m512 acc[KERN_MAX_NX][2];
#pragma GCC unroll 4
        for (int i = 0; i < NX; i++)
            acc[i][0] = acc[i][1] = _mm512_setzero_ps();
        int c = 0;
        for (; c + 32 <= n_cols; c += 32) {
            _mm_prefetch((const char *)w + c * esz + KERN_WEIGHT_AHEAD, _MM_HINT_T0);
            __m512 w0 = load16(kt, w + c * esz, 16), w1 = load16(kt, w + (c + 16) * esz, 16);
#pragma GCC unroll 4
            for (int i = 0; i < NX; i++) {
                acc[i][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xs[i] + c), acc[i][0]);
                acc[i][1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xs[i] + c + 16), acc[i][1]);
            }
        }
        for (; c < n_cols; c += 16) {
            int n = n_cols - c < 16 ? n_cols - c : 16;
            __m512 w0 = load16(kt, w + c * esz, n);
#pragma GCC unroll 4
            for (int i = 0; i < NX; i++)
                acc[i][0] = _mm512_fmadd_ps(w0, xload16(xs[i] + c, n), acc[i][0]);
        }
#pragma GCC unroll 4
        for (int i = 0; i < NX; i++)
            y[i * y_stride + r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[i][0], acc[i][1]));
    }
}

/* ---- quantised weights, int8 dot products ---- */

static size_t qx_pair_bytes(int n_cols)
{
    size_t npairs = (size_t)(n_cols / 32 + 1) / 2;
    return npairs * 192;
}

static void qx_pair_make(const float *x, int n_cols, uint8_t *out)
{
    int nb = n_cols / 32, npairs = (nb + 1) / 2;
    const int32_t c = 128;
    int8_t *qs = (int8_t *)out;
    int32_t *bias = (int32_t *)(out + (size_t)npairs * 64);
    float *dx = (float *)(out + (size_t)npairs * 128);
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    for (int k = 0; k < nb; k++) {
        /* the same arithmetic as kern_quant_block, 32 lanes at a time */
        __m512 a = _mm512_loadu_ps(x + 32 * k), b = _mm512_loadu_ps(x + 32 * k + 16);
        float amax = _mm512_reduce_max_ps(
            _mm512_max_ps(_mm512_and_ps(a, absmask), _mm512_and_ps(b, absmask)));
        float d = amax / 127.0f;
        __m512 id = _mm512_set1_ps(d != 0 ? 1.0f / d : 0.0f);
        __m512i qa = _mm512_cvtps_epi32(_mm512_mul_ps(a, id));
        __m512i qb = _mm512_cvtps_epi32(_mm512_mul_ps(b, id));
        _mm_storeu_si128((__m128i *)(qs + 32 * k), _mm512_cvtepi32_epi8(qa));
        _mm_storeu_si128((__m128i *)(qs + 32 * k + 16), _mm512_cvtepi32_epi8(qb));
        int32_t sum = _mm512_reduce_add_epi32(_mm512_add_epi32(qa, qb));
        _mm256_storeu_si256((__m256i *)(bias + 8 * k),
                            _mm256_setr_epi32(-c * sum, 0, 0, 0, 0, 0, 0, 0));
        _mm256_storeu_ps(dx + 8 * k, _mm256_set1_ps(d));
    }
    if (nb & 1) {
        /* the padding block of the last pair */
        memset(qs + 32 * nb, 0, 32);
        memset(bias + 8 * nb, 0, 32);
        memset(dx + 8 * nb, 0, 32);
    }
}

/* Weight bytes of blocks k and k+1 as unsigned, in element order (pair loads). */
INLINE __m512i wpair_q8(const uint8_t *blk)
{
    __m256i a = _mm256_loadu_si256((const __m256i *)(blk + 2));
    __m256i b = _mm256_loadu_si256((const __m256i *)(blk + 2 + sizeof(block_q8_0)));
    __m512i w = _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1);
    return _mm512_xor_si512(w, _mm512_set1_epi8((char)0x80));
}

/* 16 nibble bytes -> 32 values 0..15 (low nibbles first), as a ymm. */
INLINE __m256i q4_expand(const uint8_t *qs)
{
    __m128i v = _mm_loadu_si128((const __m128i *)qs);
    __m256i t = _mm256_inserti128_si256(_mm256_castsi128_si256(v), _mm_srli_epi16(v, 4), 1);
    return _mm256_and_si256(t, _mm256_set1_epi8(15));
}

INLINE __m512i wpair_q4(const uint8_t *blk)
{
    __m256i a = q4_expand(blk + 2), b = q4_expand(blk + 2 + sizeof(block_q4_0));
    return _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1);
}

/* The f16 scales of blocks k and k+1 as [d_k x 8, d_k+1 x 8], picked out of one load of
 * the pair (68 bytes for q8_0, of which the first 64 are read; 36 for q4_0, 32 read). */
INLINE __m512 dpair(const int kt, const uint8_t *blk)
{
    if (kt == KT_Q8_0) {
        const int w1 = (int)sizeof(block_q8_0) / 2;
        const __m512i idx = _mm512_castsi256_si512(
            _mm256_setr_epi16(0, 0, 0, 0, 0, 0, 0, 0, w1, w1, w1, w1, w1, w1, w1, w1));
        __m512i raw = _mm512_loadu_si512(blk);
        return _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutexvar_epi16(idx, raw)));
    }
    const int w1 = (int)sizeof(block_q4_0) / 2;
    const __m256i idx = _mm256_setr_epi16(0, 0, 0, 0, 0, 0, 0, 0, w1, w1, w1, w1, w1, w1, w1, w1);
    __m256i raw = _mm256_loadu_si256((const __m256i *)blk);
    return _mm512_cvtph_ps(_mm256_permutexvar_epi16(idx, raw));
}

INLINE void rows_quant(const int kt, const int NX, const uint8_t *W, size_t w_stride,
                       const uint8_t *x, size_t x_stride, int n_cols, float *y, size_t y_stride,
                       int r0, int r1)
{
    const int nb = n_cols / 32, npairs = (nb + 1) / 2, nfull = nb / 2;
    const size_t bsz = kt == KT_Q8_0 ? sizeof(block_q8_0) : sizeof(block_q4_0);
    const __m512i *xq[KERN_MAX_NX], *xb[KERN_MAX_NX];
    const __m512 *xd[KERN_MAX_NX];
#pragma GCC unroll 4
    for (int i = 0; i < NX; i++) {
        const uint8_t *base = x + i * x_stride;
        xq[i] = (const __m512i *)base;
        xb[i] = (const __m512i *)(base + (size_t)npairs * 64);
        xd[i] = (const __m512 *)(base + (size_t)npairs * 128);
    }
    for (int r = r0; r < r1; r++) {
        const uint8_t *row = W + r * w_stride;
        __m512 acc[KERN_MAX_NX];
#pragma GCC unroll 4
        for (int i = 0; i < NX; i++)
            acc[i] = _mm512_setzero_ps();
        for (int p = 0; p < nfull; p++) {
            const uint8_t *blk = row + 2 * p * bsz;
            _mm_prefetch((const char *)blk + KERN_WEIGHT_AHEAD, _MM_HINT_T0);
            __m512i w = kt == KT_Q8_0 ? wpair_q8(blk) : wpair_q4(blk);
            __m512 d = dpair(kt, blk);
#pragma GCC unroll 4
            for (int i = 0; i < NX; i++) {
                __m512i bias = _mm512_load_si512(xb[i] + p);
                if (kt == KT_Q4_0)
                    bias = _mm512_srai_epi32(bias, 4);
                __m512i dot = _mm512_dpbusd_epi32(bias, w, _mm512_load_si512(xq[i] + p));
                acc[i] = _mm512_fmadd_ps(_mm512_mul_ps(d, _mm512_load_ps(xd[i] + p)),
                                         _mm512_cvtepi32_ps(dot), acc[i]);
            }
        }
        if (nb & 1) {
            /* the last block alone, in the low half of the last pair */
            const uint8_t *blk = row + (size_t)(nb - 1) * bsz;
            __m256i w;
            if (kt == KT_Q8_0)
                w = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(blk + 2)),
                                     _mm256_set1_epi8((char)0x80));
            else
                w = q4_expand(blk + 2);
            uint16_t dh;
            memcpy(&dh, blk, 2);
            __m256 d = _mm256_set1_ps(f16_f32(dh));
#pragma GCC unroll 4
            for (int i = 0; i < NX; i++) {
                __m256i bias = _mm512_castsi512_si256(_mm512_load_si512(xb[i] + nfull));
                if (kt == KT_Q4_0)
                    bias = _mm256_srai_epi32(bias, 4);
                __m256i dot = _mm256_dpbusd_epi32(
                    bias, w, _mm512_castsi512_si256(_mm512_load_si512(xq[i] + nfull)));
                __m256 dx = _mm512_castps512_ps256(_mm512_load_ps(xd[i] + nfull));
                __m256 t = _mm256_mul_ps(_mm256_mul_ps(d, dx), _mm256_cvtepi32_ps(dot));
                acc[i] = _mm512_add_ps(acc[i], _mm512_zextps256_ps512(t));
            }
        }
#pragma GCC unroll 4
        for (int i = 0; i < NX; i++)
            y[i * y_stride + r] = _mm512_reduce_add_ps(acc[i]);
    }
}

/* Q8_0 packed 16 rows at a time (kernels_impl.h): for each group of 16 rows touching
 * [r0, r1), each block's 8 weight vectors are loaded once for all NX activation vectors;
 * lane l of a product accumulates row 16g+l, with each activation word broadcast (the
 * int8 products of 4 columns for 16 rows in one instruction) and the block's 16 scales
 * converted at once. Only the rows in [r0, r1) are stored. */
INLINE void rows_r16(const int kt, const int NX, const uint8_t *W, size_t w_stride,
                     const uint8_t *x, size_t x_stride, int n_cols, float *y, size_t y_stride,
                     int r0, int r1)
{
    (void)kt;
    const int nb = n_cols / 32, npairs = (nb + 1) / 2;
    const uint8_t *xq[KERN_MAX_NX];
    const int32_t *xb[KERN_MAX_NX];
    const float *xd[KERN_MAX_NX];
#pragma GCC unroll 4
    for (int i = 0; i < NX; i++) {
        const uint8_t *base = x + i * x_stride;
        xq[i] = base;
        xb[i] = (const int32_t *)(base + (size_t)npairs * 64);
        xd[i] = (const float *)(base + (size_t)npairs * 128);
    }
    for (int g = r0 / 16; g * 16 < r1; g++) {
        const uint8_t *grp = kern_r16_group(W, w_stride, g);
        __m512 acc[KERN_MAX_NX];
#pragma GCC unroll 4
        for (int i = 0; i < NX; i++)
            acc[i] = _mm512_setzero_ps();
        for (int b = 0; b < nb; b++) {
            const uint8_t *qb = grp + kern_r16_quants_at(nb, b);
            __m512i w[8];
#pragma GCC unroll 8
            for (int k = 0; k < 8; k++) {
                _mm_prefetch((const char *)qb + KERN_WEIGHT_AHEAD + 64 * k, _MM_HINT_T0);
                w[k] = _mm512_loadu_si512(qb + 64 * k);
            }
            const __m512 d =
                _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(grp + kern_r16_scales_at(b))));
            /* block b of the activations (the pair layout): quants at 32b, bias and scale
             * at index 8b; two chains of products, which one vector alone waits on */
#pragma GCC unroll 4
            for (int i = 0; i < NX; i++) {
                const int32_t *xw = (const int32_t *)(xq[i] + 32 * b);
                __m512i s0 = _mm512_set1_epi32(xb[i][8 * b]), s1 = _mm512_setzero_si512();
#pragma GCC unroll 4
                for (int k = 0; k < 8; k += 2) {
                    s0 = _mm512_dpbusd_epi32(s0, w[k], _mm512_set1_epi32(xw[k]));
                    s1 = _mm512_dpbusd_epi32(s1, w[k + 1], _mm512_set1_epi32(xw[k + 1]));
                }
                acc[i] = _mm512_fmadd_ps(_mm512_mul_ps(d, _mm512_set1_ps(xd[i][8 * b])),
                                         _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1)), acc[i]);
            }
        }
        /* the group's rows in [r0, r1) */
        const int lo = r0 > 16 * g ? r0 - 16 * g : 0, hi = r1 - 16 * g < 16 ? r1 - 16 * g : 16;
        const __mmask16 keep = (__mmask16)(((1u << hi) - 1) & ~((1u << lo) - 1));
#pragma GCC unroll 4
        for (int i = 0; i < NX; i++)
            _mm512_mask_storeu_ps(y + i * y_stride + 16 * g, keep, acc[i]);
    }
}

/* ---- quantised weights dequantised to f32 in registers (the "avx512-fma" variant) ---- */

static size_t qx_f32_bytes(int n_cols)
{
    return ((size_t)n_cols * 4 + 63) & ~(size_t)63;
}

static void qx_f32_make(const float *x, int n_cols, uint8_t *out)
{
    memcpy(out, x, (size_t)n_cols * 4);
}

/* 32 values of one block, as f32 in two zmm (before the block scale). */
INLINE void wblock_f32(const int kt, const uint8_t *blk, __m512 *a, __m512 *b)
{
    if (kt == KT_Q8_0) {
        *a = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(blk + 2))));
        *b = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(blk + 18))));
    } else {
        __m128i v = _mm_loadu_si128((const __m128i *)(blk + 2));
        __m128i m = _mm_set1_epi8(15), e = _mm_set1_epi8(8);
        __m128i lo = _mm_sub_epi8(_mm_and_si128(v, m), e);
        __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(v, 4), m), e);
        *a = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo));
        *b = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi));
    }
}

INLINE void rows_quant_fma(const int kt, const int NX, const uint8_t *W, size_t w_stride,
                           const uint8_t *x, size_t x_stride, int n_cols, float *y, size_t y_stride,
                           int r0, int r1)
{
    const int nb = n_cols / 32;
    const size_t bsz = kt == KT_Q8_0 ? sizeof(block_q8_0) : sizeof(block_q4_0);
    const float *xs[KERN_MAX_NX];
#pragma GCC unroll 4
    for (int i = 0; i < NX; i++)
        xs[i] = (const float *)(x + i * x_stride);
    for (int r = r0; r < r1; r++) {
        const uint8_t *row = W + r * w_stride;
        __m512 acc[KERN_MAX_NX];
#pragma GCC unroll 4
        for (int i = 0; i < NX; i++)
            acc[i] = _mm512_setzero_ps();
        for (int k = 0; k < nb; k++) {
            const uint8_t *blk = row + k * bsz;
            uint16_t dh;
            memcpy(&dh, blk, 2);
            __m512 d = _mm512_set1_ps(f16_f32(dh)), wa, wb;
            wblock_f32(kt, blk, &wa, &wb);
#pragma GCC unroll 4
            for (int i = 0; i < NX; i++) {
                __m512 t = _mm512_mul_ps(wa, _mm512_loadu_ps(xs[i] + 32 * k));
                t = _mm512_fmadd_ps(wb, _mm512_loadu_ps(xs[i] + 32 * k + 16), t);
                acc[i] = _mm512_fmadd_ps(d, t, acc[i]);
            }
        }
#pragma GCC unroll 4
        for (int i = 0; i < NX; i++)
            y[i * y_stride + r] = _mm512_reduce_add_ps(acc[i]);
    }
}

/* ---- K-quants, against the K layout (kernels_impl.h) ---- */

/* 64 weights of a q4_K/q5_K super-block as unsigned levels: 32 bytes of qs give sub-block 2i
 * (low nibbles, lanes 0-31) and 2i + 1 (high nibbles, lanes 32-63), in element order. */
INLINE __m512i k45_levels(const int kt, const uint8_t *blk, int i)
{
    const uint8_t *qs = blk + (kt == KT_Q5_K ? offsetof(block_q5_K, qs) : offsetof(block_q4_K, qs));
    const __m256i v = _mm256_loadu_si256((const __m256i *)(qs + 32 * i));
    const __m256i m4 = _mm256_set1_epi8(15);
    __m512i w = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(v, m4)),
                                   _mm256_and_si256(_mm256_srli_epi16(v, 4), m4), 1);
    if (kt == KT_Q5_K) {
        const __m256i h = _mm256_loadu_si256((const __m256i *)(blk + offsetof(block_q5_K, qh)));
        const __m512i hh = _mm512_inserti64x4(_mm512_castsi256_si512(h), h, 1);
        /* bit 2i of qh for the low half, 2i + 1 for the high half */
        const __m512i bit = _mm512_inserti64x4(_mm512_set1_epi8((char)(1 << (2 * i))),
                                               _mm256_set1_epi8((char)(1 << (2 * i + 1))), 1);
        const __mmask64 set = _mm512_test_epi8_mask(hh, bit);
        w = _mm512_or_si512(w, _mm512_maskz_mov_epi8(set, _mm512_set1_epi8(16)));
    }
    return w;
}

/* The K layout of NX vectors: int8 values, the scale of each 256-block, sums of each 16. */
#define K_LAYOUT(NX)                                                                               \
    const int nb = n_cols / QK_K;                                                                  \
    const int8_t *xq[KERN_MAX_NX];                                                                 \
    const float *xd[KERN_MAX_NX];                                                                  \
    const int16_t *xs[KERN_MAX_NX];                                                                \
    _Pragma("GCC unroll 4") for (int i = 0; i < NX; i++)                                           \
    {                                                                                              \
        xq[i] = (const int8_t *)(x + i * x_stride);                                                \
        xd[i] = (const float *)(x + i * x_stride + n_cols);                                        \
        xs[i] = (const int16_t *)(xd[i] + nb);                                                     \
    }

/* q4_K/q5_K rows: vpdpbusd of 64 levels with 64 activation bytes gives 16 int32 lanes, the
 * first 8 of sub-block 2i and the last 8 of 2i + 1, which are multiplied by their integer
 * scales; the mins come through the activation sums of each 16. */
INLINE void rows_k45(const int kt, const int NX, const uint8_t *W, size_t w_stride,
                     const uint8_t *x, size_t x_stride, int n_cols, float *y, size_t y_stride,
                     int r0, int r1)
{
    const size_t bsz = kt == KT_Q4_K ? sizeof(block_q4_K) : sizeof(block_q5_K);
    K_LAYOUT(NX)
    for (int r = r0; r < r1; r++) {
        const uint8_t *row = W + r * w_stride;
        __m512 acc[KERN_MAX_NX];
        float accm[KERN_MAX_NX];
#pragma GCC unroll 4
        for (int i = 0; i < NX; i++) {
            acc[i] = _mm512_setzero_ps();
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
            __m512i w[4], scv[4];
            for (int g = 0; g < 4; g++) {
                w[g] = k45_levels(kt, blk, g);
                scv[g] = _mm512_mask_blend_epi32(0xff00, _mm512_set1_epi32(sc[2 * g]),
                                                 _mm512_set1_epi32(sc[2 * g + 1]));
            }
#pragma GCC unroll 4
            for (int i = 0; i < NX; i++) {
                const int8_t *q = xq[i] + QK_K * b;
                __m512i sum = _mm512_setzero_si512();
                for (int g = 0; g < 4; g++) {
                    __m512i dp = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[g],
                                                     _mm512_loadu_si512(q + 64 * g));
                    sum = _mm512_add_epi32(sum, _mm512_mullo_epi32(dp, scv[g]));
                }
                const int16_t *bs = xs[i] + 16 * b;
                int summ = 0;
                for (int j = 0; j < 8; j++)
                    summ += mn[j] * (bs[2 * j] + bs[2 * j + 1]);
                acc[i] =
                    _mm512_fmadd_ps(_mm512_set1_ps(d * xd[i][b]), _mm512_cvtepi32_ps(sum), acc[i]);
                accm[i] += dmin * xd[i][b] * (float)summ;
            }
        }
#pragma GCC unroll 4
        for (int i = 0; i < NX; i++)
            y[i * y_stride + r] = _mm512_reduce_add_ps(acc[i]) - accm[i];
    }
}

/* q6_K rows: 64 unsigned levels (0..63) per vpdpbusd, in element order; every 4 lanes of
 * the result belong to one sub-block of 16 and are multiplied by its scale; the -32 of every
 * level comes through the activation sums of each 16. */
INLINE void rows_q6k(const int kt, const int NX, const uint8_t *W, size_t w_stride,
                     const uint8_t *x, size_t x_stride, int n_cols, float *y, size_t y_stride,
                     int r0, int r1)
{
    (void)kt;
    const __m256i m4 = _mm256_set1_epi8(15), m3 = _mm256_set1_epi8(3);
    K_LAYOUT(NX)
    for (int r = r0; r < r1; r++) {
        const block_q6_K *row = (const block_q6_K *)(W + r * w_stride);
        __m512 acc[KERN_MAX_NX];
        float accm[KERN_MAX_NX];
#pragma GCC unroll 4
        for (int i = 0; i < NX; i++) {
            acc[i] = _mm512_setzero_ps();
            accm[i] = 0;
        }
        for (int b = 0; b < nb; b++) {
            const block_q6_K *blk = row + b;
            const float d = f16_f32(blk->d);
            __m512i u[4], scv[4];
            const __m128i s16 = _mm_loadu_si128((const __m128i *)blk->scales);
            for (int c = 0; c < 2; c++) {
                const __m256i l0 = _mm256_loadu_si256((const __m256i *)(blk->ql + 64 * c));
                const __m256i l1 = _mm256_loadu_si256((const __m256i *)(blk->ql + 64 * c + 32));
                const __m256i h = _mm256_loadu_si256((const __m256i *)(blk->qh + 32 * c));
                const __m256i lo[4] = {_mm256_and_si256(l0, m4), _mm256_and_si256(l1, m4),
                                       _mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                       _mm256_and_si256(_mm256_srli_epi16(l1, 4), m4)};
                __m256i v[4];
                for (int g = 0; g < 4; g++) {
                    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(h, 2 * g), m3);
                    v[g] = _mm256_or_si256(lo[g], _mm256_slli_epi16(hi, 4));
                }
                u[2 * c] = _mm512_inserti64x4(_mm512_castsi256_si512(v[0]), v[1], 1);
                u[2 * c + 1] = _mm512_inserti64x4(_mm512_castsi256_si512(v[2]), v[3], 1);
            }
            for (int g = 0; g < 4; g++) {
                /* scales 4g..4g+3, each over 4 lanes */
                const char k = (char)(4 * g);
                const __m128i idx = _mm_setr_epi8(k, k, k, k, k + 1, k + 1, k + 1, k + 1, k + 2,
                                                  k + 2, k + 2, k + 2, k + 3, k + 3, k + 3, k + 3);
                scv[g] = _mm512_cvtepi8_epi32(_mm_shuffle_epi8(s16, idx));
            }
#pragma GCC unroll 4
            for (int i = 0; i < NX; i++) {
                const int8_t *q = xq[i] + QK_K * b;
                __m512i sum = _mm512_setzero_si512();
                for (int g = 0; g < 4; g++) {
                    __m512i dp = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u[g],
                                                     _mm512_loadu_si512(q + 64 * g));
                    sum = _mm512_add_epi32(sum, _mm512_mullo_epi32(dp, scv[g]));
                }
                const int16_t *bs = xs[i] + 16 * b;
                int corr = 0;
                for (int k = 0; k < 16; k++)
                    corr += blk->scales[k] * bs[k];
                const float dd = d * xd[i][b];
                acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(dd), _mm512_cvtepi32_ps(sum), acc[i]);
                accm[i] += dd * (float)(32 * corr);
            }
        }
#pragma GCC unroll 4
        for (int i = 0; i < NX; i++)
            y[i * y_stride + r] = _mm512_reduce_add_ps(acc[i]) - accm[i];
    }
}

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
ROWS_FN(rows_q8_0_fma, rows_quant_fma, KT_Q8_0)
ROWS_FN(rows_q4_0_fma, rows_quant_fma, KT_Q4_0)
ROWS_FN(rows_q4_K, rows_k45, KT_Q4_K)
ROWS_FN(rows_q5_K, rows_k45, KT_Q5_K)
ROWS_FN(rows_q6_K, rows_q6k, KT_Q6_K)
ROWS_FN(rows_q8_0_r16, rows_r16, KT_Q8_0_R16)

/* ---- conversion to f32 (sgemm tiles) ---- */

static void to_f32_f32(const uint8_t *src, float *dst, int n)
{
    memcpy(dst, src, (size_t)n * 4);
}

INLINE void to_f32_half(int kt, const uint8_t *src, float *dst, int n)
{
    for (int c = 0; c < n; c += 16) {
        int m = n - c < 16 ? n - c : 16;
        __m512 v = load16(kt, src + 2 * c, m);
        if (m == 16)
            _mm512_storeu_ps(dst + c, v);
        else
            _mm512_mask_storeu_ps(dst + c, (__mmask16)((1u << m) - 1), v);
    }
}

static void to_f32_f16(const uint8_t *src, float *dst, int n)
{
    to_f32_half(KT_F16, src, dst, n);
}

static void to_f32_bf16(const uint8_t *src, float *dst, int n)
{
    to_f32_half(KT_BF16, src, dst, n);
}

INLINE void to_f32_quant(const int kt, const uint8_t *src, float *dst, int n)
{
    const size_t bsz = kt == KT_Q8_0 ? sizeof(block_q8_0) : sizeof(block_q4_0);
    for (int k = 0; k < n / 32; k++) {
        const uint8_t *blk = src + k * bsz;
        uint16_t dh;
        memcpy(&dh, blk, 2);
        __m512 d = _mm512_set1_ps(f16_f32(dh)), a, b;
        wblock_f32(kt, blk, &a, &b);
        _mm512_storeu_ps(dst + 32 * k, _mm512_mul_ps(d, a));
        _mm512_storeu_ps(dst + 32 * k + 16, _mm512_mul_ps(d, b));
    }
}

static void to_f32_q8_0(const uint8_t *src, float *dst, int n)
{
    to_f32_quant(KT_Q8_0, src, dst, n);
}

static void to_f32_q4_0(const uint8_t *src, float *dst, int n)
{
    to_f32_quant(KT_Q4_0, src, dst, n);
}

static void swiglu(float *g, const float *u, int n)
{
    const __m512 one = _mm512_set1_ps(1.0f), zero = _mm512_setzero_ps();
    for (int i = 0; i < n; i += 16) {
        const __mmask16 k = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        const __m512 x = _mm512_maskz_loadu_ps(k, g + i);
        const __m512 e = exp16(_mm512_sub_ps(zero, x));
        _mm512_mask_storeu_ps(g + i, k,
                              _mm512_mul_ps(_mm512_div_ps(x, _mm512_add_ps(one, e)),
                                            _mm512_maskz_loadu_ps(k, u + i)));
    }
}

const kern_path_t kern_path_avx512 = {
    .name = "avx512",
    .rows = {rows_f32, rows_f16, rows_bf16, rows_q8_0, rows_q4_0, kern_rows_q5_0_portable,
             kern_rows_q5_1_portable, rows_q4_K, rows_q5_K, rows_q6_K},
    .to_f32 = {to_f32_f32, to_f32_f16, to_f32_bf16, to_f32_q8_0, to_f32_q4_0, kern_to_f32_q5_0,
               kern_to_f32_q5_1, kern_to_f32_q4_K, kern_to_f32_q5_K, kern_to_f32_q6_K},
    .rows[KT_Q8_0_R16] = rows_q8_0_r16,
    .qx_bytes = qx_pair_bytes,
    .qx_make = qx_pair_make,
    .swiglu = swiglu,
    .packs_q8_0 = 1,
};

const kern_path_t kern_path_avx512_fma = {
    .name = "avx512-fma",
    .rows = {rows_f32, rows_f16, rows_bf16, rows_q8_0_fma, rows_q4_0_fma, kern_rows_q5_0_portable,
             kern_rows_q5_1_portable, rows_q4_K, rows_q5_K, rows_q6_K},
    .to_f32 = {to_f32_f32, to_f32_f16, to_f32_bf16, to_f32_q8_0, to_f32_q4_0, kern_to_f32_q5_0,
               kern_to_f32_q5_1, kern_to_f32_q4_K, kern_to_f32_q5_K, kern_to_f32_q6_K},
    .rows[KT_Q8_0_R16] = kern_rows_q8_0_r16_f32,
    .qx_bytes = qx_f32_bytes,
    .qx_make = qx_f32_make,
    .swiglu = swiglu,
};
