/*
 * Re-expansion in the session runtime (runtime/expand.c, policy/expand.c), on a tiny
 * random-weight model: an expanded span's rows equal a fresh prefill of its tokens at their
 * model positions over the same held context (an independent forward pass over the rows read
 * back from the store; |difference| < 1e-4, the summation order of the views differs); the
 * rows after it moved up in model positions when the gap was closed; the budget is never
 * crossed while room is made; an expansion refused for room, or failing at any allocation,
 * changes nothing; the automatic choice finds the span whose tokens the turn repeats, and
 * within a span merged from several sentences the one sentence the turn asks about.
 * The model is random: nothing here says that expansion helps a model recall (that is
 * bench/memory.py's question on a trained model).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "kvstore/kv_pool.h"
#include "model/kv_view.h"
#include "model/tiny.h"
#include "model/tokenizer.h"
#include "runtime/runtime.h"
#include "tests/check.h"
#include "tests/test_runtime_util.h"

#define N_CTX 64
#define SENT  16 /* tokens per sentence */

typedef struct hook {
    long calls, fail_at; /* fail the fail_at-th allocation (0: none) */
} hook_t;

static bool hook_fail(void *ctx, size_t bytes)
{
    (void)bytes;
    hook_t *h = ctx;
    return h->fail_at && ++h->calls == h->fail_at;
}

typedef struct fixture {
    mdl_t *m;
    kv_store_t *st;
    rt_t *rt;
    hook_t hook;
    uint32_t nl, nkv, hd;
} fixture_t;

static int fx_open_ctx(fixture_t *f, uint64_t seed, uint32_t n_ctx)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/tiny-expand-%llu.gguf", check_tmpdir(),
             (unsigned long long)seed);
    mdl_tiny_cfg_t cfg;
    mdl_tiny_cfg_default(&cfg);
    cfg.seed = seed;
    cfg.n_ctx = n_ctx;
    err_info_t e;
    err_clear(&e);
    memset(f, 0, sizeof *f);
    if (mdl_tiny_write(path, &cfg, &e) || mdl_new(path, &f->m, &e)) {
        check_fail_(__FILE__, __LINE__, "tiny model: %s", err_msg(&e));
        return -1;
    }
    mdl_set_threads(f->m, 1);
    const mdl_hparams_t *hp = mdl_hparams(f->m);
    kv_store_config_t sc = {.n_layer = hp->n_layer,
                            .n_head_kv = hp->n_head_kv,
                            .head_dim = hp->head_dim,
                            .block_rows = 8,
                            .hot_type = DT_F32,
                            .hard_limit = (size_t)1 << 40, /* blocks one by one: no runs */
                            .hook = {.fail = hook_fail, .ctx = &f->hook}};
    if (kv_store_new(&sc, &f->st, &e) || rt_new(f->m, f->st, &f->rt, &e)) {
        check_fail_(__FILE__, __LINE__, "store: %s", err_msg(&e));
        return -1;
    }
    f->nkv = hp->n_head_kv;
    f->nl = hp->n_layer * hp->n_head_kv;
    f->hd = hp->head_dim;
    return 0;
}

static int fx_open(fixture_t *f, uint64_t seed)
{
    return fx_open_ctx(f, seed, N_CTX);
}

static void fx_close(fixture_t *f)
{
    rt_destroy(&f->rt);
    kv_store_destroy(&f->st);
    mdl_destroy(&f->m);
}

static int sess_open(fixture_t *f, rt_sess_t *s, const pol_param_t *params, uint32_t n_params)
{
    kv_session_config_t kc = {0};
    uint32_t kv;
    err_info_t e;
    err_clear(&e);
    rt_sess_config_t rc = {.policy = "pool", .params = params, .n_params = n_params};
    if (kv_session_create(f->st, &kc, &kv, &e) || rt_sess_init(f->rt, s, kv, &rc, &e)) {
        check_fail_(__FILE__, __LINE__, "session: %s", err_msg(&e));
        return -1;
    }
    return 0;
}

/* Sentences of SENT tokens, each closed by the end of a turn: [k*SENT, (k+1)*SENT). */
static int sentences(fixture_t *f, rt_sess_t *s, uint32_t n, uint32_t seed)
{
    err_info_t e;
    err_clear(&e);
    int32_t tok[SENT];
    for (uint32_t k = 0; k < n; k++) {
        rtu_tokens(tok, SENT, seed + k);
        if (rtu_feed(f->rt, s, tok, SENT, &e) || rt_sess_end_turn(f->rt, s, &e)) {
            check_fail_(__FILE__, __LINE__, "feeding: %s", err_msg(&e));
            return -1;
        }
    }
    return 0;
}

static int compact(rt_sess_t *s, uint32_t first, uint32_t last)
{
    err_info_t e;
    err_clear(&e);
    pol_compact_req_t r = {.first = first, .last = last};
    int rc = pol_compact(s->pol, &r, &e);
    if (rc)
        check_fail_(__FILE__, __LINE__, "compact: %s", err_msg(&e));
    return rc;
}

/* A lane's rows, read whole. */
typedef struct lane_rows {
    uint32_t n;
    kv_row_meta_t *m;
    float *k, *v;
} lane_rows_t;

static void lane_get(fixture_t *f, uint32_t sid, uint32_t l, lane_rows_t *r)
{
    kv_lane_size(f->st, sid, l / f->nkv, l % f->nkv, &r->n, NULL);
    r->m = malloc(sizeof *r->m * (r->n + 1));
    r->k = malloc(sizeof(float) * f->hd * (r->n + 1));
    r->v = malloc(sizeof(float) * f->hd * (r->n + 1));
    if (r->n)
        CHECK_OK(kv_lane_read(f->st, sid, l / f->nkv, l % f->nkv, 0, r->n, r->m, r->k, r->v));
}

static void lane_free(lane_rows_t *r)
{
    free(r->m);
    free(r->k);
    free(r->v);
}

/* Every lane of a session, and its bytes and transcript. */
typedef struct sess_rows {
    lane_rows_t *lane;
    size_t bytes;
    uint32_t len;
    uint32_t *tok;
} sess_rows_t;

static void sess_get(fixture_t *f, uint32_t sid, sess_rows_t *r)
{
    r->lane = calloc(f->nl, sizeof *r->lane);
    for (uint32_t l = 0; l < f->nl; l++)
        lane_get(f, sid, l, &r->lane[l]);
    r->bytes = kv_session_bytes(f->st, sid);
    kv_transcript_len(f->st, sid, &r->len);
    r->tok = malloc(sizeof *r->tok * (r->len + 1));
    kv_transcript_read(f->st, sid, 0, r->len, r->tok, NULL);
}

static void sess_free(fixture_t *f, sess_rows_t *r)
{
    for (uint32_t l = 0; l < f->nl; l++)
        lane_free(&r->lane[l]);
    free(r->lane);
    free(r->tok);
}

/* The same rows: metadata and values exactly, keys to within tol (0: exactly). */
static void sess_same(fixture_t *f, const sess_rows_t *a, const sess_rows_t *b, double tol)
{
    CHECK_INT(a->bytes, ==, b->bytes);
    CHECK_INT(a->len, ==, b->len);
    CHECK(memcmp(a->tok, b->tok, sizeof *a->tok * a->len) == 0);
    double worst = 0.0;
    for (uint32_t l = 0; l < f->nl; l++) {
        const lane_rows_t *x = &a->lane[l], *y = &b->lane[l];
        CHECK_INT(x->n, ==, y->n);
        if (x->n != y->n)
            return;
        bool meta_ok = true;
        for (uint32_t i = 0; i < x->n; i++)
            meta_ok &= x->m[i].pos == y->m[i].pos && fabsf(x->m[i].shift - y->m[i].shift) <= tol &&
                       x->m[i].mass == y->m[i].mass && x->m[i].kind == y->m[i].kind;
        CHECK_MSG(meta_ok, "lane %u: the rows' metadata differ", l);
        CHECK(memcmp(x->v, y->v, sizeof(float) * f->hd * x->n) == 0);
        for (size_t j = 0; j < (size_t)f->hd * x->n; j++) {
            const double d = fabs((double)x->k[j] - y->k[j]);
            worst = d > worst ? d : worst;
        }
    }
    CHECK_MSG(worst <= tol, "keys differ by %g (tolerance %g)", worst, tol);
}

/* ---- the reference: a forward pass over rows read back from the store ---- */

typedef struct ref_io {
    fixture_t *f;
    lane_rows_t *lane; /* [nl]: the rows the tokens see */
    float **bias;
    mdl_kv_chunk_t *chunk;
    float *newk, *newv; /* [nl][n][hd] */
    uint32_t n;
} ref_io_t;

static int ref_view(void *ctx, int seq, int layer, int kv_head, uint32_t n_new, mdl_kv_view_t *out)
{
    ref_io_t *r = ctx;
    const uint32_t l = (uint32_t)layer * r->f->nkv + (uint32_t)kv_head;
    if (seq != 0 || n_new != r->n)
        return ERR_INTERNAL;
    r->chunk[l] = (mdl_kv_chunk_t){.n = r->lane[l].n,
                                   .type = DT_F32,
                                   .k = r->lane[l].k,
                                   .v = r->lane[l].v,
                                   .bias = r->bias[l]};
    *out = (mdl_kv_view_t){.n_chunks = r->lane[l].n ? 1 : 0,
                           .chunks = &r->chunk[l],
                           .new_k = r->newk + (size_t)l * r->n * r->f->hd,
                           .new_v = r->newv + (size_t)l * r->n * r->f->hd};
    return 0;
}

/* Checks that the rows of [a, b] in every lane are what a fresh prefill of their tokens at
 * their model positions computes over the rows held before a. */
static void check_fresh(fixture_t *f, rt_sess_t *s, uint32_t a, uint32_t b)
{
    const uint32_t n = b - a + 1, hd = f->hd;
    sess_rows_t now;
    sess_get(f, s->kv, &now);
    ref_io_t r = {.f = f, .n = n};
    r.lane = calloc(f->nl, sizeof *r.lane);
    r.bias = calloc(f->nl, sizeof *r.bias);
    r.chunk = calloc(f->nl, sizeof *r.chunk);
    r.newk = malloc(sizeof(float) * f->nl * n * hd);
    r.newv = malloc(sizeof(float) * f->nl * n * hd);
    int32_t *tok = malloc(sizeof *tok * n), *pos = malloc(sizeof *pos * n);
    uint32_t *at = malloc(sizeof *at * f->nl); /* index of the span's first row per lane */
    bool shape_ok = true;
    for (uint32_t l = 0; l < f->nl; l++) {
        const lane_rows_t *x = &now.lane[l];
        uint32_t i = 0;
        while (i < x->n && x->m[i].pos < (float)a)
            i++;
        at[l] = i;
        r.lane[l] = (lane_rows_t){.n = i, .m = x->m, .k = x->k, .v = x->v};
        r.bias[l] = malloc(sizeof(float) * (i + 1));
        for (uint32_t j = 0; j < i; j++)
            r.bias[l][j] = logf(x->m[j].mass);
        /* the span: n raw rows at consecutive model positions */
        for (uint32_t j = 0; j < n; j++) {
            const kv_row_meta_t *m = i + j < x->n ? &x->m[i + j] : NULL;
            if (!m || m->pos != (float)(a + j) || m->kind != KV_KIND_RAW || m->mass != 1.0f) {
                shape_ok = false;
                break;
            }
            const float mp = m->pos - m->shift;
            if (l == 0) {
                pos[j] = (int32_t)mp;
                tok[j] = (int32_t)now.tok[a + j];
            }
            shape_ok &= mp == (float)pos[j] && (j == 0 || pos[j] == pos[j - 1] + 1);
        }
        /* every row after the span sits above it in model positions */
        for (uint32_t j = i + n; shape_ok && j < x->n; j++)
            shape_ok &= x->m[j].pos - x->m[j].shift > (float)pos[n - 1];
        /* and every row before it below */
        for (uint32_t j = 0; shape_ok && j < i; j++)
            shape_ok &= x->m[j].pos - x->m[j].shift < (float)pos[0];
    }
    CHECK_MSG(shape_ok,
              "the span's rows are not %u raw rows at consecutive model positions "
              "between the rows before and after it",
              n);
    if (shape_ok) {
        mdl_batch_t mb = {.n = n, .token = tok, .pos = pos};
        mdl_kv_io_t io = {.ctx = &r, .view = ref_view};
        float *logits = malloc(sizeof(float) * mdl_hparams(f->m)->n_vocab);
        err_info_t e;
        err_clear(&e);
        CHECK_OK(mdl_forward(f->m, &mb, &io, logits, &e));
        free(logits);
        double worst = 0.0;
        for (uint32_t l = 0; l < f->nl; l++)
            for (uint32_t j = 0; j < n; j++)
                for (uint32_t d = 0; d < hd; d++) {
                    const size_t sr = (size_t)(at[l] + j) * hd + d,
                                 rr = ((size_t)l * n + j) * hd + d;
                    const double dk = fabs((double)now.lane[l].k[sr] - r.newk[rr]);
                    const double dv = fabs((double)now.lane[l].v[sr] - r.newv[rr]);
                    worst = dk > worst ? dk : worst;
                    worst = dv > worst ? dv : worst;
                }
        CHECK_MSG(worst < 1e-4, "expanded rows vs a fresh prefill: largest difference %g", worst);
    }
    for (uint32_t l = 0; l < f->nl; l++)
        free(r.bias[l]);
    free(r.lane);
    free(r.bias);
    free(r.chunk);
    free(r.newk);
    free(r.newv);
    free(tok);
    free(pos);
    free(at);
    sess_free(f, &now);
}

/* ---- events ---- */

typedef struct evlog {
    pol_event_t ev[64];
    uint32_t n;
} evlog_t;

static void on_event(void *ctx, const pol_event_t *ev)
{
    evlog_t *g = ctx;
    if (g->n < 64)
        g->ev[g->n++] = *ev;
}

static int sess_open_ev(fixture_t *f, rt_sess_t *s, evlog_t *g, const pol_param_t *params,
                        uint32_t n_params, size_t hard)
{
    kv_session_config_t kc = {.hard_limit = hard, .soft_limit = hard / 8 * 7};
    uint32_t kv;
    err_info_t e;
    err_clear(&e);
    rt_sess_config_t rc = {
        .policy = "pool", .params = params, .n_params = n_params, .emit = on_event, .emit_ctx = g};
    if (kv_session_create(f->st, &kc, &kv, &e) || rt_sess_init(f->rt, s, kv, &rc, &e)) {
        check_fail_(__FILE__, __LINE__, "session: %s", err_msg(&e));
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ tests */

/* A pooled sentence comes back as the rows a fresh prefill makes, whether its gap in model
 * positions is still open or was closed by a renumbering; after it every held model position
 * is its rank. */
static void test_expanded_equals_fresh_prefill(void)
{
    fixture_t f;
    if (fx_open(&f, 21))
        return;
    for (int closed = 0; closed < 2; closed++) {
        rt_sess_t s;
        evlog_t g = {0};
        if (sess_open_ev(&f, &s, &g, NULL, 0, 0))
            return;
        /* sentences at [0,16) [16,32) [32,48); the second pooled */
        if (sentences(&f, &s, 3, 100) || compact(&s, SENT, 2 * SENT - 1))
            return;
        if (closed) { /* one more sentence, pooled too, and past n_ctx: positions renumbered */
            int32_t more[4];
            rtu_tokens(more, 4, 99);
            err_info_t e0;
            err_clear(&e0);
            if (sentences(&f, &s, 1, 200) || compact(&s, 3 * SENT, 4 * SENT - 1) ||
                rtu_feed(f.rt, &s, more, 4, &e0))
                return;
        }
        float next0;
        kv_session_next_mpos(f.st, s.kv, &next0);
        CHECK(closed ? next0 < (float)s.n_past : next0 == (float)s.n_past);
        err_info_t e;
        err_clear(&e);
        rt_expand_result_t r;
        g.n = 0;
        /* a part of the pooled sentence, then the rest: the parts left on either side */
        CHECK_MSG(rt_sess_expand_span(f.rt, &s, SENT + 3, SENT + 5, &r, &e) == 0, "expand: %s",
                  err_msg(&e));
        CHECK_INT(r.spans, ==, 1);
        CHECK_INT(r.tokens, ==, 3);
        check_fresh(&f, &s, SENT + 3, SENT + 5);
        CHECK_OK(rt_sess_expand_span(f.rt, &s, SENT, 2 * SENT - 1, &r, &e));
        CHECK_INT(r.spans, ==, 2);
        CHECK_INT(r.tokens, ==, SENT - 3);
        CHECK_INT(g.n, ==, 3);
        for (uint32_t i = 0; i < g.n; i++) {
            CHECK_INT(g.ev[i].action, ==, POL_EXPAND);
            CHECK_INT(g.ev[i].reason, ==, POL_R_REQUEST);
            CHECK(g.ev[i].bytes_freed ==
                  (int64_t)g.ev[i].bytes_before - (int64_t)g.ev[i].bytes_after);
        }
        /* each part over the rows held before it when it ran (the later part saw the others) */
        check_fresh(&f, &s, SENT, SENT + 2);
        check_fresh(&f, &s, SENT + 6, 2 * SENT - 1);
        /* a whole pooled sentence in one go */
        CHECK_OK(compact(&s, 2 * SENT, 3 * SENT - 1));
        CHECK_OK(rt_sess_expand_span(f.rt, &s, 2 * SENT, 3 * SENT - 1, &r, &e));
        CHECK_INT(r.tokens, ==, SENT);
        check_fresh(&f, &s, 2 * SENT, 3 * SENT - 1);
        /* the held model positions are their ranks, and the next token's follows them */
        float next1;
        kv_session_next_mpos(f.st, s.kv, &next1);
        uint32_t nrow = 0;
        kv_lane_size(f.st, s.kv, 0, 0, &nrow, NULL);
        kv_row_meta_t *meta = malloc(sizeof *meta * (nrow ? nrow : 1));
        CHECK_OK(kv_lane_read(f.st, s.kv, 0, 0, 0, nrow, meta, NULL, NULL));
        uint32_t rank = 0;
        for (uint32_t i = 0; i < nrow; i++) {
            const float mp = meta[i].pos - meta[i].shift;
            if (i > 0 && mp == meta[i - 1].pos - meta[i - 1].shift)
                continue; /* rows sharing a position */
            CHECK_MSG(mp == (float)rank, "row %u at model position %g, rank %u", i, mp, rank);
            rank++;
        }
        free(meta);
        CHECK_MSG(next1 == (float)rank, "next model position %g after %u held", next1, rank);
        CHECK(next1 <= (float)N_CTX);
        /* nothing left to expand there; the transcript and the store agree */
        err_clear(&e);
        CHECK_INT(rt_sess_expand_span(f.rt, &s, SENT, 3 * SENT - 1, &r, &e), ==, ERR_NOTFOUND);
        CHECK_INT(rt_sess_expand_span(f.rt, &s, 0, 9999, &r, &e), ==, ERR_RANGE);
        pol_stats_t ps;
        pol_stats(s.pol, &ps);
        CHECK_INT(ps.expansions, ==, 4);
        CHECK_INT(ps.expand_tokens, ==, 2 * SENT);
        /* the policy's state (held ranges, figures) survives a save and a load */
        uint8_t *buf = NULL, *buf2 = NULL;
        size_t len = 0, len2 = 0;
        CHECK_OK(pol_save(s.pol, &buf, &len));
        pol_config_t pc = {.name = "pool", .store = f.st, .sid = s.kv, .model = *rt_model(f.rt)};
        pol_t *q = NULL;
        CHECK_OK(pol_new(&pc, &q, &e));
        if (q) {
            CHECK_OK(pol_load(q, buf, len, &e));
            CHECK_OK(pol_save(q, &buf2, &len2));
            CHECK(len == len2 && memcmp(buf, buf2, len) == 0);
            pol_stats_t qs;
            pol_stats(q, &qs);
            CHECK_INT(qs.expansions, ==, 4);
            pol_cspan_t *qc = NULL;
            uint32_t nq = 0;
            CHECK_OK(pol_expand_spans(q, SENT, 3 * SENT - 1, &qc, &nq, &e));
            CHECK_INT(nq, ==, 0); /* expanded and held */
            free(qc);
        }
        pol_destroy(&q);
        free(buf);
        free(buf2);
        CHECK_OK(kv_store_check(f.st, &e));
        /* and the session goes on */
        int32_t more[8];
        rtu_tokens(more, 8, 77);
        CHECK_OK(rtu_feed(f.rt, &s, more, 8, &e));
        CHECK_OK(kv_store_check(f.st, &e));
        const uint32_t kv = s.kv;
        rt_sess_fini(&s);
        kv_session_destroy(f.st, kv);
    }
    fx_close(&f);
}

/* Under a hard limit, room is made by compacting other sentences (events with reason
 * "expand"); the session never holds more than its limit; the events add up. */
static void test_budget_never_crossed(void)
{
    fixture_t f;
    if (fx_open(&f, 22))
        return;
    rt_sess_t s;
    evlog_t g = {0};
    /* the budget: what 5 sentences' raw rows take, plus an eighth */
    if (sess_open_ev(&f, &s, &g, NULL, 0, 0))
        return;
    if (sentences(&f, &s, 5, 300))
        return;
    const size_t three = kv_session_bytes(f.st, s.kv);
    const uint32_t kv0 = s.kv;
    rt_sess_fini(&s);
    kv_session_destroy(f.st, kv0);
    const size_t hard = three + three / 8;
    if (sess_open_ev(&f, &s, &g, NULL, 0, hard))
        return;
    if (sentences(&f, &s, 8, 300) || compact(&s, SENT, 2 * SENT - 1))
        return;
    kv_stats_t ks;
    kv_session_stats(f.st, s.kv, &ks);
    const size_t start = ks.bytes;
    g.n = 0;
    err_info_t e;
    err_clear(&e);
    rt_expand_result_t r;
    int rc = rt_sess_expand_span(f.rt, &s, SENT, 2 * SENT - 1, &r, &e);
    CHECK_MSG(rc == 0, "expand under %zu bytes: %s", hard, err_msg(&e));
    kv_session_stats(f.st, s.kv, &ks);
    CHECK_MSG(ks.peak <= hard, "peak %zu over the hard limit %zu", ks.peak, hard);
    int64_t sum = 0;
    uint32_t room = 0, expands = 0;
    for (uint32_t i = 0; i < g.n; i++) {
        sum += g.ev[i].bytes_freed;
        room += g.ev[i].reason == POL_R_EXPAND;
        expands += g.ev[i].action == POL_EXPAND;
        if (i)
            CHECK_INT(g.ev[i].bytes_before, ==, g.ev[i - 1].bytes_after);
    }
    CHECK_INT(expands, ==, 1);
    CHECK_MSG(room > 0, "no compaction made room (%u events)", g.n);
    CHECK_INT((int64_t)start - sum, ==, (int64_t)ks.bytes);
    CHECK_INT(r.bytes, ==, (int64_t)ks.bytes - (int64_t)start);
    if (!rc)
        check_fresh(&f, &s, SENT, 2 * SENT - 1);
    CHECK_OK(kv_store_check(f.st, &e));
    /* an expanded span is held raw: the next rounds of compaction leave it */
    pol_cspan_t *c = NULL;
    uint32_t nc = 0;
    CHECK_OK(pol_expand_spans(s.pol, SENT, 2 * SENT - 1, &c, &nc, &e));
    CHECK_INT(nc, ==, 0);
    free(c);
    CHECK_OK(sentences(&f, &s, 2, 400));
    lane_rows_t x;
    lane_get(&f, s.kv, 0, &x);
    uint32_t raw = 0;
    for (uint32_t i = 0; i < x.n; i++)
        raw += x.m[i].pos >= SENT && x.m[i].pos < 2 * SENT && x.m[i].kind == KV_KIND_RAW;
    CHECK_INT(raw, ==, SENT);
    lane_free(&x);
    kv_session_stats(f.st, s.kv, &ks);
    CHECK(ks.peak <= hard);
    /* a budget that cannot be kept otherwise comes first: shrinking lets go of the hold */
    int64_t freed = 0;
    CHECK_OK(rt_sess_shrink(f.rt, &s, ks.bytes / 2, &freed, &e));
    CHECK(freed > 0);
    lane_get(&f, s.kv, 0, &x);
    raw = 0;
    for (uint32_t i = 0; i < x.n; i++)
        raw += x.m[i].pos >= SENT && x.m[i].pos < 2 * SENT && x.m[i].kind == KV_KIND_RAW;
    CHECK_MSG(raw < SENT, "the held span kept %u raw rows through a shrink", raw);
    lane_free(&x);
    rt_sess_fini(&s);
    fx_close(&f);
}

/* With no room to make (everything else pinned), the expansion is refused and the session is
 * exactly as it was. */
static void test_no_room_changes_nothing(void)
{
    fixture_t f;
    if (fx_open(&f, 23))
        return;
    rt_sess_t s;
    evlog_t g = {0};
    if (sess_open_ev(&f, &s, &g, NULL, 0, 0))
        return;
    if (sentences(&f, &s, 4, 500) || compact(&s, SENT, 2 * SENT - 1))
        return;
    err_info_t e;
    err_clear(&e);
    CHECK_OK(pol_pin_span(s.pol, 0, SENT - 1, &e));
    CHECK_OK(pol_pin_span(s.pol, 2 * SENT, s.n_past - 1, &e));
    const size_t now = kv_session_bytes(f.st, s.kv);
    CHECK_OK(kv_session_set_limits(f.st, s.kv, now + 64, now, NULL));
    sess_rows_t before, after;
    sess_get(&f, s.kv, &before);
    g.n = 0;
    rt_expand_result_t r;
    CHECK_INT(rt_sess_expand_span(f.rt, &s, SENT, 2 * SENT - 1, &r, &e), ==, ERR_BUDGET);
    CHECK_MSG(strstr(e.msg, "no room"), "message: %s", e.msg);
    CHECK_INT(r.spans, ==, 0);
    CHECK_INT(g.n, ==, 0);
    sess_get(&f, s.kv, &after);
    sess_same(&f, &before, &after, 0.0);
    sess_free(&f, &before);
    sess_free(&f, &after);
    CHECK_OK(kv_store_check(f.st, &e));
    /* the automatic choice says so too, and is no error */
    CHECK_OK(rt_sess_expand_auto(f.rt, &s, 0, POL_R_TURN, &r, &e));
    CHECK_INT(r.spans, ==, 0);
    CHECK(r.note[0] != 0);
    rt_sess_fini(&s);
    fx_close(&f);
}

/* Any allocation of an expansion may fail: the session is then as it was (keys moved up and
 * back to within 1e-5), or the expansion went through whole. */
static void test_failure_at_each_allocation(void)
{
    fixture_t f;
    if (fx_open(&f, 24))
        return;
    bool done = false;
    uint32_t refused = 0;
    for (long at = 1; at < 400 && !done; at++) {
        rt_sess_t s;
        if (sess_open(&f, &s, NULL, 0))
            return;
        int32_t more[4];
        rtu_tokens(more, 4, 99);
        err_info_t e0;
        err_clear(&e0);
        if (sentences(&f, &s, 4, 600) || compact(&s, SENT, 2 * SENT - 1) ||
            compact(&s, 3 * SENT, 4 * SENT - 1) || rtu_feed(f.rt, &s, more, 4, &e0))
            return;
        sess_rows_t before, after;
        sess_get(&f, s.kv, &before);
        err_info_t e;
        err_clear(&e);
        rt_expand_result_t r;
        f.hook = (hook_t){.fail_at = at};
        int rc = rt_sess_expand_span(f.rt, &s, SENT, 2 * SENT - 1, &r, &e);
        const bool hit = f.hook.calls >= at;
        f.hook = (hook_t){0};
        if (rc) {
            CHECK_INT(rc, ==, ERR_NOMEM);
            sess_get(&f, s.kv, &after);
            sess_same(&f, &before, &after, 1e-5);
            sess_free(&f, &after);
            refused++;
        } else {
            CHECK_INT(r.tokens, ==, SENT);
            check_fresh(&f, &s, SENT, 2 * SENT - 1);
            done = !hit;
        }
        sess_free(&f, &before);
        CHECK_OK(kv_store_check(f.st, &e));
        const uint32_t kv = s.kv;
        rt_sess_fini(&s);
        kv_session_destroy(f.st, kv);
    }
    CHECK_MSG(done, "the expansion never went through without a failure");
    CHECK_MSG(refused > 0, "no allocation failure was seen");
    fx_close(&f);
}

/* The automatic choice: a turn that repeats a pooled sentence's tokens brings that one back
 * (lexical weight 1: the random model's attention says nothing); expand_tokens bounds it. */
static void test_auto_finds_the_repeated_span(void)
{
    fixture_t f;
    if (fx_open(&f, 25))
        return;
    const pol_param_t params[] = {{"expand_lex", "1"},
                                  {"expand_min", "1.5"},
                                  {"expand_spans", "1"},
                                  {"expand_query", "16"},
                                  {"sinks", "4"}};
    for (int bounded = 0; bounded < 2; bounded++) {
        rt_sess_t s;
        evlog_t g = {0};
        if (sess_open_ev(&f, &s, &g, params, 5, 0))
            return;
        if (sentences(&f, &s, 5, 800) || compact(&s, 4, 4 * SENT - 1))
            return;
        int32_t turn[SENT];
        rtu_tokens(turn, SENT, 800 + 2); /* the third sentence's tokens: [32, 48) */
        err_info_t e;
        err_clear(&e);
        CHECK_OK(rtu_feed(f.rt, &s, turn, SENT, &e));
        g.n = 0;
        rt_expand_result_t r;
        CHECK_OK(rt_sess_expand_auto(f.rt, &s, bounded ? SENT - 1 : 0, POL_R_TURN, &r, &e));
        CHECK_INT(r.candidates, ==, 4);
        if (bounded) {
            CHECK_INT(r.spans, ==, 0);
            CHECK_MSG(strstr(r.note, "longer"), "note: %s", r.note);
        } else {
            CHECK_INT(r.spans, ==, 1);
            CHECK_INT(g.n, ==, 1);
            CHECK_INT(g.ev[0].first, ==, 2 * SENT);
            CHECK_INT(g.ev[0].last, ==, 3 * SENT - 1);
            CHECK_INT(g.ev[0].reason, ==, POL_R_TURN);
            check_fresh(&f, &s, 2 * SENT, 3 * SENT - 1);
        }
        CHECK_OK(kv_store_check(f.st, &e));
        const uint32_t kv = s.kv;
        rt_sess_fini(&s);
        kv_session_destroy(f.st, kv);
    }
    fx_close(&f);
}

/* Sentences of words the tiny tokenizer has pieces for; the third holds what the turn asks. */
static const char *const STORY[] = {
    " the day was long and they had not come back.",
    " she said that he would be here by the time it was over.",
    " my number is seven and it is a good one.",
    " we went to the house and then we went out.",
    " all of them were there when i came in.",
    " he could see that she was not in the room.",
    " there was no one who had been so good to her.",
    " they did not know what to do with all of it.",
    " it was the last time that she had seen him.",
    " if you are not here then we will have to go.",
    " what they had done was not so bad after all.",
    " you will be with us when we go to the sea.",
    " this was the first time he had been there.",
    " no one said a word for a long time.",
    " but he was not the man she had thought.",
    " so they went on and did not look back.",
};

/* Feeds text a token at a time; *at advances past its tokens. */
static int feed_text(fixture_t *f, rt_sess_t *s, const char *text, uint32_t *at)
{
    int32_t *ids = NULL;
    size_t n = 0;
    err_info_t e;
    err_clear(&e);
    int rc = tok_encode(mdl_tok(f->m), text, strlen(text), false, false, &ids, &n);
    for (size_t i = 0; !rc && i < n; i++) /* a token a step, as decoding feeds them */
        rc = rtu_feed(f->rt, s, ids + i, 1, &e);
    free(ids);
    if (rc)
        check_fail_(__FILE__, __LINE__, "feeding '%s': %s", text, err_msg(&e));
    *at += (uint32_t)n;
    return rc;
}

/* Under a budget, old sentences are pooled and their gists merged into spans of several
 * sentences; the automatic choice cuts such a span into the sentences it was made of (the
 * policy's segmenter over the transcript's pieces) and brings back the one the turn asks
 * about, not the whole span. The turn may end in the answer's first words, or in a header
 * for the reply (a line that ends in a line break, as a chat template's does): the header's
 * words are not the question, and here they are those of the first sentence. */
static void test_auto_brings_back_one_sentence_of_a_merged_span(void)
{
    const char *const turns[] = {" what is my number? it is",
                                 " what is my number?\nthey had not come back\n"};
    for (int t = 0; t < 2; t++) {
        fixture_t f;
        if (fx_open_ctx(&f, 26, 256))
            return;
        const pol_param_t params[] = {
            {"expand", "0"}, {"expand_lex", "1"}, {"expand_spans", "1"}, {"sinks", "2"},
            {"merge", "2"},  {"recent", "8"},     {"recent_frac", "0"},  {"min_gist", "1"}};
        rt_sess_t s;
        evlog_t g = {0};
        /* 96 rows a lane: 16 sentences pooled into 2 rows each, the open one and the recent
         * rows do not fit, and the oldest gists are merged */
        const size_t row = (size_t)f.nl * 2 * f.hd * sizeof(float);
        if (sess_open_ev(&f, &s, &g, params, 8, 96 * row))
            return;
        uint32_t start[17], at = 0;
        for (uint32_t k = 0; k < 16; k++) {
            start[k] = at;
            if (feed_text(&f, &s, STORY[k], &at))
                return;
        }
        start[16] = at;
        pol_cspan_t *cs = NULL;
        uint32_t nc = 0;
        err_info_t e;
        err_clear(&e);
        CHECK_OK(pol_expand_spans(s.pol, 0, at - 1, &cs, &nc, &e));
        bool merged = false; /* the third sentence lies in a span of more than itself */
        for (uint32_t i = 0; i < nc; i++)
            merged =
                merged || (cs[i].first <= start[2] && cs[i].last >= start[3] - 1 &&
                           cs[i].last - cs[i].first > start[3] - 1 - start[2] && cs[i].level >= 2);
        free(cs);
        CHECK_MSG(merged, "the budget merged no span over the third sentence");
        /* room for the sentence to come back (the choice, not the room, is tested here) */
        CHECK_OK(kv_session_set_limits(f.st, s.kv, 192 * row, 168 * row, NULL));
        if (feed_text(&f, &s, turns[t], &at))
            return;
        g.n = 0;
        rt_expand_result_t r;
        CHECK_OK(rt_sess_expand_auto(f.rt, &s, 0, POL_R_TURN, &r, &e));
        CHECK_MSG(r.spans == 1, "turn %d: expanded %u spans: %s", t, r.spans, r.note);
        const pol_event_t *ev = NULL;
        for (uint32_t i = 0; i < g.n; i++)
            if (g.ev[i].action == POL_EXPAND)
                ev = &g.ev[i];
        CHECK_MSG(ev, "turn %d: no expand event", t);
        if (ev) {
            CHECK_INT(ev->first, ==, start[2]);
            CHECK_INT(ev->last, ==, start[3] - 1);
        }
        CHECK_OK(kv_store_check(f.st, &e));
        const uint32_t kv = s.kv;
        rt_sess_fini(&s);
        kv_session_destroy(f.st, kv);
        fx_close(&f);
    }
}

int main(void)
{
    RUN(test_expanded_equals_fresh_prefill);
    RUN(test_budget_never_crossed);
    RUN(test_no_room_changes_nothing);
    RUN(test_failure_at_each_allocation);
    RUN(test_auto_finds_the_repeated_span);
    RUN(test_auto_brings_back_one_sentence_of_a_merged_span);
    return check_done();
}
