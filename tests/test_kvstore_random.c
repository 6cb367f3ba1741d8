/*
 * Randomized test of the kvstore against a plain-array reference model.
 *
 * Thousands of seeded operations (append, over-budget reserve, cancelled reserve, span
 * replace with gists or re-expanded raw rows, evict, demote, span demote, fork, destroy,
 * create, limit changes, accumulator writes) over many sessions. After every step:
 *   - kv_store_check (structure, invariants, counters);
 *   - the O(1) figures (kv_session_bytes, kv_store_bytes, the limits) equal the walks';
 *   - the bytes: the store's total equals the distinct blocks seen through the views plus
 *     the payload runs' free slots plus every session's structures and transcript plus the
 *     store's own tables, and each session's block bytes equal its chunks; jemalloc's arena
 *     figure equals the total;
 *   - no hard limit crossed by a step that allocated (nor by its transient peak);
 *   - every lane matches the reference: metadata and payload type exactly, K/V within the
 *     tier's tolerance after dequantisation, bias = log(mass), accumulators exactly; and the
 *     transcript (tokens, live counts) matches.
 * Each row type runs twice: under a global limit (blocks allocated one by one), and with no
 * global limit, where sessions without a limit of their own carve their blocks from payload
 * runs (kvstore/kv_impl.h) and limits come and go per session.
 */
#include <jemalloc/jemalloc.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/test_kvstore_util.h"

#define NLAYER 2
#define NHEAD  2
#define NL     (NLAYER * NHEAD)
#define HD     64
#define BR     8
#define MAXS   10

typedef struct ref_row {
    float k[HD], v[HD];
    kv_row_meta_t m; /* m.type: the tier it must be stored in; m.attn: the accumulator */
} ref_row_t;

typedef struct ref_lane {
    ref_row_t *r;
    uint32_t n, cap;
} ref_lane_t;

typedef struct ref_sess {
    bool used;
    uint32_t sid;
    bool acc;
    ref_lane_t lane[NL];
    uint32_t *tok;
    uint32_t len, cap;
} ref_sess_t;

typedef struct world {
    kv_store_t *st;
    uint32_t hot;
    ref_sess_t s[MAXS];
    kvt_rng_t rng;
    uint64_t n_ops[16], n_fail[16];
    size_t max_slack;
    bool limited;   /* under a global limit */
    bool runs_seen; /* a session's blocks lay in payload runs at some step (carved as appended
                       without a limit, settled by edits under one) */
} world_t;

static void lane_insert(ref_lane_t *ln, uint32_t at, const ref_row_t *rows, uint32_t n)
{
    if (ln->n + n > ln->cap) {
        ln->cap = (ln->n + n) * 2;
        ln->r = realloc(ln->r, sizeof *ln->r * ln->cap);
    }
    if (n == 0)
        return;
    memmove(&ln->r[at + n], &ln->r[at], sizeof *ln->r * (ln->n - at));
    memcpy(&ln->r[at], rows, sizeof *rows * n);
    ln->n += n;
}

static void lane_remove(ref_lane_t *ln, uint32_t at, uint32_t n)
{
    memmove(&ln->r[at], &ln->r[at + n], sizeof *ln->r * (ln->n - at - n));
    ln->n -= n;
}

static void sess_free(ref_sess_t *s)
{
    for (int l = 0; l < NL; l++)
        free(s->lane[l].r);
    free(s->tok);
    memset(s, 0, sizeof *s);
}

static void sess_copy(ref_sess_t *d, const ref_sess_t *s)
{
    *d = *s;
    for (int l = 0; l < NL; l++) {
        d->lane[l].cap = s->lane[l].n + 1;
        d->lane[l].r = malloc(sizeof(ref_row_t) * d->lane[l].cap);
        if (s->lane[l].n)
            memcpy(d->lane[l].r, s->lane[l].r, sizeof(ref_row_t) * s->lane[l].n);
    }
    d->cap = s->len + 1;
    d->tok = malloc(sizeof(uint32_t) * d->cap);
    if (s->len)
        memcpy(d->tok, s->tok, sizeof(uint32_t) * s->len);
}

static int pick_session(world_t *w)
{
    int ids[MAXS], n = 0;
    for (int i = 0; i < MAXS; i++)
        if (w->s[i].used)
            ids[n++] = i;
    return n ? ids[kvt_below(&w->rng, n)] : -1;
}

static int free_slot(const world_t *w)
{
    for (int i = 0; i < MAXS; i++)
        if (!w->s[i].used)
            return i;
    return -1;
}

/* ---- checks ---- */

/* Largest |x| of each 32-element group (what q8_0's scale comes from). */
static void group_amax(const float *x, float *amax)
{
    for (uint32_t g = 0; g < HD / 32; g++) {
        amax[g] = 0.0f;
        for (uint32_t j = g * 32; j < g * 32 + 32; j++)
            amax[g] = fmaxf(amax[g], fabsf(x[j]));
    }
}

/* How far a stored value may be from the reference in a tier. */
static float tol(uint32_t type, const float *x, const float *amax, uint32_t d)
{
    if (type == DT_F32)
        return 0.0f;
    if (type == DT_F16)
        return fabsf(x[d]) * 0x1p-11f + 1e-7f;
    return amax[d / 32] * (0.5f / 127.0f + 0x1p-10f) + fabsf(x[d]) * 0x1p-10f + 1e-6f;
}

static bool check_session(world_t *w, ref_sess_t *rs, size_t *blocks_seen, const void ***ptrs,
                          size_t *n_ptrs, size_t *cap_ptrs)
{
    kv_store_t *st = w->st;
    static float k[4096 * HD], v[4096 * HD];
    static kv_row_meta_t m[4096];
    static kv_chunk_t ch[4096];
    size_t block_bytes = 0;
    bool ok = true;
    for (uint32_t l = 0; l < NL && ok; l++) {
        const ref_lane_t *ln = &rs->lane[l];
        uint32_t rows, nc;
        CHECK_OK(kv_lane_size(st, rs->sid, l / NHEAD, l % NHEAD, &rows, &nc));
        if (rows != ln->n) {
            CHECK_MSG(false, "session %u lane %u: %u rows, reference %u", rs->sid, l, rows, ln->n);
            return false;
        }
        CHECK_OK(kv_lane_read(st, rs->sid, l / NHEAD, l % NHEAD, 0, rows, m, k, v));
        CHECK_OK(kv_lane_view(st, rs->sid, l / NHEAD, l % NHEAD, ch, 4096, &nc));
        uint32_t r = 0;
        for (uint32_t c = 0; c < nc; c++) {
            block_bytes += kv_block_bytes(st, ch[c].type);
            bool seen = false;
            for (size_t i = 0; i < *n_ptrs && !seen; i++)
                seen = (*ptrs)[i] == ch[c].k;
            if (!seen) {
                if (*n_ptrs == *cap_ptrs) {
                    *cap_ptrs = *cap_ptrs ? 2 * *cap_ptrs : 256;
                    *ptrs = realloc(*ptrs, sizeof **ptrs * *cap_ptrs);
                }
                (*ptrs)[(*n_ptrs)++] = ch[c].k;
                *blocks_seen += kv_block_bytes(st, ch[c].type);
            }
            for (uint32_t i = 0; i < ch[c].n; i++, r++) {
                const ref_row_t *x = &ln->r[r];
                ok &= ch[c].type == x->m.type;
                ok &= ch[c].bias[i] == logf(x->m.mass);
                ok &= (ch[c].attn_acc != NULL) == rs->acc;
                if (ch[c].attn_acc)
                    ok &= ch[c].attn_acc[i] == x->m.attn;
                if (!ok) {
                    CHECK_MSG(false, "session %u lane %u row %u: chunk type %u bias %g", rs->sid, l,
                              r, ch[c].type, ch[c].bias[i]);
                    return false;
                }
            }
        }
        for (r = 0; r < rows; r++) {
            const ref_row_t *x = &ln->r[r];
            const kv_row_meta_t *a = &m[r];
            if (a->pos != x->m.pos || a->mass != x->m.mass || a->logbeta != x->m.logbeta ||
                a->first != x->m.first || a->last != x->m.last || a->kind != x->m.kind ||
                a->level != x->m.level || a->type != x->m.type || a->attn != x->m.attn) {
                CHECK_MSG(false,
                          "session %u lane %u row %u: meta pos %g/%g mass %g/%g kind %u/%u "
                          "type %u/%u span %u-%u/%u-%u",
                          rs->sid, l, r, a->pos, x->m.pos, a->mass, x->m.mass, a->kind, x->m.kind,
                          a->type, x->m.type, a->first, a->last, x->m.first, x->m.last);
                return false;
            }
            float ak[HD / 32], av[HD / 32];
            if (x->m.type == DT_Q8_0) {
                group_amax(x->k, ak);
                group_amax(x->v, av);
            }
            for (uint32_t d = 0; d < HD; d++) {
                float tk = tol(x->m.type, x->k, ak, d), tv = tol(x->m.type, x->v, av, d);
                if (fabsf(k[r * HD + d] - x->k[d]) > tk || fabsf(v[r * HD + d] - x->v[d]) > tv) {
                    CHECK_MSG(false, "session %u lane %u row %u dim %u: k %g/%g v %g/%g (type %u)",
                              rs->sid, l, r, d, k[r * HD + d], x->k[d], v[r * HD + d], x->v[d],
                              x->m.type);
                    return false;
                }
            }
        }
    }
    /* transcript */
    uint32_t len;
    CHECK_OK(kv_transcript_len(st, rs->sid, &len));
    if (len != rs->len) {
        CHECK_MSG(false, "session %u: transcript %u, reference %u", rs->sid, len, rs->len);
        return false;
    }
    uint32_t *tok = malloc(sizeof *tok * (len + 1));
    uint16_t *live = malloc(sizeof *live * (len + 1));
    uint16_t *want = calloc(len + 1, sizeof *want);
    CHECK_OK(kv_transcript_read(st, rs->sid, 0, len, tok, live));
    for (uint32_t l = 0; l < NL; l++)
        for (uint32_t r = 0; r < rs->lane[l].n; r++)
            if (rs->lane[l].r[r].m.kind == KV_KIND_RAW)
                want[(uint32_t)rs->lane[l].r[r].m.pos]++;
    for (uint32_t p = 0; p < len && ok; p++) {
        if (tok[p] != rs->tok[p] || live[p] != want[p]) {
            CHECK_MSG(false, "session %u position %u: token %u/%u live %u/%u", rs->sid, p, tok[p],
                      rs->tok[p], live[p], want[p]);
            ok = false;
        }
    }
    free(tok);
    free(live);
    free(want);
    kv_stats_t s;
    CHECK_OK(kv_session_stats(st, rs->sid, &s));
    if (s.block_bytes != block_bytes ||
        s.bytes != s.block_bytes + s.run_free_bytes + s.struct_bytes + s.transcript_bytes ||
        s.transcript_bytes < 6 * (size_t)len) {
        CHECK_MSG(false, "session %u: bytes %zu = blocks %zu (views %zu) + %zu + %zu", rs->sid,
                  s.bytes, s.block_bytes, block_bytes, s.struct_bytes, s.transcript_bytes);
        ok = false;
    }
    return ok;
}

/* Bytes of the arena's small-object slabs that are not full (the slabs kept in each bin's
 * non-full heap plus the one it is allocating from), plus a page for each large allocation
 * (jemalloc pads large extents by a page to vary their cache-line offset: payload runs of
 * 16 KiB and more are large). */
static size_t slab_slack_bound(uint32_t arena)
{
    unsigned nbins = 0;
    size_t sz = sizeof nbins;
    mallctl("arenas.nbins", &nbins, &sz, NULL, 0);
    size_t total = 0;
    for (unsigned j = 0; j < nbins; j++) {
        char name[96];
        size_t slab = 0, nonfull = 0, cur = 0;
        sz = sizeof slab;
        snprintf(name, sizeof name, "arenas.bin.%u.slab_size", j);
        mallctl(name, &slab, &sz, NULL, 0);
        snprintf(name, sizeof name, "stats.arenas.%u.bins.%u.nonfull_slabs", arena, j);
        mallctl(name, &nonfull, &sz, NULL, 0);
        snprintf(name, sizeof name, "stats.arenas.%u.bins.%u.curslabs", arena, j);
        mallctl(name, &cur, &sz, NULL, 0);
        total += (nonfull + (cur > 0)) * slab;
    }
    unsigned nlextents = 0;
    size_t page = 4096;
    sz = sizeof nlextents;
    mallctl("arenas.nlextents", &nlextents, &sz, NULL, 0);
    sz = sizeof page;
    mallctl("arenas.page", &page, &sz, NULL, 0);
    for (unsigned j = 0; j < nlextents; j++) {
        char name[96];
        size_t cur = 0;
        sz = sizeof cur;
        snprintf(name, sizeof name, "stats.arenas.%u.lextents.%u.curlextents", arena, j);
        mallctl(name, &cur, &sz, NULL, 0);
        total += cur * page;
    }
    return total;
}

/* Everything after a step; `grew` tells whether the step could allocate. */
static bool check_world(world_t *w, const kv_stats_t *before, const size_t *sbefore)
{
    kv_store_t *st = w->st;
    err_info_t e;
    err_clear(&e);
    if (kv_store_check(st, &e) != 0) {
        CHECK_MSG(false, "kv_store_check: %s", err_msg(&e));
        return false;
    }
    if (!kvt_check_bytes(st))
        return false;
    size_t blocks = 0, n_ptrs = 0, cap_ptrs = 0, nonblock = 0;
    const void **ptrs = NULL;
    bool ok = true;
    for (int i = 0; i < MAXS && ok; i++) {
        if (!w->s[i].used)
            continue;
        ok &= check_session(w, &w->s[i], &blocks, &ptrs, &n_ptrs, &cap_ptrs);
        kv_stats_t s;
        CHECK_OK(kv_session_stats(st, w->s[i].sid, &s));
        nonblock += s.struct_bytes + s.transcript_bytes;
        w->runs_seen |= s.runs > 0;
        /* a session that grew stayed under its limit, transient peak included */
        if (s.hard_limit && s.bytes > sbefore[i] && s.bytes > s.hard_limit) {
            CHECK_MSG(false, "session %u: %zu bytes over its hard limit %zu", w->s[i].sid, s.bytes,
                      s.hard_limit);
            ok = false;
        }
    }
    free(ptrs);
    kv_stats_t g;
    kv_store_stats(st, &g);
    if (g.bytes != blocks + g.run_free_bytes + nonblock + g.overhead_bytes) {
        CHECK_MSG(false,
                  "store: %zu bytes, blocks seen %zu + runs' free slots %zu + sessions %zu + "
                  "overhead %zu",
                  g.bytes, blocks, g.run_free_bytes, nonblock, g.overhead_bytes);
        ok = false;
    }
    if (g.je_allocated != g.bytes || g.je_active < g.je_allocated) {
        CHECK_MSG(false, "store: %zu bytes, jemalloc allocated %zu active %zu", g.bytes,
                  g.je_allocated, g.je_active);
        ok = false;
    }
    /* jemalloc's active pages exceed what it handed out only inside partly used slabs of
     * small size classes (the blocks' payloads are large, page-multiple classes) */
    size_t slack = g.je_active - g.je_allocated, bound = slab_slack_bound(g.je_arena);
    if (slack > w->max_slack)
        w->max_slack = slack;
    if (slack > bound) {
        CHECK_MSG(false, "store: jemalloc active %zu - allocated %zu > partly used slabs %zu",
                  g.je_active, g.je_allocated, bound);
        ok = false;
    }
    if (g.hard_limit && g.bytes > before->bytes && g.bytes > g.hard_limit) {
        CHECK_MSG(false, "store: %zu bytes over the global hard limit %zu", g.bytes, g.hard_limit);
        ok = false;
    }
    if (g.hard_limit && g.peak > before->peak && g.peak > g.hard_limit &&
        before->bytes <= g.hard_limit) {
        CHECK_MSG(false, "store: peak %zu crossed the global hard limit %zu", g.peak, g.hard_limit);
        ok = false;
    }
    return ok;
}

/* ---- operations ---- */

enum {
    OP_APPEND,
    OP_BIG,
    OP_CANCEL,
    OP_REPLACE,
    OP_EXPAND,
    OP_EVICT,
    OP_DEMOTE,
    OP_SPANDEM,
    OP_FORK,
    OP_DESTROY,
    OP_CREATE,
    OP_LIMIT,
    OP_ACC,
    OP_N
};

static void op_append(world_t *w, ref_sess_t *rs)
{
    uint32_t n = 1 + kvt_below(&w->rng, 12);
    uint64_t tag = kvt_next(&w->rng);
    uint32_t tok0 = kvt_below(&w->rng, 30000);
    err_info_t e;
    int rc = kvt_append(w->st, rs->sid, n, tok0, tag, &e);
    w->n_ops[OP_APPEND]++;
    if (rc != 0) {
        CHECK_MSG(rc == ERR_BUDGET, "append: %d %s", rc, err_msg(&e));
        w->n_fail[OP_APPEND]++;
        return;
    }
    for (uint32_t l = 0; l < NL; l++)
        for (uint32_t j = 0; j < n; j++) {
            ref_row_t x = {0};
            uint32_t p = rs->len + j;
            for (uint32_t d = 0; d < HD; d++) {
                x.k[d] = kvt_val(tag, l, p, d);
                x.v[d] = kvt_val(~tag, l, p, d);
            }
            x.m = (kv_row_meta_t){.pos = (float)p,
                                  .mass = 1.0f,
                                  .logbeta = -(float)p / 1000.0f,
                                  .first = p,
                                  .last = p,
                                  .kind = KV_KIND_RAW,
                                  .type = (uint8_t)w->hot};
            lane_insert(&rs->lane[l], rs->lane[l].n, &x, 1);
        }
    if (rs->len + n > rs->cap) {
        rs->cap = 2 * (rs->len + n);
        rs->tok = realloc(rs->tok, sizeof *rs->tok * rs->cap);
    }
    for (uint32_t j = 0; j < n; j++)
        rs->tok[rs->len + j] = tok0 + j;
    rs->len += n;
}

static void op_big(world_t *w, ref_sess_t *rs)
{
    if (!w->limited) /* nothing to refuse it */
        return;
    err_info_t e;
    int rc = kv_reserve(w->st, rs->sid, 1u << 20, &e);
    w->n_ops[OP_BIG]++;
    CHECK_MSG(rc == ERR_BUDGET && strstr(e.msg, "needs"), "huge reserve: %d %s", rc, err_msg(&e));
    if (rc == 0)
        kv_reserve_cancel(w->st, rs->sid);
}

static void op_cancel(world_t *w, ref_sess_t *rs)
{
    err_info_t e;
    w->n_ops[OP_CANCEL]++;
    int rc = kv_reserve(w->st, rs->sid, 1 + kvt_below(&w->rng, 20), &e);
    if (rc == 0)
        kv_reserve_cancel(w->st, rs->sid);
    else
        w->n_fail[OP_CANCEL]++;
}

/* Rows of lane ln with position in [p0, p1]: [*i0, *i1). */
static void ref_span(const ref_lane_t *ln, float p0, float p1, uint32_t *i0, uint32_t *i1)
{
    uint32_t a = 0;
    while (a < ln->n && ln->r[a].m.pos < p0)
        a++;
    uint32_t b = a;
    while (b < ln->n && ln->r[b].m.pos <= p1)
        b++;
    *i0 = a;
    *i1 = b;
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Replaces a random span by gists (expand = false) or by its raw rows again. */
static void op_replace(world_t *w, ref_sess_t *rs, bool expand)
{
    if (rs->len < 2)
        return;
    uint32_t a = kvt_below(&w->rng, rs->len), b = a + kvt_below(&w->rng, 24);
    if (b >= rs->len)
        b = rs->len - 1;
    float p0 = (float)a, p1 = (float)b;
    if (!expand && b > a && kvt_below(&w->rng, 3) == 0)
        p0 += 0.25f; /* fractional span ends */
    static ref_row_t rows[NL][32];
    static float kk[NL][32 * HD], vv[NL][32 * HD];
    static kv_row_meta_t mm[NL][32];
    uint32_t n[NL];
    const float *kp[NL], *vp[NL];
    const kv_row_meta_t *mp[NL];
    for (uint32_t l = 0; l < NL; l++) {
        if (expand) {
            n[l] = b - a + 1;
            for (uint32_t j = 0; j < n[l]; j++) {
                uint32_t p = a + j;
                ref_row_t *x = &rows[l][j];
                for (uint32_t d = 0; d < HD; d++) {
                    x->k[d] = kvt_unit(&w->rng);
                    x->v[d] = kvt_unit(&w->rng);
                }
                x->m = (kv_row_meta_t){
                    .pos = (float)p, .mass = 1.0f, .first = p, .last = p, .kind = KV_KIND_RAW};
            }
        } else {
            n[l] = kvt_below(&w->rng, 4);
            float pos[4];
            for (uint32_t j = 0; j < n[l]; j++)
                pos[j] = p0 + (p1 - p0) * (float)kvt_below(&w->rng, 1000) / 999.0f;
            qsort(pos, n[l], sizeof *pos, cmp_float);
            for (uint32_t j = 0; j < n[l]; j++) {
                ref_row_t *x = &rows[l][j];
                for (uint32_t d = 0; d < HD; d++) {
                    x->k[d] = 3.0f * kvt_unit(&w->rng);
                    x->v[d] = kvt_unit(&w->rng);
                }
                x->m = (kv_row_meta_t){.pos = pos[j],
                                       .mass = 1.0f + (float)kvt_below(&w->rng, 40) / 4.0f,
                                       .logbeta = -(float)kvt_below(&w->rng, 100) / 10.0f,
                                       .first = a,
                                       .last = b,
                                       .kind = (uint8_t)(1 + kvt_below(&w->rng, 2)),
                                       .level = (uint8_t)(1 + kvt_below(&w->rng, 3))};
            }
        }
        for (uint32_t j = 0; j < n[l]; j++) {
            memcpy(&kk[l][j * HD], rows[l][j].k, sizeof rows[l][j].k);
            memcpy(&vv[l][j * HD], rows[l][j].v, sizeof rows[l][j].v);
            mm[l][j] = rows[l][j].m;
            rows[l][j].m.type = (uint8_t)w->hot;
        }
        kp[l] = kk[l];
        vp[l] = vv[l];
        mp[l] = mm[l];
    }
    kv_rows_t r = {.n = n, .k = kp, .v = vp, .meta = mp};
    err_info_t e;
    int op = expand ? OP_EXPAND : OP_REPLACE;
    w->n_ops[op]++;
    int rc = kv_span_replace(w->st, rs->sid, p0, p1, &r, &e);
    if (rc) {
        CHECK_MSG(rc == ERR_BUDGET, "replace [%g, %g]: %d %s", p0, p1, rc, err_msg(&e));
        w->n_fail[op]++;
        return;
    }
    for (uint32_t l = 0; l < NL; l++) {
        uint32_t i0, i1;
        ref_span(&rs->lane[l], p0, p1, &i0, &i1);
        lane_remove(&rs->lane[l], i0, i1 - i0);
        lane_insert(&rs->lane[l], i0, rows[l], n[l]);
    }
}

/* A random row subset: mostly a contiguous run, sometimes scattered. */
static uint32_t pick_rows(world_t *w, uint32_t n_rows, uint32_t *out)
{
    if (!n_rows)
        return 0;
    uint32_t n = 0;
    if (kvt_below(&w->rng, 2)) {
        uint32_t a = kvt_below(&w->rng, n_rows), len = 1 + kvt_below(&w->rng, 20);
        for (uint32_t i = a; i < n_rows && i < a + len; i++)
            out[n++] = i;
    } else {
        uint32_t every = 2 + kvt_below(&w->rng, 6);
        for (uint32_t i = kvt_below(&w->rng, every); i < n_rows; i += every)
            out[n++] = i;
    }
    return n;
}

static void op_evict(world_t *w, ref_sess_t *rs)
{
    uint32_t l = kvt_below(&w->rng, NL);
    static uint32_t idx[4096];
    uint32_t n = pick_rows(w, rs->lane[l].n, idx);
    err_info_t e;
    w->n_ops[OP_EVICT]++;
    int rc = kv_lane_evict(w->st, rs->sid, l / NHEAD, l % NHEAD, idx, n, &e);
    if (rc) {
        CHECK_MSG(rc == ERR_BUDGET, "evict: %d %s", rc, err_msg(&e)); /* copy-on-write */
        w->n_fail[OP_EVICT]++;
        return;
    }
    for (uint32_t j = n; j > 0; j--)
        lane_remove(&rs->lane[l], idx[j - 1], 1);
}

static void op_demote(world_t *w, ref_sess_t *rs)
{
    uint32_t l = kvt_below(&w->rng, NL);
    static uint32_t idx[4096];
    uint32_t n = pick_rows(w, rs->lane[l].n, idx);
    err_info_t e;
    w->n_ops[OP_DEMOTE]++;
    int rc = kv_lane_demote(w->st, rs->sid, l / NHEAD, l % NHEAD, idx, n, &e);
    if (rc) {
        CHECK_MSG(rc == ERR_BUDGET, "demote: %d %s", rc, err_msg(&e));
        w->n_fail[OP_DEMOTE]++;
        return;
    }
    for (uint32_t j = 0; j < n; j++)
        rs->lane[l].r[idx[j]].m.type = DT_Q8_0;
}

static void op_span_demote(world_t *w, ref_sess_t *rs)
{
    if (!rs->len)
        return;
    float p0 = (float)kvt_below(&w->rng, rs->len), p1 = p0 + (float)kvt_below(&w->rng, 40);
    err_info_t e;
    w->n_ops[OP_SPANDEM]++;
    int rc = kv_span_demote(w->st, rs->sid, p0, p1, &e);
    if (rc) {
        CHECK_MSG(rc == ERR_BUDGET, "span demote: %d %s", rc, err_msg(&e));
        w->n_fail[OP_SPANDEM]++;
        return;
    }
    for (uint32_t l = 0; l < NL; l++) {
        uint32_t i0, i1;
        ref_span(&rs->lane[l], p0, p1, &i0, &i1);
        for (uint32_t i = i0; i < i1; i++)
            rs->lane[l].r[i].m.type = DT_Q8_0;
    }
}

static void op_fork(world_t *w, ref_sess_t *rs)
{
    int slot = free_slot(w);
    if (slot < 0)
        return;
    kv_session_config_t cfg = {.hard_limit = 0, .attn_acc = kvt_below(&w->rng, 2)};
    bool own = kvt_below(&w->rng, 2);
    err_info_t e;
    uint32_t child;
    w->n_ops[OP_FORK]++;
    int rc = kv_session_fork(w->st, rs->sid, own ? &cfg : NULL, &child, &e);
    if (rc) {
        CHECK_MSG(rc == ERR_BUDGET, "fork: %d %s", rc, err_msg(&e));
        w->n_fail[OP_FORK]++;
        return;
    }
    ref_sess_t *c = &w->s[slot];
    sess_copy(c, rs);
    c->sid = child;
    if (own) {
        c->acc = cfg.attn_acc;
        for (uint32_t l = 0; l < NL; l++)
            for (uint32_t r = 0; r < c->lane[l].n; r++)
                if (!c->acc)
                    c->lane[l].r[r].m.attn = 0.0f;
    }
}

static void op_create(world_t *w)
{
    int slot = free_slot(w);
    if (slot < 0)
        return;
    size_t blk = kv_block_bytes(w->st, DT_F32);
    kv_session_config_t cfg = {.hard_limit =
                                   kvt_below(&w->rng, 3) ? (20 + kvt_below(&w->rng, 40)) * blk : 0,
                               .attn_acc = kvt_below(&w->rng, 3) == 0};
    uint32_t sid;
    err_info_t e;
    w->n_ops[OP_CREATE]++;
    int rc = kv_session_create(w->st, &cfg, &sid, &e);
    if (rc) {
        CHECK_MSG(rc == ERR_BUDGET, "create: %d %s", rc, err_msg(&e));
        w->n_fail[OP_CREATE]++;
        return;
    }
    ref_sess_t *s = &w->s[slot];
    memset(s, 0, sizeof *s);
    s->used = true;
    s->sid = sid;
    s->acc = cfg.attn_acc;
}

static void op_limit(world_t *w, ref_sess_t *rs)
{
    kv_stats_t s;
    CHECK_OK(kv_session_stats(w->st, rs->sid, &s));
    size_t hard = kvt_below(&w->rng, 4) == 0 ? 0 : s.bytes / 2 + kvt_below(&w->rng, 1u << 18);
    size_t excess;
    w->n_ops[OP_LIMIT]++;
    CHECK_OK(kv_session_set_limits(w->st, rs->sid, hard, hard / 2, &excess));
    const size_t now = kv_session_bytes(w->st, rs->sid); /* less its dissolved runs' */
    CHECK_INT(now, <=, s.bytes);
    CHECK_INT(excess, ==, hard && now > hard ? now - hard : 0);
}

/* Turns accumulators on or off, or writes them as a forward pass would. */
static void op_acc(world_t *w, ref_sess_t *rs)
{
    w->n_ops[OP_ACC]++;
    if (kvt_below(&w->rng, 3) == 0) {
        bool on = !rs->acc;
        err_info_t e;
        int rc = kv_session_set_attn_acc(w->st, rs->sid, on, &e);
        if (rc) {
            CHECK_MSG(rc == ERR_BUDGET, "acc: %d %s", rc, err_msg(&e));
            w->n_fail[OP_ACC]++;
            return;
        }
        rs->acc = on;
        for (uint32_t l = 0; l < NL; l++)
            for (uint32_t r = 0; r < rs->lane[l].n; r++)
                rs->lane[l].r[r].m.attn = 0.0f;
        return;
    }
    if (!rs->acc)
        return;
    uint32_t l = kvt_below(&w->rng, NL);
    static kv_chunk_t ch[4096];
    uint32_t nc, r = 0;
    CHECK_OK(kv_lane_view(w->st, rs->sid, l / NHEAD, l % NHEAD, ch, 4096, &nc));
    for (uint32_t c = 0; c < nc; c++)
        for (uint32_t i = 0; i < ch[c].n; i++, r++) {
            float add = (float)kvt_below(&w->rng, 8) / 8.0f;
            ch[c].attn_acc[i] += add;
            rs->lane[l].r[r].m.attn += add;
        }
}

/* limited: a global limit (no payload runs); else none (runs for unlimited sessions) */
static void run_world(uint32_t hot, uint64_t seed, int steps, bool limited)
{
    world_t *w = calloc(1, sizeof *w);
    w->hot = hot;
    w->limited = limited;
    w->rng.s = seed;
    w->st = kvt_store(NLAYER, NHEAD, HD, BR, hot, 0);
    size_t blk = kv_block_bytes(w->st, DT_F32);
    if (limited)
        CHECK_OK(kv_store_set_limits(w->st, 260 * blk, 200 * blk, NULL));
    for (int i = 0; i < 3; i++)
        op_create(w);
    for (int step = 0; step < steps && !check_failed(); step++) {
        kv_stats_t before;
        kv_store_stats(w->st, &before);
        size_t sbefore[MAXS] = {0};
        for (int i = 0; i < MAXS; i++) {
            kv_stats_t s;
            if (w->s[i].used && kv_session_stats(w->st, w->s[i].sid, &s) == 0)
                sbefore[i] = s.bytes;
        }
        int si = pick_session(w);
        uint32_t r = kvt_below(&w->rng, 100);
        if (si < 0 || r < 4) {
            op_create(w);
        } else if (r < 40) {
            op_append(w, &w->s[si]);
        } else if (r < 42) {
            op_big(w, &w->s[si]);
        } else if (r < 44) {
            op_cancel(w, &w->s[si]);
        } else if (r < 54) {
            op_replace(w, &w->s[si], false);
        } else if (r < 58) {
            op_replace(w, &w->s[si], true);
        } else if (r < 68) {
            op_evict(w, &w->s[si]);
        } else if (r < 76) {
            op_demote(w, &w->s[si]);
        } else if (r < 80) {
            op_span_demote(w, &w->s[si]);
        } else if (r < 85) {
            op_fork(w, &w->s[si]);
        } else if (r < 89) {
            w->n_ops[OP_DESTROY]++;
            CHECK_OK(kv_session_destroy(w->st, w->s[si].sid));
            sess_free(&w->s[si]);
        } else if (r < 92) {
            op_limit(w, &w->s[si]);
        } else {
            op_acc(w, &w->s[si]);
        }
        if (!check_world(w, &before, sbefore))
            CHECK_MSG(false, "after step %d (op roll %u)", step, r);
    }
    static const char *names[] = {"append", "big",    "cancel",     "replace", "expand",
                                  "evict",  "demote", "spandemote", "fork",    "destroy",
                                  "create", "limit",  "acc"};
    printf("# hot %s, %s, %d steps:",
           hot == DT_F32   ? "f32"
           : hot == DT_F16 ? "f16"
                           : "q8_0",
           limited ? "global limit" : "no global limit", steps);
    for (int i = 0; i < OP_N; i++)
        printf(" %s %llu/%llu", names[i], (unsigned long long)w->n_fail[i],
               (unsigned long long)w->n_ops[i]);
    printf(" (failed/run); max jemalloc active-allocated %zu\n", w->max_slack);
    /* every op kind ran and succeeded at least sometimes */
    for (int i = 0; i < OP_N; i++)
        CHECK_MSG(w->n_ops[i] > w->n_fail[i] || i == OP_BIG, "%s never succeeded", names[i]);
    CHECK_MSG(w->runs_seen, "payload runs never made (%s)", limited ? "settled" : "carved");
    for (int i = 0; i < MAXS; i++)
        if (w->s[i].used) {
            CHECK_OK(kv_session_destroy(w->st, w->s[i].sid));
            sess_free(&w->s[i]);
        }
    kv_stats_t g;
    kv_store_stats(w->st, &g);
    CHECK_INT(g.bytes, ==, g.overhead_bytes);
    CHECK_INT(g.je_allocated, ==, g.bytes);
    kv_store_destroy(&w->st);
    free(w);
}

/* Steps per world: GISTD_TEST_QUICK=1 (make check, under valgrind) runs fewer. */
static int world_steps(void)
{
    const char *q = getenv("GISTD_TEST_QUICK");
    return q && *q && strcmp(q, "0") != 0 ? 300 : 2500;
}

static void test_random_f32(void)
{
    run_world(DT_F32, 0x5eed0001, world_steps(), true);
}

static void test_random_f16(void)
{
    run_world(DT_F16, 0x5eed0002, world_steps(), true);
}

static void test_random_q8_0(void)
{
    run_world(DT_Q8_0, 0x5eed0003, world_steps(), true);
}

static void test_random_runs_f32(void)
{
    run_world(DT_F32, 0x5eed0004, world_steps(), false);
}

static void test_random_runs_f16(void)
{
    run_world(DT_F16, 0x5eed0005, world_steps(), false);
}

static void test_random_runs_q8_0(void)
{
    run_world(DT_Q8_0, 0x5eed0006, world_steps(), false);
}

int main(void)
{
    RUN(test_random_f32);
    RUN(test_random_f16);
    RUN(test_random_q8_0);
    RUN(test_random_runs_f32);
    RUN(test_random_runs_f16);
    RUN(test_random_runs_q8_0);
    return check_done();
}
