/*
 * tests/test_policy_util.h — a fixture for the policy tests: a small KV store with one
 * session, a policy on it, synthetic rows appended through the policy's hooks the way a
 * caller runs them (pol_next, pol_reserve, kv_commit, pol_commit), a recording event sink,
 * and a fake runner for learned gists that checks the mask it is given. Header-only (static
 * functions), included by one test program at a time.
 *
 * Synthetic rows: lane l's K row at position t is u_l rotated by RoPE at t (so pooling
 * members gives u_l rotated at their mean position exactly), V is a reproducible function
 * of (lane, position), retention log-beta is a reproducible value in [-1, 0).
 */
#ifndef GISTD_TESTS_TEST_POLICY_UTIL_H
#define GISTD_TESTS_TEST_POLICY_UTIL_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "kvstore/kvstore.h"
#include "policy/policy.h"
#include "tests/test_rope_util.h"
#include "tests/check.h"

#define PT_LAYERS 2
#define PT_HEADS  2
#define PT_LANES  (PT_LAYERS * PT_HEADS)
#define PT_HD     8
#define PT_MAXEV  4096

static inline uint64_t pt_mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* In [-1, 1), reproducible. */
static inline float pt_val(uint64_t tag, uint32_t a, uint32_t b, uint32_t c)
{
    uint64_t h = pt_mix(tag * 0x100000001b3ull ^ ((uint64_t)a << 40) ^ ((uint64_t)b << 12) ^ c);
    return (float)((double)(h >> 11) * 0x1p-53 * 2.0 - 1.0);
}

/* RoPE written from its definition (adjacent pairs, base 10000, all dims), in double. */
static inline void pt_rope(double pos, const double *in, double *out)
{
    for (int i = 0; i < PT_HD / 2; i++) {
        double th = pos * pow(10000.0, -2.0 * i / PT_HD);
        out[2 * i] = in[2 * i] * cos(th) - in[2 * i + 1] * sin(th);
        out[2 * i + 1] = in[2 * i] * sin(th) + in[2 * i + 1] * cos(th);
    }
}

/* The store's rotation: the model's (model/rope.h) with the parameters pt_rope is written
 * from, so pooled rows are checked against an independent rotation. */
static inline const kv_rope_t *pt_rope_kv(void)
{
    static tr_rope_t t;
    static const kv_rope_t *r;
    if (!r)
        r = tr_rope_init(&t, PT_HD, PT_HD, 10000.0, 0.0, NULL);
    return r;
}

static inline void pt_k(uint32_t lane, double pos, float *k)
{
    double u[PT_HD], r[PT_HD];
    for (int d = 0; d < PT_HD; d++)
        u[d] = pt_val(1, lane, 0, (uint32_t)d);
    pt_rope(pos, u, r);
    for (int d = 0; d < PT_HD; d++)
        k[d] = (float)r[d];
}

static inline float pt_v(uint32_t lane, uint32_t pos, uint32_t d)
{
    return pt_val(2, lane, pos, d);
}

static inline float pt_logbeta(uint32_t lane, uint32_t pos)
{
    return -0.5f * (pt_val(3, lane, pos, 0) + 1.0f) - 1e-3f;
}

typedef struct pt_fx {
    kv_store_t *st;
    uint32_t sid;
    pol_t *p;
    pol_event_t ev[PT_MAXEV];
    uint32_t n_ev;
    size_t max_bytes; /* highest session bytes seen after any call */
    /* the fake runner */
    uint32_t runs;
    pol_run_t last_run;
    int32_t run_tokens[64];
    float see[64][2];
    uint32_t visible; /* stored rows of lane 0 the last run could see */
    bool refuse_runs; /* the runner answers ERR_BUDGET */
    bool old_heavy;   /* new rows start with accumulated attention 1000 - pos */
} pt_fx_t;

static inline void pt_emit(void *ctx, const pol_event_t *ev)
{
    pt_fx_t *f = ctx;
    if (f->n_ev < PT_MAXEV)
        f->ev[f->n_ev++] = *ev;
}

static inline size_t pt_bytes(pt_fx_t *f)
{
    kv_stats_t s;
    kv_session_stats(f->st, f->sid, &s);
    if (s.bytes > f->max_bytes)
        f->max_bytes = s.bytes;
    return s.bytes;
}

/* Commits n rows at the next positions with the synthetic data. */
static inline int pt_commit_rows(pt_fx_t *f, const int32_t *tok, uint32_t n, float kscale)
{
    uint32_t len;
    kv_transcript_len(f->st, f->sid, &len);
    float *k = malloc(sizeof(float) * PT_LANES * n * PT_HD);
    float *v = malloc(sizeof(float) * PT_LANES * n * PT_HD);
    float *lb = malloc(sizeof(float) * PT_LANES * n);
    float *acc = calloc(PT_LANES * n, sizeof(float));
    const float *kp[PT_LANES], *vp[PT_LANES], *lp[PT_LANES], *ap[PT_LANES];
    uint32_t *t = malloc(sizeof(uint32_t) * n);
    for (uint32_t l = 0; l < PT_LANES; l++) {
        for (uint32_t i = 0; i < n; i++) {
            float *kr = k + ((size_t)l * n + i) * PT_HD;
            pt_k(l, len + i, kr);
            for (int d = 0; d < PT_HD; d++) {
                kr[d] *= kscale;
                v[((size_t)l * n + i) * PT_HD + d] = pt_v(l, len + i, (uint32_t)d);
            }
            lb[(size_t)l * n + i] = pt_logbeta(l, len + i);
            acc[(size_t)l * n + i] = f->old_heavy ? 1000.0f - (float)(len + i) : 0.0f;
        }
        kp[l] = k + (size_t)l * n * PT_HD;
        vp[l] = v + (size_t)l * n * PT_HD;
        lp[l] = lb + (size_t)l * n;
        ap[l] = acc + (size_t)l * n;
    }
    for (uint32_t i = 0; i < n; i++)
        t[i] = (uint32_t)tok[i];
    kv_append_t a = {.n = n, .tokens = t, .k = kp, .v = vp, .logbeta = lp, .attn_acc = ap};
    err_info_t e;
    err_clear(&e);
    int rc = kv_commit(f->st, f->sid, &a, &e);
    if (rc)
        fprintf(stderr, "# commit: %s\n", err_msg(&e));
    free(k);
    free(v);
    free(lb);
    free(acc);
    free(t);
    return rc;
}

/* The fake runner: records the mask, counts what lane 0 lets it see, commits gist rows. */
static inline int pt_run(void *ctx, const pol_run_t *r, err_info_t *e)
{
    pt_fx_t *f = ctx;
    f->runs++;
    f->last_run = *r;
    for (uint32_t i = 0; i < r->n && i < 64; i++)
        f->run_tokens[i] = r->tokens[i];
    for (uint32_t i = 0; i < r->n_see && i < 64; i++) {
        f->see[i][0] = r->see[i][0];
        f->see[i][1] = r->see[i][1];
    }
    if (f->refuse_runs)
        return err_set(e, ERR_BUDGET, "runner: refused by the test");
    uint32_t rows = 0;
    kv_lane_size(f->st, f->sid, 0, 0, &rows, NULL);
    kv_row_meta_t *m = malloc(sizeof *m * (rows + 1));
    kv_lane_read(f->st, f->sid, 0, 0, 0, rows, m, NULL, NULL);
    f->visible = 0;
    for (uint32_t i = 0; i < rows; i++) {
        bool vis = r->see_gists && m[i].kind != KV_KIND_RAW;
        for (uint32_t j = 0; j < r->n_see; j++)
            vis |= m[i].pos >= r->see[j][0] && m[i].pos <= r->see[j][1];
        f->visible += vis;
    }
    free(m);
    int rc = kv_reserve(f->st, f->sid, r->n, e);
    if (rc)
        return rc;
    return pt_commit_rows(f, r->tokens, r->n, 1.0f);
}

typedef struct pt_opts {
    const char *name;
    const pol_param_t *params;
    uint32_t n_params;
    size_t hard, soft;
    uint32_t block_rows;
    uint32_t n_gist;    /* learned gist tokens of the fake model */
    bool thought_gists; /* trained after each thought (gistd.gist.mask "thought") */
    bool gates;
} pt_opts_t;

static inline int pt_open(pt_fx_t *f, const pt_opts_t *o, err_info_t *e)
{
    memset(f, 0, sizeof *f);
    kv_store_config_t sc = {.n_layer = PT_LAYERS,
                            .n_head_kv = PT_HEADS,
                            .head_dim = PT_HD,
                            .block_rows = o->block_rows ? o->block_rows : 8,
                            .hot_type = DT_F32,
                            /* a limit no test reaches: blocks one by one (no payload runs,
                             * kvstore.h), so that a block's bytes go with it, as in the daemon,
                             * which sets a limit before it shrinks a session */
                            .hard_limit = (size_t)1 << 40};
    int rc = kv_store_new(&sc, &f->st, e);
    if (rc)
        return rc;
    kv_session_config_t ss = {.hard_limit = o->hard, .soft_limit = o->soft};
    rc = kv_session_create(f->st, &ss, &f->sid, e);
    if (rc)
        return rc;
    pol_config_t pc = {.name = o->name,
                       .params = o->params,
                       .n_params = o->n_params,
                       .store = f->st,
                       .sid = f->sid,
                       .model = {.n_gist = o->n_gist,
                                 .gist_first = 500,
                                 .gist_sinks = 1,
                                 .gist_thought = o->thought_gists,
                                 .has_gates = o->gates,
                                 .rope = *pt_rope_kv()},
                       .runner = {.ctx = f, .run = pt_run},
                       .emit = pt_emit,
                       .emit_ctx = f};
    return pol_new(&pc, &f->p, e);
}

static inline void pt_close(pt_fx_t *f)
{
    pol_destroy(&f->p);
    kv_store_destroy(&f->st);
}

/* Runs n tokens (ids 10+i, text pieces given) through the caller's loop, at most ubatch at a
 * time. Returns the first error. */
static inline int pt_feed(pt_fx_t *f, const char *const *pieces, uint32_t n, uint32_t ubatch,
                          err_info_t *e)
{
    pol_text_t *t = malloc(sizeof *t * n);
    int32_t *ids = malloc(sizeof *ids * n);
    for (uint32_t i = 0; i < n; i++) {
        t[i] = (pol_text_t){pieces[i], (uint32_t)strlen(pieces[i])};
        ids[i] = 10 + (int32_t)(i % 400);
    }
    int rc = 0;
    for (uint32_t i = 0; i < n && !rc;) {
        uint32_t k;
        rc = pol_next(f->p, t + i, n - i, &k, e);
        if (rc)
            break;
        k = k < ubatch ? k : ubatch;
        rc = pol_reserve(f->p, k, e);
        if (rc)
            break;
        rc = pt_commit_rows(f, ids + i, k, 1.0f);
        if (!rc)
            rc = pol_commit(f->p, t + i, k, e);
        pt_bytes(f);
        i += k;
    }
    free(t);
    free(ids);
    return rc;
}

/* The positions lane l holds, into pos (cap entries); returns the count. */
static inline uint32_t pt_positions(pt_fx_t *f, uint32_t l, float *pos, kv_row_meta_t *meta,
                                    uint32_t cap)
{
    uint32_t rows = 0;
    kv_lane_size(f->st, f->sid, l / PT_HEADS, l % PT_HEADS, &rows, NULL);
    if (rows > cap)
        rows = cap;
    kv_row_meta_t *m = meta ? meta : malloc(sizeof *m * (rows + 1));
    kv_lane_read(f->st, f->sid, l / PT_HEADS, l % PT_HEADS, 0, rows, m, NULL, NULL);
    for (uint32_t i = 0; pos && i < rows; i++)
        pos[i] = m[i].pos;
    if (!meta)
        free(m);
    return rows;
}

/* Events' bytes add up: sum of bytes_freed equals the bytes the events say they freed, and
 * each event's before/after are consistent. */
static inline int64_t pt_event_freed(const pt_fx_t *f)
{
    int64_t s = 0;
    for (uint32_t i = 0; i < f->n_ev; i++)
        s += f->ev[i].bytes_freed;
    return s;
}

/* Words with a sentence end every `every` tokens: " w", " w", ..., ".", repeated. */
static inline const char **pt_text(uint32_t n, uint32_t every)
{
    const char **p = malloc(sizeof *p * n);
    for (uint32_t i = 0; i < n; i++)
        p[i] = i == 0 ? "" : (i % every == 0 ? "." : " w");
    return p;
}

#endif
