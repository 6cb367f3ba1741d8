/*
 * model/fuzz_gguf.c — libFuzzer target: gguf_open_mem on arbitrary bytes, then every key,
 * array element and tensor through the accessors, then mdl_hparams_read and
 * mdl_hparams_check_tensors (see fuzz/fuzz.h for how targets are built and replayed).
 *
 * Properties checked for any input: a refusal carries a negative code and a message; an
 * accepted file hands out keys, strings, array elements and tensor data that lie inside the
 * input (their first and last bytes are read, so AddressSanitizer sees any overrun); every
 * key and tensor is found again by its name; tensor sizes agree with their shapes; the
 * typed getters answer 0, ERR_FORMAT or ERR_NOTFOUND as the key's type says; hparams
 * functions leave *hp untouched on error.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <string.h>

#include "fuzz/fuzz.h"
#include "model/gguf.h"
#include "model/hparams.h"

/* Elements of one array walked at most: gguf_arr_sub is O(i), so nested arrays cost the
 * square of this. Plain arrays are walked whole. */
#define WALK_NESTED 256

typedef struct walk {
    const uint8_t *lo, *hi; /* the input */
    char *why;
    size_t cap;
    volatile uint8_t sink; /* bytes read so the sanitizer checks them */
} walk_t;

static bool inside(const walk_t *w, const void *p, uint64_t n)
{
    const uint8_t *b = p;
    return b >= w->lo && b <= w->hi && n <= (uint64_t)(w->hi - b);
}

/* Reads the first and last byte of [p, p+n). */
static void touch(walk_t *w, const void *p, uint64_t n)
{
    if (n) {
        w->sink ^= ((const uint8_t *)p)[0];
        w->sink ^= ((const uint8_t *)p)[n - 1];
    }
}

static int check_str(walk_t *w, gguf_str_t s, const char *what)
{
    if (s.len && !inside(w, s.ptr, s.len))
        return fuzz_fail(w->why, w->cap, "%s: string of %" PRIu64 " bytes outside the input", what,
                         s.len);
    touch(w, s.ptr, s.len);
    return 0;
}

static bool is_int_type(gguf_vtype_t t)
{
    return t <= GGUF_VT_INT32 || t == GGUF_VT_UINT64 || t == GGUF_VT_INT64;
}

static int walk_arr(walk_t *w, const gguf_arr_t *a, int depth)
{
    if (depth > 8)
        return fuzz_fail(w->why, w->cap, "arrays nested %d deep were accepted", depth);
    if (a->elem_type >= GGUF_VT_COUNT_)
        return fuzz_fail(w->why, w->cap, "array of unknown element type %u", a->elem_type);
    if (a->data > a->end || !inside(w, a->data, (uint64_t)(a->end - a->data)))
        return fuzz_fail(w->why, w->cap, "array of %" PRIu64 " elements outside the input", a->n);
    touch(w, a->data, (uint64_t)(a->end - a->data));
    switch (a->elem_type) {
    case GGUF_VT_STRING: {
        gguf_str_t *strs = NULL;
        if (gguf_arr_strs(a, &strs) != 0)
            return 0; /* out of memory: nothing to check */
        int rc = 0;
        for (uint64_t i = 0; i < a->n && !rc; i++) {
            if (strs[i].len && (strs[i].ptr < (const char *)a->data ||
                                strs[i].ptr + strs[i].len > (const char *)a->end))
                rc = fuzz_fail(w->why, w->cap, "string element %" PRIu64 " outside its array", i);
            else
                rc = check_str(w, strs[i], "string element");
        }
        /* gguf_arr_str walks from the start: compare it on the first and last elements */
        for (uint64_t i = 0; i < a->n && i < 2 && !rc; i++) {
            uint64_t j = i ? a->n - 1 : 0;
            gguf_str_t s = gguf_arr_str(a, j);
            if (s.ptr != strs[j].ptr || s.len != strs[j].len)
                rc = fuzz_fail(w->why, w->cap, "gguf_arr_str(%" PRIu64 ") disagrees with strs", j);
        }
        free(strs);
        return rc;
    }
    case GGUF_VT_ARRAY:
        for (uint64_t i = 0; i < a->n && i < WALK_NESTED; i++) {
            gguf_arr_t sub = gguf_arr_sub(a, i);
            if (sub.data < a->data || sub.end > a->end)
                return fuzz_fail(w->why, w->cap, "nested array %" PRIu64 " outside its parent", i);
            int rc = walk_arr(w, &sub, depth + 1);
            if (rc)
                return rc;
        }
        return 0;
    default:
        for (uint64_t i = 0; i < a->n; i++) {
            uint64_t u = gguf_arr_u64(a, i);
            int64_t s = gguf_arr_i64(a, i);
            double f = gguf_arr_f64(a, i);
            w->sink ^= (uint8_t)(u ^ (uint64_t)s ^ (uint64_t)(f == f));
        }
        /* out of range reads answer 0 */
        if (gguf_arr_u64(a, a->n) != 0 || gguf_arr_i64(a, a->n) != 0)
            return fuzz_fail(w->why, w->cap, "element past the end is not 0");
        return 0;
    }
}

/* The getters on a key, each of whose answers the key's type decides. */
static int check_getters(walk_t *w, const gguf_t *g, const gguf_kv_t *kv, const char *key)
{
    err_info_t e;
    uint32_t u32;
    uint64_t u64;
    int64_t i64;
    float f;
    bool b;
    gguf_str_t s;
    gguf_arr_t a;
    bool num = is_int_type(kv->type) || kv->type == GGUF_VT_FLOAT32 || kv->type == GGUF_VT_FLOAT64;
    struct {
        const char *name;
        int rc;
        bool type_ok;
    } r[] = {
        {"u32", gguf_get_u32(g, key, &u32, &e), is_int_type(kv->type)},
        {"u64", gguf_get_u64(g, key, &u64, &e), is_int_type(kv->type)},
        {"i64", gguf_get_i64(g, key, &i64, &e), is_int_type(kv->type)},
        {"f32", gguf_get_f32(g, key, &f, &e), num},
        {"bool", gguf_get_bool(g, key, &b, &e), kv->type == GGUF_VT_BOOL},
        {"str", gguf_get_str(g, key, &s, &e), kv->type == GGUF_VT_STRING},
        {"arr", gguf_get_arr(g, key, &a, &e), kv->type == GGUF_VT_ARRAY},
    };
    for (size_t i = 0; i < sizeof r / sizeof r[0]; i++) {
        /* integer getters may still refuse a value that does not fit */
        if (r[i].rc != 0 && r[i].rc != ERR_FORMAT)
            return fuzz_fail(w->why, w->cap, "gguf_get_%s: code %d", r[i].name, r[i].rc);
        if (!r[i].type_ok && r[i].rc == 0)
            return fuzz_fail(w->why, w->cap, "gguf_get_%s accepted a %s", r[i].name,
                             gguf_vtype_name(kv->type));
        if (r[i].type_ok && r[i].rc != 0 && i >= 3)
            return fuzz_fail(w->why, w->cap, "gguf_get_%s refused a %s", r[i].name,
                             gguf_vtype_name(kv->type));
    }
    if (kv->type == GGUF_VT_STRING && (s.ptr != kv->v.str.ptr || s.len != kv->v.str.len))
        return fuzz_fail(w->why, w->cap, "gguf_get_str gave another string");
    return 0;
}

static int walk_kvs(walk_t *w, const gguf_t *g)
{
    uint64_t n = gguf_kv_count(g);
    if (gguf_kv_at(g, n) != NULL)
        return fuzz_fail(w->why, w->cap, "gguf_kv_at(count) is not NULL");
    for (uint64_t i = 0; i < n; i++) {
        const gguf_kv_t *kv = gguf_kv_at(g, i);
        if (!kv)
            return fuzz_fail(w->why, w->cap, "key %" PRIu64 " of %" PRIu64 " is NULL", i, n);
        if (kv->key.len == 0 || check_str(w, kv->key, "key name"))
            return w->why[0] ? 1 : fuzz_fail(w->why, w->cap, "key %" PRIu64 " has no name", i);
        if (kv->type >= GGUF_VT_COUNT_)
            return fuzz_fail(w->why, w->cap, "key %" PRIu64 " has type %u", i, kv->type);
        int rc = 0;
        if (kv->type == GGUF_VT_STRING)
            rc = check_str(w, kv->v.str, "string value");
        else if (kv->type == GGUF_VT_ARRAY)
            rc = walk_arr(w, &kv->v.arr, 1);
        if (rc)
            return rc;
        /* lookups by name need a NUL-terminated copy; a name with a NUL inside cannot be
         * asked for */
        if (memchr(kv->key.ptr, 0, kv->key.len))
            continue;
        char *key = strndup(kv->key.ptr, kv->key.len);
        if (!key)
            continue;
        if (gguf_kv_find(g, key) != kv)
            rc = fuzz_fail(w->why, w->cap, "key %" PRIu64 " is not found by its name", i);
        else
            rc = check_getters(w, g, kv, key);
        free(key);
        if (rc)
            return rc;
    }
    return 0;
}

static int walk_tensors(walk_t *w, const gguf_t *g)
{
    uint64_t n = gguf_tensor_count(g), data0 = gguf_data_offset(g);
    if (gguf_tensor_at(g, n) != NULL)
        return fuzz_fail(w->why, w->cap, "gguf_tensor_at(count) is not NULL");
    if (n && data0 > (uint64_t)(w->hi - w->lo))
        return fuzz_fail(w->why, w->cap, "data section at %" PRIu64 " past the end", data0);
    for (uint64_t i = 0; i < n; i++) {
        const gguf_tensor_t *t = gguf_tensor_at(g, i);
        if (!t)
            return fuzz_fail(w->why, w->cap, "tensor %" PRIu64 " is NULL", i);
        if (t->name.len == 0 || check_str(w, t->name, "tensor name"))
            return w->why[0] ? 1 : fuzz_fail(w->why, w->cap, "tensor %" PRIu64 " unnamed", i);
        if (t->n_dims < 1 || t->n_dims > 4)
            return fuzz_fail(w->why, w->cap, "tensor %" PRIu64 ": %u dims", i, t->n_dims);
        uint64_t prod = 1;
        for (int d = 0; d < 4; d++) {
            if (t->ne[d] == 0 || (d >= (int)t->n_dims && t->ne[d] != 1))
                return fuzz_fail(w->why, w->cap, "tensor %" PRIu64 ": ne[%d] = %" PRIu64, i, d,
                                 t->ne[d]);
            prod *= t->ne[d];
        }
        size_t row = ggml_row_bytes(t->type, t->ne[0]);
        if (prod != t->n_elems || row == 0 || t->nbytes != row * (prod / t->ne[0]))
            return fuzz_fail(w->why, w->cap,
                             "tensor %" PRIu64 ": %" PRIu64 " elements, %" PRIu64
                             " bytes disagree with its shape",
                             i, t->n_elems, t->nbytes);
        if (t->offset % gguf_alignment(g) ||
            (const uint8_t *)t->data != w->lo + data0 + t->offset || !inside(w, t->data, t->nbytes))
            return fuzz_fail(w->why, w->cap, "tensor %" PRIu64 ": data outside the input", i);
        touch(w, t->data, t->nbytes);
        if (memchr(t->name.ptr, 0, t->name.len))
            continue;
        char *name = strndup(t->name.ptr, t->name.len);
        if (name && gguf_tensor_find(g, name) != t) {
            free(name);
            return fuzz_fail(w->why, w->cap, "tensor %" PRIu64 " is not found by its name", i);
        }
        free(name);
    }
    return 0;
}

/* mdl_hparams_read and check_tensors: codes from the table, messages, *hp untouched on
 * error. */
static int check_hparams(walk_t *w, const gguf_t *g)
{
    mdl_hparams_t hp, before;
    err_info_t e;
    memset(&hp, 0xa5, sizeof hp);
    before = hp;
    err_clear(&e);
    int rc = mdl_hparams_read(g, &hp, &e);
    if (rc) {
        if (rc > 0 || e.code != rc || !e.msg[0])
            return fuzz_fail(w->why, w->cap, "mdl_hparams_read: code %d, message '%s'", rc, e.msg);
        if (memcmp(&hp, &before, sizeof hp) != 0)
            return fuzz_fail(w->why, w->cap, "mdl_hparams_read changed *hp on error");
        return 0;
    }
    if (hp.n_head == 0 || hp.n_head_kv == 0 || hp.n_head % hp.n_head_kv || hp.head_dim == 0 ||
        hp.n_rot > hp.head_dim || hp.n_rot % 2 || hp.n_layer == 0 || hp.n_vocab == 0)
        return fuzz_fail(w->why, w->cap,
                         "mdl_hparams_read accepted n_head %u/%u head_dim %u n_rot %u "
                         "n_layer %u n_vocab %u",
                         hp.n_head, hp.n_head_kv, hp.head_dim, hp.n_rot, hp.n_layer, hp.n_vocab);
    if (hp.n_gist && (hp.gist_first > hp.n_vocab || hp.n_gist > hp.n_vocab - hp.gist_first))
        return fuzz_fail(w->why, w->cap, "gist tokens %u+%u outside the vocabulary of %u",
                         hp.gist_first, hp.n_gist, hp.n_vocab);
    err_clear(&e);
    rc = mdl_hparams_check_tensors(g, &hp, &e);
    if (rc && (rc > 0 || e.code != rc || !e.msg[0]))
        return fuzz_fail(w->why, w->cap, "mdl_hparams_check_tensors: code %d, message '%s'", rc,
                         e.msg);
    return 0;
}

int fuzz_gguf_one(const uint8_t *data, size_t size, char *why, size_t cap)
{
    gguf_t *g = NULL;
    err_info_t e;
    err_clear(&e);
    if (cap)
        why[0] = '\0';
    int rc = gguf_open_mem(data, size, &g, &e);
    if (rc) {
        if (rc > 0 || e.code != rc || !e.msg[0] || g != NULL)
            return fuzz_fail(why, cap, "gguf_open_mem refused with code %d, message '%s'", rc,
                             e.msg);
        return 0;
    }
    walk_t w = {.lo = data, .hi = data + size, .why = why, .cap = cap};
    if (gguf_file_size(g) != size || (gguf_version(g) != 2 && gguf_version(g) != 3))
        rc = fuzz_fail(why, cap, "size %" PRIu64 " or version %u wrong", gguf_file_size(g),
                       gguf_version(g));
    if (!rc)
        rc = walk_kvs(&w, g);
    if (!rc)
        rc = walk_tensors(&w, g);
    if (!rc)
        rc = check_hparams(&w, g);
    gguf_close(&g);
    return rc;
}

FUZZ_ENTRY(fuzz_gguf_one)
