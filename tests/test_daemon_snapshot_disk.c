/* Faults around snapshot files against a real gistd: a snapshot folder that becomes
 * unwritable (renamed away with a regular file in its place; a tmpfs remounted read-only
 * where mounting works) and a full disk (a file-size limit; a small tmpfs), also filling
 * between the two files of one snapshot (a tmpfs, and a file-size limit where mounting does
 * not work). Each test states what is kept and checks it: the
 * error names the path and the reason, the previous snapshot is byte for byte as it was, no
 * temporary file is left, the session serves on, and a restarted daemon restores the last
 * whole snapshot, going on exactly as a fresh session holding the same tokens.
 * SIGTERM and SIGKILL with restarts are in test_daemon_kill_restart.c. */
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include "tests/test_daemon_util.h"

/* ------------------------------------------------------------------ helpers */

/* Opens a session holding text and snapshots it (checked: one session snapshotted), and saves
 * the snapshot's body (.gistd) and rows (.kv). The session's id. */
static uint32_t open_snapshotted(gc_client_t *c, const char *dir, const char *text,
                                 td_saved_t *body, td_saved_t *rows)
{
    err_info_t e;
    uint32_t s = 0, n_done = 0;
    CHECK_OK(gc_open(c, NULL, &s, &e));
    td_append(c, s, text);
    CHECK_OK(gc_snapshot(c, s, &n_done, &e));
    CHECK_INT(n_done, ==, 1);
    td_save(body, dir, s, "");
    td_save(rows, dir, s, ".kv");
    return s;
}

/* A snapshot of s that must fail with ERR_IO; its message must name every needle. */
static void snapshot_fails(gc_client_t *c, uint32_t s, const char *const *needles)
{
    err_info_t e;
    err_clear(&e);
    int rc = gc_snapshot(c, s, NULL, &e);
    CHECK_INT(rc, ==, ERR_IO);
    fprintf(stderr, "# snapshot of session %u: %s\n", s, err_msg(&e));
    for (int i = 0; needles[i]; i++)
        CHECK_MSG(strstr(err_msg(&e), needles[i]), "\"%s\" does not name \"%s\"", err_msg(&e),
                  needles[i]);
}

/* ------------------------------------------------------------------ an unwritable folder */

/*
 * The snapshot folder is renamed away and a regular file put in its place (the tests run as
 * root, so permissions would not stop a write). What is kept: the snapshot request fails
 * with ERR_IO naming the path and the reason (ENOTDIR), and writes nothing anywhere; the
 * session is intact in memory and keeps serving (it goes on exactly as a fresh session with
 * its tokens); the previous snapshot files, moved away with the folder, are byte for byte
 * as they were; once the folder is back a snapshot succeeds, and a restarted daemon restores
 * the session as that snapshot holds it.
 */
static void test_snapshot_dir_replaced_by_file(void)
{
    const char *model = td_tiny_model("tiny_unw.gguf", "41");
    const char *dir = td_mkdir("snap_unw");
    char away[600];
    snprintf(away, sizeof away, "%s.away", dir);
    const char *extra[] = {"--snapshot-dir", dir, NULL};
    td_daemon_t d;
    gc_client_t *c = td_up(&d, model, extra);
    if (!c)
        return;
    err_info_t e;
    uint32_t n_done = 0;
    td_saved_t body, rows;
    const uint32_t s = open_snapshotted(c, dir, "Once upon a time there was a dog.", &body, &rows);

    CHECK(rename(dir, away) == 0);
    CHECK(td_spew(dir, "not a folder\n", 13) == 0);
    td_append(c, s, " It ran to the park.");
    snapshot_fails(c, s, (const char *[]){dir, "Not a directory", "ENOTDIR", NULL});
    snapshot_fails(c, 0, (const char *[]){dir, "ENOTDIR", NULL}); /* every session */

    /* in memory: whole and serving */
    uint32_t n = 0;
    int32_t *ids = td_transcript_ids(c, s, &n);
    const uint32_t twin = td_twin_of(c, ids, n);
    td_same_continuation(c, s, twin, "after a failed snapshot");
    free(ids);
    ids = td_transcript_ids(c, s, &n);

    /* the previous files are as they were, and nothing was left beside them */
    char p[700];
    snprintf(p, sizeof p, "%s/session-%u.gistd", away, s);
    CHECK_MSG(td_unchanged(&body, p), "%s changed", p);
    snprintf(p, sizeof p, "%s/session-%u.gistd.kv", away, s);
    CHECK_MSG(td_unchanged(&rows, p), "%s changed", p);
    CHECK_INT(td_temp_files(away), ==, 0);
    size_t flen;
    char *fb = check_slurp(dir, &flen);
    CHECK(fb && flen == 13 && !memcmp(fb, "not a folder\n", 13));
    free(fb);

    /* the folder comes back: a snapshot succeeds and holds the session as it is now */
    CHECK(unlink(dir) == 0 && rename(away, dir) == 0);
    CHECK_OK(gc_snapshot(c, s, &n_done, &e));
    CHECK(!td_unchanged(&body, body.path));
    CHECK_INT(td_temp_files(dir), ==, 0);
    CHECK_OK(gc_close(c, twin, &e));
    gc_disconnect(&c);
    td_stop(&d, SIGKILL); /* no shutdown snapshot: what comes back is the explicit one */
    if ((c = td_up(&d, model, extra))) {
        td_expect_ids(c, s, ids, n, "restored after the folder came back");
        gc_disconnect(&c);
        CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
    }
    free(ids);
    free(body.p);
    free(rows.p);
}

/*
 * The same with a read-only mount (a tmpfs remounted read-only) where this system lets the
 * test mount one: the snapshot fails naming EROFS and the path, the session serves on, the
 * previous files are untouched, and after a remount read-write a snapshot succeeds.
 */
static void test_snapshot_dir_read_only_mount(void)
{
    const char *model = td_tiny_model("tiny_ro.gguf", "42");
    const char *dir = td_mkdir("snap_ro");
    if (!model)
        return;
    if (mount("tmpfs", dir, "tmpfs", 0, "size=1m") < 0) {
        check_skip("cannot mount a tmpfs here (%s); test_snapshot_dir_replaced_by_file covers "
                   "an unwritable folder",
                   strerror(errno));
        return;
    }
    const char *extra[] = {"--snapshot-dir", dir, NULL};
    td_daemon_t d;
    gc_client_t *c = td_up(&d, model, extra);
    if (!c) {
        umount2(dir, MNT_DETACH);
        return;
    }
    err_info_t e;
    td_saved_t body, rows;
    const uint32_t s = open_snapshotted(c, dir, "The little dog ran.", &body, &rows);
    if (mount(NULL, dir, NULL, MS_REMOUNT | MS_RDONLY, NULL) < 0) {
        check_skip("cannot remount %s read-only: %s", dir, strerror(errno));
    } else {
        td_append(c, s, " It was happy.");
        snapshot_fails(c, s, (const char *[]){dir, "Read-only file system", "EROFS", NULL});
        uint32_t n = 0;
        int32_t *ids = td_transcript_ids(c, s, &n);
        const uint32_t twin = td_twin_of(c, ids, n);
        td_same_continuation(c, s, twin, "after a read-only folder");
        free(ids);
        CHECK(td_unchanged(&body, body.path));
        CHECK(td_unchanged(&rows, rows.path));
        CHECK_INT(mount(NULL, dir, NULL, MS_REMOUNT, NULL), ==, 0);
        CHECK_OK(gc_snapshot(c, s, NULL, &e));
        CHECK(!td_unchanged(&body, body.path));
        CHECK_INT(td_temp_files(dir), ==, 0);
    }
    gc_disconnect(&c);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
    umount2(dir, MNT_DETACH);
    free(body.p);
    free(rows.p);
}

/* ------------------------------------------------------------------ a full disk */

/*
 * A full disk during a snapshot, made two ways: a file-size limit on the daemon (RLIMIT_FSIZE
 * set before exec; gistd ignores SIGXFSZ, so the write fails with EFBIG) and, where the test
 * may mount one, a 96 KiB tmpfs (ENOSPC). What is kept: the first snapshot (small) is whole;
 * the second (too big) fails with ERR_IO naming the path and EFBIG or ENOSPC, and leaves no
 * temporary file; the first snapshot's files are byte for byte as they were; the session
 * serves on; and a restarted daemon restores the session as the first snapshot holds it
 * (what came after it is lost), going on exactly as a fresh session with those tokens.
 */
static void full_disk(const char *model, const char *dir, long fsize, const char *reason,
                      const char *name)
{
    const char *extra[] = {"--snapshot-dir", dir, NULL};
    char log[600];
    snprintf(log, sizeof log, "%s.log", dir);
    const td_opts_t opts = {.fsize_limit = fsize, .log_path = log};
    td_daemon_t d;
    if (td_start_with(&d, model, extra, &opts))
        return;
    gc_client_t *c = td_connect(&d);
    err_info_t e;
    td_saved_t body, rows;
    const uint32_t s = open_snapshotted(c, dir, "Once upon a time.", &body, &rows);
    uint32_t n1 = 0;
    int32_t *ids1 = td_transcript_ids(c, s, &n1);

    static int32_t big[600];
    td_long_turn(big, 600, 1);
    gc_usage_t u;
    CHECK_OK(gc_append_tokens(c, s, big, 600, &u, &e));
    snapshot_fails(c, s, (const char *[]){dir, reason, name, NULL});
    CHECK_INT(td_temp_files(dir), ==, 0);
    CHECK(td_unchanged(&body, body.path));
    CHECK(td_unchanged(&rows, rows.path));
    /* serving on */
    gc_gen_opts_t o = {.session = s, .max_tokens = 4, .sampling = &td_greedy};
    gc_result_t r = {0};
    CHECK_OK(gc_generate(c, &o, NULL, &r, &e));
    CHECK_INT(r.n_tokens, ==, 4);
    gc_result_free(&r);
    gc_disconnect(&c);
    /* the shutdown snapshot fails the same way (logged); the daemon still exits cleanly */
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
    size_t ll;
    char *text = check_slurp(log, &ll);
    CHECK_MSG(text && strstr(text, "snapshot of session") && strstr(text, name),
              "the failed shutdown snapshot is not logged: %s", text ? text : "(no log)");
    free(text);
    CHECK(td_unchanged(&body, body.path));
    CHECK(td_unchanged(&rows, rows.path));
    CHECK_INT(td_temp_files(dir), ==, 0);

    if ((c = td_up(&d, model, extra))) {
        td_expect_ids(c, s, ids1, n1, "restored after a full disk");
        const uint32_t twin = td_twin_of(c, ids1, n1);
        td_same_continuation(c, s, twin, "restored after a full disk");
        gc_disconnect(&c);
        CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
    }
    free(ids1);
    free(body.p);
    free(rows.p);
}

static void test_snapshot_file_size_limit(void)
{
    const char *model = td_tiny_model("tiny_fsz.gguf", "43");
    if (model)
        full_disk(model, td_mkdir("snap_fsz"), 64 * 1024, "File too large", "EFBIG");
}

static void test_snapshot_tmpfs_full(void)
{
    const char *model = td_tiny_model("tiny_enospc.gguf", "44");
    const char *dir = td_mkdir("snap_enospc");
    if (!model)
        return;
    if (mount("tmpfs", dir, "tmpfs", 0, "size=96k") < 0) {
        check_skip("cannot mount a tmpfs here (%s); test_snapshot_file_size_limit covers a full "
                   "disk",
                   strerror(errno));
        return;
    }
    full_disk(model, dir, 0, "No space left on device", "ENOSPC");
    umount2(dir, MNT_DETACH);
}

static size_t pages(size_t bytes)
{
    return (bytes + 4095) / 4096;
}

/* How the room for a snapshot runs out between its two files: given the daemon, the folder and
 * the sizes of the snapshot to come (tb its body, tr its rows), leave room for the rows and not
 * the body. 0, or -1 after a failed check. */
typedef int (*squeeze_fn)(const td_daemon_t *d, const char *dir, size_t tb, size_t tr);

/*
 * The room runs out between the two files of one snapshot: the new rows (.kv) fit and the new
 * body (.gistd) does not. What is kept: the snapshot fails naming the body's temporary file
 * and the reason; the previous pair of files is untouched, the .kv included (a snapshot
 * replaces neither file until both new ones are whole), so a restarted daemon restores the
 * previous snapshot with its rows, and no temporary file is left. n_big tokens (a multiple
 * of 600) follow the first snapshot (enough that the body outgrows the rows where squeeze needs it).
 */
static void body_fails_after_rows(const char *model, const char *dir, const char *const *extra,
                                  uint32_t n_big, squeeze_fn squeeze, const char *why)
{
    td_daemon_t d;
    gc_client_t *c = td_up(&d, model, extra);
    if (!c)
        return;
    err_info_t e;
    td_saved_t body, rows;
    const uint32_t s = open_snapshotted(c, dir, "Once upon a time.", &body, &rows);
    uint32_t n1 = 0;
    int32_t *ids1 = td_transcript_ids(c, s, &n1);

    /* the sizes the next snapshot of s will have, from a session with the same tokens */
    int32_t big[600];
    for (uint32_t k = 0; k < n_big; k += 600) { /* turns of 600 */
        gc_usage_t u;
        td_long_turn(big, 600, 3 + k);
        CHECK_MSG(gc_append_tokens(c, s, big, 600, &u, &e) == 0, "%s", err_msg(&e));
    }
    uint32_t n2 = 0;
    int32_t *ids2 = td_transcript_ids(c, s, &n2);
    const uint32_t t = td_twin_of(c, ids2, n2);
    CHECK_OK(gc_snapshot(c, t, NULL, &e));
    td_saved_t tb, tr;
    td_save(&tb, dir, t, "");
    td_save(&tr, dir, t, ".kv");
    CHECK_OK(gc_close(c, t, &e)); /* removes its files */
    fprintf(stderr, "# the next snapshot: body %zu bytes, rows %zu bytes\n", tb.len, tr.len);
    if (squeeze(&d, dir, tb.len, tr.len) == 0) {
        char tmp[600];
        snprintf(tmp, sizeof tmp, "session-%u.gistd.tmp", s);
        snapshot_fails(c, s, (const char *[]){dir, tmp, why, NULL});
        CHECK_MSG(td_unchanged(&rows, rows.path), "%s was replaced by a snapshot that failed",
                  rows.path);
        CHECK(td_unchanged(&body, body.path));
        CHECK_INT(td_temp_files(dir), ==, 0);
    }
    gc_disconnect(&c);
    td_stop(&d, SIGKILL); /* a shutdown snapshot would not fit */
    if ((c = td_up(&d, model, extra))) {
        td_expect_ids(c, s, ids1, n1, "restored after a failed body");
        gc_session_info_t info;
        CHECK_OK(gc_session_info(c, s, &info, &e));
        CHECK_INT(info.pending, ==, 0); /* its rows came back with it: nothing to prefill */
        gc_disconnect(&c);
        td_stop(&d, SIGKILL);
    }
    free(ids1);
    free(ids2);
    free(body.p);
    free(rows.p);
    free(tb.p);
    free(tr.p);
}

/* A tmpfs resized to hold what it holds, the new rows, and all but the last page of the new
 * body. */
static int squeeze_tmpfs(const td_daemon_t *d, const char *dir, size_t tb, size_t tr)
{
    struct statvfs vs;
    CHECK(statvfs(dir, &vs) == 0 && vs.f_frsize == 4096);
    const size_t used = (size_t)(vs.f_blocks - vs.f_bfree);
    char opt[64];
    snprintf(opt, sizeof opt, "size=%zuk", (used + pages(tr) + pages(tb) - 1) * 4);
    CHECK_MSG(pages(tb) >= 1 && mount(NULL, dir, NULL, MS_REMOUNT, opt) == 0, "remount %s: %s",
              opt, strerror(errno));
    return check_failed() ? -1 : 0;
}

static void test_snapshot_body_fails_after_rows(void)
{
    const char *model = td_tiny_model("tiny_half.gguf", "46");
    const char *dir = td_mkdir("snap_half");
    if (!model)
        return;
    if (mount("tmpfs", dir, "tmpfs", 0, "size=4m") < 0) {
        check_skip("cannot mount a tmpfs here (%s); test_snapshot_body_over_size_limit covers "
                   "the case with a file-size limit",
                   strerror(errno));
        return;
    }
    const char *extra[] = {"--snapshot-dir", dir, NULL};
    body_fails_after_rows(model, dir, extra, 600, squeeze_tmpfs, "ENOSPC");
    umount2(dir, MNT_DETACH);
}

/* The daemon's file-size limit (RLIMIT_FSIZE, set on the running process) halfway between the
 * new rows and the new body, which must be the larger. */
static int squeeze_fsize(const td_daemon_t *d, const char *dir, size_t tb, size_t tr)
{
    CHECK_MSG(tb >= tr + 4096, "the body (%zu bytes) should outgrow the rows (%zu) by 4 KiB", tb,
              tr);
    const rlim_t lim = (rlim_t)(tr + (tb - tr) / 2);
    const struct rlimit rl = {lim, lim};
    CHECK_MSG(prlimit(d->pid, RLIMIT_FSIZE, &rl, NULL) == 0, "prlimit: %s", strerror(errno));
    return check_failed() ? -1 : 0;
}

/*
 * The same without mount rights: a file-size limit stops the body and not the rows. A body
 * (mostly the transcript, 4 bytes a token) outgrows the rows only when the rows are few, so
 * the model is small (one layer, one kv-head of 8 dims), its rows f16, and a window policy
 * keeps a 64 KiB session to a few blocks of 16 rows while 9000 tokens pass through it (their
 * transcript, 54 KiB, counts in the session's bytes too: --spill-dir none keeps it in memory,
 * where spilling would leave the window room for more rows than the body has bytes).
 */
static void test_snapshot_body_over_size_limit(void)
{
    const char *model = td_tmp_path("tiny_small.gguf");
    char *argv[] = {(char *)td_bin("gist-model"), "make-tiny", (char *)model, "--seed", "47",
                    "--n-embd", "16", "--n-layer", "1", "--n-head", "2", "--n-head-kv", "1",
                    "--n-ff", "32", NULL};
    CHECK_INT(td_run(argv, NULL, 0), ==, 0);
    if (check_failed())
        return;
    const char *dir = td_mkdir("snap_half_fsz");
    const char *extra[] = {"--snapshot-dir", dir,   "--policy",     "window",      "--kv-type",
                           "f16",            "--session-budget", "64K", "--block-rows", "16",
                           "--spill-dir",    "none", NULL};
    body_fails_after_rows(model, dir, extra, 9000, squeeze_fsize, "EFBIG");
}

int main(void)
{
    RUN(test_snapshot_dir_replaced_by_file);
    RUN(test_snapshot_dir_read_only_mount);
    RUN(test_snapshot_file_size_limit);
    RUN(test_snapshot_tmpfs_full);
    RUN(test_snapshot_body_fails_after_rows);
    RUN(test_snapshot_body_over_size_limit);
    return check_done();
}
