/* Faults around snapshots against a real gistd: a snapshot folder that becomes unwritable,
 * a full disk (a file-size limit, and a small tmpfs where mounting works), SIGTERM in the
 * middle of a long prefill, and SIGKILL followed by a restart over a folder with partial
 * and stray files planted in it. Each test states what is kept and checks it token by
 * token against the session's transcript before the fault, and the greedy text a restored
 * session goes on with against a fresh session holding the same tokens. */
#include <dirent.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <zmq.h>

#include "proto/gistd.pb-c.h"
#include "tests/test_daemon_util.h"

/* ------------------------------------------------------------------ helpers */

/* A file's bytes (malloc'd, *len of them), or NULL. */
static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = malloc(n > 0 ? (size_t)n : 1);
    if (p && n > 0 && fread(p, 1, (size_t)n, f) != (size_t)n) {
        free(p);
        p = NULL;
    }
    fclose(f);
    *len = n > 0 ? (size_t)n : 0;
    return p;
}

static int spew(const char *path, const void *p, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    const bool ok = fwrite(p, 1, len, f) == len;
    return fclose(f) == 0 && ok ? 0 : -1;
}

/* A file of the snapshot folder, as saved by the test. */
typedef struct saved {
    char path[512];
    uint8_t *p;
    size_t len;
} saved_t;

static void save(saved_t *s, const char *dir, uint32_t id, const char *suffix)
{
    snprintf(s->path, sizeof s->path, "%s/session-%u.gistd%s", dir, id, suffix);
    s->p = slurp(s->path, &s->len);
    CHECK_MSG(s->p != NULL, "%s is missing", s->path);
}

/* The file at path (may differ from where it was saved) still holds the saved bytes. */
static bool unchanged(const saved_t *s, const char *path)
{
    size_t len;
    uint8_t *p = slurp(path, &len);
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

static const char *make_dir(const char *name)
{
    static char path[4][512];
    static int k;
    char *p = path[k++ % 4];
    snprintf(p, sizeof path[0], "%s/%s", check_tmpdir(), name);
    if (mkdir(p, 0755) < 0 && errno != EEXIST)
        check_fail_(__FILE__, __LINE__, "mkdir %s: %s", p, strerror(errno));
    return p;
}

/* The session's token ids (*n of them; malloc'd), or NULL after a failed check. */
static int32_t *transcript_ids(gc_client_t *c, uint32_t s, uint32_t *n)
{
    err_info_t e;
    int32_t *ids = NULL;
    uint32_t total = 0;
    *n = 0;
    if (gc_transcript(c, s, 0, 0, NULL, NULL, &ids, n, &total, &e)) {
        check_fail_(__FILE__, __LINE__, "transcript of session %u: %s", s, err_msg(&e));
        return NULL;
    }
    return ids;
}

/* Session s holds exactly ids[0..n), token for token. */
static void expect_ids(gc_client_t *c, uint32_t s, const int32_t *ids, uint32_t n, const char *what)
{
    uint32_t m = 0;
    int32_t *got = transcript_ids(c, s, &m);
    CHECK_MSG(m == n, "%s: session %u holds %u tokens, expected %u", what, s, m, n);
    for (uint32_t i = 0; got && ids && i < m && i < n; i++)
        if (got[i] != ids[i]) {
            check_fail_(__FILE__, __LINE__, "%s: session %u position %u: %d, expected %d", what, s,
                        i, got[i], ids[i]);
            break;
        }
    free(got);
}

/* A fresh session holding exactly ids (no BOS added: ids carry their own). */
static uint32_t twin_of(gc_client_t *c, const int32_t *ids, uint32_t n)
{
    err_info_t e;
    uint32_t s = 0;
    gc_usage_t u;
    gc_open_opts_t oo = {.no_bos = true};
    CHECK_OK(gc_open(c, &oo, &s, &e));
    CHECK_OK(gc_append_tokens(c, s, ids, n, &u, &e));
    expect_ids(c, s, ids, n, "twin");
    return s;
}

/* Both sessions go on with the same 12 greedy tokens. */
static void same_continuation(gc_client_t *c, uint32_t a, uint32_t b, const char *what)
{
    err_info_t e;
    gc_gen_opts_t o = {.session = a, .max_tokens = 12, .sampling = &td_greedy};
    gc_result_t ra = {0}, rb = {0};
    CHECK_OK(gc_generate(c, &o, NULL, &ra, &e));
    o.session = b;
    CHECK_OK(gc_generate(c, &o, NULL, &rb, &e));
    CHECK_MSG(ra.text && rb.text && !strcmp(ra.text, rb.text),
              "%s: session %u goes on \"%s\", a fresh one with its tokens \"%s\"", what, a,
              ra.text ? ra.text : "(none)", rb.text ? rb.text : "(none)");
    CHECK_INT(ra.n_tokens, ==, 12);
    gc_result_free(&ra);
    gc_result_free(&rb);
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
    const char *dir = make_dir("snap_unw");
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
    CHECK(spew(dir, "not a folder\n", 13) == 0);
    append(c, s, " It ran to the park.");
    snapshot_fails(c, s, (const char *[]){dir, "Not a directory", "ENOTDIR", NULL});
    snapshot_fails(c, 0, (const char *[]){dir, "ENOTDIR", NULL}); /* every session */

    /* in memory: whole and serving */
    uint32_t n = 0;
    int32_t *ids = transcript_ids(c, s, &n);
    const uint32_t twin = twin_of(c, ids, n);
    same_continuation(c, s, twin, "after a failed snapshot");
    free(ids);
    ids = transcript_ids(c, s, &n);

    /* the previous files are as they were, and nothing was left beside them */
    char p[700];
    snprintf(p, sizeof p, "%s/session-%u.gistd", away, s);
    CHECK_MSG(unchanged(&body, p), "%s changed", p);
    snprintf(p, sizeof p, "%s/session-%u.gistd.kv", away, s);
    CHECK_MSG(unchanged(&rows, p), "%s changed", p);
    CHECK_INT(temp_files(away), ==, 0);
    size_t flen;
    uint8_t *fb = slurp(dir, &flen);
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
    expect_ids(c, s, ids, n, "restored after the folder came back");
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
    const char *dir = make_dir("snap_ro");
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
        int32_t *ids = transcript_ids(c, s, &n);
        const uint32_t twin = twin_of(c, ids, n);
        same_continuation(c, s, twin, "after a read-only folder");
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
    const td_opts_t opts = {.fsize_limit = fsize};
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
    int32_t *ids1 = transcript_ids(c, s, &n1);
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
    CHECK(unchanged(&body, body.path));
    CHECK(unchanged(&rows, rows.path));
    CHECK_INT(temp_files(dir), ==, 0);

    if (td_start(&d, model, extra) == 0) {
        c = td_connect(&d);
        expect_ids(c, s, ids1, n1, "restored after a full disk");
        const uint32_t twin = twin_of(c, ids1, n1);
        same_continuation(c, s, twin, "restored after a full disk");
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
        full_disk(model, make_dir("snap_fsz"), 64 * 1024, "File too large", "EFBIG");
}

static void test_snapshot_tmpfs_full(void)
{
    const char *model = td_tiny_model("tiny_enospc.gguf", "44");
    const char *dir = make_dir("snap_enospc");
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
    const char *dir = make_dir("snap_half");
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
    int32_t *ids1 = transcript_ids(c, s, &n1);
    saved_t body, rows;
    save(&body, dir, s, "");
    save(&rows, dir, s, ".kv");

    /* the sizes the next snapshot of s will have, from a session with the same tokens */
    static int32_t big[600];
    long_turn(big, 600, 3);
    gc_usage_t u;
    CHECK_OK(gc_append_tokens(c, s, big, 600, &u, &e));
    uint32_t n2 = 0;
    int32_t *ids2 = transcript_ids(c, s, &n2);
    t = twin_of(c, ids2, n2);
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
        expect_ids(c, s, ids1, n1, "restored after a failed body");
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

/* ------------------------------------------------------------------ SIGTERM mid-prefill */

static void *raw_open(void *ctx, const char *ep)
{
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int zero = 0, tmo = 30000;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
    zmq_setsockopt(s, ZMQ_SNDTIMEO, &tmo, sizeof tmo);
    zmq_connect(s, ep);
    return s;
}

static Gistd__Reply *raw_recv(void *s)
{
    static uint8_t buf[1 << 16];
    int n = zmq_recv(s, buf, sizeof buf, 0);
    if (n != 0)
        return NULL;
    n = zmq_recv(s, buf, sizeof buf, 0);
    return n < 0 ? NULL : gistd__reply__unpack(NULL, (size_t)n, buf);
}

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
    const char *dir = make_dir("snap_term");
    const char *slow[] = {"--snapshot-dir", dir, "--prefill-chunk", "1", NULL};
    const char *fast[] = {"--snapshot-dir", dir, NULL};
    td_daemon_t d;
    if (!model || td_start(&d, model, slow))
        return;
    gc_client_t *c = td_connect(&d);
    err_info_t e;
    uint32_t s;
    CHECK_OK(gc_open(c, NULL, &s, &e));
    append(c, s, "Tom and Sue went to the park.");
    uint32_t n1 = 0;
    int32_t *ids = transcript_ids(c, s, &n1);
    int32_t *all = malloc(sizeof(int32_t) * (n1 + LONG_TURN));
    if (!ids || !all) {
        CHECK(!"transcript");
        free(ids);
        gc_disconnect(&c);
        td_stop(&d, SIGKILL);
        return;
    }
    memcpy(all, ids, sizeof(int32_t) * n1);
    long_turn(all + n1, LONG_TURN, 2);

    void *ctx = zmq_ctx_new();
    void *raw = raw_open(ctx, d.endpoint);
    Gistd__Append ap = GISTD__APPEND__INIT;
    ap.session = s;
    ap.n_tokens = LONG_TURN;
    ap.tokens = all + n1;
    Gistd__Request r = GISTD__REQUEST__INIT;
    r.id = 77;
    r.body_case = GISTD__REQUEST__BODY_APPEND;
    r.append = &ap;
    const size_t len = gistd__request__get_packed_size(&r);
    uint8_t *buf = malloc(len);
    gistd__request__pack(&r, buf);
    CHECK(zmq_send(raw, "", 0, ZMQ_SNDMORE) == 0 && zmq_send(raw, buf, len, 0) == (int)len);
    free(buf);

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
    Gistd__Reply *rep = raw_recv(raw);
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
    CHECK_INT(temp_files(dir), ==, 0);

    if (td_start(&d, model, fast) == 0) {
        c = td_connect(&d);
        CHECK_OK(gc_session_info(c, s, &info, &e));
        CHECK_INT(info.tokens, ==, n1 + LONG_TURN);
        CHECK_MSG(info.pending > 0 && info.pending < LONG_TURN, "%u of %u pending", info.pending,
                  LONG_TURN);
        expect_ids(c, s, all, n1 + LONG_TURN, "restored after SIGTERM mid-prefill");
        const uint32_t twin = twin_of(c, all, n1 + LONG_TURN);
        same_continuation(c, s, twin, "restored after SIGTERM mid-prefill");
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
    const char *dir = make_dir("snap_kill9");
    char log[600];
    snprintf(log, sizeof log, "%s/kill9.log", check_tmpdir());
    const char *extra[] = {"--snapshot-dir", dir, NULL};
    td_daemon_t d;
    if (!model || td_start(&d, model, extra))
        return;
    gc_client_t *c = td_connect(&d);
    err_info_t e;
    uint32_t a, b, cs;
    CHECK_OK(gc_open(c, NULL, &a, &e));
    CHECK_OK(gc_open(c, NULL, &b, &e));
    append(c, a, "Alpha one.");
    append(c, b, "Bravo one.");
    uint32_t nb = 0, na = 0;
    int32_t *ta = NULL, *tb = transcript_ids(c, b, &nb);
    gc_disconnect(&c);
    CHECK_INT(td_stop(&d, SIGTERM), ==, 0); /* the clean shutdown snapshots A and B */

    if (td_start(&d, model, extra))
        goto done;
    c = td_connect(&d);
    expect_ids(c, b, tb, nb, "after a clean shutdown");
    append(c, a, " Alpha two.");
    CHECK_OK(gc_snapshot(c, a, NULL, &e));
    ta = transcript_ids(c, a, &na);
    append(c, a, " Alpha three."); /* after A's last snapshot: lost */
    append(c, b, " Bravo two.");   /* after B's last snapshot: lost */
    CHECK_OK(gc_open(c, NULL, &cs, &e));
    append(c, cs, "Charlie."); /* never snapshotted: lost */
    gc_disconnect(&c);
    CHECK_INT(td_stop(&d, SIGKILL), ==, -1);

    /* plant partial and stray files */
    char p[700], q[700];
    snprintf(p, sizeof p, "%s/session-90.gistd.tmp", dir);
    CHECK(spew(p, "partial", 7) == 0);
    snprintf(p, sizeof p, "%s/session-91.gistd.kv.tmp.Ab12Cd", dir);
    CHECK(spew(p, "partial", 7) == 0);
    snprintf(p, sizeof p, "%s/session-92.gistd.kv.next", dir);
    CHECK(spew(p, "partial", 7) == 0);
    saved_t body;
    save(&body, dir, a, "");
    if (body.p) {
        snprintf(q, sizeof q, "%s/session-93.gistd", dir);
        CHECK(spew(q, body.p, body.len / 2) == 0); /* cut short */
        body.p[body.len / 2] ^= 0x20;
        snprintf(q, sizeof q, "%s/session-94.gistd", dir);
        CHECK(spew(q, body.p, body.len) == 0); /* one byte changed */
    }
    saved_t brows;
    save(&brows, dir, b, ".kv");
    if (brows.p)
        CHECK(spew(brows.path, brows.p, brows.len / 2) == 0);

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
        expect_ids(c, a, ta, na, "A after SIGKILL");
        expect_ids(c, b, tb, nb, "B after SIGKILL");
        const uint32_t ta_twin = twin_of(c, ta, na), tb_twin = twin_of(c, tb, nb);
        same_continuation(c, a, ta_twin, "A after SIGKILL");
        same_continuation(c, b, tb_twin, "B after SIGKILL");
        gc_disconnect(&c);
        CHECK_INT(td_stop(&d, SIGTERM), ==, 0);
    }
    CHECK_INT(temp_files(dir), ==, 0);
    size_t ll = 0;
    char *text = (char *)slurp(log, &ll);
    char *t = text ? realloc(text, ll + 1) : NULL;
    if (t) {
        text = t;
        text[ll] = 0;
    }
    CHECK_MSG(t && log_has(text, "session-90.gistd.tmp", "removed") &&
                  log_has(text, "session-91.gistd.kv.tmp", "removed") &&
                  log_has(text, "session-92.gistd.kv.next", "removed"),
              "stray files not logged:\n%s", t ? text : "");
    CHECK_MSG(t && log_has(text, "session-93.gistd", "checksum") &&
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

int main(void)
{
    RUN(test_snapshot_dir_replaced_by_file);
    RUN(test_snapshot_dir_read_only_mount);
    RUN(test_snapshot_file_size_limit);
    RUN(test_snapshot_tmpfs_full);
    RUN(test_snapshot_body_fails_after_rows);
    RUN(test_sigterm_during_prefill);
    RUN(test_sigkill_then_restart);
    return check_done();
}
