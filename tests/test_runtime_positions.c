/*
 * Model positions in the session runtime (runtime/positions.c, kvstore/remap.c): a key the
 * store turns to a new model position equals the key the model writes there (every layer:
 * a uniform shift changes no relative position, so the hidden states are the same); `full`
 * stops at the trained context with ERR_CONTEXT; a compacting policy runs for several
 * contexts with every model position inside the context and the store consistent; a
 * shifted session's snapshot restores it exactly; remap's failures change nothing.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "kvstore/kv_pool.h"
#include "model/tiny.h"
#include "runtime/runtime.h"
#include "tests/check.h"
#include "tests/test_runtime_util.h"

#define N_CTX 64

typedef struct fixture {
    mdl_t *m;
    kv_store_t *st;
    rt_t *rt;
} fixture_t;

static int fx_open(fixture_t *f, uint64_t seed, size_t hard)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/tiny-pos-%llu.gguf", check_tmpdir(), (unsigned long long)seed);
    mdl_tiny_cfg_t cfg;
    mdl_tiny_cfg_default(&cfg);
    cfg.seed = seed;
    cfg.n_ctx = N_CTX;
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
                            .hard_limit = hard};
    if (kv_store_new(&sc, &f->st, &e) || rt_new(f->m, f->st, &f->rt, &e)) {
        check_fail_(__FILE__, __LINE__, "store: %s", err_msg(&e));
        return -1;
    }
    return 0;
}

static void fx_close(fixture_t *f)
{
    rt_destroy(&f->rt);
    kv_store_destroy(&f->st);
    mdl_destroy(&f->m);
}

static int sess_open(fixture_t *f, rt_sess_t *s, const char *policy, size_t hard)
{
    kv_session_config_t kc = {.hard_limit = hard, .soft_limit = hard / 8 * 7};
    uint32_t kv;
    err_info_t e;
    err_clear(&e);
    rt_sess_config_t rc = {.policy = policy};
    if (kv_session_create(f->st, &kc, &kv, &e) || rt_sess_init(f->rt, s, kv, &rc, &e)) {
        check_fail_(__FILE__, __LINE__, "session: %s", err_msg(&e));
        return -1;
    }
    return 0;
}

static float mpos_next(const fixture_t *f, const rt_sess_t *s)
{
    float p = -1.0f;
    CHECK_OK(kv_session_next_mpos(f->st, s->kv, &p));
    return p;
}

/* A uniform shift of every row by d equals running the same tokens d positions later. */
static void test_remap_equals_model_rope(void)
{
    fixture_t f;
    if (fx_open(&f, 11, 0))
        return;
    const mdl_hparams_t *hp = mdl_hparams(f.m);
    const uint32_t n = 20, hd = hp->head_dim, nkv = hp->n_head_kv;
    int32_t tok[20];
    rtu_tokens(tok, n, 1);
    rt_sess_t a, b;
    if (sess_open(&f, &a, "full", 0) || sess_open(&f, &b, "full", 0))
        return;
    err_info_t e;
    err_clear(&e);
    /* b starts 9 positions later: its empty position space moved up */
    const float z = 0.0f, nine = 9.0f;
    CHECK_OK(kv_session_remap(f.st, b.kv, 1, &z, &nine, &rt_model(f.rt)->rope, &e));
    CHECK(mpos_next(&f, &b) == 9.0f);
    CHECK_OK(rtu_feed(f.rt, &a, tok, n, &e));
    CHECK_OK(rtu_feed(f.rt, &b, tok, n, &e));
    /* a moves up to where b is; every key must now be b's */
    CHECK_OK(kv_session_remap(f.st, a.kv, 1, &z, &nine, &rt_model(f.rt)->rope, &e));
    CHECK(mpos_next(&f, &a) == mpos_next(&f, &b));
    float *ka = malloc(sizeof(float) * n * hd), *kb = malloc(sizeof(float) * n * hd);
    float *va = malloc(sizeof(float) * n * hd), *vb = malloc(sizeof(float) * n * hd);
    kv_row_meta_t ma[20], mb[20];
    double worst0 = 0.0, worst = 0.0;
    for (uint32_t l = 0; l < hp->n_layer * nkv; l++) {
        CHECK_OK(kv_lane_read(f.st, a.kv, l / nkv, l % nkv, 0, n, ma, ka, va));
        CHECK_OK(kv_lane_read(f.st, b.kv, l / nkv, l % nkv, 0, n, mb, kb, vb));
        for (uint32_t j = 0; j < n; j++) {
            CHECK(ma[j].pos == (float)j && mb[j].pos == (float)j);
            CHECK(ma[j].pos - ma[j].shift == (float)(j + 9));
            CHECK(mb[j].pos - mb[j].shift == (float)(j + 9));
            for (uint32_t d = 0; d < hd; d++) {
                double dk = fabs((double)ka[j * hd + d] - kb[j * hd + d]);
                double dv = fabs((double)va[j * hd + d] - vb[j * hd + d]);
                if (l < nkv)
                    worst0 = dk > worst0 ? dk : worst0;
                worst = dk > worst ? dk : worst;
                worst = dv > worst ? dv : worst;
            }
        }
    }
    /* layer 0's keys depend on the token alone: only the rotation differs */
    CHECK_MSG(worst0 < 1e-6, "layer 0: |store's turn - model's rope| = %g", worst0);
    CHECK_MSG(worst < 1e-4, "all layers: largest difference %g", worst);
    /* and back down: a moves to 0 again and b to where a began */
    const float up = 9.0f;
    CHECK_OK(kv_session_remap(f.st, b.kv, 1, &up, &z, &rt_model(f.rt)->rope, &e));
    CHECK(mpos_next(&f, &b) == (float)n);
    CHECK_OK(kv_store_check(f.st, &e));
    free(ka);
    free(kb);
    free(va);
    free(vb);
    rt_sess_fini(&a);
    rt_sess_fini(&b);
    fx_close(&f);
}

/* `full` keeps every row: at the context it refuses, losing nothing. */
static void test_full_stops_at_context(void)
{
    fixture_t f;
    if (fx_open(&f, 12, 0))
        return;
    rt_sess_t s;
    if (sess_open(&f, &s, "full", 0))
        return;
    int32_t tok[N_CTX + 8];
    rtu_tokens(tok, N_CTX + 8, 2);
    err_info_t e;
    err_clear(&e);
    CHECK_OK(rtu_feed(f.rt, &s, tok, N_CTX - 4, &e));
    /* a chunk that crosses the context is cut to what still fits */
    CHECK_OK(rtu_feed(f.rt, &s, tok + N_CTX - 4, 4, &e));
    CHECK_INT(s.n_past, ==, N_CTX);
    err_clear(&e);
    CHECK_INT(rtu_feed(f.rt, &s, tok + N_CTX, 1, &e), ==, ERR_CONTEXT);
    CHECK_MSG(strstr(e.msg, "64") && strstr(e.msg, "full"), "message: %s", e.msg);
    CHECK_INT(s.n_past, ==, N_CTX);
    CHECK_OK(kv_store_check(f.st, &e));
    rt_sess_fini(&s);
    fx_close(&f);
}

/* Every lane's model positions, and the next one, stay inside the context. */
static void check_inside(const fixture_t *f, const rt_sess_t *s)
{
    const mdl_hparams_t *hp = mdl_hparams(f->m);
    kv_row_meta_t m[256];
    for (uint32_t l = 0; l < hp->n_layer * hp->n_head_kv; l++) {
        uint32_t rows;
        CHECK_OK(kv_lane_size(f->st, s->kv, l / hp->n_head_kv, l % hp->n_head_kv, &rows, NULL));
        if (rows > 256)
            rows = 256;
        CHECK_OK(kv_lane_read(f->st, s->kv, l / hp->n_head_kv, l % hp->n_head_kv, 0, rows, m,
                              NULL, NULL));
        for (uint32_t j = 0; j < rows; j++)
            CHECK_MSG(m[j].pos - m[j].shift >= 0.0f && m[j].pos - m[j].shift < (float)N_CTX,
                      "lane %u row %u at model position %g", l, j, m[j].pos - m[j].shift);
    }
    CHECK(mpos_next(f, s) <= (float)N_CTX);
}

/* A compacting policy goes on for several contexts, positions inside, logits finite; its
 * snapshot restores the shifted rows exactly. */
static void test_endless_and_snapshot(void)
{
    const char *policies[] = {"window", "h2o", "pool", "auto"};
    for (int p = 0; p < 4; p++) {
        fixture_t f;
        if (fx_open(&f, 13, 0))
            return;
        /* half a context's full cache */
        size_t hard;
        {
            uint32_t probe;
            kv_stats_t ks;
            CHECK_OK(kv_session_create(f.st, NULL, &probe, NULL));
            CHECK_OK(kv_reserve(f.st, probe, N_CTX, NULL));
            kv_session_stats(f.st, probe, &ks);
            hard = ks.bytes / 2;
            kv_session_destroy(f.st, probe);
        }
        rt_sess_t s;
        if (sess_open(&f, &s, policies[p], hard))
            return;
        enum { N = 5 * N_CTX };
        int32_t tok[N];
        rtu_tokens(tok, N, 3 + (uint32_t)p);
        /* text with sentence ends, for the segmenter: a '.' piece every 9 tokens */
        const tok_t *tk = mdl_tok(f.m);
        for (int i = 8; tk && i < N; i += 9) {
            int32_t dot = -1;
            for (int32_t id = 0; id < (int32_t)mdl_hparams(f.m)->n_vocab && dot < 0; id++) {
                char buf[8];
                size_t n = tok_piece(tk, id, false, false, buf, sizeof buf);
                if (n == 1 && buf[0] == '.')
                    dot = id;
            }
            if (dot >= 0)
                tok[i] = dot;
        }
        err_info_t e;
        err_clear(&e);
        for (uint32_t i = 0; i < N; i += 16) {
            CHECK_MSG(rtu_feed(f.rt, &s, tok + i, 16, &e) == 0, "%s at %u: %s", policies[p], i,
                      err_msg(&e));
            check_inside(&f, &s);
        }
        CHECK_MSG(s.n_past >= N, "%s: %u positions", policies[p], s.n_past);
        bool finite = true;
        for (uint32_t v = 0; v < mdl_hparams(f.m)->n_vocab; v++)
            finite &= isfinite(s.logits[v]);
        CHECK_MSG(finite, "%s: logits not finite", policies[p]);
        CHECK_MSG(mpos_next(&f, &s) < (float)s.n_past, "%s: never shifted", policies[p]);
        CHECK_OK(kv_store_check(f.st, &e));

        /* snapshot and back: rows, shifts and the next model position */
        char path[600];
        snprintf(path, sizeof path, "%s/shifted-%d.kvs", check_tmpdir(), p);
        CHECK_OK(kv_snapshot_write(f.st, s.kv, path, &e));
        uint32_t back;
        CHECK_OK(kv_snapshot_read(f.st, path, NULL, &back, &e));
        float n1 = -1, n2 = -2;
        kv_session_next_mpos(f.st, s.kv, &n1);
        kv_session_next_mpos(f.st, back, &n2);
        CHECK(n1 == n2);
        const mdl_hparams_t *hp = mdl_hparams(f.m);
        const uint32_t hd = hp->head_dim;
        for (uint32_t l = 0; l < hp->n_layer * hp->n_head_kv; l++) {
            uint32_t r1, r2;
            kv_lane_size(f.st, s.kv, l / hp->n_head_kv, l % hp->n_head_kv, &r1, NULL);
            kv_lane_size(f.st, back, l / hp->n_head_kv, l % hp->n_head_kv, &r2, NULL);
            CHECK_INT(r1, ==, r2);
            if (r1 != r2 || r1 == 0)
                continue;
            kv_row_meta_t *m1 = malloc(sizeof *m1 * r1), *m2 = malloc(sizeof *m2 * r1);
            float *k1 = malloc(sizeof(float) * r1 * hd), *k2 = malloc(sizeof(float) * r1 * hd);
            kv_lane_read(f.st, s.kv, l / hp->n_head_kv, l % hp->n_head_kv, 0, r1, m1, k1, NULL);
            kv_lane_read(f.st, back, l / hp->n_head_kv, l % hp->n_head_kv, 0, r1, m2, k2, NULL);
            for (uint32_t j = 0; j < r1; j++)
                CHECK(m1[j].pos == m2[j].pos && m1[j].shift == m2[j].shift &&
                      m1[j].mass == m2[j].mass);
            CHECK(memcmp(k1, k2, sizeof(float) * r1 * hd) == 0);
            free(m1);
            free(m2);
            free(k1);
            free(k2);
        }
        kv_session_destroy(f.st, back);
        rt_sess_fini(&s);
        fx_close(&f);
    }
}

/* Bad knots and a pending reservation are refused; nothing moves. */
static void test_remap_refusals(void)
{
    fixture_t f;
    if (fx_open(&f, 14, 0))
        return;
    rt_sess_t s;
    if (sess_open(&f, &s, "full", 0))
        return;
    int32_t tok[8];
    rtu_tokens(tok, 8, 4);
    err_info_t e;
    err_clear(&e);
    CHECK_OK(rtu_feed(f.rt, &s, tok, 8, &e));
    const kv_rope_t *rope = &rt_model(f.rt)->rope;
    const float from[2] = {4.0f, 2.0f}, to[2] = {0.0f, 1.0f}, nan_[1] = {NAN};
    CHECK_INT(kv_session_remap(f.st, s.kv, 2, from, to, rope, &e), ==, ERR_INVAL);
    CHECK_INT(kv_session_remap(f.st, s.kv, 1, nan_, to, rope, &e), ==, ERR_INVAL);
    CHECK_INT(kv_session_remap(f.st, s.kv, 0, from, to, rope, &e), ==, ERR_INVAL);
    CHECK_INT(kv_session_remap(f.st, 999, 1, from, to, rope, &e), ==, ERR_NOTFOUND);
    CHECK_OK(kv_reserve(f.st, s.kv, 1, &e));
    CHECK_INT(kv_session_remap(f.st, s.kv, 1, to, to, rope, &e), ==, ERR_BUSY);
    kv_reserve_cancel(f.st, s.kv);
    CHECK(mpos_next(&f, &s) == 8.0f);
    /* a fork shares its full blocks: moving one session leaves the other where it was */
    uint32_t child;
    CHECK_OK(kv_session_fork(f.st, s.kv, NULL, &child, &e));
    const float z = 0.0f, three = 3.0f;
    CHECK_OK(kv_session_remap(f.st, child, 1, &z, &three, rope, &e));
    kv_row_meta_t m;
    CHECK_OK(kv_lane_read(f.st, s.kv, 0, 0, 0, 1, &m, NULL, NULL));
    CHECK(m.shift == 0.0f);
    CHECK_OK(kv_lane_read(f.st, child, 0, 0, 0, 1, &m, NULL, NULL));
    CHECK(m.shift == -3.0f);
    CHECK_OK(kv_store_check(f.st, &e));
    kv_session_destroy(f.st, child);
    rt_sess_fini(&s);
    fx_close(&f);
}

int main(void)
{
    RUN(test_remap_equals_model_rope);
    RUN(test_full_stops_at_context);
    RUN(test_endless_and_snapshot);
    RUN(test_remap_refusals);
    return check_done();
}
