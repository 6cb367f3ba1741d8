/* Faults from clients against a real gistd on a loopback port: a client killed while its
 * tokens stream, a client that sends and never reads, and a flood of requests for a session
 * that does not exist. In each, what the daemon keeps is stated beside the test and checked:
 * other clients are served exactly (greedy text equal to gist-model's or to a fresh
 * session's), sessions keep their content, and the daemon's memory stays bounded. */
#include "tests/test_daemon_util.h"

/* Under sanitizers RSS says nothing about the daemon (shadow memory, quarantined frees): the
 * memory bounds are not checked there, and deadlines are longer. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define DEADLINE_S 120
#else
#define DEADLINE_S 30
#endif

/* Polls session s's info until its state is "idle" (deadline: DEADLINE_S). */
static bool wait_idle(gc_client_t *c, uint32_t s, gc_session_info_t *info)
{
    err_info_t e;
    for (const double end = td_now() + DEADLINE_S; td_now() < end;) {
        if (gc_session_info(c, s, info, &e))
            return false;
        if (!strcmp(info->state, "idle"))
            return true;
        usleep(1000); /* a poll interval, not a wait for something to happen */
    }
    return false;
}

/* ------------------------------------------------------------------ a client killed */

static int report_token(void *ctx, uint32_t session, int32_t id, const char *piece, size_t len)
{
    const char b = 't';
    return write(*(int *)ctx, &b, 1) == 1 ? 0 : 1;
}

/* The killed client: opens a session, reports its id on fd, then generates greedily from
 * "Once upon a time", writing a byte to fd for every token it receives, until it is killed. */
static void killed_client(const char *endpoint, int fd)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    gc_client_t *c = NULL;
    err_info_t e;
    uint32_t s = 0;
    if (gc_connect(endpoint, 30000, &c, &e) || gc_open(c, NULL, &s, &e))
        _exit(1);
    if (write(fd, &s, sizeof s) != sizeof s)
        _exit(1);
    gc_gen_opts_t o = {
        .session = s, .max_tokens = 1000000, .prompt = "Once upon a time", .sampling = &td_greedy};
    gc_callbacks_t cb = {.ctx = &fd, .on_token = report_token};
    gc_generate(c, &o, &cb, NULL, &e);
    _exit(2); /* never reached in the test: a million tokens outlast the kill */
}

/*
 * A client process is SIGKILLed while its generation streams. What is kept:
 *  - the daemon goes on serving: another client's generation, running across the kill,
 *    gives exactly gist-model's greedy text;
 *  - the daemon notices (its next send to the dead client fails), ends that generation
 *    without a reply (counted in clients_gone), and the session goes idle long before its
 *    million tokens;
 *  - the killed client's session stays, holding the prompt and every token generated until
 *    the daemon noticed: token for token the greedy continuation a fresh session generates;
 *  - the session stays usable: 8 more tokens continue the same greedy text.
 */
static void test_client_killed_mid_stream(void)
{
    char ref[4096];
    const char *model =
        td_tiny_reference("tiny_kill.gguf", "31", "The little dog", "40", ref, sizeof ref);
    td_daemon_t d;
    if (!model || td_start(&d, model, NULL))
        return;
    int fd[2];
    if (pipe(fd) < 0) {
        CHECK(!"pipe");
        td_stop(&d, SIGKILL);
        return;
    }
    /* forked before this process makes a ZeroMQ context of its own */
    pid_t child = fork();
    if (child == 0) {
        close(fd[0]);
        killed_client(d.endpoint, fd[1]);
    }
    close(fd[1]);
    uint32_t killed = 0;
    CHECK(read(fd[0], &killed, sizeof killed) == sizeof killed);
    /* tokens are streaming to the child once it has received a few */
    char b[8];
    uint32_t seen = 0;
    while (seen < 5) {
        ssize_t r = read(fd[0], b, sizeof b);
        if (r <= 0)
            break;
        seen += (uint32_t)r;
    }
    CHECK_INT(seen, >=, 5);

    gc_client_t *c = td_connect(&d);
    err_info_t e;
    uint32_t other;
    CHECK_OK(gc_open(c, NULL, &other, &e));
    gc_gen_opts_t o = {
        .session = other, .max_tokens = 40, .prompt = "The little dog", .sampling = &td_greedy};
    uint64_t req;
    CHECK_OK(gc_generate_start(c, &o, NULL, &req, &e));
    kill(child, SIGKILL);
    int st;
    waitpid(child, &st, 0);
    close(fd[0]);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    gc_result_t res = {0};
    CHECK_OK(gc_wait(c, req, &res, &e));
    CHECK_MSG(res.text && !strcmp(res.text, ref), "across the kill: \"%s\" vs gist-model \"%s\"",
              res.text ? res.text : "(none)", ref);
    gc_result_free(&res);

    gc_session_info_t info = {0};
    CHECK_MSG(wait_idle(c, killed, &info), "the killed client's session is still '%s'", info.state);
    CHECK_MSG(info.generated_tokens < 1000000, "generated %llu",
              (unsigned long long)info.generated_tokens);
    gc_stats_t stats;
    CHECK_OK(gc_stats(c, false, &stats, &e));
    CHECK_INT(stats.clients_gone, ==, 1);
    CHECK_INT(stats.sessions, ==, 2);
    gc_stats_free(&stats);

    /* its transcript: the prompt, then the greedy continuation as far as it went */
    uint32_t n_k = 0, n_p = 0, n_f = 0;
    int32_t *ids_k = td_transcript_ids(c, killed, &n_k);
    uint32_t probe;
    CHECK_OK(gc_open(c, NULL, &probe, &e));
    gc_usage_t u;
    CHECK_OK(gc_append(c, probe, "Once upon a time", 0, GC_ROLE_NONE, &u, &e));
    int32_t *ids_p = td_transcript_ids(c, probe, &n_p);
    CHECK_INT(n_k, >, n_p + (uint32_t)seen - 1);
    CHECK(ids_k && ids_p && !memcmp(ids_k, ids_p, sizeof(int32_t) * n_p));
    const uint32_t gen = n_k > n_p ? n_k - n_p : 0;
    CHECK_INT(info.generated_tokens, ==, gen);
    fprintf(stderr, "# killed client: saw %u tokens, the daemon generated %u before it noticed\n",
            seen, gen);

    /* a fresh session generating gen + 8 tokens, and the killed one going on for 8 */
    gc_gen_opts_t of = {.session = probe, .max_tokens = gen + 8, .sampling = &td_greedy};
    CHECK_OK(gc_generate(c, &of, NULL, NULL, &e));
    gc_gen_opts_t ok = {.session = killed, .max_tokens = 8, .sampling = &td_greedy};
    gc_result_t more = {0};
    CHECK_OK(gc_generate(c, &ok, NULL, &more, &e));
    CHECK_INT(more.n_tokens, ==, 8);
    gc_result_free(&more);
    free(ids_k);
    free(ids_p);
    ids_k = td_transcript_ids(c, killed, &n_k);
    int32_t *ids_f = td_transcript_ids(c, probe, &n_f);
    CHECK_INT(n_k, ==, n_f);
    for (uint32_t i = 0; ids_k && ids_f && i < n_k && i < n_f; i++)
        if (ids_k[i] != ids_f[i]) {
            check_fail_(__FILE__, __LINE__, "position %u: killed session %d, fresh session %d", i,
                        ids_k[i], ids_f[i]);
            break;
        }
    free(ids_k);
    free(ids_f);
    gc_disconnect(&c);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
}

/* ------------------------------------------------------------------ a client that never reads */

/* Sends n Generate requests for session s (ids first ..), each with a prompt, and never
 * reads. Returns how many were sent. */
static int flood_generate(void *raw, uint32_t s, uint64_t first, int n, uint32_t max_tokens)
{
    Gistd__Generate g = GISTD__GENERATE__INIT;
    g.session = s;
    g.max_tokens = max_tokens;
    g.prompt.data = (uint8_t *)" and";
    g.prompt.len = 4;
    Gistd__Request r = GISTD__REQUEST__INIT;
    r.body_case = GISTD__REQUEST__BODY_GENERATE;
    r.generate = &g;
    for (int i = 0; i < n; i++) {
        r.id = first + (uint64_t)i;
        if (td_raw_request(raw, &r))
            return i;
    }
    return n;
}

/* Polls stats until the daemon has read `requests` requests besides these polls themselves
 * (deadline: DEADLINE_S). st gets the last stats. */
static bool wait_requests(gc_client_t *c, uint64_t requests, gc_stats_t *st)
{
    err_info_t e;
    uint64_t polls = 0;
    for (const double end = td_now() + DEADLINE_S; td_now() < end;) {
        if (gc_stats(c, false, st, &e))
            return false;
        gc_stats_free(st);
        if (st->requests >= requests + ++polls)
            return true;
        usleep(2000);
    }
    return false;
}

/*
 * A raw DEALER sends a long generation and then many more requests, and never reads a
 * reply. The deliberate choice (daemon/server.c): every reply is sent without blocking; a
 * client's queue holds at most DMN_SNDHWM replies, and beyond that its replies, final ones
 * included, are dropped and counted (events_dropped, in the stats and the session's info).
 * Checked: the daemon never blocks (it reads every request, and keeps answering), another
 * client meanwhile gets exactly gist-model's greedy text, replies are dropped once the queue
 * is full, and the daemon's memory stops growing: a second flood as large as the first
 * leaves RSS where it was. The bound counts replies, not bytes: what it holds is DMN_SNDHWM
 * times the replies' size, small here (BUSY errors, token events); a deaf client asking for
 * large replies (whole transcripts) holds that many of them.
 */
static void test_client_never_reads(void)
{
    char ref[4096];
    const char *model =
        td_tiny_reference("tiny_deaf.gguf", "32", "The sun was", "32", ref, sizeof ref);
    td_daemon_t d;
    gc_client_t *c = td_up(&d, model, NULL);
    if (!c)
        return;
    err_info_t e;
    uint32_t deaf_s, other;
    /* the deaf client's generation runs all along: a window under a 64 KiB budget keeps its
     * rows from growing, so what the daemon's memory does is the replies' doing */
    gc_open_opts_t oo = {.policy = "window", .budget_bytes = 64 * 1024};
    CHECK_OK(gc_open(c, &oo, &deaf_s, &e));
    CHECK_OK(gc_open(c, NULL, &other, &e));
    gc_stats_t st;
    CHECK_OK(gc_stats(c, false, &st, &e));
    gc_stats_free(&st);
    uint64_t sent = st.requests; /* this stats request included */
    const long rss0 = td_rss_kib(d.pid);

    void *ctx = zmq_ctx_new();
    void *raw = td_raw_open(ctx, d.endpoint);
    /* one generation that streams to the deaf client, then requests answered BUSY */
    CHECK_INT(flood_generate(raw, deaf_s, 1, 1, 1u << 30), ==, 1);
    const int n_flood = 150000; /* more replies than DMN_SNDHWM and the socket buffers hold */
    CHECK_INT(flood_generate(raw, deaf_s, 2, n_flood, 1), ==, n_flood);
    sent += 1 + (uint64_t)n_flood;

    /* meanwhile another client is served exactly */
    gc_gen_opts_t o = {
        .session = other, .max_tokens = 32, .prompt = "The sun was", .sampling = &td_greedy};
    gc_result_t res = {0};
    CHECK_OK(gc_generate(c, &o, NULL, &res, &e));
    CHECK_MSG(res.text && !strcmp(res.text, ref), "beside a deaf client: \"%s\" vs \"%s\"",
              res.text ? res.text : "(none)", ref);
    gc_result_free(&res);
    sent += 1; /* the generate */

    CHECK_MSG(wait_requests(c, sent, &st), "the daemon read %llu of %llu requests",
              (unsigned long long)st.requests, (unsigned long long)sent);
    CHECK_MSG(st.events_dropped > 0, "no reply was dropped after %d unread ones", n_flood);
    const uint64_t dropped1 = st.events_dropped;
    const long rss1 = td_rss_kib(d.pid);

    /* a second flood as large: all of it is dropped, and memory stays where it was */
    CHECK_INT(flood_generate(raw, deaf_s, 2 + (uint64_t)n_flood, n_flood, 1), ==, n_flood);
    sent = st.requests + (uint64_t)n_flood; /* the last poll included */
    CHECK(wait_requests(c, sent, &st));
    const long rss2 = td_rss_kib(d.pid);
    CHECK_MSG(st.events_dropped >= dropped1 + (uint64_t)n_flood - 1000,
              "second flood: %llu more dropped of %d",
              (unsigned long long)(st.events_dropped - dropped1), n_flood);
    fprintf(stderr, "# deaf client: RSS %ld -> %ld -> %ld KiB, %llu replies dropped\n", rss0, rss1,
            rss2, (unsigned long long)st.events_dropped);
    CHECK(rss0 > 0 && rss1 > 0 && rss2 > 0);
    CHECK_MSG(rss2 - rss1 < 8 * 1024 || !TD_RSS_CHECKED, "RSS grew %ld KiB during the second flood",
              rss2 - rss1);
    CHECK_MSG(rss1 - rss0 < 128 * 1024 || !TD_RSS_CHECKED, "RSS grew %ld KiB with one deaf client",
              rss1 - rss0);

    /* the daemon still answers, and the deaf client's session is whole */
    gc_session_info_t info;
    CHECK_OK(gc_session_info(c, deaf_s, &info, &e));
    CHECK(info.events_dropped > 0);
    CHECK_OK(gc_cancel(c, deaf_s, &e));
    CHECK(wait_idle(c, deaf_s, &info));
    zmq_close(raw);
    zmq_ctx_term(ctx);
    o.prompt = NULL;
    o.max_tokens = 4;
    CHECK_OK(gc_generate(c, &o, NULL, NULL, &e));
    gc_disconnect(&c);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
}

/* ------------------------------------------------------------------ unknown sessions */

#define GHOST 4242u

/* Sends n requests for GHOST pipelined (ids first ..), request id of kind id % 6: generate,
 * append, info, transcript, cancel, close. Then reads n replies: each is a final NOTFOUND
 * error naming the session, and each id is answered once. */
static void ghost_flood(void *raw, uint64_t first, int n)
{
    Gistd__Generate g = GISTD__GENERATE__INIT;
    Gistd__Append a = GISTD__APPEND__INIT;
    Gistd__SessionInfoRequest in = GISTD__SESSION_INFO_REQUEST__INIT;
    Gistd__TranscriptRequest t = GISTD__TRANSCRIPT_REQUEST__INIT;
    Gistd__Cancel cn = GISTD__CANCEL__INIT;
    Gistd__CloseSession cl = GISTD__CLOSE_SESSION__INIT;
    g.session = a.session = in.session = t.session = cn.session = cl.session = GHOST;
    g.max_tokens = 5;
    a.text.data = (uint8_t *)"hello";
    a.text.len = 5;
    const Gistd__Request base = GISTD__REQUEST__INIT;
    const Gistd__Request kinds[6] = {
        {.base = base.base, .body_case = GISTD__REQUEST__BODY_GENERATE, .generate = &g},
        {.base = base.base, .body_case = GISTD__REQUEST__BODY_APPEND, .append = &a},
        {.base = base.base, .body_case = GISTD__REQUEST__BODY_INFO, .info = &in},
        {.base = base.base, .body_case = GISTD__REQUEST__BODY_TRANSCRIPT, .transcript = &t},
        {.base = base.base, .body_case = GISTD__REQUEST__BODY_CANCEL, .cancel = &cn},
        {.base = base.base, .body_case = GISTD__REQUEST__BODY_CLOSE, .close = &cl},
    };
    for (int i = 0; i < n; i++) {
        Gistd__Request r = kinds[(first + (uint64_t)i) % 6];
        r.id = first + (uint64_t)i;
        if (td_raw_request(raw, &r)) {
            check_fail_(__FILE__, __LINE__, "send of request %d failed", i);
            return;
        }
    }
    uint8_t *seen = calloc((size_t)n, 1);
    int bad = 0;
    for (int i = 0; seen && i < n; i++) {
        Gistd__Reply *rep = td_raw_recv(raw);
        if (!rep) {
            check_fail_(__FILE__, __LINE__, "reply %d of %d did not come", i, n);
            break;
        }
        const uint64_t k = rep->id - first;
        const bool ok = rep->final && k < (uint64_t)n && !seen[k] && rep->session == GHOST &&
                        rep->body_case == GISTD__REPLY__BODY_ERROR &&
                        rep->error->code == err_wire(ERR_NOTFOUND) &&
                        strstr(rep->error->message, "4242");
        if (!ok && bad++ < 3)
            check_fail_(__FILE__, __LINE__, "reply to %llu: body %d, message \"%s\"",
                        (unsigned long long)rep->id, (int)rep->body_case,
                        rep->body_case == GISTD__REPLY__BODY_ERROR ? rep->error->message : "");
        if (k < (uint64_t)n)
            seen[k] = 1;
        gistd__reply__free_unpacked(rep, NULL);
    }
    free(seen);
}

/*
 * Thousands of pipelined requests for a session that does not exist, of six kinds (generate,
 * append, info, transcript, cancel, close). What is kept: each is answered once with a final
 * NOTFOUND error naming session 4242, nothing else changes (an existing session's transcript
 * is the same token for token, a generation running across the flood gives gist-model's
 * greedy text, no session appears), and memory stays flat: a second flood as large leaves
 * RSS where the first left it.
 */
static void test_unknown_session_flood(void)
{
    char ref[4096];
    const char *model =
        td_tiny_reference("tiny_ghost.gguf", "33", "A bird sat on the", "48", ref, sizeof ref);
    td_daemon_t d;
    gc_client_t *c = td_up(&d, model, NULL);
    if (!c)
        return;
    err_info_t e;
    uint32_t kept, gen;
    gc_usage_t u;
    CHECK_OK(gc_open(c, NULL, &kept, &e));
    CHECK_OK(gc_append(c, kept, "Tom and Sue went to the park.", 0, GC_ROLE_NONE, &u, &e));
    CHECK_OK(gc_open(c, NULL, &gen, &e));
    uint32_t n0 = 0, n1 = 0;
    int32_t *before = td_transcript_ids(c, kept, &n0);

    void *ctx = zmq_ctx_new();
    void *raw = td_raw_open(ctx, d.endpoint);
    gc_gen_opts_t o = {
        .session = gen, .max_tokens = 48, .prompt = "A bird sat on the", .sampling = &td_greedy};
    uint64_t req;
    CHECK_OK(gc_generate_start(c, &o, NULL, &req, &e));
    const int n = 6000;
    ghost_flood(raw, 1, n);
    const long rss1 = td_rss_kib(d.pid);
    ghost_flood(raw, 1 + (uint64_t)n, n);
    const long rss2 = td_rss_kib(d.pid);
    gc_result_t res = {0};
    CHECK_OK(gc_wait(c, req, &res, &e));
    CHECK_MSG(res.text && !strcmp(res.text, ref), "across the flood: \"%s\" vs \"%s\"",
              res.text ? res.text : "(none)", ref);
    gc_result_free(&res);

    int32_t *after = td_transcript_ids(c, kept, &n1);
    CHECK_INT(n1, ==, n0);
    CHECK(before && after && n0 == n1 && !memcmp(before, after, sizeof(int32_t) * n0));
    free(before);
    free(after);
    gc_stats_t st;
    CHECK_OK(gc_stats(c, false, &st, &e));
    CHECK_INT(st.sessions, ==, 2);
    CHECK_INT(st.errors, >=, 2 * (uint64_t)n);
    gc_stats_free(&st);
    fprintf(stderr, "# unknown-session flood: RSS %ld -> %ld KiB\n", rss1, rss2);
    CHECK(rss1 > 0 && rss2 > 0);
    CHECK_MSG(rss2 - rss1 < 2048 || !TD_RSS_CHECKED, "RSS grew %ld KiB over %d more requests",
              rss2 - rss1, n);
    zmq_close(raw);
    zmq_ctx_term(ctx);
    gc_disconnect(&c);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
}

int main(void)
{
    RUN(test_client_killed_mid_stream);
    RUN(test_client_never_reads);
    RUN(test_unknown_session_flood);
    return check_done();
}
