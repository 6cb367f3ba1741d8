/*
 * Tests for the GGUF reader (model/gguf.c) and writer (model/gguf_write.c): files written
 * by the writer read back with every value type, nested arrays, v2 and v3, custom
 * alignment; the real files under ../shared; and crafted files, one per reject rule, each
 * checking the error code and a piece of the message.
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

/* Expects buf to be rejected with code and a message containing piece. */
#define CHECK_REJECT(buf, len, code, piece)                                                  \
    do {                                                                                     \
        gguf_t *g_ = NULL;                                                                   \
        err_info_t e_;                                                                       \
        int rc_ = open_buf(buf, len, &g_, &e_);                                              \
        CHECK_INT(rc_, ==, code);                                                            \
        CHECK(g_ == NULL);                                                                   \
        CHECK_MSG(strstr(e_.msg, piece) != NULL, "message \"%s\" lacks \"%s\"", e_.msg,      \
                  piece);                                                                    \
        gguf_close(&g_);                                                                     \
    } while (0)

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
    const char *path = check_shared("models/stories260K-f32.gguf");
    if (!path) {
        check_skip("models/stories260K-f32.gguf not found under the shared folder");
        return;
    }
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
    int found = 0;
    for (int i = 0; i < 2; i++) {
        const char *path = check_shared(files[i].rel);
        if (!path)
            continue;
        found++;
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
    if (!found)
        check_skip("vocab/*.gguf not found under the shared folder");
}


/* ---- crafted files: one per reject rule ---- */

static void put_header(gguf_buf_t *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv)
{
    gguf_buf_bytes(b, "GGUF", 4);
    gguf_buf_u32(b, version);
    gguf_buf_u64(b, n_tensors);
    gguf_buf_u64(b, n_kv);
}

static void put_kv_u32(gguf_buf_t *b, const char *key, uint32_t v)
{
    gguf_buf_str(b, key);
    gguf_buf_u32(b, GGUF_VT_UINT32);
    gguf_buf_u32(b, v);
}

static void put_tensor_info(gguf_buf_t *b, const char *name, uint32_t n_dims, const uint64_t *ne,
                            uint32_t type, uint64_t offset)
{
    gguf_buf_str(b, name);
    gguf_buf_u32(b, n_dims);
    for (uint32_t d = 0; d < n_dims; d++)
        gguf_buf_u64(b, ne[d]);
    gguf_buf_u32(b, type);
    gguf_buf_u64(b, offset);
}

/* Pads to 32 and appends n zero bytes of data. */
static void put_data(gguf_buf_t *b, size_t n)
{
    gguf_buf_pad(b, 32);
    for (size_t i = 0; i < n; i++)
        gguf_buf_u8(b, 0);
}

/* A file of one key (general.name-like u32 "a.b") and one f32 tensor "t" of shape ne,
 * type, offset, with `data` bytes of data. */
static void one_tensor_file(gguf_buf_t *b, uint32_t n_dims, const uint64_t *ne, uint32_t type,
                            uint64_t offset, size_t data)
{
    gguf_buf_init(b);
    put_header(b, 3, 1, 1);
    put_kv_u32(b, "a.b", 1);
    put_tensor_info(b, "blk.0.attn_q.weight", n_dims, ne, type, offset);
    put_data(b, data);
}

#define REJECT_BUF(b, code, piece)                    \
    do {                                              \
        CHECK(!(b).oom);                              \
        CHECK_REJECT((b).p, (b).len, code, piece);    \
        gguf_buf_fini(&(b));                          \
    } while (0)

static void test_reject_header(void)
{
    gguf_buf_t b;
    gguf_buf_init(&b);
    gguf_buf_bytes(&b, "GGUG", 4);
    gguf_buf_u32(&b, 3);
    gguf_buf_u64(&b, 0);
    gguf_buf_u64(&b, 0);
    REJECT_BUF(b, ERR_FORMAT, "bad magic 47 47 55 47 at byte 0");

    gguf_buf_init(&b);
    put_header(&b, 1, 0, 0);
    REJECT_BUF(b, ERR_UNSUPPORTED, "GGUF version 1 is not supported");
    gguf_buf_init(&b);
    put_header(&b, 4, 0, 0);
    REJECT_BUF(b, ERR_FORMAT, "unknown GGUF version 4");
    gguf_buf_init(&b);
    put_header(&b, 0, 0, 0);
    REJECT_BUF(b, ERR_FORMAT, "unknown GGUF version 0");

    /* counts the remaining bytes could not hold (and that would overflow an allocation) */
    gguf_buf_init(&b);
    put_header(&b, 3, 0, UINT64_MAX / 8);
    put_kv_u32(&b, "a.b", 1);
    REJECT_BUF(b, ERR_FORMAT, "key count 2305843009213693951 at byte 16 is more than");
    gguf_buf_init(&b);
    put_header(&b, 3, 2, 1);
    put_kv_u32(&b, "a.b", 1);
    gguf_buf_u64(&b, 0);
    REJECT_BUF(b, ERR_FORMAT, "tensor count 2 at byte 8 is more than");

    /* an empty file of the right header with no keys and no tensors is valid */
    gguf_buf_init(&b);
    put_header(&b, 3, 0, 0);
    gguf_t *g = NULL;
    err_info_t e;
    CHECK_OK(open_buf(b.p, b.len, &g, &e));
    if (g) {
        CHECK_INT(gguf_kv_count(g), ==, 0);
        CHECK_INT(gguf_tensor_count(g), ==, 0);
        CHECK(gguf_tensor_find(g, "x") == NULL);
    }
    gguf_close(&g);
    gguf_buf_fini(&b);
}

static void test_reject_strings(void)
{
    gguf_buf_t b;
    /* a key name longer than the file */
    gguf_buf_init(&b);
    put_header(&b, 3, 0, 1);
    gguf_buf_u64(&b, 1000000000000000000ull);
    gguf_buf_bytes(&b, "llama.block_count", 17);
    REJECT_BUF(b, ERR_FORMAT,
               "key #0: name: string length 1000000000000000000 runs past end of file at byte 24");

    /* a string value longer than the file */
    gguf_buf_init(&b);
    put_header(&b, 3, 0, 2);
    put_kv_u32(&b, "a.b", 1);
    gguf_buf_str(&b, "general.name");
    gguf_buf_u32(&b, GGUF_VT_STRING);
    gguf_buf_u64(&b, 100);
    gguf_buf_bytes(&b, "short", 5);
    REJECT_BUF(b, ERR_FORMAT, "key #1 'general.name': value: string length 100 runs past end");

    /* a string inside an array longer than the file */
    gguf_buf_init(&b);
    put_header(&b, 3, 0, 1);
    gguf_buf_str(&b, "tokenizer.ggml.tokens");
    gguf_buf_u32(&b, GGUF_VT_ARRAY);
    gguf_buf_arr_head(&b, GGUF_VT_STRING, 3);
    gguf_buf_str(&b, "a");
    gguf_buf_u64(&b, UINT64_MAX);
    gguf_buf_str(&b, "c");
    REJECT_BUF(b, ERR_FORMAT, "'tokenizer.ggml.tokens': string element 1: string length");

    /* empty key */
    gguf_buf_init(&b);
    put_header(&b, 3, 0, 1);
    put_kv_u32(&b, "", 1);
    REJECT_BUF(b, ERR_FORMAT, "empty key name");

    /* duplicate key */
    gguf_buf_init(&b);
    put_header(&b, 3, 0, 3);
    put_kv_u32(&b, "llama.block_count", 1);
    put_kv_u32(&b, "a.b", 1);
    put_kv_u32(&b, "llama.block_count", 2);
    REJECT_BUF(b, ERR_FORMAT, "key #2 'llama.block_count': duplicate key (first seen as key #0)");
}

static void test_reject_values(void)
{
    gguf_buf_t b;
    /* unknown value type */
    gguf_buf_init(&b);
    put_header(&b, 3, 0, 1);
    gguf_buf_str(&b, "a.b");
    gguf_buf_u32(&b, 13);
    gguf_buf_u32(&b, 0);
    REJECT_BUF(b, ERR_FORMAT, "key #0 'a.b': unknown value type 13 at byte 35");

    /* unknown array element type */
    gguf_buf_init(&b);
    put_header(&b, 3, 0, 1);
    gguf_buf_str(&b, "a.b");
    gguf_buf_u32(&b, GGUF_VT_ARRAY);
    gguf_buf_arr_head(&b, 77, 1);
    gguf_buf_u32(&b, 0);
    REJECT_BUF(b, ERR_FORMAT, "unknown array element type 77");

    /* more elements than bytes, for scalar, string and array elements; n * size would
     * overflow for the first */
    const uint32_t et[3] = {GGUF_VT_UINT32, GGUF_VT_STRING, GGUF_VT_ARRAY};
    const uint64_t n[3] = {UINT64_MAX / 2, 3, 2};
    for (int i = 0; i < 3; i++) {
        gguf_buf_init(&b);
        put_header(&b, 3, 0, 1);
        gguf_buf_str(&b, "a.b");
        gguf_buf_u32(&b, GGUF_VT_ARRAY);
        gguf_buf_arr_head(&b, et[i], n[i]);
        gguf_buf_u64(&b, 0);
        gguf_buf_u64(&b, 0);
        REJECT_BUF(b, ERR_FORMAT, "runs past end of file");
    }

    /* nesting: 8 levels are fine, 9 are not */
    for (int depth = 8; depth <= 9; depth++) {
        gguf_buf_init(&b);
        put_header(&b, 3, 0, 1);
        gguf_buf_str(&b, "a.b");
        gguf_buf_u32(&b, GGUF_VT_ARRAY);
        for (int d = 1; d < depth; d++)
            gguf_buf_arr_head(&b, GGUF_VT_ARRAY, 1);
        gguf_buf_arr_head(&b, GGUF_VT_UINT8, 1);
        gguf_buf_u8(&b, 7);
        if (depth == 9) {
            REJECT_BUF(b, ERR_FORMAT, "arrays nested deeper than 8");
        } else {
            gguf_t *g = NULL;
            err_info_t e;
            CHECK_MSG(open_buf(b.p, b.len, &g, &e) == 0, "%s", e.msg);
            if (g) {
                gguf_arr_t a = gguf_kv_find(g, "a.b")->v.arr;
                for (int d = 1; d < depth; d++)
                    a = gguf_arr_sub(&a, 0);
                CHECK_INT(a.elem_type, ==, GGUF_VT_UINT8);
                CHECK_INT(gguf_arr_u64(&a, 0), ==, 7);
            }
            gguf_close(&g);
            gguf_buf_fini(&b);
        }
    }

    /* a bool that is neither 0 nor 1, alone and in an array */
    gguf_buf_init(&b);
    put_header(&b, 3, 0, 1);
    gguf_buf_str(&b, "a.b");
    gguf_buf_u32(&b, GGUF_VT_BOOL);
    gguf_buf_u8(&b, 2);
    REJECT_BUF(b, ERR_FORMAT, "bool value 2 at byte 39 is neither 0 nor 1");
    gguf_buf_init(&b);
    put_header(&b, 3, 0, 1);
    gguf_buf_str(&b, "a.b");
    gguf_buf_u32(&b, GGUF_VT_ARRAY);
    gguf_buf_arr_head(&b, GGUF_VT_BOOL, 2);
    gguf_buf_u8(&b, 0);
    gguf_buf_u8(&b, 9);
    REJECT_BUF(b, ERR_FORMAT, "bool element 1");
}

static void test_reject_alignment(void)
{
    const uint32_t bad[3] = {0, 3, 48};
    for (int i = 0; i < 3; i++) {
        gguf_buf_t b;
        gguf_buf_init(&b);
        put_header(&b, 3, 0, 1);
        put_kv_u32(&b, "general.alignment", bad[i]);
        char piece[64];
        snprintf(piece, sizeof piece, "'general.alignment' is %u, not a nonzero power of two",
                 bad[i]);
        REJECT_BUF(b, ERR_FORMAT, piece);
    }
    gguf_buf_t b;
    gguf_buf_init(&b);
    put_header(&b, 3, 0, 1);
    gguf_buf_str(&b, "general.alignment");
    gguf_buf_u32(&b, GGUF_VT_FLOAT32);
    gguf_buf_f32(&b, 32.0f);
    REJECT_BUF(b, ERR_FORMAT, "'general.alignment' has type f32");
}

static void test_reject_tensor_shapes(void)
{
    gguf_buf_t b;
    const uint64_t ne8[4] = {8, 1, 1, 1};
    one_tensor_file(&b, 0, ne8, GGML_TYPE_F32, 0, 32);
    REJECT_BUF(b, ERR_FORMAT, "tensor 'blk.0.attn_q.weight': n_dims 0");
    one_tensor_file(&b, 5, (const uint64_t[5]){8, 1, 1, 1, 1}, GGML_TYPE_F32, 0, 32);
    REJECT_BUF(b, ERR_FORMAT, "n_dims 5 at byte");
    one_tensor_file(&b, 2, (const uint64_t[2]){8, 0}, GGML_TYPE_F32, 0, 32);
    REJECT_BUF(b, ERR_FORMAT, "'blk.0.attn_q.weight': dim 1 is 0");
    /* 2^32 * 2^32 elements: the product overflows int64 */
    one_tensor_file(&b, 2, (const uint64_t[2]){1ull << 32, 1ull << 32}, GGML_TYPE_F32, 0, 32);
    REJECT_BUF(b, ERR_FORMAT, "element count overflows at dim 1");
    /* 2^62 f32 elements fit int64 as a count, but not as bytes */
    one_tensor_file(&b, 1, (const uint64_t[1]){1ull << 62}, GGML_TYPE_F32, 0, 32);
    REJECT_BUF(b, ERR_FORMAT, "byte size of 4611686018427387904 f32 elements overflows");
    /* an unknown type number, and a row that is not whole q8_0 blocks */
    one_tensor_file(&b, 1, ne8, 4, 0, 32);
    REJECT_BUF(b, ERR_UNSUPPORTED, "'blk.0.attn_q.weight': unknown tensor type 4");
    one_tensor_file(&b, 1, ne8, 1000, 0, 32);
    REJECT_BUF(b, ERR_UNSUPPORTED, "unknown tensor type 1000");
    one_tensor_file(&b, 2, (const uint64_t[2]){33, 2}, GGML_TYPE_Q8_0, 0, 128);
    REJECT_BUF(b, ERR_FORMAT, "row of 33 elements is not a whole number of q8_0 blocks");
    one_tensor_file(&b, 1, (const uint64_t[1]){255}, GGML_TYPE_Q4_K, 0, 256);
    REJECT_BUF(b, ERR_FORMAT, "q4_k blocks (256 elements each)");
}

static void test_reject_tensor_placement(void)
{
    gguf_buf_t b;
    const uint64_t ne8[1] = {8};
    one_tensor_file(&b, 1, ne8, GGML_TYPE_F32, 4, 64);
    REJECT_BUF(b, ERR_FORMAT, "tensor 'blk.0.attn_q.weight': offset 4 not aligned to 32");
    /* 32 bytes of data at offset 32 in a 32-byte data section */
    one_tensor_file(&b, 1, ne8, GGML_TYPE_F32, 32, 32);
    REJECT_BUF(b, ERR_FORMAT, "'blk.0.attn_q.weight': data at offset 32 + 32 bytes is outside "
                              "the data section (32 bytes at byte");
    /* one byte short */
    one_tensor_file(&b, 1, ne8, GGML_TYPE_F32, 0, 31);
    REJECT_BUF(b, ERR_FORMAT, "is outside the data section");
    /* an offset near 2^64, where offset + size would wrap */
    one_tensor_file(&b, 1, ne8, GGML_TYPE_F32, UINT64_MAX - 31, 32);
    REJECT_BUF(b, ERR_FORMAT, "is outside the data section");
    /* tensor infos end, but the data section the alignment implies is missing */
    gguf_buf_init(&b);
    put_header(&b, 3, 1, 1);
    put_kv_u32(&b, "general.alignment", 4096);
    put_tensor_info(&b, "t", 1, ne8, GGML_TYPE_F32, 0);
    gguf_buf_pad(&b, 64);
    REJECT_BUF(b, ERR_FORMAT, "data section would start at byte 4096");

    /* duplicate tensor names */
    gguf_buf_init(&b);
    put_header(&b, 3, 2, 0);
    put_tensor_info(&b, "blk.0.attn_k.weight", 1, ne8, GGML_TYPE_F32, 0);
    put_tensor_info(&b, "blk.0.attn_k.weight", 1, ne8, GGML_TYPE_F32, 32);
    put_data(&b, 64);
    REJECT_BUF(b, ERR_FORMAT, "tensor 'blk.0.attn_k.weight': duplicate tensor name (tensors #0 "
                              "and #1)");
    gguf_buf_init(&b);
    put_header(&b, 3, 1, 0);
    put_tensor_info(&b, "", 1, ne8, GGML_TYPE_F32, 0);
    put_data(&b, 32);
    REJECT_BUF(b, ERR_FORMAT, "tensor #0: empty name");

    /* overlapping tensors are allowed (both views of the same bytes) */
    gguf_buf_init(&b);
    put_header(&b, 3, 2, 0);
    put_tensor_info(&b, "x", 1, ne8, GGML_TYPE_F32, 0);
    put_tensor_info(&b, "y", 2, (const uint64_t[2]){4, 2}, GGML_TYPE_F32, 0);
    put_data(&b, 32);
    gguf_t *g = NULL;
    err_info_t e;
    CHECK_MSG(open_buf(b.p, b.len, &g, &e) == 0, "%s", e.msg);
    if (g)
        CHECK(gguf_tensor_find(g, "x")->data == gguf_tensor_find(g, "y")->data);
    gguf_close(&g);
    gguf_buf_fini(&b);
}

/* Names with bytes that are not printable are shown with '?' and cut short in messages. */
static void test_reject_message_names(void)
{
    gguf_buf_t b;
    char name[200];
    memset(name, 'k', sizeof name - 1);
    name[sizeof name - 1] = '\0';
    name[1] = '\n';
    gguf_buf_init(&b);
    put_header(&b, 3, 0, 1);
    gguf_buf_str(&b, name);
    gguf_buf_u32(&b, 99);
    REJECT_BUF(b, ERR_FORMAT, "key #0 'k?kkkk");
    gguf_buf_init(&b);
    put_header(&b, 3, 0, 1);
    gguf_buf_str(&b, name);
    gguf_buf_u32(&b, 99);
    gguf_t *g = NULL;
    err_info_t e;
    CHECK_INT(open_buf(b.p, b.len, &g, &e), ==, ERR_FORMAT);
    CHECK(strstr(e.msg, "...'") != NULL);
    CHECK(strlen(e.msg) < 200);
    gguf_buf_fini(&b);
}

int main(void)
{
    RUN(test_round_trip_v3);
    RUN(test_round_trip_v2_and_alignment);
    RUN(test_open_file);
    RUN(test_getter_errors);
    RUN(test_truncation_every_byte);
    RUN(test_reject_header);
    RUN(test_reject_strings);
    RUN(test_reject_values);
    RUN(test_reject_alignment);
    RUN(test_reject_tensor_shapes);
    RUN(test_reject_tensor_placement);
    RUN(test_reject_message_names);
    RUN(test_stories260k);
    RUN(test_shared_vocabs);
    return check_done();
}
