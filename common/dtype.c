/*
 * common/dtype.c — reference scalar conversions between f32 and f16, bf16, q8_0, q4_0.
 *
 * These are the definitions the SIMD kernels are tested against, so they favour being
 * obviously right over being fast. The quantizers follow ggml's reference functions
 * (quantize_row_q8_0_ref, quantize_row_q4_0_ref) step for step, so that a file written
 * here holds the same bytes ggml would write for the same floats. One exception to scalar:
 * dt_from_f32 turns rows into f16 with the CPU's own conversion where it has one (F16C),
 * which rounds as dt_f32_to_f16 does, bit for bit (test_dtype); the KV store writes every
 * new row through it.
 */
#include "common/dtype.h"

#include <math.h>
#include <stdbool.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "common/err.h"

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

float dt_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;

    if (exp == 0x1f) /* inf or nan: keep the payload in the top mantissa bits */
        return bits_f32(sign | 0x7f800000 | (mant << 13));
    if (exp != 0) /* normal: rebias 15 -> 127 */
        return bits_f32(sign | ((exp + 112) << 23) | (mant << 13));
    if (mant == 0)
        return bits_f32(sign);
    /* subnormal: mant * 2^-24, exact in f32 */
    float v = (float)mant * 0x1p-24f;
    return sign ? -v : v;
}

/* Shifts m right by s (1..31) rounding to nearest, ties to even. */
static uint32_t shift_rne(uint32_t m, unsigned s)
{
    uint32_t q = m >> s;
    uint32_t rem = m & ((1u << s) - 1);
    uint32_t half = 1u << (s - 1);
    if (rem > half || (rem == half && (q & 1)))
        q++;
    return q;
}

uint16_t dt_f32_to_f16(float f)
{
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t ax = x & 0x7fffffff;
    uint32_t exp = ax >> 23;
    uint32_t mant = ax & 0x7fffff;

    if (exp == 0xff) {
        if (mant == 0)
            return sign | 0x7c00;
        /* nan: keep the top payload bits and make sure it stays a (quiet) nan */
        return (uint16_t)(sign | 0x7e00 | (mant >> 13));
    }
    if (exp >= 113) {
        /* normal range of f16 (before rounding); a carry out of the mantissa bumps the
         * exponent, and reaching 0x7c00 is exactly overflow to inf */
        if (exp > 142)
            return sign | 0x7c00;
        uint32_t h = ((exp - 112) << 10) | (mant >> 13);
        uint32_t rem = mant & 0x1fff;
        if (rem > 0x1000 || (rem == 0x1000 && (h & 1)))
            h++;
        return (uint16_t)(sign | (h >= 0x7c00 ? 0x7c00 : h));
    }
    /* f16 subnormal or zero: the value is m * 2^(exp-150); in units of 2^-24 that is
     * m >> (126 - exp). Rounding may produce 0x400, the smallest normal, which is right. */
    if (exp < 102) /* below 2^-25: rounds to zero */
        return sign;
    uint32_t m = mant | 0x800000;
    return (uint16_t)(sign | shift_rne(m, 126 - exp));
}

float dt_bf16_to_f32(uint16_t h)
{
    return bits_f32((uint32_t)h << 16);
}

uint16_t dt_f32_to_bf16(float f)
{
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffff) > 0x7f800000) /* nan: force quiet, as ggml does */
        return (uint16_t)((x >> 16) | 0x40);
    return (uint16_t)((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}

void dt_quantize_q8_0(const float *x, block_q8_0 *out, size_t n)
{
    for (size_t b = 0; b < n / QK8_0; b++) {
        const float *xb = x + b * QK8_0;
        float amax = 0.0f;
        for (int j = 0; j < QK8_0; j++) {
            float a = fabsf(xb[j]);
            if (a > amax)
                amax = a;
        }
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        out[b].d = dt_f32_to_f16(d);
        for (int j = 0; j < QK8_0; j++)
            out[b].qs[j] = (int8_t)roundf(xb[j] * id);
    }
}

void dt_quantize_q4_0(const float *x, block_q4_0 *out, size_t n)
{
    for (size_t b = 0; b < n / QK4_0; b++) {
        const float *xb = x + b * QK4_0;
        /* the element of largest magnitude, with its sign: it maps to -8 exactly */
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK4_0; j++) {
            if (amax < fabsf(xb[j])) {
                amax = fabsf(xb[j]);
                max = xb[j];
            }
        }
        const float d = max / -8.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        out[b].d = dt_f32_to_f16(d);
        for (int j = 0; j < QK4_0 / 2; j++) {
            int q0 = (int8_t)(xb[j] * id + 8.5f);
            int q1 = (int8_t)(xb[j + QK4_0 / 2] * id + 8.5f);
            q0 = q0 < 15 ? q0 : 15;
            q1 = q1 < 15 ? q1 : 15;
            out[b].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

int dt_to_f32(uint32_t type, const void *src, float *dst, size_t n)
{
    switch (type) {
    case DT_F32:
        memcpy(dst, src, n * sizeof(float));
        return 0;
    case DT_F16: {
        const uint16_t *s = src;
        for (size_t i = 0; i < n; i++)
            dst[i] = dt_f16_to_f32(s[i]);
        return 0;
    }
    case DT_BF16: {
        const uint16_t *s = src;
        for (size_t i = 0; i < n; i++)
            dst[i] = dt_bf16_to_f32(s[i]);
        return 0;
    }
    case DT_Q8_0: {
        const block_q8_0 *s = src;
        for (size_t b = 0; b < n / QK8_0; b++) {
            const float d = dt_f16_to_f32(s[b].d);
            for (int j = 0; j < QK8_0; j++)
                dst[b * QK8_0 + j] = (float)s[b].qs[j] * d;
        }
        return 0;
    }
    case DT_Q4_0: {
        const block_q4_0 *s = src;
        for (size_t b = 0; b < n / QK4_0; b++) {
            const float d = dt_f16_to_f32(s[b].d);
            for (int j = 0; j < QK4_0 / 2; j++) {
                dst[b * QK4_0 + j] = (float)((s[b].qs[j] & 0x0f) - 8) * d;
                dst[b * QK4_0 + j + QK4_0 / 2] = (float)((s[b].qs[j] >> 4) - 8) * d;
            }
        }
        return 0;
    }
    case DT_Q5_0:
        dt_dequantize_q5_0(src, dst, n);
        return 0;
    case DT_Q5_1:
        dt_dequantize_q5_1(src, dst, n);
        return 0;
    case DT_Q4_K:
        dt_dequantize_q4_K(src, dst, n);
        return 0;
    case DT_Q5_K:
        dt_dequantize_q5_K(src, dst, n);
        return 0;
    case DT_Q6_K:
        dt_dequantize_q6_K(src, dst, n);
        return 0;
    default:
        return ERR_UNSUPPORTED;
    }
}

#if defined(__x86_64__)
/* Whether the CPU has F16C (every x86 CPU with AVX2 has: clang does not know the name). */
static bool have_f16c(void)
{
#if defined(__clang__)
    return __builtin_cpu_supports("avx2");
#else
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
#endif
}

/* n floats to f16 eight at a time, rounding to nearest even as dt_f32_to_f16 does. */
__attribute__((target("avx,f16c"))) static void f16_from_f32_f16c(const float *src, uint16_t *dst,
                                                                  size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++)
        dst[i] = dt_f32_to_f16(src[i]);
}
#endif

int dt_from_f32(uint32_t type, const float *src, void *dst, size_t n)
{
    switch (type) {
    case DT_F32:
        memcpy(dst, src, n * sizeof(float));
        return 0;
    case DT_F16: {
        uint16_t *d = dst;
#if defined(__x86_64__)
        if (have_f16c()) {
            f16_from_f32_f16c(src, d, n);
            return 0;
        }
#endif
        for (size_t i = 0; i < n; i++)
            d[i] = dt_f32_to_f16(src[i]);
        return 0;
    }
    case DT_BF16: {
        uint16_t *d = dst;
        for (size_t i = 0; i < n; i++)
            d[i] = dt_f32_to_bf16(src[i]);
        return 0;
    }
    case DT_Q8_0:
        dt_quantize_q8_0(src, dst, n);
        return 0;
    case DT_Q4_0:
        dt_quantize_q4_0(src, dst, n);
        return 0;
    case DT_Q5_0:
        dt_quantize_q5_0(src, dst, n);
        return 0;
    case DT_Q5_1:
        dt_quantize_q5_1(src, dst, n);
        return 0;
    case DT_Q4_K:
        dt_quantize_q4_K(src, dst, n);
        return 0;
    case DT_Q5_K:
        dt_quantize_q5_K(src, dst, n);
        return 0;
    case DT_Q6_K:
        dt_quantize_q6_K(src, dst, n);
        return 0;
    default:
        return ERR_UNSUPPORTED;
    }
}
