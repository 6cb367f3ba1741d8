/*
 * bench/bench_attn.c — the decode attention loops alone (model/attn_fused.c), over rows laid
 * out as the store lays out a lane's blocks, to see what the memory layout costs.
 *
 *   bench_attn [--types f16,q8_0] [--rows 128,1408,8192] [--lanes 90] [--block 64]
 *              [--part 256] [--threads 2] [--rounds 5] [--layouts scattered,runs,contiguous]
 *              [--run 8] [--ops avx512|avx2|portable]
 *
 * Each lane (a kv-head of a layer: 90 is SmolLM2-135M's 30 layers x 3 kv-heads, so one pass
 * is one decode step's attention) holds --rows rows of head_dim 64 in blocks of --block rows,
 * each block's keys then values in one 64-byte aligned payload, as kvstore's blocks are.
 * Layouts:
 *   scattered   each block its own allocation, made in the order a prefill makes them (block
 *               0 of every lane, then block 1 of every lane, ...): a lane's neighbours are
 *               --lanes blocks apart in memory, as in the store today
 *   runs        a lane's blocks --run at a time in one allocation, the runs made in a
 *               prefill's order (run 0 of every lane, then run 1, ...)
 *   contiguous  each lane's blocks one after another in one allocation
 * --ops picks the loops (model/attn_ops.h; default the fastest this CPU runs).
 * One pass runs mdl_attn_part for 3 query heads over every lane, cut into parts of --part
 * rows that the threads take one at a time (as model/attention.c does). Variants (type x
 * layout) alternate within every round, since this machine's bandwidth drifts; the table gives
 * per variant and row count the median milliseconds of a pass, the rows' bytes read per
 * second, and nanoseconds per row of one lane.
 */
#include "common/dtype.h"
#include "model/attn_fused.h"
#include "model/attn_ops.h"
#include "model/gguf.h"
#include "bench/bench_util.h"

#include <omp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HD     64
#define G      3
#define MAXV   8
#define MAXROW 8

enum { LAY_SCATTERED, LAY_RUNS, LAY_CONTIGUOUS, N_LAY };
static const char *const lay_name[N_LAY] = {"scattered", "runs", "contiguous"};

typedef struct {
    uint32_t type;
    int layout;
    mdl_attn_seg_t *segs; /* [lanes][blocks] */
    void *slab;           /* the contiguous layout's one allocation */
    void **blocks;        /* the other layouts' allocations */
    size_t n_blocks;
} variant_t;

static uint64_t rng = 0x2545F4914F6CDD1DULL;

static float urand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 40) * 0x1.0p-24 - 0.5);
}

/* Fills one block's payload: rows of random values, keys then values. */
static void fill_block(uint32_t type, uint8_t *p, uint32_t block)
{
    const size_t rb = ggml_row_bytes(type, HD);
    float x[HD];
    for (uint32_t r = 0; r < 2 * block; r++) {
        for (int d = 0; d < HD; d++)
            x[d] = urand();
        dt_from_f32(type, x, p + r * rb, HD);
    }
}

static int variant_make(variant_t *v, uint32_t type, int layout, uint32_t lanes, uint32_t rows,
                        uint32_t block, uint32_t run)
{
    const bool contiguous = layout == LAY_CONTIGUOUS;
    const size_t rb = ggml_row_bytes(type, HD);
    const size_t pay = (2 * block * rb + 63) / 64 * 64;
    const uint32_t nb = (rows + block - 1) / block;
    memset(v, 0, sizeof *v);
    v->type = type;
    v->layout = layout;
    if (layout == LAY_SCATTERED)
        run = 1;
    v->n_blocks = (size_t)lanes * nb;
    v->segs = calloc(v->n_blocks, sizeof *v->segs);
    v->blocks = contiguous ? NULL : calloc(v->n_blocks, sizeof *v->blocks);
    if (contiguous && posix_memalign(&v->slab, 4096, pay * v->n_blocks))
        v->slab = NULL;
    if (!v->segs || (contiguous ? !v->slab : !v->blocks))
        return -1;
    /* a prefill's order: `run` blocks of every lane, then the next `run` of every lane */
    for (uint32_t b0 = 0; b0 < nb; b0 += run)
        for (uint32_t l = 0; l < lanes; l++)
            for (uint32_t b = b0; b < b0 + run && b < nb; b++) {
                uint8_t *p;
                if (contiguous) {
                    p = (uint8_t *)v->slab + ((size_t)l * nb + b) * pay;
                } else if (b == b0) { /* a run's first block: the run's allocation */
                    const uint32_t k = b0 + run < nb ? run : nb - b0;
                    void *a = NULL;
                    if (posix_memalign(&a, 64, pay * k))
                        return -1;
                    v->blocks[(size_t)l * nb + b] = a;
                    p = a;
                } else {
                    p = (uint8_t *)v->blocks[(size_t)l * nb + b0] + (b - b0) * pay;
                }
                fill_block(type, p, block);
                const uint32_t n = b + 1 < nb ? block : rows - b * block;
                v->segs[(size_t)l * nb + b] = (mdl_attn_seg_t){
                    .n = n, .type = type, .k = p, .v = p + block * rb, .stride = rb};
            }
    return 0;
}

static void variant_free(variant_t *v)
{
    for (size_t i = 0; v->blocks && i < v->n_blocks; i++)
        free(v->blocks[i]);
    free(v->blocks);
    free(v->slab);
    free(v->segs);
}

/* One pass over every lane; returns seconds. */
static double pass(const mdl_attn_ops_t *ops, const variant_t *v, uint32_t lanes, uint32_t rows,
                   uint32_t block, uint32_t part, const float *q)
{
    const uint32_t nb = (rows + block - 1) / block, np = (rows + part - 1) / part;
    const double t0 = bench_now();
#pragma omp parallel
    {
        float out[G * (HD + 2)];
        float *work = malloc(sizeof(float) * mdl_attn_work_floats(G, HD));
#pragma omp for schedule(dynamic, 1)
        for (long w = 0; w < (long)lanes * np; w++) {
            const uint32_t l = (uint32_t)(w / np), k = (uint32_t)(w % np);
            const size_t r0 = (size_t)k * part, r1 = r0 + part < rows ? r0 + part : rows;
            mdl_attn_part(ops, q, G, HD, 0.125f, v->segs + (size_t)l * nb, nb, r0, r1, out, work,
                          NULL, 0);
        }
        free(work);
    }
    return bench_now() - t0;
}

int main(int argc, char **argv)
{
    uint32_t types[4] = {DT_F16, DT_Q8_0};
    long rows_l[MAXROW] = {128, 1408, 8192};
    int n_types = 2, n_rows = 3, rounds = 5, threads = 2;
    uint32_t lanes = 90, block = 64, part = 256;
    uint32_t run = 8;
    bool lay[N_LAY] = {true, true, true};
    const mdl_attn_ops_t *ops = mdl_attn_ops(HD);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!val)
            goto usage;
        if (!strcmp(a, "--types")) {
            if ((n_types = bench_parse_row_types(val, types, 4)) < 1)
                goto usage;
        } else if (!strcmp(a, "--rows")) {
            if ((n_rows = bench_parse_list(val, rows_l, MAXROW)) <= 0)
                goto usage;
        } else if (!strcmp(a, "--lanes")) {
            lanes = (uint32_t)atol(val);
        } else if (!strcmp(a, "--block")) {
            block = (uint32_t)atol(val);
        } else if (!strcmp(a, "--part")) {
            part = (uint32_t)atol(val);
        } else if (!strcmp(a, "--threads")) {
            threads = atoi(val);
        } else if (!strcmp(a, "--rounds")) {
            rounds = atoi(val);
        } else if (!strcmp(a, "--run")) {
            run = (uint32_t)atol(val);
        } else if (!strcmp(a, "--ops")) {
            if (!(ops = mdl_attn_ops_named(val)) || HD % ops->dim_multiple) {
                fprintf(stderr, "bench_attn: no attention loops %s on this CPU\n", val);
                return 2;
            }
        } else if (!strcmp(a, "--layouts")) {
            for (int k = 0; k < N_LAY; k++)
                lay[k] = strstr(val, lay_name[k]) != NULL;
        } else {
            goto usage;
        }
        i++;
    }
    if (!lanes || !block || !part || !run || threads < 1 || rounds < 1 || n_types < 1 ||
        !(lay[0] || lay[1] || lay[2]))
        goto usage;
    for (int r = 0; r < n_rows; r++)
        if (rows_l[r] < 1)
            goto usage;
    omp_set_num_threads(threads);
    bench_print_machine();
    printf("# attention loops: %s; %u lanes, head_dim %d, %d query heads a kv-head, blocks of "
           "%u rows, parts of %u rows, runs of %u blocks, %d threads, %d rounds alternated\n",
           ops->name, lanes, HD, G, block, part, run, threads, rounds);
    printf("%-5s %-11s %6s %9s %8s %8s\n", "rows", "layout", "lane", "ms/pass", "GB/s", "ns/row");
    float q[G * HD];
    for (int i = 0; i < G * HD; i++)
        q[i] = urand();
    for (int ri = 0; ri < n_rows; ri++) {
        const uint32_t rows = (uint32_t)rows_l[ri];
        variant_t v[MAXV];
        int nv = 0;
        for (int t = 0; t < n_types; t++)
            for (int c = 0; c < N_LAY; c++)
                if (lay[c] && nv < MAXV) {
                    if (variant_make(&v[nv], types[t], c, lanes, rows, block, run)) {
                        fprintf(stderr, "bench_attn: out of memory at %u rows\n", rows);
                        return 1;
                    }
                    nv++;
                }
        double *t = calloc((size_t)nv * rounds, sizeof *t);
        for (int k = 0; k < nv; k++) /* one untimed pass each */
            pass(ops, &v[k], lanes, rows, block, part, q);
        for (int r = 0; r < rounds; r++)
            for (int j = 0; j < nv; j++) {
                const int k = (j + r) % nv; /* the order rotates every round */
                t[k * rounds + r] = pass(ops, &v[k], lanes, rows, block, part, q);
            }
        for (int k = 0; k < nv; k++) {
            const double med = bench_median(t + k * rounds, rounds);
            const double bytes = 2.0 * ggml_row_bytes(v[k].type, HD) * rows * lanes;
            printf("%-5s %-11s %6u %9.3f %8.1f %8.2f\n", ggml_type_get(v[k].type)->name,
                   lay_name[v[k].layout], rows, med * 1e3, bytes / med / 1e9,
                   med * 1e9 / ((double)rows * lanes));
            variant_free(&v[k]);
        }
        free(t);
    }
    return 0;
usage:
    fprintf(stderr,
            "usage: bench_attn [--types f16,q8_0] [--rows 128,1408,8192] [--lanes 90] "
            "[--block 64] [--part 256] [--threads 2] [--rounds 5] "
            "[--layouts scattered,runs,contiguous] [--run 8] [--ops avx512|avx2|portable]\n");
    return 2;
}
