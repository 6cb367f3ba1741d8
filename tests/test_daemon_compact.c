/* Compaction through a real gistd: sessions under budgets far below what they need keep
 * generating with compacting policies (window, pool, learned gists), every event's bytes
 * freed is its session's bytes before minus after, the events add up to the daemon's count,
 * no figure ever shows a limit crossed, the cold transcript keeps every token, a lowered
 * budget compacts down at once, and an explicit compaction is streamed to whoever asked. */
#include "tests/test_daemon_util.h"

typedef struct watch {
    gc_client_t *stats; /* a second connection, polled from the first one's callbacks */
    uint64_t budget, session_budget;
    uint32_t span_first, span_last; /* events must overlap it, when span_last > 0 */
    uint32_t polls, crossed, events, bad_events;
    int64_t event_bytes;
    uint32_t expands;
    int64_t expand_bytes;
    char methods[256];
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
    if (w->budget && (st.kv_used_bytes > w->budget || st.kv_peak_bytes > w->budget))
        w->crossed++;
    for (uint32_t i = 0; i < st.n_session_list; i++)
        if (st.session_list[i].peak_bytes > w->session_budget)
            w->crossed++;
    gc_stats_free(&st);
}

static int on_tok(void *ctx, uint32_t session, int32_t id, const char *piece, size_t len)
{
    watch_t *w = ctx;
    if (w->stats)
        poll_stats(w);
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
    if (c->bytes_freed != (int64_t)c->session_bytes_before - (int64_t)c->session_bytes ||
        c->session_bytes > w->session_budget || c->first > c->last ||
        (w->span_last && (c->last < w->span_first || c->first > w->span_last))) {
        fprintf(stderr, "# event %s/%s [%u, %u]: freed %lld, bytes %llu -> %llu\n", c->method,
                c->reason, c->first, c->last, (long long)c->bytes_freed,
                (unsigned long long)c->session_bytes_before, (unsigned long long)c->session_bytes);
        w->bad_events++;
    }
    char tag[64];
    snprintf(tag, sizeof tag, "%s/%s ", c->method, c->reason);
    if (!strstr(w->methods, tag) && strlen(w->methods) + strlen(tag) < sizeof w->methods)
        strcat(w->methods, tag);
}

/* n sessions under `policy`, each far over its budget by the end, all at once. */
static void under_budget(const char *model, const char *policy, const char *session_budget,
                         uint64_t sb, const char *global, uint64_t gb, uint32_t n_tok,
                         const char *want_method)
{
    const char *extra[] = {"--block-rows", "16", "--session-budget", session_budget, "--kv-budget",
                           global,         NULL};
    td_daemon_t d;
    gc_client_t *c = td_up(&d, model, extra);
    if (!c)
        return;
    watch_t w = {.stats = td_connect(&d), .budget = gb, .session_budget = sb};
    if (!w.stats) {
        gc_disconnect(&c);
        td_stop(&d, SIGKILL);
        return;
    }
    err_info_t e;
    uint32_t sid[3];
    uint64_t req[3];
    const char *prompt = "Once upon a time, there was a little girl.";
    gc_callbacks_t cb = {.ctx = &w, .on_token = on_tok, .on_compaction = on_compaction};
    gc_open_opts_t oo = {.policy = policy};
    for (int i = 0; i < 3; i++) {
        CHECK_OK(gc_open(c, &oo, &sid[i], &e));
        gc_gen_opts_t o = {
            .session = sid[i], .max_tokens = n_tok, .prompt = prompt, .sampling = &td_greedy};
        CHECK_OK(gc_generate_start(c, &o, &cb, &req[i], &e));
    }
    for (int i = 0; i < 3; i++) {
        gc_result_t res = {0};
        CHECK_MSG(gc_wait(c, req[i], &res, &e) == 0, "policy %s: %s", policy, e.msg);
        CHECK(res.reason == GC_STOP_LENGTH || res.reason == GC_STOP_EOS);
        gc_result_free(&res);
    }
    poll_stats(&w);
    CHECK_INT(w.crossed, ==, 0);
    CHECK_INT(w.bad_events, ==, 0);
    CHECK_MSG(w.events > 0 && strstr(w.methods, want_method), "policy %s: %u events (%s)", policy,
              w.events, w.methods);
    gc_stats_t st;
    CHECK_OK(gc_stats(c, true, &st, &e));
    CHECK_INT(st.compactions, ==, w.events);
    CHECK_INT(st.bytes_freed, ==, w.event_bytes);
    CHECK_INT(st.expansions, ==, w.expands);
    CHECK_INT(st.expand_bytes, ==, -w.expand_bytes);
    CHECK_INT(st.budget_refusals, ==, 0);
    for (uint32_t i = 0; i < st.n_session_list; i++) {
        const gc_session_info_t *si = &st.session_list[i];
        /* the cold transcript keeps every token (and learned gist tokens between them) */
        CHECK_INT(si->tokens, >=, si->prompt_tokens + si->generated_tokens);
        CHECK_MSG(si->compression > 2.0, "session %u: compression %.2f", si->id, si->compression);
        CHECK(si->peak_bytes <= sb);
        char *text = NULL;
        uint32_t total = 0;
        CHECK_OK(gc_transcript(c, si->id, 0, 0, &text, NULL, NULL, NULL, &total, &e));
        CHECK_INT(total, ==, si->tokens);
        CHECK(text && !strncmp(text, prompt, strlen(prompt)));
        free(text);
    }
    gc_stats_free(&st);
    gc_disconnect(&w.stats);
    gc_disconnect(&c);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
}

static void test_window_tiny(void)
{
    const char *model = td_tiny_model("tiny_win.gguf", "61");
    if (model)
        under_budget(model, "window", "48K", 48 * 1024, "160K", 160 * 1024, 400, "window/");
}

static void test_pool_stories(void)
{
    const char *model = check_shared_or_skip("models/stories260K-f32.gguf");
    if (!model)
        return;
    under_budget(model, "pool", "300K", 300 * 1024, "1M", 1 << 20, 400, "pooled/");
}

static void test_learned_gists(void)
{
    const char *model = td_tiny_model("tiny_gist.gguf", "62");
    if (!model)
        return;
    /* make-tiny writes gist tokens when asked: a second model with two of them */
    char path[600];
    snprintf(path, sizeof path, "%s/tiny_gist2.gguf", check_tmpdir());
    char *argv[] = {
        (char *)td_bin("gist-model"), "make-tiny", path, "--seed", "62", "--gist", "2", NULL};
    CHECK_INT(td_run(argv, NULL, 0), ==, 0);
    under_budget(path, "gist", "48K", 48 * 1024, "160K", 160 * 1024, 300, "learned/sentence");
}

/* Lowering a session's budget below its use compacts it down at once. */
static void test_lower_budget_and_compact(void)
{
    const char *model = td_tiny_model("tiny_lower.gguf", "63");
    const char *extra[] = {"--block-rows", "16", NULL};
    td_daemon_t d;
    gc_client_t *c = td_up(&d, model, extra);
    if (!c)
        return;
    err_info_t e;
    uint32_t s;
    gc_open_opts_t oo = {.policy = "pool"};
    CHECK_OK(gc_open(c, &oo, &s, &e));
    gc_gen_opts_t o = {
        .session = s, .max_tokens = 400, .prompt = "Once upon a time", .sampling = &td_greedy};
    CHECK_OK(gc_generate(c, &o, NULL, NULL, &e));
    gc_session_info_t before, after;
    CHECK_OK(gc_session_info(c, s, &before, &e));
    CHECK_INT(before.compactions, ==, 0); /* no budget, nothing to do */

    const size_t target = before.bytes / 2;
    gc_budget_t b;
    CHECK_MSG(gc_set_budget(c, s, target, 0, &b, &e) == 0, "%s", e.msg);
    CHECK_OK(gc_session_info(c, s, &after, &e));
    CHECK(after.bytes <= target);
    CHECK_INT(b.bytes_freed, ==, (int64_t)before.bytes - (int64_t)after.bytes);
    CHECK_INT(after.hard_bytes, ==, target);
    CHECK_INT(after.tokens, ==, before.tokens);
    CHECK(after.compactions > 0);

    /* and it goes on generating within its new budget */
    o.max_tokens = 50;
    o.prompt = NULL;
    CHECK_OK(gc_generate(c, &o, NULL, NULL, &e));
    CHECK_OK(gc_session_info(c, s, &after, &e));
    CHECK(after.peak_bytes <= before.peak_bytes && after.bytes <= target);
    gc_disconnect(&c);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
}

/* An explicit compaction of raw rows (past the sinks, before the recent window) succeeds, and
 * its events reach the client that asked: each for the request, on the span (widened to whole
 * sentences), its bytes
 * freed the session's bytes before minus after, all of them adding up to what the session
 * lost; the rows shrink, every token stays in the transcript, and the session goes on. */
static void test_explicit_compaction(void)
{
    const char *model = td_tiny_model("tiny_explicit.gguf", "65");
    const char *extra[] = {"--block-rows", "16", NULL};
    td_daemon_t d;
    gc_client_t *c = td_up(&d, model, extra);
    if (!c)
        return;
    err_info_t e;
    uint32_t s;
    gc_open_opts_t oo = {.policy = "pool"};
    CHECK_OK(gc_open(c, &oo, &s, &e));
    gc_gen_opts_t o = {
        .session = s, .max_tokens = 300, .prompt = "Once upon a time", .sampling = &td_greedy};
    CHECK_OK(gc_generate(c, &o, NULL, NULL, &e));
    gc_session_info_t before, after;
    CHECK_OK(gc_session_info(c, s, &before, &e));
    CHECK_INT(before.compactions, ==, 0);

    const uint32_t first = 16, last = 160;
    watch_t w = {.session_budget = UINT64_MAX, .span_first = first, .span_last = last};
    gc_callbacks_t cb = {.ctx = &w, .on_compaction = on_compaction};
    CHECK_MSG(gc_compact(c, s, first, last, false, &cb, &e) == 0, "compact: %s", err_msg(&e));
    CHECK_OK(gc_session_info(c, s, &after, &e));
    CHECK_INT(w.bad_events, ==, 0);
    CHECK_MSG(w.events > 0 && strstr(w.methods, "/request"), "%u events: %s", w.events,
              w.methods);
    CHECK_INT(after.compactions, ==, before.compactions + w.events);
    CHECK(after.rows < before.rows);
    CHECK(after.bytes < before.bytes);
    CHECK_INT(w.event_bytes, ==, (int64_t)before.bytes - (int64_t)after.bytes);
    CHECK_INT(after.tokens, ==, before.tokens);
    o.max_tokens = 20;
    o.prompt = NULL;
    gc_result_t r = {0};
    CHECK_OK(gc_generate(c, &o, NULL, &r, &e));
    CHECK_INT(r.n_tokens, ==, 20);
    gc_result_free(&r);
    gc_disconnect(&c);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
}

/* A compacted session (pooled gists, evictions) snapshotted at SIGTERM goes on after a restart
 * exactly as its twin goes on without one: rows, metadata and the policy's state return. */
static void test_snapshot_compacted(void)
{
    const char *model = td_tiny_model("tiny_snapc.gguf", "64");
    const char *dir = td_mkdir("snapc");
    const char *extra[] = {
        "--block-rows", "16", "--session-budget", "48K", "--snapshot-dir", dir, NULL};
    td_daemon_t d;
    gc_client_t *c = td_up(&d, model, extra);
    if (!c)
        return;
    err_info_t e;
    uint32_t s1, s2;
    gc_open_opts_t oo = {.policy = "pool"};
    CHECK_OK(gc_open(c, &oo, &s1, &e));
    CHECK_OK(gc_open(c, &oo, &s2, &e));
    static char a1[16384], a2[16384], ref[4096], cont[4096];
    td_gen_text(c, s1, 300, "Once upon a time", a1, sizeof a1);
    td_gen_text(c, s2, 300, "Once upon a time", a2, sizeof a2);
    CHECK(!strcmp(a1, a2));
    gc_session_info_t i1;
    CHECK_OK(gc_session_info(c, s1, &i1, &e));
    CHECK(i1.compactions > 0);
    td_gen_text(c, s2, 40, NULL, ref, sizeof ref);
    gc_disconnect(&c);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);

    if (!(c = td_up(&d, model, extra)))
        return;
    gc_session_info_t r1;
    CHECK_OK(gc_session_info(c, s1, &r1, &e));
    CHECK_INT(r1.tokens, ==, i1.tokens);
    CHECK_INT(r1.rows, ==, i1.rows);
    /* the same blocks and transcript; only each lane's list of blocks may be shorter: a
     * restored list is sized to the blocks it holds, a live one to the most it held before
     * a compaction round freed blocks (16 bytes a block, to jemalloc's size class) */
    const gc_model_info_t *mi = gc_model(c);
    CHECK_MSG(r1.bytes <= i1.bytes &&
                  i1.bytes - r1.bytes <= (uint64_t)mi->n_layer * mi->n_head_kv * 128,
              "restored %llu bytes, before %llu", (unsigned long long)r1.bytes,
              (unsigned long long)i1.bytes);
    CHECK_INT(r1.pending, ==, 1);
    CHECK_STR(r1.policy, "pool");
    td_gen_text(c, s1, 40, NULL, cont, sizeof cont);
    CHECK_MSG(!strcmp(cont, ref), "after restart \"%s\" vs without \"%s\"", cont, ref);
    gc_disconnect(&c);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
}

int main(void)
{
    RUN(test_window_tiny);
    RUN(test_pool_stories);
    RUN(test_learned_gists);
    RUN(test_lower_budget_and_compact);
    RUN(test_explicit_compaction);
    RUN(test_snapshot_compacted);
    return check_done();
}
