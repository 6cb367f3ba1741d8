/*
 * common/dtype_k.c — the K-quants (q4_K, q5_K, q6_K) and the 5-bit blocks of 32 (q5_0,
 * q5_1) that K-quant mixes fall back to: dequantization as ggml's dequantize_row_* computes
 * it, and this project's own quantizer for the files it writes (make-tiny). The quantizer is a
 * plain fit, not ggml's iterative search: it serves test fixtures and benchmarks, where what
 * matters is that the bytes are valid and the values near the floats; real files come from
 * llama.cpp.
 */
#include "common/dtype.h"

#include <math.h>
#include <string.h>

static int clampi(int v, int lo, int hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

/* ---- dequantization ---- */

void dt_dequantize_q4_K(const block_q4_K *x, float *y, size_t n)
{
    for (size_t b = 0; b < n / QK_K; b++) {
        const float d = dt_f16_to_f32(x[b].d), dmin = dt_f16_to_f32(x[b].dmin);
        const uint8_t *q = x[b].qs;
        for (int j = 0; j < QK_K; j += 64, q += 32) {
            uint8_t sc, m;
            dt_k_scale_min(j / 32, x[b].scales, &sc, &m);
            const float d1 = d * sc, m1 = dmin * m;
            dt_k_scale_min(j / 32 + 1, x[b].scales, &sc, &m);
            const float d2 = d * sc, m2 = dmin * m;
            for (int l = 0; l < 32; l++)
                *y++ = d1 * (q[l] & 0xF) - m1;
            for (int l = 0; l < 32; l++)
                *y++ = d2 * (q[l] >> 4) - m2;
        }
    }
}

void dt_dequantize_q5_K(const block_q5_K *x, float *y, size_t n)
{
    for (size_t b = 0; b < n / QK_K; b++) {
        const float d = dt_f16_to_f32(x[b].d), dmin = dt_f16_to_f32(x[b].dmin);
        const uint8_t *ql = x[b].qs, *qh = x[b].qh;
        uint8_t u1 = 1, u2 = 2;
        for (int j = 0; j < QK_K; j += 64, ql += 32, u1 <<= 2, u2 <<= 2) {
            uint8_t sc, m;
            dt_k_scale_min(j / 32, x[b].scales, &sc, &m);
            const float d1 = d * sc, m1 = dmin * m;
            dt_k_scale_min(j / 32 + 1, x[b].scales, &sc, &m);
            const float d2 = d * sc, m2 = dmin * m;
            for (int l = 0; l < 32; l++)
                *y++ = d1 * ((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
            for (int l = 0; l < 32; l++)
                *y++ = d2 * ((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
        }
    }
}

void dt_dequantize_q6_K(const block_q6_K *x, float *y, size_t n)
{
    for (size_t b = 0; b < n / QK_K; b++) {
        const float d = dt_f16_to_f32(x[b].d);
        const uint8_t *ql = x[b].ql, *qh = x[b].qh;
        const int8_t *sc = x[b].scales;
        for (int c = 0; c < QK_K; c += 128, y += 128, ql += 64, qh += 32, sc += 8) {
            for (int l = 0; l < 32; l++) {
                const int is = l / 16;
                const int q1 = ((ql[l] & 0xF) | ((qh[l] >> 0 & 3) << 4)) - 32;
                const int q2 = ((ql[l + 32] & 0xF) | ((qh[l] >> 2 & 3) << 4)) - 32;
                const int q3 = ((ql[l] >> 4) | ((qh[l] >> 4 & 3) << 4)) - 32;
                const int q4 = ((ql[l + 32] >> 4) | ((qh[l] >> 6 & 3) << 4)) - 32;
                y[l] = d * sc[is + 0] * q1;
                y[l + 32] = d * sc[is + 2] * q2;
                y[l + 64] = d * sc[is + 4] * q3;
                y[l + 96] = d * sc[is + 6] * q4;
            }
        }
    }
}

/* Element j of a q5_0/q5_1 block, 0..31: the nibble and the fifth bit. */
static int q5_level(const uint8_t *qh4, const uint8_t *qs, int j)
{
    uint32_t qh;
    memcpy(&qh, qh4, 4);
    const int lo = j < 16 ? qs[j] & 0xF : qs[j - 16] >> 4;
    return lo | (int)((qh >> j) & 1) << 4;
}

void dt_dequantize_q5_0(const block_q5_0 *x, float *y, size_t n)
{
    for (size_t b = 0; b < n / QK5_0; b++) {
        const float d = dt_f16_to_f32(x[b].d);
        for (int j = 0; j < QK5_0; j++)
            *y++ = (float)(q5_level(x[b].qh, x[b].qs, j) - 16) * d;
    }
}

void dt_dequantize_q5_1(const block_q5_1 *x, float *y, size_t n)
{
    for (size_t b = 0; b < n / QK5_0; b++) {
        const float d = dt_f16_to_f32(x[b].d), m = dt_f16_to_f32(x[b].m);
        for (int j = 0; j < QK5_0; j++)
            *y++ = (float)q5_level(x[b].qh, x[b].qs, j) * d + m;
    }
}

/* ---- quantization ---- */

/* The levels (0..31) of 32 floats at scale d from lo, packed as q5_0/q5_1 store them. */
static void q5_pack(const float *x, float lo, float d, uint8_t qh4[4], uint8_t *qs)
{
    uint32_t qh = 0;
    for (int j = 0; j < 16; j++) {
        int l[2];
        for (int h = 0; h < 2; h++)
            l[h] = d != 0 ? clampi((int)nearbyintf((x[j + 16 * h] - lo) / d), 0, 31) : 0;
        qs[j] = (uint8_t)((l[0] & 0xF) | (l[1] & 0xF) << 4);
        qh |= (uint32_t)(l[0] >> 4) << j | (uint32_t)(l[1] >> 4) << (j + 16);
    }
    memcpy(qh4, &qh, 4);
}

void dt_quantize_q5_0(const float *x, block_q5_0 *out, size_t n)
{
    for (size_t b = 0; b < n / QK5_0; b++, x += QK5_0) {
        float amax = 0;
        for (int j = 0; j < QK5_0; j++)
            amax = fmaxf(amax, fabsf(x[j]));
        out[b].d = dt_f32_to_f16(amax / 15.0f); /* levels -16..15 around 0 */
        const float d = dt_f16_to_f32(out[b].d);
        q5_pack(x, -16.0f * d, d, out[b].qh, out[b].qs);
    }
}

void dt_quantize_q5_1(const float *x, block_q5_1 *out, size_t n)
{
    for (size_t b = 0; b < n / QK5_0; b++, x += QK5_0) {
        float lo = x[0], hi = x[0];
        for (int j = 1; j < QK5_0; j++) {
            lo = fminf(lo, x[j]);
            hi = fmaxf(hi, x[j]);
        }
        out[b].d = dt_f32_to_f16((hi - lo) / 31.0f);
        out[b].m = dt_f32_to_f16(lo);
        q5_pack(x, dt_f16_to_f32(out[b].m), dt_f16_to_f32(out[b].d), out[b].qh, out[b].qs);
    }
}

/*
 * The fit of one q4_K/q5_K block of 256 floats with levels 0..nmax: per sub-block of 32,
 * scale (max - min) / nmax and min -min(x, 0); both rounded to 6 bits against the block's
 * largest (d, dmin in f16); then every element to its nearest level. Writes the f16 scales,
 * the packed 6-bit scales and the levels L[256].
 */
static void fit_k(const float *x, int nmax, uint16_t *dh, uint16_t *dminh, uint8_t scales[12],
                  uint8_t *L)
{
    float scale[8], min[8], max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; j++) {
        float lo = 0, hi = 0;
        for (int l = 0; l < 32; l++) {
            lo = fminf(lo, x[32 * j + l]);
            hi = fmaxf(hi, x[32 * j + l]);
        }
        scale[j] = (hi - lo) / (float)nmax;
        min[j] = -lo;
        max_scale = fmaxf(max_scale, scale[j]);
        max_min = fmaxf(max_min, min[j]);
    }
    *dh = dt_f32_to_f16(max_scale / 63.0f);
    *dminh = dt_f32_to_f16(max_min / 63.0f);
    const float d = dt_f16_to_f32(*dh), dmin = dt_f16_to_f32(*dminh);
    uint8_t ls[8], lm[8];
    for (int j = 0; j < 8; j++) {
        ls[j] = (uint8_t)(d > 0 ? clampi((int)nearbyintf(scale[j] / d), 0, 63) : 0);
        lm[j] = (uint8_t)(dmin > 0 ? clampi((int)nearbyintf(min[j] / dmin), 0, 63) : 0);
        const float s = d * ls[j], m = dmin * lm[j];
        for (int l = 0; l < 32; l++)
            L[32 * j + l] =
                (uint8_t)(s > 0 ? clampi((int)nearbyintf((x[32 * j + l] + m) / s), 0, nmax) : 0);
    }
    /* the packing dt_k_scale_min reads */
    memset(scales, 0, 12);
    for (int j = 0; j < 8; j++) {
        if (j < 4) {
            scales[j] |= ls[j];
            scales[j + 4] |= lm[j];
        } else {
            scales[j + 4] = (uint8_t)((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
            scales[j - 4] |= (uint8_t)((ls[j] >> 4) << 6);
            scales[j] |= (uint8_t)((lm[j] >> 4) << 6);
        }
    }
}

void dt_quantize_q4_K(const float *x, block_q4_K *out, size_t n)
{
    uint8_t L[QK_K];
    for (size_t b = 0; b < n / QK_K; b++, x += QK_K) {
        fit_k(x, 15, &out[b].d, &out[b].dmin, out[b].scales, L);
        for (int j = 0; j < QK_K; j += 64)
            for (int l = 0; l < 32; l++)
                out[b].qs[j / 2 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
    }
}

void dt_quantize_q5_K(const float *x, block_q5_K *out, size_t n)
{
    uint8_t L[QK_K];
    for (size_t b = 0; b < n / QK_K; b++, x += QK_K) {
        fit_k(x, 31, &out[b].d, &out[b].dmin, out[b].scales, L);
        memset(out[b].qh, 0, sizeof out[b].qh);
        uint8_t m1 = 1, m2 = 2;
        for (int j = 0; j < QK_K; j += 64, m1 <<= 2, m2 <<= 2) {
            for (int l = 0; l < 32; l++) {
                int l1 = L[j + l], l2 = L[j + l + 32];
                if (l1 > 15) {
                    l1 -= 16;
                    out[b].qh[l] |= m1;
                }
                if (l2 > 15) {
                    l2 -= 16;
                    out[b].qh[l] |= m2;
                }
                out[b].qs[j / 2 + l] = (uint8_t)(l1 | (l2 << 4));
            }
        }
    }
}

void dt_quantize_q6_K(const float *x, block_q6_K *out, size_t n)
{
    uint8_t L[QK_K];
    for (size_t b = 0; b < n / QK_K; b++, x += QK_K) {
        float scale[16], max_scale = 0;
        for (int k = 0; k < 16; k++) {
            float amax = 0;
            for (int l = 0; l < 16; l++)
                amax = fmaxf(amax, fabsf(x[16 * k + l]));
            scale[k] = amax / 31.0f;
            max_scale = fmaxf(max_scale, scale[k]);
        }
        out[b].d = dt_f32_to_f16(max_scale / 127.0f);
        const float d = dt_f16_to_f32(out[b].d);
        for (int k = 0; k < 16; k++) {
            const int sc = d > 0 ? clampi((int)nearbyintf(scale[k] / d), 0, 127) : 0;
            out[b].scales[k] = (int8_t)sc;
            const float s = d * sc;
            for (int l = 0; l < 16; l++) {
                const int q = s > 0 ? clampi((int)nearbyintf(x[16 * k + l] / s), -32, 31) : 0;
                L[16 * k + l] = (uint8_t)(q + 32);
            }
        }
        uint8_t *ql = out[b].ql, *qh = out[b].qh;
        for (int c = 0; c < QK_K; c += 128, ql += 64, qh += 32) {
            for (int l = 0; l < 32; l++) {
                const int q1 = L[c + l], q2 = L[c + l + 32], q3 = L[c + l + 64], q4 = L[c + l + 96];
                ql[l] = (uint8_t)((q1 & 0xF) | ((q3 & 0xF) << 4));
                ql[l + 32] = (uint8_t)((q2 & 0xF) | ((q4 & 0xF) << 4));
                qh[l] =
                    (uint8_t)((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6));
            }
        }
    }
}
