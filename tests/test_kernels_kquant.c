/*
 * Tests for the K-quant weights (q4_K, q5_K, q6_K), and the q5_0/q5_1 blocks K-quant mixes
 * fall back to, in model/kernels and common/dtype:
 * the test's own decoder of ggml's block layouts (written from the layout, not from the
 * project's code) against dt_to_f32 and kern_get_row; the naive reference and every SIMD
 * path this CPU can run against a double loop over the decoded weights, for several shapes
 * and batches, with random activations and with activations the per-256 quantisation
 * represents exactly; the layout of the quantised activations; and the project's own
 * quantizer (make-tiny's) by the error it leaves.
 *
 * Tolerances are relative to A = sum over the row of |d*sc*q*x| + |dmin*m*x| (the parts
 * the kernels sum separately, so cancellation between them is covered): f32 sums of n
 * products within (n + 8) * 2^-24 * A; with random activations each x is off by at most half
 * its 256-block's scale (max|x| / 127), which adds sum over blocks of d/2 * sum |w|.
 */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "common/err.h"
#include "model/kernels.h"
#include "model/kernels_impl.h"
#include "tests/check.h"
#include "tests/kern_fixture.h"

/* the K-quants first (ktypes[0..3)), then the blocks of 32 that take f32 activations */
static const uint32_t ktypes[] = {DT_Q4_K, DT_Q5_K, DT_Q6_K, DT_Q5_0, DT_Q5_1};
static const char *const knames[] = {"q4_K", "q5_K", "q6_K", "q5_0", "q5_1"};
#define N_K   3
#define N_ALL 5

static const char *kname(uint32_t t)
{
    for (int i = 0; i < N_ALL; i++)
        if (ktypes[i] == t)
            return knames[i];
    return "?";
}

static bool is_k(uint32_t t)
{
    return t == DT_Q4_K || t == DT_Q5_K || t == DT_Q6_K;
}

static int blk_elems(uint32_t t)
{
    return is_k(t) ? 256 : 32;
}

static size_t block_bytes(uint32_t t)
{
    switch (t) {
    case DT_Q4_K:
        return 144;
    case DT_Q5_K:
        return 176;
    case DT_Q6_K:
        return 210;
    case DT_Q5_0:
        return 22;
    default:
        return 24;
    }
}

/* ---- the test's decoder, from the block layouts ---- */

/* 6-bit scale and min of sub-block j: j < 4 in the low 6 bits of bytes j and 4 + j; j >= 4
 * split, low 4 bits in byte 8 + (j - 4) (scale low nibble, min high nibble), high 2 bits in
 * the top bits of bytes j - 4 (scale) and j (min). */
static void scale_min(const uint8_t *s, int j, int *sc, int *m)
{
    if (j < 4) {
        *sc = s[j] % 64;
        *m = s[4 + j] % 64;
    } else {
        *sc = s[8 + j - 4] % 16 + 16 * (s[j - 4] / 64);
        *m = s[8 + j - 4] / 16 + 16 * (s[j] / 64);
    }
}

/* Element e of a block as its two parts: value = a - b (b = 0 for q6_K). */
static void decode_k(uint32_t t, const uint8_t *blk, int e, double *a, double *b)
{
    if (t == DT_Q5_0 || t == DT_Q5_1) {
        /* d (f16), [m (f16)], qh: bit e of a little-endian uint32, qs: nibbles as q4_0's */
        const int off = t == DT_Q5_0 ? 2 : 4;
        const uint32_t qh = (uint32_t)blk[off] | (uint32_t)blk[off + 1] << 8 |
                            (uint32_t)blk[off + 2] << 16 | (uint32_t)blk[off + 3] << 24;
        const uint8_t *qs = blk + off + 4;
        const int q = (e < 16 ? qs[e] % 16 : qs[e - 16] / 16) + 16 * (int)((qh >> e) & 1);
        const double d = f16_decode(rd16(blk));
        *a = d * q;
        *b = t == DT_Q5_0 ? 16 * d : -f16_decode(rd16(blk + 2));
        return;
    }
    if (t == DT_Q6_K) {
        const uint8_t *ql = blk, *qh = blk + 128;
        const int8_t *sc = (const int8_t *)(blk + 192);
        const double d = f16_decode(rd16(blk + 208));
        const int half = e / 128, r = e % 128, g = r / 32, l = r % 32;
        const int lo = (g % 2 == 0 ? ql[64 * half + l] : ql[64 * half + 32 + l]);
        const int low4 = g < 2 ? lo % 16 : lo / 16;
        const int hi2 = (qh[32 * half + l] >> (2 * g)) % 4;
        *a = d * sc[e / 16] * (low4 + 16 * hi2 - 32);
        *b = 0;
        return;
    }
    const double d = f16_decode(rd16(blk)), dmin = f16_decode(rd16(blk + 2));
    const uint8_t *scales = blk + 4;
    const uint8_t *qs = blk + (t == DT_Q5_K ? 48 : 16);
    const int j = e / 32, l = e % 32;
    const int byte = qs[32 * (j / 2) + l];
    int q = j % 2 == 0 ? byte % 16 : byte / 16;
    if (t == DT_Q5_K && (blk[16 + l] >> j) % 2)
        q += 16;
    int sc, m;
    scale_min(scales, j, &sc, &m);
    *a = d * sc * q;
    *b = dmin * m;
}

static double decode_elem(uint32_t t, const uint8_t *row, int c)
{
    double a, b;
    decode_k(t, row + (size_t)(c / blk_elems(t)) * block_bytes(t), c % blk_elems(t), &a, &b);
    return a - b;
}

/* Random blocks: every byte random, then the f16 scales set to any sign and exponent
 * field 5..16 (q6_K's int8 scales stay any value). */
static uint8_t *make_kweights(uint32_t t, int rows, int cols, uint64_t *s)
{
    const size_t nb = (size_t)rows * cols / blk_elems(t), bb = block_bytes(t);
    uint8_t *w = malloc(nb * bb + 1);
    for (size_t i = 0; i < nb * bb; i++)
        w[i] = (uint8_t)rng_next(s);
    for (size_t k = 0; k < nb; k++) {
        uint8_t *blk = w + k * bb;
        for (int h = 0; h < (t == DT_Q6_K || t == DT_Q5_0 ? 1 : 2); h++) {
            uint16_t d = (uint16_t)((rng_next(s) & 0x83ff) | (5 + rng_next(s) % 12) << 10);
            memcpy(blk + (t == DT_Q6_K ? 208 : 2 * h), &d, 2);
        }
    }
    return w;
}

/* Activations the per-256 quantisation represents exactly: per block a power of two times
 * integers in [-127, 127], one of them +-127. */
static float *make_x_exact256(int n_b, int cols, uint64_t *s)
{
    float *x = malloc(sizeof(float) * (size_t)n_b * cols);
    for (int b = 0; b < n_b; b++)
        for (int c0 = 0; c0 < cols; c0 += 256) {
            float p = ldexpf(1, (int)(rng_next(s) % 12) - 9);
            for (int j = 0; j < 256; j++)
                x[(size_t)b * cols + c0 + j] = p * (float)((int)(rng_next(s) % 255) - 127);
            x[(size_t)b * cols + c0 + (int)(rng_next(s) % 256)] =
                (rng_next(s) & 1) ? 127 * p : -127 * p;
        }
    return x;
}

/* Runs one product (how: 0, KERN_BY_ROWS or KERN_BY_GEMM; ref: the naive reference) and
 * checks it against the double loop. Returns the number of bad elements. */
static int check_k(int how, uint32_t t, int rows, int cols, int n_b, bool ref, bool exact_x,
                   uint64_t seed)
{
    uint64_t s = seed;
    uint8_t *W = make_kweights(t, rows, cols, &s);
    float *X = exact_x ? make_x_exact256(n_b, cols, &s) : make_x_random(n_b, cols, &s);
    const size_t ny = (size_t)n_b * rows, rs = (size_t)cols / blk_elems(t) * block_bytes(t);
    float *Y = malloc(sizeof(float) * (ny + 16));
    for (size_t i = 0; i < ny + 16; i++)
        Y[i] = -12345.0f;
    if (ref)
        kern_matmul_ref(t, W, X, Y, rows, cols, n_b);
    else if (how)
        kern_matmul_how(how, t, W, X, Y, rows, cols, n_b);
    else if (n_b == 1)
        kern_matvec(t, W, X, Y, rows, cols);
    else
        kern_matmul(t, W, X, Y, rows, cols, n_b);
    const bool quant_err = !ref && !exact_x && how != KERN_BY_GEMM && is_k(t);
    int bad = 0;
    for (int r = 0; r < rows; r++) {
        for (int b = 0; b < n_b; b++) {
            const float *x = X + (size_t)b * cols;
            double y = 0, A = 0, Q = 0, wsum = 0, amax = 0;
            for (int c = 0; c < cols; c++) {
                double pa, pb;
                decode_k(t, W + rs * r + (size_t)(c / blk_elems(t)) * block_bytes(t),
                         c % blk_elems(t), &pa, &pb);
                y += (pa - pb) * x[c];
                A += fabs(pa * x[c]) + fabs(pb * x[c]);
                wsum += fabs(pa - pb);
                amax = fmax(amax, fabs(x[c]));
                if (c % 256 == 255) {
                    Q += amax / 127 / 2 * wsum * (1 + 1e-5);
                    wsum = amax = 0;
                }
            }
            double tol = ref ? 1e-6 * A : (cols + 8) * 0x1p-24 * A;
            if (quant_err)
                tol += Q * (1 + 1e-4) + (cols + 8) * 0x1p-24 * Q;
            const double got = Y[(size_t)b * rows + r];
            if (!(fabs(got - y) <= tol + 1e-30) && bad++ < 3)
                check_fail_(__FILE__, __LINE__,
                            "%s %s %dx%d n_b=%d%s: Y[%d][%d] = %.9g, exact %.9g, tol %.3g",
                            kname(t), ref ? "ref" : kern_simd_name(), rows, cols, n_b,
                            exact_x ? " exact-x" : "", b, r, got, y, tol);
        }
    }
    for (int i = 0; i < 16; i++)
        if (Y[ny + i] != -12345.0f && bad++ < 3)
            check_fail_(__FILE__, __LINE__, "wrote past Y (%dx%d n_b=%d)", rows, cols, n_b);
    free(W);
    free(X);
    free(Y);
    return bad;
}

static const int kshapes[][2] = {{1, 256}, {3, 512}, {17, 768}, {33, 1280}, {300, 1024}};
static const int kbatches[] = {1, 2, 3, 4, 5, 7, 9, 17, 33};

static void test_supported(void)
{
    for (int i = 0; i < N_ALL; i++) {
        CHECK(kern_type_supported(ktypes[i]));
        CHECK(kern_type_quantises(ktypes[i]) == is_k(ktypes[i]));
    }
    CHECK(!kern_type_supported(10)); /* q2_K */
    CHECK(!kern_type_supported(11)); /* q3_K */
    CHECK(!kern_type_quantises(DT_F16));
}

/* dt_to_f32 and kern_get_row against the test's decoder: each element is d*sc (rounded to
 * f32) times q minus dmin*m (rounded), so within 3 f32 roundings of its two parts. */
static void test_decode(void)
{
    uint64_t s = 11;
    for (int ti = 0; ti < N_ALL; ti++) {
        const uint32_t t = ktypes[ti];
        const int rows = 4, cols = 512;
        uint8_t *W = make_kweights(t, rows, cols, &s);
        float out[512];
        int bad = 0;
        for (int r = 0; r < rows; r++) {
            const uint8_t *row = W + (size_t)r * (cols / blk_elems(t)) * block_bytes(t);
            kern_get_row(t, W, cols, r, out);
            for (int c = 0; c < cols; c++) {
                double a, b;
                decode_k(t, row + (size_t)(c / blk_elems(t)) * block_bytes(t), c % blk_elems(t), &a,
                         &b);
                bad += !(fabs(out[c] - (a - b)) <= 3 * 0x1p-24 * (fabs(a) + fabs(b)));
            }
        }
        CHECK_MSG(bad == 0, "%s: %d elements differ from the layout", kname(t), bad);
        free(W);
    }
}

/* The K layout: d = max|x| / 127 per 256-block, q = x / d rounded, sums of each 16. */
static void test_qk_layout(void)
{
    uint64_t s = 21;
    const int n = 768;
    float *x = make_x_random(1, n, &s);
    x[300] = 0; /* a zero among them */
    uint8_t *qk = aligned_alloc(64, kern_qk_bytes(n));
    kern_qk_make(x, n, qk);
    const int8_t *q = (const int8_t *)qk;
    const float *d = (const float *)(qk + n);
    const int16_t *bs = (const int16_t *)(d + n / 256);
    int bad = 0;
    for (int b = 0; b < n / 256; b++) {
        float amax = 0;
        for (int i = 0; i < 256; i++)
            amax = fmaxf(amax, fabsf(x[256 * b + i]));
        bad += d[b] != amax / 127.0f;
        for (int k = 0; k < 16; k++) {
            int sum = 0;
            for (int i = 0; i < 16; i++) {
                const int e = 256 * b + 16 * k + i;
                bad += fabs(q[e] - x[e] / (double)d[b]) > 0.5 + 1e-5;
                sum += q[e];
            }
            bad += bs[16 * b + k] != sum;
        }
    }
    CHECK_INT(bad, ==, 0);
    CHECK(kern_qk_bytes(n) % 64 == 0 && kern_qk_bytes(n) >= (size_t)n + 3 * 4 + 48 * 2);
    CHECK(kern_qk_bytes(255) == 0 && kern_qk_bytes(300) == kern_qk_bytes(256));
    free(qk);
    free(x);
}

static void test_ref_vs_double(void)
{
    uint64_t seed = 1;
    for (int ti = 0; ti < N_ALL; ti++)
        for (int si = 0; si < N_OF(kshapes); si++)
            CHECK_INT(
                check_k(0, ktypes[ti], kshapes[si][0], kshapes[si][1], 2, true, false, seed++), ==,
                0);
}

static void run_all(void)
{
    uint64_t seed = 100;
    for (int ti = 0; ti < N_ALL; ti++) {
        const uint32_t t = ktypes[ti];
        for (int si = 0; si < N_OF(kshapes); si++) {
            const int rows = kshapes[si][0], cols = kshapes[si][1];
            for (int bi = 0; bi < N_OF(kbatches); bi++) {
                if ((size_t)rows * cols * kbatches[bi] > 1200000)
                    continue;
                CHECK_INT(check_k(0, t, rows, cols, kbatches[bi], false, true, seed++), ==, 0);
                if (bi % 2 == 0)
                    CHECK_INT(check_k(0, t, rows, cols, kbatches[bi], false, false, seed++), ==, 0);
            }
        }
        /* more vectors than one block of them; and a forced sgemm on dequantised tiles */
        CHECK_INT(check_k(KERN_BY_ROWS, t, 33, 512, 70, false, true, seed++), ==, 0);
        CHECK_INT(check_k(KERN_BY_GEMM, t, 40, 768, 5, false, false, seed++), ==, 0);
    }
}

static void run_on_path(const char *name)
{
    const char *before = kern_simd_name();
    int rc = kern_force_simd(name);
    if (rc == ERR_UNSUPPORTED) {
        check_skip("this CPU cannot run %s", name);
        return;
    }
    CHECK_OK(rc);
    int nt = omp_get_max_threads();
    for (int threads = 1; threads <= 3; threads += 2) {
        omp_set_num_threads(threads);
        run_all();
    }
    omp_set_num_threads(nt);
    CHECK_OK(kern_force_simd(before));
}

static void test_portable(void)
{
    run_on_path("portable");
}

static void test_avx2(void)
{
    run_on_path("avx2");
}

static void test_avx512(void)
{
    run_on_path("avx512");
}

/* With random activations the per-256 quantisation shows: a result differs from the exact
 * product by more than f32 rounding, and less than the bound. */
static void test_quant_error_visible(void)
{
    uint64_t s = 77;
    const int rows = 64, cols = 1024;
    int over_f32 = 0;
    for (int ti = 0; ti < 3; ti++) {
        const uint32_t t = ktypes[ti];
        uint8_t *W = make_kweights(t, rows, cols, &s);
        float *X = make_x_random(1, cols, &s);
        float Y[64];
        kern_matvec(t, W, X, Y, rows, cols);
        const size_t rs = (size_t)cols / 256 * block_bytes(t);
        for (int r = 0; r < rows; r++) {
            double y = 0, A = 0;
            for (int c = 0; c < cols; c++) {
                double w = decode_elem(t, W + rs * r, c);
                y += w * X[c];
                A += fabs(w * X[c]);
            }
            over_f32 += fabs(Y[r] - y) > (cols + 8) * 0x1p-24 * A;
        }
        free(W);
        free(X);
    }
    CHECK_MSG(over_f32 > 10, "only %d of 192 rows show the activation quantisation", over_f32);
}

/* The quantizer make-tiny uses: valid blocks whose values stay near the floats, and more bits
 * leave less error (RMS error relative to RMS value, uniform(-1, 1) floats with some large
 * and tiny sub-blocks). */
static void test_quantize(void)
{
    uint64_t s = 5;
    const int n = 4096;
    float *x = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n);
    for (int i = 0; i < n; i++)
        x[i] = rng_uniform(&s, -1, 1) * ((i / 32) % 7 == 3 ? 8.0f : (i / 32) % 5 == 1 ? 0.01f : 1);
    uint8_t *q = malloc((size_t)n / 256 * 210);
    double rel[N_ALL];
    for (int ti = 0; ti < N_ALL; ti++) {
        CHECK_OK(dt_from_f32(ktypes[ti], x, q, n));
        CHECK_OK(dt_to_f32(ktypes[ti], q, y, n));
        double e2 = 0, x2 = 0;
        for (int i = 0; i < n; i++) {
            e2 += (double)(y[i] - x[i]) * (y[i] - x[i]);
            x2 += (double)x[i] * x[i];
            /* the test's decoder reads the same value */
            CHECK(fabs(decode_elem(ktypes[ti], q, i) - y[i]) <= 1e-5 * (fabs(y[i]) + 1e-3));
        }
        rel[ti] = sqrt(e2 / x2);
    }
    /* measured 0.064, 0.030, 0.015 */
    CHECK_MSG(rel[0] < 0.08 && rel[1] < 0.04 && rel[2] < 0.02, "rms error %.3g %.3g %.3g", rel[0],
              rel[1], rel[2]);
    CHECK_MSG(rel[1] < rel[0] * 0.7 && rel[2] < rel[1] * 0.7, "rms error %.3g %.3g %.3g", rel[0],
              rel[1], rel[2]);
    /* 5 bits over a block of 32: about q5_K's error */
    CHECK_MSG(rel[3] < 0.05 && rel[4] < 0.05, "q5_0 %.3g, q5_1 %.3g", rel[3], rel[4]);
    free(x);
    free(y);
    free(q);
}

int main(void)
{
    RUN(test_supported);
    RUN(test_decode);
    RUN(test_qk_layout);
    RUN(test_ref_vs_double);
    RUN(test_quantize);
    RUN(test_portable);
    RUN(test_avx2);
    RUN(test_avx512);
    RUN(test_quant_error_visible);
    return check_done();
}
