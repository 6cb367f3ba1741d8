/* SIGTERM and SIGKILL against a real gistd with a snapshot folder. SIGTERM in the middle of
 * a long prefill ends the request with CANCELLED, snapshots every session and exits 0, and
 * the restarted daemon holds the whole turn; SIGKILL loses what came after each session's
 * last snapshot, and a restart over a folder with partial and stray files planted in it
 * restores only whole snapshots, logging why it skipped each other file. Restored sessions
 * are checked token by token against their transcripts before the fault, and go on exactly
 * as fresh sessions holding the same tokens. */
#include "tests/test_daemon_util.h"

/* ------------------------------------------------------------------ SIGTERM mid-prefill */

#define LONG_TURN 6000

/*
 * SIGTERM while a long append (6000 tokens, one per step) is being prefilled. The daemon
 * ends the request with a CANCELLED error and exits 0 after snapshotting every session.
 * "Committed" here: a turn the daemon accepted is kept whole. The half-prefilled turn was
 * accepted (tokenized and queued) before the signal, so the shutdown snapshot holds all of
 * it: the tokens already stored as rows, the rest as pending tokens that a restarted daemon
 * prefills before the session's next request. Checked: the reply says so, the restored
 * session holds the first turn and every token of the long one, position by position, some
 * of them still pending, and it goes on exactly as a fresh session holding those tokens.
 */
static void test_sigterm_during_prefill(void)
{
    const char *model = td_tiny_model("tiny_term.gguf", "45");
    const char *dir = td_mkdir("snap_term");
    const char *slow[] = {"--snapshot-dir", dir, "--prefill-chunk", "1", NULL};
    const char *fast[] = {"--snapshot-dir", dir, NULL};
    td_daemon_t d;
    gc_client_t *c = td_up(&d, model, slow);
    if (!c)
        return;
    err_info_t e;
    uint32_t s;
    CHECK_OK(gc_open(c, NULL, &s, &e));
    td_append(c, s, "Tom and Sue went to the park.");
    uint32_t n1 = 0;
    int32_t *ids = td_transcript_ids(c, s, &n1);
    int32_t *all = malloc(sizeof(int32_t) * (n1 + LONG_TURN));
    if (!ids || !all) {
        CHECK(!"transcript");
        free(ids);
        gc_disconnect(&c);
        td_stop(&d, SIGKILL);
        return;
    }
    memcpy(all, ids, sizeof(int32_t) * n1);
    td_long_turn(all + n1, LONG_TURN, 2);

    void *ctx = zmq_ctx_new();
    void *raw = td_raw_open(ctx, d.endpoint);
    Gistd__Append ap = GISTD__APPEND__INIT;
    ap.session = s;
    ap.n_tokens = LONG_TURN;
    ap.tokens = all + n1;
    Gistd__Request r = GISTD__REQUEST__INIT;
    r.id = 77;
    r.body_case = GISTD__REQUEST__BODY_APPEND;
    r.append = &ap;
    CHECK(td_raw_request(raw, &r) == 0);

    /* the prefill is under way: some of the turn stored, most of it pending */
    gc_session_info_t info = {0};
    bool under_way = false;
    for (const double end = td_now() + 20; !under_way && td_now() < end;) {
        if (gc_session_info(c, s, &info, &e))
            break;
        under_way = info.tokens == n1 + LONG_TURN && info.tokens - info.pending > n1 + 16 &&
                    info.pending > LONG_TURN / 2;
        if (!under_way)
            usleep(500);
    }
    CHECK_MSG(under_way, "no prefill under way: %u tokens, %u pending", info.tokens, info.pending);
    gc_disconnect(&c);
    kill(d.pid, SIGTERM);
    Gistd__Reply *rep = td_raw_recv(raw);
    CHECK(rep && rep->final && rep->id == 77 && rep->body_case == GISTD__REPLY__BODY_ERROR);
    if (rep && rep->body_case == GISTD__REPLY__BODY_ERROR) {
        CHECK_INT(rep->error->code, ==, err_wire(ERR_CANCELLED));
        CHECK_MSG(strstr(rep->error->message, "stopping") && strstr(rep->error->message, "keeps"),
                  "message \"%s\"", rep->error->message);
        fprintf(stderr, "# %s\n", rep->error->message);
    }
    if (rep)
        gistd__reply__free_unpacked(rep, NULL);
    zmq_close(raw);
    zmq_ctx_term(ctx);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
    CHECK_INT(td_temp_files(dir), ==, 0);

    if ((c = td_up(&d, model, fast))) {
        CHECK_OK(gc_session_info(c, s, &info, &e));
        CHECK_INT(info.tokens, ==, n1 + LONG_TURN);
        CHECK_MSG(info.pending > 0 && info.pending < LONG_TURN, "%u of %u pending", info.pending,
                  LONG_TURN);
        td_expect_ids(c, s, all, n1 + LONG_TURN, "restored after SIGTERM mid-prefill");
        const uint32_t twin = td_twin_of(c, all, n1 + LONG_TURN);
        td_same_continuation(c, s, twin, "restored after SIGTERM mid-prefill");
        gc_disconnect(&c);
        CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
    }
    free(ids);
    free(all);
}

/* ------------------------------------------------------------------ SIGKILL, restart */

static bool log_has(const char *log, const char *a, const char *b)
{
    for (const char *l = log; l && *l;) {
        const char *end = strchr(l, '\n');
        const size_t n = end ? (size_t)(end - l) : strlen(l);
        char line[1024];
        snprintf(line, sizeof line, "%.*s", (int)(n < sizeof line ? n : sizeof line - 1), l);
        if (strstr(line, a) && (!b || strstr(line, b)))
            return true;
        l = end ? end + 1 : NULL;
    }
    return false;
}

/*
 * SIGKILL, then a restart over the same snapshot folder. Sessions come back as of their last
 * snapshot: A as of its explicit snapshot (its later turn is lost), B as of the clean
 * shutdown before (its later turn is lost), C never snapshotted is gone. Planted beside them
 * before the restart: stray temporary files (removed, with a logged reason), a truncated and
 * a corrupted .gistd (refused with a logged reason: never restored), and B's .kv cut in half
 * (refused with a logged reason: B comes back from the tokens of its whole .gistd and is
 * prefilled again). Each restored session goes on exactly as a fresh one with its tokens.
 */
static void test_sigkill_then_restart(void)
{
    const char *model = td_tiny_model("tiny_kill9.gguf", "47");
    const char *dir = td_mkdir("snap_kill9"), *log = td_tmp_path("kill9.log");
    const char *extra[] = {"--snapshot-dir", dir, NULL};
    td_daemon_t d;
    gc_client_t *c = td_up(&d, model, extra);
    if (!c)
        return;
    err_info_t e;
    uint32_t a, b, cs;
    CHECK_OK(gc_open(c, NULL, &a, &e));
    CHECK_OK(gc_open(c, NULL, &b, &e));
    td_append(c, a, "Alpha one.");
    td_append(c, b, "Bravo one.");
    uint32_t nb = 0, na = 0;
    int32_t *ta = NULL, *tb = td_transcript_ids(c, b, &nb);
    gc_disconnect(&c);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0); /* the clean shutdown snapshots A and B */

    if (!(c = td_up(&d, model, extra)))
        goto done;
    td_expect_ids(c, b, tb, nb, "after a clean shutdown");
    td_append(c, a, " Alpha two.");
    CHECK_OK(gc_snapshot(c, a, NULL, &e));
    ta = td_transcript_ids(c, a, &na);
    td_append(c, a, " Alpha three."); /* after A's last snapshot: lost */
    td_append(c, b, " Bravo two.");   /* after B's last snapshot: lost */
    CHECK_OK(gc_open(c, NULL, &cs, &e));
    td_append(c, cs, "Charlie."); /* never snapshotted: lost */
    gc_disconnect(&c);
    CHECK_INT(td_stop(&d, SIGKILL), ==, -1);

    /* plant partial and stray files */
    char p[700], q[700];
    snprintf(p, sizeof p, "%s/session-90.gistd.tmp", dir);
    CHECK(td_spew(p, "partial", 7) == 0);
    snprintf(p, sizeof p, "%s/session-91.gistd.kv.tmp.Ab12Cd", dir);
    CHECK(td_spew(p, "partial", 7) == 0);
    snprintf(p, sizeof p, "%s/session-92.gistd.kv.next", dir);
    CHECK(td_spew(p, "partial", 7) == 0);
    td_saved_t body;
    td_save(&body, dir, a, "");
    if (body.p) {
        snprintf(q, sizeof q, "%s/session-93.gistd", dir);
        CHECK(td_spew(q, body.p, body.len / 2) == 0); /* cut short */
        body.p[body.len / 2] ^= 0x20;
        snprintf(q, sizeof q, "%s/session-94.gistd", dir);
        CHECK(td_spew(q, body.p, body.len) == 0); /* one byte changed */
    }
    td_saved_t brows;
    td_save(&brows, dir, b, ".kv");
    if (brows.p)
        CHECK(td_spew(brows.path, brows.p, brows.len / 2) == 0);

    const char *verbose[] = {"--snapshot-dir", dir, "--log-level", "warn", NULL};
    const td_opts_t opts = {.log_path = log};
    if (td_start_with(&d, model, verbose, &opts) == 0) {
        c = td_connect(&d);
        gc_session_info_t *list = NULL;
        uint32_t n = 0;
        CHECK_OK(gc_sessions(c, &list, &n, &e));
        CHECK_INT(n, ==, 2);
        for (uint32_t i = 0; list && i < n; i++)
            CHECK_MSG(list[i].id == a || list[i].id == b, "session %u came back", list[i].id);
        free(list);
        td_expect_ids(c, a, ta, na, "A after SIGKILL");
        td_expect_ids(c, b, tb, nb, "B after SIGKILL");
        const uint32_t ta_twin = td_twin_of(c, ta, na), tb_twin = td_twin_of(c, tb, nb);
        td_same_continuation(c, a, ta_twin, "A after SIGKILL");
        td_same_continuation(c, b, tb_twin, "B after SIGKILL");
        gc_disconnect(&c);
        CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
    }
    CHECK_INT(td_temp_files(dir), ==, 0);
    size_t ll = 0;
    char *text = check_slurp(log, &ll);
    const char *t = text;
    CHECK_MSG(t && log_has(text, "session-90.gistd.tmp", "removed") &&
                  log_has(text, "session-91.gistd.kv.tmp", "removed") &&
                  log_has(text, "session-92.gistd.kv.next", "removed"),
              "stray files not logged:\n%s", t ? text : "");
    CHECK_MSG(t && log_has(text, "session-93.gistd", "checksum") &&
                  log_has(text, "session-93.gistd", "not restored") &&
                  log_has(text, "session-94.gistd", "checksum"),
              "corrupt snapshots not logged:\n%s", t ? text : "");
    snprintf(p, sizeof p, "session-%u.gistd.kv", b);
    CHECK_MSG(t && log_has(text, p, "prefilled again"), "B's cut .kv not logged:\n%s",
              t ? text : "");
    free(text);
    free(body.p);
    free(brows.p);
done:
    free(ta);
    free(tb);
}

/*
 * A crash between a snapshot's two renames leaves the new .kv beside the previous .gistd.
 * Here the tokens agree (the session was compacted between the snapshots, nothing appended),
 * so only the checksum the .gistd keeps of its own .kv tells the pair apart: the restarted
 * daemon logs that the .kv is not the .gistd's and prefills the session again from the
 * .gistd's tokens, and the session holds those tokens and goes on as a fresh one would.
 */
static void test_crash_between_renames(void)
{
    const char *model = td_tiny_model("tiny_renames.gguf", "48");
    const char *dir = td_mkdir("snap_renames"), *log = td_tmp_path("renames.log");
    const char *extra[] = {"--snapshot-dir", dir, NULL};
    td_daemon_t d;
    gc_client_t *c = td_up(&d, model, extra);
    if (!c)
        return;
    err_info_t e;
    uint32_t a, n = 0;
    gc_open_opts_t oo = {.policy = "pool"};
    CHECK_OK(gc_open(c, &oo, &a, &e));
    td_append(c, a,
              "One fish. Two fish. Red fish. Blue fish. Old fish. New fish. This one has a "
              "little star. This one has a little car.");
    CHECK_OK(gc_snapshot(c, a, NULL, &e));
    td_saved_t first;
    td_save(&first, dir, a, "");
    int32_t *ta = td_transcript_ids(c, a, &n);
    gc_session_info_t before, after;
    CHECK_OK(gc_session_info(c, a, &before, &e));
    gc_budget_t b;
    CHECK_MSG(gc_set_budget(c, a, before.bytes / 4 * 3, 0, &b, &e) == 0, "%s", e.msg);
    CHECK_OK(gc_session_info(c, a, &after, &e));
    CHECK(after.compactions > before.compactions && after.tokens == before.tokens);
    CHECK_OK(gc_snapshot(c, a, NULL, &e)); /* the new .kv: compacted rows, the same tokens */
    gc_disconnect(&c);
    CHECK_INT(td_stop(&d, SIGKILL), ==, -1);
    if (first.p) /* as if the daemon died after renaming the .kv, before the .gistd */
        CHECK(td_spew(first.path, first.p, first.len) == 0);

    const char *verbose[] = {"--snapshot-dir", dir, "--log-level", "warn", NULL};
    const td_opts_t opts = {.log_path = log};
    if (td_start_with(&d, model, verbose, &opts) == 0) {
        c = td_connect(&d);
        td_expect_ids(c, a, ta, n, "after a crash between the renames");
        gc_session_info_t back;
        CHECK_OK(gc_session_info(c, a, &back, &e));
        CHECK_INT(back.compactions, ==, before.compactions); /* as the .gistd had it */
        CHECK_INT(back.pending, ==, n); /* every token to prefill again, none of the rows */
        const uint32_t twin = td_twin_of(c, ta, n);
        td_same_continuation(c, a, twin, "after a crash between the renames");
        gc_disconnect(&c);
        CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
    }
    size_t ll = 0;
    char *text = check_slurp(log, &ll), kvname[64];
    snprintf(kvname, sizeof kvname, "session-%u.gistd.kv", a);
    CHECK_MSG(text && log_has(text, kvname, "not the one") && log_has(text, kvname, "prefilled"),
              "the mismatched .kv not logged:\n%s", text ? text : "");
    free(text);
    free(first.p);
    free(ta);
}

int main(void)
{
    RUN(test_sigterm_during_prefill);
    RUN(test_sigkill_then_restart);
    RUN(test_crash_between_renames);
    return check_done();
}
