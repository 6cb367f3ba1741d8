/* Tests for kvstore snapshots: bit-identical round trips (f32 and f16 stores, gists,
 * q8_0 rows, evictions, accumulators), atomic replacement, and files that are truncated at
 * every offset, have flipped bytes, another version or magic, another shape, or a valid
 * checksum over invalid contents: each is a clear error and changes nothing. */
#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "tests/test_kvstore_util.h"

static char *path_in_tmp(const char *name)
{
    static char buf[8][512];
    static int k;
    char *p = buf[k++ % 8];
    snprintf(p, 512, "%s/%s", check_tmpdir(), name);
    return p;
}

static void spit(const char *path, const uint8_t *b, size_t n)
{
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    if (!f)
        return;
    CHECK_INT(fwrite(b, 1, n, f), ==, n);
    fclose(f);
}

/* FNV-1a 64, written out here again as the format's definition. */
static uint64_t fnv(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

static void reseal(uint8_t *b, size_t n)
{
    uint64_t h = fnv(b, n - 8);
    for (int i = 0; i < 8; i++)
        b[n - 8 + i] = (uint8_t)(h >> (8 * i));
}

/* A session with a bit of everything. */
static uint32_t busy_session(kv_store_t *st, uint32_t n_tok, bool acc)
{
    kv_session_config_t cfg = {.hard_limit = 1u << 26, .soft_limit = 1u << 25, .attn_acc = acc};
    uint32_t sid;
    err_info_t e;
    CHECK_OK(kv_session_create(st, &cfg, &sid, &e));
    CHECK_OK(kvt_append(st, sid, n_tok, 7, 1234, &e));
    uint32_t nl = kv_lane_count(st), hd = kv_head_dim(st);
    /* a gist over [3, 9] with two rows per lane */
    float *k = calloc((size_t)nl * 2 * hd, sizeof *k), *v = calloc((size_t)nl * 2 * hd, 4);
    const float **kp = calloc(nl, sizeof *kp), **vp = calloc(nl, sizeof *vp);
    const kv_row_meta_t **mp = calloc(nl, sizeof *mp);
    uint32_t *n = calloc(nl, sizeof *n);
    kv_row_meta_t gm[2] = {
        {.pos = 4.5f,
         .mass = 3.5f,
         .logbeta = -0.25f,
         .first = 3,
         .last = 6,
         .kind = 2,
         .level = 1},
        {.pos = 8.0f, .mass = 3.5f, .first = 7, .last = 9, .kind = 1, .level = 2}};
    for (uint32_t l = 0; l < nl; l++) {
        for (uint32_t i = 0; i < 2 * hd; i++) {
            k[(size_t)l * 2 * hd + i] = kvt_val(99, l, i, 0);
            v[(size_t)l * 2 * hd + i] = kvt_val(98, l, i, 1);
        }
        kp[l] = k + (size_t)l * 2 * hd;
        vp[l] = v + (size_t)l * 2 * hd;
        mp[l] = gm;
        n[l] = 2 - l % 2;
    }
    kv_rows_t rows = {.n = n, .k = kp, .v = vp, .meta = mp};
    CHECK_OK(kv_span_replace(st, sid, 3.0f, 9.0f, &rows, &e));
    CHECK_OK(kv_span_demote(st, sid, 10.0f, 20.0f, &e));
    uint32_t ev[3] = {0, 5, 6};
    CHECK_OK(kv_lane_evict(st, sid, 0, 0, ev, 3, &e));
    if (acc) {
        kv_chunk_t ch[64];
        uint32_t nc;
        CHECK_OK(kv_lane_view(st, sid, 0, 1, ch, 64, &nc));
        for (uint32_t c = 0; c < nc; c++)
            for (uint32_t i = 0; i < ch[c].n; i++)
                ch[c].attn_acc[i] = 0.125f * (float)(c + i);
    }
    free(k);
    free(v);
    free(kp);
    free(vp);
    free(mp);
    free(n);
    KVT_CHECK_STORE(st);
    return sid;
}

static void round_trip(uint32_t hot, bool acc)
{
    kv_store_t *st = kvt_store(2, 2, 64, 8, hot, 0);
    uint32_t sid = busy_session(st, 45, acc), back;
    err_info_t e;
    const char *p = path_in_tmp("s.kvs");
    CHECK_OK(kv_snapshot_write(st, sid, p, &e));
    CHECK_MSG(kv_snapshot_read(st, p, NULL, &back, &e) == 0, "read: %s", err_msg(&e));
    KVT_CHECK_STORE(st);
    kvt_capture_t a = {0}, b = {0}, c = {0};
    kvt_capture_session(st, sid, &a, false);
    kvt_capture_session(st, back, &b, false);
    CHECK(a.n > 0 && kvt_capture_equal(&a, &b));
    kv_stats_t sa, sb;
    CHECK_OK(kv_session_stats(st, sid, &sa));
    CHECK_OK(kv_session_stats(st, back, &sb));
    CHECK_INT(sb.hard_limit, ==, 1u << 26);
    CHECK_INT(sb.soft_limit, ==, 1u << 25);
    CHECK_INT(sb.block_bytes, ==, sa.block_bytes);
    CHECK_INT(sb.rows, ==, sa.rows);
    /* into a fresh store, and on from there: the restored session is a working one */
    kv_store_t *st2 = kvt_store(2, 2, 64, 8, hot, 0);
    uint32_t s2;
    CHECK_OK(kv_snapshot_read(st2, p, NULL, &s2, &e));
    kvt_capture_session(st2, s2, &c, false);
    CHECK(kvt_capture_equal(&a, &c));
    CHECK_OK(kvt_append(st2, s2, 10, 0, 5, &e));
    CHECK_OK(kvt_append(st, back, 10, 0, 5, &e));
    kvt_capture_free(&b);
    kvt_capture_free(&c);
    kvt_capture_session(st, back, &b, false);
    kvt_capture_session(st2, s2, &c, false);
    CHECK(kvt_capture_equal(&b, &c));
    KVT_CHECK_STORE(st2);
    kvt_capture_free(&a);
    kvt_capture_free(&b);
    kvt_capture_free(&c);
    kv_store_destroy(&st2);
    kv_store_destroy(&st);
}

static void test_round_trip_f32(void)
{
    round_trip(DT_F32, false);
}

static void test_round_trip_f16_acc(void)
{
    round_trip(DT_F16, true);
}

static void test_round_trip_q8_0(void)
{
    round_trip(DT_Q8_0, false);
}

/* Writing replaces an existing file and leaves no temporary behind. */
static void test_atomic_write(void)
{
    kv_store_t *st = kvt_store(1, 1, 32, 8, DT_F32, 0);
    uint32_t sid;
    CHECK_OK(kv_session_create(st, NULL, &sid, NULL));
    CHECK_OK(kvt_append(st, sid, 5, 0, 1, NULL));
    const char *p = path_in_tmp("atomic.kvs");
    spit(p, (const uint8_t *)"old contents", 12);
    CHECK_OK(kv_snapshot_write(st, sid, p, NULL));
    size_t n1;
    uint8_t *b1 = (uint8_t *)check_slurp(p, &n1);
    CHECK_OK(kvt_append(st, sid, 5, 0, 1, NULL));
    CHECK_OK(kv_snapshot_write(st, sid, p, NULL));
    size_t n2;
    uint8_t *b2 = (uint8_t *)check_slurp(p, &n2);
    CHECK(n2 > n1);
    CHECK(memcmp(b1, "GISTKVSN", 8) == 0);
    DIR *d = opendir(check_tmpdir());
    struct dirent *de;
    while (d && (de = readdir(d)))
        CHECK_MSG(strstr(de->d_name, ".tmp.") == NULL, "left behind: %s", de->d_name);
    if (d)
        closedir(d);
    err_info_t e;
    CHECK_INT(kv_snapshot_write(st, sid, "/nonexistent-dir/x.kvs", &e), ==, ERR_IO);
    CHECK_INT(kv_snapshot_read(st, "/nonexistent-dir/x.kvs", NULL, &sid, &e), ==, ERR_IO);
    free(b1);
    free(b2);
    kv_store_destroy(&st);
}

/* Reads `bytes` as a snapshot into st: must fail with one of the codes, changing nothing. */
static void expect_rejected(kv_store_t *st, const uint8_t *bytes, size_t n, int code1, int code2,
                            const char *want, const char *what)
{
    const char *p = path_in_tmp("bad.kvs");
    spit(p, bytes, n);
    kvt_capture_t before = {0}, after = {0};
    kvt_capture_store(st, &before);
    uint32_t sid = 0;
    err_info_t e;
    err_clear(&e);
    int rc = kv_snapshot_read(st, p, NULL, &sid, &e);
    CHECK_MSG(rc == code1 || rc == code2, "%s: got %d (%s)", what, rc, err_msg(&e));
    CHECK_MSG(!want || strstr(e.msg, want), "%s: message \"%s\" lacks \"%s\"", what, e.msg, want);
    CHECK_MSG(strstr(e.msg, "bad.kvs") != NULL, "%s: message \"%s\" lacks the file", what, e.msg);
    kvt_capture_store(st, &after);
    CHECK_MSG(kvt_capture_equal(&before, &after), "%s: the store changed", what);
    kvt_capture_free(&before);
    kvt_capture_free(&after);
}

static void test_truncated_everywhere(void)
{
    kv_store_t *st = kvt_store(1, 2, 32, 4, DT_F32, 0);
    uint32_t sid = busy_session(st, 12, true);
    const char *p = path_in_tmp("small.kvs");
    CHECK_OK(kv_snapshot_write(st, sid, p, NULL));
    size_t n;
    uint8_t *b = (uint8_t *)check_slurp(p, &n);
    CHECK(n > 200);
    for (size_t k = 0; k < n && !check_failed(); k++) {
        char what[64];
        snprintf(what, sizeof what, "truncated to %zu of %zu", k, n);
        expect_rejected(st, b, k, ERR_FORMAT, ERR_FORMAT, NULL, what);
    }
    KVT_CHECK_STORE(st);
    free(b);
    kv_store_destroy(&st);
}

static void test_flipped_bytes(void)
{
    kv_store_t *st = kvt_store(1, 2, 32, 4, DT_F32, 0);
    uint32_t sid = busy_session(st, 12, false);
    const char *p = path_in_tmp("flip.kvs");
    CHECK_OK(kv_snapshot_write(st, sid, p, NULL));
    size_t n;
    uint8_t *b = (uint8_t *)check_slurp(p, &n);
    for (size_t k = 0; k < n && !check_failed(); k++) {
        char what[64];
        snprintf(what, sizeof what, "byte %zu of %zu flipped", k, n);
        b[k] ^= (uint8_t)(1u << (k % 8));
        /* the magic, version and size fields are read before the checksum */
        bool header = k < 24;
        expect_rejected(st, b, n, header ? ERR_FORMAT : ERR_CORRUPT,
                        header ? ERR_FORMAT : ERR_CORRUPT, NULL, what);
        b[k] ^= (uint8_t)(1u << (k % 8));
    }
    free(b);
    kv_store_destroy(&st);
}

static void put32(uint8_t *p, uint32_t x)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(x >> (8 * i));
}

/* Header fields and contents that are wrong under a valid checksum. */
static void test_wrong_header_and_contents(void)
{
    kv_store_t *st = kvt_store(1, 2, 32, 4, DT_F32, 0);
    uint32_t sid = busy_session(st, 12, false);
    const char *p = path_in_tmp("hdr.kvs");
    CHECK_OK(kv_snapshot_write(st, sid, p, NULL));
    size_t n;
    uint8_t *b = (uint8_t *)check_slurp(p, &n), *c = malloc(n);

    memcpy(c, b, n);
    c[0] = 'X';
    expect_rejected(st, c, n, ERR_FORMAT, ERR_FORMAT, "magic", "wrong magic");
    memcpy(c, b, n);
    put32(c + 8, 1); /* the version before model positions */
    reseal(c, n);
    expect_rejected(st, c, n, ERR_FORMAT, ERR_FORMAT, "version 1", "wrong version");
    memcpy(c, b, n);
    put32(c + 32, 64); /* head_dim */
    reseal(c, n);
    expect_rejected(st, c, n, ERR_FORMAT, ERR_FORMAT, "made for", "wrong shape");

    /* first lane: header 72 + 12 tokens, lane header 8, block header 8, then columns of 4
     * rows: pos, mass, logbeta, shift, first, last (16 bytes each), kind, level (4 each) */
    size_t blk = 72 + 12 * 4 + 8, col = blk + 8;
    memcpy(c, b, n);
    c[col + 6 * 16 + 1] = 9; /* kind of row 1 */
    reseal(c, n);
    expect_rejected(st, c, n, ERR_FORMAT, ERR_FORMAT, "unknown kind", "bad kind");
    memcpy(c, b, n);
    put32(c + col + 4, 0x40a00000u); /* row 1 at position 5 (>= row 2's) */
    put32(c + col + 8, 0x3f800000u); /* row 2 at position 1 */
    reseal(c, n);
    expect_rejected(st, c, n, ERR_FORMAT, ERR_FORMAT, "out of order", "rows out of order");
    memcpy(c, b, n);
    put32(c + col + 16 + 4, 0); /* mass 0 */
    reseal(c, n);
    expect_rejected(st, c, n, ERR_FORMAT, ERR_FORMAT, "mass", "mass 0");
    memcpy(c, b, n);
    put32(c + col + 3 * 16 + 4, 0x7fc00000u); /* row 1's shift: NaN */
    reseal(c, n);
    expect_rejected(st, c, n, ERR_FORMAT, ERR_FORMAT, "model position", "shift NaN");
    memcpy(c, b, n);
    put32(c + 68, 0x41a00000u); /* the session's shift: 20, more than its 12 positions */
    reseal(c, n);
    expect_rejected(st, c, n, ERR_FORMAT, ERR_FORMAT, "shift", "session shift");
    memcpy(c, b, n);
    put32(c + blk, 5); /* block type 5 */
    reseal(c, n);
    expect_rejected(st, c, n, ERR_FORMAT, ERR_FORMAT, "type 5", "bad type");
    memcpy(c, b, n);
    put32(c + blk + 4, 9); /* 9 rows in a 4-row block */
    reseal(c, n);
    expect_rejected(st, c, n, ERR_FORMAT, ERR_FORMAT, "with 9 rows", "too many rows");
    memcpy(c, b, n);
    put32(c + 64, 1u << 30); /* transcript length */
    reseal(c, n);
    expect_rejected(st, c, n, ERR_FORMAT, ERR_FORMAT, "transcript", "huge transcript");

    /* a store of another shape refuses the good file */
    kv_store_t *other = kvt_store(2, 2, 32, 4, DT_F32, 0);
    expect_rejected(other, b, n, ERR_FORMAT, ERR_FORMAT, "made for", "other store");
    kv_store_destroy(&other);
    /* a store without room refuses it too, with the numbers */
    kv_store_t *small = kvt_store(1, 2, 32, 4, DT_F32, 4096);
    expect_rejected(small, b, n, ERR_BUDGET, ERR_BUDGET, "needs", "no room");
    kv_store_destroy(&small);
    free(b);
    free(c);
    kv_store_destroy(&st);
}

int main(void)
{
    RUN(test_round_trip_f32);
    RUN(test_round_trip_f16_acc);
    RUN(test_round_trip_q8_0);
    RUN(test_atomic_write);
    RUN(test_truncated_everywhere);
    RUN(test_flipped_bytes);
    RUN(test_wrong_header_and_contents);
    return check_done();
}
