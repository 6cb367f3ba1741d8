/* Re-expansion through a real gistd over loopback ZeroMQ: a session under a budget far below
 * what it is told keeps a turn whose words come back later; the automatic expansion (the
 * policy's `expand`, on each client turn) brings that turn's compressed sentence back (events
 * with reason "turn"); an Expand request for a span re-prefills what is compressed there
 * (reason "request"), or says that nothing is; every event's bytes are its session's bytes
 * before less after, the bytes of a request's events add up to the change of the session's
 * bytes, the daemon's figures count the expansions apart from the compactions, and no figure
 * ever shows the session's limit crossed. The model is a tiny random one: this tests the
 * mechanism, not whether a model recalls better (bench/memory.py asks that of a trained one). */
#include "tests/test_daemon_util.h"

typedef struct evsum {
    uint32_t expands, compacts, bad, turn, request, room;
    int64_t expand_bytes, compact_bytes;
    uint64_t expand_tokens, session_budget;
    uint32_t first, last; /* the last expansion's span */
} evsum_t;

static void on_event(void *ctx, uint32_t session, const gc_compaction_t *c)
{
    evsum_t *w = ctx;
    if (c->bytes_freed != (int64_t)c->session_bytes_before - (int64_t)c->session_bytes ||
        c->session_bytes > w->session_budget || c->session_bytes_before > w->session_budget ||
        c->first > c->last) {
        fprintf(stderr, "# event %s/%s/%s [%u, %u]: freed %lld, bytes %llu -> %llu\n", c->action,
                c->method, c->reason, c->first, c->last, (long long)c->bytes_freed,
                (unsigned long long)c->session_bytes_before, (unsigned long long)c->session_bytes);
        w->bad++;
    }
    if (!strcmp(c->action, "expand")) {
        w->expands++;
        w->expand_bytes += c->bytes_freed;
        w->expand_tokens += c->tokens;
        w->turn += !strcmp(c->reason, "turn");
        w->request += !strcmp(c->reason, "request");
        w->first = c->first;
        w->last = c->last;
        if (strcmp(c->method, "prefill") || c->bytes_freed > 0 || c->tokens == 0)
            w->bad++;
    } else {
        w->compacts++;
        w->compact_bytes += c->bytes_freed;
        w->room += !strcmp(c->reason, "expand");
    }
}

/* A user turn, streamed: its events to w. */
static void turn(gc_client_t *c, uint32_t s, const char *text, evsum_t *w)
{
    gc_gen_opts_t o = {.session = s,
                       .max_tokens = 1,
                       .prompt = text,
                       .prompt_role = GC_ROLE_USER,
                       .sampling = &td_greedy};
    gc_callbacks_t cb = {.ctx = w, .on_compaction = on_event};
    err_info_t e;
    err_clear(&e);
    CHECK_MSG(gc_generate(c, &o, &cb, NULL, &e) == 0, "turn: %s", err_msg(&e));
}

static const char *fact = "The key of the blue box is hidden under the old red stone.";
static const char *filler[] = {
    "Once upon a time a little girl went for a walk in the park with her mother.",
    "They saw a big dog that was running after a ball near the pond.",
    "The sun was warm and the birds were singing in the tall green trees.",
    "After a while they sat down on a bench and ate some bread and cheese.",
};

static void test_turns_and_requests(void)
{
    const char *model = td_tiny_model("tiny_expand.gguf", "71");
    const char *extra[] = {"--block-rows", "16", NULL};
    td_daemon_t d;
    gc_client_t *c = td_up(&d, model, extra);
    if (!c)
        return;
    err_info_t e;
    err_clear(&e);
    const uint64_t budget = 128 * 1024;
    const char *keys[] = {"expand", "expand_lex", "expand_min", "expand_spans"};
    const char *values[] = {"1", "1", "1.5", "1"};
    gc_open_opts_t oo = {.policy = "pool",
                         .param_keys = keys,
                         .param_values = values,
                         .n_params = 4,
                         .budget_bytes = budget};
    uint32_t s;
    CHECK_OK(gc_open(c, &oo, &s, &e));
    evsum_t w = {.session_budget = budget};
    turn(c, s, fact, &w);
    for (int k = 0; k < 6; k++)
        for (int i = 0; i < 4; i++)
            turn(c, s, filler[i], &w);
    CHECK_MSG(w.compacts > 0, "no compaction under %llu bytes", (unsigned long long)budget);
    const uint32_t expands_before = w.expands;
    /* the fact again: its compressed sentence comes back with this turn */
    turn(c, s, fact, &w);
    CHECK_MSG(w.turn > 0 && w.expands > expands_before,
              "no automatic expansion after the repeated turn (%u expansions, %u compactions)",
              w.expands, w.compacts);
    char *text = NULL;
    if (w.expands > expands_before) {
        CHECK_OK(
            gc_transcript(c, s, w.first, w.last - w.first + 1, &text, NULL, NULL, NULL, NULL, &e));
        CHECK_MSG(text && strstr(text, "blue box"), "expanded [%u, %u]: '%s'", w.first, w.last,
                  text ? text : "");
        free(text);
    }

    /* an explicit request for a part of a merged span: its events add up to the bytes'
     * change (a request for everything would ask more than this budget can hold at once) */
    gc_session_info_t before, after;
    CHECK_OK(gc_session_info(c, s, &before, &e));
    evsum_t x = {.session_budget = budget};
    gc_callbacks_t cb = {.ctx = &x, .on_compaction = on_event};
    gc_expand_result_t r;
    int rc = gc_expand(c, s, true, 64, 71, 0, &cb, &r, &e);
    CHECK_OK(gc_session_info(c, s, &after, &e));
    CHECK_MSG(rc == 0, "expand 64..71: %s", err_msg(&e));
    CHECK(r.spans > 0 && r.spans == x.expands && x.request == x.expands);
    CHECK(x.first >= 64 && x.last <= 71);
    CHECK_INT(r.tokens, ==, x.expand_tokens);
    CHECK_INT((int64_t)before.bytes - x.expand_bytes - x.compact_bytes, ==, (int64_t)after.bytes);
    CHECK_INT(r.bytes, ==, (int64_t)after.bytes - (int64_t)before.bytes);
    CHECK_INT(r.session_bytes, ==, after.bytes);
    CHECK_INT(after.tokens, ==, before.tokens);
    CHECK(after.peak_bytes <= budget);
    printf("# turns: %u expansions (%u automatic), %u compactions (%u for room); request: %u "
           "spans, %llu tokens, %+lld bytes (%s)\n",
           w.expands, w.turn, w.compacts, w.room, r.spans, (unsigned long long)r.tokens,
           (long long)r.bytes, rc ? err_msg(&e) : r.note);
    CHECK_INT(w.bad + x.bad, ==, 0);

    /* the daemon's figures: expansions apart from compactions, and they add up */
    gc_stats_t st;
    CHECK_OK(gc_stats(c, true, &st, &e));
    CHECK_INT(st.expansions, ==, w.expands + x.expands);
    CHECK_INT(st.expand_tokens, ==, w.expand_tokens + x.expand_tokens);
    CHECK_INT(st.expand_bytes, ==, -(w.expand_bytes + x.expand_bytes));
    CHECK_INT(st.compactions, ==, w.compacts + x.compacts);
    CHECK_INT(st.bytes_freed, ==, w.compact_bytes + x.compact_bytes);
    CHECK(st.expand_ms > 0.0);
    for (uint32_t i = 0; i < st.n_compactions_by_method; i++)
        CHECK(strcmp(st.compactions_by_method[i].method, "prefill") != 0);
    CHECK_INT(st.n_session_list, ==, 1);
    if (st.n_session_list == 1) {
        CHECK_INT(st.session_list[0].expansions, ==, st.expansions);
        CHECK_INT(st.session_list[0].compactions, ==, st.compactions);
    }
    gc_stats_free(&st);

    /* bad requests: a span outside the transcript, an unknown session; the daemon goes on */
    CHECK_INT(gc_expand(c, s, true, 5, 1u << 30, 0, NULL, &r, &e), ==, ERR_RANGE);
    CHECK_INT(gc_expand(c, 999, false, 0, 0, 0, NULL, &r, &e), ==, ERR_NOTFOUND);
    /* sinks hold nothing compressed */
    CHECK_INT(gc_expand(c, s, true, 0, 1, 0, NULL, &r, &e), ==, ERR_NOTFOUND);
    CHECK_MSG(strstr(e.msg, "nothing compressed"), "message: %s", e.msg);
    /* automatic, on request: no error whatever it finds */
    CHECK_OK(gc_expand(c, s, false, 0, 0, 8, &cb, &r, &e));
    CHECK(r.tokens <= 8);
    turn(c, s, filler[0], &w);
    gc_disconnect(&c);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
}

/* `expand=0` turns it off: no expansion however relevant the turn. */
static void test_off(void)
{
    const char *model = td_tiny_model("tiny_expand_off.gguf", "72");
    const char *extra[] = {"--block-rows", "16", NULL};
    td_daemon_t d;
    gc_client_t *c = td_up(&d, model, extra);
    if (!c)
        return;
    err_info_t e;
    const char *keys[] = {"expand", "expand_lex", "expand_min"};
    const char *values[] = {"0", "1", "1.5"};
    gc_open_opts_t oo = {.policy = "auto",
                         .param_keys = keys,
                         .param_values = values,
                         .n_params = 3,
                         .budget_bytes = 96 * 1024};
    uint32_t s;
    CHECK_OK(gc_open(c, &oo, &s, &e));
    evsum_t w = {.session_budget = 96 * 1024};
    turn(c, s, fact, &w);
    for (int k = 0; k < 6; k++)
        for (int i = 0; i < 4; i++)
            turn(c, s, filler[i], &w);
    turn(c, s, fact, &w);
    CHECK(w.compacts > 0);
    CHECK_INT(w.expands, ==, 0);
    CHECK_INT(w.bad, ==, 0);
    gc_disconnect(&c);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
}

int main(void)
{
    RUN(test_turns_and_requests);
    RUN(test_off);
    return check_done();
}
