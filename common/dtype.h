/*
 * common/dtype.h — scalar conversions between f32 and the stored number formats
 * (f16, bf16, q8_0, q4_0, and the K-quants q4_K, q5_K, q6_K of weights) that the model and
 * the KV store share: the reference
 * definitions every SIMD kernel is tested against, and what writers (make-tiny,
 * the KV store's q8_0 demotion) use. Type numbers are ggml's (model/gguf.h uses
 * the same numbers). Pure functions; any thread.
 */
#ifndef GISTD_COMMON_DTYPE_H
#define GISTD_COMMON_DTYPE_H

#include <stddef.h>
#include <stdint.h>

/* Type numbers, as in ggml and GGUF files. */
enum dt_type {
    DT_F32 = 0,
    DT_F16 = 1,
    DT_Q4_0 = 2,
    DT_Q5_0 = 6,
    DT_Q5_1 = 7,
    DT_Q8_0 = 8,
    DT_Q4_K = 12,
    DT_Q5_K = 13,
    DT_Q6_K = 14,
    DT_BF16 = 30
};

#define QK8_0 32
/* One q8_0 block: 32 int8 values and their f16 scale; value = d * qs[i]. */
typedef struct block_q8_0 {
    uint16_t d; /* f16 scale */
    int8_t qs[QK8_0];
} block_q8_0;
_Static_assert(sizeof(block_q8_0) == 34, "q8_0 block is 34 bytes");

#define QK4_0 32
/* One q4_0 block: 32 4-bit values (low nibbles first half, high nibbles second) and an f16
 * scale; value = d * (q - 8). */
typedef struct block_q4_0 {
    uint16_t d;
    uint8_t qs[QK4_0 / 2];
} block_q4_0;
_Static_assert(sizeof(block_q4_0) == 18, "q4_0 block is 18 bytes");

#define QK5_0 32
/* One q5_0 block: 32 5-bit values, low nibbles as q4_0's, the fifth bits in qh (bit j of the
 * little-endian uint32 for element j); value = d * (q - 16). */
typedef struct block_q5_0 {
    uint16_t d;
    uint8_t qh[4];
    uint8_t qs[QK5_0 / 2];
} block_q5_0;
_Static_assert(sizeof(block_q5_0) == 22, "q5_0 block is 22 bytes");

/* q5_1: q5_0 with a minimum instead of the offset; value = d * q + m. */
typedef struct block_q5_1 {
    uint16_t d, m;
    uint8_t qh[4];
    uint8_t qs[QK5_0 / 2];
} block_q5_1;
_Static_assert(sizeof(block_q5_1) == 24, "q5_1 block is 24 bytes");

/* ---- K-quants: super-blocks of 256 (ggml's block layouts, ggml-common.h) ---- */

#define QK_K 256

/* q4_K: 8 sub-blocks of 32, each with a 6-bit scale and a 6-bit min packed in scales[12]
 * (dt_k_scale_min); value = d * scale_j * q - dmin * min_j, q a nibble. qs holds 64
 * elements per 32 bytes: low nibbles are sub-block 2i, high nibbles sub-block 2i + 1. */
typedef struct block_q4_K {
    uint16_t d, dmin; /* f16 */
    uint8_t scales[12];
    uint8_t qs[QK_K / 2];
} block_q4_K;
_Static_assert(sizeof(block_q4_K) == 144, "q4_K block is 144 bytes");

/* q5_K: q4_K plus a fifth bit per element: bit 2i of qh[l] belongs to element l of the
 * 64-element group i's low half, bit 2i + 1 to element 32 + l. */
typedef struct block_q5_K {
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qh[QK_K / 8];
    uint8_t qs[QK_K / 2];
} block_q5_K;
_Static_assert(sizeof(block_q5_K) == 176, "q5_K block is 176 bytes");

/* q6_K: 16 sub-blocks of 16 with int8 scales; value = d * scales[e / 16] * (q - 32), q
 * 6 bits: per 128 elements, ql[l] holds elements l (low nibble) and 64 + l (high), ql[32 + l]
 * elements 32 + l and 96 + l, and qh[l] the top two bits of l, 32 + l, 64 + l, 96 + l. */
typedef struct block_q6_K {
    uint8_t ql[QK_K / 2];
    uint8_t qh[QK_K / 4];
    int8_t scales[QK_K / 16];
    uint16_t d;
} block_q6_K;
_Static_assert(sizeof(block_q6_K) == 210, "q6_K block is 210 bytes");

/* Scale and min of sub-block j (0..7) of a q4_K/q5_K block (ggml's get_scale_min_k4). */
static inline void dt_k_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *m)
{
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

float dt_f16_to_f32(uint16_t h);
uint16_t dt_f32_to_f16(float f); /* round to nearest even, inf/nan kept */
float dt_bf16_to_f32(uint16_t h);
uint16_t dt_f32_to_bf16(float f); /* round to nearest even, nan kept */

/* Quantize n floats (n a multiple of 32) as ggml does: d = max|x| / 127, q = round(x * (1/d)). */
void dt_quantize_q8_0(const float *x, block_q8_0 *out, size_t n);
void dt_quantize_q4_0(const float *x, block_q4_0 *out, size_t n);
/* K-quants of n floats (n a multiple of 256), with this project's own simple fit: each
 * sub-block's range (or max |x|) sets its scale, the scales are rounded to 6 (8) bits
 * against the block's largest, and every element to the nearest level of its sub-block. */
void dt_quantize_q4_K(const float *x, block_q4_K *out, size_t n);
void dt_quantize_q5_K(const float *x, block_q5_K *out, size_t n);
void dt_quantize_q6_K(const float *x, block_q6_K *out, size_t n);
/* q5_0 and q5_1 (what llama.cpp's K-quant mixes write for rows that are not whole 256-blocks),
 * quantised over each block's range, and back to f32 as ggml computes them. */
void dt_quantize_q5_0(const float *x, block_q5_0 *out, size_t n);
void dt_quantize_q5_1(const float *x, block_q5_1 *out, size_t n);
void dt_dequantize_q5_0(const block_q5_0 *x, float *out, size_t n);
void dt_dequantize_q5_1(const block_q5_1 *x, float *out, size_t n);
/* The K-quants back to f32, as ggml's dequantize_row_q*_K computes them. */
void dt_dequantize_q4_K(const block_q4_K *x, float *out, size_t n);
void dt_dequantize_q5_K(const block_q5_K *x, float *out, size_t n);
void dt_dequantize_q6_K(const block_q6_K *x, float *out, size_t n);

/* Dequantize/convert one row of n elements of a type to f32. Returns 0, or
 * ERR_UNSUPPORTED for a type it cannot convert (F32, F16, BF16, Q8_0, Q4_0, Q5_0, Q5_1,
 * Q4_K, Q5_K, Q6_K are supported). */
int dt_to_f32(uint32_t type, const void *src, float *dst, size_t n);

/* Convert n floats to a type (F32, F16, BF16, Q8_0, Q4_0, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K). 0 or
 * ERR_UNSUPPORTED. */
int dt_from_f32(uint32_t type, const float *src, void *dst, size_t n);

#endif
