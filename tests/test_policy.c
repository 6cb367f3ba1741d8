/*
 * tests/test_policy.c — the segmenter, policy names and parameters, and the eviction
 * baselines (window, h2o, tova, trim) on synthetic lanes: which rows go, in what order, how
 * many bytes, pins respected, the hard limit never crossed, events adding up.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy/policy.h"
#include "policy/segment.h"
#include "tests/check.h"
#include "tests/test_policy_util.h"

/* ------------------------------------------------------------------ segmenter */

/* Feeds pieces and returns the boundary kinds as a string: '.' none, 'S' sentence,
 * 'P' paragraph, 'L' length (one char per piece: the boundary before it). */
static void seg_run(bool train, uint32_t max_len, const char *const *pieces, uint32_t n, char *out)
{
    pol_seg_cfg_t c = {.train_rule = train, .max_len = max_len};
    pol_seg_t s;
    pol_seg_init(&s, &c);
    for (uint32_t i = 0; i < n; i++) {
        int k = pol_seg_push(&s, pieces[i], (uint32_t)strlen(pieces[i]));
        out[i] = ".SPL"[k];
    }
    out[n] = 0;
}

static void test_segment_sentences(void)
{
    char out[64];
    const char *a[] = {"",     "Once", " upon", " a",   " time", ".",
                       " She", " ran", "!",     " Why", "?",     " Ok"};
    seg_run(true, 0, a, 12, out);
    CHECK_STR(out, "......S..S.S");
    seg_run(false, 0, a, 12, out);
    CHECK_STR(out, "......S..S.S");

    /* a terminator not followed by whitespace does not close ("3.5", "end.x") */
    const char *b[] = {"It", " is", " 3", ".", "5", " now", ".", "x"};
    seg_run(true, 0, b, 8, out);
    CHECK_STR(out, "........");

    /* closing quotes: the text rule closes after them, the training rule does not */
    const char *c[] = {"\"", "Yes", "!\"", " Tom", " said", "."};
    seg_run(true, 0, c, 6, out);
    CHECK_STR(out, "......");
    seg_run(false, 0, c, 6, out);
    CHECK_STR(out, "...S..");
    const char *c2[] = {"He", " said", " yes", ".", "\"", " Then"};
    seg_run(false, 0, c2, 6, out);
    CHECK_STR(out, ".....S");

    /* abbreviations and initials: only the text rule keeps them open */
    const char *d[] = {"Mr",   ".",   " Smith", " met", " J",   ".",
                       " Doe", " at", " noon",  ".",    " Then"};
    seg_run(false, 0, d, 11, out);
    CHECK_STR(out, "..........S");
    seg_run(true, 0, d, 11, out);
    CHECK_STR(out, "..S...S...S");

    /* a chat template's end of turn right after the terminator: as text ("<|im_end|>" in
     * pieces) and as a control token (no text); the training rule keeps its own */
    const char *e[] = {"The",       " key", " is", " crisp", ".", "<", "|",
                       "im",        "_end", "|>",  "\n",     "<", "|", "im_start|>",
                       "assistant", "\n",   "Got", " it",    "."};
    seg_run(false, 0, e, 19, out);
    CHECK_STR(out, ".....S.............");
    seg_run(true, 0, e, 19, out);
    CHECK_STR(out, "...................");
    const char *f[] = {"Done", ".", "", "\n", "", "assistant", "\n", "Ok", "."};
    seg_run(false, 0, f, 9, out);
    CHECK_STR(out, "..S......");
    seg_run(true, 0, f, 9, out);
    CHECK_STR(out, ".........");
}

static void test_segment_paragraphs(void)
{
    char out[64];
    /* the training rule: two "\n" tokens after text close; the newline run belongs to the
     * sentence it ends */
    const char *a[] = {"Title", "\n", "\n", "Body", " text", "\n", "\n", "\n", "More"};
    seg_run(true, 0, a, 9, out);
    CHECK_STR(out, "...P....P");
    seg_run(false, 0, a, 9, out);
    CHECK_STR(out, "...P....P");
    /* newlines before any text do not close */
    const char *b[] = {"\n", "\n", "Start", " here"};
    seg_run(true, 0, b, 4, out);
    CHECK_STR(out, "....");
    /* a sentence end followed by a newline closes before the newline */
    const char *c[] = {"End", ".", "\n", "\n", "Next"};
    seg_run(true, 0, c, 5, out);
    CHECK_STR(out, "..S..");
    /* the text rule counts newlines inside one token ("\n\n") too */
    const char *d[] = {"Title", "\n\n", "Body"};
    seg_run(false, 0, d, 3, out);
    CHECK_STR(out, "..P");
    seg_run(true, 0, d, 3, out);
    CHECK_STR(out, "...");
}

static void test_segment_max_len(void)
{
    char out[64];
    const char *a[] = {"a", " b", " c", " d", " e", " f", " g"};
    seg_run(false, 3, a, 7, out);
    CHECK_STR(out, "...L..L");
    pol_seg_cfg_t cfg = {.max_len = 0};
    pol_seg_t s;
    pol_seg_init(&s, &cfg);
    pol_seg_push(&s, "Hi", 2);
    pol_seg_push(&s, ".", 1);
    CHECK_INT(pol_seg_peek(&s, " x", 2), ==, POL_SEG_SENTENCE);
    CHECK_INT(s.len, ==, 2); /* peek changed nothing */
    pol_seg_close(&s);
    CHECK_INT(pol_seg_peek(&s, " x", 2), ==, POL_SEG_NONE);
}

/* ------------------------------------------------------------------ names */

static void test_names_and_errors(void)
{
    pt_fx_t f;
    err_info_t e;
    const char *ok[] = {"full", "window", "h2o", "tova", "pool", "auto", "", NULL};
    for (int i = 0; i < 8; i++) {
        err_clear(&e);
        pt_opts_t o = {.name = ok[i]};
        CHECK_OK(pt_open(&f, &o, &e));
        CHECK_STR(pol_name(f.p), ok[i] && *ok[i] ? ok[i] : "auto");
        pt_close(&f);
    }
    err_clear(&e);
    pt_opts_t o = {.name = "lru"};
    CHECK_INT(pt_open(&f, &o, &e), ==, ERR_INVAL);
    CHECK(strstr(e.msg, "unknown policy 'lru'") && strstr(e.msg, "window"));
    CHECK(f.p == NULL);
    pt_close(&f);

    err_clear(&e);
    o = (pt_opts_t){.name = "gist"};
    CHECK_INT(pt_open(&f, &o, &e), ==, ERR_UNSUPPORTED);
    CHECK(strstr(e.msg, "gist tokens") != NULL);
    pt_close(&f);
    err_clear(&e);
    o = (pt_opts_t){.name = "trim"};
    CHECK_INT(pt_open(&f, &o, &e), ==, ERR_UNSUPPORTED);
    CHECK(strstr(e.msg, "retention gates") != NULL);
    pt_close(&f);
    o = (pt_opts_t){.name = "gist", .n_gist = 2};
    CHECK_OK(pt_open(&f, &o, &e));
    pt_close(&f);
    o = (pt_opts_t){.name = "trim", .gates = true};
    CHECK_OK(pt_open(&f, &o, &e));
    pt_close(&f);

    pol_param_t bad[][1] = {{{"recnet", "4"}},  {{"recent", "-1"}}, {{"recent", "x"}},
                            {{"score", "lru"}}, {{"rule", "odd"}},  {{"gist_rows", "0"}}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err_clear(&e);
        o = (pt_opts_t){.name = "pool", .params = bad[i], .n_params = 1};
        CHECK_INT(pt_open(&f, &o, &e), ==, ERR_INVAL);
        CHECK(strstr(e.msg, bad[i][0].key) != NULL);
        pt_close(&f);
    }
    pol_param_t s[] = {{"score", "h2o"}};
    o = (pt_opts_t){.name = "full", .params = s, .n_params = 1};
    CHECK_INT(pt_open(&f, &o, &e), ==, ERR_INVAL);
    pt_close(&f);
    /* attention accumulators follow the score */
    o = (pt_opts_t){.name = "h2o"};
    CHECK_OK(pt_open(&f, &o, &e));
    CHECK(pol_wants_attn_acc(f.p));
    pt_close(&f);
    o = (pt_opts_t){.name = "window"};
    CHECK_OK(pt_open(&f, &o, &e));
    CHECK(!pol_wants_attn_acc(f.p));
    CHECK_STR(pol_action_name(POL_MERGE), "merge");
    CHECK_STR(pol_method_name(POL_M_H2O), "h2o");
    CHECK_STR(pol_reason_name(POL_R_WATERMARK), "watermark");
    CHECK_STR(pol_action_name(99), "?");
    pt_close(&f);
}

/* ------------------------------------------------------------------ budgets */

/* Gives the session a hard limit of `blocks` blocks per lane above its current size (plus
 * transcript room), and a soft watermark the policy's headroom below it. */
static void pt_budget(pt_fx_t *f, uint32_t blocks, uint32_t ubatch, size_t *hard, size_t *soft)
{
    size_t blk = kv_block_bytes(f->st, DT_F32);
    if (pol_wants_attn_acc(f->p))
        blk += kv_block_rows(f->st) * sizeof(float);
    size_t head = pol_headroom(f->p, ubatch);
    *hard = pt_bytes(f) + (size_t)PT_LANES * blocks * blk + head + 16384;
    *soft = *hard - head;
    CHECK_OK(kv_session_set_limits(f->st, f->sid, *hard, *soft, NULL));
}

/* Runs a long text through a policy under a budget, checking after every call that the
 * bytes an event reports match the store's and that the hard limit holds. */
static void run_budgeted(pt_fx_t *f, uint32_t n, uint32_t every, uint32_t ubatch, size_t hard)
{
    const char **text = pt_text(n, every);
    pol_text_t *t = malloc(sizeof *t * n);
    for (uint32_t i = 0; i < n; i++)
        t[i] = (pol_text_t){text[i], (uint32_t)strlen(text[i])};
    err_info_t e;
    for (uint32_t i = 0; i < n;) {
        err_clear(&e);
        uint32_t k, ev0 = f->n_ev;
        size_t b0 = pt_bytes(f);
        CHECK_OK(pol_next(f->p, t + i, n - i, &k, &e));
        int64_t freed = 0;
        for (uint32_t j = ev0; j < f->n_ev; j++)
            freed += f->ev[j].bytes_freed;
        CHECK_INT((int64_t)b0 - (int64_t)pt_bytes(f), ==, freed);
        k = k < ubatch ? k : ubatch;
        int rc = pol_reserve(f->p, k, &e);
        CHECK_MSG(rc == 0, "reserve at %u: %s", i, err_msg(&e));
        if (rc)
            break;
        int32_t ids[64];
        for (uint32_t j = 0; j < k; j++)
            ids[j] = 10 + (int32_t)j;
        CHECK_OK(pt_commit_rows(f, ids, k, 1.0f));
        ev0 = f->n_ev;
        b0 = pt_bytes(f);
        CHECK_OK(pol_commit(f->p, t + i, k, &e));
        freed = 0;
        for (uint32_t j = ev0; j < f->n_ev; j++) {
            const pol_event_t *v = &f->ev[j];
            CHECK_INT(v->bytes_freed, ==, (int64_t)v->bytes_before - (int64_t)v->bytes_after);
            freed += v->bytes_freed;
        }
        CHECK_INT((int64_t)b0 - (int64_t)pt_bytes(f), ==, freed);
        i += k;
    }
    kv_stats_t s;
    kv_session_stats(f->st, f->sid, &s);
    CHECK_INT(s.peak, <=, hard);
    CHECK_INT(f->max_bytes, <=, hard);
    CHECK_OK(kv_store_check(f->st, &e));
    free(t);
    free(text);
}

static void test_window_keeps_sinks_and_recent(void)
{
    pt_fx_t f;
    err_info_t e;
    pt_opts_t o = {.name = "window"};
    CHECK_OK(pt_open(&f, &o, &e));
    size_t hard, soft;
    pt_budget(&f, 4, 1, &hard, &soft);
    run_budgeted(&f, 300, 9, 1, hard);
    CHECK(f.n_ev > 0);
    uint32_t len;
    kv_transcript_len(f.st, f.sid, &len);
    CHECK_INT(len, ==, 300);
    float pos[PT_LANES][512];
    uint32_t n[PT_LANES];
    for (uint32_t l = 0; l < PT_LANES; l++)
        n[l] = pt_positions(&f, l, pos[l], NULL, 512);
    CHECK(n[0] > 8 && n[0] < 300);
    for (uint32_t l = 0; l < PT_LANES; l++) {
        CHECK_INT(n[l], ==, n[0]);
        for (uint32_t i = 0; i < n[l]; i++) {
            /* positions 0..3, then the last n-4 positions, in order, in every lane */
            float want = i < 4 ? (float)i : (float)(len - (n[l] - i));
            CHECK_MSG(pos[l][i] == want, "lane %u row %u: pos %g, want %g", l, i, pos[l][i], want);
            if (pos[l][i] != want)
                break;
        }
    }
    /* oldest first: each eviction event starts right after the previous one's end */
    uint32_t next = 4;
    for (uint32_t i = 0; i < f.n_ev; i++) {
        CHECK_INT(f.ev[i].action, ==, POL_EVICT);
        CHECK_INT(f.ev[i].method, ==, POL_M_WINDOW);
        CHECK_INT(f.ev[i].first, ==, next);
        CHECK_INT(f.ev[i].lanes, ==, PT_LANES);
        next = f.ev[i].last + 1;
    }
    pol_stats_t st;
    pol_stats(f.p, &st);
    CHECK_INT(st.events[POL_EVICT][POL_M_WINDOW], ==, f.n_ev);
    CHECK_INT(st.bytes_freed, ==, pt_event_freed(&f));
    CHECK_INT(st.text_tokens, ==, 300);
    CHECK_INT(st.sentences, ==, 33);
    pt_close(&f);
}

/* Sets every row's accumulated attention to a reproducible value (through the chunks the
 * store hands out, as the forward pass would) and returns it in acc[lane][row]. */
static void set_acc(pt_fx_t *f, float acc[PT_LANES][256], uint64_t tag)
{
    for (uint32_t l = 0; l < PT_LANES; l++) {
        kv_chunk_t ch[64];
        uint32_t nc, r = 0;
        CHECK_OK(kv_lane_view(f->st, f->sid, l / PT_HEADS, l % PT_HEADS, ch, 64, &nc));
        for (uint32_t c = 0; c < nc; c++)
            for (uint32_t i = 0; i < ch[c].n; i++, r++) {
                CHECK(ch[c].attn_acc != NULL);
                if (!ch[c].attn_acc)
                    return;
                acc[l][r] = ch[c].attn_acc[i] = pt_val(tag, l, r, 0) + 2.0f;
            }
    }
}

/* Checks that lane l lost exactly the k lowest-scored unpinned rows of before[]. */
static void check_evicted(pt_fx_t *f, uint32_t l, const kv_row_meta_t *before, uint32_t n,
                          const float *score, uint32_t sinks, uint32_t recent, uint32_t len)
{
    uint32_t B = kv_block_rows(f->st);
    uint32_t k = (n - 1) % B + 1;
    /* the reference: the k lowest scores among unpinned rows, by a selection loop */
    bool gone[256] = {0};
    for (uint32_t j = 0; j < k; j++) {
        int best = -1;
        for (uint32_t i = 0; i < n; i++) {
            if (gone[i] || before[i].pos < sinks || before[i].pos >= (float)(len - recent))
                continue;
            if (best < 0 || score[i] < score[best] ||
                (score[i] == score[best] && before[i].pos < before[best].pos))
                best = (int)i;
        }
        if (best >= 0)
            gone[best] = true;
    }
    kv_row_meta_t after[256];
    uint32_t m = pt_positions(f, l, NULL, after, 256), j = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (gone[i])
            continue;
        CHECK_MSG(j < m && after[j].pos == before[i].pos, "lane %u: row at %g should stay", l,
                  before[i].pos);
        j++;
    }
    CHECK_INT(j, ==, m);
}

static void test_h2o_evicts_least_attended(void)
{
    pt_fx_t f;
    err_info_t e;
    pol_param_t ps[] = {{"sinks", "2"}, {"recent", "5"}};
    pt_opts_t o = {.name = "h2o", .params = ps, .n_params = 2};
    CHECK_OK(pt_open(&f, &o, &e));
    const char **text = pt_text(45, 7);
    CHECK_OK(pt_feed(&f, text, 45, 4, &e));
    CHECK_INT(f.n_ev, ==, 0); /* no budget: nothing goes */
    float acc[PT_LANES][256];
    set_acc(&f, acc, 7);
    kv_row_meta_t before[PT_LANES][256];
    uint32_t n[PT_LANES];
    for (uint32_t l = 0; l < PT_LANES; l++)
        n[l] = pt_positions(&f, l, NULL, before[l], 256);
    size_t b0 = pt_bytes(&f);
    CHECK_OK(pol_shrink(f.p, b0 - 1, &e));
    CHECK_INT(f.n_ev, ==, 1);
    CHECK_INT(f.ev[0].action, ==, POL_EVICT);
    CHECK_INT(f.ev[0].method, ==, POL_M_H2O);
    CHECK_INT(f.ev[0].reason, ==, POL_R_SHRINK);
    CHECK_INT(f.ev[0].bytes_before, ==, b0);
    CHECK_INT(f.ev[0].bytes_after, ==, pt_bytes(&f));
    /* a block per lane went: the last block's rows' worth, less the records of the runs
     * the edits settled the lanes' older blocks in */
    kv_stats_t ks;
    CHECK_OK(kv_session_stats(f.st, f.sid, &ks));
    CHECK_INT(ks.run_free_slots, ==, 0);
    CHECK_INT(f.ev[0].bytes_freed, ==,
              (int64_t)PT_LANES *
                      (int64_t)(kv_block_bytes(f.st, DT_F32) + kv_block_rows(f.st) * 4) -
                  (int64_t)ks.run_free_bytes);
    for (uint32_t l = 0; l < PT_LANES; l++)
        check_evicted(&f, l, before[l], n[l], acc[l], 2, 5, 45);
    free(text);
    pt_close(&f);
}

static void test_tova_uses_last_step_and_zeroes(void)
{
    pt_fx_t f;
    err_info_t e;
    /* low=1: the round stops back under the watermark, one block per lane (the default
     * low watermark would take several, and this checks which rows go) */
    pol_param_t ps[] = {{"sinks", "1"}, {"low", "1"}};
    pt_opts_t o = {.name = "tova", .params = ps, .n_params = 2};
    CHECK_OK(pt_open(&f, &o, &e));
    const char **text = pt_text(37, 6);
    CHECK_OK(pt_feed(&f, text, 37, 8, &e));
    float acc[PT_LANES][256];
    set_acc(&f, acc, 11);
    kv_row_meta_t before[PT_LANES][256];
    uint32_t n[PT_LANES];
    for (uint32_t l = 0; l < PT_LANES; l++)
        n[l] = pt_positions(&f, l, NULL, before[l], 256);
    /* a lowered watermark: the next commit (of nothing) compacts by the last step's scores */
    size_t b0 = pt_bytes(&f);
    CHECK_OK(kv_session_set_limits(f.st, f.sid, 0, b0 - 1, NULL));
    CHECK_OK(pol_commit(f.p, NULL, 0, &e));
    CHECK_INT(f.n_ev, ==, 1);
    CHECK_INT(f.ev[0].reason, ==, POL_R_WATERMARK);
    CHECK_INT(f.ev[0].method, ==, POL_M_TOVA);
    for (uint32_t l = 0; l < PT_LANES; l++)
        check_evicted(&f, l, before[l], n[l], acc[l], 1, 0, 37);
    /* and the accumulators start again from zero */
    kv_row_meta_t m[256];
    uint32_t k = pt_positions(&f, 2, NULL, m, 256);
    for (uint32_t i = 0; i < k; i++)
        CHECK(m[i].attn == 0.0f);
    free(text);
    pt_close(&f);
}

static void test_trim_evicts_lowest_retention(void)
{
    pt_fx_t f;
    err_info_t e;
    pol_param_t ps[] = {{"sinks", "3"}, {"recent", "2"}};
    pt_opts_t o = {.name = "trim", .gates = true, .params = ps, .n_params = 2};
    CHECK_OK(pt_open(&f, &o, &e));
    CHECK(!pol_wants_attn_acc(f.p));
    const char **text = pt_text(50, 8);
    CHECK_OK(pt_feed(&f, text, 50, 3, &e));
    kv_row_meta_t before[PT_LANES][256];
    float score[PT_LANES][256];
    uint32_t n[PT_LANES];
    for (uint32_t l = 0; l < PT_LANES; l++) {
        n[l] = pt_positions(&f, l, NULL, before[l], 256);
        for (uint32_t i = 0; i < n[l]; i++) {
            CHECK_NEAR(before[l][i].logbeta, pt_logbeta(l, (uint32_t)before[l][i].pos), 0);
            score[l][i] = pt_logbeta(l, (uint32_t)before[l][i].pos) * (50.0f - before[l][i].pos);
        }
    }
    CHECK_OK(pol_shrink(f.p, pt_bytes(&f) - 1, &e));
    CHECK_INT(f.n_ev, ==, 1);
    CHECK_INT(f.ev[0].method, ==, POL_M_TRIM);
    for (uint32_t l = 0; l < PT_LANES; l++)
        check_evicted(&f, l, before[l], n[l], score[l], 3, 2, 50);
    free(text);
    pt_close(&f);
}

static void test_pins_hold(void)
{
    pt_fx_t f;
    err_info_t e;
    pol_param_t ps[] = {{"recent", "6"}};
    pt_opts_t o = {.name = "h2o", .params = ps, .n_params = 1};
    CHECK_OK(pt_open(&f, &o, &e));
    CHECK_OK(pol_pin_span(f.p, 20, 27, &e));
    CHECK_INT(pol_pin_span(f.p, 5, 4, &e), ==, ERR_INVAL);
    size_t hard, soft;
    pt_budget(&f, 3, 2, &hard, &soft);
    run_budgeted(&f, 260, 11, 2, hard);
    CHECK(f.n_ev > 3);
    for (uint32_t l = 0; l < PT_LANES; l++) {
        float pos[512];
        uint32_t n = pt_positions(&f, l, pos, NULL, 512);
        uint32_t have = 0;
        for (uint32_t i = 0; i < n; i++)
            have += (pos[i] < 4) + (pos[i] >= 20 && pos[i] <= 27) + (pos[i] >= 254);
        CHECK_INT(have, ==, 4 + 8 + 6);
    }
    for (uint32_t i = 0; i < f.n_ev; i++)
        CHECK_INT(f.ev[i].reason, !=, POL_R_REQUEST);
    pt_close(&f);
}

static void test_full_refuses_and_keeps(void)
{
    pt_fx_t f;
    err_info_t e;
    pt_opts_t o = {.name = "full"};
    CHECK_OK(pt_open(&f, &o, &e));
    size_t hard, soft;
    pt_budget(&f, 2, 1, &hard, &soft);
    const char **text = pt_text(200, 5);
    int rc = pt_feed(&f, text, 200, 1, &e);
    CHECK_INT(rc, ==, ERR_BUDGET);
    CHECK(strstr(e.msg, "full") != NULL);
    CHECK_INT(f.n_ev, ==, 0);
    uint32_t len, rows;
    kv_transcript_len(f.st, f.sid, &len);
    kv_lane_size(f.st, f.sid, 1, 1, &rows, NULL);
    CHECK_INT(rows, ==, len); /* nothing stored was lost */
    CHECK(len > 8 && len < 200);
    CHECK_INT(pol_compact(f.p, &(pol_compact_req_t){.first = 0, .last = 3}, &e), ==,
              ERR_UNSUPPORTED);
    kv_stats_t s;
    kv_session_stats(f.st, f.sid, &s);
    CHECK_INT(s.peak, <=, hard);
    free(text);
    pt_close(&f);
}

/* A session whose every row is pinned (recent= longer than the text) refuses with what it
 * holds: its bytes and the cold transcript's share, which no policy compacts. */
static void test_refusal_names_what_is_held(void)
{
    pt_fx_t f;
    err_info_t e;
    pol_param_t ps[] = {{"recent", "100000"}};
    pt_opts_t o = {.name = "window", .params = ps, .n_params = 1};
    CHECK_OK(pt_open(&f, &o, &e));
    size_t hard, soft;
    pt_budget(&f, 2, 1, &hard, &soft);
    const char **text = pt_text(200, 5);
    CHECK_INT(pt_feed(&f, text, 200, 1, &e), ==, ERR_BUDGET);
    kv_stats_t s;
    kv_session_stats(f.st, f.sid, &s);
    char want[160];
    snprintf(want, sizeof want, "the transcript of %llu tokens holds %zu",
             (unsigned long long)s.tokens, s.transcript_bytes);
    CHECK(strstr(e.msg, "cannot free more") != NULL);
    CHECK(strstr(e.msg, want) != NULL);
    CHECK(s.transcript_bytes > 0 && s.tokens > 8);
    free(text);
    pt_close(&f);
}

/* Every policy, random batch sizes and budgets: the hard limit holds, events add up, the
 * store stays consistent. */
static void test_random_budgets_every_policy(void)
{
    const char *names[] = {"window", "h2o", "tova", "trim", "pool", "gist", "auto"};
    uint64_t seed = 12345;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        for (int round = 0; round < 3; round++) {
            seed = pt_mix(seed);
            pt_fx_t f;
            err_info_t e;
            err_clear(&e);
            pt_opts_t o = {.name = names[i],
                           .gates = true,
                           .n_gist = 2,
                           .block_rows = 4 + (uint32_t)(seed % 3) * 4};
            CHECK_OK(pt_open(&f, &o, &e));
            uint32_t ub = 1 + (uint32_t)(seed >> 8) % 6, blocks = 3 + (uint32_t)(seed >> 16) % 4;
            size_t hard, soft;
            pt_budget(&f, blocks, ub, &hard, &soft);
            run_budgeted(&f, 240, 5 + (uint32_t)(seed >> 24) % 9, ub, hard);
            CHECK_MSG(f.n_ev > 0, "%s: no compaction", names[i]);
            pt_close(&f);
        }
    }
}

int main(void)
{
    RUN(test_segment_sentences);
    RUN(test_segment_paragraphs);
    RUN(test_segment_max_len);
    RUN(test_names_and_errors);
    RUN(test_window_keeps_sinks_and_recent);
    RUN(test_h2o_evicts_least_attended);
    RUN(test_tova_uses_last_step_and_zeroes);
    RUN(test_trim_evicts_lowest_retention);
    RUN(test_pins_hold);
    RUN(test_full_refuses_and_keeps);
    RUN(test_refusal_names_what_is_held);
    RUN(test_random_budgets_every_policy);
    return check_done();
}
