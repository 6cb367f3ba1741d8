/* Tests for kvstore: appending, views, budgets and limits, memory going back to the arena,
 * forks sharing blocks, the transcript, and the edit verbs on small hand-checked cases. */
#include <math.h>
#include <string.h>

#include "tests/test_kvstore_util.h"

/* Rows read back from a lane equal what was appended (f32: exactly). */
static void test_append_and_view(void)
{
    kv_store_t *st = kvt_store(2, 2, 64, 16, DT_F32, 0);
    uint32_t sid;
    err_info_t e;
    CHECK_OK(kv_session_create(st, NULL, &sid, &e));
    for (int i = 0; i < 5; i++)
        CHECK_OK(kvt_append(st, sid, 7, 100 + 7 * i, 42, &e));
    KVT_CHECK_STORE(st);
    uint32_t rows, nc;
    CHECK_OK(kv_lane_size(st, sid, 1, 1, &rows, &nc));
    CHECK_INT(rows, ==, 35);
    CHECK_INT(nc, ==, 3); /* 16 + 16 + 3 */
    kv_chunk_t ch[8];
    CHECK_OK(kv_lane_view(st, sid, 1, 1, ch, 8, &nc));
    uint32_t r = 0;
    for (uint32_t c = 0; c < nc; c++) {
        CHECK_INT(ch[c].type, ==, DT_F32);
        CHECK(ch[c].attn_acc == NULL);
        for (uint32_t i = 0; i < ch[c].n; i++, r++) {
            const float *k = (const float *)ch[c].k + i * 64;
            const float *v = (const float *)ch[c].v + i * 64;
            for (uint32_t d = 0; d < 64; d++) {
                CHECK(k[d] == kvt_val(42, 3, r, d));
                CHECK(v[d] == kvt_val(~42ull, 3, r, d));
            }
            CHECK(ch[c].bias[i] == 0.0f);
        }
    }
    CHECK_INT(r, ==, 35);
    kv_row_meta_t m[35];
    CHECK_OK(kv_lane_read(st, sid, 1, 1, 0, 35, m, NULL, NULL));
    for (uint32_t i = 0; i < 35; i++) {
        CHECK(m[i].pos == (float)i);
        CHECK(m[i].mass == 1.0f && m[i].kind == KV_KIND_RAW && m[i].level == 0);
        CHECK(m[i].first == i && m[i].last == i);
        CHECK(m[i].logbeta == -(float)i / 1000.0f);
    }
    uint32_t tok[35], len;
    uint16_t live[35];
    CHECK_OK(kv_transcript_len(st, sid, &len));
    CHECK_INT(len, ==, 35);
    CHECK_OK(kv_transcript_read(st, sid, 0, 35, tok, live));
    for (uint32_t i = 0; i < 35; i++) {
        CHECK_INT(tok[i], ==, 100 + i);
        CHECK_INT(live[i], ==, 4);
    }
    CHECK_INT(kv_lane_view(st, sid, 1, 1, ch, 2, &nc), ==, ERR_RANGE);
    CHECK_INT(nc, ==, 3);
    CHECK_INT(kv_lane_size(st, sid, 2, 0, &rows, &nc), ==, ERR_RANGE);
    CHECK_INT(kv_lane_size(st, sid + 1, 0, 0, &rows, &nc), ==, ERR_NOTFOUND);
    kv_store_destroy(&st);
    CHECK(st == NULL);
}

/* A q8_0 hot tier holds values within q8_0 rounding (half a step of max|block| / 127, and
 * the f16 scale's rounding), is counted as the q8_0 tier, and needs whole 32-blocks. */
static void test_q8_0_tier(void)
{
    kv_store_t *st = kvt_store(1, 1, 64, 8, DT_Q8_0, 0);
    uint32_t sid;
    CHECK_OK(kv_session_create(st, NULL, &sid, NULL));
    CHECK_OK(kvt_append(st, sid, 20, 0, 7, NULL));
    float k[20 * 64];
    kv_row_meta_t m[20];
    CHECK_OK(kv_lane_read(st, sid, 0, 0, 0, 20, m, k, NULL));
    for (uint32_t r = 0; r < 20; r++) {
        CHECK_INT(m[r].type, ==, DT_Q8_0);
        for (uint32_t b = 0; b < 2; b++) {
            float amax = 0.0f;
            for (uint32_t d = b * 32; d < b * 32 + 32; d++)
                amax = fmaxf(amax, fabsf(kvt_val(7, 0, r, d)));
            for (uint32_t d = b * 32; d < b * 32 + 32; d++) {
                const float x = kvt_val(7, 0, r, d);
                CHECK_NEAR(k[r * 64 + d], x, amax * (0.5f / 127.0f + 0x1p-10f) + 1e-6f);
            }
        }
    }
    kv_stats_t s;
    CHECK_OK(kv_session_stats(st, sid, &s));
    CHECK_INT(s.tier_rows[KV_TIER_Q8_0], ==, 20);
    CHECK_INT(s.tier_blocks[KV_TIER_Q8_0], ==, 3);
    CHECK_INT(s.tier_bytes[KV_TIER_Q8_0], ==, 3 * kv_block_bytes(st, DT_Q8_0));
    CHECK(kv_block_bytes(st, DT_Q8_0) < kv_block_bytes(st, DT_F16));
    KVT_CHECK_STORE(st);
    kv_store_destroy(&st);

    kv_store_config_t cfg = {.n_layer = 1, .n_head_kv = 1, .head_dim = 48, .hot_type = DT_Q8_0};
    err_info_t e;
    err_clear(&e);
    CHECK_INT(kv_store_new(&cfg, &st, &e), ==, ERR_UNSUPPORTED);
    CHECK(st == NULL && strstr(err_msg(&e), "head_dim") != NULL);
}

/* An f16 hot tier holds values within f16 rounding. */
static void test_f16_tier(void)
{
    kv_store_t *st = kvt_store(1, 1, 32, 8, DT_F16, 0);
    uint32_t sid;
    CHECK_OK(kv_session_create(st, NULL, &sid, NULL));
    CHECK_OK(kvt_append(st, sid, 20, 0, 7, NULL));
    float k[20 * 32];
    kv_row_meta_t m[20];
    CHECK_OK(kv_lane_read(st, sid, 0, 0, 0, 20, m, k, NULL));
    for (uint32_t r = 0; r < 20; r++) {
        CHECK_INT(m[r].type, ==, DT_F16);
        for (uint32_t d = 0; d < 32; d++) {
            float x = kvt_val(7, 0, r, d);
            CHECK_NEAR(k[r * 32 + d], x, fabsf(x) * 0x1p-11f + 1e-7f);
        }
    }
    kv_stats_t s;
    CHECK_OK(kv_session_stats(st, sid, &s));
    CHECK_INT(s.tier_rows[KV_TIER_F16], ==, 20);
    CHECK_INT(s.tier_blocks[KV_TIER_F16], ==, 3);
    CHECK_INT(s.tier_bytes[KV_TIER_F16], ==, 3 * kv_block_bytes(st, DT_F16));
    char text[2048], want[64];
    int len = kv_stats_format(&s, text, sizeof text);
    CHECK(len > 0 && (size_t)len < sizeof text && strlen(text) == (size_t)len);
    snprintf(want, sizeof want, "\nused_bytes:%zu\n", s.bytes);
    CHECK(strncmp(text, want + 1, strlen(want + 1)) == 0);
    CHECK(strstr(text, "\ntier_f16_rows:20\n") != NULL);
    CHECK(strstr(text, "\nkind_raw_rows:20\n") != NULL);
    CHECK_INT(kv_stats_format(&s, text, 10), ==, len);
    CHECK_INT(strlen(text), ==, 9);
    KVT_CHECK_STORE(st);
    kv_store_destroy(&st);
}

/* A reservation that does not fit fails with ERR_BUDGET, says why, and changes nothing. */
static void test_budget(void)
{
    kv_store_t *st = kvt_store(2, 1, 32, 8, DT_F32, 0);
    size_t blk = kv_block_bytes(st, DT_F32);
    kv_session_config_t cfg = {.hard_limit = 20 * blk, .soft_limit = 10 * blk};
    uint32_t sid;
    err_info_t e;
    CHECK_OK(kv_session_create(st, &cfg, &sid, &e));
    int rc = 0;
    uint32_t appended = 0;
    while ((rc = kvt_append(st, sid, 3, appended, 1, &e)) == 0)
        appended += 3;
    CHECK_INT(rc, ==, ERR_BUDGET);
    CHECK(strstr(e.msg, "needs") != NULL && strstr(e.msg, "available") != NULL);
    kv_stats_t s;
    CHECK_OK(kv_session_stats(st, sid, &s));
    CHECK(s.bytes <= cfg.hard_limit);
    CHECK_MSG(s.over_soft > 0, "bytes %zu soft %zu hard %zu blk %zu", s.bytes, s.soft_limit,
              s.hard_limit, blk);
    CHECK_INT(s.over_hard, ==, 0);
    uint32_t len;
    CHECK_OK(kv_transcript_len(st, sid, &len));
    CHECK_INT(len, ==, appended);
    KVT_CHECK_STORE(st);

    /* the global limit holds too, for a session with no limit of its own */
    uint32_t s2;
    CHECK_OK(kv_session_create(st, NULL, &s2, &e));
    kv_stats_t g;
    kv_store_stats(st, &g);
    size_t excess = 1;
    CHECK_OK(kv_store_set_limits(st, g.bytes + 3 * blk, 0, &excess));
    CHECK_INT(excess, ==, 0);
    while ((rc = kvt_append(st, s2, 5, 0, 2, &e)) == 0)
        ;
    CHECK_INT(rc, ==, ERR_BUDGET);
    CHECK(strstr(e.msg, "global") != NULL);
    kv_store_stats(st, &g);
    CHECK(g.bytes <= g.hard_limit);

    /* lowering a limit below use reports what must be freed */
    CHECK_OK(kv_store_set_limits(st, g.bytes - 100, 0, &excess));
    CHECK_INT(excess, ==, 100);
    CHECK_OK(kv_session_set_limits(st, sid, s.bytes - 7, 0, &excess));
    CHECK_INT(excess, ==, 7);
    CHECK_INT(kv_session_set_limits(st, sid, 10, 20, &excess), ==, ERR_INVAL);
    CHECK_OK(kv_store_set_limits(st, 0, 0, NULL));
    KVT_CHECK_STORE(st);
    kv_store_destroy(&st);
}

static size_t arena_allocated(kv_store_t *st)
{
    kv_stats_t s;
    kv_store_stats(st, &s);
    return s.je_allocated;
}

/* Evicting rows frees blocks, and the arena's figures go down by their size (under a limit:
 * blocks one by one, less the record of the run the edit settles the lane's older blocks in;
 * test_runs has the payload runs of unlimited sessions). */
static void test_memory_goes_back(void)
{
    kv_store_t *st = kvt_store(1, 2, 64, 16, DT_F32, 0);
    uint32_t sid;
    kv_session_config_t cfg = {.hard_limit = 64u << 20};
    CHECK_OK(kv_session_create(st, &cfg, &sid, NULL));
    CHECK_OK(kvt_append(st, sid, 160, 0, 3, NULL));
    size_t before = arena_allocated(st);
    kv_stats_t s, s0, s1;
    kv_store_stats(st, &s);
    CHECK_INT(s.je_allocated, ==, s.bytes);
    CHECK(s.je_active >= s.je_allocated);
    CHECK_OK(kv_session_stats(st, sid, &s0));
    CHECK_INT(s0.runs, ==, 0);
    /* evict every other row of lane (0,1): 160 -> 80 rows, 10 -> 5 blocks */
    uint32_t rows[80];
    for (uint32_t i = 0; i < 80; i++)
        rows[i] = 2 * i + 1;
    CHECK_OK(kv_lane_evict(st, sid, 0, 1, rows, 80, NULL));
    size_t after = arena_allocated(st);
    CHECK_OK(kv_session_stats(st, sid, &s1));
    CHECK_INT(s0.block_bytes - s1.block_bytes, ==, 5 * kv_block_bytes(st, DT_F32));
    /* the edit settled the lane: of its 5 blocks, the 3 before the last 2 held a stretch, and
     * its first 2 now lie in one full run, whose record is all it costs */
    CHECK_INT(s1.runs, ==, 1);
    CHECK_INT(s1.run_free_slots, ==, 0);
    CHECK(s1.run_free_bytes > 0 && s1.run_free_bytes < 256);
    CHECK_INT(before - after, ==, 5 * kv_block_bytes(st, DT_F32) - s1.run_free_bytes);
    CHECK_INT(s0.bytes - s1.bytes, ==, before - after);
    kv_chunk_t ch[5];
    uint32_t n, nc;
    CHECK_OK(kv_lane_view(st, sid, 0, 1, ch, 5, &nc));
    CHECK_INT(nc, ==, 5);
    const size_t payload = 2 * 16 * 64 * sizeof(float);
    CHECK((const uint8_t *)ch[1].k == (const uint8_t *)ch[0].k + payload);
    CHECK((const uint8_t *)ch[2].k != (const uint8_t *)ch[1].k + payload);
    CHECK_OK(kv_lane_size(st, sid, 0, 1, &n, &nc));
    CHECK_INT(n, ==, 80);
    CHECK_INT(nc, ==, 5);
    kv_row_meta_t m[80];
    float k[80 * 64];
    CHECK_OK(kv_lane_read(st, sid, 0, 1, 0, 80, m, k, NULL));
    for (uint32_t i = 0; i < 80; i++) {
        CHECK(m[i].pos == (float)(2 * i));
        CHECK(k[i * 64 + 5] == kvt_val(3, 1, 2 * i, 5));
    }
    uint16_t live[4];
    CHECK_OK(kv_transcript_read(st, sid, 0, 4, NULL, live));
    CHECK_INT(live[0], ==, 2);
    CHECK_INT(live[1], ==, 1);
    KVT_CHECK_STORE(st);
    CHECK_OK(kv_session_destroy(st, sid));
    kv_store_stats(st, &s);
    CHECK_INT(s.je_allocated, ==, s.bytes);
    CHECK_INT(s.bytes, ==, s.overhead_bytes);
    CHECK_INT(kv_session_destroy(st, sid), ==, ERR_NOTFOUND);
    kv_store_destroy(&st);
}

/* A fork shares full blocks; editing either side copies only what it writes. */
static void test_fork_shares(void)
{
    kv_store_t *st = kvt_store(1, 1, 32, 8, DT_F32, 0);
    uint32_t a, b;
    CHECK_OK(kv_session_create(st, NULL, &a, NULL));
    CHECK_OK(kvt_append(st, a, 30, 0, 9, NULL)); /* 3 full blocks + 6 rows */
    kv_stats_t g0, g1, sa, sb;
    kv_store_stats(st, &g0);
    CHECK_OK(kv_session_fork(st, a, NULL, &b, NULL));
    KVT_CHECK_STORE(st);
    kv_store_stats(st, &g1);
    CHECK_OK(kv_session_stats(st, a, &sa));
    CHECK_OK(kv_session_stats(st, b, &sb));
    size_t blk = kv_block_bytes(st, DT_F32);
    CHECK_INT(sa.shared_bytes, ==, 3 * blk);
    CHECK_INT(sb.shared_bytes, ==, 3 * blk);
    CHECK_INT(sb.block_bytes, ==, 4 * blk);
    /* the store paid for one new block (the partial one) plus b's structures */
    CHECK_INT(g1.bytes - g0.bytes, ==, sb.bytes - 3 * blk);
    CHECK_INT(g1.blocks, ==, 5);

    kvt_capture_t ca = {0}, cb = {0}, ca2 = {0}, cb2 = {0};
    kvt_capture_session(st, a, &ca, false);
    kvt_capture_session(st, b, &cb, false);
    /* evict row 3 in b: b copies the blocks it writes; a is unchanged */
    uint32_t r3 = 3;
    CHECK_OK(kv_lane_evict(st, b, 0, 0, &r3, 1, NULL));
    KVT_CHECK_STORE(st);
    kvt_capture_session(st, a, &ca2, false);
    CHECK(kvt_capture_equal(&ca, &ca2));
    CHECK_OK(kv_session_stats(st, a, &sa));
    CHECK_INT(sa.shared_bytes, ==, 0);
    /* both keep appending independently */
    CHECK_OK(kvt_append(st, a, 5, 30, 9, NULL));
    CHECK_OK(kvt_append(st, b, 5, 99, 10, NULL));
    float ka[32], kb[32];
    CHECK_OK(kv_lane_read(st, a, 0, 0, 30, 1, NULL, ka, NULL));
    CHECK_OK(kv_lane_read(st, b, 0, 0, 29, 1, NULL, kb, NULL));
    CHECK(ka[0] == kvt_val(9, 0, 30, 0));
    CHECK(kb[0] == kvt_val(10, 0, 30, 0));
    uint32_t ta, tb;
    CHECK_OK(kv_transcript_read(st, a, 30, 1, &ta, NULL));
    CHECK_OK(kv_transcript_read(st, b, 30, 1, &tb, NULL));
    CHECK_INT(ta, ==, 30);
    CHECK_INT(tb, ==, 99);
    KVT_CHECK_STORE(st);
    CHECK_OK(kv_session_destroy(st, a));
    KVT_CHECK_STORE(st);
    kvt_capture_session(st, b, &cb2, false);
    CHECK(cb2.n > 0);
    CHECK_OK(kv_session_destroy(st, b));
    kv_store_stats(st, &g1);
    CHECK_INT(g1.bytes, ==, g1.overhead_bytes);
    CHECK_INT(g1.je_allocated, ==, g1.bytes);
    kvt_capture_free(&ca);
    kvt_capture_free(&cb);
    kvt_capture_free(&ca2);
    kvt_capture_free(&cb2);
    kv_store_destroy(&st);
}

/* A span becomes one gist row in every lane; re-expanding puts the raw rows back. */
static void test_span_replace_and_expand(void)
{
    kv_store_t *st = kvt_store(1, 2, 32, 8, DT_F32, 0);
    uint32_t sid;
    err_info_t e;
    CHECK_OK(kv_session_create(st, NULL, &sid, NULL));
    CHECK_OK(kvt_append(st, sid, 40, 500, 5, NULL));
    kvt_capture_t before = {0}, after = {0};
    kvt_capture_session(st, sid, &before, false);

    float gk[2][32], gv[2][32];
    kv_row_meta_t gm[2];
    const float *kp[2], *vp[2];
    const kv_row_meta_t *mp[2];
    uint32_t n[2] = {1, 1};
    for (int l = 0; l < 2; l++) {
        for (int d = 0; d < 32; d++) {
            gk[l][d] = (float)(l + d);
            gv[l][d] = (float)(l - d);
        }
        gm[l] = (kv_row_meta_t){
            .pos = 14.5f, .mass = 20.0f, .first = 5, .last = 24, .kind = KV_KIND_GIST, .level = 1};
        kp[l] = gk[l];
        vp[l] = gv[l];
        mp[l] = &gm[l];
    }
    kv_rows_t rows = {.n = n, .k = kp, .v = vp, .meta = mp};
    CHECK_OK(kv_span_replace(st, sid, 5.0f, 24.0f, &rows, &e));
    KVT_CHECK_STORE(st);
    uint32_t nr, nc;
    CHECK_OK(kv_lane_size(st, sid, 0, 1, &nr, &nc));
    CHECK_INT(nr, ==, 21);
    CHECK_INT(nc, ==, 3);
    kv_row_meta_t m[21];
    float k[21 * 32];
    CHECK_OK(kv_lane_read(st, sid, 0, 1, 0, 21, m, k, NULL));
    CHECK(m[5].pos == 14.5f && m[5].mass == 20.0f && m[5].kind == KV_KIND_GIST);
    CHECK(k[5 * 32 + 3] == 4.0f);
    CHECK(m[4].pos == 4.0f && m[6].pos == 25.0f);
    kv_chunk_t ch[4];
    CHECK_OK(kv_lane_view(st, sid, 0, 1, ch, 4, &nc));
    CHECK(ch[0].bias[5] == logf(20.0f));
    uint16_t live[40];
    CHECK_OK(kv_transcript_read(st, sid, 0, 40, NULL, live));
    CHECK_INT(live[4], ==, 2);
    CHECK_INT(live[5], ==, 0);
    CHECK_INT(live[24], ==, 0);
    CHECK_INT(live[25], ==, 2);

    /* order is enforced: a gist row may not land after the next kept row */
    gm[0].pos = 30.0f;
    CHECK_INT(kv_span_replace(st, sid, 14.0f, 15.0f, &rows, &e), ==, ERR_INVAL);
    gm[0].pos = 14.5f;

    /* re-expand: replace the gist by the raw rows 5..24 again */
    float rk[2][20 * 32], rv[2][20 * 32];
    kv_row_meta_t rm[20];
    uint32_t rn[2] = {20, 20};
    for (uint32_t j = 0; j < 20; j++)
        rm[j] = (kv_row_meta_t){.pos = (float)(5 + j),
                                .mass = 1.0f,
                                .first = 5 + j,
                                .last = 5 + j,
                                .logbeta = -(float)(5 + j) / 1000.0f};
    for (int l = 0; l < 2; l++) {
        for (uint32_t j = 0; j < 20; j++)
            for (int d = 0; d < 32; d++) {
                rk[l][j * 32 + d] = kvt_val(5, l, 5 + j, d);
                rv[l][j * 32 + d] = kvt_val(~5ull, l, 5 + j, d);
            }
        kp[l] = rk[l];
        vp[l] = rv[l];
        mp[l] = rm;
    }
    rows.n = rn;
    CHECK_OK(kv_span_replace(st, sid, 14.5f, 14.5f, &rows, &e));
    KVT_CHECK_STORE(st);
    kvt_capture_session(st, sid, &after, false);
    CHECK(kvt_capture_equal(&before, &after));
    kvt_capture_free(&before);
    kvt_capture_free(&after);
    kv_store_destroy(&st);
}

/* Demoting rows in the middle of a block splits it into type runs; values stay close. */
static void test_demote(void)
{
    kv_store_t *st = kvt_store(1, 1, 64, 8, DT_F32, 0);
    uint32_t sid;
    err_info_t e;
    CHECK_OK(kv_session_create(st, NULL, &sid, NULL));
    CHECK_OK(kvt_append(st, sid, 30, 0, 11, NULL));
    uint32_t rows[] = {2, 3, 4, 5, 6, 7, 8, 9, 10};
    CHECK_OK(kv_lane_demote(st, sid, 0, 0, rows, 9, &e));
    KVT_CHECK_STORE(st);
    kv_chunk_t ch[8];
    uint32_t nc;
    CHECK_OK(kv_lane_view(st, sid, 0, 0, ch, 8, &nc));
    /* f32 [0,1] | q8 [2..10] (8 + 1) | f32 [11..29] (8 + 8 + 3) */
    uint32_t want_n[] = {2, 8, 1, 8, 8, 3};
    uint32_t want_t[] = {DT_F32, DT_Q8_0, DT_Q8_0, DT_F32, DT_F32, DT_F32};
    CHECK_INT(nc, ==, 6);
    for (uint32_t c = 0; c < nc && c < 6; c++) {
        CHECK_INT(ch[c].n, ==, want_n[c]);
        CHECK_INT(ch[c].type, ==, want_t[c]);
    }
    float k[30 * 64];
    CHECK_OK(kv_lane_read(st, sid, 0, 0, 0, 30, NULL, k, NULL));
    for (uint32_t r = 0; r < 30; r++) {
        bool q = r >= 2 && r <= 10;
        for (uint32_t d = 0; d < 64; d++) {
            float x = kvt_val(11, 0, r, d);
            if (q)
                CHECK_NEAR(k[r * 64 + d], x, 2.0f / 127.0f);
            else
                CHECK(k[r * 64 + d] == x);
        }
    }
    /* demoting the rest merges into one q8 run */
    uint32_t all[30];
    for (uint32_t i = 0; i < 30; i++)
        all[i] = i;
    CHECK_OK(kv_lane_demote(st, sid, 0, 0, all, 30, &e));
    CHECK_OK(kv_lane_view(st, sid, 0, 0, ch, 8, &nc));
    CHECK_INT(nc, ==, 4);
    KVT_CHECK_STORE(st);
    kv_stats_t s;
    CHECK_OK(kv_session_stats(st, sid, &s));
    CHECK_INT(s.tier_rows[KV_TIER_Q8_0], ==, 30);
    CHECK_INT(s.tier_bytes[KV_TIER_F32], ==, 0);
    kv_store_t *odd = kvt_store(1, 1, 48, 8, DT_F32, 0);
    uint32_t s2;
    CHECK_OK(kv_session_create(odd, NULL, &s2, NULL));
    CHECK_OK(kvt_append(odd, s2, 3, 0, 1, NULL));
    CHECK_INT(kv_lane_demote(odd, s2, 0, 0, all, 1, &e), ==, ERR_UNSUPPORTED);
    kv_store_destroy(&odd);
    kv_store_destroy(&st);
}

/* A pending reservation blocks edits; commit of fewer rows releases the rest. */
static void test_reservation(void)
{
    kv_store_t *st = kvt_store(1, 1, 32, 8, DT_F32, 0);
    uint32_t sid;
    err_info_t e;
    CHECK_OK(kv_session_create(st, NULL, &sid, NULL));
    kv_stats_t s0, s1;
    CHECK_OK(kv_session_stats(st, sid, &s0));
    CHECK_OK(kv_reserve(st, sid, 20, &e));
    CHECK_INT(kv_reserve(st, sid, 1, &e), ==, ERR_BUSY);
    uint32_t r0 = 0;
    CHECK_INT(kv_lane_evict(st, sid, 0, 0, &r0, 1, &e), ==, ERR_BUSY);
    KVT_CHECK_STORE(st);
    kv_reserve_cancel(st, sid);
    CHECK_OK(kv_session_stats(st, sid, &s1));
    CHECK_INT(s1.block_bytes, ==, 0);
    CHECK_INT(s1.transcript_bytes, ==, s0.transcript_bytes);
    KVT_CHECK_STORE(st);
    CHECK_OK(kv_reserve(st, sid, 20, &e));
    float k[5 * 32] = {0}, v[5 * 32] = {0};
    const float *kp[1] = {k}, *vp[1] = {v};
    uint32_t tok[5] = {1, 2, 3, 4, 5};
    kv_append_t a = {.n = 5, .tokens = tok, .k = kp, .v = vp};
    CHECK_OK(kv_commit(st, sid, &a, &e));
    CHECK_INT(kv_commit(st, sid, &a, &e), ==, ERR_INVAL);
    CHECK_OK(kv_session_stats(st, sid, &s1));
    CHECK_INT(s1.blocks, ==, 1);
    CHECK_INT(s1.rows, ==, 5);
    KVT_CHECK_STORE(st);
    kv_store_destroy(&st);
}

/* Accumulators: present in views when asked for, zeroed, kept by edits, dropped on off. */
static void test_attn_acc(void)
{
    kv_store_t *st = kvt_store(1, 1, 32, 8, DT_F32, 0);
    uint32_t sid;
    err_info_t e;
    kv_session_config_t cfg = {.attn_acc = true};
    CHECK_OK(kv_session_create(st, &cfg, &sid, NULL));
    CHECK_OK(kvt_append(st, sid, 12, 0, 1, NULL));
    kv_chunk_t ch[4];
    uint32_t nc;
    CHECK_OK(kv_lane_view(st, sid, 0, 0, ch, 4, &nc));
    CHECK(ch[0].attn_acc != NULL && ch[1].attn_acc != NULL);
    for (uint32_t i = 0; i < 8; i++)
        ch[0].attn_acc[i] = (float)i; /* as the forward pass would */
    uint32_t ev[2] = {1, 2};
    CHECK_OK(kv_lane_evict(st, sid, 0, 0, ev, 2, &e));
    kv_row_meta_t m[10];
    CHECK_OK(kv_lane_read(st, sid, 0, 0, 0, 10, m, NULL, NULL));
    CHECK(m[0].attn == 0.0f && m[1].attn == 3.0f && m[5].attn == 7.0f && m[6].attn == 0.0f);
    KVT_CHECK_STORE(st);
    CHECK_OK(kv_session_set_attn_acc(st, sid, false, &e));
    CHECK_OK(kv_lane_view(st, sid, 0, 0, ch, 4, &nc));
    CHECK(ch[0].attn_acc == NULL);
    KVT_CHECK_STORE(st);
    CHECK_OK(kv_session_set_attn_acc(st, sid, true, &e));
    KVT_CHECK_STORE(st);
    kv_store_destroy(&st);
}

/* Over a lowered hard limit, a gist of a hot span still goes through: it is written over
 * the rows it replaces and allocates nothing, so the policy can always get back under. */
static void test_gist_over_limit(void)
{
    kv_store_t *st = kvt_store(2, 2, 32, 8, DT_F32, 0);
    uint32_t sid;
    err_info_t e;
    kv_session_config_t cfg = {.hard_limit = 64u << 20}; /* blocks one by one, no runs */
    CHECK_OK(kv_session_create(st, &cfg, &sid, &e));
    CHECK_OK(kvt_append(st, sid, 100, 0, 3, &e));
    kv_stats_t s0, s1, g0, g1;
    CHECK_OK(kv_session_stats(st, sid, &s0));
    size_t excess;
    CHECK_OK(kv_session_set_limits(st, sid, s0.bytes - 1000, 0, &excess));
    CHECK_INT(excess, ==, 1000);
    CHECK_INT(kvt_append(st, sid, 8, 0, 3, &e), ==, ERR_BUDGET); /* needs new blocks */
    kv_store_stats(st, &g0);
    float k[2 * 32] = {0}, v[2 * 32] = {0};
    kv_row_meta_t m[2] = {{.pos = 12.0f, .mass = 10.0f, .first = 8, .last = 27, .kind = 1},
                          {.pos = 20.0f, .mass = 10.0f, .first = 8, .last = 27, .kind = 1}};
    const float *kp[4] = {k, k, k, k}, *vp[4] = {v, v, v, v};
    const kv_row_meta_t *mp[4] = {m, m, m, m};
    uint32_t n[4] = {2, 2, 2, 2};
    kv_rows_t rows = {.n = n, .k = kp, .v = vp, .meta = mp};
    CHECK_MSG(kv_span_replace(st, sid, 8.0f, 27.0f, &rows, &e) == 0, "%s", err_msg(&e));
    kv_store_stats(st, &g1);
    CHECK(g1.peak == g0.peak);
    CHECK_OK(kv_session_stats(st, sid, &s1));
    /* 100 -> 82 rows: 2 blocks a lane go; the room they leave lets the edit settle the lanes'
     * older blocks in full runs, whose records are charged */
    CHECK_INT(s0.block_bytes - s1.block_bytes, ==, 4 * 2 * kv_block_bytes(st, DT_F32));
    CHECK_INT(s1.run_free_slots, ==, 0);
    CHECK_INT(s0.bytes - s1.bytes, ==,
              4 * 2 * kv_block_bytes(st, DT_F32) - (s1.run_free_bytes - s0.run_free_bytes));
    CHECK_INT(s1.over_hard, ==, 0);
    KVT_CHECK_STORE(st);
    kv_store_destroy(&st);
}

/* Whether chunk i+1 of a lane lies right after chunk i in memory (adj[i]); returns how many
 * chunks the lane has. */
static uint32_t adjacent_chunks(kv_store_t *st, uint32_t sid, uint32_t layer, uint32_t head,
                                size_t payload, bool *adj)
{
    kv_chunk_t ch[64];
    uint32_t n = 0;
    CHECK_OK(kv_lane_view(st, sid, layer, head, ch, 64, &n));
    for (uint32_t i = 0; i + 1 < n; i++)
        adj[i] = (const uint8_t *)ch[i + 1].k == (const uint8_t *)ch[i].k + payload;
    return n;
}

/* Checks that the chunks [a, b] of each run given lie one after another. */
static void check_runs(kv_store_t *st, uint32_t sid, size_t payload, uint32_t n_chunks,
                       const uint32_t (*runs)[2], uint32_t n_runs)
{
    bool adj[64] = {0};
    for (uint32_t l = 0; l < kv_lane_count(st); l++) {
        CHECK_INT(adjacent_chunks(st, sid, 0, l, payload, adj), ==, n_chunks);
        for (uint32_t r = 0; r < n_runs; r++)
            for (uint32_t i = runs[r][0]; i < runs[r][1]; i++)
                CHECK_MSG(adj[i], "lane %u: chunk %u is not right after chunk %u", l, i + 1, i);
    }
}

/* Without a limit, a lane's appended blocks are carved in order from payload runs that grow
 * with the lane (up to half its blocks, at most 4: blocks 0-3 alone, then runs of 2, 2, 4,
 * 4 ...), their free slots charged to the session; under a limit, or once one is set, blocks
 * come one by one, and a limit dissolves the runs with free slots. A fork's last hold on a block of the parent's run frees its slot without
 * charging the parent. */
static void test_runs(void)
{
    const uint32_t B = 8;
    kv_store_t *st = kvt_store(1, 2, 32, B, DT_F16, 0);
    const size_t payload = 2 * B * 32 * 2, blk = kv_block_bytes(st, DT_F16);
    uint32_t a, b, n;
    CHECK_OK(kv_session_create(st, NULL, &a, NULL));
    for (uint32_t i = 0; i < 18; i++) /* a block a call, as prefill chunks of B tokens */
        CHECK_OK(kvt_append(st, a, B, i * B, 5, NULL));
    const uint32_t runs[][2] = {{4, 5}, {6, 7}, {8, 11}, {12, 15}, {16, 19}};
    check_runs(st, a, payload, 18, runs, 4);
    bool adj[64];
    CHECK_INT(adjacent_chunks(st, a, 0, 1, payload, adj), ==, 18);
    CHECK(adj[16]); /* 16-19, 2 carved */
    kv_stats_t s0, s1;
    CHECK_OK(kv_session_stats(st, a, &s0));
    CHECK_INT(s0.block_bytes, ==, 2 * 18 * blk);
    CHECK(s0.run_free_bytes >= 2 * 2 * payload); /* 2 slots a lane not carved yet */
    KVT_CHECK_STORE(st);

    /* the next 2 blocks fill the open runs: no new allocation but the headers */
    CHECK_OK(kvt_append(st, a, 2 * B, 18 * B, 5, NULL));
    CHECK_OK(kv_session_stats(st, a, &s1));
    CHECK_INT(s1.run_free_bytes, ==, s0.run_free_bytes - 2 * 2 * payload);
    check_runs(st, a, payload, 20, runs, 5);

    /* a fork shares the full blocks; a has row 80 evicted in every lane (its blocks from
     * the 11th on are copied, the shared ones left to b, so a still holds the first half of
     * the run of blocks 8-11) and a limit at what it holds; b's destruction then frees the
     * slots of blocks 10-11, and a is not charged for them */
    CHECK_OK(kv_session_fork(st, a, NULL, &b, NULL));
    uint32_t r0 = 80;
    for (uint32_t h = 0; h < 2; h++)
        CHECK_OK(kv_lane_evict(st, a, 0, h, &r0, 1, NULL));
    KVT_CHECK_STORE(st);
    kv_stats_t sa0, sa1, g0, g1;
    CHECK_OK(kv_session_stats(st, a, &sa0));
    CHECK_INT(sa0.shared_bytes, ==, 2 * 10 * blk);
    CHECK_OK(kv_session_set_limits(st, a, sa0.bytes, 0, NULL)); /* a byte more would cross it */
    kv_store_stats(st, &g0);
    CHECK_OK(kv_session_destroy(st, b));
    KVT_CHECK_STORE(st);
    CHECK_OK(kv_session_stats(st, a, &sa1));
    CHECK(sa1.bytes <= sa0.bytes); /* less the records of the runs that went */
    CHECK_INT(sa1.over_hard, ==, 0);
    CHECK_INT(sa1.shared_bytes, ==, 0);
    kv_store_stats(st, &g1);
    CHECK(g1.bytes < g0.bytes);

    /* under its limit now, a's new blocks come one by one */
    CHECK_OK(kv_session_set_limits(st, a, 64u << 20, 0, NULL));
    kv_chunk_t ch[64];
    CHECK_OK(kv_lane_view(st, a, 0, 0, ch, 64, &n));
    const uint32_t before = n;
    CHECK_OK(kvt_append(st, a, 3 * B, 20 * B, 5, NULL));
    CHECK_OK(kv_session_stats(st, a, &s1));
    CHECK_INT(kv_lane_view(st, a, 0, 0, ch, 64, &n), ==, 0);
    CHECK(n >= before + 2);
    /* the limit dissolved the runs that had free slots; full ones stay, their records
     * charged */
    CHECK_INT(s1.run_free_slots, ==, 0);
    CHECK(s1.runs > 0);

    /* every row gone: the runs go with their last blocks */
    CHECK_OK(kv_session_destroy(st, a));
    kv_store_stats(st, &g1);
    CHECK_INT(g1.run_free_bytes, ==, 0);
    CHECK_INT(g1.bytes, ==, g1.overhead_bytes);
    CHECK_INT(g1.je_allocated, ==, g1.bytes);
    kv_store_destroy(&st);
}

/* The lane's chunks [a, a+n) lie one after another, as one run lays them. */
static bool chunks_in_run(const kv_chunk_t *ch, uint32_t a, uint32_t n, size_t payload)
{
    for (uint32_t i = a; i + 1 < a + n; i++)
        if ((const uint8_t *)ch[i + 1].k != (const uint8_t *)ch[i].k + payload)
            return false;
    return true;
}

/* Lane 0 of `sid` holds rows at the positions `pos` (n of them) with the values kvt_append
 * wrote (tag 5). */
static void check_lane0_rows(kv_store_t *st, uint32_t sid, const uint32_t *pos, uint32_t n)
{
    kv_row_meta_t m[160];
    float k[160 * 32];
    uint32_t rows;
    CHECK_OK(kv_lane_size(st, sid, 0, 0, &rows, NULL));
    CHECK_INT(rows, ==, n);
    CHECK_OK(kv_lane_read(st, sid, 0, 0, 0, n, m, k, NULL));
    for (uint32_t i = 0; i < n; i++) {
        CHECK(m[i].pos == (float)pos[i]);
        for (uint32_t d = 0; d < 32; d += 7)
            CHECK_MSG(fabsf(k[i * 32 + d] - kvt_val(5, 0, pos[i], d)) < 2e-3f, "row %u d %u", i, d);
    }
}

/* Under a limit, an edit settles the lanes it touched: their blocks but the last 2 go into
 * full runs of 4 (or 2) in lane order, the rows unchanged; a run that loses a block is
 * dissolved in the same call, so the freed block's bytes go back at once and no free slot
 * stays charged; lanes not edited stay as they were; and where the limit leaves no room for a
 * run the edit still succeeds with its blocks left alone. */
static void test_settle_under_limit(void)
{
    const uint32_t B = 8;
    kv_store_t *st = kvt_store(1, 2, 32, B, DT_F16, 0);
    const size_t payload = 2 * B * 32 * 2, blk = kv_block_bytes(st, DT_F16);
    kv_session_config_t lim = {.hard_limit = 64u << 20};
    uint32_t sid;
    CHECK_OK(kv_session_create(st, &lim, &sid, NULL));
    for (uint32_t i = 0; i < 20; i++)
        CHECK_OK(kvt_append(st, sid, B, i * B, 5, NULL));
    kv_stats_t s0, s1, s2;
    CHECK_OK(kv_session_stats(st, sid, &s0));
    CHECK_INT(s0.runs, ==, 0); /* under a limit appends come one by one */

    /* row 0 of lane 0 goes: 159 rows in 20 blocks, of which 18 settle in runs 4+4+4+4+2 */
    uint32_t pos[160], n = 0;
    for (uint32_t p = 1; p < 160; p++)
        pos[n++] = p;
    uint32_t r0 = 0;
    CHECK_OK(kv_lane_evict(st, sid, 0, 0, &r0, 1, NULL));
    KVT_CHECK_STORE(st);
    CHECK_OK(kv_session_stats(st, sid, &s1));
    CHECK_INT(s1.runs, ==, 5);
    CHECK_INT(s1.run_blocks, ==, 18);
    CHECK_INT(s1.run_free_slots, ==, 0);
    CHECK_INT(s1.block_bytes, ==, s0.block_bytes); /* no block went: the payloads moved */
    CHECK_INT(s1.bytes, ==, s0.bytes + s1.run_free_bytes); /* the 5 runs' records */
    kv_chunk_t ch[20];
    uint32_t nc;
    CHECK_OK(kv_lane_view(st, sid, 0, 0, ch, 20, &nc));
    CHECK_INT(nc, ==, 20);
    for (uint32_t a = 0; a < 16; a += 4)
        CHECK_MSG(chunks_in_run(ch, a, 4, payload), "chunks %u-%u", a, a + 3);
    CHECK(chunks_in_run(ch, 16, 2, payload));
    check_lane0_rows(st, sid, pos, n); /* (and lane 1, not edited, has no run: 18 in all) */

    /* the last 39 rows go: blocks 15-19 are freed, so the run of 12-15 loses one and is
     * dissolved; 15 blocks are left, and 12 stay in the 3 runs before them. The bytes fall by
     * the 5 blocks and 2 runs' records, at once */
    uint32_t tail[39];
    for (uint32_t i = 0; i < 39; i++)
        tail[i] = 120 + i;
    n = 120;
    CHECK_OK(kv_lane_evict(st, sid, 0, 0, tail, 39, NULL));
    KVT_CHECK_STORE(st);
    CHECK_OK(kv_session_stats(st, sid, &s2));
    CHECK_INT(s2.runs, ==, 3);
    CHECK_INT(s2.run_blocks, ==, 12);
    CHECK_INT(s2.run_free_slots, ==, 0);
    CHECK_INT(s1.block_bytes - s2.block_bytes, ==, 5 * blk);
    CHECK_INT(s1.bytes - s2.bytes, ==, 5 * blk + s1.run_free_bytes - s2.run_free_bytes);
    CHECK_OK(kv_lane_view(st, sid, 0, 0, ch, 20, &nc));
    CHECK_INT(nc, ==, 15);
    for (uint32_t a = 0; a < 12; a += 4)
        CHECK(chunks_in_run(ch, a, 4, payload));
    check_lane0_rows(st, sid, pos, n);

    /* no room under the hard limit for a run: the edit of lane 1 goes through (it frees
     * nothing and allocates nothing), and its blocks stay where they lie */
    CHECK_OK(kv_session_set_limits(st, sid, s2.bytes, 0, NULL));
    r0 = 0;
    CHECK_OK(kv_lane_evict(st, sid, 0, 1, &r0, 1, NULL));
    KVT_CHECK_STORE(st);
    CHECK_OK(kv_session_stats(st, sid, &s1));
    CHECK_INT(s1.runs, ==, s2.runs);
    CHECK_INT(s1.run_blocks, ==, s2.run_blocks);
    CHECK_INT(s1.bytes, ==, s2.bytes);
    kv_store_destroy(&st);
}

int main(void)
{
    RUN(test_append_and_view);
    RUN(test_f16_tier);
    RUN(test_q8_0_tier);
    RUN(test_budget);
    RUN(test_memory_goes_back);
    RUN(test_fork_shares);
    RUN(test_span_replace_and_expand);
    RUN(test_demote);
    RUN(test_reservation);
    RUN(test_attn_acc);
    RUN(test_gist_over_limit);
    RUN(test_runs);
    RUN(test_settle_under_limit);
    return check_done();
}
