/* Bad input against a real gistd: malformed frames and protobufs, unknown sessions and
 * requests, oversize requests, budgets too small for one token, bad parameters, busy
 * sessions, a protocol version it does not speak, a client that vanishes mid-stream and a
 * SIGTERM mid-stream. Each gets its error reply (or clean end), and afterwards the daemon
 * still serves correctly. */
#include <math.h>

#include "tests/test_daemon_util.h"

/* ------------------------------------------------------------------ raw frames */

/* Sends the frames (len -1: strlen). */
static void raw_send(void *s, int n, const void *const *data, const int *len)
{
    for (int i = 0; i < n; i++)
        zmq_send(s, data[i], len[i] < 0 ? strlen(data[i]) : (size_t)len[i],
                 i + 1 < n ? ZMQ_SNDMORE : 0);
}

static size_t pack(const Gistd__Request *r, uint8_t *buf, size_t cap)
{
    size_t n = gistd__request__get_packed_size(r);
    return n <= cap ? gistd__request__pack(r, buf) : 0;
}

/* Expects a final error reply with code; returns its message check. */
static void expect_error(void *s, int code, uint64_t id, const char *needle)
{
    Gistd__Reply *r = td_raw_recv(s);
    CHECK(r != NULL);
    if (!r)
        return;
    CHECK(r->final);
    CHECK_INT(r->id, ==, id);
    CHECK_INT(r->body_case, ==, GISTD__REPLY__BODY_ERROR);
    if (r->body_case == GISTD__REPLY__BODY_ERROR) {
        CHECK_INT(r->error->code, ==, err_wire(code));
        CHECK_MSG(!needle || strstr(r->error->message, needle), "message \"%s\" lacks \"%s\"",
                  r->error->message, needle);
    }
    gistd__reply__free_unpacked(r, NULL);
}

static void test_malformed_messages(void)
{
    const char *model = td_tiny_model("tiny_err.gguf", "21");
    const char *extra[] = {"--max-request", "4096", NULL};
    td_daemon_t d;
    if (!model || td_start(&d, model, extra))
        return;
    void *ctx = zmq_ctx_new();
    void *s = td_raw_open(ctx, d.endpoint);
    uint8_t buf[16384];
    Gistd__Hello h = GISTD__HELLO__INIT;
    h.version = 1;
    Gistd__Request r = GISTD__REQUEST__INIT;
    r.id = 7;
    r.body_case = GISTD__REQUEST__BODY_HELLO;
    r.hello = &h;
    const int hl = (int)pack(&r, buf, sizeof buf);

    /* no empty delimiter frame */
    raw_send(s, 1, (const void *[]){buf}, (int[]){hl});
    expect_error(s, ERR_PROTO, 0, "delimiter");
    /* one frame too many */
    raw_send(s, 3, (const void *[]){"", buf, "x"}, (int[]){0, hl, 1});
    expect_error(s, ERR_PROTO, 0, "3 frames");
    /* not a protobuf */
    raw_send(s, 2, (const void *[]){"", "\xff\xff\xff\x07garbage"}, (int[]){0, -1});
    expect_error(s, ERR_PROTO, 0, "not a valid");
    /* a request without a body */
    Gistd__Request empty = GISTD__REQUEST__INIT;
    empty.id = 5;
    const int el = (int)pack(&empty, buf, sizeof buf);
    raw_send(s, 2, (const void *[]){"", buf}, (int[]){0, el});
    expect_error(s, ERR_PROTO, 5, "no body");
    /* larger than --max-request */
    static char big[10000];
    memset(big, 'a', sizeof big);
    Gistd__Append ap = GISTD__APPEND__INIT;
    ap.session = 1;
    ap.text.data = (uint8_t *)big;
    ap.text.len = sizeof big;
    Gistd__Request rb = GISTD__REQUEST__INIT;
    rb.id = 9;
    rb.body_case = GISTD__REQUEST__BODY_APPEND;
    rb.append = &ap;
    const int bl = (int)pack(&rb, buf, sizeof buf);
    raw_send(s, 2, (const void *[]){"", buf}, (int[]){0, bl});
    expect_error(s, ERR_TOOBIG, 9, "larger than the limit of 4096"); /* names the request */
    /* a protocol version it does not speak */
    h.version = 99;
    const int vl = (int)pack(&r, buf, sizeof buf);
    raw_send(s, 2, (const void *[]){"", buf}, (int[]){0, vl});
    expect_error(s, ERR_UNSUPPORTED, 7, "version 99");
    /* and then a good handshake is answered */
    h.version = 1;
    const int gl = (int)pack(&r, buf, sizeof buf);
    raw_send(s, 2, (const void *[]){"", buf}, (int[]){0, gl});
    Gistd__Reply *ok = td_raw_recv(s);
    CHECK(ok && ok->id == 7 && ok->body_case == GISTD__REPLY__BODY_HELLO && ok->final);
    if (ok) {
        CHECK_INT(ok->hello->version, ==, 1);
        CHECK_INT(ok->hello->model->n_vocab, ==, 384);
        gistd__reply__free_unpacked(ok, NULL);
    }
    zmq_close(s);
    zmq_ctx_term(ctx);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
}

/* ------------------------------------------------------------------ bad requests */

static int stop_after(void *ctx, uint32_t session, int32_t id, const char *piece, size_t len)
{
    return ++*(int *)ctx >= 3;
}

static void test_bad_requests_then_serves(void)
{
    char ref[4096];
    const char *model =
        td_tiny_reference("tiny_bad.gguf", "22", "Once upon a time", "16", ref, sizeof ref);
    td_daemon_t d;
    gc_client_t *c = td_up(&d, model, NULL);
    if (!c)
        return;
    err_info_t e;
    uint32_t s, s2_unused;
    gc_gen_opts_t go = {.session = 999, .max_tokens = 4, .prompt = "x"};
    CHECK_INT(gc_generate(c, &go, NULL, NULL, &e), ==, ERR_NOTFOUND);
    CHECK(strstr(e.msg, "no session 999"));
    CHECK_INT(gc_close(c, 999, &e), ==, ERR_NOTFOUND);

    gc_open_opts_t tiny_budget = {.budget_bytes = 64};
    CHECK_INT(gc_open(c, &tiny_budget, &s, &e), ==, ERR_BUDGET);
    CHECK_MSG(strstr(e.msg, "smallest usable"), "message: %s", e.msg);
    gc_open_opts_t bad_policy = {.policy = "magic"};
    CHECK_INT(gc_open(c, &bad_policy, &s, &e), ==, ERR_INVAL);
    CHECK(strstr(e.msg, "unknown policy 'magic'"));
    gc_open_opts_t bad_tmpl = {.chat_template = "nope"};
    CHECK_INT(gc_open(c, &bad_tmpl, &s, &e), ==, ERR_INVAL);
    gc_sampling_t bad_smp = {.temp = 1.0f, .top_p = 2.0f};
    gc_open_opts_t bad_sampling = {.sampling = &bad_smp};
    CHECK_INT(gc_open(c, &bad_sampling, &s, &e), ==, ERR_INVAL);

    gc_open_opts_t full = {.policy = "full"}; /* compaction verbs need a compacting policy */
    CHECK_OK(gc_open(c, &full, &s, &e));
    const int32_t bad_ids[] = {5, 99999};
    CHECK_INT(gc_append_tokens(c, s, bad_ids, 2, NULL, &e), ==, ERR_RANGE);
    CHECK(strstr(e.msg, "99999"));
    gc_gen_opts_t bad_role = {.session = s, .max_tokens = 1, .prompt = "x", .prompt_role = 9};
    CHECK_INT(gc_generate(c, &bad_role, NULL, NULL, &e), ==, ERR_INVAL);
    CHECK_INT(gc_compact(c, s, 0, 3, false, NULL, &e), ==, ERR_RANGE); /* nothing stored */
    CHECK_INT(gc_snapshot(c, s, NULL, &e), ==, ERR_UNSUPPORTED);       /* no --snapshot-dir */
    CHECK_INT(gc_set_budget(c, 0, 100, 200, NULL, &e), ==, ERR_INVAL); /* soft above hard */

    /* a busy session refuses a second request; cancel ends the first. The generation must not
     * end by itself first: under `window` this model's greedy text after "zz" runs 3,000
     * tokens without an end of text (after "go" it ends at 66, which a client slowed by a
     * loaded machine could see before its cancel arrived) */
    uint32_t s_long;
    gc_open_opts_t endless = {.policy = "window", .budget_bytes = 256 * 1024};
    CHECK_OK(gc_open(c, &endless, &s_long, &e));
    gc_gen_opts_t lg = {
        .session = s_long, .max_tokens = 100000, .prompt = "zz", .sampling = &td_greedy};
    uint64_t req;
    int seen = 0;
    gc_callbacks_t cb = {.ctx = &seen, .on_token = stop_after};
    CHECK_OK(gc_generate_start(c, &lg, &cb, &req, &e));
    CHECK_INT(gc_append(c, s_long, "more", 0, GC_ROLE_NONE, NULL, &e), ==, ERR_BUSY);
    gc_result_t res = {0};
    CHECK_OK(gc_wait(c, req, &res, &e)); /* the callback asked to stop after 3 tokens */
    CHECK_INT(res.reason, ==, GC_STOP_CANCELLED);
    CHECK(res.n_tokens >= 3 && res.n_tokens < 100000);
    gc_result_free(&res);
    CHECK_OK(gc_close(c, s_long, &e));
    CHECK_OK(gc_append(c, s, "go", 0, GC_ROLE_NONE, NULL, &e));
    CHECK_INT(gc_compact(c, s, 0, 1, false, NULL, &e), ==, ERR_UNSUPPORTED); /* policy full */

    /* every sampling field is bounded at the edge, each refusal naming the field and its
     * range (the tiny model: a vocabulary of 384, a context of 256) */
    static const struct {
        const char *field;
        gc_sampling_t smp;
    } bad[] = {
        {"sampling.repeat_last_n", {.temp = 1, .repeat_penalty = 1.3f, .repeat_last_n = INT32_MAX}},
        {"sampling.repeat_last_n",
         {.temp = 1, .repeat_penalty = 1.3f, .repeat_last_n = INT32_MAX - 1}},
        {"sampling.repeat_last_n", {.temp = 1, .repeat_penalty = 1.3f, .repeat_last_n = 257}},
        {"sampling.repeat_last_n", {.temp = 1, .repeat_last_n = -1}},
        {"sampling.repeat_last_n", {.temp = 1, .repeat_last_n = INT32_MIN}},
        {"sampling.top_k", {.temp = 1, .top_k = -1}},
        {"sampling.top_k", {.temp = 1, .top_k = INT32_MIN}},
        {"sampling.top_k", {.temp = 1, .top_k = INT32_MAX}},
        {"sampling.top_k", {.temp = 1, .top_k = 385}},
        {"sampling.top_p", {.temp = 1, .top_p = -5}},
        {"sampling.top_p", {.temp = 1, .top_p = 1.5f}},
        {"sampling.top_p", {.temp = 1, .top_p = NAN}},
        {"sampling.min_p", {.temp = 1, .min_p = -0.1f}},
        {"sampling.min_p", {.temp = 1, .min_p = INFINITY}},
        {"sampling.temp", {.temp = -1}},
        {"sampling.temp", {.temp = INFINITY}},
        {"sampling.temp", {.temp = NAN}},
        {"sampling.repeat_penalty", {.temp = 1, .repeat_penalty = -1}},
        {"sampling.repeat_penalty", {.temp = 1, .repeat_penalty = INFINITY}},
        {"sampling.repeat_penalty", {.temp = 1, .repeat_penalty = NAN}},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        gc_gen_opts_t bg = {.session = s, .max_tokens = 2, .sampling = &bad[i].smp};
        err_clear(&e);
        CHECK_INT(gc_generate(c, &bg, NULL, NULL, &e), ==, ERR_INVAL);
        CHECK_MSG(strstr(e.msg, bad[i].field) && strstr(e.msg, "outside ["),
                  "case %zu: \"%s\" should name %s and its range", i, e.msg, bad[i].field);
        gc_open_opts_t bo = {.sampling = &bad[i].smp};
        err_clear(&e);
        CHECK_INT(gc_open(c, &bo, &s2_unused, &e), ==, ERR_INVAL);
        CHECK_MSG(strstr(e.msg, bad[i].field), "open, case %zu: %s", i, e.msg);
    }
    /* the bounds themselves are accepted */
    gc_sampling_t edge = {
        .temp = 1, .top_k = 384, .top_p = 1, .min_p = 1, .repeat_penalty = 1.3f,
        .repeat_last_n = 256};
    gc_gen_opts_t eg = {.session = s, .max_tokens = 2, .sampling = &edge};
    CHECK_OK(gc_generate(c, &eg, NULL, &res, &e));
    CHECK_INT(res.n_tokens, ==, 2);
    gc_result_free(&res);

    /* after all that, it still serves exactly */
    uint32_t s2;
    CHECK_OK(gc_open(c, NULL, &s2, &e));
    gc_gen_opts_t good = {
        .session = s2, .max_tokens = 16, .prompt = "Once upon a time", .sampling = &td_greedy};
    CHECK_OK(gc_generate(c, &good, NULL, &res, &e));
    CHECK_MSG(res.text && !strcmp(res.text, ref), "\"%s\" vs \"%s\"", res.text, ref);
    gc_result_free(&res);
    gc_stats_t st;
    CHECK_OK(gc_stats(c, false, &st, &e));
    CHECK_INT(st.errors, >=, 11);
    CHECK_INT(st.sessions, ==, 2);
    gc_stats_free(&st);
    gc_disconnect(&c);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
}

/* ------------------------------------------------------------------ clients that go */

/* A client that vanishes mid-stream ends its own generation; others are not disturbed. */
static void test_client_gone(void)
{
    const char *model = td_tiny_model("tiny_gone.gguf", "23");
    td_daemon_t d;
    gc_client_t *c = td_up(&d, model, NULL);
    if (!c)
        return;
    err_info_t e;
    uint32_t s;
    CHECK_OK(gc_open(c, NULL, &s, &e));

    void *ctx = zmq_ctx_new();
    void *raw = td_raw_open(ctx, d.endpoint);
    Gistd__Generate g = GISTD__GENERATE__INIT;
    g.session = s;
    g.max_tokens = 20000;
    g.prompt.data = (uint8_t *)"Once";
    g.prompt.len = 4;
    Gistd__Request r = GISTD__REQUEST__INIT;
    r.id = 1;
    r.body_case = GISTD__REQUEST__BODY_GENERATE;
    r.generate = &g;
    CHECK(td_raw_request(raw, &r) == 0);
    Gistd__Reply *first = td_raw_recv(raw);
    CHECK(first && first->body_case == GISTD__REPLY__BODY_TOKEN);
    if (first)
        gistd__reply__free_unpacked(first, NULL);
    zmq_close(raw); /* gone, mid-stream */
    zmq_ctx_term(ctx);

    /* the session goes idle long before 20000 tokens */
    gc_session_info_t info = {0};
    for (int i = 0; i < 100000; i++) {
        CHECK_OK(gc_session_info(c, s, &info, &e));
        if (!strcmp(info.state, "idle"))
            break;
    }
    CHECK_STR(info.state, "idle");
    CHECK_MSG(info.generated_tokens < 20000, "generated %llu",
              (unsigned long long)info.generated_tokens);
    gc_stats_t st;
    CHECK_OK(gc_stats(c, false, &st, &e));
    CHECK_INT(st.clients_gone, ==, 1);
    gc_stats_free(&st);
    /* and the session still works for someone else */
    gc_gen_opts_t o = {.session = s, .max_tokens = 5, .sampling = &td_greedy};
    gc_result_t res = {0};
    CHECK_OK(gc_generate(c, &o, NULL, &res, &e));
    CHECK_INT(res.n_tokens, >=, 1);
    gc_result_free(&res);
    gc_disconnect(&c);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
}

/* SIGTERM mid-stream: the stream ends with CANCELLED, and gistd exits 0. */
typedef struct term_ctx {
    pid_t pid;
    int seen;
} term_ctx_t;

static int term_after(void *ctx, uint32_t session, int32_t id, const char *piece, size_t len)
{
    term_ctx_t *t = ctx;
    if (++t->seen == 3)
        kill(t->pid, SIGTERM);
    return 0;
}

static void test_sigterm_mid_stream(void)
{
    const char *model = td_tiny_model("tiny_term.gguf", "24");
    td_daemon_t d;
    gc_client_t *c = td_up(&d, model, NULL);
    if (!c)
        return;
    err_info_t e;
    uint32_t s;
    CHECK_OK(gc_open(c, NULL, &s, &e));
    term_ctx_t t = {.pid = d.pid};
    gc_gen_opts_t o = {
        .session = s, .max_tokens = 100000, .prompt = "Once", .sampling = &td_greedy};
    gc_callbacks_t cb = {.ctx = &t, .on_token = term_after};
    gc_result_t res = {0};
    CHECK_OK(gc_generate(c, &o, &cb, &res, &e));
    CHECK_INT(res.reason, ==, GC_STOP_CANCELLED);
    CHECK(res.n_tokens >= 3 && res.n_tokens < 100000);
    gc_result_free(&res);
    gc_disconnect(&c);
    int st;
    while (waitpid(d.pid, &st, 0) < 0 && errno == EINTR)
        ;
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    d.pid = 0;
}

/* ipc:// endpoints work as well as tcp:// ones. */
static void test_ipc_endpoint(void)
{
    const char *model = td_tiny_model("tiny_ipc.gguf", "25");
    char listen[600];
    snprintf(listen, sizeof listen, "ipc://%s/gistd.sock", check_tmpdir());
    const char *extra[] = {"--listen", listen, NULL};
    td_daemon_t d;
    if (!model || td_start(&d, model, extra))
        return;
    CHECK_STR(d.endpoint, listen);
    gc_client_t *c = td_connect(&d);
    err_info_t e;
    gc_stats_t st;
    CHECK(c && gc_stats(c, false, &st, &e) == 0);
    gc_disconnect(&c);
    CHECK_INT(td_stop(&d, SIGINT), ==, 0);
}

/* No daemon: a timeout, said clearly. */
static void test_no_daemon_times_out(void)
{
    gc_client_t *c = NULL;
    err_info_t e;
    err_clear(&e);
    char ep[600];
    snprintf(ep, sizeof ep, "ipc://%s/nobody.sock", check_tmpdir());
    CHECK_INT(gc_connect(ep, 200, &c, &e), ==, ERR_TIMEOUT);
    CHECK(c == NULL);
    CHECK_MSG(strstr(e.msg, "no reply") && strstr(e.msg, ep), "message: %s", e.msg);
}

int main(void)
{
    RUN(test_malformed_messages);
    RUN(test_bad_requests_then_serves);
    RUN(test_client_gone);
    RUN(test_sigterm_mid_stream);
    RUN(test_ipc_endpoint);
    RUN(test_no_daemon_times_out);
    return check_done();
}
