/* Budgets and snapshots against a real gistd: under a budget far below what the sessions
 * need, no figure ever shows the global or a session limit crossed, refused requests keep
 * everything stored, compaction events add up to the bytes freed, lowering a budget below
 * use is refused (policy `full`) and raising it lets work go on, while under compacting
 * policies the sessions shrink below the new limit and keep serving; a session snapshotted at
 * SIGTERM continues after a restart exactly as it would have without one. */
#include "tests/test_daemon_util.h"

/* ------------------------------------------------------------------ budgets */

typedef struct watch {
    gc_client_t *stats; /* a second connection, polled from the first one's callbacks */
    uint64_t budget, session_budget;
    bool used_only; /* the peaks predate a lowered limit: check what is used now */
    uint32_t polls, crossed;
    uint64_t max_used;
    uint64_t event_bytes; /* bytes_freed summed over compaction events */
    uint32_t expands;
    int64_t expand_bytes;
    uint32_t events;
} watch_t;

static void poll_stats(watch_t *w)
{
    gc_stats_t st;
    err_info_t e;
    if (gc_stats(w->stats, true, &st, &e)) {
        w->crossed++;
        return;
    }
    w->polls++;
    w->max_used = st.kv_used_bytes > w->max_used ? st.kv_used_bytes : w->max_used;
    if (st.kv_used_bytes > w->budget || (!w->used_only && st.kv_peak_bytes > w->budget))
        w->crossed++;
    for (uint32_t i = 0; i < st.n_session_list; i++)
        if (st.session_list[i].bytes > w->session_budget ||
            (!w->used_only && st.session_list[i].peak_bytes > w->session_budget))
            w->crossed++;
    gc_stats_free(&st);
}

static int on_tok(void *ctx, uint32_t session, int32_t id, const char *piece, size_t len)
{
    poll_stats(ctx);
    return 0;
}

static void on_compaction(void *ctx, uint32_t session, const gc_compaction_t *c)
{
    watch_t *w = ctx;
    if (!strcmp(c->action, "expand")) { /* re-expansions are counted apart */
        w->expands++;
        w->expand_bytes += c->bytes_freed;
        return;
    }
    w->events++;
    w->event_bytes += c->bytes_freed;
}

static void test_budget_never_crossed(void)
{
    const char *model = td_tiny_model("tiny_budget.gguf", "31");
    /* the tiny model's 4 lanes take a ~9 KiB block each per 64 tokens: a session budget of
     * 60 KiB holds one block per lane (64 tokens), and 150 KiB do not hold four sessions */
    const char *extra[] = {"--kv-budget",     "150K", "--session-budget", "60K",
                           "--kv-budget-max", "4M",   NULL};
    td_daemon_t d;
    gc_client_t *c = td_up(&d, model, extra);
    if (!c)
        return;
    watch_t w = {.stats = td_connect(&d), .budget = 150 * 1024, .session_budget = 60 * 1024};
    if (!w.stats) {
        gc_disconnect(&c);
        td_stop(&d, SIGKILL);
        return;
    }
    err_info_t e;
    uint32_t sid[4];
    uint64_t req[4];
    const char *prompt = "Once upon a time";
    gc_callbacks_t cb = {.ctx = &w, .on_token = on_tok, .on_compaction = on_compaction};
    gc_open_opts_t full = {.policy = "full"}; /* refuses rather than compacts */
    /* every session exists before any fills the budget, so only the generations compete */
    for (int i = 0; i < 4; i++)
        CHECK_OK(gc_open(c, &full, &sid[i], &e));
    for (int i = 0; i < 4; i++) {
        gc_gen_opts_t o = {
            .session = sid[i], .max_tokens = 300, .prompt = prompt, .sampling = &td_greedy};
        CHECK_OK(gc_generate_start(c, &o, &cb, &req[i], &e));
    }
    uint32_t refused = 0;
    for (int i = 0; i < 4; i++) {
        gc_result_t res = {0};
        int rc = gc_wait(c, req[i], &res, &e);
        if (rc == ERR_BUDGET) {
            refused++;
            CHECK_MSG(strstr(e.msg, "needs") && strstr(e.msg, "available"), "message: %s", e.msg);
        } else {
            CHECK_MSG(rc == 0 && res.reason == GC_STOP_EOS, "session %u: rc %d reason %d", sid[i],
                      rc, res.reason);
        }
        gc_result_free(&res);
    }
    CHECK_INT(refused, >=, 3);
    poll_stats(&w);
    CHECK_INT(w.crossed, ==, 0);
    CHECK_INT(w.polls, >=, 50);
    CHECK(w.max_used > 100 * 1024); /* it did fill up */

    /* nothing stored was lost: each transcript is the prompt and every streamed token */
    gc_stats_t st;
    CHECK_OK(gc_stats(c, true, &st, &e));
    CHECK_INT(st.compactions, ==, w.events);
    CHECK_INT(st.bytes_freed, ==, w.event_bytes);
    CHECK_INT(st.expansions, ==, w.expands);
    CHECK_INT(st.expand_bytes, ==, -w.expand_bytes);
    CHECK_INT(st.budget_refusals, >=, refused);
    uint32_t filled = 0;
    for (uint32_t i = 0; i < st.n_session_list; i++) {
        const gc_session_info_t *si = &st.session_list[i];
        CHECK_INT(si->tokens, ==, si->prompt_tokens + si->generated_tokens);
        char *text = NULL;
        uint32_t n = 0, total = 0;
        CHECK_OK(gc_transcript(c, si->id, 0, 0, &text, NULL, NULL, &n, &total, &e));
        CHECK_INT(total, ==, si->tokens);
        /* a request refused during its prompt stored none of it */
        CHECK_MSG(text && (total == 0 || !strncmp(text, prompt, strlen(prompt))),
                  "transcript \"%s\"", text);
        filled += total > 0;
        free(text);
    }
    CHECK_INT(filled, >=, 2);
    const uint64_t used = st.kv_used_bytes;
    gc_stats_free(&st);

    /* lowering the global budget below use is refused by `full`; the limit stays */
    gc_budget_t b;
    CHECK_INT(gc_set_budget(c, 0, 16 * 1024, 0, &b, &e), ==, ERR_BUDGET);
    CHECK_MSG(strstr(e.msg, "limit stays"), "message: %s", e.msg);
    CHECK_OK(gc_stats(c, false, &st, &e));
    CHECK_INT(st.kv_budget_bytes, ==, 150 * 1024);
    CHECK_INT(st.kv_used_bytes, ==, used);
    gc_stats_free(&st);
    CHECK_INT(gc_set_budget(c, sid[0], 1024, 0, &b, &e), ==, ERR_BUDGET);

    /* raising both lets a refused session go on */
    CHECK_OK(gc_set_budget(c, 0, 4 << 20, 0, &b, &e));
    CHECK_INT(b.hard_bytes, ==, 4 << 20);
    CHECK_INT(b.soft_bytes, ==, (4 << 20) / 8 * 7);
    CHECK_OK(gc_set_budget(c, sid[0], 1 << 20, 0, &b, &e));
    gc_gen_opts_t more = {.session = sid[0], .max_tokens = 80, .sampling = &td_greedy};
    gc_result_t res = {0};
    CHECK_OK(gc_generate(c, &more, NULL, &res, &e));
    CHECK(res.reason == GC_STOP_LENGTH || res.reason == GC_STOP_EOS);
    gc_result_free(&res);
    CHECK_OK(gc_stats(c, true, &st, &e));
    CHECK(st.kv_used_bytes > used);
    gc_stats_free(&st);

    gc_disconnect(&w.stats);
    gc_disconnect(&c);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
}

/*
 * The global budget lowered to half of what four sessions under compacting policies hold: the
 * request succeeds and says what it freed; every session shrinks and keeps every token in its
 * transcript; the store is under the new limit at once; and turn after turn on every session
 * still succeeds, with no figure ever above the new limit.
 */
static void test_lower_global_budget_compacting(void)
{
    const char *model = td_tiny_model("tiny_lower_global.gguf", "32");
    const char *extra[] = {"--block-rows", "16", NULL};
    td_daemon_t d;
    gc_client_t *c = td_up(&d, model, extra);
    if (!c)
        return;
    err_info_t e;
    static const char *const policies[4] = {"pool", "window", "auto", "h2o"};
    uint32_t sid[4];
    gc_session_info_t before[4];
    for (int i = 0; i < 4; i++) {
        gc_open_opts_t oo = {.policy = policies[i]};
        CHECK_OK(gc_open(c, &oo, &sid[i], &e));
        gc_gen_opts_t o = {.session = sid[i],
                           .max_tokens = 200,
                           .prompt = "Once upon a time",
                           .sampling = &td_greedy};
        CHECK_OK(gc_generate(c, &o, NULL, NULL, &e));
        CHECK_OK(gc_session_info(c, sid[i], &before[i], &e));
    }
    gc_stats_t st;
    CHECK_OK(gc_stats(c, false, &st, &e));
    const uint64_t used = st.kv_used_bytes, limit = used / 2;
    gc_stats_free(&st);

    gc_budget_t b = {0};
    CHECK_MSG(gc_set_budget(c, 0, limit, 0, &b, &e) == 0, "lowering to %llu: %s",
              (unsigned long long)limit, err_msg(&e));
    CHECK_INT(b.hard_bytes, ==, limit);
    CHECK(b.used_bytes <= limit);
    CHECK_INT(b.bytes_freed, ==, (int64_t)used - (int64_t)b.used_bytes);
    CHECK_OK(gc_stats(c, false, &st, &e));
    CHECK_INT(st.kv_budget_bytes, ==, limit);
    CHECK(st.kv_used_bytes <= limit);
    gc_stats_free(&st);
    for (int i = 0; i < 4; i++) {
        gc_session_info_t now;
        CHECK_OK(gc_session_info(c, sid[i], &now, &e));
        CHECK_MSG(now.bytes < before[i].bytes, "session %u (%s): %llu bytes, was %llu", sid[i],
                  policies[i], (unsigned long long)now.bytes,
                  (unsigned long long)before[i].bytes);
        CHECK_INT(now.tokens, ==, before[i].tokens);
    }

    /* turns go on, each session in turn, watched from a second connection */
    watch_t w = {.stats = td_connect(&d),
                 .budget = limit,
                 .session_budget = UINT64_MAX,
                 .used_only = true};
    static char last[4][4096];
    uint32_t generated[4] = {0};
    gc_callbacks_t cb = {.ctx = &w, .on_token = on_tok, .on_compaction = on_compaction};
    for (int turn = 0; turn < 3 && w.stats; turn++)
        for (int i = 0; i < 4; i++) {
            gc_gen_opts_t o = {.session = sid[i],
                               .max_tokens = 40,
                               .prompt = " And then",
                               .sampling = &td_greedy};
            gc_result_t r = {0};
            CHECK_MSG(gc_generate(c, &o, &cb, &r, &e) == 0, "turn %d, session %u (%s): %s", turn,
                      sid[i], policies[i], err_msg(&e));
            CHECK(r.reason == GC_STOP_LENGTH || r.reason == GC_STOP_EOS);
            snprintf(last[i], sizeof last[i], " And then%s", r.text ? r.text : "");
            generated[i] += r.n_tokens;
            gc_result_free(&r);
        }
    poll_stats(&w);
    CHECK_INT(w.crossed, ==, 0);
    CHECK(w.polls >= 100);
    CHECK(w.events > 0);
    for (int i = 0; i < 4; i++) {
        gc_session_info_t now;
        CHECK_OK(gc_session_info(c, sid[i], &now, &e));
        CHECK(now.tokens >= before[i].tokens + generated[i] + 3); /* 3 prompts, at least */
        /* the transcript holds every token, the last turn at its end */
        char *text = NULL;
        size_t tl = 0;
        uint32_t n = 0, total = 0;
        CHECK_OK(gc_transcript(c, sid[i], 0, 0, &text, &tl, NULL, &n, &total, &e));
        CHECK_INT(total, ==, now.tokens);
        const size_t ll = strlen(last[i]);
        CHECK_MSG(text && tl >= ll && !memcmp(text + tl - ll, last[i], ll),
                  "session %u's transcript does not end with its last turn \"%s\"", sid[i],
                  last[i]);
        free(text);
    }
    gc_disconnect(&w.stats);
    gc_disconnect(&c);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
}

/* ------------------------------------------------------------------ snapshots */

static void test_snapshot_restart(void)
{
    const char *model = td_tiny_model("tiny_snap.gguf", "32");
    const char *dir = td_mkdir("snaps");
    const char *extra[] = {"--snapshot-dir", dir, NULL};
    td_daemon_t d;
    gc_client_t *c = td_up(&d, model, extra);
    if (!c)
        return;
    err_info_t e;
    uint32_t s1, s2;
    char a1[4096], a2[4096], ref[4096], before[8192];
    gc_open_opts_t oo = {.name = "kept", .chat_template = "plain"};
    CHECK_OK(gc_open(c, &oo, &s1, &e));
    CHECK_OK(gc_open(c, &oo, &s2, &e));
    /* two sessions with the same history; the second one goes on without a restart */
    td_gen_text(c, s1, 10, "Once upon a time", a1, sizeof a1);
    td_gen_text(c, s2, 10, "Once upon a time", a2, sizeof a2);
    CHECK_STR(a1, a2);
    td_gen_text(c, s2, 12, NULL, ref, sizeof ref);
    char *text = NULL;
    CHECK_OK(gc_transcript(c, s1, 0, 0, &text, NULL, NULL, NULL, NULL, &e));
    snprintf(before, sizeof before, "%s", text ? text : "");
    free(text);
    uint32_t n_done = 0;
    CHECK_OK(gc_snapshot(c, s1, &n_done, &e));
    CHECK_INT(n_done, ==, 1);
    gc_disconnect(&c);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);

    /* a new daemon on the same folder has both sessions back */
    if (!(c = td_up(&d, model, extra)))
        return;
    gc_session_info_t *list = NULL;
    uint32_t n = 0;
    CHECK_OK(gc_sessions(c, &list, &n, &e));
    CHECK_INT(n, ==, 2);
    for (uint32_t i = 0; list && i < n; i++) {
        CHECK(list[i].id == s1 || list[i].id == s2);
        CHECK_STR(list[i].name, "kept");
        CHECK_STR(list[i].chat_template, "plain");
        /* the rows came back from the store's snapshot: only the last sampled token waits */
        CHECK_INT(list[i].pending, ==, 1);
    }
    free(list);
    CHECK_OK(gc_transcript(c, s1, 0, 0, &text, NULL, NULL, NULL, NULL, &e));
    CHECK_MSG(text && !strcmp(text, before), "restored \"%s\" vs \"%s\"", text, before);
    free(text);
    char cont[4096];
    td_gen_text(c, s1, 12, NULL, cont, sizeof cont);
    CHECK_MSG(!strcmp(cont, ref), "after restart \"%s\" vs without \"%s\"", cont, ref);

    /* closing forgets a snapshot written at shutdown; a corrupt one is refused and changes
     * nothing */
    CHECK_OK(gc_close(c, s2, &e));
    CHECK_INT(gc_restore(c, s2, &e), ==, ERR_NOTFOUND);
    char bad[700];
    snprintf(bad, sizeof bad, "%s/session-%u.gistd", dir, s1);
    CHECK_INT(gc_restore(c, s1, &e), ==, ERR_EXISTS);
    CHECK_OK(gc_snapshot(c, s1, NULL, &e));
    static char snap[1 << 20];
    FILE *f = fopen(bad, "rb");
    size_t len = f ? fread(snap, 1, sizeof snap, f) : 0;
    if (f)
        fclose(f);
    CHECK(len > 100);
    char *was = NULL, *now = NULL;
    CHECK_OK(gc_transcript(c, s1, 0, 0, &was, NULL, NULL, NULL, NULL, &e));
    CHECK_OK(gc_close_opts(c, s1, true, &e)); /* forget: removes both files */
    /* without the rows (.kv) it comes back from its tokens, prefilled again */
    f = fopen(bad, "wb");
    CHECK(f && fwrite(snap, 1, len, f) == len);
    if (f)
        fclose(f);
    CHECK_OK(gc_restore(c, s1, &e));
    gc_session_info_t si;
    CHECK_OK(gc_session_info(c, s1, &si, &e));
    CHECK_INT(si.pending, ==, si.tokens);
    CHECK_OK(gc_transcript(c, s1, 0, 0, &now, NULL, NULL, NULL, NULL, &e));
    CHECK_MSG(was && now && !strcmp(was, now), "\"%s\" vs \"%s\"", was, now);
    free(was);
    free(now);
    td_gen_text(c, s1, 4, NULL, cont, sizeof cont);
    CHECK_OK(gc_close_opts(c, s1, true, &e));
    /* with one byte changed it is refused */
    snap[len / 2] ^= 0x10;
    f = fopen(bad, "wb");
    CHECK(f && fwrite(snap, 1, len, f) == len);
    if (f)
        fclose(f);
    CHECK_INT(gc_restore(c, s1, &e), ==, ERR_CORRUPT);
    CHECK_MSG(strstr(e.msg, "checksum"), "message: %s", e.msg);
    CHECK_OK(gc_sessions(c, &list, &n, &e));
    CHECK_INT(n, ==, 0);
    free(list);
    gc_disconnect(&c);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
    /* and a daemon starting beside it starts anyway */
    if (td_start(&d, model, extra))
        return;
    c = td_connect(&d);
    CHECK(c != NULL);
    gc_disconnect(&c);
    CHECK_INT(td_stop(&d, SIGINT), ==, 0);
}

/* The global limit cannot be switched off (0), raised past --kv-budget without
 * --kv-budget-max, or set beyond physical memory (2^63, 2^64 - 1); each refusal says why and
 * leaves the limit as it was. The same holds for the options themselves. */
static void test_budget_bounds(void)
{
    const char *model = td_tiny_model("tiny_bounds.gguf", "33");
    const char *extra[] = {"--kv-budget", "1M", NULL};
    td_daemon_t d;
    gc_client_t *c = td_up(&d, model, extra);
    if (!c)
        return;
    err_info_t e;
    gc_budget_t b;
    gc_stats_t st;
    CHECK_INT(gc_set_budget(c, 0, 0, 0, &b, &e), ==, ERR_INVAL);
    CHECK_MSG(strstr(e.msg, "above 0") && strstr(e.msg, "switch it off"), "%s", e.msg);
    const size_t huge[] = {(size_t)1 << 63, SIZE_MAX, (1 << 20) + 1};
    for (int i = 0; i < 3; i++) {
        CHECK_INT(gc_set_budget(c, 0, huge[i], 0, &b, &e), ==, ERR_INVAL);
        CHECK_MSG(strstr(e.msg, "--kv-budget-max allows more"), "%zu: %s", huge[i], e.msg);
    }
    uint32_t s;
    CHECK_OK(gc_open(c, NULL, &s, &e));
    CHECK_INT(gc_set_budget(c, s, (size_t)1 << 63, 0, &b, &e), ==, ERR_INVAL);
    CHECK_OK(gc_stats(c, false, &st, &e));
    CHECK_INT(st.kv_budget_bytes, ==, 1 << 20);
    gc_stats_free(&st);
    /* lowering and raising back to the start-up limit is allowed */
    CHECK_OK(gc_set_budget(c, 0, 512 << 10, 0, &b, &e));
    CHECK_OK(gc_set_budget(c, 0, 1 << 20, 0, &b, &e));
    CHECK_INT(b.hard_bytes, ==, 1 << 20);
    gc_disconnect(&c);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);

    /* --kv-budget-max opts in to more, up to that; without any budget, physical memory */
    const char *more[] = {"--kv-budget", "1M", "--kv-budget-max", "8M", NULL};
    if (!(c = td_up(&d, model, more)))
        return;
    CHECK_OK(gc_set_budget(c, 0, 8 << 20, 0, &b, &e));
    CHECK_INT(gc_set_budget(c, 0, (8 << 20) + 1, 0, &b, &e), ==, ERR_INVAL);
    CHECK_MSG(strstr(e.msg, "8388608 bytes (gistd --kv-budget-max)"), "%s", e.msg);
    CHECK_INT(gc_set_budget(c, 0, 0, 0, &b, &e), ==, ERR_INVAL);
    gc_disconnect(&c);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
    if (!(c = td_up(&d, model, NULL)))
        return;
    for (int i = 0; i < 2; i++) {
        CHECK_INT(gc_set_budget(c, 0, huge[i], 0, &b, &e), ==, ERR_INVAL);
        CHECK_MSG(strstr(e.msg, "physical memory"), "%s", e.msg);
    }
    CHECK_INT(gc_set_budget(c, 0, 0, 0, &b, &e), ==, ERR_INVAL);
    CHECK_OK(gc_set_budget(c, 0, 2 << 20, 0, &b, &e));
    gc_disconnect(&c);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);

    /* the options: a ceiling below the budget, a budget past physical memory */
    char out[2048];
    char *low[] = {(char *)td_bin("gistd"), "--model", (char *)model, "--kv-budget", "2M",
                   "--kv-budget-max", "1M", NULL};
    CHECK_INT(td_run_all(low, out, sizeof out), ==, 2);
    CHECK_MSG(strstr(out, "above --kv-budget-max"), "%s", out);
    char *big[] = {(char *)td_bin("gistd"), "--model", (char *)model, "--kv-budget", "900000T",
                   NULL};
    CHECK_INT(td_run_all(big, out, sizeof out), ==, 2);
    CHECK_MSG(strstr(out, "physical memory"), "%s", out);
}

int main(void)
{
    RUN(test_budget_never_crossed);
    RUN(test_lower_global_budget_compacting);
    RUN(test_budget_bounds);
    RUN(test_snapshot_restart);
    return check_done();
}
