/*
 * Allocation failure injection for the kvstore (SQLite test_malloc style): a scripted run
 * of every verb is repeated with the Nth allocation made to fail, for N = 0, 1, 2, ...
 * until a run needs fewer than N allocations. Each failed call must answer ERR_NOMEM with a
 * message, leave the store exactly as it was (captured state, kv_store_check, jemalloc's
 * figures), and then succeed when retried. After every run the arena holds nothing but the
 * store's own tables, and (under `make asan`) no scratch memory leaks. The O(1) byte figures
 * (kv_session_bytes, kv_store_bytes) equal the walked ones after every failure and at the end.
 */
#include <string.h>
#include <unistd.h>

#include "tests/test_kvstore_util.h"

typedef struct run {
    kv_store_t *st;
    kvt_fault_t f;
    int failures; /* calls that failed (once each) */
    bool bad;
} run_t;

/* Runs `call` (an expression giving an int code, using err_info_t e); if it fails it must be
 * ERR_NOMEM, change nothing, and succeed when run again. */
#define STEP(r, call)                                                                              \
    do {                                                                                           \
        kvt_capture_t b_ = {0}, a_ = {0};                                                          \
        kvt_capture_store((r)->st, &b_);                                                           \
        err_info_t e;                                                                              \
        err_clear(&e);                                                                             \
        int rc_ = (call);                                                                          \
        if (rc_ != 0) {                                                                            \
            (r)->failures++;                                                                       \
            CHECK_MSG(rc_ == ERR_NOMEM && e.msg[0], "%s at N=%ld: %d \"%s\"", #call, (r)->f.n,     \
                      rc_, e.msg);                                                                 \
            kvt_capture_store((r)->st, &a_);                                                       \
            CHECK_MSG(kvt_capture_equal(&b_, &a_), "%s at N=%ld changed the store", #call,         \
                      (r)->f.n);                                                                   \
            KVT_CHECK_STORE((r)->st);                                                              \
            err_clear(&e);                                                                         \
            rc_ = (call);                                                                          \
        }                                                                                          \
        CHECK_MSG(rc_ == 0, "%s at N=%ld: retry gave %d \"%s\"", #call, (r)->f.n, rc_, e.msg);     \
        if (rc_ != 0)                                                                              \
            (r)->bad = true;                                                                       \
        kvt_capture_free(&b_);                                                                     \
        kvt_capture_free(&a_);                                                                     \
    } while (0)

static int gist(kv_store_t *st, uint32_t sid, float p0, float p1, uint32_t rows, err_info_t *e)
{
    uint32_t hd = kv_head_dim(st);
    float k[4 * 64], v[4 * 64];
    kv_row_meta_t m[4];
    for (uint32_t j = 0; j < rows; j++) {
        m[j] = (kv_row_meta_t){.pos = p0 + (p1 - p0) * (float)j / 4.0f,
                               .mass = 2.5f,
                               .first = (uint32_t)p0,
                               .last = (uint32_t)p1,
                               .kind = 2,
                               .level = 1};
        for (uint32_t d = 0; d < hd; d++) {
            k[j * hd + d] = kvt_val(3, j, 0, d);
            v[j * hd + d] = kvt_val(4, j, 0, d);
        }
    }
    return kvt_replace_same(st, sid, p0, p1, rows, k, v, m, e);
}

static int expand(kv_store_t *st, uint32_t sid, uint32_t a, uint32_t b, err_info_t *e)
{
    uint32_t hd = kv_head_dim(st), n = b - a + 1;
    float *k = calloc((size_t)n * hd, sizeof *k), *v = calloc((size_t)n * hd, sizeof *v);
    kv_row_meta_t *m = calloc(n, sizeof *m);
    for (uint32_t j = 0; j < n; j++)
        m[j] = (kv_row_meta_t){.pos = (float)(a + j), .mass = 1.0f, .first = a + j, .last = a + j};
    int rc = kvt_replace_same(st, sid, (float)a, (float)b, n, k, v, m, e);
    free(k);
    free(v);
    free(m);
    return rc;
}

static int fork_evict(kv_store_t *st, uint32_t sid, uint32_t *child, err_info_t *e)
{
    return kv_session_fork(st, sid, NULL, child, e);
}

/* The scripted run: every verb that allocates, each as a STEP. */
static void scenario(run_t *r, const char *snap)
{
    kv_store_config_t cfg = {.n_layer = 2,
                             .n_head_kv = 2,
                             .head_dim = 32,
                             .block_rows = 4,
                             .hot_type = DT_F16,
                             .hook = {.fail = kvt_fail_nth, .ctx = &r->f}};
    err_info_t e0;
    int rc = kv_store_new(&cfg, &r->st, &e0);
    if (rc) {
        CHECK_MSG(rc == ERR_NOMEM && r->st == NULL, "store at N=%ld: %d", r->f.n, rc);
        r->failures++;
        CHECK_OK(kv_store_new(&cfg, &r->st, &e0));
    }
    kv_session_config_t acc = {.attn_acc = true}, lim = {.hard_limit = 1u << 20};
    uint32_t a = 0, b = 0, c = 0, d = 0;
    STEP(r, kv_session_create(r->st, &acc, &a, &e));
    STEP(r, kv_session_create(r->st, &lim, &b, &e));
    for (uint32_t i = 0; i < 5; i++)
        STEP(r, kvt_append(r->st, a, 9, 100 * i, 17, &e));
    STEP(r, kvt_append(r->st, b, 11, 0, 18, &e));
    STEP(r, gist(r->st, a, 4.0f, 13.0f, 2, &e));
    STEP(r, expand(r->st, a, 20, 26, &e));
    uint32_t ev[] = {1, 2, 9, 10, 11, 20};
    STEP(r, kv_lane_evict(r->st, a, 1, 0, ev, 6, &e));
    uint32_t dm[] = {3, 4, 5, 12, 13};
    STEP(r, kv_lane_demote(r->st, a, 0, 1, dm, 5, &e));
    STEP(r, kv_span_demote(r->st, a, 0.0f, 30.0f, &e));
    STEP(r, fork_evict(r->st, a, &c, &e));
    STEP(r, kv_lane_evict(r->st, c, 0, 0, ev, 3, &e)); /* copies shared blocks */
    STEP(r, gist(r->st, c, 30.0f, 40.0f, 3, &e));
    STEP(r, kvt_append(r->st, c, 6, 7, 19, &e));
    STEP(r, kv_session_set_attn_acc(r->st, c, false, &e));
    STEP(r, kv_session_set_attn_acc(r->st, c, true, &e));
    STEP(r, kv_snapshot_write(r->st, a, snap, &e));
    STEP(r, kv_snapshot_read(r->st, snap, NULL, &d, &e));
    STEP(r, kvt_append(r->st, d, 3, 0, 20, &e));
    STEP(r, kv_session_destroy(r->st, b));
    STEP(r, kv_session_destroy(r->st, a));
    STEP(r, kvt_append(r->st, c, 40, 0, 21, &e));
    KVT_CHECK_STORE(r->st);
    STEP(r, kv_session_destroy(r->st, c));
    STEP(r, kv_session_destroy(r->st, d));
    kv_stats_t s;
    kv_store_stats(r->st, &s);
    CHECK_MSG(s.bytes == s.overhead_bytes && s.je_allocated == s.bytes,
              "N=%ld: %zu bytes left (overhead %zu, jemalloc %zu)", r->f.n, s.bytes,
              s.overhead_bytes, s.je_allocated);
    kv_store_destroy(&r->st);
}

static void test_nth_allocation_fails(void)
{
    /* hundreds of snapshot writes: on tmpfs their fsyncs cost nothing */
    char snap[512];
    snprintf(snap, sizeof snap, "/dev/shm/gistd-kvstore-faults-%d.kvs", (int)getpid());
    if (access("/dev/shm", W_OK) != 0)
        snprintf(snap, sizeof snap, "%s/faults.kvs", check_tmpdir());
    run_t clean = {.f = {.n = -1}};
    scenario(&clean, snap);
    long total = clean.f.count;
    CHECK(total > 100);
    long n = 0;
    for (; n <= total && !check_failed(); n++) {
        run_t r = {.f = {.n = n}};
        scenario(&r, snap);
        CHECK_MSG(r.f.fired == (r.failures == 1), "N=%ld: fired %d, %d failures", n, r.f.fired,
                  r.failures);
        if (r.bad)
            break;
    }
    unlink(snap);
    printf("# %ld allocations in a run, each made to fail once\n", total);
    CHECK_INT(n, ==, total + 1);
}

int main(void)
{
    RUN(test_nth_allocation_fails);
    return check_done();
}
