/*
 * Tests for the GGUF reader's reject rules (model/gguf.c): files crafted byte by byte, one
 * per rule, each checking the error code and a piece of the message that says what and
 * where. Valid files and round trips are in test_gguf.c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/gguf.h"
#include "model/gguf_write.h"
#include "tests/check.h"

static int open_buf(const uint8_t *buf, size_t len, gguf_t **g, err_info_t *e)
{
    err_clear(e);
    return gguf_open_mem(buf, len, g, e);
}

/* Expects buf to be rejected with code and a message containing piece; the buffer is
 * copied to the heap at its exact length, so that AddressSanitizer sees any over-read. */
#define CHECK_REJECT(buf, len, code, piece)                                                        \
    do {                                                                                           \
        gguf_t *g_ = NULL;                                                                         \
        err_info_t e_;                                                                             \
        size_t l_ = (len);                                                                         \
        uint8_t *c_ = malloc(l_ ? l_ : 1);                                                         \
        memcpy(c_, (buf), l_);                                                                     \
        int rc_ = open_buf(c_, l_, &g_, &e_);                                                      \
        CHECK_INT(rc_, ==, code);                                                                  \
        CHECK(g_ == NULL);                                                                         \
        CHECK_MSG(strstr(e_.msg, piece) != NULL, "message \"%s\" lacks \"%s\"", e_.msg, piece);    \
        gguf_close(&g_);                                                                           \
        free(c_);                                                                                  \
    } while (0)

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

/* A file of one u32 key "a.b" and one tensor "blk.0.attn_q.weight" of shape ne,
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

#define REJECT_BUF(b, code, piece)                                                                 \
    do {                                                                                           \
        CHECK(!(b).oom);                                                                           \
        CHECK_REJECT((b).p, (b).len, code, piece);                                                 \
        gguf_buf_fini(&(b));                                                                       \
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
    REJECT_BUF(b, ERR_FORMAT,
               "'blk.0.attn_q.weight': data at offset 32 + 32 bytes is outside "
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
    REJECT_BUF(b, ERR_FORMAT,
               "tensor 'blk.0.attn_k.weight': duplicate tensor name (tensors #0 "
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
    RUN(test_reject_header);
    RUN(test_reject_strings);
    RUN(test_reject_values);
    RUN(test_reject_alignment);
    RUN(test_reject_tensor_shapes);
    RUN(test_reject_tensor_placement);
    RUN(test_reject_message_names);
    return check_done();
}
