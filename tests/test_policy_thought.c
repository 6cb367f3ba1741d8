/*
 * tests/test_policy_thought.c — thoughts as the unit of compression: paragraph breaks after
 * a sentence's end mark thoughts (the text rule), unit=thought pools and merges whole
 * finished thoughts, eviction spares the open thought and finished thoughts' gists outlast it,
 * Compact{last_thought} right after a paragraph break takes the thought that break ended, and
 * learned gists of a sentence in the sinks keep its rows.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy/policy.h"
#include "policy/segment.h"
#include "tests/check.h"
#include "tests/test_policy_util.h"

#define SENT   3  /* sentences a thought */
#define TLEN   14 /* tokens a thought: SENT x (" w", " w", " w", ".") + "\n", "\n" */
#define MAXTOK 512

/* "" then `thoughts` thoughts, then `open` sentences of an unfinished one. Thought k covers
 * positions [1 + k*TLEN, (k+1)*TLEN] (the first also holds position 0). */
static uint32_t thought_text(uint32_t thoughts, uint32_t open, const char **p)
{
    uint32_t n = 0;
    p[n++] = "";
    for (uint32_t t = 0; t < thoughts + 1; t++) {
        uint32_t ns = t < thoughts ? SENT : open;
        for (uint32_t s = 0; s < ns; s++) {
            p[n++] = " w";
            p[n++] = " w";
            p[n++] = " w";
            p[n++] = ".";
        }
        if (t < thoughts) {
            p[n++] = "\n";
            p[n++] = "\n";
        }
    }
    return n;
}

static uint32_t thought_first(uint32_t k)
{
    return k == 0 ? 0 : 1 + k * TLEN;
}

static uint32_t thought_last(uint32_t k)
{
    return (k + 1) * TLEN;
}

/* ------------------------------------------------------------------ segmenter */

static void test_paragraph_after_sentence_end(void)
{
    const char *a[] = {"End", ".", "\n", "\n", "Next", " one", "."};
    char out[8];
    for (int train = 0; train < 2; train++) {
        pol_seg_cfg_t c = {.train_rule = train};
        pol_seg_t s;
        pol_seg_init(&s, &c);
        CHECK(!pol_seg_after_paragraph(&s));
        for (uint32_t i = 0; i < 7; i++) {
            if (i == 4)
                CHECK(pol_seg_after_paragraph(&s)); /* "End.\n\n": a thought just ended */
            else
                CHECK(!pol_seg_after_paragraph(&s));
            out[i] = ".SPL"[pol_seg_push(&s, a[i], (uint32_t)strlen(a[i]))];
        }
        out[7] = 0;
        /* the text rule marks the thought; the training rule is the one gists learned */
        CHECK_STR(out, train ? "..S...." : "..S.P..");
    }
    /* newlines before any text, and one newline after a sentence, end no thought */
    const char *b[] = {"\n", "\n", "Go", ".", "\n", "On"};
    pol_seg_cfg_t c = {0};
    pol_seg_t s;
    pol_seg_init(&s, &c);
    for (uint32_t i = 0; i < 6; i++)
        out[i] = ".SPL"[pol_seg_push(&s, b[i], (uint32_t)strlen(b[i]))];
    out[6] = 0;
    CHECK_STR(out, "....S.");
}

/* ------------------------------------------------------------------ unit=thought */

/* Pooled rows stand for whole finished thoughts: in every lane, a thought (from the sinks
 * on) that a pooled row reaches into keeps no raw row, no pooled row reaches past thought
 * `done - 1`, and every row at or after `open` is raw (open_rows of them). Returns the
 * pooled rows of lane 0. */
static uint32_t check_whole_thoughts(pt_fx_t *f, uint32_t sinks, uint32_t done, uint32_t open,
                                     uint32_t open_rows)
{
    static kv_row_meta_t m[MAXTOK];
    uint32_t pooled0 = 0;
    for (uint32_t l = 0; l < PT_LANES; l++) {
        uint32_t rows = pt_positions(f, l, NULL, m, MAXTOK), raw_open = 0;
        bool raw[64] = {false}, pooled[64] = {false};
        for (uint32_t i = 0; i < rows; i++) {
            if (m[i].pos >= (float)open) {
                CHECK_INT(m[i].kind, ==, KV_KIND_RAW);
                raw_open++;
                continue;
            }
            for (uint32_t k = 0; k < done; k++) {
                uint32_t lo = thought_first(k) > sinks ? thought_first(k) : sinks;
                if (m[i].kind == KV_KIND_RAW && m[i].pos >= (float)lo &&
                    m[i].pos <= (float)thought_last(k))
                    raw[k] = true;
                if (m[i].kind == KV_KIND_POOLED && m[i].first <= thought_last(k) && m[i].last >= lo)
                    pooled[k] = true;
            }
            if (m[i].kind == KV_KIND_POOLED) {
                pooled0 += l == 0;
                CHECK(m[i].last <= thought_last(done - 1));
            }
        }
        for (uint32_t k = 0; k < done; k++)
            CHECK(!(raw[k] && pooled[k]));
        CHECK_INT(raw_open, ==, open_rows);
    }
    return pooled0;
}

/* A pool session (unit=thought, a row a thought, no merges) fed 6 thoughts and `open`
 * sentences of a seventh, then shrunk to half its bytes. Returns its tokens; *b0: its bytes
 * before the shrink. */
static uint32_t pooled_session(pt_fx_t *f, uint32_t open, size_t *b0)
{
    err_info_t e;
    pol_param_t ps[] = {{"unit", "thought"}, {"gist_rows", "1"}, {"merge", "0"}};
    pt_opts_t o = {.name = "pool", .params = ps, .n_params = 3};
    CHECK_OK(pt_open(f, &o, &e));
    const char *text[MAXTOK];
    uint32_t n = thought_text(6, open, text);
    CHECK_OK(pt_feed(f, text, n, 5, &e));
    *b0 = pt_bytes(f);
    CHECK_OK(pol_shrink(f->p, *b0 / 2, &e));
    return n;
}

static void test_pool_whole_thoughts(void)
{
    pt_fx_t f;
    err_info_t e;
    size_t b0;
    uint32_t n = pooled_session(&f, 2, &b0), open = 1 + 6 * TLEN;
    pol_stats_t st;
    pol_stats(f.p, &st);
    CHECK_INT(st.thoughts, ==, 6);
    CHECK(pt_bytes(&f) <= b0 / 2);
    for (uint32_t i = 0; i < f.n_ev; i++) /* pooling was enough: nothing evicted */
        CHECK_INT(f.ev[i].action, ==, POL_GIST);
    /* one row a lane for each pooled thought (gist_rows=1), none from the open one */
    uint32_t pooled = check_whole_thoughts(&f, 4, 6, open, n - open);
    CHECK(pooled >= 2 && pooled <= 6);
    CHECK_INT(f.ev[0].rows_after, ==, pooled * PT_LANES);
    CHECK_INT(pt_event_freed(&f), ==, (int64_t)(b0 - pt_bytes(&f)));
    pt_close(&f);

    /* merges take whole thoughts too (merge=2), and the open thought stays raw throughout */
    pol_param_t pm[] = {{"unit", "thought"}, {"gist_rows", "2"}, {"merge", "2"}};
    pt_opts_t om = {.name = "pool", .params = pm, .n_params = 3};
    CHECK_OK(pt_open(&f, &om, &e));
    const char *text[MAXTOK];
    n = thought_text(12, 1, text);
    open = 1 + 12 * TLEN;
    CHECK_OK(pt_feed(&f, text, n, 7, &e));
    b0 = pt_bytes(&f);
    CHECK_OK(pol_shrink(f.p, b0 / 5, &e));
    pol_stats(f.p, &st);
    CHECK(st.events[POL_MERGE][POL_M_POOLED] > 0);
    check_whole_thoughts(&f, 4, 12, open, st.events[POL_EVICT][POL_M_RECENCY] ? 0 : n - open);
    pt_close(&f);
}

static void test_evict_spares_open_thought(void)
{
    const char *names[] = {"h2o", "window", "tova"};
    for (int q = 0; q < 3; q++) {
        pt_fx_t f;
        err_info_t e;
        pol_param_t ps[] = {{"unit", "thought"}};
        pt_opts_t o = {.name = names[q], .params = ps, .n_params = 1};
        CHECK_OK(pt_open(&f, &o, &e));
        const char *text[MAXTOK];
        uint32_t n = thought_text(5, 3, text), open = 1 + 5 * TLEN;
        CHECK_OK(pt_feed(&f, text, n, 4, &e));
        size_t b0 = pt_bytes(&f);
        CHECK_OK(pol_shrink(f.p, b0 / 2, &e));
        CHECK(pt_bytes(&f) <= b0 / 2);
        CHECK(f.n_ev > 0);
        for (uint32_t i = 0; i < f.n_ev; i++) { /* finished thoughts only */
            CHECK_INT(f.ev[i].action, ==, POL_EVICT);
            CHECK(f.ev[i].last < open);
        }
        check_whole_thoughts(&f, 4, 5, open, n - open);
        /* past what finished thoughts hold, the open thought gives rows too (no failure) */
        uint32_t before = f.n_ev;
        CHECK_OK(pol_shrink(f.p, b0 / 8, &e));
        CHECK(f.n_ev > before);
        CHECK(f.ev[f.n_ev - 1].last >= open);
        /* and then no unpinned row of a finished thought is left in any lane */
        static kv_row_meta_t m[MAXTOK];
        for (uint32_t l = 0; l < PT_LANES; l++) {
            uint32_t rows = pt_positions(&f, l, NULL, m, MAXTOK);
            for (uint32_t i = 0; i < rows; i++)
                CHECK(m[i].pos < 4.0f || m[i].pos >= (float)open);
        }
        pt_close(&f);
    }
}

/* Rows of lane l: pooled, and raw at or after `open`. */
static void lane_kinds(pt_fx_t *f, uint32_t l, uint32_t open, uint32_t *pooled, uint32_t *open_raw)
{
    static kv_row_meta_t m[MAXTOK];
    uint32_t rows = pt_positions(f, l, NULL, m, MAXTOK);
    *pooled = *open_raw = 0;
    for (uint32_t i = 0; i < rows; i++) {
        *pooled += m[i].kind == KV_KIND_POOLED;
        *open_raw += m[i].kind == KV_KIND_RAW && m[i].pos >= (float)open;
    }
}

static void test_gists_outlast_open_thought(void)
{
    pt_fx_t f;
    err_info_t e;
    size_t b0;
    pooled_session(&f, 3, &b0); /* pooling is enough (test_pool_whole_thoughts) */
    const uint32_t open = 1 + 6 * TLEN;
    uint32_t pooled[PT_LANES], open_raw[PT_LANES];
    for (uint32_t l = 0; l < PT_LANES; l++)
        lane_kinds(&f, l, open, &pooled[l], &open_raw[l]);
    CHECK(pooled[0] > 0);
    /* less room than the open thought takes: it gives rows, its finished thoughts' gists stay */
    const uint32_t ev0 = f.n_ev;
    CHECK_OK(pol_shrink(f.p, pt_bytes(&f) * 7 / 8, &e));
    CHECK(f.n_ev > ev0);
    for (uint32_t i = ev0; i < f.n_ev; i++) {
        CHECK_INT(f.ev[i].action, ==, POL_EVICT);
        CHECK(f.ev[i].first >= open);
    }
    for (uint32_t l = 0; l < PT_LANES; l++) {
        uint32_t p2, o2;
        lane_kinds(&f, l, open, &p2, &o2);
        CHECK_INT(p2, ==, pooled[l]);
        CHECK(o2 < open_raw[l]);
    }
    /* with less room than the gists take, the gists go too (no failure) */
    CHECK_OK(pol_shrink(f.p, pt_bytes(&f) / 4, &e));
    uint32_t p3, o3;
    lane_kinds(&f, 0, open, &p3, &o3);
    CHECK(p3 < pooled[0]);
    pt_close(&f);
}

static void test_unit_parameter(void)
{
    pt_fx_t f;
    err_info_t e;
    pol_param_t bad[] = {{"unit", "paragraph"}};
    pt_opts_t o = {.name = "pool", .params = bad, .n_params = 1};
    CHECK_INT(pt_open(&f, &o, &e), ==, ERR_INVAL);
    CHECK(strstr(e.msg, "sentence or thought") != NULL);
    pt_close(&f);
    /* saved and loaded with the policy's state */
    pol_param_t ps[] = {{"unit", "thought"}};
    pt_opts_t ot = {.name = "pool", .params = ps, .n_params = 1};
    CHECK_OK(pt_open(&f, &ot, &e));
    const char *text[MAXTOK];
    uint32_t n = thought_text(4, 1, text);
    CHECK_OK(pt_feed(&f, text, n, 3, &e));
    uint8_t *buf = NULL;
    size_t len = 0;
    CHECK_OK(pol_save(f.p, &buf, &len));
    pol_config_t pc = {
        .name = "pool", .store = f.st, .sid = f.sid, .model = {.rope = *pt_rope_kv()}};
    pol_t *q = NULL;
    CHECK_OK(pol_new(&pc, &q, &e)); /* made without unit=thought: the state brings it */
    CHECK_OK(pol_load(q, buf, len, &e));
    pol_t *mine = f.p;
    f.p = q;
    size_t b0 = pt_bytes(&f);
    CHECK_OK(pol_shrink(f.p, b0 / 2, &e));
    check_whole_thoughts(&f, 4, 4, 1 + 4 * TLEN, n - (1 + 4 * TLEN));
    pol_destroy(&mine);
    free(buf);
    pt_close(&f);
}

/* ------------------------------------------------------------------ last_thought */

static void test_compact_right_after_a_break(void)
{
    pt_fx_t f;
    err_info_t e;
    pt_opts_t o = {.name = "pool"};
    CHECK_OK(pt_open(&f, &o, &e));
    /* a question (0..6), then a thought that ends "x.\n\n" (7..13): nothing follows yet */
    const char *a[] = {"", "Q", " a", " b", "?", "\n", "\n", "T", " c", ".", " d", ".", "\n", "\n"};
    CHECK_OK(pt_feed(&f, a, 14, 14, &e));
    pol_compact_req_t lt = {.last_thought = true};
    CHECK_OK(pol_compact(f.p, &lt, &e));
    CHECK_INT(f.n_ev, ==, 1);
    CHECK_INT(f.ev[0].first, ==, 7);
    CHECK_INT(f.ev[0].last, ==, 13);
    /* the next token starts a thought, and no second boundary follows the same break */
    const char *b[] = {"U", " e", ".", "\n", "\n"};
    CHECK_OK(pt_feed(&f, b, 5, 5, &e));
    pol_stats_t st;
    pol_stats(f.p, &st);
    CHECK_INT(st.thoughts, ==, 2);
    CHECK_OK(pol_compact(f.p, &lt, &e));
    CHECK_INT(f.n_ev, ==, 2);
    CHECK_INT(f.ev[1].first, ==, 14);
    CHECK_INT(f.ev[1].last, ==, 18);
    pol_stats(f.p, &st);
    CHECK_INT(st.thoughts, ==, 3);
    pt_close(&f);
}

/* ------------------------------------------------------------------ learned gists */

static void test_learned_compact_after_a_break(void)
{
    pt_fx_t f;
    err_info_t e;
    pt_opts_t o = {.name = "gist", .n_gist = 2};
    CHECK_OK(pt_open(&f, &o, &e));
    /* sentence gists after "Q a?" and "T c." (the training rule: the newlines after a
     * sentence's end close nothing) */
    const char *a[] = {"", "Q", " a", "?", "\n", "\n", "T", " c", ".", "\n", "\n"};
    CHECK_OK(pt_feed(&f, a, 11, 1, &e));
    uint32_t runs = f.runs;
    CHECK_INT(runs, ==, 2);
    pol_compact_req_t lt = {.last_thought = true};
    CHECK_OK(pol_compact(f.p, &lt, &e)); /* the thought "T c." ended: no gists of newlines */
    CHECK_INT(f.runs, ==, runs);
    pol_stats_t st;
    pol_stats(f.p, &st);
    CHECK_INT(st.thoughts, ==, 1);
    /* the newlines stay with what follows: the next sentence holds them */
    const char *b[] = {"U", " d", ".", " V"};
    CHECK_OK(pt_feed(&f, b, 4, 1, &e));
    CHECK_INT(f.runs, ==, runs + 1);
    pt_close(&f);
}

static void test_learned_sentence_in_sinks(void)
{
    pt_fx_t f;
    err_info_t e;
    pol_param_t ps[] = {{"sinks", "12"}};
    pt_opts_t o = {.name = "gist", .params = ps, .n_params = 1, .n_gist = 2};
    CHECK_OK(pt_open(&f, &o, &e));
    /* sentence 0..4 lies in the sinks: its gists run, its raw rows stay */
    const char *a[] = {"",   " w", " w", " w", ".",  " x", " x", " x", " x",
                       " x", " x", " x", " x", " x", ".",  " y", " y"};
    CHECK_OK(pt_feed(&f, a, 17, 1, &e));
    float pos[MAXTOK];
    uint32_t rows = pt_positions(&f, 0, pos, NULL, MAXTOK);
    CHECK(rows >= 5);
    for (uint32_t i = 0; i < 5 && i < rows; i++)
        CHECK_NEAR(pos[i], (float)i, 0);
    pol_stats_t st;
    pol_stats(f.p, &st);
    CHECK_INT(st.gist_tokens, ==, 4); /* both sentences were gisted */
    pt_close(&f);
}

static void test_learned_gists_per_thought(void)
{
    const char *text[MAXTOK];
    uint32_t n = thought_text(3, 1, text); /* 3 thoughts of 3 sentences, one open sentence */
    for (int thought = 0; thought < 2; thought++) {
        pt_fx_t f;
        err_info_t e;
        pt_opts_t o = {.name = "gist", .n_gist = 2, .thought_gists = thought};
        CHECK_OK(pt_open(&f, &o, &e));
        CHECK_OK(pt_feed(&f, text, n, 1, &e));
        pol_stats_t st;
        pol_stats(f.p, &st);
        if (!thought) { /* a sentence model: a gist group after each of the 9 sentences */
            CHECK_INT(st.gist_tokens, ==, 9 * 2);
            pt_close(&f);
            continue;
        }
        CHECK_INT(st.gist_tokens, ==, 3 * 2);
        CHECK_INT(f.runs, ==, 3);
        /* thought k's text is [17k (1 for k = 0), 17k + 14], its gists the two after it; the
         * last run saw the sinks, its whole thought and the earlier gists */
        CHECK(f.last_run.see_gists);
        bool whole = false;
        for (uint32_t i = 0; i < f.last_run.n_see; i++)
            whole |= f.see[i][0] <= 34.0f && f.see[i][1] >= 46.0f;
        CHECK(whole);
        /* every lane: the sink, 3 x 2 gist rows, the open sentence raw; nothing else */
        static kv_row_meta_t m[MAXTOK];
        for (uint32_t l = 0; l < PT_LANES; l++) {
            uint32_t rows = pt_positions(&f, l, NULL, m, MAXTOK), gists = 0, raw = 0;
            for (uint32_t i = 0; i < rows; i++) {
                if (m[i].kind == KV_KIND_GIST) {
                    gists++;
                } else {
                    CHECK(m[i].pos < 1.0f || m[i].pos >= 49.0f);
                    raw++;
                }
            }
            CHECK_INT(gists, ==, 6);
            CHECK_INT(raw, ==, 1 + 4);
        }
        pt_close(&f);
    }
}

int main(void)
{
    RUN(test_paragraph_after_sentence_end);
    RUN(test_pool_whole_thoughts);
    RUN(test_evict_spares_open_thought);
    RUN(test_gists_outlast_open_thought);
    RUN(test_unit_parameter);
    RUN(test_compact_right_after_a_break);
    RUN(test_learned_sentence_in_sinks);
    RUN(test_learned_compact_after_a_break);
    RUN(test_learned_gists_per_thought);
    return check_done();
}
