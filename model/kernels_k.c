/*
 * model/kernels_k.c — the K-quant weights (q4_K, q5_K, q6_K) on the portable path, and the
 * q5_0/q5_1 rows of every path (dequantised a block at a time against f32 activations): the
 * activations quantised per 256-block (the K layout of kernels_impl.h, shared by every
 * path) and plain row kernels, one exact int32 sum per sub-block weighted by its integer
 * scale, then one f32 multiply per super-block, as ggml's vec_dot_q*_K_q8_K.
 */
#include "common/dtype.h"
#include "model/kernels_impl.h"

#include <math.h>
#include <string.h>

static size_t round64(size_t n)
{
    return (n + 63) & ~(size_t)63;
}

size_t kern_qk_bytes(int n_cols)
{
    const size_t nb = (size_t)n_cols / QK_K;
    return nb ? round64(nb * QK_K + nb * sizeof(float) + nb * 16 * sizeof(int16_t)) : 0;
}

void kern_qk_make(const float *x, int n_cols, uint8_t *out)
{
    if (n_cols % QK_K)
        return;
    const int nb = n_cols / QK_K;
    int8_t *qs = (int8_t *)out;
    float *d = (float *)(out + n_cols);
    int16_t *bsums = (int16_t *)(d + nb);
    for (int b = 0; b < nb; b++) {
        const float *xb = x + QK_K * b;
        float amax = 0;
        for (int i = 0; i < QK_K; i++)
            amax = fabsf(xb[i]) > amax ? fabsf(xb[i]) : amax; /* (fmaxf is a libm call here) */
        d[b] = amax / 127.0f;
        const float id = d[b] != 0 ? 1.0f / d[b] : 0.0f;
        for (int k = 0; k < 16; k++) {
            int s = 0;
            for (int i = 0; i < 16; i++) {
                const int q = (int)nearbyintf(xb[16 * k + i] * id);
                qs[QK_K * b + 16 * k + i] = (int8_t)q;
                s += q;
            }
            bsums[16 * b + k] = (int16_t)s;
        }
    }
}

/* The K layout of vector i. */
typedef struct qk_vec {
    const int8_t *q;
    const float *d;
    const int16_t *bsums;
} qk_vec_t;

static qk_vec_t qk_vec(const uint8_t *x, int n_cols)
{
    const float *d = (const float *)(x + n_cols);
    return (qk_vec_t){(const int8_t *)x, d, (const int16_t *)(d + n_cols / QK_K)};
}

/* Super-block b of a q4_K/q5_K row against one vector (hb: q5_K's high bits, else NULL). */
static float dot_q45_K(uint16_t dh, uint16_t dminh, const uint8_t *scales, const uint8_t *qs,
                       const uint8_t *qh, const int8_t *xq, const int16_t *bsums, float xd)
{
    int sumi = 0, summ = 0;
    for (int j = 0; j < 8; j++) {
        uint8_t sc, m;
        dt_k_scale_min(j, scales, &sc, &m);
        summ += m * (bsums[2 * j] + bsums[2 * j + 1]);
        const uint8_t *q = qs + 32 * (j / 2);
        const int shift = 4 * (j % 2);
        int s = 0;
        for (int l = 0; l < 32; l++) {
            int v = q[l] >> shift & 0xF;
            if (qh && qh[l] >> j & 1)
                v += 16;
            s += v * xq[32 * j + l];
        }
        sumi += sc * s;
    }
    return xd * (dt_f16_to_f32(dh) * (float)sumi - dt_f16_to_f32(dminh) * (float)summ);
}

static float dot_q6_K(const block_q6_K *w, const int8_t *xq, const int16_t *bsums, float xd)
{
    int sumi = 0;
    for (int c = 0; c < 2; c++) {
        const uint8_t *ql = w->ql + 64 * c, *qh = w->qh + 32 * c;
        for (int l = 0; l < 32; l++) {
            const int u[4] = {
                (ql[l] & 0xF) | (qh[l] & 3) << 4, (ql[l + 32] & 0xF) | (qh[l] >> 2 & 3) << 4,
                (ql[l] >> 4) | (qh[l] >> 4 & 3) << 4, (ql[l + 32] >> 4) | (qh[l] >> 6 & 3) << 4};
            for (int g = 0; g < 4; g++) {
                const int e = 128 * c + 32 * g + l;
                sumi += w->scales[e / 16] * u[g] * xq[e];
            }
        }
    }
    for (int k = 0; k < 16; k++) /* the -32 of every level */
        sumi -= 32 * w->scales[k] * bsums[k];
    return xd * dt_f16_to_f32(w->d) * (float)sumi;
}

static void rows_k(int kt, const uint8_t *W, size_t w_stride, const uint8_t *x, size_t x_stride,
                   int nx, int n_cols, float *y, size_t y_stride, int r0, int r1)
{
    const int nb = n_cols / QK_K;
    for (int r = r0; r < r1; r++) {
        const uint8_t *row = W + r * w_stride;
        for (int i = 0; i < nx; i++) {
            const qk_vec_t v = qk_vec(x + i * x_stride, n_cols);
            float acc = 0;
            for (int b = 0; b < nb; b++) {
                const int8_t *xq = v.q + QK_K * b;
                const int16_t *bs = v.bsums + 16 * b;
                if (kt == KT_Q4_K) {
                    const block_q4_K *w = (const block_q4_K *)row + b;
                    acc += dot_q45_K(w->d, w->dmin, w->scales, w->qs, NULL, xq, bs, v.d[b]);
                } else if (kt == KT_Q5_K) {
                    const block_q5_K *w = (const block_q5_K *)row + b;
                    acc += dot_q45_K(w->d, w->dmin, w->scales, w->qs, w->qh, xq, bs, v.d[b]);
                } else {
                    acc += dot_q6_K((const block_q6_K *)row + b, xq, bs, v.d[b]);
                }
            }
            y[i * y_stride + r] = acc;
        }
    }
}

void kern_rows_q4_K_portable(const uint8_t *W, size_t w_stride, const uint8_t *x, size_t x_stride,
                             int nx, int n_cols, float *y, size_t y_stride, int r0, int r1)
{
    rows_k(KT_Q4_K, W, w_stride, x, x_stride, nx, n_cols, y, y_stride, r0, r1);
}

void kern_rows_q5_K_portable(const uint8_t *W, size_t w_stride, const uint8_t *x, size_t x_stride,
                             int nx, int n_cols, float *y, size_t y_stride, int r0, int r1)
{
    rows_k(KT_Q5_K, W, w_stride, x, x_stride, nx, n_cols, y, y_stride, r0, r1);
}

void kern_rows_q6_K_portable(const uint8_t *W, size_t w_stride, const uint8_t *x, size_t x_stride,
                             int nx, int n_cols, float *y, size_t y_stride, int r0, int r1)
{
    rows_k(KT_Q6_K, W, w_stride, x, x_stride, nx, n_cols, y, y_stride, r0, r1);
}

/* q5_0/q5_1 rows against f32 vectors: each block dequantised (as dt_to_f32 does), then
 * dotted with every vector. */
static void rows_q5(int kt, const uint8_t *W, size_t w_stride, const uint8_t *x, size_t x_stride,
                    int nx, int n_cols, float *y, size_t y_stride, int r0, int r1)
{
    const size_t bsz = kt == KT_Q5_0 ? sizeof(block_q5_0) : sizeof(block_q5_1);
    float w[QK5_0];
    for (int r = r0; r < r1; r++) {
        const uint8_t *row = W + r * w_stride;
        float acc[KERN_MAX_NX] = {0};
        for (int k = 0; k < n_cols / QK5_0; k++) {
            if (kt == KT_Q5_0)
                dt_dequantize_q5_0((const block_q5_0 *)(row + k * bsz), w, QK5_0);
            else
                dt_dequantize_q5_1((const block_q5_1 *)(row + k * bsz), w, QK5_0);
            for (int i = 0; i < nx; i++) {
                const float *xi = (const float *)(x + i * x_stride) + QK5_0 * k;
                float s = 0;
                for (int j = 0; j < QK5_0; j++)
                    s += w[j] * xi[j];
                acc[i] += s;
            }
        }
        for (int i = 0; i < nx; i++)
            y[i * y_stride + r] = acc[i];
    }
}

void kern_rows_q5_0_portable(const uint8_t *W, size_t w_stride, const uint8_t *x, size_t x_stride,
                             int nx, int n_cols, float *y, size_t y_stride, int r0, int r1)
{
    rows_q5(KT_Q5_0, W, w_stride, x, x_stride, nx, n_cols, y, y_stride, r0, r1);
}

void kern_rows_q5_1_portable(const uint8_t *W, size_t w_stride, const uint8_t *x, size_t x_stride,
                             int nx, int n_cols, float *y, size_t y_stride, int r0, int r1)
{
    rows_q5(KT_Q5_1, W, w_stride, x, x_stride, nx, n_cols, y, y_stride, r0, r1);
}

void kern_to_f32_q5_0(const uint8_t *src, float *dst, int n)
{
    dt_dequantize_q5_0((const block_q5_0 *)src, dst, (size_t)n);
}

void kern_to_f32_q5_1(const uint8_t *src, float *dst, int n)
{
    dt_dequantize_q5_1((const block_q5_1 *)src, dst, (size_t)n);
}

void kern_to_f32_q4_K(const uint8_t *src, float *dst, int n)
{
    dt_dequantize_q4_K((const block_q4_K *)src, dst, (size_t)n);
}

void kern_to_f32_q5_K(const uint8_t *src, float *dst, int n)
{
    dt_dequantize_q5_K((const block_q5_K *)src, dst, (size_t)n);
}

void kern_to_f32_q6_K(const uint8_t *src, float *dst, int n)
{
    dt_dequantize_q6_K((const block_q6_K *)src, dst, (size_t)n);
}
