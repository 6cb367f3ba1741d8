/*
 * bench/bench_kernels.c — speed of the compute kernels against the machine's memory
 * bandwidth.
 *
 *   bench_kernels [MODE...] [--threads 1,2] [--reps N]
 *     bw       streaming read of a 1 GiB buffer (best and median of several), per thread count
 *     matvec   GB/s of kern_matvec per weight type on SmolLM2-135M-shaped matrices; the
 *              matrices are copied until the working set is 256 MiB, so every call streams
 *              from DRAM as decode does; OpenBLAS sgemv beside F32 for scale
 *     compare  Q8_0/Q4_0 decode: int8 activations ("avx512") against f32 dequantised in
 *              registers ("avx512-fma"), alternated within the run: medians and ratios
 *     batch    small batches: row kernels against sgemm, per batch size (where the switch is)
 *     prefill  GFLOP/s of kern_matmul with 512 activation rows
 *     fused    Q/K/V and gate/up of one layer: one kern_matmul_multi call per matrix against
 *              one call for all of them (one parallel region, one quantisation), alternated;
 *              1, 4 and 512 activation rows
 *   Products go through kern_matmul_multi with one scratch for the whole run, as the forward
 *   pass calls them (kern_matmul and kern_matvec allocate their buffers on every call).
 *   No mode: all of them. The bandwidth of this machine drifts by up to 30% from minute to
 *   minute, so compare figures from one run; variants are alternated, not run in blocks.
 */
#include "common/dtype.h"
#include "model/kernels.h"
#include "model/kernels_impl.h"
#include "bench/bench_util.h"

#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MiB         (1024.0 * 1024.0)
#define WORKING_SET (256u << 20)

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float rng_uniform(uint64_t *s)
{
    return (float)((rng_next(s) >> 40) * 0x1p-24) * 2.0f - 1.0f;
}

/* ---- weights ---- */

typedef struct bench_mat {
    uint32_t type;
    int rows, cols;
    size_t bytes;  /* one copy */
    int copies;    /* enough to make a working set of WORKING_SET bytes */
    uint8_t *data; /* copies * bytes */
} bench_mat_t;

static const uint32_t types[] = {DT_F32, DT_F16, DT_BF16, DT_Q8_0, DT_Q4_0};
static const char *type_names[] = {"f32", "f16", "bf16", "q8_0", "q4_0"};

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

static int mat_make(bench_mat_t *m, uint32_t type, int rows, int cols, size_t working_set)
{
    m->type = type;
    m->rows = rows;
    m->cols = cols;
    m->bytes = row_size(type, cols) * rows;
    m->copies = (int)((working_set + m->bytes - 1) / m->bytes);
    if (m->copies < 1)
        m->copies = 1;
    m->data = aligned_alloc(64, (m->bytes * m->copies + 63) & ~(size_t)63);
    float *row = malloc(sizeof(float) * cols);
    if (!m->data || !row) {
        free(row);
        return -1;
    }
    uint64_t s = 42;
    for (int r = 0; r < rows; r++) {
        for (int c = 0; c < cols; c++)
            row[c] = rng_uniform(&s) * 0.05f;
        dt_from_f32(type, row, m->data + row_size(type, cols) * r, (size_t)cols);
    }
    for (int k = 1; k < m->copies; k++)
        memcpy(m->data + m->bytes * k, m->data, m->bytes);
    free(row);
    return 0;
}

static float *vec_make(size_t n)
{
    float *v = aligned_alloc(64, (n * sizeof(float) + 63) & ~(size_t)63);
    uint64_t s = 7;
    for (size_t i = 0; i < n; i++)
        v[i] = rng_uniform(&s);
    return v;
}

/* One product as the forward pass makes it: kern_matmul_multi through a kept scratch. */
static void product(kern_scratch_t *ks, const bench_mat_t *m, const void *W, const float *X,
                    float *Y, int n_b)
{
    const kern_mat_t km = {.type = m->type, .W = W, .n_rows = m->rows, .Y = Y};
    if (kern_matmul_multi(1, &km, X, m->cols, n_b, ks, NULL, NULL) != 0) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
}

/* Seconds per matvec over the copies (one pass through the working set). */
static double time_matvec(kern_scratch_t *ks, const bench_mat_t *m, const float *x, float *y,
                          bool sgemv)
{
    double t0 = bench_now();
    for (int k = 0; k < m->copies; k++) {
        const void *W = m->data + m->bytes * k;
        if (sgemv)
            cblas_sgemv(CblasRowMajor, CblasNoTrans, m->rows, m->cols, 1.0f, W, m->cols, x, 1, 0.0f,
                        y, 1);
        else
            product(ks, m, W, x, y, 1);
    }
    return (bench_now() - t0) / m->copies;
}

/* SmolLM2-135M's matrices as (rows, cols): q/o, k/v, gate/up, down, output. */
static const int shapes[][2] = {{576, 576}, {192, 576}, {1536, 576}, {576, 1536}, {49152, 576}};
#define N_SHAPES 5

static void run_matvec(kern_scratch_t *ks, const int *threads, int n_threads, int reps)
{
    printf("\n## kern_matvec, GB/s of weights streamed (median of %d passes over %d MiB)\n", reps,
           (int)(WORKING_SET / MiB));
    printf("%-6s %-12s", "type", "rows x cols");
    for (int i = 0; i < n_threads; i++)
        printf("  %dT GB/s  %dT us", threads[i], threads[i]);
    printf("\n");
    float *x = vec_make(49152), *y = vec_make(49152);
    for (int ti = 0; ti < 5; ti++) {
        for (int si = 0; si < N_SHAPES; si++) {
            bench_mat_t m;
            if (mat_make(&m, types[ti], shapes[si][0], shapes[si][1], WORKING_SET) != 0) {
                fprintf(stderr, "out of memory\n");
                return;
            }
            for (int pass = 0; pass < (types[ti] == DT_F32 ? 2 : 1); pass++) {
                bool sgemv = pass == 1;
                printf("%-6s %5dx%-6d", sgemv ? "sgemv" : type_names[ti], m.rows, m.cols);
                for (int i = 0; i < n_threads; i++) {
                    omp_set_num_threads(threads[i]);
                    double t[32];
                    time_matvec(ks, &m, x, y, sgemv); /* warm up the pool */
                    for (int r = 0; r < reps; r++)
                        t[r] = time_matvec(ks, &m, x, y, sgemv);
                    double s = bench_median(t, reps);
                    printf("  %8.1f %8.1f", m.bytes / s / 1e9, s * 1e6);
                }
                printf("\n");
                fflush(stdout);
            }
            free(m.data);
        }
    }
    free(x);
    free(y);
}

/* int8 activations against f32 dequantisation, alternated. */
static void run_compare(kern_scratch_t *ks, const int *threads, int n_threads, int reps)
{
    const char *variants[] = {"avx512", "avx512-fma"};
    if (kern_force_simd("avx512") != 0) {
        printf("\n## compare: skipped (no AVX-512 on this CPU)\n");
        return;
    }
    printf("\n## Q8_0/Q4_0 decode: int8 activations (avx512) vs f32 in registers (avx512-fma)\n");
    printf("# GB/s, median of %d alternated passes; ratio = avx512 / avx512-fma\n", reps);
    const char *before = "avx512";
    float *x = vec_make(49152), *y = vec_make(49152);
    for (int ti = 3; ti < 5; ti++) {
        for (int si = 2; si < N_SHAPES; si += 2) {
            bench_mat_t m;
            if (mat_make(&m, types[ti], shapes[si][0], shapes[si][1], WORKING_SET) != 0)
                return;
            for (int i = 0; i < n_threads; i++) {
                omp_set_num_threads(threads[i]);
                double t[2][32];
                for (int r = 0; r < reps; r++)
                    for (int v = 0; v < 2; v++) {
                        kern_force_simd(variants[v]);
                        if (r == 0)
                            time_matvec(ks, &m, x, y, false);
                        t[v][r] = time_matvec(ks, &m, x, y, false);
                    }
                double a = bench_median(t[0], reps), b = bench_median(t[1], reps);
                printf("%-5s %5dx%-5d %dT  avx512 %6.1f  avx512-fma %6.1f  ratio %.2f\n",
                       type_names[ti], m.rows, m.cols, threads[i], m.bytes / a / 1e9,
                       m.bytes / b / 1e9, b / a);
                fflush(stdout);
            }
            free(m.data);
        }
    }
    kern_force_simd(before);
    free(x);
    free(y);
}

/* Row kernels against sgemm for small batches, alternated. */
static void run_batch(const int *threads, int n_threads, int reps)
{
    static const int nbs[] = {1, 2, 4, 8, 12, 16, 24, 32, 48};
    printf("\n## small batches on 1536x576 (working set %d MiB): us per call, rows vs gemm\n",
           (int)(WORKING_SET / MiB));
    float *X = vec_make(48 * 1536), *Y = vec_make(48 * 49152);
    for (int ti = 0; ti < 5; ti += (ti == 0 ? 1 : 2)) { /* f32, f16, q8_0 */
        bench_mat_t m;
        if (mat_make(&m, types[ti], 1536, 576, WORKING_SET) != 0)
            return;
        for (int i = 0; i < n_threads; i++) {
            omp_set_num_threads(threads[i]);
            printf("%-5s %dT", type_names[ti], threads[i]);
            for (int bi = 0; bi < (int)(sizeof nbs / sizeof nbs[0]); bi++) {
                double t[2][32];
                for (int r = 0; r < reps; r++)
                    for (int how = 0; how < 2; how++) {
                        double t0 = bench_now();
                        for (int k = 0; k < m.copies; k++)
                            kern_matmul_how(how ? KERN_BY_GEMM : KERN_BY_ROWS, m.type,
                                            m.data + m.bytes * k, X, Y, m.rows, m.cols, nbs[bi]);
                        t[how][r] = (bench_now() - t0) / m.copies;
                    }
                printf("  b%d %.0f/%.0f", nbs[bi], bench_median(t[0], reps) * 1e6,
                       bench_median(t[1], reps) * 1e6);
            }
            printf("\n");
            fflush(stdout);
        }
        free(m.data);
    }
    free(X);
    free(Y);
}

static void run_prefill(kern_scratch_t *ks, const int *threads, int n_threads, int reps)
{
    const int nb = 512;
    printf("\n## products with %d activation rows: GFLOP/s (median of %d)\n", nb, reps);
    float *X = vec_make((size_t)nb * 1536), *Y = vec_make((size_t)nb * 49152);
    for (int ti = 0; ti < 5; ti++) {
        for (int si = 0; si < N_SHAPES; si++) {
            bench_mat_t m;
            if (mat_make(&m, types[ti], shapes[si][0], shapes[si][1], 0) != 0)
                return;
            printf("%-5s %5dx%-6d", type_names[ti], m.rows, m.cols);
            for (int i = 0; i < n_threads; i++) {
                omp_set_num_threads(threads[i]);
                double t[32];
                product(ks, &m, m.data, X, Y, nb);
                for (int r = 0; r < reps; r++) {
                    double t0 = bench_now();
                    product(ks, &m, m.data, X, Y, nb);
                    t[r] = bench_now() - t0;
                }
                double s = bench_median(t, reps);
                printf("  %dT %7.1f", threads[i], 2.0 * nb * m.rows * m.cols / s / 1e9);
            }
            printf("\n");
            fflush(stdout);
            free(m.data);
        }
    }
    free(X);
    free(Y);
}

/* Q/K/V (576, 192, 192 rows of 576) and gate/up (2 x 1536 rows of 576) of one
 * SmolLM2-135M layer, stored one after the other per copy: one call per matrix against one
 * fused call, alternated. */
static void run_fused(kern_scratch_t *ks, const int *threads, int n_threads, int reps)
{
    static const int nbs[] = {1, 4, 512};
    static const int groups[2][3] = {{576, 192, 192}, {1536, 1536, 0}};
    static const char *group_names[2] = {"q/k/v", "gate/up"};
    printf("\n## fused products: us per layer's group, one call per matrix / one fused call "
           "(median of %d alternated)\n",
           reps);
    float *X = vec_make((size_t)512 * 576), *Y = vec_make((size_t)512 * 3072);
    for (int ti = 0; ti < 5; ti += (ti == 0 ? 1 : 2)) { /* f32, f16, q8_0 */
        for (int g = 0; g < 2; g++) {
            const int n_mats = groups[g][2] ? 3 : 2;
            int total = 0;
            for (int i = 0; i < n_mats; i++)
                total += groups[g][i];
            bench_mat_t m; /* all matrices of the group as one, rows split below */
            if (mat_make(&m, types[ti], total, 576, WORKING_SET) != 0)
                return;
            for (int bi = 0; bi < 3; bi++) {
                const int nb = nbs[bi], copies = nb > 4 ? 1 : m.copies;
                printf("%-5s %-8s b%-4d", type_names[ti], group_names[g], nb);
                for (int i = 0; i < n_threads; i++) {
                    omp_set_num_threads(threads[i]);
                    double t[2][32];
                    for (int r = 0; r <= reps; r++)
                        for (int fused = 0; fused < 2; fused++) {
                            double t0 = bench_now();
                            for (int k = 0; k < copies; k++) {
                                kern_mat_t km[3];
                                const uint8_t *W = m.data + m.bytes * k;
                                float *y = Y;
                                for (int j = 0; j < n_mats; j++) {
                                    km[j] = (kern_mat_t){
                                        .type = m.type, .W = W, .n_rows = groups[g][j], .Y = y};
                                    W += row_size(m.type, 576) * groups[g][j];
                                    y += (size_t)nb * groups[g][j];
                                }
                                for (int j = 0; j < (fused ? 1 : n_mats); j++)
                                    if (kern_matmul_multi(fused ? n_mats : 1, km + j, X, 576, nb,
                                                          ks, NULL, NULL) != 0)
                                        return;
                            }
                            if (r > 0) /* the first round warms up */
                                t[fused][r - 1] = (bench_now() - t0) / copies;
                        }
                    double a = bench_median(t[0], reps), b = bench_median(t[1], reps);
                    printf("  %dT %8.1f / %8.1f (%.2fx)", threads[i], a * 1e6, b * 1e6, a / b);
                }
                printf("\n");
                fflush(stdout);
            }
            free(m.data);
        }
    }
    free(X);
    free(Y);
}

int main(int argc, char **argv)
{
    int threads[8] = {1, 2}, n_threads = 2, reps = 7;
    bool want[6] = {false}, any = false;
    static const char *modes[] = {"bw", "matvec", "compare", "batch", "prefill", "fused"};
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
            n_threads = 0;
            for (char *p = strtok(argv[++i], ","); p && n_threads < 8; p = strtok(NULL, ","))
                threads[n_threads++] = atoi(p);
        } else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc) {
            reps = atoi(argv[++i]);
            reps = reps < 1 ? 1 : reps > 32 ? 32 : reps;
        } else {
            int k = 0;
            while (k < 6 && strcmp(argv[i], modes[k]) != 0)
                k++;
            if (k == 6) {
                fprintf(stderr,
                        "usage: %s [bw|matvec|compare|batch|prefill|fused]... [--threads 1,2] "
                        "[--reps N]\n",
                        argv[0]);
                return 2;
            }
            want[k] = any = true;
        }
    }
    for (int k = 0; k < 6 && !any; k++)
        want[k] = true;
    kern_scratch_t *ks = NULL;
    if (kern_scratch_new(&ks) != 0)
        return 1;
    bench_print_machine();
    if (want[0]) {
        printf("\n## memory bandwidth: streaming read of 1 GiB\n");
        for (int i = 0; i < n_threads; i++) {
            double best = 0, med = 0;
            if (bench_bandwidth(threads[i], reps, &best, &med) != 0)
                fprintf(stderr, "no memory for the 1 GiB buffer\n");
            printf("%dT  best %.1f GB/s  median %.1f GB/s\n", threads[i], best, med);
            fflush(stdout);
        }
    }
    if (want[1])
        run_matvec(ks, threads, n_threads, reps);
    if (want[2])
        run_compare(ks, threads, n_threads, reps);
    if (want[3])
        run_batch(threads, n_threads, reps);
    if (want[4])
        run_prefill(ks, threads, n_threads, reps);
    if (want[5])
        run_fused(ks, threads, n_threads, reps);
    kern_scratch_destroy(&ks);
    return 0;
}
