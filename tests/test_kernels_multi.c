/*
 * Tests for the fused products of model/kernels (kern_matmul_multi, its team form,
 * kern_matmul_rows): every matrix's result against the exact products in double and
 * against kern_matmul_ref, for every weight type alone and all types mixed in one
 * product, odd row counts, ragged columns for the float types, batches 1..20 (row
 * kernels) and 32..64 (sgemm for float types), on every SIMD path this CPU can run and
 * 1..3 threads; the done callback's contract; the team form inside the caller's parallel
 * region with per-thread activations; Q8_0 packed 16 rows at a time (KERN_TYPE_Q8_0_R16)
 * beside the others, in rows cut into pieces that are not whole groups. Tolerances:
 * tests/kern_fixture.h.
 */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "common/err.h"
#include "model/kernels.h"
#include "tests/check.h"
#include "tests/kern_fixture.h"

/* A fused product under test: up to 5 matrices of the given types and row counts, one X,
 * one Y per matrix (with guard elements after it), the exact products of each. A matrix of
 * type KERN_TYPE_Q8_0_R16 is made as Q8_0 and multiplied packed; types[] holds Q8_0. */
typedef struct multi_case {
    int n_mats, cols, n_b;
    bool exact_x;
    uint32_t types[KERN_MAX_MATS];
    int rows[KERN_MAX_MATS];
    uint8_t *W[KERN_MAX_MATS]; /* as the file stores them */
    uint8_t *P[KERN_MAX_MATS]; /* W packed, for KERN_TYPE_Q8_0_R16 (NULL otherwise) */
    float *X, *Y[KERN_MAX_MATS];
    double *Yd[KERN_MAX_MATS], *A[KERN_MAX_MATS], *Q[KERN_MAX_MATS];
    double *Yr[KERN_MAX_MATS]; /* kern_matmul_ref's products */
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
        size_t ny = (size_t)(unsigned)n_b * (unsigned)rows[i];
        const bool packed = tys[i] == KERN_TYPE_Q8_0_R16;
        mc->types[i] = packed ? DT_Q8_0 : tys[i];
        mc->rows[i] = rows[i];
        mc->W[i] = make_weights(mc->types[i], rows[i], cols, &s);
        if (packed)
            mc->P[i] = packed_copy(mc->W[i], rows[i], cols);
        mc->Y[i] = malloc(sizeof(float) * (ny + 16));
        for (size_t k = 0; k < ny + 16; k++)
            mc->Y[i][k] = -12345.0f;
        mc->Yd[i] = malloc(sizeof(double) * ny);
        mc->A[i] = malloc(sizeof(double) * ny);
        mc->Q[i] = malloc(sizeof(double) * ny);
        mc->Yr[i] = malloc(sizeof(double) * ny);
        kern_matmul_ref(mc->types[i], mc->W[i], mc->X, mc->Y[i], rows[i], cols, n_b);
        for (size_t k = 0; k < ny; k++)
            mc->Yr[i][k] = mc->Y[i][k];
        for (size_t k = 0; k < ny; k++)
            mc->Y[i][k] = -12345.0f;
        exact(mc->types[i], mc->W[i], mc->X, rows[i], cols, n_b, mc->Yd[i], mc->A[i], mc->Q[i]);
        mc->mats[i] = (kern_mat_t){
            .type = tys[i], .W = packed ? mc->P[i] : mc->W[i], .n_rows = rows[i], .Y = mc->Y[i]};
    }
}

/* Every matrix's Y against its exact product and kern_matmul_ref's (within 1e-6 A of the
 * exact one), and the guard elements; bad elements. */
static int multi_check(const multi_case_t *mc, const char *what)
{
    int bad = 0;
    for (int i = 0; i < mc->n_mats; i++) {
        uint32_t t = mc->types[i];
        /* sgemm (float types, 32 vectors or more) multiplies f32 activations */
        bool quant_err = is_quant(t) && !mc->exact_x;
        bad += compare(t, mc->Y[i], mc->Yd[i], mc->A[i], mc->Q[i], mc->rows[i], mc->cols, mc->n_b,
                       false, quant_err, 0, what);
        bad += compare(t, mc->Y[i], mc->Yr[i], mc->A[i], mc->Q[i], mc->rows[i], mc->cols, mc->n_b,
                       false, quant_err, 1e-6, what);
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
        free(mc->P[i]);
        free(mc->Y[i]);
        free(mc->Yd[i]);
        free(mc->A[i]);
        free(mc->Q[i]);
        free(mc->Yr[i]);
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
static void run_multi_all(kern_scratch_t *ks, bool quick)
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
                    if (quick && bi % 3 != 0)
                        continue;
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
    /* every type in one product: one quantisation for Q8_0 (packed too) and Q4_0, sgemm for
     * the float types from 32 vectors on, rows for the others */
    static const uint32_t mix[] = {DT_Q8_0, DT_F32,  DT_Q4_0,           DT_F16,
                                   DT_BF16, DT_Q8_0, KERN_TYPE_Q8_0_R16};
    static const int mix_rows[] = {40, 3, 17, 64, 1, 200, 33};
    for (int bi = 0; bi < N_OF(nbs); bi++) {
        CHECK_INT(multi_run(ks, N_OF(mix), mix, mix_rows, 160, nbs[bi], true, seed++), ==, 0);
        CHECK_INT(multi_run(ks, N_OF(mix), mix, mix_rows, 96, nbs[bi], false, seed++), ==, 0);
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
    /* one thread, and more threads than cores (uneven shares; two in test_multi_done);
     * GISTD_TEST_QUICK=1 (make check, under valgrind): three threads, every third batch */
    const char *q = getenv("GISTD_TEST_QUICK");
    const bool quick = q && *q && strcmp(q, "0") != 0;
    for (int threads = quick ? 3 : 1; threads <= 3; threads += 2) {
        omp_set_num_threads(threads);
        run_multi_all(ks, quick);
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
    static const uint32_t t[] = {DT_Q8_0, DT_Q4_0, DT_F32, DT_BF16, KERN_TYPE_Q8_0_R16};
    static const int rows[] = {300, 65, 64, 17, 45};
    static const int nbs[] = {1, 2, 6, 33};
    const int cols = 224;
    const int n_mats = N_OF(t);
    kern_scratch_t *ks = NULL;
    CHECK_OK(kern_scratch_new(&ks));
    CHECK_OK(kern_scratch_reserve(ks, 3));
    const size_t qxb = kern_qx_bytes(cols);
    CHECK_INT(qxb % 64, ==, 0);
    for (int bi = 0; bi < N_OF(nbs); bi++) {
        const int n_b = nbs[bi];
        multi_case_t mc;
        multi_make(&mc, n_mats, t, rows, cols, n_b, bi % 2 == 0, 300 + bi);
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
                kern_matmul_multi_team(n_mats, mc.mats, &a, ks, NULL, NULL);
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
        for (int i = 0; i < n_mats; i++)
            for (size_t k = 0; k < (size_t)n_b * rows[i]; k++)
                mc.Y[i][k] = NAN;
        kern_matmul_multi_team(n_mats, mc.mats, &a, ks, NULL, NULL);
        CHECK_INT(multi_check(&mc, " team of 1"), ==, 0);
        for (int i = 0; i < n_mats; i++) {
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
    RUN(test_multi_portable);
    RUN(test_multi_avx2);
    RUN(test_multi_avx512);
    RUN(test_multi_avx512_fma);
    RUN(test_multi_done);
    RUN(test_multi_team);
    return check_done();
}
