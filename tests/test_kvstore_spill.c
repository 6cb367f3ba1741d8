/*
 * The transcript's cold tier on disk (kv_store_config_t.spill_dir): pages no lane holds raw
 * go to the session's spill file and stop counting. Each store under test runs beside a twin
 * without a spill_dir, driven through the same verbs: the twin is the reference, and every
 * session must show exactly what its twin shows (rows, transcript tokens and live counts),
 * while its charged bytes are the twin's less one page charge per spilled page. Also: pages
 * come back for re-expansion, forks read their parent's spilled pages (also after the parent
 * is gone), snapshots round-trip through both kinds of store, a small budget that refuses a
 * session without spilling keeps serving with it, I/O failures (injected, and a real missing
 * folder) are clear errors that change nothing, and the allocation-failure sweep of
 * test_kvstore_faults runs over the new paths.
 */
#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/test_kvstore_util.h"

#define PAGE        1024u /* KV_TPAGE */
#define PAGE_CHARGE 6144u /* what a page of 6 KiB is charged (a jemalloc size class) */

typedef struct io_fault {
    int write_err, read_err; /* errno injected into every write / read, 0: none */
    long n;                  /* or only the Nth I/O (0-based), -1: none */
    long count;
    bool fired;
    bool quiet; /* the test's own reads: neither counted nor failed */
} io_fault_t;

static int io_hook(void *ctx, bool write)
{
    io_fault_t *f = ctx;
    if (f->quiet)
        return 0;
    if (f->count++ == f->n) {
        f->fired = true;
        return EIO;
    }
    return write ? f->write_err : f->read_err;
}

static const char *spill_dir(void)
{
    static char dir[512];
    if (!dir[0]) {
        snprintf(dir, sizeof dir, "%s/spill", check_tmpdir());
        mkdir(dir, 0700);
    }
    return dir;
}

/* Descriptors this process holds on spill files under the folder (the newest in *last). */
static int spill_fds(int *last)
{
    int n = 0;
    for (int i = 3; i < 1024; i++) {
        char fd_path[64], link[4096];
        snprintf(fd_path, sizeof fd_path, "/proc/self/fd/%d", i);
        ssize_t k = readlink(fd_path, link, sizeof link - 1);
        if (k <= 0)
            continue;
        link[k] = 0;
        if (strstr(link, spill_dir()) && strstr(link, "gistd-transcript-") &&
            strstr(link, "(deleted)")) {
            n++;
            if (last)
                *last = i;
        }
    }
    return n;
}

static kv_store_t *store(const char *dir, io_fault_t *io, size_t hard)
{
    kv_store_config_t cfg = {.n_layer = 2,
                             .n_head_kv = 1,
                             .head_dim = 32,
                             .block_rows = 16,
                             .hot_type = DT_F16,
                             .hard_limit = hard,
                             .spill_dir = dir,
                             .hook = {.io_error = io ? io_hook : NULL, .ctx = io}};
    kv_store_t *st = NULL;
    err_info_t e;
    err_clear(&e);
    CHECK_MSG(kv_store_new(&cfg, &st, &e) == 0, "kv_store_new: %s", err_msg(&e));
    return st;
}

/* Evicts, in every lane, the rows whose position is below p. */
static int evict_below(kv_store_t *st, uint32_t sid, float p, err_info_t *e)
{
    uint32_t nl = kv_lane_count(st);
    for (uint32_t l = 0; l < nl; l++) {
        uint32_t rows = 0;
        kv_lane_size(st, sid, l, 0, &rows, NULL);
        kv_row_meta_t *m = malloc(sizeof *m * (rows ? rows : 1));
        uint32_t *idx = malloc(sizeof *idx * (rows ? rows : 1)), n = 0;
        kv_lane_read(st, sid, l, 0, 0, rows, m, NULL, NULL);
        for (uint32_t r = 0; r < rows; r++)
            if (m[r].pos < p)
                idx[n++] = r;
        int rc = n ? kv_lane_evict(st, sid, l, 0, idx, n, e) : 0;
        free(m);
        free(idx);
        if (rc)
            return rc;
    }
    return 0;
}

/* Evicts every k-th row of one lane. */
static int evict_some(kv_store_t *st, uint32_t sid, uint32_t lane, uint32_t k, err_info_t *e)
{
    uint32_t rows = 0, n = 0;
    kv_lane_size(st, sid, lane, 0, &rows, NULL);
    uint32_t *idx = malloc(sizeof *idx * (rows ? rows : 1));
    for (uint32_t r = 0; r < rows; r += k)
        idx[n++] = r;
    int rc = n ? kv_lane_evict(st, sid, lane, 0, idx, n, e) : 0;
    free(idx);
    return rc;
}

/* Replaces positions [a, b] in every lane by raw rows again (re-expansion). */
static int expand(kv_store_t *st, uint32_t sid, uint32_t a, uint32_t b, err_info_t *e)
{
    uint32_t hd = kv_head_dim(st), n = b - a + 1;
    float *k = calloc((size_t)n * hd, sizeof *k), *v = calloc((size_t)n * hd, sizeof *v);
    kv_row_meta_t *m = calloc(n, sizeof *m);
    for (uint32_t j = 0; j < n; j++) {
        m[j] = (kv_row_meta_t){.pos = (float)(a + j), .mass = 1.0f, .first = a + j, .last = a + j};
        for (uint32_t d = 0; d < hd; d++)
            k[j * hd + d] = v[j * hd + d] = kvt_val(9, 0, a + j, d);
    }
    int rc = kvt_replace_same(st, sid, (float)a, (float)b, n, k, v, m, e);
    free(k);
    free(v);
    free(m);
    return rc;
}

/* Replaces positions [a, b] in every lane by one pooled row. */
static int gist(kv_store_t *st, uint32_t sid, uint32_t a, uint32_t b, err_info_t *e)
{
    uint32_t hd = kv_head_dim(st);
    float k[64], v[64];
    for (uint32_t d = 0; d < hd; d++)
        k[d] = v[d] = kvt_val(5, a, b, d);
    kv_row_meta_t m = {.pos = (float)a + 0.5f * (float)(b - a),
                       .mass = (float)(b - a + 1),
                       .first = a,
                       .last = b,
                       .kind = KV_KIND_POOLED,
                       .level = 1};
    return kvt_replace_same(st, sid, (float)a, (float)b, 1, k, v, &m, e);
}

static void capture(kv_store_t *st, uint32_t sid, kvt_capture_t *c)
{
    kvt_capture_session(st, sid, c, false);
}

/* The session shows what its twin shows, and is charged one page less per spilled page. */
static void check_twin(kv_store_t *st, uint32_t sid, kv_store_t *ref, uint32_t rsid)
{
    kvt_capture_t a = {0}, b = {0};
    capture(st, sid, &a);
    capture(ref, rsid, &b);
    CHECK_MSG(kvt_capture_equal(&a, &b), "session %u differs from its in-memory twin", sid);
    kvt_capture_free(&a);
    kvt_capture_free(&b);
    kv_stats_t s, r;
    CHECK_OK(kv_session_stats(st, sid, &s));
    CHECK_OK(kv_session_stats(ref, rsid, &r));
    size_t spilled = s.transcript_disk_bytes / (PAGE * 4);
    CHECK_INT(s.transcript_disk_bytes % (PAGE * 4), ==, 0);
    CHECK_INT(r.transcript_disk_bytes, ==, 0);
    CHECK_INT(s.block_bytes + s.struct_bytes, ==, r.block_bytes + r.struct_bytes);
    CHECK_MSG(s.transcript_bytes + spilled * PAGE_CHARGE == r.transcript_bytes,
              "transcript %zu + %zu spilled pages != %zu in memory", s.transcript_bytes, spilled,
              r.transcript_bytes);
    CHECK_INT(s.bytes + spilled * PAGE_CHARGE, ==, r.bytes);
    KVT_CHECK_STORE(st);
}

/* Every full page whose live counts are all 0 is on disk; every other one in memory. */
static void check_spilled_exactly(kv_store_t *st, uint32_t sid)
{
    uint32_t len = 0;
    CHECK_OK(kv_transcript_len(st, sid, &len));
    uint16_t *live = malloc(sizeof *live * (len + 1));
    CHECK_OK(kv_transcript_read(st, sid, 0, len, NULL, live));
    uint32_t idle = 0;
    for (uint32_t p = 0; p + PAGE <= len; p += PAGE) {
        bool any = false;
        for (uint32_t j = 0; j < PAGE; j++)
            any |= live[p + j] != 0;
        idle += !any;
    }
    free(live);
    kv_stats_t s;
    CHECK_OK(kv_session_stats(st, sid, &s));
    CHECK_INT(s.transcript_disk_bytes, ==, (size_t)idle * PAGE * 4);
}

static void test_random_edits_equal_the_in_memory_twin(void)
{
    kv_store_t *st = store(spill_dir(), NULL, 0), *ref = store(NULL, NULL, 0);
    uint32_t a = 0, b = 0;
    err_info_t e;
    CHECK_OK(kv_session_create(st, NULL, &a, &e));
    CHECK_OK(kv_session_create(ref, NULL, &b, &e));
    kvt_rng_t rng = {42};
    uint32_t len = 0, max_disk = 0, expanded = 0;
    for (int step = 0; step < 120 && !check_failed(); step++) {
        uint32_t n = 1 + kvt_below(&rng, 200), tok = kvt_below(&rng, 50000);
        uint64_t tag = kvt_next(&rng);
        CHECK_OK(kvt_append(st, a, n, tok, tag, &e));
        CHECK_OK(kvt_append(ref, b, n, tok, tag, &e));
        len += n;
        uint32_t op = kvt_below(&rng, 4);
        if (op == 0 && len > 400) { /* a window: everything but the newest 100 to 400 */
            float p = (float)(len - 100 - kvt_below(&rng, 300));
            CHECK_OK(evict_below(st, a, p, &e));
            CHECK_OK(evict_below(ref, b, p, &e));
        } else if (op == 1) { /* a head keeps some old rows the other evicts */
            uint32_t l = kvt_below(&rng, 2), k = 2 + kvt_below(&rng, 5);
            CHECK_OK(evict_some(st, a, l, k, &e));
            CHECK_OK(evict_some(ref, b, l, k, &e));
        } else if (op == 2 && len > 64) {
            uint32_t x = kvt_below(&rng, len - 40), y = x + 1 + kvt_below(&rng, 30);
            CHECK_OK(gist(st, a, x, y, &e));
            CHECK_OK(gist(ref, b, x, y, &e));
        } else if (op == 3 && len > 2 * PAGE) { /* re-expansion, often on a spilled page */
            uint32_t x = kvt_below(&rng, len - 40), y = x + kvt_below(&rng, 30);
            kv_stats_t s0, s1;
            CHECK_OK(kv_session_stats(st, a, &s0));
            CHECK_OK(expand(st, a, x, y, &e));
            CHECK_OK(expand(ref, b, x, y, &e));
            CHECK_OK(kv_session_stats(st, a, &s1));
            expanded += s1.transcript_disk_bytes < s0.transcript_disk_bytes;
        }
        check_twin(st, a, ref, b);
        check_spilled_exactly(st, a);
        kv_stats_t s;
        CHECK_OK(kv_session_stats(st, a, &s));
        max_disk = s.transcript_disk_bytes / (PAGE * 4) > max_disk
                       ? (uint32_t)(s.transcript_disk_bytes / (PAGE * 4))
                       : max_disk;
    }
    printf("# %u positions, up to %u pages spilled, %u expansions brought a page back\n", len,
           max_disk, expanded);
    CHECK(max_disk >= 3);
    CHECK(expanded >= 1);
    kv_store_destroy(&st);
    kv_store_destroy(&ref);
}

/* Bytes drop by the pages' charge at the spill, and come back with a re-expanded page;
 * spilling it again writes nothing new (the file does not grow). */
static void test_bytes_drop_and_a_page_comes_back(void)
{
    /* under a limit, so that blocks come and go one by one (no payload runs) */
    kv_store_t *st = store(spill_dir(), NULL, (size_t)1 << 30);
    uint32_t s = 0;
    err_info_t e;
    CHECK_OK(kv_session_create(st, NULL, &s, &e));
    CHECK_OK(kvt_append(st, s, 3 * PAGE + 10, 7, 1, &e));
    kv_stats_t s0, s1, s2, s3;
    CHECK_OK(kv_session_stats(st, s, &s0));
    CHECK_INT(s0.transcript_disk_bytes, ==, 0);
    CHECK_OK(evict_below(st, s, 2.0f * PAGE + 5, &e)); /* pages 0 and 1 idle, 2 not */
    CHECK_OK(kv_session_stats(st, s, &s1));
    CHECK_INT(s1.transcript_disk_bytes, ==, 2 * PAGE * 4);
    CHECK_INT(s0.transcript_bytes - s1.transcript_bytes, ==, 2 * PAGE_CHARGE);
    uint32_t tok[8];
    CHECK_OK(kv_transcript_read(st, s, PAGE + 100, 8, tok, NULL));
    for (uint32_t j = 0; j < 8; j++)
        CHECK_INT(tok[j], ==, 7 + PAGE + 100 + j);

    CHECK_OK(expand(st, s, PAGE + 100, PAGE + 107, &e)); /* page 1 comes back */
    CHECK_OK(kv_session_stats(st, s, &s2));
    CHECK_INT(s2.transcript_disk_bytes, ==, PAGE * 4);
    CHECK_INT(s2.transcript_bytes, ==, s1.transcript_bytes + PAGE_CHARGE);
    uint16_t live[8];
    CHECK_OK(kv_transcript_read(st, s, PAGE + 100, 8, tok, live));
    for (uint32_t j = 0; j < 8; j++) {
        CHECK_INT(tok[j], ==, 7 + PAGE + 100 + j);
        CHECK_INT(live[j], ==, 2);
    }
    KVT_CHECK_STORE(st);
    struct stat before, after;
    /* the spill file: open, unlinked, under the folder */
    int fd = -1;
    CHECK_INT(spill_fds(&fd), ==, 1);
    CHECK_MSG(fd >= 0, "no spill file open (unlinked) under %s", spill_dir());
    if (fd >= 0)
        CHECK_OK(fstat(fd, &before));
    CHECK_OK(evict_below(st, s, 2.0f * PAGE + 5, &e)); /* page 1 idle again */
    CHECK_OK(kv_session_stats(st, s, &s3));
    CHECK_INT(s3.transcript_disk_bytes, ==, s1.transcript_disk_bytes);
    CHECK_INT(s3.bytes, ==, s1.bytes);
    if (fd >= 0) {
        CHECK_OK(fstat(fd, &after));
        CHECK_INT(after.st_size, ==, before.st_size);
        CHECK_INT(after.st_size, ==, 2 * PAGE * 4);
    }
    /* nothing is left in the folder, ever: the file was unlinked when made */
    CHECK_OK(kv_session_destroy(st, s));
    CHECK_INT(spill_fds(NULL), ==, 0);
    CHECK_OK(rmdir(spill_dir()));
    CHECK_OK(mkdir(spill_dir(), 0700));
    kv_store_destroy(&st);
}

/* A session under a budget that its transcript alone would fill: refused without a spill
 * folder, served on with one. */
static void test_small_budget_keeps_serving(void)
{
    for (int spill = 0; spill < 2; spill++) {
        kv_store_t *st = store(spill ? spill_dir() : NULL, NULL, 0);
        kv_session_config_t cfg = {.hard_limit = 160 * 1024};
        uint32_t s = 0, len = 0;
        err_info_t e;
        err_clear(&e);
        CHECK_OK(kv_session_create(st, &cfg, &s, &e));
        int rc = 0;
        while (len < 40 * PAGE && rc == 0) {
            rc = kvt_append(st, s, 50, len, 3, &e);
            if (rc == 0) {
                len += 50;
                rc = evict_below(st, s, (float)len - 200.0f, &e);
            }
        }
        kv_stats_t k;
        CHECK_OK(kv_session_stats(st, s, &k));
        printf("# spill %d: %u positions, %zu bytes charged (transcript %zu, on disk %zu)%s%s\n",
               spill, len, k.bytes, k.transcript_bytes, k.transcript_disk_bytes, rc ? ": " : "",
               rc ? e.msg : "");
        if (spill) {
            CHECK_INT(rc, ==, 0);
            CHECK_INT(len, >=, 40 * PAGE);
            CHECK(k.bytes <= 160 * 1024);
        } else {
            CHECK_INT(rc, ==, ERR_BUDGET);
            CHECK(len < 20 * PAGE);
        }
        KVT_CHECK_STORE(st);
        kv_store_destroy(&st);
    }
}

static void test_fork_and_snapshot_round_trips(void)
{
    kv_store_t *st = store(spill_dir(), NULL, 0), *ref = store(NULL, NULL, 0);
    uint32_t p = 0, rp = 0, c = 0, rc_ = 0, r1 = 0, r2 = 0, r3 = 0;
    err_info_t e;
    CHECK_OK(kv_session_create(st, NULL, &p, &e));
    CHECK_OK(kv_session_create(ref, NULL, &rp, &e));
    for (uint32_t i = 0; i < 5; i++) {
        CHECK_OK(kvt_append(st, p, 700, 1000 * i, i, &e));
        CHECK_OK(kvt_append(ref, rp, 700, 1000 * i, i, &e));
        CHECK_OK(evict_below(st, p, (float)(700 * i + 500), &e));
        CHECK_OK(evict_below(ref, rp, (float)(700 * i + 500), &e));
    }
    CHECK_OK(gist(st, p, 2800, 2900, &e));
    CHECK_OK(gist(ref, rp, 2800, 2900, &e));
    kv_stats_t s;
    CHECK_OK(kv_session_stats(st, p, &s));
    CHECK_INT(s.transcript_disk_bytes, ==, 3 * PAGE * 4);

    /* the fork reads its parent's spilled pages, also once the parent is gone */
    CHECK_OK(kv_session_fork(st, p, NULL, &c, &e));
    CHECK_OK(kv_session_fork(ref, rp, NULL, &rc_, &e));
    check_twin(st, c, ref, rc_);
    CHECK_OK(kv_session_destroy(st, p));
    CHECK_OK(kv_session_destroy(ref, rp));
    check_twin(st, c, ref, rc_);
    CHECK_OK(expand(st, c, PAGE + 3, PAGE + 9, &e)); /* a page the parent spilled */
    CHECK_OK(expand(ref, rc_, PAGE + 3, PAGE + 9, &e));
    check_twin(st, c, ref, rc_);
    CHECK_OK(kvt_append(st, c, 1500, 9, 77, &e));
    CHECK_OK(kvt_append(ref, rc_, 1500, 9, 77, &e));
    CHECK_OK(evict_below(st, c, 4400.0f, &e));
    CHECK_OK(evict_below(ref, rc_, 4400.0f, &e));
    check_twin(st, c, ref, rc_);
    check_spilled_exactly(st, c);

    /* a snapshot of the spilled session restores, exactly, into either kind of store, and
     * the in-memory twin's snapshot is the same file */
    char path[600], path2[600];
    snprintf(path, sizeof path, "%s/spilled.kvs", check_tmpdir());
    snprintf(path2, sizeof path2, "%s/memory.kvs", check_tmpdir());
    CHECK_OK(kv_snapshot_write(st, c, path, &e));
    CHECK_OK(kv_snapshot_write(ref, rc_, path2, &e));
    FILE *f1 = fopen(path, "rb"), *f2 = fopen(path2, "rb");
    CHECK(f1 && f2);
    if (f1 && f2) {
        int x, y;
        long at = 0;
        do {
            x = fgetc(f1);
            y = fgetc(f2);
            at++;
        } while (x == y && x != EOF);
        CHECK_MSG(x == y, "the snapshots differ at byte %ld", at);
    }
    if (f1)
        fclose(f1);
    if (f2)
        fclose(f2);
    CHECK_OK(kv_snapshot_read(st, path, NULL, &r1, &e));
    CHECK_OK(kv_snapshot_read(ref, path, NULL, &r2, &e));
    check_twin(st, r1, ref, r2);
    check_spilled_exactly(st, r1);
    kv_stats_t k;
    CHECK_OK(kv_session_stats(st, r1, &k));
    CHECK(k.transcript_disk_bytes >= 3 * PAGE * 4);
    /* under a limit the whole transcript in memory would pass: restored all the same */
    kv_stats_t rk;
    CHECK_OK(kv_session_stats(ref, r2, &rk));
    kv_session_config_t tight = {.hard_limit = k.bytes + 64};
    CHECK(tight.hard_limit < rk.bytes);
    CHECK_OK(kv_snapshot_read(st, path, &tight, &r3, &e));
    CHECK_INT(kv_snapshot_read(ref, path, &tight, &r3, &e), ==, ERR_BUDGET);
    KVT_CHECK_STORE(st);
    CHECK_INT(spill_fds(NULL), ==, 3); /* the fork's (its parent's, shared) and two restores' */
    kv_store_destroy(&st);
    kv_store_destroy(&ref);
    CHECK_INT(spill_fds(NULL), ==, 0);
}

static bool has(const char *msg, const char *what)
{
    bool ok = strstr(msg, what) != NULL;
    CHECK_MSG(ok, "\"%s\" does not say \"%s\"", msg, what);
    return ok;
}

static void test_io_failures_are_clear_and_change_nothing(void)
{
    io_fault_t io = {.write_err = ENOSPC, .n = -1};
    kv_store_t *st = store(spill_dir(), &io, 0);
    uint32_t s = 0;
    err_info_t e;
    err_clear(&e);
    CHECK_OK(kv_session_create(st, NULL, &s, &e));
    CHECK_OK(kvt_append(st, s, 3 * PAGE, 0, 1, &e));
    kv_stats_t k0, k1;
    CHECK_OK(kv_session_stats(st, s, &k0));
    /* a full disk: the edit goes through, the pages stay in memory */
    CHECK_OK(evict_below(st, s, 2.0f * PAGE, &e));
    CHECK_OK(kv_session_stats(st, s, &k1));
    CHECK_INT(k1.transcript_disk_bytes, ==, 0);
    CHECK_INT(k1.transcript_bytes, ==, k0.transcript_bytes);
    CHECK_INT(kv_transcript_spill(st, s, &e), ==, ERR_IO);
    has(e.msg, spill_dir());
    has(e.msg, "gistd-transcript-");
    has(e.msg, strerror(ENOSPC));
    /* a budget refusal says why the transcript still weighs */
    CHECK_OK(kv_session_set_limits(st, s, k1.bytes + 100, 0, NULL));
    CHECK_INT(kvt_append(st, s, 500, 0, 2, &e), ==, ERR_BUDGET);
    has(e.msg, "could not be spilled");
    has(e.msg, strerror(ENOSPC));
    KVT_CHECK_STORE(st);
    /* the disk has room again: the next pass spills, and the append fits */
    io.write_err = 0;
    CHECK_OK(kv_transcript_spill(st, s, &e));
    CHECK_OK(kv_session_stats(st, s, &k1));
    CHECK_INT(k1.transcript_disk_bytes, ==, 2 * PAGE * 4);
    CHECK_INT(k0.transcript_bytes - k1.transcript_bytes, ==, 2 * PAGE_CHARGE);
    CHECK_OK(kv_session_set_limits(st, s, 0, 0, NULL));
    CHECK_OK(kvt_append(st, s, 500, 0, 2, &e));

    /* a read that fails: the transcript read and a re-expansion say so and change nothing */
    io.read_err = EIO;
    uint32_t tok[4];
    CHECK_INT(kv_transcript_read(st, s, 10, 4, tok, NULL), ==, ERR_IO);
    CHECK_OK(kv_transcript_read(st, s, 2 * PAGE + 10, 4, tok, NULL)); /* in memory */
    io.read_err = 0;
    kvt_capture_t b = {0}, a = {0};
    kvt_capture_session(st, s, &b, true);
    io.read_err = EIO;
    CHECK_INT(expand(st, s, 100, 110, &e), ==, ERR_IO);
    has(e.msg, "reading transcript page 0");
    has(e.msg, strerror(EIO));
    char snap[600];
    snprintf(snap, sizeof snap, "%s/unread.kvs", check_tmpdir());
    CHECK_INT(kv_snapshot_write(st, s, snap, &e), ==, ERR_IO);
    has(e.msg, "gistd-transcript-");
    CHECK(access(snap, F_OK) != 0);
    io.read_err = 0;
    kvt_capture_session(st, s, &a, true);
    CHECK_MSG(kvt_capture_equal(&b, &a), "a failed re-expansion changed the session");
    kvt_capture_free(&a);
    kvt_capture_free(&b);
    CHECK_OK(expand(st, s, 100, 110, &e));
    KVT_CHECK_STORE(st);
    kv_store_destroy(&st);

    /* a folder that went away: a real failure, named */
    char gone[600];
    snprintf(gone, sizeof gone, "%s/gone", check_tmpdir());
    CHECK_OK(mkdir(gone, 0700));
    st = store(gone, NULL, 0);
    CHECK_OK(rmdir(gone));
    CHECK_OK(kv_session_create(st, NULL, &s, &e));
    CHECK_OK(kvt_append(st, s, 2 * PAGE, 0, 1, &e));
    CHECK_OK(evict_below(st, s, (float)PAGE, &e));
    CHECK_INT(kv_transcript_spill(st, s, &e), ==, ERR_IO);
    has(e.msg, gone);
    has(e.msg, strerror(ENOENT));
    CHECK_OK(kv_session_stats(st, s, &k1));
    CHECK_INT(k1.transcript_disk_bytes, ==, 0);
    KVT_CHECK_STORE(st);
    kv_store_destroy(&st);

    /* and one that never was, or is a file: refused when the store is made */
    kv_store_config_t cfg = {.n_layer = 1, .n_head_kv = 1, .head_dim = 32, .spill_dir = gone};
    CHECK_INT(kv_store_new(&cfg, &st, &e), ==, ERR_IO);
    has(e.msg, gone);
    cfg.spill_dir = snap;
    FILE *f = fopen(snap, "w");
    if (f)
        fclose(f);
    CHECK_INT(kv_store_new(&cfg, &st, &e), ==, ERR_IO);
    has(e.msg, "not a folder");
    CHECK(st == NULL);
}

/* ---- the allocation-failure sweep (test_kvstore_faults) over the spill paths ---- */

typedef struct run {
    kv_store_t *st;
    kvt_fault_t f;
    io_fault_t io;
    int failures;
    bool bad;
} run_t;

/* `call` either succeeds, or fails with ERR_NOMEM / ERR_IO (the injected faults), a
 * message, and nothing changed; then it succeeds when run again. */
#define STEP(r, call)                                                                              \
    do {                                                                                           \
        kvt_capture_t b_ = {0}, a_ = {0};                                                          \
        (r)->io.quiet = true; /* the capture's reads are not the call's */                         \
        kvt_capture_store((r)->st, &b_);                                                           \
        (r)->io.quiet = false;                                                                     \
        err_info_t e;                                                                              \
        err_clear(&e);                                                                             \
        int rc_ = (call);                                                                          \
        if (rc_ != 0) {                                                                            \
            (r)->failures++;                                                                       \
            CHECK_MSG((rc_ == ERR_NOMEM || rc_ == ERR_IO) && e.msg[0],                             \
                      "%s at N=%ld/%ld: %d \"%s\"", #call, (r)->f.n, (r)->io.n, rc_, e.msg);       \
            (r)->io.quiet = true;                                                                  \
            kvt_capture_store((r)->st, &a_);                                                       \
            KVT_CHECK_STORE((r)->st);                                                              \
            (r)->io.quiet = false;                                                                 \
            CHECK_MSG(kvt_capture_equal(&b_, &a_), "%s at N=%ld/%ld changed the store", #call,     \
                      (r)->f.n, (r)->io.n);                                                        \
            err_clear(&e);                                                                         \
            rc_ = (call);                                                                          \
        }                                                                                          \
        CHECK_MSG(rc_ == 0, "%s at N=%ld/%ld: retry gave %d \"%s\"", #call, (r)->f.n, (r)->io.n,   \
                  rc_, e.msg);                                                                     \
        if (rc_ != 0)                                                                              \
            (r)->bad = true;                                                                       \
        kvt_capture_free(&b_);                                                                     \
        kvt_capture_free(&a_);                                                                     \
    } while (0)

/* Both hooks get the run; each reads its own part. */
static bool run_fail_nth(void *ctx, size_t bytes)
{
    return kvt_fail_nth(&((run_t *)ctx)->f, bytes);
}

static int run_io(void *ctx, bool write)
{
    return io_hook(&((run_t *)ctx)->io, write);
}

static void scenario(run_t *r, const char *snap)
{
    kv_store_config_t cfg = {.n_layer = 1,
                             .n_head_kv = 1,
                             .head_dim = 32,
                             .block_rows = 64,
                             .hot_type = DT_F16,
                             .spill_dir = spill_dir(),
                             .hook = {.fail = run_fail_nth, .io_error = run_io, .ctx = r}};
    err_info_t e0;
    int rc = kv_store_new(&cfg, &r->st, &e0);
    if (rc) {
        CHECK_MSG(rc == ERR_NOMEM && r->st == NULL, "store at N=%ld: %d", r->f.n, rc);
        r->failures++;
        CHECK_OK(kv_store_new(&cfg, &r->st, &e0));
    }
    uint32_t a = 0, c = 0, d = 0;
    STEP(r, kv_session_create(r->st, NULL, &a, &e));
    STEP(r, kvt_append(r->st, a, 1100, 0, 1, &e));
    STEP(r, evict_below(r->st, a, 1050.0f, &e));
    STEP(r, kv_transcript_spill(r->st, a, &e));
    STEP(r, kvt_append(r->st, a, 1100, 5, 2, &e));
    STEP(r, evict_below(r->st, a, 2100.0f, &e));
    STEP(r, kv_transcript_spill(r->st, a, &e));
    STEP(r, expand(r->st, a, 500, 520, &e));
    STEP(r, kv_session_fork(r->st, a, NULL, &c, &e));
    STEP(r, expand(r->st, c, 1500, 1510, &e));
    STEP(r, evict_below(r->st, c, 2150.0f, &e));
    STEP(r, kv_transcript_spill(r->st, c, &e));
    STEP(r, kv_snapshot_write(r->st, c, snap, &e));
    STEP(r, kv_snapshot_read(r->st, snap, NULL, &d, &e));
    STEP(r, kv_session_destroy(r->st, a));
    STEP(r, expand(r->st, d, 300, 310, &e));
    STEP(r, expand(r->st, c, 1300, 1310, &e));
    KVT_CHECK_STORE(r->st);
    STEP(r, kv_session_destroy(r->st, c));
    STEP(r, kv_session_destroy(r->st, d));
    kv_stats_t s;
    kv_store_stats(r->st, &s);
    CHECK_MSG(s.bytes == s.overhead_bytes, "N=%ld/%ld: %zu bytes left (overhead %zu)", r->f.n,
              r->io.n, s.bytes, s.overhead_bytes);
    CHECK_MSG(spill_fds(NULL) == 0, "N=%ld/%ld: a spill file is still open", r->f.n, r->io.n);
    kv_store_destroy(&r->st);
}

static void sweep(bool io)
{
    char snap[600];
    snprintf(snap, sizeof snap, "%s/sweep.kvs", check_tmpdir());
    run_t clean = {.f = {.n = -1}, .io = {.n = -1}};
    scenario(&clean, snap);
    long total = io ? clean.io.count : clean.f.count;
    CHECK(total >= (io ? 8 : 100));
    long n = 0;
    for (; n <= total && !check_failed(); n++) {
        run_t r = {.f = {.n = io ? -1 : n}, .io = {.n = io ? n : -1}};
        scenario(&r, snap);
        bool fired = io ? r.io.fired : r.f.fired;
        /* a spill pass inside a verb fails quietly (the page stays): a fired I/O fault may
         * fail no call */
        CHECK_MSG(io ? r.failures <= 1 : fired == (r.failures == 1), "N=%ld: fired %d, %d failures",
                  n, fired, r.failures);
        if (r.bad)
            break;
    }
    unlink(snap);
    printf("# %ld %s in a run, each made to fail once\n", total,
           io ? "spill-file reads and writes" : "allocations");
    CHECK_INT(n, ==, total + 1);
}

static void test_nth_allocation_fails(void)
{
    sweep(false);
}

static void test_nth_io_fails(void)
{
    sweep(true);
}

int main(void)
{
    RUN(test_random_edits_equal_the_in_memory_twin);
    RUN(test_bytes_drop_and_a_page_comes_back);
    RUN(test_small_budget_keeps_serving);
    RUN(test_fork_and_snapshot_round_trips);
    RUN(test_io_failures_are_clear_and_change_nothing);
    RUN(test_nth_allocation_fails);
    RUN(test_nth_io_fails);
    return check_done();
}
