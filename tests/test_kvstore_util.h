/*
 * tests/test_kvstore_util.h — helpers shared by the kvstore test programs: deterministic
 * row data, appending through reserve/commit, the consistency check, and an exact capture
 * of a session's visible state (chunk layout, payload bytes, metadata, transcript) so that
 * "nothing changed" and "restored bit-identically" can be asserted. Header-only (static
 * functions), included by one test program at a time.
 */
#ifndef GISTD_TESTS_TEST_KVSTORE_UTIL_H
#define GISTD_TESTS_TEST_KVSTORE_UTIL_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "common/err.h"
#include "kvstore/kvstore.h"
#include "tests/check.h"

/* The allocation-failure sweeps' hook (kv_alloc_hook_t.fail): fails attempt n and no other. */
typedef struct kvt_fault {
    long n;     /* attempt to fail (0-based); -1: none */
    long count; /* attempts so far */
    bool fired;
} kvt_fault_t;

static inline bool kvt_fail_nth(void *ctx, size_t bytes)
{
    kvt_fault_t *f = ctx;
    (void)bytes;
    if (f->count++ == f->n) {
        f->fired = true;
        return true;
    }
    return false;
}

/* kv_span_replace of [p0, p1] by the same n rows in every lane (at most 16 lanes): k and v
 * [n][head_dim], meta [n]. */
static inline int kvt_replace_same(kv_store_t *st, uint32_t sid, float p0, float p1, uint32_t n,
                                   const float *k, const float *v, const kv_row_meta_t *meta,
                                   err_info_t *e)
{
    const uint32_t nl = kv_lane_count(st);
    const float *kp[16], *vp[16];
    const kv_row_meta_t *mp[16];
    uint32_t cnt[16];
    if (nl > 16)
        return err_set(e, ERR_RANGE, "kvt_replace_same: %u lanes, at most 16", nl);
    for (uint32_t l = 0; l < nl; l++) {
        kp[l] = k;
        vp[l] = v;
        mp[l] = meta;
        cnt[l] = n;
    }
    kv_rows_t r = {.n = cnt, .k = kp, .v = vp, .meta = mp};
    return kv_span_replace(st, sid, p0, p1, &r, e);
}

/* splitmix64: the tests' deterministic randomness. */
static inline uint64_t kvt_mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

typedef struct kvt_rng {
    uint64_t s;
} kvt_rng_t;

static inline uint64_t kvt_next(kvt_rng_t *r)
{
    r->s = kvt_mix(r->s);
    return r->s;
}

static inline uint32_t kvt_below(kvt_rng_t *r, uint32_t n)
{
    return n ? (uint32_t)(kvt_next(r) % n) : 0;
}

/* Uniform in [-1, 1). */
static inline float kvt_unit(kvt_rng_t *r)
{
    return (float)((double)(kvt_next(r) >> 11) * 0x1p-53 * 2.0 - 1.0);
}

/* A reproducible K or V value for (tag, lane, pos, dim). */
static inline float kvt_val(uint64_t tag, uint32_t lane, uint32_t pos, uint32_t d)
{
    uint64_t h =
        kvt_mix(tag * 0x100000001b3ull ^ ((uint64_t)lane << 40) ^ ((uint64_t)pos << 12) ^ d);
    return (float)((double)(h >> 11) * 0x1p-53 * 4.0 - 2.0);
}

static inline kv_store_t *kvt_store(uint32_t n_layer, uint32_t n_head_kv, uint32_t head_dim,
                                    uint32_t block_rows, uint32_t hot, size_t hard)
{
    kv_store_config_t cfg = {.n_layer = n_layer,
                             .n_head_kv = n_head_kv,
                             .head_dim = head_dim,
                             .block_rows = block_rows,
                             .hot_type = hot,
                             .hard_limit = hard};
    kv_store_t *st = NULL;
    err_info_t e;
    err_clear(&e);
    int rc = kv_store_new(&cfg, &st, &e);
    CHECK_MSG(rc == 0, "kv_store_new: %s", err_msg(&e));
    return st;
}

/* Appends n tokens (ids tok0..) with K/V kvt_val(tag, lane, pos, d) (V uses ~tag) and
 * logbeta -pos/1000. Returns the kv_reserve/kv_commit code. */
static inline int kvt_append(kv_store_t *st, uint32_t sid, uint32_t n, uint32_t tok0, uint64_t tag,
                             err_info_t *e)
{
    uint32_t nl = kv_lane_count(st), hd = kv_head_dim(st), len = 0;
    int rc = kv_transcript_len(st, sid, &len);
    if (rc)
        return rc;
    rc = kv_reserve(st, sid, n, e);
    if (rc)
        return rc;
    float *k = malloc(sizeof(float) * nl * n * hd), *v = malloc(sizeof(float) * nl * n * hd);
    float *lb = malloc(sizeof(float) * nl * n);
    const float **kp = malloc(sizeof(float *) * nl), **vp = malloc(sizeof(float *) * nl);
    const float **lp = malloc(sizeof(float *) * nl);
    uint32_t *tok = malloc(sizeof(uint32_t) * n);
    for (uint32_t l = 0; l < nl; l++) {
        kp[l] = k + (size_t)l * n * hd;
        vp[l] = v + (size_t)l * n * hd;
        lp[l] = lb + (size_t)l * n;
        for (uint32_t j = 0; j < n; j++) {
            lb[(size_t)l * n + j] = -(float)(len + j) / 1000.0f;
            for (uint32_t d = 0; d < hd; d++) {
                k[((size_t)l * n + j) * hd + d] = kvt_val(tag, l, len + j, d);
                v[((size_t)l * n + j) * hd + d] = kvt_val(~tag, l, len + j, d);
            }
        }
    }
    for (uint32_t j = 0; j < n; j++)
        tok[j] = tok0 + j;
    kv_append_t a = {.n = n, .tokens = tok, .k = kp, .v = vp, .logbeta = lp};
    rc = kv_commit(st, sid, &a, e);
    free(k);
    free(v);
    free(lb);
    free(kp);
    free(vp);
    free(lp);
    free(tok);
    return rc;
}

/* The O(1) figures (kv_session_bytes, kv_store_bytes and the limits) against the walks: each
 * session's bytes are its blocks, structures and transcript as kv_session_stats walks them,
 * and the store's are its distinct blocks, every session's structures and transcripts, and
 * its own tables. An unknown session has 0 bytes and no limits. False after reporting. */
static inline bool kvt_check_bytes(kv_store_t *st)
{
    uint32_t ids[256];
    uint32_t n = kv_session_list(st, ids, 256), top = 0;
    bool ok = true;
    for (uint32_t i = 0; i < n && i < 256; i++) {
        kv_stats_t s;
        size_t hard = 1, soft = 1;
        CHECK_OK(kv_session_stats(st, ids[i], &s));
        CHECK_OK(kv_session_limits(st, ids[i], &hard, &soft));
        const size_t o1 = kv_session_bytes(st, ids[i]),
                     walk = s.block_bytes + s.run_free_bytes + s.struct_bytes + s.transcript_bytes;
        if (o1 != s.bytes || o1 != walk || hard != s.hard_limit || soft != s.soft_limit) {
            CHECK_MSG(false,
                      "session %u: kv_session_bytes %zu, stats %zu, walked %zu; limits %zu/%zu, "
                      "stats %zu/%zu",
                      ids[i], o1, s.bytes, walk, hard, soft, s.hard_limit, s.soft_limit);
            ok = false;
        }
        top = ids[i] > top ? ids[i] : top;
    }
    kv_stats_t g;
    size_t hard = 1, soft = 1;
    kv_store_stats(st, &g);
    kv_store_limits(st, &hard, &soft);
    const size_t o1 = kv_store_bytes(st), walk = g.block_bytes + g.run_free_bytes + g.struct_bytes +
                                                 g.transcript_bytes + g.overhead_bytes;
    if (o1 != g.bytes || o1 != walk || hard != g.hard_limit || soft != g.soft_limit) {
        CHECK_MSG(false,
                  "store: kv_store_bytes %zu, stats %zu, walked %zu; limits %zu/%zu, "
                  "stats %zu/%zu",
                  o1, g.bytes, walk, hard, soft, g.hard_limit, g.soft_limit);
        ok = false;
    }
    if (kv_session_bytes(st, top + 1) != 0 ||
        kv_session_limits(st, top + 1, NULL, NULL) != ERR_NOTFOUND) {
        CHECK_MSG(false, "session %u does not exist, yet has bytes or limits", top + 1);
        ok = false;
    }
    return ok;
}

/* kv_store_check and the O(1) byte figures (kvt_check_bytes), reported as test failures. */
#define KVT_CHECK_STORE(st)                                                                        \
    do {                                                                                           \
        err_info_t ce_;                                                                            \
        err_clear(&ce_);                                                                           \
        int crc_ = kv_store_check((st), &ce_);                                                     \
        CHECK_MSG(crc_ == 0, "kv_store_check: %s", err_msg(&ce_));                                 \
        kvt_check_bytes(st);                                                                       \
    } while (0)

/* ---- exact capture of a session ---- */

typedef struct kvt_capture {
    size_t n; /* bytes used in buf */
    size_t cap;
    uint8_t *buf; /* everything visible, serialised */
} kvt_capture_t;

static inline void kvt_put(kvt_capture_t *c, const void *p, size_t n)
{
    if (c->n + n > c->cap) {
        size_t cap = c->cap ? c->cap : 4096;
        while (cap < c->n + n)
            cap *= 2;
        c->buf = realloc(c->buf, cap);
        c->cap = cap;
    }
    if (n)
        memcpy(c->buf + c->n, p, n);
    c->n += n;
}

static inline size_t kvt_row_bytes(uint32_t type, uint32_t hd)
{
    return type == DT_F32 ? hd * 4u : type == DT_F16 ? hd * 2u : hd / 32u * 34u;
}

/* Serialises what a session shows: per lane its chunks (n, type, payload bytes, bias,
 * accumulators) and row metadata, then the transcript and the session's byte count. */
static inline void kvt_capture_session(kv_store_t *st, uint32_t sid, kvt_capture_t *c,
                                       bool with_bytes)
{
    uint32_t nl = kv_lane_count(st), hd = kv_head_dim(st);
    uint32_t n_head = kv_store_config(st)->n_head_kv;
    static kv_chunk_t ch[4096];
    for (uint32_t l = 0; l < nl; l++) {
        uint32_t rows = 0, nc = 0, layer = l / n_head, head = l % n_head;
        CHECK_OK(kv_lane_size(st, sid, layer, head, &rows, &nc));
        CHECK(nc <= 4096);
        CHECK_OK(kv_lane_view(st, sid, layer, head, ch, 4096, &nc));
        kvt_put(c, &nc, sizeof nc);
        for (uint32_t i = 0; i < nc; i++) {
            kvt_put(c, &ch[i].n, sizeof ch[i].n);
            kvt_put(c, &ch[i].type, sizeof ch[i].type);
            size_t rb = kvt_row_bytes(ch[i].type, hd);
            kvt_put(c, ch[i].k, rb * ch[i].n);
            kvt_put(c, ch[i].v, rb * ch[i].n);
            kvt_put(c, ch[i].bias, sizeof(float) * ch[i].n);
            uint8_t has = ch[i].attn_acc != NULL;
            kvt_put(c, &has, 1);
            if (has)
                kvt_put(c, ch[i].attn_acc, sizeof(float) * ch[i].n);
        }
        kv_row_meta_t *m = malloc(sizeof *m * (rows ? rows : 1));
        CHECK_OK(kv_lane_read(st, sid, layer, head, 0, rows, m, NULL, NULL));
        for (uint32_t r = 0; r < rows; r++) {
            kvt_put(c, &m[r].pos, 4);
            kvt_put(c, &m[r].mass, 4);
            kvt_put(c, &m[r].logbeta, 4);
            kvt_put(c, &m[r].attn, 4);
            kvt_put(c, &m[r].first, 4);
            kvt_put(c, &m[r].last, 4);
            kvt_put(c, &m[r].kind, 1);
            kvt_put(c, &m[r].level, 1);
            kvt_put(c, &m[r].type, 1);
        }
        free(m);
    }
    uint32_t len = 0;
    CHECK_OK(kv_transcript_len(st, sid, &len));
    kvt_put(c, &len, sizeof len);
    uint32_t *tok = malloc(sizeof *tok * (len ? len : 1));
    uint16_t *live = malloc(sizeof *live * (len ? len : 1));
    CHECK_OK(kv_transcript_read(st, sid, 0, len, tok, live));
    kvt_put(c, tok, sizeof *tok * len);
    kvt_put(c, live, sizeof *live * len);
    free(tok);
    free(live);
    if (with_bytes) {
        kv_stats_t s;
        CHECK_OK(kv_session_stats(st, sid, &s));
        kvt_put(c, &s.bytes, sizeof s.bytes);
        kvt_put(c, &s.hard_limit, sizeof s.hard_limit);
        kvt_put(c, &s.soft_limit, sizeof s.soft_limit);
    }
}

/* Captures every session of the store (ids, then each session) and the store's bytes. */
static inline void kvt_capture_store(kv_store_t *st, kvt_capture_t *c)
{
    uint32_t ids[256];
    uint32_t n = kv_session_list(st, ids, 256);
    kvt_put(c, &n, sizeof n);
    for (uint32_t i = 0; i < n && i < 256; i++) {
        kvt_put(c, &ids[i], sizeof ids[i]);
        kvt_capture_session(st, ids[i], c, true);
    }
    kv_stats_t s;
    kv_store_stats(st, &s);
    kvt_put(c, &s.bytes, sizeof s.bytes);
}

static inline bool kvt_capture_equal(const kvt_capture_t *a, const kvt_capture_t *b)
{
    return a->n == b->n && memcmp(a->buf, b->buf, a->n) == 0;
}

static inline void kvt_capture_free(kvt_capture_t *c)
{
    free(c->buf);
    memset(c, 0, sizeof *c);
}

#endif
