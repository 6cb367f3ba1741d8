/*
 * tests/test_policy_gist.c — gists on synthetic lanes: pooled sentence gists (their rows
 * against RoPE and means computed here), gists of gists, learned gists through a fake runner
 * (the mask it is given, where the gist rows land, what goes), explicit compaction of a span
 * and of the last thought, making room, and the policy state's snapshot.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy/policy.h"
#include "tests/check.h"
#include "tests/test_policy_util.h"

/* Checks every non-raw row of every lane against its members: K is u_l rotated at the row's
 * position (the members' mass-weighted mean), V the mean of the members' V, the mass the
 * member count. Members of a pooled row are the raw positions of its span minus the sinks.
 * Returns the rows checked at each level (levels[0..3]). */
static void check_pooled(pt_fx_t *f, uint32_t sinks, uint32_t levels[4])
{
    memset(levels, 0, 4 * sizeof *levels);
    for (uint32_t l = 0; l < PT_LANES; l++) {
        uint32_t rows = 0;
        kv_lane_size(f->st, f->sid, l / PT_HEADS, l % PT_HEADS, &rows, NULL);
        kv_row_meta_t *m = malloc(sizeof *m * rows);
        float *k = malloc(sizeof(float) * rows * PT_HD), *v = malloc(sizeof(float) * rows * PT_HD);
        CHECK_OK(kv_lane_read(f->st, f->sid, l / PT_HEADS, l % PT_HEADS, 0, rows, m, k, v));
        for (uint32_t i = 0; i < rows; i++) {
            if (m[i].kind != KV_KIND_POOLED)
                continue;
            levels[m[i].level < 4 ? m[i].level : 3]++;
            /* the members: the row's span is contiguous raw positions (gists of gists stand
             * for all the raw positions under them, each of mass 1) */
            double mean = 0, vv[PT_HD] = {0};
            uint32_t cnt = 0;
            for (uint32_t t = m[i].first; t <= m[i].last; t++) {
                if (t < sinks)
                    continue;
                mean += t;
                for (int d = 0; d < PT_HD; d++)
                    vv[d] += pt_v(l, t, (uint32_t)d);
                cnt++;
            }
            CHECK_NEAR(m[i].mass, cnt, 1e-3);
            mean /= cnt;
            CHECK_NEAR(m[i].pos, mean, 1e-3);
            float kk[PT_HD];
            pt_k(l, mean, kk);
            for (int d = 0; d < PT_HD; d++) {
                CHECK_NEAR(k[i * PT_HD + d], kk[d], 2e-4);
                CHECK_NEAR(v[i * PT_HD + d], vv[d] / cnt, 2e-5);
            }
        }
        free(m);
        free(k);
        free(v);
    }
}

static void test_pool_replaces_old_sentences(void)
{
    pt_fx_t f;
    err_info_t e;
    pol_param_t ps[] = {{"merge", "0"}, {"gist_rows", "2"}, {"recent", "12"}, {"recent_frac", "0"}};
    pt_opts_t o = {.name = "pool", .params = ps, .n_params = 4};
    CHECK_OK(pt_open(&f, &o, &e));
    const char **text = pt_text(120, 10);
    CHECK_OK(pt_feed(&f, text, 120, 4, &e));
    CHECK_INT(f.n_ev, ==, 0);
    size_t b0 = pt_bytes(&f);
    /* shrink by a quarter: the oldest sentences are pooled, nothing is evicted */
    CHECK_OK(pol_shrink(f.p, b0 * 3 / 4, &e));
    CHECK(pt_bytes(&f) <= b0 * 3 / 4);
    CHECK(f.n_ev > 0);
    uint32_t next = 4; /* sinks are never pooled */
    for (uint32_t i = 0; i < f.n_ev; i++) {
        CHECK_INT(f.ev[i].action, ==, POL_GIST);
        CHECK_INT(f.ev[i].method, ==, POL_M_POOLED);
        CHECK_INT(f.ev[i].level, ==, 1);
        CHECK_INT(f.ev[i].first, ==, next); /* oldest first, no gaps */
        CHECK(f.ev[i].last < 120 - 12);     /* the recent window stays raw */
        CHECK_INT(f.ev[i].lanes, ==, PT_LANES);
        next = f.ev[i].last + 1;
    }
    uint32_t lv[4];
    check_pooled(&f, 4, lv);
    CHECK(lv[1] > 0);
    CHECK_INT(lv[2], ==, 0);
    /* each pooled sentence has 2 rows per lane: rows after = 2 per sentence per lane */
    for (uint32_t i = 0; i < f.n_ev; i++)
        CHECK_INT(f.ev[i].rows_after % (2 * PT_LANES), ==, 0);
    free(text);
    pt_close(&f);
}

static void test_merges_make_level_two(void)
{
    pt_fx_t f;
    err_info_t e;
    pol_param_t ps[] = {{"merge", "3"}, {"gist_rows", "2"}, {"recent", "8"}, {"recent_frac", "0"}};
    pt_opts_t o = {.name = "pool", .params = ps, .n_params = 4};
    CHECK_OK(pt_open(&f, &o, &e));
    const char **text = pt_text(400, 8);
    size_t hard, soft;
    size_t blk = kv_block_bytes(f.st, DT_F32);
    hard = pt_bytes(&f) + PT_LANES * 5 * blk + pol_headroom(f.p, 2) + 16384;
    soft = hard - pol_headroom(f.p, 2);
    CHECK_OK(kv_session_set_limits(f.st, f.sid, hard, soft, NULL));
    CHECK_OK(pt_feed(&f, text, 400, 2, &e));
    kv_stats_t s;
    kv_session_stats(f.st, f.sid, &s);
    CHECK_INT(s.peak, <=, hard);
    uint32_t kinds[POL_N_ACTIONS] = {0};
    for (uint32_t i = 0; i < f.n_ev; i++) {
        kinds[f.ev[i].action]++;
        if (f.ev[i].action == POL_MERGE) {
            CHECK(f.ev[i].level >= 2);
            /* three sentences of 8 tokens at least (the first starts after the sinks) */
            CHECK(f.ev[i].tokens >= 3 * 8 - 4);
        }
    }
    CHECK(kinds[POL_GIST] > 0);
    CHECK(kinds[POL_MERGE] > 0);
    uint32_t lv[4];
    check_pooled(&f, 4, lv);
    CHECK(lv[2] > 0);
    /* gists come before merges of the same positions: every merge event's span was pooled */
    pol_stats_t st;
    pol_stats(f.p, &st);
    CHECK_INT(st.events[POL_MERGE][POL_M_POOLED], ==, kinds[POL_MERGE]);
    CHECK_INT(st.bytes_freed, ==, pt_event_freed(&f));
    free(text);
    pt_close(&f);
}

static void test_learned_gists_follow_sentences(void)
{
    pt_fx_t f;
    err_info_t e;
    pt_opts_t o = {.name = "gist", .n_gist = 2};
    CHECK_OK(pt_open(&f, &o, &e));
    /* sentences of 6 tokens: BOS " w" x4 "." | " w" x5 "." | ... */
    const char **text = pt_text(40, 6);
    pol_text_t t[40];
    for (int i = 0; i < 40; i++)
        t[i] = (pol_text_t){text[i], (uint32_t)strlen(text[i])};
    /* a batch stops at a sentence boundary */
    uint32_t k;
    CHECK_OK(pol_next(f.p, t, 40, &k, &e));
    CHECK_INT(k, ==, 7); /* positions 0..6 close at the "." of position 6 */
    CHECK_OK(pt_feed(&f, text, 40, 100, &e));
    CHECK_INT(f.runs, ==, 6); /* sentences ending at text positions 6, 12, ..., 36 */
    CHECK_INT(f.last_run.n, ==, 2);
    CHECK_INT(f.run_tokens[0], ==, 500);
    CHECK_INT(f.run_tokens[1], ==, 501);
    CHECK(f.last_run.see_gists);
    /* the mask of the last run: the sink, its own sentence */
    CHECK_INT(f.last_run.n_see, ==, 2);
    CHECK_NEAR(f.see[0][0], 0, 0);
    CHECK_NEAR(f.see[0][1], 0, 0);
    /* it saw the sink, its sentence's 6 rows, and 5 earlier gist groups of 2 */
    CHECK_INT(f.visible, ==, 1 + 6 + 5 * 2);
    CHECK_NEAR(f.see[1][1] - f.see[1][0], 5, 0);

    /* the transcript: text, then the gist ids right after each sentence */
    uint32_t len, tok[64];
    kv_transcript_len(f.st, f.sid, &len);
    CHECK_INT(len, ==, 40 + 6 * 2);
    CHECK_OK(kv_transcript_read(f.st, f.sid, 0, len, tok, NULL));
    CHECK_INT(tok[7], ==, 500);
    CHECK_INT(tok[8], ==, 501);
    CHECK_INT(tok[6], !=, 500);
    /* the lanes: the sink, then 2 gist rows per sentence, then the open sentence's raw rows */
    for (uint32_t l = 0; l < PT_LANES; l++) {
        kv_row_meta_t m[64];
        uint32_t n = pt_positions(&f, l, NULL, m, 64);
        CHECK_INT(n, ==, 1 + 6 * 2 + 3); /* the open sentence: text tokens 37..39 */
        CHECK_INT(m[0].kind, ==, KV_KIND_RAW);
        CHECK_NEAR(m[0].pos, 0, 0);
        for (uint32_t g = 0; g < 12; g++) {
            const kv_row_meta_t *r = &m[1 + g];
            CHECK_INT(r->kind, ==, KV_KIND_GIST);
            CHECK_INT(r->level, ==, 1);
            /* sentence 0 is positions 0..6; sentence s > 0 starts at 8s + 1 (6 text tokens,
             * after s groups of 2 gists) */
            uint32_t s = g / 2;
            CHECK_INT(r->first, ==, s == 0 ? 0 : 8 * s + 1);
            CHECK_INT(r->last, ==, 8 * s + 6);
            CHECK_NEAR(r->pos, r->last + 1 + (g % 2), 0);
        }
        for (uint32_t i = 13; i < n; i++)
            CHECK_INT(m[i].kind, ==, KV_KIND_RAW);
    }
    for (uint32_t i = 0; i < f.n_ev; i++) {
        CHECK_INT(f.ev[i].action, ==, POL_GIST);
        CHECK_INT(f.ev[i].method, ==, POL_M_LEARNED);
        CHECK_INT(f.ev[i].reason, ==, POL_R_SENTENCE);
        CHECK_INT(f.ev[i].rows_after, ==, 2 * PT_LANES);
    }
    CHECK_INT(f.n_ev, ==, 6);
    pol_stats_t st;
    pol_stats(f.p, &st);
    CHECK_INT(st.gist_tokens, ==, 12);
    CHECK_INT(st.sentences, ==, 6);
    CHECK_INT(st.text_tokens, ==, 40);
    /* the end of a turn closes the open sentence at once */
    CHECK_OK(pol_end_turn(f.p, &e));
    CHECK_INT(f.runs, ==, 7);
    free(text);
    pt_close(&f);
}

static void test_learned_gists_under_budget(void)
{
    pt_fx_t f;
    err_info_t e;
    pt_opts_t o = {.name = "gist", .n_gist = 2, .block_rows = 4};
    CHECK_OK(pt_open(&f, &o, &e));
    size_t blk = kv_block_bytes(f.st, DT_F32);
    size_t hard = pt_bytes(&f) + PT_LANES * 4 * blk + pol_headroom(f.p, 3) + 16384;
    CHECK_OK(kv_session_set_limits(f.st, f.sid, hard, hard - pol_headroom(f.p, 3), NULL));
    const char **text = pt_text(300, 7);
    CHECK_OK(pt_feed(&f, text, 300, 3, &e));
    kv_stats_t s;
    kv_session_stats(f.st, f.sid, &s);
    CHECK_INT(s.peak, <=, hard);
    pol_stats_t st;
    pol_stats(f.p, &st);
    CHECK(st.events[POL_GIST][POL_M_LEARNED] > 30);
    CHECK(st.events[POL_MERGE][POL_M_POOLED] > 0);
    CHECK_INT(st.bytes_freed, ==, pt_event_freed(&f));
    CHECK_OK(kv_store_check(f.st, &e));
    /* a refusing runner: the gist step fails with the store's reason, nothing is lost */
    f.refuse_runs = true;
    const char *more[] = {" w", " w", ".", " w"};
    int rc = pt_feed(&f, more, 4, 1, &e);
    CHECK_INT(rc, ==, ERR_BUDGET);
    free(text);
    pt_close(&f);
}

static void test_compact_span_and_last_thought(void)
{
    pt_fx_t f;
    err_info_t e;
    pol_param_t ps[] = {{"gist_rows", "1"}};
    pt_opts_t o = {.name = "pool", .params = ps, .n_params = 1};
    CHECK_OK(pt_open(&f, &o, &e));
    pol_compact_req_t lt = {.last_thought = true};
    CHECK_INT(pol_compact(f.p, &lt, &e), ==, ERR_NOTFOUND);
    /* thought 1: positions 0..13 (two sentences and a paragraph break), thought 2: 14..23 */
    const char *a[] = {"",   "A",    " b", ".", " C", " d", " e", ".",  " F", " g", ".", " H", "\n",
                       "\n", "Next", " i", ".", " J", " k", " l", " m", "\n", "\n", "x", " y"};
    CHECK_OK(pt_feed(&f, a, 25, 25, &e));
    CHECK_OK(pol_mark_thought(f.p, &e)); /* nothing open after "x y"? it is: closes 23..24 */
    pol_stats_t st;
    pol_stats(f.p, &st);
    CHECK_INT(st.thoughts, ==, 3);
    CHECK_OK(pol_compact(f.p, &lt, &e));
    /* the last finished thought is "x y" (23..24) after the second break */
    CHECK_INT(f.n_ev, ==, 1);
    CHECK_INT(f.ev[0].reason, ==, POL_R_REQUEST);
    CHECK_INT(f.ev[0].first, ==, 23);
    CHECK_INT(f.ev[0].last, ==, 24);
    /* an explicit span, pins and the recent window included */
    CHECK_OK(pol_pin_span(f.p, 4, 7, &e));
    pol_compact_req_t sp = {.first = 4, .last = 10};
    CHECK_OK(pol_compact(f.p, &sp, &e));
    CHECK_INT(f.n_ev, ==, 2);
    CHECK_INT(f.ev[1].first, ==, 4);
    CHECK_INT(f.ev[1].last, ==, 10);
    CHECK_INT(f.ev[1].rows_after, ==, 2 * PT_LANES); /* sentences 4..7 and 8..10, one row */
    uint32_t lv[4];
    check_pooled(&f, 4, lv);
    CHECK_INT(lv[1], ==, 3 * PT_LANES);
    pol_compact_req_t bad = {.first = 5, .last = 99};
    CHECK_INT(pol_compact(f.p, &bad, &e), ==, ERR_RANGE);
    pt_close(&f);
}

static void test_make_room(void)
{
    pt_fx_t f;
    err_info_t e;
    pt_opts_t o = {.name = "auto"};
    CHECK_OK(pt_open(&f, &o, &e));
    const char **text = pt_text(200, 9);
    CHECK_OK(pt_feed(&f, text, 200, 16, &e));
    size_t b0 = pt_bytes(&f), need = b0 / 3;
    CHECK_OK(pol_make_room(f.p, need, &e));
    CHECK(b0 - pt_bytes(&f) >= need);
    CHECK_INT((int64_t)(b0 - pt_bytes(&f)), ==, pt_event_freed(&f));
    for (uint32_t i = 0; i < f.n_ev; i++)
        CHECK_INT(f.ev[i].reason, ==, POL_R_BUDGET);
    /* more than everything unpinned: ERR_BUDGET, after freeing what it could */
    CHECK_INT(pol_make_room(f.p, b0 * 10, &e), ==, ERR_BUDGET);
    CHECK(strstr(e.msg, "pinned") != NULL);
    free(text);
    pt_close(&f);
}

static void test_save_load(void)
{
    pt_fx_t f;
    err_info_t e;
    pt_opts_t o = {.name = "pool"};
    CHECK_OK(pt_open(&f, &o, &e));
    const char **text = pt_text(90, 7);
    CHECK_OK(pt_feed(&f, text, 90, 5, &e));
    CHECK_OK(pol_pin_span(f.p, 10, 12, &e));
    CHECK_OK(pol_shrink(f.p, pt_bytes(&f) / 2, &e));
    uint8_t *buf = NULL, *buf2 = NULL;
    size_t len = 0, len2 = 0;
    CHECK_OK(pol_save(f.p, &buf, &len));
    pol_config_t pc = {.name = "pool",
                       .store = f.st,
                       .sid = f.sid,
                       .model = {.rope = *pt_rope_kv()}};
    pol_t *q = NULL;
    CHECK_OK(pol_new(&pc, &q, &e));
    CHECK_OK(pol_load(q, buf, len, &e));
    CHECK_OK(pol_save(q, &buf2, &len2));
    CHECK_INT(len2, ==, len);
    CHECK(len == len2 && memcmp(buf, buf2, len) == 0);
    pol_stats_t a, b;
    pol_stats(f.p, &a);
    pol_stats(q, &b);
    CHECK(memcmp(&a, &b, sizeof a) == 0);
    /* corrupt, truncated, another policy's */
    buf[len / 2] ^= 1;
    CHECK_INT(pol_load(q, buf, len, &e), ==, ERR_CORRUPT);
    buf[len / 2] ^= 1;
    CHECK_INT(pol_load(q, buf, len - 9, &e), ==, ERR_CORRUPT);
    pol_t *w = NULL;
    pc.name = "window";
    CHECK_OK(pol_new(&pc, &w, &e));
    CHECK_INT(pol_load(w, buf, len, &e), ==, ERR_FORMAT);
    CHECK(strstr(e.msg, "pool") != NULL);
    pol_destroy(&w);
    pol_destroy(&q);
    CHECK(q == NULL);
    pol_destroy(&q);
    free(buf);
    free(buf2);
    free(text);
    pt_close(&f);
}

/* With no room for a gist step's new rows (the hard limit right above the session), the
 * step frees the span first and then inserts the gists: pooled rows, never over the limit. */
static void test_pool_frees_first_when_tight(void)
{
    pt_fx_t f;
    err_info_t e;
    pol_param_t ps[] = {{"recent_frac", "0"}, {"merge", "0"}};
    pt_opts_t o = {.name = "pool", .params = ps, .n_params = 2, .block_rows = 4};
    CHECK_OK(pt_open(&f, &o, &e));
    const char **text = pt_text(100, 10);
    CHECK_OK(pt_feed(&f, text, 100, 8, &e));
    size_t b0 = pt_bytes(&f), blk = kv_block_bytes(f.st, DT_F32);
    CHECK_OK(kv_session_set_limits(f.st, f.sid, b0 + blk / 2, b0 - 1, NULL));
    CHECK_OK(pol_commit(f.p, NULL, 0, &e));
    CHECK(f.n_ev >= 1);
    CHECK_INT(f.ev[0].action, ==, POL_GIST);
    CHECK_INT(f.ev[0].method, ==, POL_M_POOLED);
    CHECK(f.ev[0].tokens >= 12); /* min_gist: three blocks of 4 rows */
    kv_stats_t s;
    kv_session_stats(f.st, f.sid, &s);
    CHECK_INT(s.peak, <=, b0 + blk / 2);
    CHECK(s.bytes < b0);
    CHECK_INT((int64_t)(b0 - s.bytes), ==, pt_event_freed(&f));
    uint32_t lv[4];
    check_pooled(&f, 4, lv);
    CHECK(lv[1] > 0);
    CHECK_OK(kv_store_check(f.st, &e));
    free(text);
    pt_close(&f);
}

/* recent_frac pins a share of what the budget holds: the newest positions stay in every
 * lane, however little attention they got. */
static void test_recent_share_of_budget(void)
{
    pt_fx_t f;
    err_info_t e;
    pol_param_t ps[] = {{"recent_frac", "0.5"}, {"recent", "0"}};
    pt_opts_t o = {.name = "h2o", .params = ps, .n_params = 2};
    CHECK_OK(pt_open(&f, &o, &e));
    f.old_heavy = true; /* without the pin, the newest rows would go first */
    size_t blk = kv_block_bytes(f.st, DT_F32) + 8 * sizeof(float);
    size_t hard = pt_bytes(&f) + PT_LANES * 8 * blk + 16384;
    CHECK_OK(kv_session_set_limits(f.st, f.sid, hard, hard - pol_headroom(f.p, 1), NULL));
    const char **text = pt_text(400, 9);
    CHECK_OK(pt_feed(&f, text, 400, 1, &e));
    /* the budget holds about 8 blocks of 8 rows per lane: at least the newest 24 positions
     * are pinned, though they have the least accumulated attention */
    for (uint32_t l = 0; l < PT_LANES; l++) {
        float pos[512];
        uint32_t n = pt_positions(&f, l, pos, NULL, 512);
        CHECK(n < 80);
        uint32_t recent = 0;
        for (uint32_t i = 0; i < n; i++)
            recent += pos[i] >= 400 - 24;
        CHECK_INT(recent, ==, 24);
    }
    kv_stats_t s;
    kv_session_stats(f.st, f.sid, &s);
    CHECK_INT(s.peak, <=, hard);
    free(text);
    pt_close(&f);
}

int main(void)
{
    RUN(test_pool_replaces_old_sentences);
    RUN(test_merges_make_level_two);
    RUN(test_learned_gists_follow_sentences);
    RUN(test_learned_gists_under_budget);
    RUN(test_compact_span_and_last_thought);
    RUN(test_make_room);
    RUN(test_save_load);
    RUN(test_pool_frees_first_when_tight);
    RUN(test_recent_share_of_budget);
    return check_done();
}
