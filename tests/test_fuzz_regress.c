/*
 * tests/test_fuzz_regress.c — the fuzz targets' checks (fuzz/fuzz.h) on every checked-in
 * seed (fuzz/corpus/<target>/) and every input that once broke something
 * (tests/data/fuzz/<target>/), so the normal, asan, valgrind and tsan builds all replay
 * them; then one test per finding that states the behaviour the fix gave, on inline bytes.
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "fuzz/fuzz.h"
#include "fuzz/replay.h"
#include "kvstore/kvstore.h"
#include "model/gguf.h"
#include "model/gguf_write.h"
#include "tests/check.h"

static void test_replay_gguf(void)
{
    fuzz_replay("fuzz_gguf", fuzz_gguf_one);
}

static void test_replay_gguf_vocab(void)
{
    fuzz_replay("fuzz_gguf_vocab", fuzz_gguf_vocab_one);
}

static void test_replay_tokenizer(void)
{
    fuzz_replay("fuzz_tokenizer", fuzz_tokenizer_one);
}

static void test_replay_snapshot(void)
{
    fuzz_replay("fuzz_snapshot", fuzz_snapshot_one);
}

/* ---- findings ---- */

/* A key holding an f32 array read through gguf_arr_u64 / gguf_arr_i64: the float was cast
 * to an integer type unchecked, undefined for -1.7e38 (found by fuzz_gguf). Out-of-range
 * values now saturate and NaN reads 0. */
static void test_gguf_float_array_as_integer(void)
{
    const float vals[] = {-1.70141e38f, 1e30f, NAN, 3.75f, -2.5f, INFINITY};
    gguf_writer_t *w = NULL;
    uint8_t *buf = NULL;
    size_t len = 0;
    gguf_t *g = NULL;
    err_info_t e;
    CHECK_OK(gguf_writer_new(&w));
    CHECK_OK(gguf_writer_add_arr(w, "x", GGUF_VT_FLOAT32, vals, 6));
    CHECK_OK(gguf_writer_write_mem(w, &buf, &len, &e));
    gguf_writer_destroy(&w);
    CHECK_OK(gguf_open_mem(buf, len, &g, &e));
    if (g) {
        gguf_arr_t a;
        CHECK_OK(gguf_get_arr(g, "x", &a, &e));
        CHECK(gguf_arr_u64(&a, 0) == 0);
        CHECK(gguf_arr_u64(&a, 1) == UINT64_MAX);
        CHECK(gguf_arr_u64(&a, 2) == 0);
        CHECK(gguf_arr_u64(&a, 3) == 3);
        CHECK(gguf_arr_u64(&a, 4) == 0);
        CHECK(gguf_arr_u64(&a, 5) == UINT64_MAX);
        CHECK(gguf_arr_i64(&a, 0) == INT64_MIN);
        CHECK(gguf_arr_i64(&a, 1) == INT64_MAX);
        CHECK(gguf_arr_i64(&a, 2) == 0);
        CHECK(gguf_arr_i64(&a, 3) == 3);
        CHECK(gguf_arr_i64(&a, 4) == -2);
        CHECK(gguf_arr_i64(&a, 5) == INT64_MAX);
    }
    gguf_close(&g);
    free(buf);
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

/* A snapshot whose reserved header word (bytes 68..71, written as 0) was not 0 was restored
 * as if it were, so a file of some later layout would be misread silently; written back it
 * differed from its source (found by fuzz_snapshot). It is now refused with ERR_FORMAT. */
static void test_snapshot_reserved_field(void)
{
    kv_store_config_t cfg = {.n_layer = 1, .n_head_kv = 1, .head_dim = 32, .block_rows = 4};
    kv_store_t *st = NULL;
    err_info_t e;
    uint32_t sid, back = 0;
    CHECK_OK(kv_store_new(&cfg, &st, &e));
    if (!st)
        return;
    CHECK_OK(kv_session_create(st, NULL, &sid, &e));
    char path[512];
    snprintf(path, sizeof path, "%s/reserved.snap", check_tmpdir());
    CHECK_OK(kv_snapshot_write(st, sid, path, &e));
    size_t n = 0;
    uint8_t *buf = fuzz_slurp(path, &n);
    CHECK(buf && n >= 80);
    if (buf && n >= 80) {
        CHECK_OK(kv_snapshot_read(st, path, NULL, &back, &e)); /* as written: fine */
        CHECK_OK(kv_session_destroy(st, back));
        buf[69] = 0x40;
        uint64_t h = fnv1a(buf, n - 8);
        for (int i = 0; i < 8; i++)
            buf[n - 8 + i] = (uint8_t)(h >> (8 * i));
        FILE *f = fopen(path, "wb");
        CHECK(f && fwrite(buf, 1, n, f) == n);
        if (f)
            fclose(f);
        err_clear(&e);
        CHECK_INT(kv_snapshot_read(st, path, NULL, &back, &e), ==, ERR_FORMAT);
        CHECK_MSG(strstr(e.msg, "reserved") != NULL, "message: %s", e.msg);
        CHECK_INT(kv_session_list(st, NULL, 0), ==, 1);
    }
    free(buf);
    kv_store_destroy(&st);
}

int main(void)
{
    RUN(test_replay_gguf);
    RUN(test_replay_gguf_vocab);
    RUN(test_replay_tokenizer);
    RUN(test_replay_snapshot);
    RUN(test_gguf_float_array_as_integer);
    RUN(test_snapshot_reserved_field);
    return check_done();
}
