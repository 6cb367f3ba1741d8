/*
 * model/attention.c — grouped-query attention of a batch over the caller's KV views.
 *
 * The group of query heads that share a kv-head reads each key and value row once, in one
 * pass with an online softmax (model/attn_fused.h): stored rows straight from the view's
 * chunks (f32, f16 or q8_0, with the per-row log-mass bias), then the sequence's new rows
 * from the batch's own K/V scratch (f32, after RoPE), causal within a sequence.
 *
 * A prefill chunk's queries are cut into tiles of up to attn_q_rows (a decode step's query is
 * a tile of one): the query heads of a tile read each key and value row once together, the
 * chunk's own rows under a causal mask (flash attention's tiles of queries by tiles of
 * rows: each row converted in registers for all the tile's heads, as a decode step's are, or
 * a tile of queries by a tile of rows as matrix products once the tile has enough heads).
 *
 * Work is planned per layer (mdl_attention_plan): a unit is (query tile, kv-head), and its
 * rows are cut into parts so that the team shares even one kv-head of one long lane; the
 * thread that finishes a unit's last part merges the unit's partials. When a view asks
 * for attention accumulation, each row's probability (known once the whole softmax is) is
 * added to its accumulator by one thread, so that no atomics are needed: in a step of one
 * query per sequence (decode) the parts keep their rows' scores and the thread that merges
 * a unit adds them all; otherwise the unit becomes (sequence, kv-head) in one part, its
 * queries one at a time. The thread of a unit's first part also writes its items' new rows
 * into their view (K, V and, with retention gates, log-beta).
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

/* Parts into which the rows of a layer's units of many queries are cut at least, so that a
 * team shares them; a constant, not the team's size, so that results do not depend on the
 * number of threads. */
#define ATTN_TILE_PARTS 32

static size_t pad16(size_t n)
{
    return (n + 15) & ~(size_t)15;
}

/* Query heads of a tile of the most queries. */
static int tile_heads(const mdl_t *m)
{
    return (int)(m->attn_q_rows * (m->hp.n_head / m->hp.n_head_kv));
}

/* A thread's buffer: a gate row (ret_floats), the pass's work buffer for a whole tile, a
 * tile's query heads (its merged output, too), then with accumulators one partial, the
 * softmax's max and 1 / sum per head and [g][n_rows] scores; padded to keep threads apart. */
size_t mdl_attention_scratch(const mdl_t *m, size_t n_rows)
{
    const int g = (int)(m->hp.n_head / m->hp.n_head_kv), hd = (int)m->hp.head_dim;
    const int gt = tile_heads(m);
    return ret_floats(m) + pad16(mdl_attn_work_floats(gt, hd)) + pad16((size_t)gt * hd) +
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

/* The rows of [r0, r1) that the queries of tile tl see through kv-head kvh, as segments:
 * the view's stored chunks, then its sequence's new rows up to the tile's last query (runs
 * of consecutive batch items, f32 in the batch's K/V scratch), those after the tile's first
 * query under the causal mask. Only the segments that overlap the range are made (a part
 * of a long lane needs a few of its many blocks); *base is the row, counted over all the
 * tile's rows, where the first of them starts. Returns their number. */
static uint32_t tile_segs(const mdl_t *m, const mdl_attn_qtile_t *tl, int kvh, size_t r0,
                          size_t r1, mdl_attn_seg_t *segs, size_t *base)
{
    const mdl_scratch_t *s = &m->s;
    const mdl_attn_plan_t *p = &s->plan;
    const int hd = (int)m->hp.head_dim, n_kv = (int)m->hp.n_head_kv;
    const uint32_t g = m->hp.n_head / m->hp.n_head_kv;
    const size_t kv_dim = (size_t)n_kv * hd;
    const int j0 = (int)tl->j0, j = j0 + (int)tl->nq - 1;
    const size_t vi = (size_t)tl->slot * n_kv + kvh;
    const mdl_kv_view_t *view = &s->views[vi];
    const size_t *row0 = p->chunk_row0 + p->view_c0[vi]; /* [n_chunks + 1] */
    const size_t stored = row0[view->n_chunks];
    const int32_t *news = s->slot_items + s->slot_first[tl->slot];
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
            const bool causal = jj + run - 1 > j0; /* rows after the tile's first query */
            segs[n++] = (mdl_attn_seg_t){.n = (uint32_t)run,
                                         .type = DT_F32,
                                         .k = s->k + off,
                                         .v = s->v + off,
                                         .stride = sizeof(float) * kv_dim,
                                         .mask_g = causal ? g : 0,
                                         .mask_off = causal ? j0 - jj : 0};
        }
        jj += run;
    }
    return n;
}

/* Rows of view vi that are stored. */
static size_t stored_rows(const mdl_t *m, size_t vi)
{
    const mdl_scratch_t *s = &m->s;
    return s->plan.chunk_row0[s->plan.view_c0[vi] + s->views[vi].n_chunks];
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
    for (uint32_t sl = 0; sl < s->n_slots; sl++)
        max_new = s->slot_n[sl] > max_new ? s->slot_n[sl] : max_new;
    /* accumulators in a step of one query a sequence: parts, their scores kept */
    const bool acc_parts = acc && max_new <= 1;
    acc = acc && !acc_parts;

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

    /* query tiles: each slot's items cut into runs of up to q_rows */
    const uint32_t qr = m->attn_q_rows;
    uint32_t n_tiles = 0;
    if (!acc)
        for (uint32_t sl = 0; sl < s->n_slots; sl++)
            n_tiles += (s->slot_n[sl] + qr - 1) / qr;
    if (n_tiles > p->cap_tiles) {
        GROW(p->tiles, (size_t)n_tiles * 2);
        p->cap_tiles = n_tiles * 2;
    }
    if (!acc)
        for (uint32_t sl = 0, t = 0; sl < s->n_slots; sl++)
            for (uint32_t j0 = 0; j0 < s->slot_n[sl]; j0 += qr)
                p->tiles[t++] = (mdl_attn_qtile_t){
                    .slot = sl, .j0 = j0, .nq = s->slot_n[sl] - j0 < qr ? s->slot_n[sl] - j0 : qr};

    const uint32_t n_units = acc ? (uint32_t)n_views : n_tiles * (uint32_t)n_kv;
    p->q_rows = qr;
    p->part_rows = m->attn_part_rows;
    if (n_units + 1 > p->cap_units) {
        GROW(p->unit_first, (size_t)n_units * 2 + 1);
        GROW(p->unit_rows, (size_t)n_units * 2 + 1);
        GROW(p->unit_poff, (size_t)n_units * 2 + 1);
        GROW(p->unit_soff, (size_t)n_units * 2 + 1);
        GROW(p->unit_done, (size_t)n_units * 2 + 1);
        p->cap_units = n_units * 2 + 1;
    }
    /* units of many queries share their rows out in ATTN_TILE_PARTS parts or more */
    size_t tile_rows = 0;
    for (uint32_t u = 0; u < n_units && !acc; u++) {
        const mdl_attn_qtile_t *tl = &p->tiles[u / (uint32_t)n_kv];
        p->unit_rows[u] = (uint32_t)(stored_rows(m, (size_t)tl->slot * n_kv + u % (uint32_t)n_kv) +
                                     tl->j0 + tl->nq);
        tile_rows += tl->nq > 1 ? p->unit_rows[u] : 0;
    }
    const size_t tpr = (tile_rows + ATTN_TILE_PARTS - 1) / ATTN_TILE_PARTS;
    p->tile_part_rows = tpr > p->part_rows ? (uint32_t)tpr : p->part_rows;
    uint32_t n_parts = 0;
    size_t n_floats = 0, n_scores = 0;
    for (uint32_t u = 0; u < n_units; u++) {
        p->unit_first[u] = n_parts;
        p->unit_poff[u] = n_floats;
        p->unit_soff[u] = n_scores;
        atomic_store_explicit(&p->unit_done[u], 0, memory_order_relaxed);
        if (acc)
            continue;
        if (acc_parts)
            n_scores += (size_t)g * p->unit_rows[u];
        const uint32_t nq = p->tiles[u / (uint32_t)n_kv].nq;
        const uint32_t pr = nq > 1 ? p->tile_part_rows : p->part_rows;
        const uint32_t np = (p->unit_rows[u] + pr - 1) / pr;
        n_parts += np;
        n_floats += np * mdl_attn_part_floats((int)nq * g, hd);
    }
    p->unit_first[n_units] = n_parts;
    if (n_parts > p->cap_parts) {
        GROW(p->part_unit, (size_t)n_parts * 2);
        p->cap_parts = n_parts * 2;
    }
    if (n_floats > p->cap_part_floats) {
        GROW(p->parts, n_floats * 2);
        p->cap_part_floats = n_floats * 2;
    }
    if (n_scores > p->cap_scores) {
        GROW(p->scores, n_scores * 2);
        p->cap_scores = n_scores * 2;
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
    p->acc_parts = acc_parts;
    p->n_units = n_units;
    p->n_parts = n_parts;
    p->n_tiles = n_tiles;
    return 0;
}

void mdl_attention_plan_free(mdl_attn_plan_t *p)
{
    free(p->unit_first);
    free(p->unit_rows);
    free(p->unit_poff);
    free(p->unit_soff);
    free(p->scores);
    free(p->tiles);
    free((void *)p->unit_done);
    free(p->part_unit);
    free(p->parts);
    free(p->segs);
    free(p->view_c0);
    free(p->chunk_row0);
    memset(p, 0, sizeof *p);
}

/* Adds each of a query's n_rows rows' probability, summed over the g heads of a kv-head
 * (scores sc [g][n_rows], softmax max and 1 / sum lse [g][2]), to the view's accumulators:
 * rows in the order of the segments, the stored chunks, then the new rows. */
static void add_probs(const mdl_t *m, const mdl_kv_view_t *view, const float *sc, size_t n_rows,
                      const float *lse)
{
    const int g = (int)(m->hp.n_head / m->hp.n_head_kv);
    size_t r = 0;
    for (uint32_t c = 0; c < view->n_chunks; c++) {
        const mdl_kv_chunk_t *ch = &view->chunks[c];
        if (ch->attn_acc && ch->n)
            m->attn_ops->prob_acc(sc + r, n_rows, g, ch->n, lse, ch->attn_acc);
        r += ch->n;
    }
    if (view->new_attn_acc && r < n_rows)
        m->attn_ops->prob_acc(sc + r, n_rows, g, n_rows - r, lse, view->new_attn_acc);
}

/* Part q of the plan (no accumulators, or acc_parts): the partial of its rows for the query
 * heads of its tile (gathered into qb when the tile has more than one query), with acc_parts
 * their scores too; the thread that finishes its unit's last part merges the unit into s.att
 * (with acc_parts, adding its rows' probabilities to their accumulators). The unit's first
 * part also stores the tile's new rows. */
static void attend_part(mdl_t *m, const mdl_layer_t *L, uint32_t q, float *buf, float *work,
                        float *qb, mdl_attn_seg_t *segs)
{
    mdl_scratch_t *s = &m->s;
    mdl_attn_plan_t *p = &s->plan;
    const int hd = (int)m->hp.head_dim, n_kv = (int)m->hp.n_head_kv;
    const int g = (int)(m->hp.n_head / m->hp.n_head_kv);
    const size_t q_dim = (size_t)m->hp.n_head * hd, head = (size_t)g * hd;
    const uint32_t u = p->part_unit[q], k = q - p->unit_first[u];
    const mdl_attn_qtile_t *tl = &p->tiles[u / (uint32_t)n_kv];
    const int kvh = (int)(u % (uint32_t)n_kv), gt = (int)tl->nq * g;
    const int32_t *items = s->slot_items + s->slot_first[tl->slot] + tl->j0;
    const size_t hoff = (size_t)kvh * head, pf = mdl_attn_part_floats(gt, hd);
    if (k == 0)
        for (uint32_t t = 0; t < tl->nq; t++)
            store_new(m, L, (uint32_t)items[t], kvh, buf);
    const size_t pr = tl->nq > 1 ? p->tile_part_rows : p->part_rows;
    const size_t r0 = (size_t)k * pr, r1 = r0 + pr < p->unit_rows[u] ? r0 + pr : p->unit_rows[u];
    size_t base;
    const uint32_t n_segs = tile_segs(m, tl, kvh, r0, r1, segs, &base);
    const float *qt = s->q + (size_t)items[0] * q_dim + hoff; /* [nq][g][hd] */
    if (tl->nq > 1) {
        for (uint32_t t = 0; t < tl->nq; t++)
            memcpy(qb + t * head, s->q + (size_t)items[t] * q_dim + hoff, sizeof(float) * head);
        qt = qb;
    }
    float *parts = p->parts + p->unit_poff[u];
    float *sc = p->acc_parts ? p->scores + p->unit_soff[u] : NULL; /* [g][unit rows] */
    mdl_attn_part(m->attn_ops, qt, gt, hd, m->attn_scale, segs, n_segs, r0 - base, r1 - base,
                  parts + k * pf, work, sc ? sc + r0 : NULL, p->unit_rows[u]);
    const uint32_t n_parts = p->unit_first[u + 1] - p->unit_first[u];
    if (atomic_fetch_add_explicit(&p->unit_done[u], 1, memory_order_acq_rel) + 1 != n_parts)
        return;
    if (tl->nq == 1) {
        float *lse = sc ? qb : NULL; /* [g][2]: the tile's query is not gathered into qb */
        mdl_attn_merge(parts, (int)n_parts, gt, hd, s->att + (size_t)items[0] * q_dim + hoff,
                       lse);
        if (sc)
            add_probs(m, &s->views[(size_t)tl->slot * n_kv + kvh], sc, p->unit_rows[u], lse);
        return;
    }
    mdl_attn_merge(parts, (int)n_parts, gt, hd, qb, NULL);
    for (uint32_t t = 0; t < tl->nq; t++)
        memcpy(s->att + (size_t)items[t] * q_dim + hoff, qb + t * head, sizeof(float) * head);
}

/* Unit u of a plan with accumulators, (slot, kv-head): each of the slot's items in order, in
 * one part (in the thread's own buffer), then every row's probability (summed over the group's heads) added to its
 * accumulator. One thread owns the unit, so it owns the accumulators. */
static void attend_acc(mdl_t *m, const mdl_layer_t *L, uint32_t u, float *buf, float *work,
                       float *accb, mdl_attn_seg_t *segs)
{
    mdl_scratch_t *s = &m->s;
    const int hd = (int)m->hp.head_dim, n_kv = (int)m->hp.n_head_kv;
    const int g = (int)(m->hp.n_head / m->hp.n_head_kv);
    const size_t q_dim = (size_t)m->hp.n_head * hd;
    const uint32_t slot = u / (uint32_t)n_kv;
    const int kvh = (int)(u % (uint32_t)n_kv);
    const mdl_kv_view_t *view = &s->views[u];
    float *part = accb;
    float *lse = part + mdl_attn_part_floats(g, hd);                       /* [g][2] */
    float *sc = part + pad16(mdl_attn_part_floats(g, hd) + 2 * (size_t)g); /* [g][n_rows] */
    for (uint32_t jj = 0; jj < s->slot_n[slot]; jj++) {
        const uint32_t i = (uint32_t)s->slot_items[s->slot_first[slot] + jj];
        store_new(m, L, i, kvh, buf);
        const mdl_attn_qtile_t tl = {.slot = slot, .j0 = jj, .nq = 1};
        const size_t n_rows = stored_rows(m, u) + jj + 1;
        size_t base;
        const uint32_t n_segs = tile_segs(m, &tl, kvh, 0, n_rows, segs, &base);
        const size_t qoff = i * q_dim + (size_t)kvh * g * hd;
        mdl_attn_part(m->attn_ops, s->q + qoff, g, hd, m->attn_scale, segs, n_segs, 0, n_rows,
                      part, work, sc, n_rows);
        mdl_attn_merge(part, 1, g, hd, s->att + qoff, lse);
        add_probs(m, view, sc, n_rows, lse);
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
    float *qb = work + pad16(mdl_attn_work_floats(tile_heads(m), (int)m->hp.head_dim));
    float *accb = qb + pad16((size_t)tile_heads(m) * m->hp.head_dim);
    mdl_attn_seg_t *segs = p->segs + (size_t)t * p->seg_cap;
    if (p->acc) {
        const int units = (int)p->n_units;
#pragma omp for schedule(dynamic, 1) nowait
        for (int u = 0; u < units; u++)
            attend_acc(m, L, (uint32_t)u, buf, work, accb, segs);
    } else {
        const int parts = (int)p->n_parts;
#pragma omp for schedule(dynamic, 1) nowait
        for (int q = 0; q < parts; q++)
            attend_part(m, L, (uint32_t)q, buf, work, qb, segs);
    }
}
