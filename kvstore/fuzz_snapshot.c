/*
 * kvstore/fuzz_snapshot.c — libFuzzer target: kv_snapshot_read on arbitrary bytes (see
 * fuzz/fuzz.h for how targets are built and replayed).
 *
 * Input: one byte of flags, then the file. Flag 1 writes the file's length into the header's
 * size field and flag 2 recomputes the trailing FNV-1a checksum, so that mutations reach the
 * parts behind those checks; flag 4 restores with limits given by the caller instead of the
 * file's. The store is made for the shape the header names when that shape is small (1..4
 * layers, 1..4 kv-heads, head_dim 8, 32 or 64, 1..64-row blocks, f32 or f16 rows), else a
 * default one that refuses it. Stores are kept, a few shapes at a time, and every input
 * leaves its store as it found it (no session, the same bytes): jemalloc 5.3 keeps about
 * 4 KiB resident for every arena created and destroyed, which one store per input would
 * pile up. The file reaches kv_snapshot_read through a memfd (/proc/self/fd/N).
 *
 * Properties checked for any input: a refusal has a code from the table and a message, and
 * leaves the store as it was (kv_store_check, same bytes, no session); a restored session
 * passes kv_store_check, every lane can be viewed and read, and written back out it gives
 * the same bytes as the input (restores are bit-identical); destroying it returns the store
 * to empty.
 */
#include <fcntl.h>
#include <stdbool.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/dtype.h"
#include "fuzz/fuzz.h"
#include "kvstore/kvstore.h"

#define HEADER 72u /* kvstore/snapshot.c's header size */

/* The memfd the input is written to, and a folder for write-backs: made on the first input
 * and kept for the life of the process. */
static int memfd = -1;
static char outdir[64];

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void wr64(uint8_t *p, uint64_t x)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(x >> (8 * i));
}

static uint64_t fnv1a(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static void remove_outdir(void)
{
    if (outdir[0])
        rmdir(outdir);
}

static bool setup(void)
{
    if (memfd >= 0)
        return true;
    /* on /dev/shm when there is one: a write-back's fsync then costs nothing */
    const char *tmp = getenv("TMPDIR");
    struct stat shm;
    if (!tmp || strlen(tmp) >= 40)
        tmp = stat("/dev/shm", &shm) == 0 && S_ISDIR(shm.st_mode) ? "/dev/shm" : "/tmp";
    snprintf(outdir, sizeof outdir, "%s/gistd-fuzz-XXXXXX", tmp);
    if (!mkdtemp(outdir)) {
        outdir[0] = '\0';
        return false;
    }
    atexit(remove_outdir);
    memfd = memfd_create("snapshot", MFD_CLOEXEC);
    return memfd >= 0;
}

/* Stores kept by shape, the least recently used replaced when all are taken. */
#define N_STORES 16
static struct {
    kv_store_config_t cfg;
    kv_store_t *st;
    uint64_t used;
} stores[N_STORES];
static uint64_t clock_;

/* The store for the header's shape, when it is one of the small ones. */
static kv_store_t *get_store(const uint8_t *file, size_t n)
{
    kv_store_config_t cfg = {.n_layer = 1, .n_head_kv = 1, .head_dim = 32, .block_rows = 4};
    if (n >= HEADER) {
        uint32_t nl = rd32(file + 24), nh = rd32(file + 28), hd = rd32(file + 32),
                 br = rd32(file + 36), hot = rd32(file + 40);
        if (nl >= 1 && nl <= 4 && nh >= 1 && nh <= 4 && (hd == 8 || hd == 32 || hd == 64) &&
            br >= 1 && br <= 64 && (hot == DT_F32 || hot == DT_F16)) {
            cfg.n_layer = nl;
            cfg.n_head_kv = nh;
            cfg.head_dim = hd;
            cfg.block_rows = br;
            cfg.hot_type = hot;
        }
    }
    int lru = 0;
    for (int i = 0; i < N_STORES; i++) {
        const kv_store_config_t *c = &stores[i].cfg;
        if (stores[i].st && c->n_layer == cfg.n_layer && c->n_head_kv == cfg.n_head_kv &&
            c->head_dim == cfg.head_dim && c->block_rows == cfg.block_rows &&
            c->hot_type == cfg.hot_type) {
            stores[i].used = ++clock_;
            return stores[i].st;
        }
        if (stores[i].used < stores[lru].used)
            lru = i;
    }
    kv_store_destroy(&stores[lru].st);
    err_info_t e;
    if (kv_store_new(&cfg, &stores[lru].st, &e) != 0)
        return NULL;
    stores[lru].cfg = cfg;
    stores[lru].used = ++clock_;
    return stores[lru].st;
}

static bool put_file(const uint8_t *p, size_t n)
{
    if (ftruncate(memfd, 0) != 0)
        return false;
    size_t done = 0;
    while (done < n) {
        ssize_t k = pwrite(memfd, p + done, n - done, (off_t)done);
        if (k <= 0)
            return false;
        done += (size_t)k;
    }
    return true;
}

static int check_store(kv_store_t *st, const char *when, char *why, size_t cap)
{
    err_info_t e;
    err_clear(&e);
    if (kv_store_check(st, &e) != 0)
        return fuzz_fail(why, cap, "kv_store_check %s: %s", when, e.msg);
    return 0;
}

/* Every lane viewed and read whole. */
static int read_lanes(kv_store_t *st, uint32_t sid, char *why, size_t cap)
{
    const kv_store_config_t *c = kv_store_config(st);
    uint32_t hd = kv_head_dim(st);
    for (uint32_t l = 0; l < c->n_layer; l++)
        for (uint32_t h = 0; h < c->n_head_kv; h++) {
            uint32_t rows = 0, nc = 0, got = 0;
            if (kv_lane_size(st, sid, l, h, &rows, &nc) != 0)
                return fuzz_fail(why, cap, "kv_lane_size(%u, %u) failed", l, h);
            kv_chunk_t *ch = malloc((nc ? nc : 1) * sizeof *ch);
            kv_row_meta_t *m = malloc((rows ? rows : 1) * sizeof *m);
            float *k = malloc(((size_t)rows * hd + 1) * sizeof *k);
            float *v = malloc(((size_t)rows * hd + 1) * sizeof *v);
            int rc = 0;
            if (!ch || !m || !k || !v)
                rc = 0;
            else if (kv_lane_view(st, sid, l, h, ch, nc, &got) != 0 || got != nc)
                rc = fuzz_fail(why, cap, "kv_lane_view(%u, %u) failed", l, h);
            else if (kv_lane_read(st, sid, l, h, 0, rows, m, k, v) != 0)
                rc = fuzz_fail(why, cap, "kv_lane_read(%u, %u) failed", l, h);
            uint32_t sum = 0;
            for (uint32_t i = 0; !rc && ch && i < got; i++)
                sum += ch[i].n;
            if (!rc && ch && m && k && v && sum != rows)
                rc = fuzz_fail(why, cap, "lane (%u, %u): chunks hold %u rows of %u", l, h, sum,
                               rows);
            free(ch);
            free(m);
            free(k);
            free(v);
            if (rc)
                return rc;
        }
    return 0;
}

/* Writes the session back and compares it with the file it came from. */
static int write_back(kv_store_t *st, uint32_t sid, const uint8_t *file, size_t n, char *why,
                      size_t cap)
{
    char path[128];
    snprintf(path, sizeof path, "%s/back.snap", outdir);
    err_info_t e;
    err_clear(&e);
    if (kv_snapshot_write(st, sid, path, &e) != 0)
        return fuzz_fail(why, cap, "writing the restored session back failed: %s", e.msg);
    FILE *f = fopen(path, "rb");
    uint8_t *back = malloc(n + 1);
    size_t got = f && back ? fread(back, 1, n + 1, f) : 0;
    if (f)
        fclose(f);
    unlink(path);
    int rc = 0;
    if (back && (got != n || memcmp(back, file, n) != 0)) {
        size_t at = 0;
        while (at < n && at < got && back[at] == file[at])
            at++;
        rc = fuzz_fail(why, cap, "written back: %zu bytes for %zu, first difference at %zu", got, n,
                       at);
    }
    free(back);
    return rc;
}

int fuzz_snapshot_one(const uint8_t *data, size_t size, char *why, size_t cap)
{
    if (cap)
        why[0] = '\0';
    if (size < 1)
        return 0;
    if (!setup())
        return fuzz_fail(why, cap, "no memfd or temporary folder");
    uint8_t flags = data[0];
    size_t n = size - 1;
    uint8_t *file = malloc(n ? n : 1);
    if (!file)
        return 0;
    if (n)
        memcpy(file, data + 1, n);
    if ((flags & 1) && n >= 24)
        wr64(file + 16, n);
    if ((flags & 2) && n >= HEADER + 8)
        wr64(file + n - 8, fnv1a(file, n - 8));

    kv_store_t *st = get_store(file, n);
    if (!st || !put_file(file, n)) {
        free(file);
        return 0; /* out of memory or descriptors: nothing to check */
    }
    /* the baseline: the store once a session has come and gone (its session table stays) */
    kv_stats_t before, after;
    uint32_t sid = UINT32_MAX;
    err_info_t e;
    if (kv_session_create(st, NULL, &sid, &e) == 0)
        kv_session_destroy(st, sid);
    kv_store_stats(st, &before);
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", memfd);
    kv_session_config_t mine = {.hard_limit = 1u << 20, .soft_limit = 1u << 19, .attn_acc = true};
    sid = UINT32_MAX;
    err_clear(&e);
    int rc = kv_snapshot_read(st, path, (flags & 4) ? &mine : NULL, &sid, &e);
    int bad = 0;
    if (rc) {
        kv_store_stats(st, &after);
        if (rc > 0 || e.code != rc || !e.msg[0] || !strcmp(err_str(rc), "unknown error"))
            bad = fuzz_fail(why, cap, "refused with code %d, message '%s'", rc, e.msg);
        else if (after.sessions != 0 || after.bytes != before.bytes)
            bad = fuzz_fail(why, cap, "a refused restore left %u sessions, %zu bytes (was %zu)",
                            after.sessions, after.bytes, before.bytes);
        else
            bad = check_store(st, "after a refused restore", why, cap);
    } else {
        bad = check_store(st, "after a restore", why, cap);
        if (!bad)
            bad = read_lanes(st, sid, why, cap);
        if (!bad && !(flags & 4))
            bad = write_back(st, sid, file, n, why, cap);
        if (kv_session_destroy(st, sid) != 0 && !bad)
            bad = fuzz_fail(why, cap, "kv_session_destroy of the restored session failed");
        kv_store_stats(st, &after);
        if (!bad && (after.sessions != 0 || after.bytes != before.bytes))
            bad = fuzz_fail(why, cap, "after destroying it: %u sessions, %zu bytes (was %zu)",
                            after.sessions, after.bytes, before.bytes);
        if (!bad)
            bad = check_store(st, "after destroying the restored session", why, cap);
    }
    free(file);
    return bad;
}

FUZZ_ENTRY(fuzz_snapshot_one)
