/* model/attn_fused.c — one-pass attention over row segments, and the merge of partials
 * (model/attn_fused.h). */
#include "model/attn_fused.h"

#include <assert.h>
#include <math.h>
#include <stdbool.h>
#include <string.h>

#include <cblas.h>

#include "common/dtype.h"
#include "model/attn_ops.h"
#include "model/gguf.h"

/* A partial of g heads of hd: o [g][hd], then max [g], then sum [g]. */
static void part_init(float *part, int g, int hd)
{
    memset(part, 0, sizeof(float) * (size_t)g * hd);
    for (int h = 0; h < g; h++) {
        part[(size_t)g * hd + h] = -INFINITY;
        part[(size_t)g * hd + g + h] = 0.0f;
    }
}

/* The segment holding row r0 (counted across segments), and r0's index inside it. */
static uint32_t seg_find(const mdl_attn_seg_t *segs, uint32_t n_segs, size_t r0, size_t *i)
{
    uint32_t s = 0;
    while (s < n_segs && r0 >= segs[s].n) {
        r0 -= segs[s].n;
        s++;
    }
    assert(s < n_segs);
    *i = r0;
    return s;
}

/* Bytes of the next tile's payload (pf, pf_bytes) to ask the memory system for while a tile
 * is read. Each block of a lane is an allocation of its own, so the hardware's stream
 * prefetch starts cold at every block and a tile's first touch of its rows would wait on
 * DRAM. Asking for the next tile a few lines at a time as the current one is converted keeps
 * the misses spread out; asking for all of it at once stalled the core as soon as it had
 * as many misses in flight as it can hold (bench/depth.md, "Asking for rows a tile ahead"). */
typedef struct {
    const char *pf;
    size_t pf_bytes;
} ahead_t;

static void prefetch(const char *p, size_t bytes)
{
    for (size_t b = 0; b < bytes; b += 64)
        __builtin_prefetch(p + b, 0, 3);
}

/* Rows converted between two rounds of prefetching: each round is a call into the table's
 * loops, which load and store their accumulators once a call. With 8 a pass over 256 rows in
 * L2 took 8.2 ns a row (f16) against 7.5 with 32, and fed from DRAM 2-4% at most; the
 * hardware's prefetch, not these asks, keeps a payload run's rows coming (bench/depth.md,
 * "Reductions and fewer calls"). */
#define AHEAD_ROWS 32

/* The part of `ahead` that goes with rows t0 .. t1 of nt: asked for as those rows are read. */
static void ask_part(ahead_t ahead, size_t t0, size_t t1, size_t nt)
{
    if (!ahead.pf_bytes) /* (no next tile: pf is NULL) */
        return;
    const size_t from = ahead.pf_bytes * t0 / nt, upto = ahead.pf_bytes * t1 / nt;
    prefetch(ahead.pf + from, upto - from);
}

/* Rows i .. i+nt of a segment's payload (k or v) as f32 rows: the payload itself for f32
 * (*stride set to its stride in floats), else converted into tile (*stride = hd); the next
 * tile's bytes in `ahead` are asked for along the way. */
static const float *tile_rows(const mdl_attn_ops_t *ops, const mdl_attn_seg_t *sg, const void *base,
                              size_t i, size_t nt, int hd, float *tile, size_t *stride,
                              ahead_t ahead)
{
    const uint8_t *p = (const uint8_t *)base + i * sg->stride;
    if (sg->type == DT_F32) { /* nothing to convert: ask for the next tile at once */
        prefetch(ahead.pf, ahead.pf_bytes);
        *stride = sg->stride / sizeof(float);
        return (const float *)p;
    }
    *stride = (size_t)hd;
    const bool packed = sg->stride == ggml_row_bytes(sg->type, (uint64_t)hd);
    for (size_t t0 = 0; t0 < nt; t0 += AHEAD_ROWS) {
        const size_t t1 = t0 + AHEAD_ROWS < nt ? t0 + AHEAD_ROWS : nt;
        ask_part(ahead, t0, t1, nt);
        if (packed)
            ops->to_f32(sg->type, p + t0 * sg->stride, tile + t0 * hd, (t1 - t0) * hd);
        else
            for (size_t t = t0; t < t1; t++)
                ops->to_f32(sg->type, p + t * sg->stride, tile + t * hd, (size_t)hd);
    }
    return tile;
}

/* Row r (of the segment) is seen by query head h under the segment's causal mask. */
static inline bool masked(const mdl_attn_seg_t *sg, size_t r, int h)
{
    return sg->mask_g && (int64_t)r > (int64_t)(h / (int)sg->mask_g) + sg->mask_off;
}

/* Scores [g][MDL_ATTN_TILE] of segment rows i .. i+nt: -inf where the mask hides a row. */
static void mask_tile(const mdl_attn_seg_t *sg, size_t i, size_t nt, int g, float *sc)
{
    for (int h = 0; h < g; h++) {
        /* rows up to k + mask_off are seen: the tile's rows from there on are not */
        const int64_t seen = (int64_t)(h / (int)sg->mask_g) + sg->mask_off + 1 - (int64_t)i;
        float *p = sc + (size_t)h * MDL_ATTN_TILE;
        for (size_t t = seen < 0 ? 0 : (size_t)seen; t < nt; t++)
            p[t] = -INFINITY;
    }
}

/* sc[h][MDL_ATTN_TILE] = dot(q[h], row t of kt) * scale + bias[t] for nt rows, as one matrix
 * product (the tile's rows read once for all g heads). */
static void scores_gemm(const float *q, int g, int hd, const float *kt, size_t st, size_t nt,
                        float scale, const float *bias, float *sc)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, g, (int)nt, hd, scale, q, hd, kt, (int)st,
                0.0f, sc, MDL_ATTN_TILE);
    if (!bias)
        return;
    for (int h = 0; h < g; h++) {
        float *p = sc + (size_t)h * MDL_ATTN_TILE;
#pragma omp simd
        for (size_t t = 0; t < nt; t++)
            p[t] += bias[t];
    }
}

/* The rows of the tile that starts `skip` rows after row i of segment s, within the `left`
 * rows still to read: its keys' and values' bytes. Returns the tile's segment (n_segs: no
 * such tile). */
static uint32_t tile_ahead(const mdl_attn_seg_t *segs, uint32_t n_segs, uint32_t s, size_t i,
                           size_t skip, size_t left, ahead_t *ak, ahead_t *av)
{
    if (skip >= left)
        return n_segs;
    left -= skip;
    while (s < n_segs && i + skip >= segs[s].n) {
        skip -= segs[s].n - i;
        i = 0;
        s++;
    }
    if (s >= n_segs)
        return n_segs;
    i += skip;
    const mdl_attn_seg_t *nx = &segs[s];
    size_t nn = nx->n - i < MDL_ATTN_TILE ? nx->n - i : MDL_ATTN_TILE;
    nn = left < nn ? left : nn;
    *ak = (ahead_t){(const char *)nx->k + i * nx->stride, nn * nx->stride};
    *av = (ahead_t){(const char *)nx->v + i * nx->stride, nn * nx->stride};
    return s;
}

/* Whether segments s .. s2 lie one after another as a payload run lays out the store's blocks
 * (each block's keys right after the previous block's values, kvstore/lane.c): the hardware's
 * stream prefetch then reads ahead through them, and asking as well only costs. With a lane's
 * blocks in runs of 4, one pass of bench_attn at 8,192 rows took 8.8-9.0 ms without the far
 * requests against 10.6-11.3 with them (f16; q8_0 8.3-8.5 against 9.0-9.3); with every block
 * an allocation of its own they still gain 2-5% (bench/depth.md, "Far requests only across
 * allocations"). */
static bool one_stream(const mdl_attn_seg_t *segs, uint32_t s, uint32_t s2)
{
    for (uint32_t j = s; j < s2; j++) {
        const char *k = segs[j].k, *v = segs[j].v;
        if ((const char *)segs[j + 1].k != v + (v - k))
            return false;
    }
    return true;
}

/* The tile this many tiles ahead is asked into L2 at once (the next one goes to L1 a few lines
 * at a time, see ahead_t): the row loops read a tile faster than DRAM delivers it, and one
 * tile of warning did not cover the wait (bench/depth.md, "Row loops without a tile"). */
#define FAR_TILES 3

static void far_ahead(const mdl_attn_seg_t *segs, uint32_t n_segs, uint32_t s, size_t i,
                      size_t skip, size_t left)
{
    ahead_t k = {0}, v = {0};
    const uint32_t s2 = tile_ahead(segs, n_segs, s, i, skip, left, &k, &v);
    if (s2 == n_segs || one_stream(segs, s, s2))
        return;
    for (size_t b = 0; b < k.pf_bytes; b += 64) {
        __builtin_prefetch(k.pf + b, 0, 2);
        __builtin_prefetch(v.pf + b, 0, 2);
    }
}

/* Scores sc[g][MDL_ATTN_TILE] of segment rows i .. i+nt, read where they lie by the table's
 * row loops, AHEAD_ROWS at a time with the next tile's keys asked for along the way. */
static void rows_scores(const mdl_attn_ops_t *ops, const mdl_attn_seg_t *sg, size_t i, size_t nt,
                        const float *q, int g, int hd, float scale, float *sc, ahead_t ak)
{
    const uint8_t *k = (const uint8_t *)sg->k + i * sg->stride;
    for (size_t t0 = 0; t0 < nt; t0 += AHEAD_ROWS) {
        const size_t t1 = t0 + AHEAD_ROWS < nt ? t0 + AHEAD_ROWS : nt;
        ask_part(ak, t0, t1, nt);
        ops->scores(sg->type, q, g, hd, k + t0 * sg->stride, sg->stride, (int)(t1 - t0), scale,
                    sg->bias ? sg->bias + i + t0 : NULL, sc + t0, MDL_ATTN_TILE);
    }
}

/* o[g][hd] += p . rows i .. i+nt of the segment's values (p = sc), likewise. */
static void rows_accum(const mdl_attn_ops_t *ops, const mdl_attn_seg_t *sg, size_t i, size_t nt,
                       int g, int hd, const float *sc, float *o, ahead_t av)
{
    const uint8_t *v = (const uint8_t *)sg->v + i * sg->stride;
    for (size_t t0 = 0; t0 < nt; t0 += AHEAD_ROWS) {
        const size_t t1 = t0 + AHEAD_ROWS < nt ? t0 + AHEAD_ROWS : nt;
        ask_part(av, t0, t1, nt);
        ops->accum(sg->type, o, g, hd, v + t0 * sg->stride, sg->stride, (int)(t1 - t0), sc + t0,
                   MDL_ATTN_TILE);
    }
}

void mdl_attn_part(const mdl_attn_ops_t *ops, const float *q, int g, int hd, float scale,
                   const mdl_attn_seg_t *segs, uint32_t n_segs, size_t r0, size_t r1, float *part,
                   float *work, float *scores, size_t sc_stride)
{
    assert(r0 < r1 && hd % ops->dim_multiple == 0);
    float *tile = work, *sc = work + (size_t)MDL_ATTN_TILE * hd; /* sc: [g][TILE] */
    float *o = part, *mx = part + (size_t)g * hd, *sum = mx + g;
    part_init(part, g, hd);
    size_t i;
    uint32_t s = seg_find(segs, n_segs, r0, &i);
    for (size_t r = r0; r < r1; s++, i = 0) {
        const mdl_attn_seg_t *sg = &segs[s];
        for (; i < sg->n && r < r1;) {
            size_t nt = sg->n - i < MDL_ATTN_TILE ? sg->n - i : MDL_ATTN_TILE;
            nt = r1 - r < nt ? r1 - r : nt;
            ahead_t ak = {0}, av = {0};
            tile_ahead(segs, n_segs, s, i, nt, r1 - r, &ak, &av);
            far_ahead(segs, n_segs, s, i, nt + (FAR_TILES - 1) * MDL_ATTN_TILE, r1 - r);
            const bool gemm = g >= MDL_ATTN_GEMM_HEADS;
            size_t st = 0;
            if (gemm) { /* sc = scale * q . kt^T, then the bias */
                const float *kt = tile_rows(ops, sg, sg->k, i, nt, hd, tile, &st, ak);
                scores_gemm(q, g, hd, kt, st, nt, scale, sg->bias ? sg->bias + i : NULL, sc);
            } else {
                rows_scores(ops, sg, i, nt, q, g, hd, scale, sc, ak);
            }
            if (sg->mask_g)
                mask_tile(sg, i, nt, g, sc);
            for (int h = 0; h < g; h++) {
                float *p = sc + (size_t)h * MDL_ATTN_TILE;
                if (scores)
                    memcpy(scores + (size_t)h * sc_stride + (r - r0), p, sizeof(float) * nt);
                const float m_new = fmaxf(mx[h], ops->vmax(p, nt));
                if (m_new == -INFINITY) { /* the head sees none of these rows, nor any before */
                    memset(p, 0, sizeof(float) * nt);
                    continue;
                }
                if (m_new > mx[h]) { /* rescale what came before to the new max */
                    const float a = expf(mx[h] - m_new);
                    for (int d = 0; d < hd; d++)
                        o[(size_t)h * hd + d] *= a;
                    sum[h] *= a;
                    mx[h] = m_new;
                }
                sum[h] += ops->exp_sum(p, nt, m_new);
            }
            if (gemm) { /* o += p . vt */
                const float *vt = tile_rows(ops, sg, sg->v, i, nt, hd, tile, &st, av);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, g, hd, (int)nt, 1.0f, sc,
                            MDL_ATTN_TILE, vt, (int)st, 1.0f, o, hd);
            } else {
                rows_accum(ops, sg, i, nt, g, hd, sc, o, av);
            }
            i += nt;
            r += nt;
        }
    }
}

/* Element d of a row of payload type `type`. */
static float elem(uint32_t type, const uint8_t *row, int d)
{
    if (type == DT_F32)
        return ((const float *)row)[d];
    if (type == DT_F16)
        return dt_f16_to_f32(((const uint16_t *)row)[d]);
    const block_q8_0 *b = (const block_q8_0 *)row + d / QK8_0;
    return dt_f16_to_f32(b->d) * (float)b->qs[d % QK8_0];
}

void mdl_attn_part_ref(const float *q, int g, int hd, float scale, const mdl_attn_seg_t *segs,
                       uint32_t n_segs, size_t r0, size_t r1, float *part, float *scores,
                       size_t sc_stride)
{
    assert(r0 < r1);
    float *o = part, *mx = part + (size_t)g * hd, *sum = mx + g;
    part_init(part, g, hd);
    size_t i;
    uint32_t s = seg_find(segs, n_segs, r0, &i);
    for (size_t r = r0; r < r1; s++, i = 0) {
        const mdl_attn_seg_t *sg = &segs[s];
        for (; i < sg->n && r < r1; i++, r++) {
            const uint8_t *k = (const uint8_t *)sg->k + i * sg->stride;
            const uint8_t *v = (const uint8_t *)sg->v + i * sg->stride;
            for (int h = 0; h < g; h++) {
                if (masked(sg, i, h)) {
                    if (scores)
                        scores[(size_t)h * sc_stride + (r - r0)] = -INFINITY;
                    continue;
                }
                float dot = 0.0f;
                for (int d = 0; d < hd; d++)
                    dot += q[(size_t)h * hd + d] * elem(sg->type, k, d);
                const float sc = dot * scale + (sg->bias ? sg->bias[i] : 0.0f);
                if (scores)
                    scores[(size_t)h * sc_stride + (r - r0)] = sc;
                float *oh = o + (size_t)h * hd;
                if (sc > mx[h]) {
                    const float a = expf(mx[h] - sc);
                    for (int d = 0; d < hd; d++)
                        oh[d] *= a;
                    sum[h] *= a;
                    mx[h] = sc;
                }
                const float p = expf(sc - mx[h]);
                sum[h] += p;
                for (int d = 0; d < hd; d++)
                    oh[d] += p * elem(sg->type, v, d);
            }
        }
    }
}

void mdl_attn_merge(const float *parts, int n_parts, int g, int hd, float *out, float *lse)
{
    const size_t pf = mdl_attn_part_floats(g, hd);
    for (int h = 0; h < g; h++) {
        float m = -INFINITY;
        for (int p = 0; p < n_parts; p++)
            m = fmaxf(m, parts[p * pf + (size_t)g * hd + h]);
        float *oh = out + (size_t)h * hd, sum = 0.0f;
        memset(oh, 0, sizeof(float) * hd);
        for (int p = 0; p < n_parts; p++) {
            const float *pp = parts + p * pf;
            const float a = expf(pp[(size_t)g * hd + h] - m);
            sum += pp[(size_t)g * hd + g + h] * a;
            for (int d = 0; d < hd; d++)
                oh[d] += pp[(size_t)h * hd + d] * a;
        }
        const float inv = 1.0f / sum;
        for (int d = 0; d < hd; d++)
            oh[d] *= inv;
        if (lse) {
            lse[2 * h] = m;
            lse[2 * h + 1] = inv;
        }
    }
}
