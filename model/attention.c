/*
 * model/attention.c — grouped-query attention of a batch over the caller's KV views.
 *
 * One unit of work is (batch item, kv-head): the group of query heads that share
 * the kv-head reads each key and value row once. Stored rows come from the view's
 * chunks (F32, F16 or Q8_0 payload, plus an optional per-row bias); new rows come
 * from the batch's own K/V scratch (f32, after RoPE), causal within a sequence.
 * Scores are scaled by 1/sqrt(head_dim), biased, and softmaxed in f32 with the
 * maximum subtracted. The inner loops are model/attn_ops.h's (SIMD where the CPU has
 * it); stored rows are converted a tile at a time. Units are shared out among the
 * forward's OpenMP team; when a view asks for attention accumulation the unit becomes
 * (sequence, kv-head), so that one thread owns each accumulator and no atomics are
 * needed. The unit that owns a (batch item, kv-head) also writes the item's new row into
 * its view (K, V and, with retention gates, log-beta).
 */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "common/dtype.h"
#include "model/kernels.h"
#include "model/attn_ops.h"
#include "model/llama_impl.h"

/* Stored rows are read a tile at a time: converted to f32 once for all heads of the group. */
#define TILE 64

/* Floats at the start of a thread's buffer for one row of a retention gate's output
 * matrix in f32; a multiple of 16, so what follows stays 64-byte aligned. */
static size_t ret_floats(const mdl_t *m)
{
    return m->has_retention ? ((size_t)m->ret_hidden + 15) & ~(size_t)15 : 0;
}

size_t mdl_attention_scratch(const mdl_t *m, size_t n_rows)
{
    size_t g = m->hp.n_head / m->hp.n_head_kv;
    /* a gate row, an f32 tile of rows, [g][n_rows] scores, g normalisers; padded to keep
     * threads apart */
    return ret_floats(m) + (((size_t)TILE * m->hp.head_dim + g * n_rows + g + 31) & ~(size_t)15);
}

static inline float log_sigmoid(float z)
{
    return fminf(z, 0.0f) - log1pf(expf(-fabsf(z)));
}

/* Writes batch item i's new K and V rows for kv-head kvh into its view, and its retention
 * log-beta: logsigmoid(W2 . h + b2) from the gate's hidden layer h (s.rh, silu applied),
 * with row kvh of W2 widened to f32 in wrow and the dot summed in double. */
static void store_new(mdl_t *m, const mdl_layer_t *L, uint32_t i, int kvh, float *wrow)
{
    const mdl_scratch_t *s = &m->s;
    const int hd = (int)m->hp.head_dim, n_kv = (int)m->hp.n_head_kv;
    const size_t kv_dim = (size_t)n_kv * hd;
    const mdl_kv_view_t *v = &s->views[(size_t)s->item_slot[i] * n_kv + kvh];
    const size_t j = (size_t)s->item_j[i];
    if (v->new_k)
        memcpy(v->new_k + j * hd, s->k + i * kv_dim + (size_t)kvh * hd, sizeof(float) * hd);
    if (v->new_v)
        memcpy(v->new_v + j * hd, s->v + i * kv_dim + (size_t)kvh * hd, sizeof(float) * hd);
    if (v->new_logbeta && m->has_retention) {
        const int nh = (int)m->ret_hidden;
        const float *h = s->rh + (size_t)i * nh;
        kern_get_row(L->ret_out.type, L->ret_out.data, nh, kvh, wrow);
        double z = L->ret_out_b[kvh];
        for (int c = 0; c < nh; c++)
            z += (double)wrow[c] * h[c];
        v->new_logbeta[j] = log_sigmoid((float)z);
    }
}

/* Rows r0 .. r0+nt of a chunk payload as f32 rows of hd: the payload itself for F32, else
 * tile, filled. */
static const float *tile_rows(const mdl_attn_ops_t *ops, uint32_t type, const void *base,
                              uint32_t r0, uint32_t nt, int hd, float *tile)
{
    if (type == DT_F32)
        return (const float *)base + (size_t)r0 * hd;
    const size_t row_bytes = type == DT_F16 ? (size_t)hd * 2 : (size_t)hd / QK8_0 * 34;
    ops->to_f32(type, (const uint8_t *)base + (size_t)r0 * row_bytes, tile, (size_t)nt * hd);
    return tile;
}

/* The length of the run of consecutive batch items starting at news[jj], up to news[last]. */
static int run_length(const int32_t *news, int jj, int last)
{
    int n = 1;
    while (jj + n <= last && news[jj + n] == news[jj] + n)
        n++;
    return n;
}

/* Attention of batch item i for the query heads of kv-head kvh. */
static void attend(mdl_t *m, uint32_t i, int kvh, float *buf, bool acc)
{
    const mdl_attn_ops_t *ops = m->attn_ops;
    const mdl_scratch_t *s = &m->s;
    const int hd = (int)m->hp.head_dim, n_kv = (int)m->hp.n_head_kv;
    const int g = (int)(m->hp.n_head / m->hp.n_head_kv);
    const size_t q_dim = (size_t)m->hp.n_head * hd, kv_dim = (size_t)n_kv * hd;
    const int slot = s->item_slot[i], j = s->item_j[i];
    const mdl_kv_view_t *view = &s->views[(size_t)slot * n_kv + kvh];
    const int32_t *news = s->slot_items + s->slot_first[slot];
    const float *q = s->q + i * q_dim + (size_t)kvh * g * hd;
    float *out = s->att + i * q_dim + (size_t)kvh * g * hd;
    const float *kn = s->k + (size_t)kvh * hd, *vn = s->v + (size_t)kvh * hd; /* new rows */

    size_t n_rows = (size_t)j + 1;
    for (uint32_t c = 0; c < view->n_chunks; c++)
        n_rows += view->chunks[c].n;
    float *tile = buf;                    /* [TILE][hd] */
    float *sc = buf + (size_t)TILE * hd;  /* [g][n_rows] scores, then exp(score - max) */
    float *inv = sc + (size_t)g * n_rows; /* [g] 1 / sum of each head's exps */

    /* scores: stored rows, then the new rows of this sequence up to item j */
    size_t r = 0;
    for (uint32_t c = 0; c < view->n_chunks; c++) {
        const mdl_kv_chunk_t *ch = &view->chunks[c];
        for (uint32_t r0 = 0; r0 < ch->n; r0 += TILE) {
            const uint32_t nt = ch->n - r0 < TILE ? ch->n - r0 : TILE;
            const float *kt = tile_rows(ops, ch->type, ch->k, r0, nt, hd, tile);
            ops->scores(q, g, hd, kt, (size_t)hd, (int)nt, m->attn_scale,
                        ch->bias ? ch->bias + r0 : NULL, sc + r, n_rows);
            r += nt;
        }
    }
    for (int jj = 0; jj <= j;) {
        const int run = run_length(news, jj, j);
        ops->scores(q, g, hd, kn + (size_t)news[jj] * kv_dim, kv_dim, run, m->attn_scale, NULL,
                    sc + r, n_rows);
        r += (size_t)run;
        jj += run;
    }

    /* softmax, with the normalisation folded into the output */
    for (int h = 0; h < g; h++) {
        float *p = sc + (size_t)h * n_rows;
        inv[h] = 1.0f / ops->exp_sum(p, n_rows, ops->vmax(p, n_rows));
    }

    /* probability-weighted values, and the accumulators when asked */
    memset(out, 0, sizeof(float) * (size_t)g * hd);
    r = 0;
    for (uint32_t c = 0; c < view->n_chunks; c++) {
        const mdl_kv_chunk_t *ch = &view->chunks[c];
        for (uint32_t r0 = 0; r0 < ch->n; r0 += TILE) {
            const uint32_t nt = ch->n - r0 < TILE ? ch->n - r0 : TILE;
            const float *vt = tile_rows(ops, ch->type, ch->v, r0, nt, hd, tile);
            ops->accum(out, g, hd, vt, (size_t)hd, (int)nt, sc + r, n_rows);
            for (uint32_t t = 0; acc && ch->attn_acc && t < nt; t++) {
                float tot = 0.0f;
                for (int h = 0; h < g; h++)
                    tot += sc[(size_t)h * n_rows + r + t] * inv[h];
                ch->attn_acc[r0 + t] += tot;
            }
            r += nt;
        }
    }
    for (int jj = 0; jj <= j;) {
        const int run = run_length(news, jj, j);
        ops->accum(out, g, hd, vn + (size_t)news[jj] * kv_dim, kv_dim, run, sc + r, n_rows);
        for (int t = 0; acc && view->new_attn_acc && t < run; t++) {
            float tot = 0.0f;
            for (int h = 0; h < g; h++)
                tot += sc[(size_t)h * n_rows + r + (size_t)t] * inv[h];
            view->new_attn_acc[jj + t] += tot;
        }
        r += (size_t)run;
        jj += run;
    }
    for (int h = 0; h < g; h++)
        for (int d = 0; d < hd; d++)
            out[(size_t)h * hd + d] *= inv[h];
}

void mdl_attention(mdl_t *m, int layer, uint32_t n)
{
    mdl_scratch_t *s = &m->s;
    const mdl_layer_t *L = &m->layers[layer];
    const int n_kv = (int)m->hp.n_head_kv;
    const size_t n_views = (size_t)s->n_slots * n_kv;
    float *buf = s->thr + (size_t)omp_get_thread_num() * s->thr_floats;
    float *att_buf = buf + ret_floats(m);

    bool acc = false;
    for (size_t u = 0; u < n_views && !acc; u++) {
        const mdl_kv_view_t *v = &s->views[u];
        acc = v->new_attn_acc != NULL;
        for (uint32_t c = 0; c < v->n_chunks && !acc; c++)
            acc = v->chunks[c].attn_acc != NULL;
    }
    if (acc) {
        const int units = (int)n_views;
#pragma omp for schedule(dynamic, 1) nowait
        for (int u = 0; u < units; u++) {
            const int slot = u / n_kv;
            for (uint32_t jj = 0; jj < s->slot_n[slot]; jj++) {
                const uint32_t i = (uint32_t)s->slot_items[s->slot_first[slot] + jj];
                store_new(m, L, i, u % n_kv, buf);
                attend(m, i, u % n_kv, att_buf, true);
            }
        }
    } else {
        const int units = (int)n * n_kv;
#pragma omp for schedule(dynamic, 1) nowait
        for (int u = 0; u < units; u++) {
            store_new(m, L, (uint32_t)(u / n_kv), u % n_kv, buf);
            attend(m, (uint32_t)(u / n_kv), u % n_kv, att_buf, false);
        }
    }
}
