/*
 * policy/steps.c — the compaction steps: pooled gists of closed sentences, merges of gists
 * into coarser ones, and eviction by score (learned gists: policy/learned.c).
 *
 * Every step reads the rows it needs back from the store, edits them with the store's verbs
 * (a span verb for every lane at once, or one lane at a time for per-lane eviction) and
 * reports one event with the session's bytes before and after. A span edit allocates its new
 * rows before it frees the old ones; a gist or merge step that finds no room for that frees
 * its span first and inserts the new rows after (should even that not fit, the event says
 * the span was evicted). Steps cannot pay for themselves below min_gist raw tokens: the
 * schedule then moves on to merges and eviction.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kvstore/kv_pool.h"
#include "policy/pol_impl.h"

uint32_t pol_n_head_kv(const pol_t *p)
{
    return kv_store_config(p->st)->n_head_kv;
}

int pol_lane_meta(pol_t *p, uint32_t l, uint32_t *n, err_info_t *e)
{
    uint32_t nh = pol_n_head_kv(p), rows = 0;
    int rc = kv_lane_size(p->st, p->sid, l / nh, l % nh, &rows, NULL);
    if (rc)
        return err_set(e, rc, "policy: lane %u", l);
    if (rows > p->meta_cap) {
        uint32_t cap = rows + rows / 2 + 64;
        kv_row_meta_t *t = realloc(p->meta, cap * sizeof *t);
        if (!t)
            return err_set(e, ERR_NOMEM, "policy: out of memory for %u rows", rows);
        p->meta = t;
        p->meta_cap = cap;
    }
    rc = rows ? kv_lane_read(p->st, p->sid, l / nh, l % nh, 0, rows, p->meta, NULL, NULL) : 0;
    if (rc)
        return err_set(e, rc, "policy: reading lane %u", l);
    *n = rows;
    return 0;
}

/* First index in meta[0..n) whose position is >= x. */
uint32_t pol_lower_pos(const kv_row_meta_t *m, uint32_t n, float x)
{
    uint32_t lo = 0, hi = n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (m[mid].pos < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Sets the accumulators of rows [r0, r0+n) of lane l to v[0..n). */
void pol_acc_write(pol_t *p, uint32_t l, uint32_t r0, uint32_t n, const float *v)
{
    uint32_t nh = pol_n_head_kv(p), nc = 0;
    if (kv_lane_size(p->st, p->sid, l / nh, l % nh, NULL, &nc) || nc == 0)
        return;
    kv_chunk_t *ch = malloc(nc * sizeof *ch);
    if (!ch)
        return;
    if (kv_lane_view(p->st, p->sid, l / nh, l % nh, ch, nc, &nc) == 0) {
        uint32_t base = 0;
        for (uint32_t c = 0; c < nc; c++) {
            for (uint32_t i = 0; i < ch[c].n && ch[c].attn_acc; i++) {
                uint32_t r = base + i;
                if (r >= r0 && r < r0 + n)
                    ch[c].attn_acc[i] = v[r - r0];
            }
            base += ch[c].n;
        }
    }
    free(ch);
}

void pol_zero_acc(pol_t *p)
{
    uint32_t nl = kv_lane_count(p->st), nh = pol_n_head_kv(p);
    kv_chunk_t *ch = NULL;
    uint32_t cap = 0;
    for (uint32_t l = 0; l < nl; l++) {
        uint32_t nc = 0;
        if (kv_lane_size(p->st, p->sid, l / nh, l % nh, NULL, &nc) || nc == 0)
            continue;
        if (nc > cap) {
            kv_chunk_t *t = realloc(ch, nc * sizeof *t);
            if (!t)
                break;
            ch = t;
            cap = nc;
        }
        if (kv_lane_view(p->st, p->sid, l / nh, l % nh, ch, cap, &nc))
            continue;
        for (uint32_t c = 0; c < nc; c++)
            if (ch[c].attn_acc)
                memset(ch[c].attn_acc, 0, ch[c].n * sizeof(float));
    }
    free(ch);
}

/* ------------------------------------------------------------------ pooling */

/* Replacement rows being built for every lane. */
typedef struct lane_out {
    uint32_t *n;
    float **k, **v, **acc;
    kv_row_meta_t **meta;
    uint32_t *at; /* index of the first replaced row in each lane */
} lane_out_t;

static void out_free(lane_out_t *o, uint32_t nl)
{
    for (uint32_t l = 0; o->k && l < nl; l++) {
        free(o->k[l]);
        free(o->v[l]);
        free(o->acc[l]);
        free(o->meta[l]);
    }
    free(o->n);
    free(o->k);
    free(o->v);
    free(o->acc);
    free(o->meta);
    free(o->at);
}

static int out_alloc(lane_out_t *o, uint32_t nl)
{
    memset(o, 0, sizeof *o);
    o->n = calloc(nl, sizeof *o->n);
    o->at = calloc(nl, sizeof *o->at);
    o->k = calloc(nl, sizeof *o->k);
    o->v = calloc(nl, sizeof *o->v);
    o->acc = calloc(nl, sizeof *o->acc);
    o->meta = calloc(nl, sizeof *o->meta);
    return o->n && o->at && o->k && o->v && o->acc && o->meta ? 0 : ERR_NOMEM;
}

/* Pools rows [0, n) of k/v/meta into g groups of about equal mass, appending to lane l's
 * output at index *j. */
static int pool_groups(const pol_t *p, uint32_t hd, uint32_t n, const float *k, const float *v,
                       const kv_row_meta_t *m, uint32_t g, uint8_t level, lane_out_t *o, uint32_t l,
                       uint32_t *j)
{
    double total = 0.0;
    for (uint32_t i = 0; i < n; i++)
        total += m[i].mass;
    uint32_t i = 0;
    double cum = 0.0;
    for (uint32_t q = 0; q < g && i < n; q++) {
        uint32_t i0 = i;
        double goal = total * (q + 1) / g;
        /* at least one row per group, and leave one row for each group still to come */
        do {
            cum += m[i].mass;
            i++;
        } while (i < n && n - i > g - q - 1 && cum + 0.5 * m[i].mass <= goal);
        if (q == g - 1)
            while (i < n)
                cum += m[i++].mass;
        kv_row_meta_t *mo = &o->meta[l][*j];
        int rc = kv_pool_rows(&p->model.rope, hd, i - i0, k + (size_t)i0 * hd, v + (size_t)i0 * hd,
                              m + i0, o->k[l] + (size_t)*j * hd, o->v[l] + (size_t)*j * hd, mo);
        if (rc)
            return rc;
        mo->level = level;
        if (p->no_mass_bias)
            mo->mass = 1.0f; /* weighs as one token (an ablation: no log-mass bias) */
        float a = 0.0f;
        for (uint32_t r = i0; r < i; r++)
            a += m[r].attn;
        o->acc[l][*j] = a;
        (*j)++;
    }
    return 0;
}

/* In every lane, replaces the rows of each range ranges[r] = [lo, hi] (ordered, disjoint)
 * with at most `rows_each` pooled rows at `level`; rows in [ranges[0].lo, ranges[n-1].hi]
 * outside every range stay. Fills ev's rows, lanes and bytes. *changed is false when no lane
 * had a row there. */
static int pool_ranges(pol_t *p, const float (*ranges)[2], uint32_t n_rng, uint32_t rows_each,
                       uint8_t level, pol_event_t *ev, bool *changed, err_info_t *e)
{
    const uint32_t nl = kv_lane_count(p->st), hd = kv_head_dim(p->st), nh = pol_n_head_kv(p);
    const float p0 = ranges[0][0], p1 = ranges[n_rng - 1][1];
    lane_out_t o;
    float *k = NULL, *v = NULL;
    int rc = out_alloc(&o, nl);
    *changed = false;
    ev->bytes_before = pol_session_bytes(p);
    for (uint32_t l = 0; !rc && l < nl; l++) {
        uint32_t n;
        rc = pol_lane_meta(p, l, &n, e);
        if (rc)
            break;
        uint32_t a = pol_lower_pos(p->meta, n, p0), b = a;
        while (b < n && p->meta[b].pos <= p1)
            b++;
        o.at[l] = a;
        uint32_t cnt = b - a;
        if (cnt == 0)
            continue;
        ev->rows_before += cnt;
        ev->lanes++;
        kv_row_meta_t *m = malloc(cnt * sizeof *m);
        k = malloc((size_t)cnt * hd * sizeof *k);
        v = malloc((size_t)cnt * hd * sizeof *v);
        o.k[l] = malloc((size_t)cnt * hd * sizeof(float));
        o.v[l] = malloc((size_t)cnt * hd * sizeof(float));
        o.acc[l] = malloc(cnt * sizeof(float));
        o.meta[l] = malloc(cnt * sizeof(kv_row_meta_t));
        if (!m || !k || !v || !o.k[l] || !o.v[l] || !o.acc[l] || !o.meta[l]) {
            free(m);
            rc = err_set(e, ERR_NOMEM, "policy: out of memory pooling %u rows", cnt);
            break;
        }
        rc = kv_lane_read(p->st, p->sid, l / nh, l % nh, a, cnt, m, k, v);
        uint32_t j = 0, i = 0;
        for (uint32_t r = 0; !rc && r < n_rng; r++) {
            for (; i < cnt && m[i].pos < ranges[r][0]; i++) { /* kept as they are */
                o.meta[l][j] = m[i];
                o.acc[l][j] = m[i].attn;
                memcpy(o.k[l] + (size_t)j * hd, k + (size_t)i * hd, hd * sizeof(float));
                memcpy(o.v[l] + (size_t)j * hd, v + (size_t)i * hd, hd * sizeof(float));
                j++;
            }
            uint32_t i0 = i;
            while (i < cnt && m[i].pos <= ranges[r][1])
                i++;
            if (i > i0) {
                uint32_t g = rows_each < i - i0 ? rows_each : i - i0;
                rc = pool_groups(p, hd, i - i0, k + (size_t)i0 * hd, v + (size_t)i0 * hd, m + i0, g,
                                 level, &o, l, &j);
            }
        }
        for (; !rc && i < cnt; i++, j++) { /* after the last range */
            o.meta[l][j] = m[i];
            o.acc[l][j] = m[i].attn;
            memcpy(o.k[l] + (size_t)j * hd, k + (size_t)i * hd, hd * sizeof(float));
            memcpy(o.v[l] + (size_t)j * hd, v + (size_t)i * hd, hd * sizeof(float));
        }
        for (uint32_t q = 0; q < j; q++)
            o.meta[l][q].attn = 0.0f;
        o.n[l] = j;
        ev->rows_after += j;
        free(m);
        free(k);
        free(v);
        k = v = NULL;
        if (rc && rc != ERR_NOMEM)
            rc = err_set(e, ERR_INTERNAL, "policy: pooling lane %u failed (%d)", l, rc);
    }
    if (!rc && ev->lanes) {
        kv_rows_t rows = {.n = o.n,
                          .k = (const float *const *)o.k,
                          .v = (const float *const *)o.v,
                          .meta = (const kv_row_meta_t *const *)o.meta};
        /* the edit allocates the new rows before it frees the old ones; when that does not
         * fit under the hard limit, free the old rows first (nothing allocated), then insert
         * the new ones; if even that does not fit, the span is evicted, and said so */
        const uint32_t B = kv_block_rows(p->st);
        uint32_t most = 0;
        for (uint32_t l = 0; l < nl; l++)
            most = o.n[l] > most ? o.n[l] : most;
        size_t blk = kv_block_bytes(p->st, kv_store_config(p->st)->hot_type) +
                     (p->acc ? B * sizeof(float) : 0);
        size_t need = (size_t)nl * blk * (2 + (most + B - 1) / B) + 4096;
        if (pol_session_avail(p) < need) {
            uint32_t *zero = calloc(nl, sizeof *zero);
            kv_rows_t none = {.n = zero};
            rc = zero ? kv_span_replace(p->st, p->sid, p0, p1, &none, e) : ERR_NOMEM;
            free(zero);
            if (rc == ERR_NOMEM)
                err_set(e, rc, "policy: out of memory");
            if (!rc) {
                *changed = true;
                err_info_t e2;
                err_clear(&e2);
                rc = kv_span_replace(p->st, p->sid, p0, p1, &rows, &e2);
                if (rc == ERR_BUDGET) {
                    ev->action = POL_EVICT;
                    ev->method = POL_M_RECENCY;
                    ev->level = 0;
                    ev->rows_after = 0;
                    rc = 0;
                    memset(o.n, 0, nl * sizeof *o.n);
                } else if (rc && e) {
                    *e = e2;
                }
            }
        } else {
            rc = kv_span_replace(p->st, p->sid, p0, p1, &rows, e);
        }
        if (!rc) {
            *changed = true;
            if (p->acc)
                for (uint32_t l = 0; l < nl; l++)
                    if (o.n[l])
                        pol_acc_write(p, l, o.at[l], o.n[l], o.acc[l]);
        }
    }
    ev->bytes_after = pol_session_bytes(p);
    free(k);
    free(v);
    out_free(&o, nl);
    return rc;
}

int pol_pool_spans(pol_t *p, uint32_t i0, uint32_t i1, int reason, err_info_t *e)
{
    uint32_t n = i1 - i0 + 1;
    float(*rng)[2] = malloc(n * sizeof *rng);
    if (!rng)
        return err_set(e, ERR_NOMEM, "policy: out of memory");
    uint32_t m = 0;
    uint64_t tokens = 0;
    for (uint32_t i = i0; i <= i1; i++) {
        const pol_span_t *s = &p->spans[i];
        uint32_t lo = s->first > p->sinks ? s->first : p->sinks, hi = pol_span_end(s);
        if (lo > hi)
            continue;
        if (p->by_thought && m && i > i0 && !p->spans[i - 1].thought_end) {
            rng[m - 1][1] = (float)hi; /* unit=thought: a thought's sentences pool together */
        } else {
            rng[m][0] = (float)lo;
            rng[m][1] = (float)hi;
            m++;
        }
        tokens += s->tokens;
    }
    int rc = 0;
    if (m) {
        pol_event_t ev = {.action = POL_GIST,
                          .method = POL_M_POOLED,
                          .reason = (uint8_t)reason,
                          .level = 1,
                          .first = (uint32_t)rng[0][0],
                          .last = (uint32_t)rng[m - 1][1],
                          .tokens = tokens};
        bool changed = false;
        rc = pool_ranges(p, (const float(*)[2])rng, m, p->gist_rows, 1, &ev, &changed, e);
        if (!rc) {
            for (uint32_t i = i0; i <= i1; i++)
                p->spans[i].level = changed ? 1 : LEVEL_GONE;
            if (changed)
                pol_emit_event(p, &ev);
        }
    }
    free(rng);
    return rc;
}

/* ------------------------------------------------------------------ merges */

/* A run of spans [i0, i1] at one level, to merge into one span a level up. */
typedef struct pol_mrun {
    uint32_t i0, i1;
} pol_mrun_t;

/* The positions a run of spans covers (sinks left out). */
static void run_range(const pol_t *p, const pol_mrun_t *r, float out[2])
{
    const pol_span_t *a = &p->spans[r->i0];
    out[0] = (float)(a->first > p->sinks ? a->first : p->sinks);
    out[1] = (float)pol_span_end(&p->spans[r->i1]);
}

/* Merges each run (ordered, disjoint; every span at level L) into one span at level L+1, in
 * one edit and one event. */
static int merge_runs(pol_t *p, const pol_mrun_t *runs, uint32_t n_runs, int reason, err_info_t *e)
{
    float(*rng)[2] = malloc(n_runs * sizeof *rng);
    if (!rng)
        return err_set(e, ERR_NOMEM, "policy: out of memory");
    const uint8_t level = (uint8_t)(p->spans[runs[0].i0].level + 1);
    uint64_t tokens = 0;
    for (uint32_t r = 0; r < n_runs; r++) {
        run_range(p, &runs[r], rng[r]);
        for (uint32_t i = runs[r].i0; i <= runs[r].i1; i++)
            tokens += p->spans[i].tokens;
    }
    const uint32_t rows = p->gist_mode == POL_GIST_LEARNED ? p->model.n_gist : p->gist_rows;
    pol_event_t ev = {.action = POL_MERGE,
                      .method = POL_M_POOLED,
                      .reason = (uint8_t)reason,
                      .level = level,
                      .first = (uint32_t)rng[0][0],
                      .last = (uint32_t)rng[n_runs - 1][1],
                      .tokens = tokens};
    bool changed = false;
    int rc = pool_ranges(p, (const float(*)[2])rng, n_runs, rows, level, &ev, &changed, e);
    free(rng);
    if (rc)
        return rc;
    for (uint32_t r = n_runs; r-- > 0;) { /* last first: earlier indices stay put */
        const uint32_t i0 = runs[r].i0, i1 = runs[r].i1;
        const pol_span_t *a = &p->spans[i0], *b = &p->spans[i1];
        uint64_t t = 0;
        for (uint32_t i = i0; i <= i1; i++)
            t += p->spans[i].tokens;
        pol_span_t m = {.first = a->first,
                        .last = pol_span_end(b),
                        .gfirst = POL_NONE,
                        .glast = 0,
                        .tokens = (uint32_t)t,
                        .level = changed ? level : LEVEL_GONE,
                        .thought_end = b->thought_end};
        p->spans[i0] = m;
        memmove(&p->spans[i0 + 1], &p->spans[i1 + 1], (p->n_spans - i1 - 1) * sizeof *p->spans);
        p->n_spans -= i1 - i0;
    }
    if (changed)
        pol_emit_event(p, &ev);
    return 0;
}

/* Rows lane l must lose to free `blocks` of its blocks (its rows are packed: the rows of its
 * last, partial block, then whole blocks). */
static uint32_t rows_to_free(uint32_t n, uint32_t B, uint32_t blocks)
{
    return n ? (n - 1) % B + 1 + (blocks > 1 ? (blocks - 1) * B : 0) : UINT32_MAX;
}

/* How many of the ranges (ordered, oldest first), each to be pooled into at most `each` rows
 * in every lane, to edit at once: the fewest that free `blocks` blocks in every lane, or all
 * of them; 0 when even all of them free no block in any lane (an edit that frees nothing
 * would only coarsen what is kept). */
static int ranges_to_free(pol_t *p, const float (*rng)[2], uint32_t n_rng, uint32_t each,
                          uint32_t blocks, uint32_t *take, err_info_t *e)
{
    const uint32_t nl = kv_lane_count(p->st), B = kv_block_rows(p->st);
    uint32_t most = 0;
    bool frees = false;
    for (uint32_t l = 0; l < nl; l++) {
        uint32_t n;
        int rc = pol_lane_meta(p, l, &n, e);
        if (rc)
            return rc;
        uint32_t gone = 0, r = 0;
        const uint32_t want = rows_to_free(n, B, blocks), one = rows_to_free(n, B, 1);
        for (; r < n_rng && gone < want; r++) {
            uint32_t a = pol_lower_pos(p->meta, n, rng[r][0]), b = a;
            while (b < n && p->meta[b].pos <= rng[r][1])
                b++;
            gone += b - a > each ? b - a - each : 0;
        }
        frees |= gone >= one;
        most = r > most ? r : most;
    }
    *take = frees ? most : 0;
    return 0;
}

/* ------------------------------------------------------------------ eviction */

typedef struct scored {
    float score;
    float pos;
    uint32_t idx;
} scored_t;

static int cmp_scored(const void *x, const void *y)
{
    const scored_t *a = x, *b = y;
    if (a->score != b->score)
        return a->score < b->score ? -1 : 1;
    if (a->pos != b->pos)
        return a->pos < b->pos ? -1 : 1;
    return 0;
}

static int cmp_u32(const void *x, const void *y)
{
    uint32_t a = *(const uint32_t *)x, b = *(const uint32_t *)y;
    return a < b ? -1 : a > b;
}

static float row_score(const pol_t *p, const kv_row_meta_t *m, uint32_t t)
{
    switch (p->evict) {
    case POL_EV_H2O:
    case POL_EV_TOVA:
        return m->attn;
    case POL_EV_TRIM:
        return m->logbeta * ((float)t - m->pos);
    default:
        return m->pos;
    }
}

static bool row_pinned(const pol_t *p, const kv_row_meta_t *m, uint32_t len)
{
    if (m->pos < (float)p->sinks || (p->recent_eff && m->pos >= (float)len - (float)p->recent_eff))
        return true;
    if (p->n_holds && pol_held(p, m->first, m->last, len))
        return true;
    if (p->spare_open && m->pos >= (float)p->open_start)
        return true;
    if (p->spare_gists && m->kind != KV_KIND_RAW && m->pos < (float)p->open_start)
        return true;
    for (uint32_t i = 0; i < p->n_pins; i++)
        if (m->pos >= (float)p->pins[i][0] && m->pos <= (float)p->pins[i][1])
            return true;
    return false;
}

static int evict_method(int evict)
{
    switch (evict) {
    case POL_EV_WINDOW:
        return POL_M_WINDOW;
    case POL_EV_H2O:
        return POL_M_H2O;
    case POL_EV_TOVA:
        return POL_M_TOVA;
    case POL_EV_TRIM:
        return POL_M_TRIM;
    default:
        return POL_M_RECENCY;
    }
}

/* Evicts from every lane the lowest-scored unpinned rows: enough to free `blocks` blocks of
 * the lane (its rows are packed, so that is the rows in its last partial block, then whole
 * blocks). */
static int evict_step(pol_t *p, uint32_t blocks, int reason, bool *progress, err_info_t *e)
{
    const uint32_t nl = kv_lane_count(p->st), nh = pol_n_head_kv(p), B = kv_block_rows(p->st);
    const uint32_t len = pol_transcript_len(p);
    pol_event_t ev = {.action = POL_EVICT,
                      .method = (uint8_t)evict_method(p->evict),
                      .reason = (uint8_t)reason,
                      .first = UINT32_MAX,
                      .bytes_before = pol_session_bytes(p)};
    scored_t *sc = NULL;
    uint32_t *idx = NULL, cap = 0;
    int rc = 0;
    for (uint32_t l = 0; l < nl; l++) {
        uint32_t n;
        rc = pol_lane_meta(p, l, &n, e);
        if (rc)
            break;
        if (n == 0)
            continue;
        if (n > cap) {
            scored_t *t = realloc(sc, n * sizeof *t);
            uint32_t *u = t ? realloc(idx, n * sizeof *u) : NULL;
            if (t)
                sc = t;
            if (!t || !u) {
                rc = err_set(e, ERR_NOMEM, "policy: out of memory scoring %u rows", n);
                break;
            }
            idx = u;
            cap = n;
        }
        uint32_t ne = 0;
        for (uint32_t i = 0; i < n; i++)
            if (!row_pinned(p, &p->meta[i], len))
                sc[ne++] = (scored_t){row_score(p, &p->meta[i], len), p->meta[i].pos, i};
        uint32_t k = rows_to_free(n, B, blocks);
        k = k < ne ? k : ne;
        /* rows that free no block would go for nothing, unless a reservation needs the room
         * in the lane's last block */
        if (k == 0 || (k < rows_to_free(n, B, 1) && reason != POL_R_BUDGET))
            continue;
        qsort(sc, ne, sizeof *sc, cmp_scored);
        for (uint32_t i = 0; i < k; i++) {
            idx[i] = sc[i].idx;
            uint32_t pos = (uint32_t)p->meta[sc[i].idx].pos;
            ev.first = pos < ev.first ? pos : ev.first;
            ev.last = pos > ev.last ? pos : ev.last;
        }
        qsort(idx, k, sizeof *idx, cmp_u32);
        rc = kv_lane_evict(p->st, p->sid, l / nh, l % nh, idx, k, e);
        if (rc)
            break;
        ev.lanes++;
        ev.rows_before += k;
    }
    free(sc);
    free(idx);
    if (ev.lanes) {
        *progress = true;
        ev.bytes_after = pol_session_bytes(p);
        ev.tokens = ev.rows_before / nl;
        pol_emit_event(p, &ev);
    }
    return rc;
}

/* ------------------------------------------------------------------ the schedule */

static bool span_free(const pol_t *p, const pol_span_t *s, uint32_t len)
{
    uint32_t end = pol_span_end(s);
    if (s->flags & SPAN_BUSY || end < p->sinks)
        return false;
    if (p->by_thought && (uint32_t)(s - p->spans) >= p->done_spans)
        return false; /* a sentence of the open thought */
    if (p->recent_eff && (uint64_t)end + p->recent_eff >= len)
        return false;
    return !pol_pinned(p, s->first, end) && !pol_held(p, s->first, end, len);
}

/* The recent window: `recent` positions, or recent_frac of the rows a lane can hold under
 * the session's soft watermark (its hard limit when it has none), whichever is more. */
static uint32_t effective_recent(pol_t *p)
{
    /* the walk (kv_session_stats, not the O(1) kv_session_bytes): the window is sized from
     * the bytes outside blocks; once a step, and only under a limit (a session without one
     * has no window to size, and its walk over every row cost 2% of a decode step 8,192
     * tokens deep) */
    size_t hard = 0, soft = 0;
    kv_stats_t s;
    if (p->recent_frac <= 0.0f || kv_session_limits(p->st, p->sid, &hard, &soft) ||
        (!hard && !soft) || kv_session_stats(p->st, p->sid, &s))
        return p->recent;
    size_t limit = soft ? soft : hard;
    /* Session limits may add up to more than the global one: the window is then sized from
     * half the session's even share of the global limit, or the sessions' pins alone could
     * fill the store and leave its pressure nothing to free. Half: shares shrink as sessions
     * open, and the rest of a share holds sinks, gists and blocks being filled (sized from
     * the whole share, about 1 request in 3,000 of tests/test_daemon_load.c was refused). */
    const size_t share = kv_store_share(p->st);
    if (share && share / 2 < limit)
        limit = share / 2;
    const size_t B = kv_block_rows(p->st), nl = kv_lane_count(p->st);
    size_t blk = kv_block_bytes(p->st, kv_store_config(p->st)->hot_type);
    size_t acc = p->acc ? B * sizeof(float) : 0;
    size_t fixed = s.bytes - s.block_bytes - (size_t)s.blocks * acc;
    if (limit <= fixed)
        return p->recent;
    double rows = (double)(limit - fixed) / (double)(nl * (blk + acc)) * (double)B;
    uint32_t r = (uint32_t)(p->recent_frac * rows);
    return r > p->recent ? r : p->recent;
}

int pol_step(pol_t *p, size_t want, int reason, bool *progress, err_info_t *e)
{
    *progress = false;
    p->recent_eff = effective_recent(p);
    if (p->by_thought) { /* the spans of finished thoughts, and where the open one starts */
        uint32_t d = p->n_spans;
        while (d > 0 && !p->spans[d - 1].thought_end)
            d--;
        p->done_spans = d;
        p->open_start = d ? pol_span_end(&p->spans[d - 1]) + 1 : 0;
    }
    const uint32_t len = pol_transcript_len(p), nl = kv_lane_count(p->st);
    const uint32_t B = kv_block_rows(p->st);
    size_t blk = kv_block_bytes(p->st, kv_store_config(p->st)->hot_type) * nl;
    uint32_t blocks = (uint32_t)((want + blk - 1) / (blk ? blk : 1));
    blocks = blocks ? blocks : 1;

    /* 1. pooled gists of the oldest closed raw sentences */
    if (p->gist_mode != POL_GIST_NONE && p->model.rope.rotate) {
        uint32_t i = 0;
        while (i < p->n_spans && !(p->spans[i].level == 0 && span_free(p, &p->spans[i], len)))
            i++;
        if (i < p->n_spans) {
            uint32_t j = i, tokens = p->spans[i].tokens, goal = blocks * B;
            goal = goal > p->min_gist ? goal : p->min_gist;
            while (tokens < goal && j + 1 < p->n_spans && p->spans[j + 1].level == 0 &&
                   span_free(p, &p->spans[j + 1], len))
                tokens += p->spans[++j].tokens;
            /* a shorter run would free too little to pay for its own new rows */
            if (tokens < p->min_gist)
                goto merges;
            /* rows some lanes already lost (evictions) do not free them again: take more
             * sentences until the step frees a block (or skip to the merges) */
            uint32_t n_free = j + 1 - i, take = 0;
            while (i + n_free < p->n_spans && p->spans[i + n_free].level == 0 &&
                   span_free(p, &p->spans[i + n_free], len))
                n_free++;
            float(*rng)[2] = malloc(n_free * sizeof *rng);
            if (!rng)
                return err_set(e, ERR_NOMEM, "policy: out of memory");
            for (uint32_t q = 0; q < n_free; q++) {
                const pol_span_t *sp = &p->spans[i + q];
                rng[q][0] = (float)(sp->first > p->sinks ? sp->first : p->sinks);
                rng[q][1] = (float)pol_span_end(sp);
            }
            int rc =
                ranges_to_free(p, (const float(*)[2])rng, n_free, p->gist_rows, blocks, &take, e);
            free(rng);
            if (rc)
                return rc;
            if (take == 0)
                goto merges;
            j = i + take - 1 > j ? i + take - 1 : j;
            while (p->by_thought && !p->spans[j].thought_end && j + 1 < p->done_spans &&
                   p->spans[j + 1].level == 0)
                j++; /* unit=thought: whole thoughts */
            err_info_t e2;
            err_clear(&e2);
            rc = pol_pool_spans(p, i, j, reason, &e2);
            if (rc == 0) {
                *progress = true;
                return 0;
            }
            if (rc != ERR_BUDGET) {
                if (e)
                    *e = e2;
                return rc;
            }
        }
    }

merges:
    /* 2. merges of the oldest runs of gists, lowest level first: as many runs at once as free
     * the blocks wanted */
    if (p->merge_k >= 2 && p->gist_mode != POL_GIST_NONE && p->model.rope.rotate) {
        pol_mrun_t *runs = malloc(((p->n_spans / p->merge_k) + 1) * sizeof *runs);
        if (!runs)
            return err_set(e, ERR_NOMEM, "policy: out of memory");
        for (uint32_t L = 1; L < p->levels; L++) {
            uint32_t run = 0, thoughts = 0, n_runs = 0, take = 0;
            for (uint32_t i = 0; i < p->n_spans; i++) {
                const pol_span_t *s = &p->spans[i];
                bool ok = s->level == L && span_free(p, s, len);
                run = ok ? run + 1 : 0;
                thoughts = ok ? thoughts + s->thought_end : 0;
                if (p->by_thought) {
                    /* unit=thought: merge_k whole thoughts */
                    if (!s->thought_end || thoughts < p->merge_k)
                        continue;
                } else {
                    if (ok && s->thought_end && run < p->merge_k)
                        run = 0; /* a merge does not cross a thought boundary */
                    if (run < p->merge_k)
                        continue;
                }
                runs[n_runs++] = (pol_mrun_t){i + 1 - run, i};
                run = thoughts = 0;
            }
            if (n_runs == 0)
                continue;
            float(*rng)[2] = malloc(n_runs * sizeof *rng);
            int rc = rng ? 0 : err_set(e, ERR_NOMEM, "policy: out of memory");
            for (uint32_t r = 0; !rc && r < n_runs; r++)
                run_range(p, &runs[r], rng[r]);
            const uint32_t each = p->gist_mode == POL_GIST_LEARNED ? p->model.n_gist : p->gist_rows;
            if (!rc)
                rc = ranges_to_free(p, (const float(*)[2])rng, n_runs, each, blocks, &take, e);
            free(rng);
            if (rc) {
                free(runs);
                return rc;
            }
            if (take == 0)
                continue;
            err_info_t e2;
            err_clear(&e2);
            rc = merge_runs(p, runs, take, reason, &e2);
            if (rc != ERR_BUDGET) {
                free(runs);
                if (rc && e)
                    *e = e2;
                *progress = rc == 0;
                return rc;
            }
            break;
        }
        free(runs);
    }

    /* 3. eviction by score (unit=thought: from finished thoughts while they have rows) */
    if (p->evict == POL_EV_NONE)
        return 0;
    if (p->by_thought) {
        /* the raw rows of finished thoughts first, then the open thought's, then finished
         * thoughts' gists: a gist is what is left of a whole thought, and what the next
         * thoughts read (train/README.md, "Gists outlast the open thought") */
        int rc = 0;
        for (int pass = 0; pass < 2 && !rc && !*progress; pass++) {
            p->spare_open = pass == 0;
            p->spare_gists = true;
            rc = evict_step(p, blocks, reason, progress, e);
            p->spare_open = p->spare_gists = false;
        }
        if (rc || *progress)
            return rc;
    }
    return evict_step(p, blocks, reason, progress, e);
}
