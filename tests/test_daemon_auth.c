/* Access control against a real gistd with real keys (gistd --keygen): CURVE handshakes
 * (allowed, unknown and plain clients), the refusal of a non-loopback listen without keys,
 * session ownership (also across a snapshot and restart), admin keys, the per-client rate
 * limit, sessions per client, and oversized requests. */
#include <sys/stat.h>
#include <time.h>

#include "tests/test_daemon_util.h"

typedef struct key {
    char pub[GC_KEY_LEN], sec[GC_KEY_LEN];
} key_t_;

/* gistd --keygen DIR/name, read back. */
static int make_key(const char *name, key_t_ *k)
{
    char prefix[512], path[600], out[1024];
    snprintf(prefix, sizeof prefix, "%s/%s", check_tmpdir(), name);
    char *argv[] = {(char *)td_bin("gistd"), "--keygen", prefix, NULL};
    if (td_run_all(argv, out, sizeof out) != 0) {
        check_fail_(__FILE__, __LINE__, "gistd --keygen %s: %s", prefix, out);
        return -1;
    }
    err_info_t e;
    snprintf(path, sizeof path, "%s.pub", prefix);
    if (gc_key_read(path, k->pub, &e))
        check_fail_(__FILE__, __LINE__, "%s", err_msg(&e));
    snprintf(path, sizeof path, "%s.key", prefix);
    if (gc_key_read(path, k->sec, &e))
        check_fail_(__FILE__, __LINE__, "%s", err_msg(&e));
    return check_failed() ? -1 : 0;
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

/* The keys every test uses: the daemon's, two clients (a, b), an admin, and one nobody
 * allowed; and the allow list naming a, b and the admin. */
static key_t_ K_srv, K_a, K_b, K_admin, K_stranger;
static char ALLOW[512], SRV_KEY[512];

static int keys_ready(void)
{
    static int state; /* 0: not yet, 1: made, -1: failed */
    if (!zmq_has("curve")) {
        check_skip_missing("this libzmq has no CURVE support (Debian's libzmq5 has it)");
        return -1;
    }
    if (state < 0)
        check_fail_(__FILE__, __LINE__, "the test keys could not be made (see the first test)");
    if (state)
        return state > 0 ? 0 : -1;
    state = -1;
    if (make_key("srv", &K_srv) || make_key("a", &K_a) || make_key("b", &K_b) ||
        make_key("admin", &K_admin) || make_key("stranger", &K_stranger))
        return -1;
    char text[1024];
    snprintf(text, sizeof text,
             "# clients of the test daemon\n\n%s\n%s   # b, with a comment\n%s admin\n", K_a.pub,
             K_b.pub, K_admin.pub);
    snprintf(ALLOW, sizeof ALLOW, "%s", td_tmp_path("allow.txt"));
    snprintf(SRV_KEY, sizeof SRV_KEY, "%s", td_tmp_path("srv.key"));
    write_text(ALLOW, text);
    state = 1;
    return 0;
}

/* Starts a CURVE daemon with the test keys and the extra arguments. */
static int start_curve(td_daemon_t *d, const char *model, const char *const *extra)
{
    const char *args[24] = {"--curve-secret", SRV_KEY, "--allow-keys", ALLOW};
    int n = 4;
    for (int i = 0; extra && extra[i] && n < 23; i++)
        args[n++] = extra[i];
    args[n] = NULL;
    return td_start(d, model, args);
}

static int connect_as(const td_daemon_t *d, const key_t_ *k, gc_client_t **c, err_info_t *e)
{
    gc_connect_opts_t o = {.endpoint = d->endpoint, .timeout_ms = 20000};
    if (k) {
        o.server_key = K_srv.pub;
        o.public_key = k->pub;
        o.secret_key = k->sec;
    }
    err_clear(e);
    return gc_connect_opts(&o, c, e);
}

static gc_client_t *must_connect(const td_daemon_t *d, const key_t_ *k)
{
    gc_client_t *c = NULL;
    err_info_t e;
    if (connect_as(d, k, &c, &e))
        check_fail_(__FILE__, __LINE__, "connect with a key: %s", err_msg(&e));
    return c;
}

#define CHECK_ERR(call, code, needle)                                                              \
    do {                                                                                           \
        err_info_t e_;                                                                             \
        err_clear(&e_);                                                                            \
        int rc_ = (call);                                                                          \
        CHECK_MSG(rc_ == (code) && strstr(err_msg(&e_), needle), "%s: %d \"%s\", want %d \"%s\"",  \
                  #call, rc_, err_msg(&e_), code, needle);                                         \
    } while (0)

/* ------------------------------------------------------------------ keys and handshakes */

static void test_keygen(void)
{
    if (keys_ready())
        return;
    struct stat st;
    CHECK_INT(stat(td_tmp_path("a.key"), &st), ==, 0);
    CHECK_INT(st.st_mode & 0777, ==, 0600);
    CHECK(strcmp(K_a.pub, K_b.pub) != 0);
    /* the public key is the secret key's */
    char pub[41];
    CHECK_INT(zmq_curve_public(pub, K_a.sec), ==, 0);
    CHECK_STR(pub, K_a.pub);
    /* a key is never overwritten */
    char out[1024], prefix[512];
    snprintf(prefix, sizeof prefix, "%s/a", check_tmpdir());
    char *argv[] = {(char *)td_bin("gistd"), "--keygen", prefix, NULL};
    CHECK(td_run_all(argv, out, sizeof out) != 0);
    CHECK_MSG(strstr(out, "never overwritten"), "%s", out);
}

static void test_handshakes(void)
{
    const char *model = td_tiny_model("tiny_auth.gguf", "31");
    if (!model || keys_ready())
        return;
    td_daemon_t d;
    if (start_curve(&d, model, NULL))
        return;
    err_info_t e;
    gc_client_t *c = NULL;
    /* an allowed key works */
    CHECK_OK(connect_as(&d, &K_a, &c, &e));
    uint32_t s = 0;
    gc_gen_opts_t o = {.max_tokens = 4, .prompt = "hi", .sampling = &td_greedy};
    gc_result_t res = {0};
    if (c) {
        CHECK_OK(gc_open(c, NULL, &s, &e));
        o.session = s;
        CHECK_OK(gc_generate(c, &o, NULL, &res, &e));
        CHECK_INT(res.n_tokens, ==, 4);
        gc_result_free(&res);
        gc_stats_t st;
        CHECK_OK(gc_stats(c, false, &st, &e));
        CHECK(st.curve);
        gc_stats_free(&st);
    }
    gc_disconnect(&c);
    /* a key the daemon does not know: a refusal, not a timeout */
    CHECK_INT(connect_as(&d, &K_stranger, &c, &e), ==, ERR_PERM);
    CHECK_MSG(strstr(err_msg(&e), "refused this client's key"), "%s", err_msg(&e));
    CHECK(c == NULL);
    /* a plain client */
    CHECK_INT(connect_as(&d, NULL, &c, &e), ==, ERR_PERM);
    CHECK_MSG(strstr(err_msg(&e), "handshake"), "%s", err_msg(&e));
    /* the right client keys but another server key: CURVE fails before any ZAP request */
    gc_connect_opts_t wrong = {.endpoint = d.endpoint,
                               .timeout_ms = 3000,
                               .server_key = K_b.pub,
                               .public_key = K_a.pub,
                               .secret_key = K_a.sec};
    CHECK(gc_connect_opts(&wrong, &c, &e) != 0);
    gc_disconnect(&c);
    /* and the daemon still serves the allowed key */
    c = must_connect(&d, &K_a);
    if (c) {
        CHECK_OK(gc_generate(c, &o, NULL, &res, &e));
        CHECK_INT(res.n_tokens, ==, 4);
        gc_result_free(&res);
    }
    gc_disconnect(&c);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
}

static void test_startup_refusals(void)
{
    const char *model = td_tiny_model("tiny_auth.gguf", "31");
    if (!model || keys_ready())
        return;
    char out[4096];
    /* a listen beyond loopback without keys: refused before serving, saying what to give */
    char *plain[] = {(char *)td_bin("gistd"), "--model", (char *)model, "--listen",
                     "tcp://0.0.0.0:0",       NULL};
    CHECK_INT(td_run_all(plain, out, sizeof out), ==, 2);
    CHECK_MSG(strstr(out, "--curve-secret") && strstr(out, "--allow-keys") &&
                  strstr(out, "--insecure") && strstr(out, "tcp://0.0.0.0:0"),
              "%s", out);
    CHECK_MSG(strncmp(out, "tcp://", 6) != 0, "it printed an endpoint: %s", out);
    /* only one of the two files */
    char *half[] = {(char *)td_bin("gistd"), "--model", (char *)model,
                    "--curve-secret",        SRV_KEY,   NULL};
    CHECK_INT(td_run_all(half, out, sizeof out), ==, 2);
    CHECK_MSG(strstr(out, "go together"), "%s", out);
    /* a malformed allow list names its file and line */
    const char *bad = td_tmp_path("allow_bad.txt");
    char text[512];
    snprintf(text, sizeof text, "# ok\n%s admin\n%s root\n", K_a.pub, K_b.pub);
    write_text(bad, text);
    char *badl[] = {
        (char *)td_bin("gistd"), "--model", (char *)model,  "--listen",  "tcp://127.0.0.1:*",
        "--curve-secret",        SRV_KEY,   "--allow-keys", (char *)bad, NULL};
    CHECK(td_run_all(badl, out, sizeof out) != 0);
    char want[600];
    snprintf(want, sizeof want, "%s:3:", bad);
    CHECK_MSG(strstr(out, want), "\"%s\" lacks \"%s\"", out, want);
    snprintf(text, sizeof text, "%.39s\n", K_a.pub); /* a key one character short */
    write_text(bad, text);
    CHECK(td_run_all(badl, out, sizeof out) != 0);
    snprintf(want, sizeof want, "%s:1:", bad);
    CHECK_MSG(strstr(out, want), "\"%s\" lacks \"%s\"", out, want);

    /* with --insecure it serves */
    td_daemon_t d;
    const char *extra[] = {"--listen", "tcp://0.0.0.0:*", "--insecure", NULL};
    if (td_start(&d, model, extra))
        return;
    const char *port = strrchr(d.endpoint, ':');
    char ep[128];
    snprintf(ep, sizeof ep, "tcp://127.0.0.1%s", port ? port : ":0");
    gc_client_t *c = NULL;
    err_info_t e;
    CHECK_OK(gc_connect(ep, 20000, &c, &e));
    gc_disconnect(&c);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
}

/* ------------------------------------------------------------------ ownership */

static bool listed(gc_session_info_t *list, uint32_t n, uint32_t id)
{
    for (uint32_t i = 0; i < n; i++)
        if (list[i].id == id)
            return true;
    return false;
}

static void test_ownership(void)
{
    const char *model = td_tiny_model("tiny_auth.gguf", "31");
    char ref[4096];
    if (!model || keys_ready())
        return;
    if (td_reference(model, "Once upon a time", "20", ref, sizeof ref)) {
        CHECK(!"reference");
        return;
    }
    const char *snapdir = td_tmp_path("snaps_own");
    mkdir(snapdir, 0700);
    td_daemon_t d;
    const char *extra[] = {"--snapshot-dir", snapdir, NULL};
    if (start_curve(&d, model, extra))
        return;
    gc_client_t *a = must_connect(&d, &K_a), *b = must_connect(&d, &K_b);
    if (!a || !b)
        goto out;
    err_info_t e;
    uint32_t s, sb;
    gc_usage_t u;
    gc_open_opts_t full = {.policy = "full"};
    CHECK_OK(gc_open(a, &full, &s, &e));
    CHECK_OK(gc_append(a, s, "Once upon a time", 0, GC_ROLE_NONE, &u, &e));
    gc_gen_opts_t o = {.session = s, .max_tokens = 8, .sampling = &td_greedy};
    gc_result_t r1 = {0}, r2 = {0};
    CHECK_OK(gc_generate(a, &o, NULL, &r1, &e));
    gc_session_info_t before, after;
    CHECK_OK(gc_session_info(a, s, &before, &e));

    /* b: every use of a's session is refused, with the reason */
    const char *why = "belongs to another client";
    gc_gen_opts_t ob = o;
    CHECK_ERR(gc_generate(b, &ob, NULL, NULL, &e_), ERR_PERM, why);
    CHECK_ERR(gc_append(b, s, "evil", 0, GC_ROLE_NONE, NULL, &e_), ERR_PERM, why);
    float *lp = NULL;
    int32_t *tk = NULL;
    size_t n = 0;
    double total;
    CHECK_ERR(gc_score(b, s, "evil", NULL, 0, &lp, &tk, &n, &total, &e_), ERR_PERM, why);
    char *text = NULL;
    CHECK_ERR(gc_transcript(b, s, 0, 0, &text, NULL, NULL, NULL, NULL, &e_), ERR_PERM, why);
    gc_session_info_t info;
    CHECK_ERR(gc_session_info(b, s, &info, &e_), ERR_PERM, why);
    CHECK_ERR(gc_compact(b, s, 0, 1, false, NULL, &e_), ERR_PERM, why);
    CHECK_ERR(gc_cancel(b, s, &e_), ERR_PERM, why);
    CHECK_ERR(gc_snapshot(b, s, NULL, &e_), ERR_PERM, why);
    CHECK_ERR(gc_restore(b, s, &e_), ERR_PERM, why);
    CHECK_ERR(gc_close(b, s, &e_), ERR_PERM, why);
    /* budgets and snapshots of everything are for admins */
    CHECK_ERR(gc_set_budget(b, s, 1 << 20, 0, NULL, &e_), ERR_PERM, "admin");
    CHECK_ERR(gc_set_budget(a, s, 1 << 20, 0, NULL, &e_), ERR_PERM, "admin");
    CHECK_ERR(gc_set_budget(b, 0, 64 << 20, 0, NULL, &e_), ERR_PERM, "admin");
    CHECK_ERR(gc_snapshot(b, 0, NULL, &e_), ERR_PERM, "admin");
    /* b does not see a's session; a does */
    CHECK_OK(gc_open(b, &full, &sb, &e));
    gc_session_info_t *list = NULL;
    uint32_t nl = 0;
    CHECK_OK(gc_sessions(b, &list, &nl, &e));
    CHECK_INT(nl, ==, 1);
    CHECK(!listed(list, nl, s) && listed(list, nl, sb));
    free(list);
    gc_stats_t st;
    CHECK_OK(gc_stats(b, true, &st, &e));
    CHECK(!listed(st.session_list, st.n_session_list, s));
    CHECK_INT(st.permission_refusals, >=, 14);
    gc_stats_free(&st);
    CHECK_OK(gc_sessions(a, &list, &nl, &e));
    CHECK(listed(list, nl, s) && !listed(list, nl, sb));
    free(list);

    /* a's session is as it was: same figures, and it goes on as the reference */
    CHECK_OK(gc_session_info(a, s, &after, &e));
    CHECK_INT(after.tokens, ==, before.tokens);
    CHECK_INT(after.bytes, ==, before.bytes);
    CHECK_STR(after.state, "idle");
    o.max_tokens = 12;
    CHECK_OK(gc_generate(a, &o, NULL, &r2, &e));
    char both[8192];
    snprintf(both, sizeof both, "%s%s", r1.text ? r1.text : "", r2.text ? r2.text : "");
    CHECK_MSG(!strcmp(both, ref), "8 + 12 tokens \"%s\" vs 20 tokens \"%s\"", both, ref);
    gc_result_free(&r1);
    gc_result_free(&r2);

    /* an admin sees both sessions and sets the budget */
    gc_client_t *adm = must_connect(&d, &K_admin);
    if (adm) {
        CHECK_OK(gc_sessions(adm, &list, &nl, &e));
        CHECK(listed(list, nl, s) && listed(list, nl, sb));
        free(list);
        gc_budget_t bud;
        CHECK_OK(gc_set_budget(adm, 0, 256 << 20, 0, &bud, &e));
        CHECK_INT(bud.hard_bytes, ==, 256 << 20);
        CHECK_OK(gc_set_budget(adm, s, 16 << 20, 0, &bud, &e));
        CHECK_OK(gc_stats(adm, false, &st, &e));
        CHECK_INT(st.kv_budget_bytes, ==, 256 << 20);
        gc_stats_free(&st);
    }
    gc_disconnect(&adm);
    gc_disconnect(&a);
    gc_disconnect(&b);
    /* a restart from the snapshots keeps the owners */
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
    if (start_curve(&d, model, extra))
        return;
    a = must_connect(&d, &K_a);
    b = must_connect(&d, &K_b);
    if (!a || !b)
        goto out;
    CHECK_ERR(gc_session_info(b, s, &info, &e_), ERR_PERM, why);
    CHECK_ERR(gc_close(b, s, &e_), ERR_PERM, why);
    CHECK_OK(gc_session_info(b, sb, &info, &e));
    CHECK_OK(gc_session_info(a, s, &info, &e));
    CHECK_INT(info.tokens, ==, after.tokens + 12);
    CHECK_OK(gc_sessions(b, &list, &nl, &e));
    CHECK(nl == 1 && listed(list, nl, sb));
    free(list);
    CHECK_ERR(gc_restore(b, s, &e_), ERR_PERM, why);
    CHECK_OK(gc_snapshot(a, s, NULL, &e));
out:
    gc_disconnect(&a);
    gc_disconnect(&b);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
}

/* What a key learns of sessions it does not own: stats count only the sessions it may use;
 * a restore of another key's snapshot is answered exactly like a restore of none, without a
 * path and without a refusal counted; an admin key manages every session but reads and
 * writes no one's text. */
static void test_what_others_learn(void)
{
    const char *model = td_tiny_model("tiny_auth.gguf", "31");
    if (!model || keys_ready())
        return;
    const char *snapdir = td_tmp_path("snaps_priv");
    mkdir(snapdir, 0700);
    td_daemon_t d;
    const char *extra[] = {"--snapshot-dir", snapdir, NULL};
    if (start_curve(&d, model, extra))
        return;
    gc_client_t *a = must_connect(&d, &K_a), *b = must_connect(&d, &K_b),
                *adm = must_connect(&d, &K_admin);
    err_info_t e;
    uint32_t s, sb;
    gc_stats_t st;
    gc_usage_t u;
    if (!a || !b || !adm)
        goto out;
    gc_open_opts_t full = {.policy = "full"};
    CHECK_OK(gc_open(a, &full, &s, &e));
    CHECK_OK(gc_append(a, s, "Once upon a time", 0, GC_ROLE_NONE, &u, &e));
    CHECK_OK(gc_open(b, &full, &sb, &e));
    gc_client_t *who[] = {a, b, adm};
    const uint32_t sees[] = {1, 1, 2};
    for (int i = 0; i < 3; i++) {
        CHECK_OK(gc_stats(who[i], false, &st, &e));
        CHECK_MSG(st.sessions == sees[i], "client %d sees %u sessions, may use %u", i,
                  st.sessions, sees[i]);
        gc_stats_free(&st);
    }

    /* the admin: figures and budgets, not text */
    const char *why = "owner's alone";
    gc_session_info_t info;
    CHECK_OK(gc_session_info(adm, s, &info, &e));
    CHECK_OK(gc_set_budget(adm, s, 4 << 20, 0, NULL, &e));
    char *text = NULL;
    CHECK_ERR(gc_transcript(adm, s, 0, 0, &text, NULL, NULL, NULL, NULL, &e_), ERR_PERM, why);
    CHECK_ERR(gc_append(adm, s, "evil", 0, GC_ROLE_NONE, NULL, &e_), ERR_PERM, why);
    gc_gen_opts_t go = {.session = s, .max_tokens = 2, .sampling = &td_greedy};
    CHECK_ERR(gc_generate(adm, &go, NULL, NULL, &e_), ERR_PERM, why);
    float *lp = NULL;
    int32_t *tk = NULL;
    size_t n = 0;
    double total;
    CHECK_ERR(gc_score(adm, s, "evil", NULL, 0, &lp, &tk, &n, &total, &e_), ERR_PERM, why);
    CHECK_OK(gc_transcript(a, s, 0, 0, &text, NULL, NULL, NULL, NULL, &e));
    CHECK_MSG(text && strstr(text, "Once upon a time"), "%s", text ? text : "(none)");
    free(text);

    /* a's snapshot on disk, its session closed: b restoring it and b restoring a session that
     * never existed get the same answer */
    td_saved_t body, rows;
    CHECK_OK(gc_snapshot(a, s, NULL, &e));
    td_save(&body, snapdir, s, "");
    td_save(&rows, snapdir, s, ".kv");
    CHECK_OK(gc_close(a, s, &e));
    CHECK(td_spew(body.path, body.p, body.len) == 0 && td_spew(rows.path, rows.p, rows.len) == 0);
    CHECK_OK(gc_stats(b, false, &st, &e));
    const uint64_t refused = st.permission_refusals;
    gc_stats_free(&st);
    const uint32_t ids[] = {s, 4242};
    for (int i = 0; i < 2; i++) {
        err_clear(&e);
        CHECK_INT(gc_restore(b, ids[i], &e), ==, ERR_NOTFOUND);
        char want[128];
        snprintf(want, sizeof want, "no snapshot of session %u that this client may restore",
                 ids[i]);
        CHECK_MSG(!strcmp(err_msg(&e), want), "restore %u: \"%s\"", ids[i], err_msg(&e));
        CHECK_MSG(!strchr(err_msg(&e), '/'), "a path in \"%s\"", err_msg(&e));
    }
    CHECK_OK(gc_stats(b, false, &st, &e));
    CHECK_INT(st.permission_refusals, ==, refused);
    CHECK_INT(st.sessions, ==, 1);
    gc_stats_free(&st);
    CHECK(td_unchanged(&body, body.path)); /* b's attempt left a's file as it was */
    /* its owner restores it */
    CHECK_OK(gc_restore(a, s, &e));
    CHECK_OK(gc_session_info(a, s, &info, &e));
    CHECK_INT(info.tokens, ==, u.prompt_tokens);
    free(body.p);
    free(rows.p);
out:
    gc_disconnect(&a);
    gc_disconnect(&b);
    gc_disconnect(&adm);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
}

/* ------------------------------------------------------------------ limits */

static void test_rate_limit(void)
{
    const char *model = td_tiny_model("tiny_auth.gguf", "31");
    if (!model || keys_ready())
        return;
    const double rate = 20, burst = 10;
    td_daemon_t d;
    const char *extra[] = {"--rate-limit", "20", "--rate-burst", "10", NULL};
    if (start_curve(&d, model, extra))
        return;
    gc_client_t *a = must_connect(&d, &K_a), *b = must_connect(&d, &K_b);
    err_info_t e;
    gc_stats_t st;
    if (!a || !b)
        goto out;
    /* requests back to back: the burst passes, then the bucket runs dry. The bucket holds at
     * most `burst` tokens when the loop starts and gains `rate` a second while it runs. */
    int ok = 0, limited = 0;
    char msg[320] = "";
    const double loop_start = td_now();
    for (int i = 0; i < 5000 && !limited; i++) {
        err_clear(&e);
        int rc = gc_stats(a, false, &st, &e);
        if (rc == 0) {
            ok++;
            gc_stats_free(&st);
        } else {
            CHECK_INT(rc, ==, ERR_RATE);
            snprintf(msg, sizeof msg, "%s", err_msg(&e));
            limited++;
            if (rc != ERR_RATE)
                break;
        }
    }
    const double loop_s = td_now() - loop_start;
    CHECK_INT(limited, ==, 1);
    CHECK_MSG(ok >= burst - 1 && ok <= burst + (int)(rate * loop_s) + 1,
              "%d requests passed in %.3f s before the first refusal (burst %g, rate %g/s)", ok,
              loop_s, burst, rate);
    CHECK_MSG(strstr(msg, "rate limited") && strstr(msg, "retry in"), "%s", msg);
    /* another client has its own bucket, and the daemon serves it */
    CHECK_OK(gc_stats(b, false, &st, &e));
    CHECK_INT(st.rate_refusals, >=, 1);
    gc_stats_free(&st);
    /* a token comes back every 1/rate seconds: poll at that pace until one is there */
    const double t0 = td_now();
    int rc = ERR_RATE;
    while (rc == ERR_RATE && td_now() - t0 < 10.0) {
        struct timespec ts = {0, (long)(1e9 / rate)};
        nanosleep(&ts, NULL);
        rc = gc_stats(a, false, &st, &e);
        if (!rc)
            gc_stats_free(&st);
    }
    CHECK_OK(rc);
    CHECK_MSG(td_now() - t0 < 5.0, "the bucket took %.1f s to give a token back", td_now() - t0);
out:
    gc_disconnect(&a);
    gc_disconnect(&b);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
}

static void test_client_sessions(void)
{
    const char *model = td_tiny_model("tiny_auth.gguf", "31");
    if (!model || keys_ready())
        return;
    td_daemon_t d;
    const char *extra[] = {"--max-client-sessions", "2", NULL};
    if (start_curve(&d, model, extra))
        return;
    gc_client_t *a = must_connect(&d, &K_a), *b = must_connect(&d, &K_b);
    err_info_t e;
    uint32_t s1, s2, s3;
    if (!a || !b)
        goto out;
    CHECK_OK(gc_open(a, NULL, &s1, &e));
    CHECK_OK(gc_open(a, NULL, &s2, &e));
    CHECK_ERR(gc_open(a, NULL, &s3, &e_), ERR_LIMIT, "max-client-sessions");
    /* another key still opens */
    CHECK_OK(gc_open(b, NULL, &s3, &e));
    /* a connection of its own does not make a another client */
    gc_client_t *a2 = must_connect(&d, &K_a);
    if (a2)
        CHECK_ERR(gc_open(a2, NULL, &s3, &e_), ERR_LIMIT, "max-client-sessions");
    gc_disconnect(&a2);
    /* closing one makes room */
    CHECK_OK(gc_close(a, s1, &e));
    CHECK_OK(gc_open(a, NULL, &s3, &e));
out:
    gc_disconnect(&a);
    gc_disconnect(&b);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
}

/* A raw CURVE DEALER with key k, and a monitor for its disconnections. */
static void *raw_curve(void *ctx, const char *ep, const key_t_ *k, void **mon)
{
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int zero = 0, tmo = 20000;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
    zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, K_srv.pub, 40);
    zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, k->pub, 40);
    zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, k->sec, 40);
    zmq_socket_monitor(s, "inproc://auth-test-mon", ZMQ_EVENT_DISCONNECTED);
    *mon = zmq_socket(ctx, ZMQ_PAIR);
    zmq_setsockopt(*mon, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
    zmq_connect(*mon, "inproc://auth-test-mon");
    zmq_connect(s, ep);
    return s;
}

static void send_append(void *s, uint64_t id, size_t text_len)
{
    char *big = malloc(text_len);
    memset(big, 'a', text_len);
    Gistd__Append ap = GISTD__APPEND__INIT;
    ap.session = 1;
    ap.text.data = (uint8_t *)big;
    ap.text.len = text_len;
    Gistd__Request r = GISTD__REQUEST__INIT;
    r.id = id;
    r.body_case = GISTD__REQUEST__BODY_APPEND;
    r.append = &ap;
    td_raw_request(s, &r);
    free(big);
}

static void test_oversized(void)
{
    const char *model = td_tiny_model("tiny_auth.gguf", "31");
    if (!model || keys_ready())
        return;
    td_daemon_t d;
    const char *extra[] = {"--max-request", "4096", NULL};
    if (start_curve(&d, model, extra))
        return;
    gc_client_t *a = must_connect(&d, &K_a);
    err_info_t e;
    uint32_t s;
    if (!a)
        goto out;
    CHECK_OK(gc_open(a, NULL, &s, &e));
    /* libgistc knows the limit from the handshake and refuses before sending */
    static char text[10000];
    memset(text, 'x', sizeof text - 1);
    CHECK_ERR(gc_append(a, s, text, 0, GC_ROLE_NONE, NULL, &e_), ERR_TOOBIG, "limit of 4096");
    /* sent anyway: an error reply that names the request */
    void *ctx = zmq_ctx_new(), *mon = NULL;
    void *raw = raw_curve(ctx, d.endpoint, &K_b, &mon);
    send_append(raw, 42, 10000);
    uint8_t buf[65536];
    int n = zmq_recv(raw, buf, sizeof buf, 0);
    CHECK_INT(n, ==, 0);
    n = zmq_recv(raw, buf, sizeof buf, 0);
    Gistd__Reply *r = n > 0 ? gistd__reply__unpack(NULL, (size_t)n, buf) : NULL;
    CHECK(r && r->id == 42 && r->body_case == GISTD__REPLY__BODY_ERROR);
    if (r && r->body_case == GISTD__REPLY__BODY_ERROR) {
        CHECK_INT(r->error->code, ==, err_wire(ERR_TOOBIG));
        CHECK_MSG(strstr(r->error->message, "larger than the limit of 4096"), "%s",
                  r->error->message);
    }
    if (r)
        gistd__reply__free_unpacked(r, NULL);
    /* beyond the hard cap (4 times the limit): that connection is dropped */
    send_append(raw, 43, 40000);
    uint8_t ev[6] = {0};
    CHECK_INT(zmq_recv(mon, ev, sizeof ev, 0), ==, 6);
    uint16_t evn;
    memcpy(&evn, ev, 2);
    CHECK_INT(evn, ==, ZMQ_EVENT_DISCONNECTED);
    zmq_socket_monitor(raw, NULL, 0);
    zmq_close(mon);
    zmq_close(raw);
    zmq_ctx_term(ctx);
    /* and everyone else is still served */
    gc_gen_opts_t o = {.session = s, .max_tokens = 3, .prompt = "hi", .sampling = &td_greedy};
    gc_result_t res = {0};
    CHECK_OK(gc_generate(a, &o, NULL, &res, &e));
    CHECK_INT(res.n_tokens, ==, 3);
    gc_result_free(&res);
out:
    gc_disconnect(&a);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
}

/*
 * SIGHUP reloads the allow list. A daemon started with a list naming only A; the list is
 * rewritten to name only the stranger and SIGHUP sent: the stranger then connects (polled
 * until the reload has happened, with a deadline), A's open connection is refused from then
 * on with a clear error, and A cannot connect again. A list that does not load (a malformed
 * line) is logged and leaves the list as it was: the stranger still works.
 */
static void test_reload_allow_list(void)
{
    const char *model = td_tiny_model("tiny_auth.gguf", "31");
    if (!model || keys_ready())
        return;
    const char *list = td_tmp_path("allow_reload.txt");
    char text[256];
    snprintf(text, sizeof text, "%s\n", K_a.pub);
    write_text(list, text);
    const char *args[] = {"--curve-secret", SRV_KEY, "--allow-keys", list, NULL};
    const td_opts_t opts = {.log_path = td_tmp_path("reload.log")};
    td_daemon_t d;
    if (td_start_with(&d, model, args, &opts))
        return;
    err_info_t e;
    uint32_t s = 0;
    gc_client_t *a = must_connect(&d, &K_a), *x = NULL;
    if (!a)
        goto out;
    CHECK_OK(gc_open(a, NULL, &s, &e));
    CHECK_INT(connect_as(&d, &K_stranger, &x, &e), ==, ERR_PERM);

    snprintf(text, sizeof text, "# a replaced by the stranger\n%s\n", K_stranger.pub);
    write_text(list, text);
    CHECK_INT(kill(d.pid, SIGHUP), ==, 0);
    const double deadline = td_now() + 20;
    int rc;
    while ((rc = connect_as(&d, &K_stranger, &x, &e)) == ERR_PERM && td_now() < deadline)
        ;
    CHECK_MSG(rc == 0, "the stranger after the reload: %s", err_msg(&e));
    gc_session_info_t info;
    CHECK_ERR(gc_session_info(a, s, &info, &e_), ERR_PERM, "taken off");
    gc_disconnect(&a);
    CHECK_INT(connect_as(&d, &K_a, &a, &e), ==, ERR_PERM);

    /* a list that does not load leaves the one in force */
    write_text(list, "not-a-key\n");
    CHECK_INT(kill(d.pid, SIGHUP), ==, 0);
    bool logged = false; /* the reload has been tried once the daemon says so */
    for (const double end = td_now() + 20; !logged && td_now() < end;) {
        size_t n_log = 0;
        char *log = check_slurp(opts.log_path, &n_log);
        logged = log && strstr(log, "not a CURVE public key") && strstr(log, "previous list stays");
        free(log);
    }
    CHECK_MSG(logged, "the failed reload is not in %s", opts.log_path);
    gc_disconnect(&x);
    CHECK_OK(connect_as(&d, &K_stranger, &x, &e));
    uint32_t s2 = 0;
    if (x)
        CHECK_OK(gc_open(x, NULL, &s2, &e));
out:
    gc_disconnect(&a);
    gc_disconnect(&x);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
}

int main(void)
{
    RUN(test_keygen);
    RUN(test_handshakes);
    RUN(test_startup_refusals);
    RUN(test_ownership);
    RUN(test_what_others_learn);
    RUN(test_rate_limit);
    RUN(test_client_sessions);
    RUN(test_oversized);
    RUN(test_reload_allow_list);
    return check_done();
}
