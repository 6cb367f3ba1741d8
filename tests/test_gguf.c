/*
 * Tests for the GGUF reader (model/gguf.c) and writer (model/gguf_write.c): files written
 * by the writer read back with every value type, nested arrays, v2 and v3, custom
 * alignment; a valid file cut at every byte; the real files under ../shared. The crafted
 * files, one per reject rule, are in test_gguf_reject.c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/gguf.h"
#include "model/gguf_write.h"
#include "tests/check.h"

/* ---- helpers ---- */

static int open_buf(const uint8_t *buf, size_t len, gguf_t **g, err_info_t *e)
{
    err_clear(e);
    return gguf_open_mem(buf, len, g, e);
}

static const float tensor_a[8] = {1, 2, 3, 4, 5, 6, 7, 8};
static const uint16_t tensor_b[3 * 2] = {0x3c00, 0x4000, 0x4200, 0x4400, 0x4500, 0x4600};

/* A writer holding one key of every scalar type, strings, arrays and two tensors. */
static gguf_writer_t *full_writer(uint32_t version, uint32_t alignment)
{
    gguf_writer_t *w = NULL;
    if (gguf_writer_new(&w))
        return NULL;
    gguf_writer_set_version(w, version);
    if (alignment)
        gguf_writer_set_alignment(w, alignment);
    gguf_writer_add_str(w, "general.architecture", "llama");
    gguf_writer_add_u8(w, "t.u8", 200);
    gguf_writer_add_i8(w, "t.i8", -100);
    gguf_writer_add_u16(w, "t.u16", 60000);
    gguf_writer_add_i16(w, "t.i16", -30000);
    gguf_writer_add_u32(w, "t.u32", 4000000000u);
    gguf_writer_add_i32(w, "t.i32", -2000000000);
    gguf_writer_add_u64(w, "t.u64", 18000000000000000000ull);
    gguf_writer_add_i64(w, "t.i64", -9000000000000000000ll);
    gguf_writer_add_f32(w, "t.f32", 0.125f);
    gguf_writer_add_f64(w, "t.f64", -1e300);
    gguf_writer_add_bool(w, "t.bool", true);
    gguf_writer_add_str(w, "t.str", "h\xc3\xa9llo");
    const int32_t ints[4] = {-1, 0, 1, 1 << 30};
    gguf_writer_add_arr(w, "t.arr_i32", GGUF_VT_INT32, ints, 4);
    const float floats[3] = {0.5f, -1.5f, 3.0f};
    gguf_writer_add_arr(w, "t.arr_f32", GGUF_VT_FLOAT32, floats, 3);
    const uint8_t bools[3] = {1, 0, 1};
    gguf_writer_add_arr(w, "t.arr_bool", GGUF_VT_BOOL, bools, 3);
    gguf_writer_add_arr(w, "t.arr_empty", GGUF_VT_UINT64, NULL, 0);
    const char *strs[3] = {"alpha", "", "gamma"};
    gguf_writer_add_arr_str(w, "t.arr_str", strs, 3);
    /* [[1, 2], [], [["x", "yz"]]]: nested arrays of different element types */
    gguf_buf_t b;
    gguf_buf_init(&b);
    gguf_buf_arr_head(&b, GGUF_VT_ARRAY, 3);
    gguf_buf_arr_head(&b, GGUF_VT_UINT16, 2);
    gguf_buf_u16(&b, 1);
    gguf_buf_u16(&b, 2);
    gguf_buf_arr_head(&b, GGUF_VT_UINT8, 0);
    gguf_buf_arr_head(&b, GGUF_VT_ARRAY, 1);
    gguf_buf_arr_head(&b, GGUF_VT_STRING, 2);
    gguf_buf_str(&b, "x");
    gguf_buf_str(&b, "yz");
    gguf_writer_add_raw(w, "t.nested", GGUF_VT_ARRAY, b.p, b.len);
    gguf_buf_fini(&b);
    const uint64_t ne_a[1] = {8}, ne_b[2] = {3, 2};
    gguf_writer_add_tensor(w, "a", GGML_TYPE_F32, 1, ne_a, tensor_a);
    gguf_writer_add_tensor(w, "b.weight", GGML_TYPE_F16, 2, ne_b, tensor_b);
    return w;
}

static uint8_t *full_file(uint32_t version, uint32_t alignment, size_t *len)
{
    gguf_writer_t *w = full_writer(version, alignment);
    uint8_t *buf = NULL;
    err_info_t e;
    if (!w || gguf_writer_write_mem(w, &buf, len, &e))
        buf = NULL;
    gguf_writer_destroy(&w);
    return buf;
}

static void check_full(const gguf_t *g, uint32_t version, uint32_t alignment)
{
    err_info_t e;
    uint32_t u32;
    uint64_t u64;
    int64_t i64;
    float f;
    bool b;
    gguf_str_t s;
    gguf_arr_t a;

    CHECK_INT(gguf_version(g), ==, version);
    CHECK_INT(gguf_alignment(g), ==, alignment);
    CHECK_INT(gguf_data_offset(g) % alignment, ==, 0);
    CHECK_INT(gguf_kv_count(g), ==, 19 + (alignment != 32));
    CHECK_OK(gguf_get_u32(g, "t.u8", &u32, &e));
    CHECK_INT(u32, ==, 200);
    CHECK_OK(gguf_get_i64(g, "t.i8", &i64, &e));
    CHECK_INT(i64, ==, -100);
    CHECK_OK(gguf_get_u32(g, "t.u16", &u32, &e));
    CHECK_INT(u32, ==, 60000);
    CHECK_OK(gguf_get_i64(g, "t.i16", &i64, &e));
    CHECK_INT(i64, ==, -30000);
    CHECK_OK(gguf_get_u32(g, "t.u32", &u32, &e));
    CHECK(u32 == 4000000000u);
    CHECK_OK(gguf_get_i64(g, "t.i32", &i64, &e));
    CHECK_INT(i64, ==, -2000000000);
    CHECK_OK(gguf_get_u64(g, "t.u64", &u64, &e));
    CHECK(u64 == 18000000000000000000ull);
    CHECK_OK(gguf_get_i64(g, "t.i64", &i64, &e));
    CHECK(i64 == -9000000000000000000ll);
    CHECK_OK(gguf_get_f32(g, "t.f32", &f, &e));
    CHECK_NEAR(f, 0.125, 0);
    CHECK(gguf_kv_find(g, "t.f64")->v.f64 == -1e300);
    CHECK_OK(gguf_get_bool(g, "t.bool", &b, &e));
    CHECK(b);
    CHECK_OK(gguf_get_str(g, "t.str", &s, &e));
    CHECK(gguf_str_eq(s, "h\xc3\xa9llo"));

    CHECK_OK(gguf_get_arr(g, "t.arr_i32", &a, &e));
    CHECK_INT(a.elem_type, ==, GGUF_VT_INT32);
    CHECK_INT(a.n, ==, 4);
    CHECK_INT(gguf_arr_i64(&a, 0), ==, -1);
    CHECK_INT(gguf_arr_i64(&a, 3), ==, 1 << 30);
    CHECK_OK(gguf_get_arr(g, "t.arr_f32", &a, &e));
    CHECK_NEAR(gguf_arr_f64(&a, 1), -1.5, 0);
    CHECK_OK(gguf_get_arr(g, "t.arr_bool", &a, &e));
    CHECK_INT(gguf_arr_u64(&a, 0) + gguf_arr_u64(&a, 1) * 2 + gguf_arr_u64(&a, 2) * 4, ==, 5);
    CHECK_OK(gguf_get_arr(g, "t.arr_empty", &a, &e));
    CHECK_INT(a.n, ==, 0);
    CHECK_OK(gguf_get_arr(g, "t.arr_str", &a, &e));
    CHECK_INT(a.n, ==, 3);
    CHECK(gguf_str_eq(gguf_arr_str(&a, 0), "alpha"));
    CHECK(gguf_str_eq(gguf_arr_str(&a, 1), ""));
    CHECK(gguf_str_eq(gguf_arr_str(&a, 2), "gamma"));
    gguf_str_t *tab = NULL;
    CHECK_OK(gguf_arr_strs(&a, &tab));
    CHECK(tab && gguf_str_eq(tab[2], "gamma") && tab[1].len == 0);
    free(tab);

    CHECK_OK(gguf_get_arr(g, "t.nested", &a, &e));
    CHECK_INT(a.elem_type, ==, GGUF_VT_ARRAY);
    CHECK_INT(a.n, ==, 3);
    gguf_arr_t s0 = gguf_arr_sub(&a, 0), s1 = gguf_arr_sub(&a, 1), s2 = gguf_arr_sub(&a, 2);
    CHECK_INT(s0.elem_type, ==, GGUF_VT_UINT16);
    CHECK_INT(s0.n, ==, 2);
    CHECK_INT(gguf_arr_u64(&s0, 1), ==, 2);
    CHECK_INT(s1.n, ==, 0);
    CHECK_INT(s2.n, ==, 1);
    gguf_arr_t s20 = gguf_arr_sub(&s2, 0);
    CHECK_INT(s20.elem_type, ==, GGUF_VT_STRING);
    CHECK(gguf_str_eq(gguf_arr_str(&s20, 1), "yz"));
    CHECK(s2.end == a.end);

    CHECK_INT(gguf_tensor_count(g), ==, 2);
    const gguf_tensor_t *t = gguf_tensor_find(g, "a");
    CHECK(t != NULL);
    if (t) {
        CHECK_INT(t->n_dims, ==, 1);
        CHECK_INT(t->type, ==, GGML_TYPE_F32);
        CHECK_INT(t->nbytes, ==, 32);
        CHECK(memcmp(t->data, tensor_a, 32) == 0);
    }
    t = gguf_tensor_find(g, "b.weight");
    CHECK(t != NULL);
    if (t) {
        CHECK_INT(t->n_dims, ==, 2);
        CHECK_INT(t->ne[0], ==, 3);
        CHECK_INT(t->ne[1], ==, 2);
        CHECK_INT(t->ne[2], ==, 1);
        CHECK_INT(t->n_elems, ==, 6);
        CHECK_INT(t->nbytes, ==, 12);
        CHECK_INT(t->offset % alignment, ==, 0);
        CHECK(memcmp(t->data, tensor_b, 12) == 0);
        CHECK(t == gguf_tensor_at(g, 1));
    }
    CHECK(gguf_tensor_find(g, "b") == NULL);
    CHECK(gguf_kv_find(g, "t.u") == NULL);
}

/* ---- valid files ---- */

static void test_round_trip_v3(void)
{
    size_t len;
    uint8_t *buf = full_file(3, 0, &len);
    CHECK(buf != NULL);
    gguf_t *g = NULL;
    err_info_t e;
    int rc = open_buf(buf, len, &g, &e);
    CHECK_MSG(rc == 0, "open: %s", e.msg);
    if (g)
        check_full(g, 3, 32);
    gguf_close(&g);
    CHECK(g == NULL);
    gguf_close(&g); /* NULL-safe */
    free(buf);
}

static void test_round_trip_v2_and_alignment(void)
{
    const uint32_t aligns[] = {1, 8, 64, 4096};
    for (int i = 0; i < 4; i++) {
        size_t len;
        uint8_t *buf = full_file(2, aligns[i], &len);
        gguf_t *g = NULL;
        err_info_t e;
        CHECK_MSG(open_buf(buf, len, &g, &e) == 0, "alignment %u: %s", aligns[i], e.msg);
        if (g)
            check_full(g, 2, aligns[i]);
        gguf_close(&g);
        free(buf);
    }
}

static void test_open_file(void)
{
    char path[512];
    snprintf(path, sizeof path, "%s/full.gguf", check_tmpdir());
    gguf_writer_t *w = full_writer(3, 0);
    err_info_t e;
    CHECK_OK(gguf_writer_write(w, path, &e));
    gguf_writer_destroy(&w);
    CHECK(w == NULL);
    gguf_t *g = NULL;
    CHECK_OK(gguf_open(path, &g, &e));
    if (g) {
        check_full(g, 3, 32);
        FILE *f = fopen(path, "rb");
        fseek(f, 0, SEEK_END);
        CHECK_INT(gguf_file_size(g), ==, ftell(f));
        fclose(f);
    }
    gguf_close(&g);

    /* the writer's file and its memory image are the same bytes */
    size_t len;
    uint8_t *buf = full_file(3, 0, &len);
    FILE *f = fopen(path, "rb");
    uint8_t *disk = malloc(len + 1);
    size_t got = fread(disk, 1, len + 1, f);
    fclose(f);
    CHECK_INT(got, ==, len);
    CHECK(memcmp(disk, buf, len) == 0);
    free(disk);
    free(buf);

    snprintf(path, sizeof path, "%s/does-not-exist.gguf", check_tmpdir());
    CHECK_INT(gguf_open(path, &g, &e), ==, ERR_IO);
    CHECK(strstr(e.msg, "cannot open") != NULL);
    CHECK_INT(gguf_open(check_tmpdir(), &g, &e), ==, ERR_IO);
    snprintf(path, sizeof path, "%s/empty.gguf", check_tmpdir());
    fclose(fopen(path, "wb"));
    CHECK_INT(gguf_open(path, &g, &e), ==, ERR_FORMAT);
    CHECK(strstr(e.msg, "too short") != NULL);
}

static void test_getter_errors(void)
{
    size_t len;
    uint8_t *buf = full_file(3, 0, &len);
    gguf_t *g = NULL;
    err_info_t e;
    CHECK_OK(open_buf(buf, len, &g, &e));
    if (!g) {
        free(buf);
        return;
    }
    uint32_t u32 = 7;
    uint64_t u64;
    int64_t i64;
    float f;
    bool b;
    gguf_str_t s;
    gguf_arr_t a;
    CHECK_INT(gguf_get_u32(g, "no.such", &u32, &e), ==, ERR_NOTFOUND);
    CHECK_STR(e.msg, "missing key no.such");
    CHECK_INT(u32, ==, 7);
    CHECK_INT(gguf_get_u32(g, "t.u64", &u32, &e), ==, ERR_FORMAT);
    CHECK(strstr(e.msg, "does not fit in u32") != NULL);
    CHECK_INT(gguf_get_u32(g, "t.i8", &u32, &e), ==, ERR_FORMAT); /* negative */
    CHECK_INT(gguf_get_u64(g, "t.str", &u64, &e), ==, ERR_FORMAT);
    CHECK(strstr(e.msg, "key 't.str' has type string") != NULL);
    CHECK_INT(gguf_get_i64(g, "t.u64", &i64, &e), ==, ERR_FORMAT);
    CHECK_OK(gguf_get_f32(g, "t.u16", &f, &e));
    CHECK_NEAR(f, 60000, 0);
    CHECK_INT(gguf_get_f32(g, "t.str", &f, &e), ==, ERR_FORMAT);
    CHECK_INT(gguf_get_bool(g, "t.u8", &b, &e), ==, ERR_FORMAT);
    CHECK_INT(gguf_get_str(g, "t.u8", &s, &e), ==, ERR_FORMAT);
    CHECK_INT(gguf_get_arr(g, "t.str", &a, &e), ==, ERR_FORMAT);
    CHECK_OK(gguf_get_u32_or(g, "no.such", 17, &u32, &e));
    CHECK_INT(u32, ==, 17);
    CHECK_INT(gguf_get_u32_or(g, "t.str", 17, &u32, &e), ==, ERR_FORMAT);
    CHECK_OK(gguf_get_f32_or(g, "no.such", 2.5f, &f, &e));
    CHECK_NEAR(f, 2.5, 0);
    CHECK_OK(gguf_get_bool_or(g, "t.bool", false, &b, &e));
    CHECK(b);
    CHECK_INT(gguf_arr_strs(&gguf_kv_find(g, "t.arr_i32")->v.arr, &(gguf_str_t *){NULL}), ==,
              ERR_INVAL);
    CHECK_STR(gguf_vtype_name(GGUF_VT_FLOAT64), "f64");
    CHECK_STR(gguf_vtype_name(99), "unknown");
    CHECK_STR(ggml_type_get(GGML_TYPE_Q8_0)->name, "q8_0");
    CHECK(ggml_type_get(4) == NULL);
    CHECK_INT(ggml_row_bytes(GGML_TYPE_Q8_0, 64), ==, 68);
    CHECK_INT(ggml_row_bytes(GGML_TYPE_Q8_0, 65), ==, 0);
    CHECK_INT(ggml_row_bytes(GGML_TYPE_BF16, 5), ==, 10);
    gguf_close(&g);
    free(buf);
}

/* Cutting a valid file anywhere before the end of its last tensor's data must fail
 * cleanly (no crash, no read past the cut: run under `make asan`). */
static void test_truncation_every_byte(void)
{
    size_t len;
    uint8_t *buf = full_file(3, 0, &len);
    gguf_t *g = NULL;
    err_info_t e;
    CHECK_OK(open_buf(buf, len, &g, &e));
    if (!g) {
        free(buf);
        return;
    }
    uint64_t end = 0;
    for (uint64_t i = 0; i < gguf_tensor_count(g); i++) {
        const gguf_tensor_t *t = gguf_tensor_at(g, i);
        uint64_t te = gguf_data_offset(g) + t->offset + t->nbytes;
        end = te > end ? te : end;
    }
    gguf_close(&g);
    int bad = 0;
    for (size_t cut = 0; cut < end; cut++) {
        /* a fresh heap copy of exactly `cut` bytes, so ASan sees any over-read */
        uint8_t *part = malloc(cut ? cut : 1);
        memcpy(part, buf, cut);
        int rc = open_buf(part, cut, &g, &e);
        if (rc != ERR_FORMAT || g != NULL || e.msg[0] == '\0') {
            bad++;
            gguf_close(&g);
        }
        free(part);
    }
    CHECK_INT(bad, ==, 0);
    for (size_t cut = end; cut <= len; cut++) { /* only trailing padding is gone */
        CHECK_OK(open_buf(buf, cut, &g, &e));
        gguf_close(&g);
    }
    free(buf);
}

/* ---- the shared real files ---- */

static void test_stories260k(void)
{
    const char *path = check_shared_or_skip("models/stories260K-f32.gguf");
    if (!path)
        return;
    gguf_t *g = NULL;
    err_info_t e;
    CHECK_MSG(gguf_open(path, &g, &e) == 0, "%s", e.msg);
    if (!g)
        return;
    uint32_t v;
    gguf_str_t s;
    CHECK_INT(gguf_version(g), ==, 3);
    CHECK_OK(gguf_get_str(g, "general.architecture", &s, &e));
    CHECK(gguf_str_eq(s, "llama"));
    CHECK_OK(gguf_get_u32(g, "llama.block_count", &v, &e));
    CHECK_INT(v, ==, 5);
    CHECK_OK(gguf_get_u32(g, "llama.embedding_length", &v, &e));
    CHECK_INT(v, ==, 64);
    CHECK_OK(gguf_get_u32(g, "llama.attention.head_count", &v, &e));
    CHECK_INT(v, ==, 8);
    CHECK_OK(gguf_get_u32(g, "llama.attention.head_count_kv", &v, &e));
    CHECK_INT(v, ==, 4);
    CHECK_OK(gguf_get_u32(g, "llama.feed_forward_length", &v, &e));
    CHECK_INT(v, ==, 172);
    gguf_arr_t toks;
    CHECK_OK(gguf_get_arr(g, "tokenizer.ggml.tokens", &toks, &e));
    CHECK_INT(toks.n, ==, 512);
    CHECK(gguf_str_eq(gguf_arr_str(&toks, 0), "<unk>"));
    const gguf_tensor_t *t = gguf_tensor_find(g, "token_embd.weight");
    CHECK(t != NULL);
    if (t) {
        CHECK_INT(t->type, ==, GGML_TYPE_F32);
        CHECK_INT(t->ne[0], ==, 64);
        CHECK_INT(t->ne[1], ==, 512);
    }
    t = gguf_tensor_find(g, "blk.4.ffn_down.weight");
    CHECK(t != NULL);
    if (t) {
        CHECK_INT(t->ne[0], ==, 172);
        CHECK_INT(t->ne[1], ==, 64);
    }
    CHECK(gguf_tensor_find(g, "blk.5.ffn_down.weight") == NULL);
    /* every tensor lies inside the file (the reader checked; check its arithmetic) */
    for (uint64_t i = 0; i < gguf_tensor_count(g); i++) {
        t = gguf_tensor_at(g, i);
        CHECK(gguf_data_offset(g) + t->offset + t->nbytes <= gguf_file_size(g));
        CHECK_INT(t->nbytes, ==, t->n_elems * 4);
    }
    gguf_close(&g);
}

static void test_shared_vocabs(void)
{
    static const struct {
        const char *rel, *model;
        uint64_t n;
    } files[] = {{"vocab/ggml-vocab-llama-spm.gguf", "llama", 32000},
                 {"vocab/ggml-vocab-gpt-2.gguf", "gpt2", 50257}};
    for (int i = 0; i < 2; i++) {
        const char *path = check_shared_or_skip(files[i].rel);
        if (!path)
            continue;
        gguf_t *g = NULL;
        err_info_t e;
        CHECK_MSG(gguf_open(path, &g, &e) == 0, "%s: %s", files[i].rel, e.msg);
        if (!g)
            continue;
        gguf_str_t s;
        gguf_arr_t a;
        CHECK_OK(gguf_get_str(g, "tokenizer.ggml.model", &s, &e));
        CHECK(gguf_str_eq(s, files[i].model));
        CHECK_OK(gguf_get_arr(g, "tokenizer.ggml.tokens", &a, &e));
        CHECK_INT(a.n, ==, files[i].n);
        gguf_str_t *tab = NULL;
        CHECK_OK(gguf_arr_strs(&a, &tab));
        if (tab) { /* the table and the walk agree */
            gguf_str_t last = gguf_arr_str(&a, a.n - 1);
            CHECK(tab[a.n - 1].ptr == last.ptr && tab[a.n - 1].len == last.len);
            CHECK((const uint8_t *)last.ptr + last.len == a.end);
        }
        free(tab);
        gguf_close(&g);
    }
}

int main(void)
{
    RUN(test_round_trip_v3);
    RUN(test_round_trip_v2_and_alignment);
    RUN(test_open_file);
    RUN(test_getter_errors);
    RUN(test_truncation_every_byte);
    RUN(test_stories260k);
    RUN(test_shared_vocabs);
    return check_done();
}
