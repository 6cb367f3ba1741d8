/*
 * Tests for model/kernels: the naive references against a double-precision loop with
 * its own decoders of the stored formats, and every fast path (each SIMD path this CPU
 * can run, forced in turn) against that loop, for every weight type and many shapes:
 * odd row counts, ragged columns for the float types, batches 1..20 (the row kernels)
 * and larger (OpenBLAS), one thread and several; Q8_0 also packed 16 rows at a time
 * (kern_pack), on every path. Tolerances: tests/kern_fixture.h.
 * The fused products are tested in tests/test_kernels_multi.c.
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

/* Runs one product (kern_matvec for n_b == 1 when vec is set, else kern_matmul) on an
 * output with guard elements after it, and checks every element against the double loop.
 * quant_x: whether the error of quantising x may appear; packed: Q8_0 weights multiplied
 * packed (kern_pack), checked against the loop on the file's rows. Returns the number of
 * bad ones. */
static int check_product_packed(int how, uint32_t t, bool packed, int rows, int cols, int n_b,
                                bool ref, bool vec, bool exact_x, uint64_t seed)
{
    uint64_t s = seed;
    uint8_t *W = make_weights(t, rows, cols, &s);
    uint8_t *P = packed ? packed_copy(W, rows, cols) : NULL;
    const uint32_t tk = packed ? KERN_TYPE_Q8_0_R16 : t;
    const void *Wk = packed ? (const void *)P : W;
    float *X = exact_x ? make_x_exact(n_b, cols, &s) : make_x_random(n_b, cols, &s);
    size_t ny = (size_t)n_b * rows;
    float *Y = malloc(sizeof(float) * (ny + 16));
    double *Yd = malloc(sizeof(double) * ny), *A = malloc(sizeof(double) * ny),
           *Q = malloc(sizeof(double) * ny);
    for (size_t i = 0; i < ny + 16; i++)
        Y[i] = -12345.0f;
    if (ref && vec && n_b == 1)
        kern_matvec_ref(tk, Wk, X, Y, rows, cols);
    else if (ref)
        kern_matmul_ref(tk, Wk, X, Y, rows, cols, n_b);
    else if (how)
        kern_matmul_how(how, tk, Wk, X, Y, rows, cols, n_b);
    else if (vec && n_b == 1)
        kern_matvec(tk, Wk, X, Y, rows, cols);
    else
        kern_matmul(tk, Wk, X, Y, rows, cols, n_b);
    exact(t, W, X, rows, cols, n_b, Yd, A, Q);
    bool quant_err = !ref && is_quant(t) && !exact_x && (how != KERN_BY_GEMM || packed);
    int bad =
        compare(t, Y, Yd, A, Q, rows, cols, n_b, ref, quant_err, 0, exact_x ? " exact-x" : "");
    for (int i = 0; i < 16; i++)
        if (Y[ny + i] != -12345.0f) {
            if (bad++ < 3)
                check_fail_(__FILE__, __LINE__, "wrote past Y (%dx%d n_b=%d)", rows, cols, n_b);
        }
    free(W);
    free(P);
    free(X);
    free(Y);
    free(Yd);
    free(A);
    free(Q);
    return bad;
}

static int check_product_how(int how, uint32_t t, int rows, int cols, int n_b, bool ref, bool vec,
                             bool exact_x, uint64_t seed)
{
    return check_product_packed(how, t, false, rows, cols, n_b, ref, vec, exact_x, seed);
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
    CHECK(!kern_type_supported(10)); /* q2_K */
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
    /* packed Q8_0: every row of whole groups and of a padded last group */
    for (int rows = 1; rows <= 40; rows += 13) {
        const int cols = 96;
        uint8_t *W = make_weights(DT_Q8_0, rows, cols, &s), *P = packed_copy(W, rows, cols);
        float out[96];
        int bad = 0;
        for (int r = 0; r < rows; r++) {
            kern_get_row(KERN_TYPE_Q8_0_R16, P, cols, r, out);
            for (int c = 0; c < cols; c++)
                bad += out[c] != (float)decode(DT_Q8_0, W + row_size(DT_Q8_0, cols) * r, c);
        }
        CHECK_MSG(bad == 0, "packed q8_0, %d rows: %d elements differ", rows, bad);
        CHECK(kern_row_bytes(KERN_TYPE_Q8_0_R16, cols) == row_size(DT_Q8_0, cols));
        free(W);
        free(P);
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
        /* Q8_0 packed: the same shapes (rows not whole groups of 16 among them), batches to
         * more than one pass and more than one block of vectors, the reference too */
        for (int si = 0; t == DT_Q8_0 && si < N_OF(shapes); si++) {
            int rows = shapes[si][0], cols = shapes[si][1];
            CHECK_INT(check_product_packed(0, t, true, rows, cols, 1, false, true, false, seed++),
                      ==, 0);
            CHECK_INT(check_product_packed(0, t, true, rows, cols, 1, true, true, true, seed++), ==,
                      0);
            for (int bi = 0; bi < N_OF(batches); bi++)
                if ((size_t)rows * cols * batches[bi] <= 1500000)
                    CHECK_INT(check_product_packed(0, t, true, rows, cols, batches[bi], false,
                                                   false, bi % 2 == 0, seed++),
                              ==, 0);
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
        if (t == DT_Q8_0) /* packed rows have no f32 tiles: sgemm asked for, the rows do it */
            CHECK_INT(check_product_packed(KERN_BY_GEMM, t, true, 33, 160, 40, false, false, false,
                                           seed++),
                      ==, 0);
    }
}

/* kern_swiglu on the current path against a double loop: every length to 40 and a
 * feed-forward's 1536, gates from -30 to 30 and beyond where exp over- or underflows, and
 * nothing written past n. */
static void check_swiglu(void)
{
    uint64_t s = 7;
    float g[1536 + 1], u[1536], in[1536];
    static const float special[] = {-100.0f, 100.0f, 0.0f, -1e-3f, 88.5f, -88.5f};
    for (int n = 1; n <= 1536; n = n < 40 ? n + 1 : 1536) {
        for (int i = 0; i < n; i++) {
            in[i] = i < 6 && n > 20 ? special[i] : rng_uniform(&s, -30.0f, 30.0f);
            u[i] = rng_uniform(&s, -2.0f, 2.0f);
            g[i] = in[i];
        }
        g[n] = -12345.0f;
        kern_swiglu(g, u, n);
        int bad = 0;
        for (int i = 0; i < n; i++) {
            const double x = in[i], want = x / (1.0 + exp(-x)) * u[i];
            if (fabs(g[i] - want) > 2e-6 * fabs(want) + 1e-30 && bad++ < 3)
                check_fail_(__FILE__, __LINE__, "%s swiglu n=%d [%d] %.9g: %.9g, want %.9g",
                            kern_simd_name(), n, i, x, g[i], want);
        }
        CHECK_MSG(g[n] == -12345.0f, "%s swiglu n=%d wrote past n", kern_simd_name(), n);
        if (n == 1536)
            break;
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
    check_swiglu();
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
    return check_done();
}
