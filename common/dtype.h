/*
 * common/dtype.h — scalar conversions between f32 and the stored number formats
 * (f16, bf16, q8_0, q4_0) that the model and the KV store share: the reference
 * definitions every SIMD kernel is tested against, and what writers (make-tiny,
 * the KV store's q8_0 demotion) use. Type numbers are ggml's (model/gguf.h uses
 * the same numbers). Pure functions; any thread.
 */
#ifndef GISTD_COMMON_DTYPE_H
#define GISTD_COMMON_DTYPE_H

#include <stddef.h>
#include <stdint.h>

/* Type numbers, as in ggml and GGUF files. */
enum dt_type { DT_F32 = 0, DT_F16 = 1, DT_Q4_0 = 2, DT_Q8_0 = 8, DT_BF16 = 30 };

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

float dt_f16_to_f32(uint16_t h);
uint16_t dt_f32_to_f16(float f); /* round to nearest even, inf/nan kept */
float dt_bf16_to_f32(uint16_t h);
uint16_t dt_f32_to_bf16(float f); /* round to nearest even, nan kept */

/* Quantize n floats (n a multiple of 32) as ggml does: d = max|x| / 127, q = round(x * (1/d)). */
void dt_quantize_q8_0(const float *x, block_q8_0 *out, size_t n);
void dt_quantize_q4_0(const float *x, block_q4_0 *out, size_t n);

/* Dequantize/convert one row of n elements of a type to f32. Returns 0, or
 * ERR_UNSUPPORTED for a type it cannot convert (F32, F16, BF16, Q8_0, Q4_0 are supported). */
int dt_to_f32(uint32_t type, const void *src, float *dst, size_t n);

/* Convert n floats to a type (F32, F16, BF16, Q8_0, Q4_0). Returns 0 or ERR_UNSUPPORTED. */
int dt_from_f32(uint32_t type, const float *src, void *dst, size_t n);

#endif
