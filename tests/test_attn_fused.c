/* tests/test_attn_fused.c — the one-pass attention (model/attn_fused.h), with every loop table
 * the CPU runs and its plain-C twin, against a double loop written here: for f32, f16 and
 * q8_0 rows, segments of many sizes (as store blocks of any block_rows), odd row counts,
 * a strided f32 segment (the batch's own new rows), biases, and the rows cut into parts
 * that are merged afterwards; and tiles of a prefill chunk's queries (each query's heads
 * one after another) over stored rows and the chunk's own rows under the causal mask, for
 * every row type, block size, GQA ratio and tile size from 1 to more than a tile of rows. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "model/attn_fused.h"
#include "model/attn_ops.h"
#include "model/gguf.h"
#include "tests/check.h"

static const char *const TABLES[] = {"portable", "avx2", "avx512"};

static uint64_t rng = 0x2545F4914F6CDD1DULL;

static uint32_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 32);
}

static float urand(void) /* uniform in [-1, 1) */
{
    return (float)(next() * 0x1.0p-32 * 2.0 - 1.0);
}

/* A case: the rows of several segments, kept as f32 too (what the payload holds, read back
 * with dt_to_f32), and the naive attention over them. */
typedef struct rows {
    int hd, g;
    /* the causal mask of a tile of queries: 0, or heads per query; then the rows before
     * the chunk's (unmasked) and the chunk row of the tile's first query */
    int mask_g;
    size_t stored, j0;
    size_t n;            /* rows in all */
    uint32_t n_segs;
    mdl_attn_seg_t *segs;
    void **payload;      /* [n_segs * 2] k and v of each segment */
    float *kf, *vf;      /* [n][hd] as the payload holds them */
    float *bias;         /* [n] */
} rows_t;

/* Segments of the given sizes, each of type `type` (f32 ones every other segment when
 * mixed, and from segment f32_from on), with a stride wider than the row for f32 segments
 * when padded. */
static void rows_make(rows_t *c, int g, int hd, const uint32_t *sizes, uint32_t n_segs,
                      uint32_t type, int mixed, uint32_t f32_from, int padded, int with_bias)
{
    memset(c, 0, sizeof *c);
    c->g = g;
    c->hd = hd;
    c->n_segs = n_segs;
    for (uint32_t s = 0; s < n_segs; s++)
        c->n += sizes[s];
    c->segs = calloc(n_segs, sizeof *c->segs);
    c->payload = calloc(2 * (size_t)n_segs, sizeof *c->payload);
    c->kf = malloc(sizeof(float) * c->n * hd);
    c->vf = malloc(sizeof(float) * c->n * hd);
    c->bias = malloc(sizeof(float) * c->n);
    float *tmp = malloc(sizeof(float) * hd);
    size_t r = 0;
    for (uint32_t s = 0; s < n_segs; s++) {
        const uint32_t t = (mixed && s % 2) || s >= f32_from ? DT_F32 : type;
        const size_t rb = ggml_row_bytes(t, (uint64_t)hd);
        const size_t stride = t == DT_F32 && padded ? rb + 3 * sizeof(float) : rb;
        mdl_attn_seg_t *sg = &c->segs[s];
        *sg = (mdl_attn_seg_t){.n = sizes[s], .type = t, .stride = stride};
        for (int kv = 0; kv < 2; kv++) {
            uint8_t *p = calloc(sizes[s] ? sizes[s] : 1, stride);
            float *f = (kv ? c->vf : c->kf) + r * hd;
            for (uint32_t i = 0; i < sizes[s]; i++) {
                for (int d = 0; d < hd; d++)
                    tmp[d] = urand() * (kv ? 1.0f : 3.0f);
                CHECK(dt_from_f32(t, tmp, p + i * stride, (size_t)hd) == 0);
                CHECK(dt_to_f32(t, p + i * stride, f + (size_t)i * hd, (size_t)hd) == 0);
            }
            c->payload[2 * s + kv] = p;
            if (kv)
                sg->v = p;
            else
                sg->k = p;
        }
        if (with_bias) {
            for (uint32_t i = 0; i < sizes[s]; i++)
                c->bias[r + i] = logf(1.0f + (float)(next() % 8));
            sg->bias = c->bias + r;
        } else {
            for (uint32_t i = 0; i < sizes[s]; i++)
                c->bias[r + i] = 0.0f;
        }
        r += sizes[s];
    }
    free(tmp);
}

static void rows_free(rows_t *c)
{
    for (uint32_t s = 0; s < 2 * c->n_segs; s++)
        free(c->payload[s]);
    free(c->payload);
    free(c->segs);
    free(c->kf);
    free(c->vf);
    free(c->bias);
}

/* Whether query head h sees row r: every row, or under a tile's causal mask the rows
 * before the chunk and the chunk's rows up to h's query. */
static int sees(const rows_t *c, int h, size_t r)
{
    return !c->mask_g || r < c->stored || r - c->stored <= c->j0 + (size_t)(h / c->mask_g);
}

/* want[h][d]: softmax attention of query head h over the rows of [r0, r1) it sees, in
 * double, two passes; sc[h][r - r0]: each row's score (-inf where it does not see it). */
static void naive(const rows_t *c, const float *q, float scale, size_t r0, size_t r1, double *want,
                  double *sc)
{
    const int hd = c->hd;
    const size_t n = r1 - r0;
    for (int h = 0; h < c->g; h++) {
        double mx = -INFINITY, sum = 0;
        for (size_t r = r0; r < r1; r++) {
            if (!sees(c, h, r)) {
                sc[h * n + (r - r0)] = -INFINITY;
                continue;
            }
            double s = 0;
            for (int d = 0; d < hd; d++)
                s += (double)q[h * hd + d] * c->kf[r * hd + d];
            s = s * scale + c->bias[r];
            sc[h * n + (r - r0)] = s;
            mx = s > mx ? s : mx;
        }
        for (int d = 0; d < hd; d++)
            want[h * hd + d] = 0;
        for (size_t r = r0; r < r1; r++) {
            if (!sees(c, h, r))
                continue;
            const double p = exp(sc[h * n + (r - r0)] - mx);
            sum += p;
            for (int d = 0; d < hd; d++)
                want[h * hd + d] += p * c->vf[r * hd + d];
        }
        for (int d = 0; d < hd; d++)
            want[h * hd + d] /= sum;
    }
}

/* Attention over rows [r0, r1) cut into n_cuts + 1 parts at random points, each part by
 * the table o (NULL: the reference), merged; checked against the double loop, scores too. */
static int check_case(const rows_t *c, const mdl_attn_ops_t *o, const float *q, size_t r0,
                      size_t r1, int n_cuts, const char *what)
{
    const int g = c->g, hd = c->hd;
    const size_t n = r1 - r0, pf = mdl_attn_part_floats(g, hd);
    size_t cuts[8] = {r0};
    int n_parts = 1;
    for (int k = 0; k < n_cuts && n > 1; k++) {
        const size_t at = r0 + 1 + next() % (n - 1);
        int dup = 0;
        for (int p = 0; p < n_parts; p++)
            dup |= cuts[p] == at;
        if (!dup)
            cuts[n_parts++] = at;
    }
    for (int a = 1; a < n_parts; a++) /* sort the cut points */
        for (int b = a; b > 0 && cuts[b] < cuts[b - 1]; b--) {
            const size_t t = cuts[b];
            cuts[b] = cuts[b - 1];
            cuts[b - 1] = t;
        }
    cuts[n_parts] = r1;
    float *parts = malloc(sizeof(float) * pf * n_parts);
    float *work = aligned_alloc(64, (sizeof(float) * mdl_attn_work_floats(g, hd) + 63) & ~63ul);
    float *sc = malloc(sizeof(float) * g * n), *out = malloc(sizeof(float) * g * hd);
    float *lse = malloc(sizeof(float) * 2 * g);
    double *want = malloc(sizeof(double) * g * hd), *wsc = malloc(sizeof(double) * g * n);
    const float scale = 1.0f / sqrtf((float)hd);
    for (int p = 0; p < n_parts; p++) {
        if (o)
            mdl_attn_part(o, q, g, hd, scale, c->segs, c->n_segs, cuts[p], cuts[p + 1],
                          parts + p * pf, work, sc + (cuts[p] - r0), n);
        else
            mdl_attn_part_ref(q, g, hd, scale, c->segs, c->n_segs, cuts[p], cuts[p + 1],
                              parts + p * pf, sc + (cuts[p] - r0), n);
    }
    mdl_attn_merge(parts, n_parts, g, hd, out, lse);
    naive(c, q, scale, r0, r1, want, wsc);
    int bad = 0;
    for (int i = 0; i < g * hd && !bad; i++)
        bad = !(fabs(out[i] - want[i]) <= 2e-5 * (1.0 + fabs(want[i])));
    for (size_t i = 0; i < (size_t)g * n && !bad; i++)
        bad = isinf(wsc[i]) ? !(isinf(sc[i]) && sc[i] < 0)
                            : !(fabs(sc[i] - wsc[i]) <= 1e-5 * (1.0 + fabs(wsc[i])));
    /* the probabilities lse gives sum to 1 over the rows */
    for (int h = 0; h < g && !bad; h++) {
        double tot = 0;
        for (size_t r = 0; r < n; r++)
            tot += exp(sc[h * n + r] - lse[2 * h]) * lse[2 * h + 1];
        bad = !(fabs(tot - 1.0) < 1e-5);
    }
    CHECK_MSG(!bad, "%s (%s): rows [%zu, %zu) of %zu in %d parts, g %d, hd %d",
              o ? o->name : "ref", what, r0, r1, c->n, n_parts, g, hd);
    free(parts);
    free(work);
    free(sc);
    free(out);
    free(want);
    free(wsc);
    free(lse);
    return !bad;
}

/* Every row type and table, segment sizes of every block size tried, odd totals, part
 * ranges that start and end inside segments. */
static void test_types_blocks_lengths(void)
{
    static const uint32_t types[] = {DT_F32, DT_F16, DT_Q8_0};
    static const uint32_t blocks[] = {1, 7, 16, 64, 100};
    static const size_t totals[] = {1, 3, 63, 65, 129, 301};
    static const int hds[] = {32, 64, 128};
    int cases = 0;
    for (size_t ti = 0; ti < 3; ti++)
        for (size_t bi = 0; bi < 5; bi++)
            for (size_t ni = 0; ni < 6; ni++) {
                const int hd = hds[(ti + bi + ni) % 3], g = 1 + (int)((bi + ni) % 4);
                /* full blocks, then a partial one, as a lane's blocks are */
                uint32_t sizes[400], n_segs = 0;
                for (size_t left = totals[ni]; left;) {
                    const uint32_t b = left < blocks[bi] ? (uint32_t)left : blocks[bi];
                    sizes[n_segs++] = b;
                    left -= b;
                }
                rows_t c;
                rows_make(&c, g, hd, sizes, n_segs, types[ti], 0, n_segs, 0, (int)(ni % 2));
                float *q = malloc(sizeof(float) * g * hd);
                for (int i = 0; i < g * hd; i++)
                    q[i] = urand();
                char what[64];
                snprintf(what, sizeof what, "type %u, blocks of %u", types[ti], blocks[bi]);
                for (int cuts = 0; cuts < 4; cuts++) {
                    const size_t n = c.n, r0 = cuts == 3 && n > 2 ? next() % (n / 2) : 0;
                    const size_t r1 = cuts == 3 && n > 2 ? n - next() % (n - r0 - 1) : n;
                    check_case(&c, NULL, q, r0, r1, cuts, what);
                    for (size_t t = 0; t < sizeof TABLES / sizeof TABLES[0]; t++) {
                        const mdl_attn_ops_t *o = mdl_attn_ops_named(TABLES[t]);
                        if (o && hd % o->dim_multiple == 0)
                            cases += check_case(&c, o, q, r0, r1, cuts, what);
                    }
                }
                free(q);
                rows_free(&c);
            }
    CHECK(cases > 0);
}

/* Stored rows of one type followed by f32 rows whose stride is wider than a row (the new
 * rows of a batch, which sit in its [item][kv_dim] scratch), across segment edges. */
static void test_mixed_strided(void)
{
    static const uint32_t types[] = {DT_F16, DT_Q8_0, DT_F32};
    static const uint32_t sizes[] = {64, 3, 64, 1, 17, 64, 2};
    for (size_t ti = 0; ti < 3; ti++) {
        rows_t c;
        rows_make(&c, 3, 64, sizes, 7, types[ti], 1, 7, 1, 1);
        float q[3 * 64];
        for (int i = 0; i < 3 * 64; i++)
            q[i] = urand();
        for (int cuts = 0; cuts < 6; cuts++) {
            check_case(&c, NULL, q, 0, c.n, cuts, "mixed");
            for (size_t t = 0; t < sizeof TABLES / sizeof TABLES[0]; t++) {
                const mdl_attn_ops_t *o = mdl_attn_ops_named(TABLES[t]);
                if (o)
                    check_case(&c, o, q, 0, c.n, cuts, "mixed");
            }
        }
        rows_free(&c);
    }
}

/* A partial of a range that holds one dominant row among very negative scores: the merge
 * must not lose it to underflow (the max is carried, not the exps). */
static void test_merge_extremes(void)
{
    const uint32_t sizes[] = {40, 40};
    rows_t c;
    rows_make(&c, 1, 32, sizes, 2, DT_F32, 0, 2, 0, 0);
    float *k = (float *)c.segs[1].k;
    float q[32];
    for (int d = 0; d < 32; d++) {
        q[d] = 1.0f;
        k[5 * 32 + d] = 40.0f; /* one row scores 226 higher than the others */
        c.kf[(40 + 5) * 32 + d] = 40.0f;
    }
    for (int cuts = 0; cuts < 4; cuts++) {
        check_case(&c, NULL, q, 0, c.n, cuts, "one dominant row");
        check_case(&c, mdl_attn_ops(32), q, 0, c.n, cuts, "one dominant row");
    }
    rows_free(&c);
}

/* A tile of nq queries of g heads each, at chunk rows [j0, j0 + nq), over `stored` rows of
 * a type in blocks of block_rows and the chunk's rows up to the tile's last query (f32,
 * strided as the batch's K/V scratch, in runs as interleaved sequences leave them), the
 * chunk's runs under the causal mask; checked with each table and the reference, whole
 * and cut into parts. Returns the checks run. */
static int check_tile(uint32_t type, uint32_t block_rows, size_t stored, size_t j0, size_t nq,
                      int g, int hd, int with_bias)
{
    uint32_t sizes[600], n_segs = 0;
    for (size_t left = stored; left;) {
        const uint32_t b = left < block_rows ? (uint32_t)left : block_rows;
        sizes[n_segs++] = b;
        left -= b;
    }
    const uint32_t n_stored_segs = n_segs;
    size_t run_at[600];
    for (size_t left = j0 + nq, at = 0; left;) { /* runs of 1 .. 40 chunk rows */
        const uint32_t b = 1 + next() % 40;
        sizes[n_segs] = left < b ? (uint32_t)left : b;
        run_at[n_segs++] = at;
        at += sizes[n_segs - 1];
        left -= sizes[n_segs - 1];
    }
    const int gt = (int)nq * g;
    rows_t c;
    rows_make(&c, gt, hd, sizes, n_segs, type, 0, n_stored_segs, 1, with_bias);
    c.mask_g = g;
    c.stored = stored;
    c.j0 = j0;
    for (uint32_t s = n_stored_segs; s < n_segs; s++) {
        c.segs[s].bias = NULL; /* the chunk's own rows have mass 1 */
        for (uint32_t i = 0; i < sizes[s]; i++)
            c.bias[c.stored + run_at[s] + i] = 0.0f;
        c.segs[s].mask_g = (uint32_t)g;
        c.segs[s].mask_off = (int32_t)j0 - (int32_t)run_at[s];
    }
    float *q = malloc(sizeof(float) * gt * hd);
    for (int i = 0; i < gt * hd; i++)
        q[i] = urand();
    char what[96];
    snprintf(what, sizeof what, "tile: type %u, blocks of %u, %zu stored, queries [%zu, %zu)",
             type, block_rows, stored, j0, j0 + nq);
    int cases = 0;
    for (int cuts = 0; cuts < 4; cuts += 3) {
        check_case(&c, NULL, q, 0, c.n, cuts, what);
        for (size_t t = 0; t < sizeof TABLES / sizeof TABLES[0]; t++) {
            const mdl_attn_ops_t *o = mdl_attn_ops_named(TABLES[t]);
            if (o && hd % o->dim_multiple == 0)
                cases += check_case(&c, o, q, 0, c.n, cuts, what);
        }
    }
    free(q);
    rows_free(&c);
    return cases;
}

/* Tiles of 1 query up to more than a tile of rows, at the chunk's start and inside it,
 * over no stored rows and over stored rows of every type and block size, GQA ratios 1, 3,
 * 4 and 8. */
static void test_query_tiles(void)
{
    static const uint32_t types[] = {DT_F32, DT_F16, DT_Q8_0};
    static const uint32_t blocks[] = {1, 7, 16, 64, 100};
    static const size_t stored[] = {0, 1, 63, 65, 301};
    static const size_t nqs[] = {1, 2, 15, 16, 17, 63, 64, 65, 100};
    static const int gs[] = {1, 3, 4, 8};
    static const int hds[] = {32, 64, 128};
    int cases = 0, k = 0;
    for (size_t ti = 0; ti < 3; ti++)
        for (size_t bi = 0; bi < 5; bi++)
            for (size_t si = 0; si < 5; si++, k++) {
                const size_t nq = nqs[k % 9], j0 = (k / 3) % 2 ? next() % 70 : 0;
                const int g = gs[(ti + bi + si) % 4], hd = hds[k % 3];
                cases += check_tile(types[ti], blocks[bi], stored[si], j0, nq, g, hd, (int)(k % 2));
            }
    CHECK(cases > 0);
}

int main(void)
{
    RUN(test_types_blocks_lengths);
    RUN(test_mixed_strided);
    RUN(test_merge_extremes);
    RUN(test_query_tiles);
    return check_done();
}
