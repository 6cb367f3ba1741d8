/*
 * tests/kern_fixture.h — what the kernel tests share (tests/test_kernels.c,
 * tests/test_kernels_multi.c): seeded random weights of every stored type and
 * activations, independent decoders of the stored formats, the exact products in double
 * and the check of a result against them. Header-only; each test program includes it once.
 *
 * Tolerances, all relative to A = sum_c |w_c * x_c| of the row and vector in question:
 *  - f32 sums of n products in any order are within n * u * A of the exact sum
 *    (u = 2^-24, the classic recursive summation bound; blocked, pairwise and FMA sums
 *    all satisfy it), and f16/bf16/q8_0/q4_0 weights widen to f32 exactly, so every fast
 *    path is checked at (n + 8) * u * A.
 *  - Q8_0/Q4_0 row kernels quantise the activations to int8 blocks (scale d = max|x|/127),
 *    so each x_c is off by at most d/2 (plus a few ulps of computing it): the bound adds
 *    sum over blocks of (d_k / 2) * sum_{c in k} |w_c|. With activations that are exact
 *    multiples of a power-of-two scale and reach +-127 in every block, quantisation is
 *    lossless and the tight bound applies again; both cases are tested.
 */
#ifndef GISTD_TESTS_KERN_FIXTURE_H
#define GISTD_TESTS_KERN_FIXTURE_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "model/kernels.h"
#include "tests/check.h"

static const uint32_t types[] = {DT_F32, DT_F16, DT_BF16, DT_Q8_0, DT_Q4_0};
static const char *type_names[] = {"f32", "f16", "bf16", "q8_0", "q4_0"};
#define N_TYPES 5

static inline const char *tname(uint32_t t)
{
    for (int i = 0; i < N_TYPES; i++)
        if (types[i] == t)
            return type_names[i];
    return "?";
}

static inline bool is_quant(uint32_t t)
{
    return t == DT_Q8_0 || t == DT_Q4_0;
}

/* splitmix64: a small seeded generator for test inputs. */
static inline uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline float rng_uniform(uint64_t *s, float lo, float hi)
{
    return lo + (hi - lo) * (float)((rng_next(s) >> 40) * 0x1p-24);
}

/* ---- independent decoders of the stored formats ---- */

static inline double f16_decode(uint16_t h)
{
    int sign = h >> 15, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    double v = e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);
    return sign ? -v : v;
}

static inline double bf16_decode(uint16_t h)
{
    int sign = h >> 15, e = (h >> 7) & 0xff, m = h & 0x7f;
    double v = e == 0 ? ldexp(m, -133) : ldexp(128 + m, e - 134);
    return sign ? -v : v;
}

static inline uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static inline size_t row_size(uint32_t t, int n)
{
    switch (t) {
    case DT_F32:
        return (size_t)n * 4;
    case DT_F16:
    case DT_BF16:
        return (size_t)n * 2;
    case DT_Q8_0:
        return (size_t)n / 32 * 34;
    default:
        return (size_t)n / 32 * 18;
    }
}

/* Element c of a stored row, decoded in double. */
static inline double decode(uint32_t t, const uint8_t *row, int c)
{
    switch (t) {
    case DT_F32: {
        float f;
        memcpy(&f, row + 4 * c, 4);
        return f;
    }
    case DT_F16:
        return f16_decode(rd16(row + 2 * c));
    case DT_BF16:
        return bf16_decode(rd16(row + 2 * c));
    case DT_Q8_0: {
        const uint8_t *blk = row + (c / 32) * 34;
        return f16_decode(rd16(blk)) * (int8_t)blk[2 + c % 32];
    }
    default: {
        const uint8_t *blk = row + (c / 32) * 18;
        int j = c % 32;
        int q = j < 16 ? blk[2 + j] & 15 : blk[2 + j - 16] >> 4;
        return f16_decode(rd16(blk)) * (q - 8);
    }
    }
}

/* Random stored bytes of a type: any sign, magnitudes within a few powers of two of 1,
 * f16 subnormals included; q8_0 values cover the whole int8 range, q4_0 every nibble. */
static inline uint8_t *make_weights(uint32_t t, int rows, int cols, uint64_t *s)
{
    size_t n = row_size(t, cols) * (size_t)rows;
    uint8_t *w = malloc(n + 1);
    for (size_t i = 0; i < n; i++)
        w[i] = (uint8_t)rng_next(s);
    for (int r = 0; r < rows; r++) {
        uint8_t *row = w + row_size(t, cols) * r;
        for (int c = 0; c < cols; c++) {
            uint64_t v = rng_next(s);
            if (t == DT_F32) {
                float f = rng_uniform(s, -2, 2);
                memcpy(row + 4 * c, &f, 4);
            } else if (t == DT_F16) {
                /* exponent field 0..17: subnormals up to 4 */
                uint16_t h = (uint16_t)((v & 0x83ff) | ((v >> 16) % 18) << 10);
                memcpy(row + 2 * c, &h, 2);
            } else if (t == DT_BF16) {
                uint16_t h = (uint16_t)((v & 0x807f) | (120 + (v >> 16) % 10) << 7);
                memcpy(row + 2 * c, &h, 2);
            }
        }
        if (is_quant(t)) {
            size_t bsz = t == DT_Q8_0 ? 34 : 18;
            for (int k = 0; k < cols / 32; k++) {
                /* positive or negative scale, exponent field 5..16 */
                uint16_t d = (uint16_t)((rng_next(s) & 0x83ff) | (5 + rng_next(s) % 12) << 10);
                memcpy(row + k * bsz, &d, 2);
            }
        }
    }
    return w;
}

/* Random activations in [-1, 1) times a per-vector scale. */
static inline float *make_x_random(int n_b, int cols, uint64_t *s)
{
    float *x = malloc(sizeof(float) * (size_t)n_b * cols);
    for (int b = 0; b < n_b; b++) {
        float scale = ldexpf(1, (int)(rng_next(s) % 9) - 4);
        for (int c = 0; c < cols; c++)
            x[(size_t)b * cols + c] = scale * rng_uniform(s, -1, 1);
    }
    return x;
}

/* Activations that q8 quantisation represents exactly: per block of 32, a power of two
 * times integers in [-127, 127], one of them +-127 (so max|x| / 127 is that power). */
static inline float *make_x_exact(int n_b, int cols, uint64_t *s)
{
    float *x = malloc(sizeof(float) * (size_t)n_b * cols);
    for (int b = 0; b < n_b; b++) {
        for (int c0 = 0; c0 < cols; c0 += 32) {
            float p = ldexpf(1, (int)(rng_next(s) % 12) - 9);
            int n = cols - c0 < 32 ? cols - c0 : 32;
            for (int j = 0; j < n; j++)
                x[(size_t)b * cols + c0 + j] = p * (float)((int)(rng_next(s) % 255) - 127);
            x[(size_t)b * cols + c0 + (int)(rng_next(s) % n)] =
                (rng_next(s) & 1) ? 127 * p : -127 * p;
        }
    }
    return x;
}

/* The exact products in double: Y[b][r], A[b][r] = sum |w x|, and Q[b][r], the bound of
 * the error of quantising x (sum over blocks of d/2 * sum |w|, d = max|x| / 127). */
static inline void exact(uint32_t t, const uint8_t *W, const float *X, int rows, int cols, int n_b,
                         double *Y, double *A, double *Q)
{
    size_t rs = row_size(t, cols);
    double *w = malloc(sizeof(double) * cols);
    for (int r = 0; r < rows; r++) {
        for (int c = 0; c < cols; c++)
            w[c] = decode(t, W + rs * r, c);
        for (int b = 0; b < n_b; b++) {
            const float *x = X + (size_t)b * cols;
            double y = 0, a = 0, q = 0, wsum = 0, amax = 0;
            for (int c = 0; c < cols; c++) {
                y += w[c] * x[c];
                a += fabs(w[c] * x[c]);
                wsum += fabs(w[c]);
                amax = fmax(amax, fabs(x[c]));
                if (c % 32 == 31 || c == cols - 1) {
                    q += amax / 127 / 2 * wsum * (1 + 1e-5);
                    wsum = amax = 0;
                }
            }
            Y[(size_t)b * rows + r] = y;
            A[(size_t)b * rows + r] = a;
            Q[(size_t)b * rows + r] = q;
        }
    }
    free(w);
}

/* Compares Y [n_b][rows] with Yd, the exact products (or within slack * A of them);
 * quant_err: whether the error of quantising x may appear. Returns the number of elements
 * out of bounds (the first few are reported). */
static inline int compare(uint32_t t, const float *Y, const double *Yd, const double *A,
                          const double *Q, int rows, int cols, int n_b, bool ref, bool quant_err,
                          double slack, const char *what)
{
    int bad = 0;
    for (size_t i = 0; i < (size_t)n_b * rows; i++) {
        /* the reference sums in double and rounds once */
        double tol = ref ? 1e-6 * A[i] : (cols + 8) * 0x1p-24 * A[i];
        if (quant_err)
            tol += Q[i] * (1 + 1e-4) + (cols + 8) * 0x1p-24 * Q[i];
        tol += slack * A[i] + 1e-30;
        if (!(fabs(Y[i] - Yd[i]) <= tol)) {
            if (bad++ < 3)
                check_fail_(__FILE__, __LINE__,
                            "%s %s %dx%d n_b=%d%s: Y[%zu][%zu] = %.9g, exact %.9g, tol %.3g",
                            tname(t), ref ? "ref" : kern_simd_name(), rows, cols, n_b, what,
                            i / rows, i % rows, Y[i], Yd[i], tol);
        }
    }
    return bad;
}

/* W (rows x cols of Q8_0) packed as KERN_TYPE_Q8_0_R16, in a buffer of its own. */
static inline uint8_t *packed_copy(const uint8_t *W, int rows, int cols)
{
    size_t n = kern_packed_bytes(KERN_TYPE_Q8_0_R16, rows, cols);
    uint8_t *P = aligned_alloc(64, (n + 63) / 64 * 64);
    CHECK(P != NULL);
    kern_pack(DT_Q8_0, KERN_TYPE_Q8_0_R16, W, rows, cols, P);
    return P;
}

#define N_OF(a) ((int)(sizeof(a) / sizeof((a)[0])))

#endif
