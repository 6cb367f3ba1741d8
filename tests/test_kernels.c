/*
 * Tests for model/kernels: the naive references against a double-precision loop with
 * its own decoders of the stored formats, and every fast path (each SIMD path this CPU
 * can run, forced in turn) against that loop, for every weight type and many shapes:
 * odd row counts, ragged columns for the float types, batches 1..20 (the row kernels)
 * and larger (OpenBLAS), one thread and several.
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

static const uint32_t types[] = {DT_F32, DT_F16, DT_BF16, DT_Q8_0, DT_Q4_0};
static const char *type_names[] = {"f32", "f16", "bf16", "q8_0", "q4_0"};
#define N_TYPES 5

static const char *tname(uint32_t t)
{
    for (int i = 0; i < N_TYPES; i++)
        if (types[i] == t)
            return type_names[i];
    return "?";
}

static bool is_quant(uint32_t t)
{
    return t == DT_Q8_0 || t == DT_Q4_0;
}

/* splitmix64: a small seeded generator for test inputs. */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float rng_uniform(uint64_t *s, float lo, float hi)
{
    return lo + (hi - lo) * (float)((rng_next(s) >> 40) * 0x1p-24);
}

/* ---- independent decoders of the stored formats ---- */

static double f16_decode(uint16_t h)
{
    int sign = h >> 15, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    double v = e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);
    return sign ? -v : v;
}

static double bf16_decode(uint16_t h)
{
    int sign = h >> 15, e = (h >> 7) & 0xff, m = h & 0x7f;
    double v = e == 0 ? ldexp(m, -133) : ldexp(128 + m, e - 134);
    return sign ? -v : v;
}

static uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static size_t row_size(uint32_t t, int n)
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
static double decode(uint32_t t, const uint8_t *row, int c)
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
static uint8_t *make_weights(uint32_t t, int rows, int cols, uint64_t *s)
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
static float *make_x_random(int n_b, int cols, uint64_t *s)
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
static float *make_x_exact(int n_b, int cols, uint64_t *s)
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
static void exact(uint32_t t, const uint8_t *W, const float *X, int rows, int cols, int n_b,
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

/* Compares Y [n_b][rows] with the exact products; quant_err: whether the error of
 * quantising x may appear. Returns the number of elements out of bounds (the first few
 * are reported). */
static int compare(uint32_t t, const float *Y, const double *Yd, const double *A, const double *Q,
                   int rows, int cols, int n_b, bool ref, bool quant_err, const char *what)
{
    int bad = 0;
    for (size_t i = 0; i < (size_t)n_b * rows; i++) {
        /* the reference sums in double and rounds once */
        double tol = ref ? 1e-6 * A[i] : (cols + 8) * 0x1p-24 * A[i];
        if (quant_err)
            tol += Q[i] * (1 + 1e-4) + (cols + 8) * 0x1p-24 * Q[i];
        tol += 1e-30;
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

/* Runs one product (kern_matvec for n_b == 1 when vec is set, else kern_matmul) on an
 * output with guard elements after it, and checks every element against the double loop.
 * quant_x: whether the error of quantising x may appear. Returns the number of bad ones. */
static int check_product_how(int how, uint32_t t, int rows, int cols, int n_b, bool ref, bool vec,
                             bool exact_x, uint64_t seed)
{
    uint64_t s = seed;
    uint8_t *W = make_weights(t, rows, cols, &s);
    float *X = exact_x ? make_x_exact(n_b, cols, &s) : make_x_random(n_b, cols, &s);
    size_t ny = (size_t)n_b * rows;
    float *Y = malloc(sizeof(float) * (ny + 16));
    double *Yd = malloc(sizeof(double) * ny), *A = malloc(sizeof(double) * ny),
           *Q = malloc(sizeof(double) * ny);
    for (size_t i = 0; i < ny + 16; i++)
        Y[i] = -12345.0f;
    if (ref && vec && n_b == 1)
        kern_matvec_ref(t, W, X, Y, rows, cols);
    else if (ref)
        kern_matmul_ref(t, W, X, Y, rows, cols, n_b);
    else if (how)
        kern_matmul_how(how, t, W, X, Y, rows, cols, n_b);
    else if (vec && n_b == 1)
        kern_matvec(t, W, X, Y, rows, cols);
    else
        kern_matmul(t, W, X, Y, rows, cols, n_b);
    exact(t, W, X, rows, cols, n_b, Yd, A, Q);
    bool quant_err = !ref && is_quant(t) && !exact_x && how != KERN_BY_GEMM;
    int bad = compare(t, Y, Yd, A, Q, rows, cols, n_b, ref, quant_err, exact_x ? " exact-x" : "");
    for (int i = 0; i < 16; i++)
        if (Y[ny + i] != -12345.0f) {
            if (bad++ < 3)
                check_fail_(__FILE__, __LINE__, "wrote past Y (%dx%d n_b=%d)", rows, cols, n_b);
        }
    free(W);
    free(X);
    free(Y);
    free(Yd);
    free(A);
    free(Q);
    return bad;
}

static int check_product(uint32_t t, int rows, int cols, int n_b, bool ref, bool vec, bool exact_x,
                         uint64_t seed)
{
    return check_product_how(0, t, rows, cols, n_b, ref, vec, exact_x, seed);
}

/* Shapes for every type (n_cols a multiple of 32) and extra ragged ones for float types. */
static const int shapes[][2] = {{1, 32},  {3, 64},   {17, 96},   {33, 160}, {64, 32},
                                {7, 576}, {129, 64}, {300, 576}, {40, 1536}};
static const int ragged[][2] = {{5, 1}, {9, 7}, {13, 15}, {3, 17}, {31, 33}, {20, 100}, {2, 255}};
static const int batches[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 16, 17, 20, 33, 64};
#define N_OF(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* Runs first: a path forced before any kernel ran must not be undone by the first
 * run-time choice. Leaves the best path this CPU has. */
static void test_force_first(void)
{
    CHECK_OK(kern_force_simd("portable"));
    CHECK_STR(kern_simd_name(), "portable");
    if (kern_force_simd("avx512") != 0 && kern_force_simd("avx2") != 0)
        CHECK_OK(kern_force_simd("portable"));
}

static void test_type_supported(void)
{
    for (int i = 0; i < N_TYPES; i++)
        CHECK(kern_type_supported(types[i]));
    CHECK(!kern_type_supported(3));  /* q4_1 */
    CHECK(!kern_type_supported(12)); /* q4_K */
    CHECK(!kern_type_supported(99));
}

static void test_ref_vs_double(void)
{
    uint64_t seed = 1;
    for (int ti = 0; ti < N_TYPES; ti++) {
        uint32_t t = types[ti];
        for (int si = 0; si < N_OF(shapes); si++) {
            CHECK_INT(check_product(t, shapes[si][0], shapes[si][1], 1, true, true, false, seed++),
                      ==, 0);
            CHECK_INT(check_product(t, shapes[si][0], shapes[si][1], 3, true, false, false, seed++),
                      ==, 0);
        }
        if (!is_quant(t))
            for (int si = 0; si < N_OF(ragged); si++)
                CHECK_INT(
                    check_product(t, ragged[si][0], ragged[si][1], 2, true, false, false, seed++),
                    ==, 0);
    }
}

static void test_get_row(void)
{
    uint64_t s = 7;
    for (int ti = 0; ti < N_TYPES; ti++) {
        uint32_t t = types[ti];
        int rows = 5, cols = 96;
        uint8_t *W = make_weights(t, rows, cols, &s);
        float out[96];
        int bad = 0;
        for (int r = 0; r < rows; r++) {
            kern_get_row(t, W, cols, r, out);
            for (int c = 0; c < cols; c++)
                bad += out[c] != (float)decode(t, W + row_size(t, cols) * r, c);
        }
        CHECK_MSG(bad == 0, "%s: %d elements differ", type_names[ti], bad);
        free(W);
    }
}

/* Every type, shape and batch on the current path; exact and random activations. */
static void run_fast_all(void)
{
    uint64_t seed = 1000;
    for (int ti = 0; ti < N_TYPES; ti++) {
        uint32_t t = types[ti];
        for (int si = 0; si < N_OF(shapes); si++) {
            int rows = shapes[si][0], cols = shapes[si][1];
            CHECK_INT(check_product(t, rows, cols, 1, false, true, true, seed++), ==, 0);
            CHECK_INT(check_product(t, rows, cols, 1, false, true, false, seed++), ==, 0);
            for (int bi = 0; bi < N_OF(batches); bi++) {
                if ((size_t)rows * cols * batches[bi] > 1500000)
                    continue;
                CHECK_INT(check_product(t, rows, cols, batches[bi], false, false, true, seed++), ==,
                          0);
                if (bi % 3 == 0)
                    CHECK_INT(
                        check_product(t, rows, cols, batches[bi], false, false, false, seed++), ==,
                        0);
            }
        }
        if (!is_quant(t))
            for (int si = 0; si < N_OF(ragged); si++)
                for (int bi = 0; bi < N_OF(batches); bi += 2)
                    CHECK_INT(check_product(t, ragged[si][0], ragged[si][1], batches[bi], false,
                                            false, false, seed++),
                              ==, 0);
        /* both methods whatever kern_matmul would pick; for the row kernels, more vectors
         * than one block of them; for sgemm, several tiles of a converted W (~2 MB each) */
        CHECK_INT(check_product_how(KERN_BY_ROWS, t, 33, 160, 70, false, false, true, seed++), ==,
                  0);
        CHECK_INT(check_product_how(KERN_BY_ROWS, t, 300, 576, 67, false, false, false, seed++), ==,
                  0);
        CHECK_INT(check_product_how(KERN_BY_GEMM, t, 33, 160, 5, false, false, false, seed++), ==,
                  0);
        CHECK_INT(check_product_how(KERN_BY_GEMM, t, 300, 4096, 16, false, false, false, seed++),
                  ==, 0);
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
    CHECK_STR(kern_simd_name(), name);
    /* more threads than cores is fine: it checks an uneven row split */
    int nt = omp_get_max_threads();
    omp_set_num_threads(3);
    run_fast_all();
    omp_set_num_threads(nt);
    CHECK_OK(kern_force_simd(before));
}

static void test_fast_portable(void)
{
    run_on_path("portable");
}

static void test_fast_avx2(void)
{
    run_on_path("avx2");
}

static void test_fast_avx512(void)
{
    run_on_path("avx512");
}

static void test_fast_avx512_fma(void)
{
    run_on_path("avx512-fma");
}

/* The chosen path on the calling thread alone, and with two threads. */
static void test_fast_threads(void)
{
    int nt = omp_get_max_threads();
    uint64_t seed = 5000;
    for (int threads = 1; threads <= 2; threads++) {
        omp_set_num_threads(threads);
        for (int ti = 0; ti < N_TYPES; ti++) {
            CHECK_INT(check_product(types[ti], 300, 576, 1, false, true, true, seed++), ==, 0);
            CHECK_INT(check_product(types[ti], 300, 576, 5, false, false, true, seed++), ==, 0);
            CHECK_INT(check_product(types[ti], 300, 576, 40, false, false, true, seed++), ==, 0);
        }
    }
    omp_set_num_threads(nt);
}

static void test_force_unknown(void)
{
    CHECK_INT(kern_force_simd("sse9"), ==, ERR_INVAL);
    const char *name = kern_simd_name();
    CHECK(strcmp(name, "avx512") == 0 || strcmp(name, "avx2") == 0 ||
          strcmp(name, "portable") == 0 || strcmp(name, "avx512-fma") == 0);
}

/* The quantisation bound is not vacuous: with random activations a Q8_0 row kernel does
 * differ from the exact product, by less than the bound but more than f32 rounding. */
static void test_quant_error_visible(void)
{
    if (strcmp(kern_simd_name(), "avx512-fma") == 0) {
        check_skip("the chosen path does not quantise activations");
        return;
    }
    uint64_t s = 99;
    int rows = 64, cols = 576;
    uint8_t *W = make_weights(DT_Q8_0, rows, cols, &s);
    float *X = make_x_random(1, cols, &s);
    float Y[64];
    double Yd[64], A[64], Q[64];
    kern_matvec(DT_Q8_0, W, X, Y, rows, cols);
    exact(DT_Q8_0, W, X, rows, cols, 1, Yd, A, Q);
    double worst = 0, worst_q = 0;
    for (int r = 0; r < rows; r++) {
        worst = fmax(worst, fabs(Y[r] - Yd[r]) / A[r]);
        worst_q = fmax(worst_q, fabs(Y[r] - Yd[r]) / Q[r]);
    }
    CHECK(worst > (cols + 8) * 0x1p-24);
    CHECK(worst_q < 1);
    free(W);
    free(X);
}

/* ---- fused products ---- */

/* A fused product under test: up to 5 matrices of the given types and row counts, one X,
 * one Y per matrix (with guard elements after it), the exact products of each. */
typedef struct multi_case {
    int n_mats, cols, n_b;
    bool exact_x;
    uint32_t types[KERN_MAX_MATS];
    int rows[KERN_MAX_MATS];
    uint8_t *W[KERN_MAX_MATS];
    float *X, *Y[KERN_MAX_MATS];
    double *Yd[KERN_MAX_MATS], *A[KERN_MAX_MATS], *Q[KERN_MAX_MATS];
    kern_mat_t mats[KERN_MAX_MATS];
} multi_case_t;

static void multi_make(multi_case_t *mc, int n_mats, const uint32_t *tys, const int *rows, int cols,
                       int n_b, bool exact_x, uint64_t seed)
{
    uint64_t s = seed;
    memset(mc, 0, sizeof *mc);
    mc->n_mats = n_mats;
    mc->cols = cols;
    mc->n_b = n_b;
    mc->exact_x = exact_x;
    mc->X = exact_x ? make_x_exact(n_b, cols, &s) : make_x_random(n_b, cols, &s);
    for (int i = 0; i < n_mats; i++) {
        size_t ny = (size_t)n_b * rows[i];
        mc->types[i] = tys[i];
        mc->rows[i] = rows[i];
        mc->W[i] = make_weights(tys[i], rows[i], cols, &s);
        mc->Y[i] = malloc(sizeof(float) * (ny + 16));
        for (size_t k = 0; k < ny + 16; k++)
            mc->Y[i][k] = -12345.0f;
        mc->Yd[i] = malloc(sizeof(double) * ny);
        mc->A[i] = malloc(sizeof(double) * ny);
        mc->Q[i] = malloc(sizeof(double) * ny);
        exact(tys[i], mc->W[i], mc->X, rows[i], cols, n_b, mc->Yd[i], mc->A[i], mc->Q[i]);
        mc->mats[i] = (kern_mat_t){.type = tys[i], .W = mc->W[i], .n_rows = rows[i], .Y = mc->Y[i]};
    }
}

/* Every matrix's Y against its exact product, and the guard elements; bad elements. */
static int multi_check(const multi_case_t *mc, const char *what)
{
    int bad = 0;
    for (int i = 0; i < mc->n_mats; i++) {
        uint32_t t = mc->types[i];
        /* sgemm (float types, 32 vectors or more) multiplies f32 activations */
        bool quant_err = is_quant(t) && !mc->exact_x;
        bad += compare(t, mc->Y[i], mc->Yd[i], mc->A[i], mc->Q[i], mc->rows[i], mc->cols, mc->n_b,
                       false, quant_err, what);
        size_t ny = (size_t)mc->n_b * mc->rows[i];
        for (int k = 0; k < 16; k++)
            if (mc->Y[i][ny + k] != -12345.0f && bad++ < 3)
                check_fail_(__FILE__, __LINE__, "%s: wrote past Y of matrix %d", what, i);
    }
    return bad;
}

static void multi_free(multi_case_t *mc)
{
    free(mc->X);
    for (int i = 0; i < mc->n_mats; i++) {
        free(mc->W[i]);
        free(mc->Y[i]);
        free(mc->Yd[i]);
        free(mc->A[i]);
        free(mc->Q[i]);
    }
}

/* kern_matmul_multi on one case through ks; bad elements. */
static int multi_run(kern_scratch_t *ks, int n_mats, const uint32_t *tys, const int *rows, int cols,
                     int n_b, bool exact_x, uint64_t seed)
{
    multi_case_t mc;
    multi_make(&mc, n_mats, tys, rows, cols, n_b, exact_x, seed);
    char what[96];
    snprintf(what, sizeof what, " multi(%d, first %s, %d threads)%s", n_mats, tname(tys[0]),
             omp_get_max_threads(), exact_x ? " exact-x" : "");
    int rc = kern_matmul_multi(n_mats, mc.mats, mc.X, cols, n_b, ks, NULL, NULL);
    CHECK_OK(rc);
    int bad = multi_check(&mc, what);
    multi_free(&mc);
    return bad;
}

/* Every type alone (three matrices of odd row counts, as Q, K and V) and all types mixed
 * in one product, batches 1..20 and 32 or more, exact and random activations, on the
 * current path and thread count. One scratch serves every call (it grows and is reused). */
static void run_multi_all(kern_scratch_t *ks)
{
    static const int rows3[][3] = {{17, 5, 5}, {64, 16, 16}, {129, 33, 1}, {300, 100, 100}};
    static const int cols_q[] = {32, 96, 576};
    static const int cols_ragged[] = {7, 33, 100};
    static const int nbs[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 13, 16, 17, 20, 32, 33, 64};
    uint64_t seed = 9000;
    for (int ti = 0; ti < N_TYPES; ti++) {
        uint32_t t3[3] = {types[ti], types[ti], types[ti]};
        for (int si = 0; si < N_OF(rows3); si++)
            for (int ci = 0; ci < N_OF(cols_q); ci++)
                for (int bi = 0; bi < N_OF(nbs); bi++) {
                    int n_b = nbs[bi];
                    if ((size_t)rows3[si][0] * cols_q[ci] * n_b > 200000)
                        continue;
                    CHECK_INT(multi_run(ks, 3, t3, rows3[si], cols_q[ci], n_b, true, seed++), ==,
                              0);
                    if (bi % 4 == 0)
                        CHECK_INT(multi_run(ks, 3, t3, rows3[si], cols_q[ci], n_b, false, seed++),
                                  ==, 0);
                }
        if (is_quant(types[ti]))
            continue;
        for (int ci = 0; ci < N_OF(cols_ragged); ci++)
            for (int bi = 0; bi < N_OF(nbs); bi += 3)
                CHECK_INT(multi_run(ks, 3, t3, rows3[ci], cols_ragged[ci], nbs[bi], false, seed++),
                          ==, 0);
    }
    /* every type in one product: one quantisation for both Q8_0 and Q4_0, sgemm for the
     * float types from 32 vectors on, rows for the others */
    static const uint32_t mix[] = {DT_Q8_0, DT_F32, DT_Q4_0, DT_F16, DT_BF16, DT_Q8_0};
    static const int mix_rows[] = {40, 3, 17, 64, 1, 200};
    for (int bi = 0; bi < N_OF(nbs); bi++) {
        CHECK_INT(multi_run(ks, 6, mix, mix_rows, 160, nbs[bi], true, seed++), ==, 0);
        CHECK_INT(multi_run(ks, 6, mix, mix_rows, 96, nbs[bi], false, seed++), ==, 0);
    }
}

static void multi_on_path(const char *name)
{
    const char *before = kern_simd_name();
    int rc = kern_force_simd(name);
    if (rc == ERR_UNSUPPORTED) {
        check_skip("this CPU cannot run %s", name);
        return;
    }
    CHECK_OK(rc);
    kern_scratch_t *ks = NULL;
    CHECK_OK(kern_scratch_new(&ks));
    int nt = omp_get_max_threads();
    /* one thread, and more threads than cores (uneven shares; two in test_multi_done) */
    for (int threads = 1; threads <= 3; threads += 2) {
        omp_set_num_threads(threads);
        run_multi_all(ks);
    }
    omp_set_num_threads(nt);
    kern_scratch_destroy(&ks);
    CHECK(ks == NULL);
    CHECK_OK(kern_force_simd(before));
}

static void test_multi_portable(void)
{
    multi_on_path("portable");
}

static void test_multi_avx2(void)
{
    multi_on_path("avx2");
}

static void test_multi_avx512(void)
{
    multi_on_path("avx512");
}

static void test_multi_avx512_fma(void)
{
    multi_on_path("avx512-fma");
}

/* What done sees: how often each row of each matrix was reported, ranges that are not
 * whole units, and each reported row's values at that moment. */
typedef struct done_log {
    const multi_case_t *mc;
    int *count[KERN_MAX_MATS];  /* [rows] */
    float *seen[KERN_MAX_MATS]; /* [n_b][rows] */
    int misaligned;
} done_log_t;

static void log_done(void *ctx, const int *r0, const int *r1)
{
    done_log_t *d = ctx;
    const multi_case_t *mc = d->mc;
    for (int i = 0; i < mc->n_mats; i++) {
        if (r0[i] > r1[i] || r0[i] % KERN_ROW_UNIT ||
            (r1[i] % KERN_ROW_UNIT && r1[i] != mc->rows[i]))
#pragma omp atomic
            d->misaligned++;
        for (int r = r0[i]; r < r1[i]; r++) {
#pragma omp atomic
            d->count[i][r]++;
            for (int b = 0; b < mc->n_b; b++) {
                size_t k = (size_t)b * mc->rows[i] + r;
                d->seen[i][k] = mc->Y[i][k];
            }
        }
    }
}

/* done reports every row of every matrix exactly once, in whole units, when its values
 * for every vector are final. */
static void test_multi_done(void)
{
    static const uint32_t t[] = {DT_F32, DT_Q8_0, DT_F16};
    static const int rows[] = {576, 192, 37};
    static const int nbs[] = {1, 3, 5, 40};
    kern_scratch_t *ks = NULL;
    CHECK_OK(kern_scratch_new(&ks));
    int nt = omp_get_max_threads();
    for (int threads = 1; threads <= 3; threads++) {
        omp_set_num_threads(threads);
        for (int bi = 0; bi < N_OF(nbs); bi++) {
            multi_case_t mc;
            multi_make(&mc, 3, t, rows, 160, nbs[bi], true, 77 + bi);
            done_log_t d = {.mc = &mc};
            for (int i = 0; i < 3; i++) {
                d.count[i] = calloc((size_t)rows[i], sizeof(int));
                d.seen[i] = malloc(sizeof(float) * (size_t)rows[i] * nbs[bi]);
            }
            CHECK_OK(kern_matmul_multi(3, mc.mats, mc.X, 160, nbs[bi], ks, log_done, &d));
            CHECK_INT(multi_check(&mc, " done"), ==, 0);
            CHECK_INT(d.misaligned, ==, 0);
            int wrong_count = 0, changed = 0;
            for (int i = 0; i < 3; i++) {
                for (int r = 0; r < rows[i]; r++)
                    wrong_count += d.count[i][r] != 1;
                changed += memcmp(d.seen[i], mc.Y[i], sizeof(float) * rows[i] * nbs[bi]) != 0;
                free(d.count[i]);
                free(d.seen[i]);
            }
            CHECK_INT(wrong_count, ==, 0);
            CHECK_INT(changed, ==, 0);
            multi_free(&mc);
        }
    }
    omp_set_num_threads(nt);
    kern_scratch_destroy(&ks);
}

/* The team form inside the caller's parallel region, each thread with its own quantised
 * copy of the activations; outside any region; and kern_matmul_rows in pieces. */
static void test_multi_team(void)
{
    static const uint32_t t[] = {DT_Q8_0, DT_Q4_0, DT_F32, DT_BF16};
    static const int rows[] = {300, 65, 64, 17};
    static const int nbs[] = {1, 2, 6, 33};
    const int cols = 224;
    kern_scratch_t *ks = NULL;
    CHECK_OK(kern_scratch_new(&ks));
    CHECK_OK(kern_scratch_reserve(ks, 3));
    const size_t qxb = kern_qx_bytes(cols);
    CHECK_INT(qxb % 64, ==, 0);
    for (int bi = 0; bi < N_OF(nbs); bi++) {
        const int n_b = nbs[bi];
        multi_case_t mc;
        multi_make(&mc, 4, t, rows, cols, n_b, bi % 2 == 0, 300 + bi);
        int oom = 0;
#pragma omp parallel num_threads(3)
        {
            uint8_t *qx = aligned_alloc(64, qxb * n_b);
            if (!qx) {
#pragma omp atomic
                oom++;
            }
#pragma omp barrier
            if (!oom) {
                for (int b = 0; b < n_b; b++)
                    kern_qx_make(mc.X + (size_t)b * cols, cols, qx + b * qxb);
                kern_act_t a = {.x = mc.X, .qx = qx, .n_cols = cols, .n_b = n_b};
                kern_matmul_multi_team(4, mc.mats, &a, ks, NULL, NULL);
            }
#pragma omp barrier
            free(qx);
        }
        CHECK_INT(oom, ==, 0);
        CHECK_INT(multi_check(&mc, " team of 3"), ==, 0);

        /* outside a parallel region, and by rows in pieces that are not whole units */
        uint8_t *qx = aligned_alloc(64, qxb * n_b);
        for (int b = 0; b < n_b; b++)
            kern_qx_make(mc.X + (size_t)b * cols, cols, qx + b * qxb);
        kern_act_t a = {.x = mc.X, .qx = qx, .n_cols = cols, .n_b = n_b};
        for (int i = 0; i < 4; i++)
            for (size_t k = 0; k < (size_t)n_b * rows[i]; k++)
                mc.Y[i][k] = NAN;
        kern_matmul_multi_team(4, mc.mats, &a, ks, NULL, NULL);
        CHECK_INT(multi_check(&mc, " team of 1"), ==, 0);
        for (int i = 0; i < 4; i++) {
            for (size_t k = 0; k < (size_t)n_b * rows[i]; k++)
                mc.Y[i][k] = NAN;
            for (int r0 = 0; r0 < rows[i]; r0 += 7)
                kern_matmul_rows(&mc.mats[i], &a, r0, r0 + 7 < rows[i] ? r0 + 7 : rows[i]);
        }
        CHECK_INT(multi_check(&mc, " rows"), ==, 0);
        free(qx);
        multi_free(&mc);
    }
    kern_scratch_destroy(&ks);
}

int main(void)
{
    RUN(test_force_first);
    RUN(test_type_supported);
    RUN(test_ref_vs_double);
    RUN(test_get_row);
    RUN(test_force_unknown);
    RUN(test_fast_threads);
    RUN(test_fast_portable);
    RUN(test_fast_avx2);
    RUN(test_fast_avx512);
    RUN(test_fast_avx512_fma);
    RUN(test_quant_error_visible);
    RUN(test_multi_portable);
    RUN(test_multi_avx2);
    RUN(test_multi_avx512);
    RUN(test_multi_avx512_fma);
    RUN(test_multi_done);
    RUN(test_multi_team);
    return check_done();
}
