/*
 * model/attention.c — grouped-query attention of a batch over the caller's KV views.
 *
 * The group of query heads that share a kv-head reads each key and value row once, in one
 * pass with an online softmax (model/attn_fused.h): stored rows straight from the view's
 * chunks (f32, f16 or q8_0, with the per-row log-mass bias), then the sequence's new rows
 * from the batch's own K/V scratch (f32, after RoPE), causal within a sequence.
 *
 * Work is planned per layer (mdl_attention_plan): a unit is (batch item, kv-head), and its
 * rows are cut into parts so that the team shares even one kv-head of one long lane; the
 * thread that finishes a unit's last part merges the unit's partials. When a view asks
 * for attention accumulation the unit becomes (sequence, kv-head) in one part, so that one
 * thread owns each accumulator and no atomics are needed. The thread of a unit's first
 * part also writes the item's new row into its view (K, V and, with retention gates,
 * log-beta).
 */
#include <math.h>
#include <omp.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "model/kernels.h"
#include "model/attn_fused.h"
#include "model/attn_ops.h"
#include "model/llama_impl.h"

/* Floats at the start of a thread's buffer for one row of a retention gate's output
 * matrix in f32; a multiple of 16, so what follows stays 64-byte aligned. */
static size_t ret_floats(const mdl_t *m)
{
    return m->has_retention ? ((size_t)m->ret_hidden + 15) & ~(size_t)15 : 0;
}

static size_t pad16(size_t n)
{
    return (n + 15) & ~(size_t)15;
}

size_t mdl_attention_scratch(const mdl_t *m, size_t n_rows)
{
    const int g = (int)(m->hp.n_head / m->hp.n_head_kv), hd = (int)m->hp.head_dim;
    /* a gate row; the pass's work buffer; with accumulators, one partial, the softmax's max
     * and 1 / sum per head and [g][n_rows] scores; padded to keep threads apart */
    return ret_floats(m) + pad16(mdl_attn_work_floats(g, hd)) +
           pad16(mdl_attn_part_floats(g, hd) + 2 * (size_t)g) + pad16((size_t)g * n_rows) + 16;
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

/* The length of the run of consecutive batch items starting at news[jj], up to news[last]. */
static int run_length(const int32_t *news, int jj, int last)
{
    int n = 1;
    while (jj + n <= last && news[jj + n] == news[jj] + n)
        n++;
    return n;
}

/* The rows of [r0, r1) that batch item i sees through kv-head kvh, as segments: the view's
 * stored chunks, then its sequence's new rows up to the item (runs of consecutive batch
 * items, f32 in the batch's K/V scratch). Only the segments that overlap the range are
 * made (a part of a long lane needs a few of its many blocks); *base is the row, counted
 * over all the item's rows, where the first of them starts. Returns their number. */
static uint32_t item_segs(const mdl_t *m, uint32_t i, int kvh, size_t r0, size_t r1,
                          mdl_attn_seg_t *segs, size_t *base)
{
    const mdl_scratch_t *s = &m->s;
    const mdl_attn_plan_t *p = &s->plan;
    const int hd = (int)m->hp.head_dim, n_kv = (int)m->hp.n_head_kv;
    const size_t kv_dim = (size_t)n_kv * hd;
    const int slot = s->item_slot[i], j = s->item_j[i];
    const size_t vi = (size_t)slot * n_kv + kvh;
    const mdl_kv_view_t *view = &s->views[vi];
    const size_t *row0 = p->chunk_row0 + p->view_c0[vi]; /* [n_chunks + 1] */
    const size_t stored = row0[view->n_chunks];
    const int32_t *news = s->slot_items + s->slot_first[slot];
    uint32_t n = 0;
    *base = r0;
    if (r0 < stored) { /* the last chunk that starts at or before r0 */
        uint32_t lo = 0, hi = view->n_chunks - 1;
        while (lo < hi) {
            const uint32_t mid = (lo + hi + 1) / 2;
            if (row0[mid] <= r0)
                lo = mid;
            else
                hi = mid - 1;
        }
        *base = row0[lo];
        for (uint32_t c = lo; c < view->n_chunks && row0[c] < r1; c++) {
            const mdl_kv_chunk_t *ch = &view->chunks[c];
            if (ch->n)
                segs[n++] = (mdl_attn_seg_t){.n = ch->n,
                                             .type = ch->type,
                                             .k = ch->k,
                                             .v = ch->v,
                                             .stride = ggml_row_bytes(ch->type, (uint32_t)hd),
                                             .bias = ch->bias};
        }
    }
    for (int jj = 0, first = 1; jj <= j && stored + (size_t)jj < r1;) {
        const int run = run_length(news, jj, j);
        if (stored + (size_t)jj + (size_t)run > r0) {
            if (first && r0 >= stored)
                *base = stored + (size_t)jj;
            first = 0;
            const size_t off = (size_t)news[jj] * kv_dim + (size_t)kvh * hd;
            segs[n++] = (mdl_attn_seg_t){.n = (uint32_t)run,
                                         .type = DT_F32,
                                         .k = s->k + off,
                                         .v = s->v + off,
                                         .stride = sizeof(float) * kv_dim};
        }
        jj += run;
    }
    return n;
}

/* Rows batch item i attends to through kv-head kvh. */
static size_t item_rows(const mdl_t *m, uint32_t i, int kvh)
{
    const mdl_scratch_t *s = &m->s;
    const size_t vi = (size_t)s->item_slot[i] * m->hp.n_head_kv + kvh;
    return s->plan.chunk_row0[s->plan.view_c0[vi] + s->views[vi].n_chunks] +
           (size_t)s->item_j[i] + 1;
}

#define GROW(ptr, n)                                                                               \
    do {                                                                                           \
        void *t_ = realloc((void *)(ptr), sizeof *(ptr) * (n));                                    \
        if (!t_)                                                                                   \
            return ERR_NOMEM;                                                                      \
        (ptr) = t_;                                                                                \
    } while (0)

int mdl_attention_plan(mdl_t *m)
{
    mdl_scratch_t *s = &m->s;
    mdl_attn_plan_t *p = &s->plan;
    const int n_kv = (int)m->hp.n_head_kv, hd = (int)m->hp.head_dim;
    const int g = (int)(m->hp.n_head / m->hp.n_head_kv);
    const size_t n_views = (size_t)s->n_slots * n_kv;

    bool acc = false;
    size_t max_chunks = 0, max_new = 0;
    for (size_t u = 0; u < n_views; u++) {
        const mdl_kv_view_t *v = &s->views[u];
        acc = acc || v->new_attn_acc != NULL;
        for (uint32_t c = 0; c < v->n_chunks && !acc; c++)
            acc = v->chunks[c].attn_acc != NULL;
        max_chunks = v->n_chunks > max_chunks ? v->n_chunks : max_chunks;
    }
    uint32_t n = 0; /* items */
    for (uint32_t sl = 0; sl < s->n_slots; sl++) {
        max_new = s->slot_n[sl] > max_new ? s->slot_n[sl] : max_new;
        n += s->slot_n[sl];
    }

    /* where each view's chunks start, over the view's rows */
    size_t n_c0 = 0;
    for (size_t u = 0; u < n_views; u++)
        n_c0 += s->views[u].n_chunks + 1;
    if (n_views + 1 > p->cap_views) {
        GROW(p->view_c0, n_views * 2 + 1);
        p->cap_views = n_views * 2 + 1;
    }
    if (n_c0 > p->cap_c0) {
        GROW(p->chunk_row0, n_c0 * 2);
        p->cap_c0 = n_c0 * 2;
    }
    for (size_t u = 0, at = 0; u < n_views; u++) {
        const mdl_kv_view_t *v = &s->views[u];
        size_t r = 0;
        p->view_c0[u] = at;
        for (uint32_t c = 0; c < v->n_chunks; c++) {
            p->chunk_row0[at++] = r;
            r += v->chunks[c].n;
        }
        p->chunk_row0[at++] = r;
    }

    const uint32_t n_units = acc ? (uint32_t)n_views : n * (uint32_t)n_kv;
    p->part_rows = m->attn_part_rows;
    if (n_units + 1 > p->cap_units) {
        GROW(p->unit_first, (size_t)n_units * 2 + 1);
        GROW(p->unit_rows, (size_t)n_units * 2 + 1);
        GROW(p->unit_done, (size_t)n_units * 2 + 1);
        p->cap_units = n_units * 2 + 1;
    }
    uint32_t n_parts = 0;
    for (uint32_t u = 0; u < n_units; u++) {
        p->unit_first[u] = n_parts;
        atomic_store_explicit(&p->unit_done[u], 0, memory_order_relaxed);
        if (acc)
            continue;
        p->unit_rows[u] = (uint32_t)item_rows(m, u / (uint32_t)n_kv, (int)(u % (uint32_t)n_kv));
        n_parts += (p->unit_rows[u] + p->part_rows - 1) / p->part_rows;
    }
    p->unit_first[n_units] = n_parts;
    if (n_parts > p->cap_parts) {
        GROW(p->part_unit, (size_t)n_parts * 2);
        GROW(p->parts, (size_t)n_parts * 2 * mdl_attn_part_floats(g, hd));
        p->cap_parts = n_parts * 2;
    }
    for (uint32_t u = 0; u < n_units; u++)
        for (uint32_t q = p->unit_first[u]; q < p->unit_first[u + 1]; q++)
            p->part_unit[q] = u;
    const size_t seg_cap = max_chunks + max_new;
    if (seg_cap > p->seg_cap || p->n_seg_thr < m->n_threads) {
        const size_t cap = seg_cap > p->seg_cap ? seg_cap * 2 : p->seg_cap;
        GROW(p->segs, cap * (size_t)m->n_threads);
        p->seg_cap = cap;
        p->n_seg_thr = m->n_threads;
    }
    p->acc = acc;
    p->n_units = n_units;
    p->n_parts = n_parts;
    return 0;
}

void mdl_attention_plan_free(mdl_attn_plan_t *p)
{
    free(p->unit_first);
    free(p->unit_rows);
    free((void *)p->unit_done);
    free(p->part_unit);
    free(p->parts);
    free(p->segs);
    free(p->view_c0);
    free(p->chunk_row0);
    memset(p, 0, sizeof *p);
}

/* Part q of the plan (no accumulators): the partial of its rows; the thread that finishes
 * its unit's last part merges the unit into s.att. The unit's first part also stores the
 * item's new row. */
static void attend_part(mdl_t *m, const mdl_layer_t *L, uint32_t q, float *buf, float *work,
                        mdl_attn_seg_t *segs)
{
    mdl_scratch_t *s = &m->s;
    mdl_attn_plan_t *p = &s->plan;
    const int hd = (int)m->hp.head_dim, n_kv = (int)m->hp.n_head_kv;
    const int g = (int)(m->hp.n_head / m->hp.n_head_kv);
    const size_t q_dim = (size_t)m->hp.n_head * hd, pf = mdl_attn_part_floats(g, hd);
    const uint32_t u = p->part_unit[q], i = u / (uint32_t)n_kv, k = q - p->unit_first[u];
    const int kvh = (int)(u % (uint32_t)n_kv);
    if (k == 0)
        store_new(m, L, i, kvh, buf);
    const size_t r0 = (size_t)k * p->part_rows;
    const size_t r1 = r0 + p->part_rows < p->unit_rows[u] ? r0 + p->part_rows : p->unit_rows[u];
    size_t base;
    const uint32_t n_segs = item_segs(m, i, kvh, r0, r1, segs, &base);
    const size_t qoff = i * q_dim + (size_t)kvh * g * hd;
    mdl_attn_part(m->attn_ops, s->q + qoff, g, hd, m->attn_scale, segs, n_segs, r0 - base,
                  r1 - base, p->parts + q * pf, work, NULL, 0);
    const uint32_t n_parts = p->unit_first[u + 1] - p->unit_first[u];
    if (atomic_fetch_add_explicit(&p->unit_done[u], 1, memory_order_acq_rel) + 1 == n_parts)
        mdl_attn_merge(p->parts + (size_t)p->unit_first[u] * pf, (int)n_parts, g, hd,
                       s->att + qoff, NULL);
}

/* Unit u of a plan with accumulators, (slot, kv-head): each of the slot's items in order, in
 * one part (in the thread's own buffer), then every row's probability (summed over the group's heads) added to its
 * accumulator. One thread owns the unit, so it owns the accumulators. */
static void attend_acc(mdl_t *m, const mdl_layer_t *L, uint32_t u, float *buf, float *work,
                       mdl_attn_seg_t *segs)
{
    mdl_scratch_t *s = &m->s;
    const int hd = (int)m->hp.head_dim, n_kv = (int)m->hp.n_head_kv;
    const int g = (int)(m->hp.n_head / m->hp.n_head_kv);
    const size_t q_dim = (size_t)m->hp.n_head * hd;
    const uint32_t slot = u / (uint32_t)n_kv;
    const int kvh = (int)(u % (uint32_t)n_kv);
    const mdl_kv_view_t *view = &s->views[u];
    float *part = work + pad16(mdl_attn_work_floats(g, hd));
    float *lse = part + mdl_attn_part_floats(g, hd);                       /* [g][2] */
    float *sc = part + pad16(mdl_attn_part_floats(g, hd) + 2 * (size_t)g); /* [g][n_rows] */
    for (uint32_t jj = 0; jj < s->slot_n[slot]; jj++) {
        const uint32_t i = (uint32_t)s->slot_items[s->slot_first[slot] + jj];
        store_new(m, L, i, kvh, buf);
        const size_t n_rows = item_rows(m, i, kvh);
        size_t base;
        const uint32_t n_segs = item_segs(m, i, kvh, 0, n_rows, segs, &base);
        const size_t qoff = i * q_dim + (size_t)kvh * g * hd;
        mdl_attn_part(m->attn_ops, s->q + qoff, g, hd, m->attn_scale, segs, n_segs, 0, n_rows,
                      part, work, sc, n_rows);
        mdl_attn_merge(part, 1, g, hd, s->att + qoff, lse);
        /* rows in the order of the segments: the chunks, then the new rows 0..jj */
        size_t r = 0;
        for (uint32_t c = 0; c < view->n_chunks; c++) {
            const mdl_kv_chunk_t *ch = &view->chunks[c];
            for (uint32_t t = 0; t < ch->n; t++, r++) {
                float tot = 0.0f;
                for (int h = 0; h < g; h++)
                    tot += expf(sc[(size_t)h * n_rows + r] - lse[2 * h]) * lse[2 * h + 1];
                if (ch->attn_acc)
                    ch->attn_acc[t] += tot;
            }
        }
        for (uint32_t t = 0; t <= jj; t++, r++) {
            float tot = 0.0f;
            for (int h = 0; h < g; h++)
                tot += expf(sc[(size_t)h * n_rows + r] - lse[2 * h]) * lse[2 * h + 1];
            if (view->new_attn_acc)
                view->new_attn_acc[t] += tot;
        }
    }
}

void mdl_attention(mdl_t *m, int layer)
{
    mdl_scratch_t *s = &m->s;
    const mdl_attn_plan_t *p = &s->plan;
    const mdl_layer_t *L = &m->layers[layer];
    const int t = omp_get_thread_num();
    float *buf = s->thr + (size_t)t * s->thr_floats;
    float *work = buf + ret_floats(m);
    mdl_attn_seg_t *segs = p->segs + (size_t)t * p->seg_cap;
    if (p->acc) {
        const int units = (int)p->n_units;
#pragma omp for schedule(dynamic, 1) nowait
        for (int u = 0; u < units; u++)
            attend_acc(m, L, (uint32_t)u, buf, work, segs);
    } else {
        const int parts = (int)p->n_parts;
#pragma omp for schedule(dynamic, 1) nowait
        for (int q = 0; q < parts; q++)
            attend_part(m, L, (uint32_t)q, buf, work, segs);
    }
}
