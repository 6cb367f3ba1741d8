/*
 * kvstore/ops.c — the verbs on a session's rows: reserve and commit (appending), reading
 * lanes and the transcript, and the compaction verbs built on the lane edit (span replace,
 * evict, demote), each all-or-nothing across the lanes it touches.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "kvstore/kv_impl.h"

static kv_session_t *get_session(const kv_store_t *st, uint32_t sid, const char *verb, bool editing,
                                 err_info_t *e, int *rc)
{
    kv_session_t *s = kv_session_find(st, sid);
    if (!s) {
        *rc = err_set(e, ERR_NOTFOUND, "%s: no session %u", verb, sid);
        return NULL;
    }
    if (editing && s->n_reserved) {
        *rc = err_set(e, ERR_BUSY, "%s: session %u has a reservation pending", verb, sid);
        return NULL;
    }
    *rc = 0;
    return s;
}

/* Free rows at the end of a lane's last block that new hot rows may take. */
static uint32_t tail_room(const kv_store_t *st, const kv_lane_t *ln)
{
    if (!ln->n_blk)
        return 0;
    const kv_block_t *b = ln->b[ln->n_blk - 1].blk;
    if (b->type != st->cfg.hot_type || b->refs != 1)
        return 0;
    return st->B - b->n;
}

/* ---- reserve / commit ---- */

int kv_reserve(kv_store_t *st, uint32_t sid, uint32_t n, err_info_t *e)
{
    int rc;
    kv_session_t *s = get_session(st, sid, "reserve", true, e, &rc);
    if (!s)
        return rc;
    if (n == 0)
        return err_set(e, ERR_INVAL, "reserve: 0 rows");
    if ((uint64_t)s->tr.len + n >= (1u << 24))
        return err_set(e, ERR_RANGE, "reserve: positions past 2^24 are not exact as f32");

    uint32_t hot = st->cfg.hot_type, nl = st->n_lane;
    size_t need = kv_tr_need(&s->tr, n);
    for (uint32_t l = 0; l < nl; l++) {
        const kv_lane_t *ln = &s->lanes[l];
        uint32_t room = tail_room(st, ln);
        uint32_t k = n > room ? (n - room + st->B - 1) / st->B : 0;
        need += kv_carve_need(st, ln, hot, k, kv_run_slots(st, s, ln, k)) +
                k * (s->attn_acc ? kv_acc_bytes(st) : 0);
        if (ln->n_blk + k > ln->cap) {
            uint32_t cap = 2 * ln->cap > ln->n_blk + k ? 2 * ln->cap : ln->n_blk + k;
            need += kv_charge(cap * sizeof(kv_bref_t));
        }
    }
    char what[96];
    snprintf(what, sizeof what, "reserving %u rows", n);
    rc = kv_budget_check(st, s, need, need, what, e);
    if (rc)
        return rc;

    /* per lane: its block array, capacity, blocks got, and the open run before (restored
     * with the slots carved when the reservation is undone) */
    kv_bref_t **arr = kv_scratch_alloc(st, nl * (2 * sizeof *arr + sizeof(uint32_t) * 2));
    if (!arr)
        return err_set(e, ERR_NOMEM, "%s: out of memory", what);
    kv_run_t **open = (kv_run_t **)(arr + nl);
    uint32_t *caps = (uint32_t *)(open + nl), *got = caps + nl;
    uint32_t l = 0;
    bool failed = false;
    for (; l < nl && !failed; l++) {
        kv_lane_t *ln = &s->lanes[l];
        uint32_t room = tail_room(st, ln);
        uint32_t k = n > room ? (n - room + st->B - 1) / st->B : 0;
        uint32_t slots = kv_run_slots(st, s, ln, k);
        arr[l] = ln->b;
        caps[l] = ln->cap;
        open[l] = ln->open;
        if (ln->n_blk + k > ln->cap) {
            caps[l] = 2 * ln->cap > ln->n_blk + k ? 2 * ln->cap : ln->n_blk + k;
            arr[l] = kv_mem_alloc(st, s, caps[l] * sizeof **arr);
            if (!arr[l]) {
                failed = true;
                break;
            }
        }
        for (got[l] = 0; got[l] < k; got[l]++) {
            kv_bref_t *r = &arr[l][ln->n_blk + got[l]];
            r->blk = kv_block_carve(st, s, ln, hot, slots);
            r->acc = NULL;
            if (!r->blk)
                break;
            if (s->attn_acc) {
                r->acc = kv_mem_alloc(st, s, st->B * sizeof(float));
                if (!r->acc) {
                    kv_bref_release(st, s, r);
                    break;
                }
                memset(r->acc, 0, st->B * sizeof(float));
            }
        }
        failed = got[l] < k; /* the loop's l++ takes this lane into the undo below */
    }
    if (!failed && kv_tr_reserve(st, s, n) == 0) {
        for (l = 0; l < nl; l++) {
            kv_lane_t *ln = &s->lanes[l];
            if (arr[l] != ln->b) {
                if (ln->n_blk)
                    memcpy(arr[l], ln->b, ln->n_blk * sizeof *ln->b);
                if (ln->b)
                    kv_mem_free(st, s, ln->b, ln->cap * sizeof *ln->b);
                ln->b = arr[l];
                ln->cap = caps[l];
            }
            ln->n_pend = got[l];
        }
        s->n_reserved = n;
        free(arr);
        return 0;
    }
    /* undo lanes [0, l) (the last one possibly partly done; one whose array could not be
     * had is not among them) */
    for (uint32_t u = 0; u < l; u++) {
        kv_lane_t *ln = &s->lanes[u];
        if (!arr[u])
            continue;
        for (uint32_t k = got[u]; k-- > 0;) /* last first: the run's slots come back */
            kv_bref_release(st, s, &arr[u][ln->n_blk + k]);
        if (arr[u] != ln->b)
            kv_mem_free(st, s, arr[u], caps[u] * sizeof **arr);
        kv_lane_set_open(ln, open[u]);
    }
    free(arr);
    return err_set(e, ERR_NOMEM, "%s: out of memory", what);
}

static void release_pending(kv_store_t *st, kv_session_t *s)
{
    for (uint32_t l = 0; l < st->n_lane; l++) {
        kv_lane_t *ln = &s->lanes[l];
        for (uint32_t k = 0; k < ln->n_pend; k++)
            kv_bref_release(st, s, &ln->b[ln->n_blk + k]);
        ln->n_pend = 0;
    }
    kv_tr_release_unused(st, s);
    s->n_reserved = 0;
}

void kv_reserve_cancel(kv_store_t *st, uint32_t sid)
{
    kv_session_t *s = kv_session_find(st, sid);
    if (s && s->n_reserved)
        release_pending(st, s);
}

int kv_commit(kv_store_t *st, uint32_t sid, const kv_append_t *a, err_info_t *e)
{
    int rc;
    kv_session_t *s = get_session(st, sid, "commit", false, e, &rc);
    if (!s)
        return rc;
    if (!s->n_reserved)
        return err_set(e, ERR_INVAL, "commit: session %u has no reservation", sid);
    if (!a || a->n > s->n_reserved)
        return err_set(e, ERR_INVAL, "commit: %u rows, %u reserved", a ? a->n : 0, s->n_reserved);
    if (a->n && (!a->tokens || !a->k || !a->v))
        return err_set(e, ERR_INVAL, "commit: tokens, k and v are required");
    for (uint32_t l = 0; l < st->n_lane && a->n; l++)
        if (!a->k[l] || !a->v[l] || (a->logbeta && !a->logbeta[l]) ||
            (a->attn_acc && !a->attn_acc[l]))
            return err_set(e, ERR_INVAL, "commit: missing rows for lane %u", l);

    size_t hd = st->cfg.head_dim;
    uint32_t pos0 = s->tr.len;
    for (uint32_t l = 0; l < st->n_lane && a->n; l++) {
        kv_lane_t *ln = &s->lanes[l];
        uint32_t j = 0, room = tail_room(st, ln);
        kv_bref_t *r = ln->n_blk ? &ln->b[ln->n_blk - 1] : NULL;
        while (j < a->n) {
            if (room == 0) { /* the next reserved block joins the lane */
                r = &ln->b[ln->n_blk++];
                ln->n_pend--;
                room = st->B;
            }
            kv_row_meta_t m = {.pos = (float)(pos0 + j),
                               .mass = 1.0f,
                               .first = pos0 + j,
                               .last = pos0 + j,
                               .shift = s->shift,
                               .kind = KV_KIND_RAW};
            if (a->logbeta)
                m.logbeta = a->logbeta[l][j];
            uint32_t i = r->blk->n++;
            kv_row_put(st, r->blk, i, a->k[l] + j * hd, a->v[l] + j * hd, &m);
            if (r->acc)
                r->acc[i] = a->attn_acc ? a->attn_acc[l][j] : 0.0f;
            room--;
            j++;
        }
        ln->n_rows += a->n;
    }
    kv_tr_append(&s->tr, a->tokens, a->n, (uint16_t)st->n_lane);
    release_pending(st, s);
    return 0;
}

/* ---- reading ---- */

int kv_lane_size(const kv_store_t *st, uint32_t sid, uint32_t layer, uint32_t head, uint32_t *rows,
                 uint32_t *chunks)
{
    kv_session_t *s = kv_session_find(st, sid);
    if (!s)
        return ERR_NOTFOUND;
    const kv_lane_t *ln = kv_lane_at(st, s, layer, head);
    if (!ln)
        return ERR_RANGE;
    if (rows)
        *rows = ln->n_rows;
    if (chunks)
        *chunks = ln->n_blk;
    return 0;
}

int kv_lane_view(const kv_store_t *st, uint32_t sid, uint32_t layer, uint32_t head,
                 kv_chunk_t *chunks, uint32_t cap, uint32_t *n_chunks)
{
    kv_session_t *s = kv_session_find(st, sid);
    if (!s)
        return ERR_NOTFOUND;
    const kv_lane_t *ln = kv_lane_at(st, s, layer, head);
    if (!ln)
        return ERR_RANGE;
    *n_chunks = ln->n_blk;
    if (cap < ln->n_blk)
        return ERR_RANGE;
    for (uint32_t i = 0; i < ln->n_blk; i++) {
        const kv_block_t *b = ln->b[i].blk;
        chunks[i] = (kv_chunk_t){.n = b->n,
                                 .type = b->type,
                                 .k = b->k,
                                 .v = b->v,
                                 .bias = b->bias,
                                 .attn_acc = ln->b[i].acc};
    }
    return 0;
}

int kv_lane_read(const kv_store_t *st, uint32_t sid, uint32_t layer, uint32_t head, uint32_t row0,
                 uint32_t n, kv_row_meta_t *meta, float *k, float *v)
{
    kv_session_t *s = kv_session_find(st, sid);
    if (!s)
        return ERR_NOTFOUND;
    const kv_lane_t *ln = kv_lane_at(st, s, layer, head);
    if (!ln)
        return ERR_RANGE;
    if ((uint64_t)row0 + n > ln->n_rows)
        return ERR_RANGE;
    size_t hd = st->cfg.head_dim;
    uint32_t bi = 0, base = 0;
    for (uint32_t j = 0; j < n; j++) {
        uint32_t r = row0 + j;
        while (r >= base + ln->b[bi].blk->n)
            base += ln->b[bi++].blk->n;
        const kv_block_t *b = ln->b[bi].blk;
        uint32_t i = r - base;
        size_t rb = st->row_bytes[kv_tier(b->type)];
        if (meta) {
            kv_row_get_meta(b, i, &meta[j]);
            meta[j].attn = ln->b[bi].acc ? ln->b[bi].acc[i] : 0.0f;
        }
        if (k)
            dt_to_f32(b->type, b->k + i * rb, k + j * hd, hd);
        if (v)
            dt_to_f32(b->type, b->v + i * rb, v + j * hd, hd);
    }
    return 0;
}

int kv_session_next_mpos(const kv_store_t *st, uint32_t sid, float *mpos)
{
    kv_session_t *s = kv_session_find(st, sid);
    if (!s)
        return ERR_NOTFOUND;
    *mpos = (float)s->tr.len - s->shift;
    return 0;
}

int kv_transcript_len(const kv_store_t *st, uint32_t sid, uint32_t *len)
{
    kv_session_t *s = kv_session_find(st, sid);
    if (!s)
        return ERR_NOTFOUND;
    *len = s->tr.len;
    return 0;
}

int kv_transcript_read(const kv_store_t *st, uint32_t sid, uint32_t pos0, uint32_t n,
                       uint32_t *tokens, uint16_t *live)
{
    kv_session_t *s = kv_session_find(st, sid);
    if (!s)
        return ERR_NOTFOUND;
    if ((uint64_t)pos0 + n > s->tr.len)
        return ERR_RANGE;
    return kv_tr_read(st, s, pos0, n, tokens, live, NULL);
}

int kv_transcript_spill(kv_store_t *st, uint32_t sid, err_info_t *e)
{
    int rc;
    kv_session_t *s = get_session(st, sid, "spill", false, e, &rc);
    if (!s)
        return rc;
    return kv_tr_spill(st, s, true, e);
}

/* ---- edits over several lanes ---- */

/* Runs the edits (one per lane of `lanes`, NULL entries skipped) all or none, with the
 * spilled transcript pages they need back (fault, may be NULL); then spills the pages whose
 * last raw row they removed. */
static int run_edits(kv_store_t *st, kv_session_t *s, kv_edit_t *eds, uint32_t n,
                     kv_tr_fault_t *fault, const char *what, err_info_t *e)
{
    size_t need = 0;
    uint32_t planned = 0;
    int rc = 0;
    for (; planned < n; planned++) {
        size_t k;
        rc = kv_edit_plan(st, s, &s->lanes[planned], &eds[planned], &k);
        if (rc)
            break;
        need += k;
    }
    if (fault)
        need += kv_tr_fault_need(fault);
    if (!rc)
        rc = kv_budget_check(st, s, need, need, what, e);
    else
        err_set(e, rc, "%s: out of memory", what);
    for (uint32_t l = 0; l < planned && !rc; l++) {
        if (kv_edit_prepare(st, s, &s->lanes[l], &eds[l]) != 0)
            rc = err_set(e, ERR_NOMEM, "%s: out of memory", what);
    }
    if (!rc && fault && (rc = kv_tr_fault_prepare(st, s, fault, e)) != 0)
        err_prefix(e, "%s: ", what);
    if (rc) {
        for (uint32_t l = 0; l < planned; l++)
            kv_edit_abort(st, s, &eds[l]);
        return rc;
    }
    if (fault)
        kv_tr_fault_install(s, fault);
    for (uint32_t l = 0; l < n; l++) {
        const bool edited = eds[l].active;
        kv_edit_commit(st, s, &s->lanes[l], &eds[l]);
        if (edited)
            kv_lane_settle(st, s, &s->lanes[l]);
    }
    kv_tr_spill(st, s, false, NULL); /* a failure is kept for the budget's refusal */
    return 0;
}

/* The spilled transcript pages that the raw rows among `rows` fall on (sorted, unique), in
 * f (pg and idx in one scratch allocation the caller frees: f->pg). */
static int fault_plan(kv_store_t *st, const kv_session_t *s, const kv_rows_t *rows,
                      kv_tr_fault_t *f)
{
    *f = (kv_tr_fault_t){0};
    const kv_transcript_t *tr = &s->tr;
    if (tr->n_mem == tr->n_pages)
        return 0;
    uint8_t *want = kv_scratch_alloc(st, tr->n_pages);
    if (!want)
        return ERR_NOMEM;
    uint32_t n = 0;
    for (uint32_t l = 0; l < st->n_lane; l++)
        for (uint32_t j = 0; j < rows->n[l]; j++) {
            const kv_row_meta_t *m = &rows->meta[l][j];
            uint32_t i = (uint32_t)m->pos / KV_TPAGE;
            if (m->kind == KV_KIND_RAW && !tr->pages[i].mem && !want[i]) {
                want[i] = 1;
                n++;
            }
        }
    if (n) {
        f->pg = kv_scratch_alloc(st, n * (sizeof *f->pg + sizeof *f->idx));
        if (!f->pg) {
            free(want);
            return ERR_NOMEM;
        }
        f->idx = (uint32_t *)(f->pg + n);
        for (uint32_t i = 0; i < tr->n_pages; i++)
            if (want[i])
                f->idx[f->n++] = i;
    }
    free(want);
    return 0;
}

/* First row whose position is >= p (> p when strict). */
static uint32_t lane_find(const kv_lane_t *ln, float p, bool strict)
{
    uint32_t base = 0;
    for (uint32_t i = 0; i < ln->n_blk; i++) {
        const kv_block_t *b = ln->b[i].blk;
        float last = b->pos[b->n - 1];
        if (strict ? last <= p : last < p) {
            base += b->n;
            continue;
        }
        for (uint32_t j = 0; j < b->n; j++)
            if (strict ? b->pos[j] > p : b->pos[j] >= p)
                return base + j;
    }
    return ln->n_rows;
}

static const kv_block_t *lane_row(const kv_lane_t *ln, uint32_t r, uint32_t *slot,
                                  const kv_bref_t **ref)
{
    for (uint32_t i = 0; i < ln->n_blk; i++) {
        if (r < ln->b[i].blk->n) {
            *slot = r;
            if (ref)
                *ref = &ln->b[i];
            return ln->b[i].blk;
        }
        r -= ln->b[i].blk->n;
    }
    return NULL;
}

static float row_pos(const kv_lane_t *ln, uint32_t r)
{
    uint32_t i;
    const kv_block_t *b = lane_row(ln, r, &i, NULL);
    return b->pos[i];
}

static int check_rows(const kv_store_t *st, const kv_session_t *s, uint32_t l,
                      const kv_row_meta_t *m, uint32_t n, float lo, float hi, err_info_t *e)
{
    for (uint32_t j = 0; j < n; j++) {
        const kv_row_meta_t *r = &m[j];
        if (!isfinite(r->pos) || r->pos < 0.0f || r->pos >= (float)s->tr.len)
            return err_set(e, ERR_INVAL, "lane %u row %u: position %g outside [0, %u)", l, j,
                           r->pos, s->tr.len);
        if (!(r->mass > 0.0f) || !isfinite(r->mass))
            return err_set(e, ERR_INVAL, "lane %u row %u: mass %g is not > 0", l, j, r->mass);
        if (r->first > r->last || r->last >= s->tr.len)
            return err_set(e, ERR_INVAL, "lane %u row %u: span [%u, %u] outside [0, %u)", l, j,
                           r->first, r->last, s->tr.len);
        if (r->kind >= KV_N_KINDS)
            return err_set(e, ERR_INVAL, "lane %u row %u: kind %u", l, j, r->kind);
        if (r->kind == KV_KIND_RAW && (r->pos != floorf(r->pos) || r->mass != 1.0f ||
                                       r->first != (uint32_t)r->pos || r->last != r->first))
            return err_set(e, ERR_INVAL,
                           "lane %u row %u: a raw row needs an integral position, mass 1 "
                           "and span [pos, pos]",
                           l, j);
        float prev = j ? m[j - 1].pos : lo;
        if (r->pos < prev || r->pos > hi)
            return err_set(e, ERR_INVAL,
                           "lane %u row %u: position %g breaks the lane's order (must lie in "
                           "[%g, %g] after the previous row)",
                           l, j, r->pos, lo, hi);
    }
    return 0;
}

int kv_span_replace(kv_store_t *st, uint32_t sid, float p0, float p1, const kv_rows_t *rows,
                    err_info_t *e)
{
    int rc;
    kv_session_t *s = get_session(st, sid, "span replace", true, e, &rc);
    if (!s)
        return rc;
    if (!(p0 <= p1) || !rows || !rows->n)
        return err_set(e, ERR_INVAL, "span replace: bad span [%g, %g] or no rows", p0, p1);
    uint32_t nl = st->n_lane;
    kv_edit_t *eds = kv_scratch_alloc(st, nl * (sizeof *eds + sizeof(kv_ins_t)));
    if (!eds)
        return err_set(e, ERR_NOMEM, "span replace: out of memory");
    kv_ins_t *ins = (kv_ins_t *)(eds + nl);
    for (uint32_t l = 0; l < nl; l++) {
        const kv_lane_t *ln = &s->lanes[l];
        uint32_t i0 = lane_find(ln, p0, false), i1 = lane_find(ln, p1, true), n = rows->n[l];
        eds[l] = (kv_edit_t){.del_lo = i0, .del_hi = i1};
        if (!n)
            continue;
        if (!rows->k || !rows->v || !rows->meta || !rows->k[l] || !rows->v[l] || !rows->meta[l]) {
            free(eds);
            return err_set(e, ERR_INVAL, "span replace: lane %u has %u rows but no data", l, n);
        }
        float lo = i0 > 0 ? row_pos(ln, i0 - 1) : 0.0f;
        float hi = i1 < ln->n_rows ? row_pos(ln, i1) : INFINITY;
        rc = check_rows(st, s, l, rows->meta[l], n, lo, hi, e);
        if (rc) {
            free(eds);
            return rc;
        }
        ins[l] = (kv_ins_t){.at = i0,
                            .n = n,
                            .type = st->cfg.hot_type,
                            .k = rows->k[l],
                            .v = rows->v[l],
                            .meta = rows->meta[l]};
        eds[l].ins = &ins[l];
        eds[l].n_ins = 1;
    }
    kv_tr_fault_t fault;
    if (fault_plan(st, s, rows, &fault) != 0) {
        free(eds);
        return err_set(e, ERR_NOMEM, "span replace: out of memory");
    }
    char what[96];
    snprintf(what, sizeof what, "replacing span [%g, %g] of session %u", p0, p1, sid);
    rc = run_edits(st, s, eds, nl, &fault, what, e);
    free(fault.pg);
    free(eds);
    return rc;
}

static int check_indices(const kv_lane_t *ln, const uint32_t *rows, uint32_t n, const char *verb,
                         err_info_t *e)
{
    if (n && !rows)
        return err_set(e, ERR_INVAL, "%s: no row list", verb);
    for (uint32_t i = 0; i < n; i++) {
        if (rows[i] >= ln->n_rows)
            return err_set(e, ERR_RANGE, "%s: row %u of a lane of %u rows", verb, rows[i],
                           ln->n_rows);
        if (i && rows[i] <= rows[i - 1])
            return err_set(e, ERR_INVAL, "%s: rows must be strictly increasing (%u after %u)", verb,
                           rows[i], rows[i - 1]);
    }
    return 0;
}

int kv_lane_evict(kv_store_t *st, uint32_t sid, uint32_t layer, uint32_t head, const uint32_t *rows,
                  uint32_t n, err_info_t *e)
{
    int rc;
    kv_session_t *s = get_session(st, sid, "evict", true, e, &rc);
    if (!s)
        return rc;
    kv_lane_t *ln = kv_lane_at(st, s, layer, head);
    if (!ln)
        return err_set(e, ERR_RANGE, "evict: no lane (%u, %u)", layer, head);
    rc = check_indices(ln, rows, n, "evict", e);
    if (rc || n == 0)
        return rc;
    uint32_t l = (uint32_t)(ln - s->lanes);
    kv_edit_t *eds = kv_scratch_alloc(st, (l + 1) * sizeof *eds);
    if (!eds)
        return err_set(e, ERR_NOMEM, "evict: out of memory");
    eds[l] = (kv_edit_t){.del = rows, .n_del = n};
    rc = run_edits(st, s, eds, l + 1, NULL, "evict", e);
    free(eds);
    return rc;
}

/* Fills ed (and ins, up to one group per row) to convert `rows` of a lane to q8_0,
 * skipping rows already q8_0; keep (scratch) holds the filtered list. */
static void demote_edit(const kv_lane_t *ln, const uint32_t *rows, uint32_t n, uint32_t *keep,
                        kv_ins_t *ins, kv_edit_t *ed)
{
    uint32_t nk = 0, ng = 0, bi = 0, base = 0;
    for (uint32_t j = 0; j < n; j++) {
        while (rows[j] >= base + ln->b[bi].blk->n)
            base += ln->b[bi++].blk->n;
        if (ln->b[bi].blk->type == DT_Q8_0)
            continue;
        keep[nk++] = rows[j];
        if (ng && ins[ng - 1].at + ins[ng - 1].n == rows[j])
            ins[ng - 1].n++;
        else
            ins[ng++] = (kv_ins_t){.at = rows[j], .n = 1, .type = DT_Q8_0, .old0 = rows[j]};
    }
    *ed = (kv_edit_t){.del = keep, .n_del = nk, .ins = ins, .n_ins = ng};
}

int kv_lane_demote(kv_store_t *st, uint32_t sid, uint32_t layer, uint32_t head,
                   const uint32_t *rows, uint32_t n, err_info_t *e)
{
    int rc;
    kv_session_t *s = get_session(st, sid, "demote", true, e, &rc);
    if (!s)
        return rc;
    if (!st->row_bytes[KV_TIER_Q8_0])
        return err_set(e, ERR_UNSUPPORTED, "demote: head_dim %u is not a multiple of 32",
                       st->cfg.head_dim);
    kv_lane_t *ln = kv_lane_at(st, s, layer, head);
    if (!ln)
        return err_set(e, ERR_RANGE, "demote: no lane (%u, %u)", layer, head);
    rc = check_indices(ln, rows, n, "demote", e);
    if (rc || n == 0)
        return rc;
    uint32_t l = (uint32_t)(ln - s->lanes);
    kv_edit_t *eds =
        kv_scratch_alloc(st, (l + 1) * sizeof *eds + n * (sizeof(uint32_t) + sizeof(kv_ins_t)));
    if (!eds)
        return err_set(e, ERR_NOMEM, "demote: out of memory");
    kv_ins_t *ins = (kv_ins_t *)(eds + l + 1);
    demote_edit(ln, rows, n, (uint32_t *)(ins + n), ins, &eds[l]);
    rc = run_edits(st, s, eds, l + 1, NULL, "demote", e);
    free(eds);
    return rc;
}

int kv_span_demote(kv_store_t *st, uint32_t sid, float p0, float p1, err_info_t *e)
{
    int rc;
    kv_session_t *s = get_session(st, sid, "span demote", true, e, &rc);
    if (!s)
        return rc;
    if (!st->row_bytes[KV_TIER_Q8_0])
        return err_set(e, ERR_UNSUPPORTED, "demote: head_dim %u is not a multiple of 32",
                       st->cfg.head_dim);
    if (!(p0 <= p1))
        return err_set(e, ERR_INVAL, "span demote: bad span [%g, %g]", p0, p1);
    uint32_t nl = st->n_lane;
    size_t total = 0;
    uint32_t *lo = kv_scratch_alloc(st, 2 * nl * sizeof *lo);
    if (!lo)
        return err_set(e, ERR_NOMEM, "span demote: out of memory");
    uint32_t *hi = lo + nl;
    for (uint32_t l = 0; l < nl; l++) {
        lo[l] = lane_find(&s->lanes[l], p0, false);
        hi[l] = lane_find(&s->lanes[l], p1, true);
        total += hi[l] - lo[l];
    }
    kv_edit_t *eds =
        kv_scratch_alloc(st, nl * sizeof *eds + total * (2 * sizeof(uint32_t) + sizeof(kv_ins_t)));
    if (!eds) {
        free(lo);
        return err_set(e, ERR_NOMEM, "span demote: out of memory");
    }
    kv_ins_t *ins = (kv_ins_t *)(eds + nl);
    uint32_t *idx = (uint32_t *)(ins + total), *keep = idx + total;
    size_t off = 0;
    for (uint32_t l = 0; l < nl; l++) {
        uint32_t n = hi[l] - lo[l];
        for (uint32_t j = 0; j < n; j++)
            idx[off + j] = lo[l] + j;
        demote_edit(&s->lanes[l], idx + off, n, keep + off, ins + off, &eds[l]);
        off += n;
    }
    char what[96];
    snprintf(what, sizeof what, "demoting span [%g, %g] of session %u", p0, p1, sid);
    rc = run_edits(st, s, eds, nl, NULL, what, e);
    free(eds);
    free(lo);
    return rc;
}

/* ---- accumulators ---- */

int kv_session_set_attn_acc(kv_store_t *st, uint32_t sid, bool on, err_info_t *e)
{
    int rc;
    kv_session_t *s = get_session(st, sid, "attention accumulators", true, e, &rc);
    if (!s)
        return rc;
    if (s->attn_acc == on)
        return 0;
    if (!on) {
        for (uint32_t l = 0; l < st->n_lane; l++)
            for (uint32_t i = 0; i < s->lanes[l].n_blk; i++) {
                kv_bref_t *r = &s->lanes[l].b[i];
                kv_mem_free(st, s, r->acc, st->B * sizeof(float));
                r->acc = NULL;
            }
        s->attn_acc = false;
        return 0;
    }
    size_t need = 0;
    for (uint32_t l = 0; l < st->n_lane; l++)
        need += s->lanes[l].n_blk * kv_acc_bytes(st);
    rc = kv_budget_check(st, s, need, need, "turning on attention accumulators", e);
    if (rc)
        return rc;
    for (uint32_t l = 0; l < st->n_lane; l++) {
        for (uint32_t i = 0; i < s->lanes[l].n_blk; i++) {
            kv_bref_t *r = &s->lanes[l].b[i];
            r->acc = kv_mem_alloc(st, s, st->B * sizeof(float));
            if (r->acc) {
                memset(r->acc, 0, st->B * sizeof(float));
                continue;
            }
            for (uint32_t u = 0; u <= l; u++)
                for (uint32_t k = 0; k < s->lanes[u].n_blk; k++) {
                    kv_bref_t *x = &s->lanes[u].b[k];
                    if (x->acc)
                        kv_mem_free(st, s, x->acc, st->B * sizeof(float));
                    x->acc = NULL;
                }
            return err_set(e, ERR_NOMEM, "attention accumulators: out of memory");
        }
    }
    s->attn_acc = true;
    return 0;
}
