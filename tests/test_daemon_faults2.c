/* Faults around snapshot files against a real gistd: a snapshot folder that becomes
 * unwritable (renamed away with a regular file in its place; a tmpfs remounted read-only
 * where mounting works) and a full disk (a file-size limit; a small tmpfs, also filling
 * between the two files of one snapshot). Each test states what is kept and checks it: the
 * error names the path and the reason, the previous snapshot is byte for byte as it was, no
 * temporary file is left, the session serves on, and a restarted daemon restores the last
 * whole snapshot, going on exactly as a fresh session holding the same tokens.
 * SIGTERM and SIGKILL with restarts are in test_daemon_faults3.c. */
#include <dirent.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include "tests/test_daemon_util.h"

/* ------------------------------------------------------------------ helpers */

/* A file of the snapshot folder, as saved by the test. */
typedef struct saved {
    char path[512];
    uint8_t *p;
    size_t len;
} saved_t;

static void save(saved_t *s, const char *dir, uint32_t id, const char *suffix)
{
    snprintf(s->path, sizeof s->path, "%s/session-%u.gistd%s", dir, id, suffix);
    s->p = (uint8_t *)td_slurp(s->path, &s->len);
    CHECK_MSG(s->p != NULL, "%s is missing", s->path);
}

/* The file at path (may differ from where it was saved) still holds the saved bytes. */
static bool unchanged(const saved_t *s, const char *path)
{
    size_t len;
    uint8_t *p = (uint8_t *)td_slurp(path, &len);
    const bool same = p && s->p && len == s->len && !memcmp(p, s->p, len);
    free(p);
    return same;
}

/* Files in dir whose name marks a temporary file of a snapshot (".tmp", ".next"). */
static int temp_files(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *de;
    while (d && (de = readdir(d)))
        if (strstr(de->d_name, ".tmp") || strstr(de->d_name, ".next")) {
            fprintf(stderr, "# left in %s: %s\n", dir, de->d_name);
            n++;
        }
    if (d)
        closedir(d);
    return n;
}

static void append(gc_client_t *c, uint32_t s, const char *text)
{
    err_info_t e;
    gc_usage_t u;
    CHECK_OK(gc_append(c, s, text, 0, GC_ROLE_NONE, &u, &e));
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
    if (!model || td_start(&d, model, extra))
        return;
    gc_client_t *c = td_connect(&d);
    err_info_t e;
    uint32_t s, n_done = 0;
    CHECK_OK(gc_open(c, NULL, &s, &e));
    append(c, s, "Once upon a time there was a dog.");
    CHECK_OK(gc_snapshot(c, s, &n_done, &e));
    CHECK_INT(n_done, ==, 1);
    saved_t body, rows;
    save(&body, dir, s, "");
    save(&rows, dir, s, ".kv");

    CHECK(rename(dir, away) == 0);
    CHECK(td_spew(dir, "not a folder\n", 13) == 0);
    append(c, s, " It ran to the park.");
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
    CHECK_MSG(unchanged(&body, p), "%s changed", p);
    snprintf(p, sizeof p, "%s/session-%u.gistd.kv", away, s);
    CHECK_MSG(unchanged(&rows, p), "%s changed", p);
    CHECK_INT(temp_files(away), ==, 0);
    size_t flen;
    char *fb = td_slurp(dir, &flen);
    CHECK(fb && flen == 13 && !memcmp(fb, "not a folder\n", 13));
    free(fb);

    /* the folder comes back: a snapshot succeeds and holds the session as it is now */
    CHECK(unlink(dir) == 0 && rename(away, dir) == 0);
    CHECK_OK(gc_snapshot(c, s, &n_done, &e));
    CHECK(!unchanged(&body, body.path));
    CHECK_INT(temp_files(dir), ==, 0);
    CHECK_OK(gc_close(c, twin, &e));
    gc_disconnect(&c);
    td_stop(&d, SIGKILL); /* no shutdown snapshot: what comes back is the explicit one */
    if (td_start(&d, model, extra))
        goto done;
    c = td_connect(&d);
    td_expect_ids(c, s, ids, n, "restored after the folder came back");
    gc_disconnect(&c);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
done:
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
    if (td_start(&d, model, extra)) {
        umount2(dir, MNT_DETACH);
        return;
    }
    gc_client_t *c = td_connect(&d);
    err_info_t e;
    uint32_t s;
    CHECK_OK(gc_open(c, NULL, &s, &e));
    append(c, s, "The little dog ran.");
    CHECK_OK(gc_snapshot(c, s, NULL, &e));
    saved_t body, rows;
    save(&body, dir, s, "");
    save(&rows, dir, s, ".kv");
    if (mount(NULL, dir, NULL, MS_REMOUNT | MS_RDONLY, NULL) < 0) {
        check_skip("cannot remount %s read-only: %s", dir, strerror(errno));
    } else {
        append(c, s, " It was happy.");
        snapshot_fails(c, s, (const char *[]){dir, "Read-only file system", "EROFS", NULL});
        uint32_t n = 0;
        int32_t *ids = td_transcript_ids(c, s, &n);
        const uint32_t twin = td_twin_of(c, ids, n);
        td_same_continuation(c, s, twin, "after a read-only folder");
        free(ids);
        CHECK(unchanged(&body, body.path));
        CHECK(unchanged(&rows, rows.path));
        CHECK_INT(mount(NULL, dir, NULL, MS_REMOUNT, NULL), ==, 0);
        CHECK_OK(gc_snapshot(c, s, NULL, &e));
        CHECK(!unchanged(&body, body.path));
        CHECK_INT(temp_files(dir), ==, 0);
    }
    gc_disconnect(&c);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
    umount2(dir, MNT_DETACH);
    free(body.p);
    free(rows.p);
}

/* ------------------------------------------------------------------ a full disk */

/* Tokens of a long turn (all inside the tiny vocabulary, none special). */
static void long_turn(int32_t *ids, uint32_t n, uint32_t salt)
{
    for (uint32_t i = 0; i < n; i++)
        ids[i] = (int32_t)(3 + (i * 7919u + salt * 104729u + 13u) % 380u);
}

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
    uint32_t s;
    CHECK_OK(gc_open(c, NULL, &s, &e));
    append(c, s, "Once upon a time.");
    CHECK_OK(gc_snapshot(c, s, NULL, &e));
    uint32_t n1 = 0;
    int32_t *ids1 = td_transcript_ids(c, s, &n1);
    saved_t body, rows;
    save(&body, dir, s, "");
    save(&rows, dir, s, ".kv");

    static int32_t big[600];
    long_turn(big, 600, 1);
    gc_usage_t u;
    CHECK_OK(gc_append_tokens(c, s, big, 600, &u, &e));
    snapshot_fails(c, s, (const char *[]){dir, reason, name, NULL});
    CHECK_INT(temp_files(dir), ==, 0);
    CHECK(unchanged(&body, body.path));
    CHECK(unchanged(&rows, rows.path));
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
    char *text = td_slurp(log, &ll);
    CHECK_MSG(text && strstr(text, "snapshot of session") && strstr(text, name),
              "the failed shutdown snapshot is not logged: %s", text ? text : "(no log)");
    free(text);
    CHECK(unchanged(&body, body.path));
    CHECK(unchanged(&rows, rows.path));
    CHECK_INT(temp_files(dir), ==, 0);

    if (td_start(&d, model, extra) == 0) {
        c = td_connect(&d);
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

/*
 * The disk fills between the two files of one snapshot: a tmpfs is resized so that the new
 * rows (.kv) fit and the new body (.gistd) does not. What is kept: the snapshot fails naming
 * the body's temporary file and ENOSPC; the previous pair of files is untouched, the .kv
 * included (a snapshot replaces neither file until both new ones are whole), so a restarted
 * daemon restores the previous snapshot with its rows, and no temporary file is left.
 */
static void test_snapshot_body_fails_after_rows(void)
{
    const char *model = td_tiny_model("tiny_half.gguf", "46");
    const char *dir = td_mkdir("snap_half");
    if (!model)
        return;
    if (mount("tmpfs", dir, "tmpfs", 0, "size=4m") < 0) {
        check_skip("cannot mount a tmpfs here (%s)", strerror(errno));
        return;
    }
    const char *extra[] = {"--snapshot-dir", dir, NULL};
    td_daemon_t d;
    if (td_start(&d, model, extra)) {
        umount2(dir, MNT_DETACH);
        return;
    }
    gc_client_t *c = td_connect(&d);
    err_info_t e;
    uint32_t s, t;
    CHECK_OK(gc_open(c, NULL, &s, &e));
    append(c, s, "Once upon a time.");
    CHECK_OK(gc_snapshot(c, s, NULL, &e));
    uint32_t n1 = 0;
    int32_t *ids1 = td_transcript_ids(c, s, &n1);
    saved_t body, rows;
    save(&body, dir, s, "");
    save(&rows, dir, s, ".kv");

    /* the sizes the next snapshot of s will have, from a session with the same tokens */
    static int32_t big[600];
    long_turn(big, 600, 3);
    gc_usage_t u;
    CHECK_OK(gc_append_tokens(c, s, big, 600, &u, &e));
    uint32_t n2 = 0;
    int32_t *ids2 = td_transcript_ids(c, s, &n2);
    t = td_twin_of(c, ids2, n2);
    CHECK_OK(gc_snapshot(c, t, NULL, &e));
    saved_t tb, tr;
    save(&tb, dir, t, "");
    save(&tr, dir, t, ".kv");
    CHECK_OK(gc_close(c, t, &e)); /* removes its files */
    struct statvfs vs;
    CHECK(statvfs(dir, &vs) == 0 && vs.f_frsize == 4096);
    const size_t used = (size_t)(vs.f_blocks - vs.f_bfree);
    /* room for the new rows and all but the last page of the new body */
    char opt[64];
    snprintf(opt, sizeof opt, "size=%zuk", (used + pages(tr.len) + pages(tb.len) - 1) * 4);
    CHECK_MSG(pages(tb.len) >= 1 && mount(NULL, dir, NULL, MS_REMOUNT, opt) == 0, "remount %s: %s",
              opt, strerror(errno));
    char tmp[600];
    snprintf(tmp, sizeof tmp, "session-%u.gistd.tmp", s);
    snapshot_fails(c, s, (const char *[]){dir, tmp, "ENOSPC", NULL});
    CHECK_MSG(unchanged(&rows, rows.path), "%s was replaced by a snapshot that failed", rows.path);
    CHECK(unchanged(&body, body.path));
    CHECK_INT(temp_files(dir), ==, 0);
    gc_disconnect(&c);
    td_stop(&d, SIGKILL);
    if (td_start(&d, model, extra) == 0) {
        c = td_connect(&d);
        td_expect_ids(c, s, ids1, n1, "restored after a failed body");
        gc_session_info_t info;
        CHECK_OK(gc_session_info(c, s, &info, &e));
        CHECK_INT(info.pending, ==, 0); /* its rows came back with it: nothing to prefill */
        gc_disconnect(&c);
        td_stop(&d, SIGKILL); /* a shutdown snapshot would not fit */
    }
    umount2(dir, MNT_DETACH);
    free(ids1);
    free(ids2);
    free(body.p);
    free(rows.p);
    free(tb.p);
    free(tr.p);
}

int main(void)
{
    RUN(test_snapshot_dir_replaced_by_file);
    RUN(test_snapshot_dir_read_only_mount);
    RUN(test_snapshot_file_size_limit);
    RUN(test_snapshot_tmpfs_full);
    RUN(test_snapshot_body_fails_after_rows);
    return check_done();
}
