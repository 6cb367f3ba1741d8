/*
 * model/gguf.c — the GGUF v2/v3 reader.
 *
 * The file is parsed once, front to back, by a bounds-checked cursor; nothing read from
 * the file is used as a size, count or offset before it has been checked against the
 * bytes that remain. Keys and tensors land in two arrays of small structs whose strings,
 * arrays and data point into the mapping (zero-copy), plus one open-addressing hash
 * index per array for lookups by name (which also finds duplicates while loading).
 *
 * Layout of a file (all little-endian):
 *   "GGUF" u32 version  u64 n_tensors  u64 n_kv
 *   n_kv    x { str key, u32 type, value }
 *   n_tensors x { str name, u32 n_dims, u64 ne[n_dims], u32 type, u64 offset }
 *   padding to general.alignment (default 32), then the data section.
 * A str is u64 length + bytes; an array value is u32 elem_type, u64 n, elements.
 */
#include "model/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/gguf_priv.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the GGUF reader reads little-endian values in place"
#endif

#define GGUF_MAGIC             "GGUF"
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_DEPTH         8 /* nested arrays deeper than this are rejected */
#define GGUF_MAX_DIMS          4

/* Smallest encodings, used to reject counts that the remaining bytes cannot hold. */
#define MIN_KV_BYTES     13 /* key length, type, one byte of value */
#define MIN_TENSOR_BYTES 32 /* name length, n_dims, one dim, type, offset */

struct gguf {
    const uint8_t *base; /* the file's bytes: the mapping or the caller's buffer */
    size_t size;
    bool mapped; /* base came from mmap and is unmapped by gguf_close */
    uint32_t version;
    uint32_t alignment;
    uint64_t data_offset;
    uint64_t n_kv;
    gguf_kv_t *kv; /* [n_kv] */
    uint64_t n_tensors;
    gguf_tensor_t *tensors; /* [n_tensors] */
    uint64_t *kv_index;     /* open-addressing hash of kv names: slot -> i + 1, 0 = empty */
    uint64_t kv_index_mask;
    uint64_t *t_index; /* the same for tensor names */
    uint64_t t_index_mask;
};

/* ---- type tables ---- */

static const ggml_type_info_t type_infos[] = {
    [GGML_TYPE_F32] = {"f32", 1, 4},       [GGML_TYPE_F16] = {"f16", 1, 2},
    [GGML_TYPE_Q4_0] = {"q4_0", 32, 18},   [GGML_TYPE_Q4_1] = {"q4_1", 32, 20},
    [GGML_TYPE_Q5_0] = {"q5_0", 32, 22},   [GGML_TYPE_Q5_1] = {"q5_1", 32, 24},
    [GGML_TYPE_Q8_0] = {"q8_0", 32, 34},   [GGML_TYPE_Q8_1] = {"q8_1", 32, 36},
    [GGML_TYPE_Q2_K] = {"q2_k", 256, 84},  [GGML_TYPE_Q3_K] = {"q3_k", 256, 110},
    [GGML_TYPE_Q4_K] = {"q4_k", 256, 144}, [GGML_TYPE_Q5_K] = {"q5_k", 256, 176},
    [GGML_TYPE_Q6_K] = {"q6_k", 256, 210}, [GGML_TYPE_Q8_K] = {"q8_k", 256, 292},
    [GGML_TYPE_I8] = {"i8", 1, 1},         [GGML_TYPE_I16] = {"i16", 1, 2},
    [GGML_TYPE_I32] = {"i32", 1, 4},       [GGML_TYPE_I64] = {"i64", 1, 8},
    [GGML_TYPE_F64] = {"f64", 1, 8},       [GGML_TYPE_BF16] = {"bf16", 1, 2},
};

const ggml_type_info_t *ggml_type_get(uint32_t type)
{
    if (type >= sizeof type_infos / sizeof type_infos[0] || !type_infos[type].name)
        return NULL;
    return &type_infos[type];
}

size_t ggml_row_bytes(uint32_t type, uint64_t n)
{
    const ggml_type_info_t *ti = ggml_type_get(type);
    if (!ti || n % ti->block_elems)
        return 0;
    uint64_t blocks = n / ti->block_elems;
    if (blocks > SIZE_MAX / ti->block_bytes)
        return 0;
    return (size_t)(blocks * ti->block_bytes);
}

static const char *const vtype_names[GGUF_VT_COUNT_] = {
    "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64",
};

const char *gguf_vtype_name(uint32_t t)
{
    return t < GGUF_VT_COUNT_ ? vtype_names[t] : "unknown";
}

/* ---- the parsing cursor ---- */

typedef struct cursor {
    const uint8_t *base;
    uint64_t size;
    uint64_t off;
    err_info_t *e;
    char where[128]; /* "key #5 'llama.block_count'" — prefixes every message */
} cursor_t;

static uint64_t remaining(const cursor_t *c)
{
    return c->size - c->off;
}

/* Fails unless n more bytes remain; what names the thing being read. */
static int need(cursor_t *c, uint64_t n, const char *what)
{
    if (n > remaining(c))
        return err_set(c->e, ERR_FORMAT,
                       "%s%s: needs %" PRIu64 " bytes at byte %" PRIu64
                       " but the file ends at byte %" PRIu64,
                       c->where, what, n, c->off, c->size);
    return 0;
}

static int rd_u32(cursor_t *c, uint32_t *v, const char *what)
{
    int rc = need(c, 4, what);
    if (rc)
        return rc;
    *v = ld32(c->base + c->off);
    c->off += 4;
    return 0;
}

static int rd_u64(cursor_t *c, uint64_t *v, const char *what)
{
    int rc = need(c, 8, what);
    if (rc)
        return rc;
    *v = ld64(c->base + c->off);
    c->off += 8;
    return 0;
}

static int rd_str(cursor_t *c, gguf_str_t *s, const char *what)
{
    uint64_t at = c->off, len;
    int rc = rd_u64(c, &len, what);
    if (rc)
        return rc;
    if (len > remaining(c))
        return err_set(c->e, ERR_FORMAT,
                       "%s%s: string length %" PRIu64 " runs past end of file at byte %" PRIu64
                       " (file is %" PRIu64 " bytes)",
                       c->where, what, len, at, c->size);
    s->ptr = (const char *)c->base + c->off;
    s->len = len;
    c->off += len;
    return 0;
}

static int rd_array(cursor_t *c, gguf_arr_t *a, int depth);

/* Reads one value of type t into kv->v (scalars widened). */
static int rd_value(cursor_t *c, uint32_t t, gguf_kv_t *kv)
{
    const uint8_t *p = c->base + c->off;
    size_t sz = vtype_size(t);
    if (sz) {
        int rc = need(c, sz, "value");
        if (rc)
            return rc;
        switch (t) {
        case GGUF_VT_UINT8:
            kv->v.u64 = p[0];
            break;
        case GGUF_VT_INT8:
            kv->v.i64 = (int8_t)p[0];
            break;
        case GGUF_VT_UINT16:
            kv->v.u64 = ld16(p);
            break;
        case GGUF_VT_INT16:
            kv->v.i64 = (int16_t)ld16(p);
            break;
        case GGUF_VT_UINT32:
            kv->v.u64 = ld32(p);
            break;
        case GGUF_VT_INT32:
            kv->v.i64 = (int32_t)ld32(p);
            break;
        case GGUF_VT_UINT64:
            kv->v.u64 = ld64(p);
            break;
        case GGUF_VT_INT64:
            kv->v.i64 = (int64_t)ld64(p);
            break;
        case GGUF_VT_FLOAT32: {
            float f;
            memcpy(&f, p, 4);
            kv->v.f64 = f;
            break;
        }
        case GGUF_VT_FLOAT64:
            memcpy(&kv->v.f64, p, 8);
            break;
        case GGUF_VT_BOOL:
            if (p[0] > 1)
                return err_set(c->e, ERR_FORMAT,
                               "%sbool value %u at byte %" PRIu64 " is neither 0 nor 1", c->where,
                               p[0], c->off);
            kv->v.u64 = p[0];
            break;
        }
        c->off += sz;
        return 0;
    }
    if (t == GGUF_VT_STRING)
        return rd_str(c, &kv->v.str, "value");
    if (t == GGUF_VT_ARRAY)
        return rd_array(c, &kv->v.arr, 1);
    return err_set(c->e, ERR_FORMAT, "%sunknown value type %" PRIu32 " at byte %" PRIu64, c->where,
                   t, c->off - 4);
}

/* Reads an array header and walks its elements (validating every string and nested
 * array); depth counts the arrays around this one, the outermost being 1. */
static int rd_array(cursor_t *c, gguf_arr_t *a, int depth)
{
    uint64_t at = c->off;
    uint32_t et;
    uint64_t n;
    int rc;
    if (depth > GGUF_MAX_DEPTH)
        return err_set(c->e, ERR_FORMAT, "%sarrays nested deeper than %d at byte %" PRIu64,
                       c->where, GGUF_MAX_DEPTH, at);
    if ((rc = rd_u32(c, &et, "array element type")) || (rc = rd_u64(c, &n, "array length")))
        return rc;
    if (et >= GGUF_VT_COUNT_)
        return err_set(c->e, ERR_FORMAT,
                       "%sunknown array element type %" PRIu32 " at byte %" PRIu64, c->where, et,
                       at);
    /* the smallest element is 1 byte (scalar), 8 (string) or 12 (array) */
    size_t esz = vtype_size(et);
    uint64_t min = esz ? esz : (et == GGUF_VT_STRING ? 8 : 12);
    if (n > remaining(c) / min)
        return err_set(c->e, ERR_FORMAT,
                       "%sarray of %" PRIu64 " %s elements at byte %" PRIu64
                       " runs past end of file (%" PRIu64 " bytes)",
                       c->where, n, gguf_vtype_name(et), at, c->size);
    a->elem_type = (gguf_vtype_t)et;
    a->n = n;
    a->data = c->base + c->off;
    if (esz) {
        if (et == GGUF_VT_BOOL)
            for (uint64_t i = 0; i < n; i++)
                if (a->data[i] > 1)
                    return err_set(c->e, ERR_FORMAT,
                                   "%sbool element %" PRIu64 " at byte %" PRIu64
                                   " is neither 0 nor 1",
                                   c->where, i, c->off + i);
        c->off += n * esz;
    } else if (et == GGUF_VT_STRING) {
        for (uint64_t i = 0; i < n; i++) {
            gguf_str_t s;
            char what[48];
            snprintf(what, sizeof what, "string element %" PRIu64, i);
            if ((rc = rd_str(c, &s, what)))
                return rc;
        }
    } else {
        for (uint64_t i = 0; i < n; i++) {
            gguf_arr_t sub;
            if ((rc = rd_array(c, &sub, depth + 1)))
                return rc;
        }
    }
    a->end = c->base + c->off;
    return 0;
}

/* ---- name index ---- */

static uint64_t hash_bytes(const char *s, uint64_t len)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (uint64_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

static bool str_eq2(gguf_str_t a, const char *b, uint64_t blen)
{
    return a.len == blen && memcmp(a.ptr, b, blen) == 0;
}

/* Allocates an index with room for n names at load factor <= 1/2. */
static int index_alloc(uint64_t n, uint64_t **slots, uint64_t *mask)
{
    uint64_t cap = 8;
    while (cap < 2 * n)
        cap *= 2;
    *slots = calloc(cap, sizeof **slots);
    if (!*slots)
        return ERR_NOMEM;
    *mask = cap - 1;
    return 0;
}

/* Slot where name lives, or the empty slot where it would go. `names` is a strided view
 * over the structs holding a gguf_str_t at offset 0 (both gguf_kv_t and gguf_tensor_t). */
static uint64_t index_probe(const uint64_t *slots, uint64_t mask, const void *items, size_t stride,
                            const char *name, uint64_t len)
{
    uint64_t i = hash_bytes(name, len) & mask;
    for (;;) {
        uint64_t s = slots[i];
        if (!s)
            return i;
        const gguf_str_t *n = (const gguf_str_t *)((const char *)items + (s - 1) * stride);
        if (str_eq2(*n, name, len))
            return i;
        i = (i + 1) & mask;
    }
}

_Static_assert(offsetof(gguf_kv_t, key) == 0, "index_probe reads the name at offset 0");
_Static_assert(offsetof(gguf_tensor_t, name) == 0, "index_probe reads the name at offset 0");

/* ---- the parse ---- */

static void gguf_free(gguf_t *g)
{
    if (!g)
        return;
    free(g->kv);
    free(g->tensors);
    free(g->kv_index);
    free(g->t_index);
    if (g->mapped && g->base)
        munmap((void *)g->base, g->size);
    free(g);
}

static int parse_header(gguf_t *g, cursor_t *c)
{
    int rc;
    if (c->size < 4 || memcmp(c->base, GGUF_MAGIC, 4) != 0) {
        if (c->size < 4)
            return err_set(c->e, ERR_FORMAT,
                           "file is %" PRIu64 " bytes, too short for the "
                           "GGUF magic",
                           c->size);
        return err_set(c->e, ERR_FORMAT,
                       "bad magic %02x %02x %02x %02x at byte 0 "
                       "(not a GGUF file)",
                       c->base[0], c->base[1], c->base[2], c->base[3]);
    }
    c->off = 4;
    if ((rc = rd_u32(c, &g->version, "version")))
        return rc;
    if (g->version == 1)
        return err_set(c->e, ERR_UNSUPPORTED,
                       "GGUF version 1 is not supported "
                       "(re-convert the model to GGUF v3)");
    if (g->version != 2 && g->version != 3)
        return err_set(c->e, ERR_FORMAT,
                       "unknown GGUF version %" PRIu32 " at byte 4 "
                       "(expected 2 or 3)",
                       g->version);
    if ((rc = rd_u64(c, &g->n_tensors, "tensor count")) || (rc = rd_u64(c, &g->n_kv, "key count")))
        return rc;
    if (g->n_kv > remaining(c) / MIN_KV_BYTES)
        return err_set(c->e, ERR_FORMAT,
                       "key count %" PRIu64 " at byte 16 is more than the "
                       "remaining %" PRIu64 " bytes could hold",
                       g->n_kv, remaining(c));
    if (g->n_tensors > remaining(c) / MIN_TENSOR_BYTES)
        return err_set(c->e, ERR_FORMAT,
                       "tensor count %" PRIu64 " at byte 8 is more than "
                       "the remaining %" PRIu64 " bytes could hold",
                       g->n_tensors, remaining(c));
    return 0;
}

static int parse_kvs(gguf_t *g, cursor_t *c)
{
    int rc;
    g->kv = calloc(g->n_kv ? g->n_kv : 1, sizeof *g->kv);
    if (!g->kv || index_alloc(g->n_kv, &g->kv_index, &g->kv_index_mask))
        return err_set(c->e, ERR_NOMEM, "out of memory for %" PRIu64 " keys", g->n_kv);
    for (uint64_t i = 0; i < g->n_kv; i++) {
        gguf_kv_t *kv = &g->kv[i];
        char pk[72];
        uint32_t t;
        snprintf(c->where, sizeof c->where, "key #%" PRIu64 ": ", i);
        if ((rc = rd_str(c, &kv->key, "name")))
            return rc;
        gguf_printable(pk, sizeof pk, kv->key.ptr, kv->key.len);
        snprintf(c->where, sizeof c->where, "key #%" PRIu64 " '%s': ", i, pk);
        if (kv->key.len == 0)
            return err_set(c->e, ERR_FORMAT, "%sempty key name at byte %" PRIu64, c->where,
                           c->off - 8);
        uint64_t slot = index_probe(g->kv_index, g->kv_index_mask, g->kv, sizeof *g->kv,
                                    kv->key.ptr, kv->key.len);
        if (g->kv_index[slot])
            return err_set(c->e, ERR_FORMAT, "%sduplicate key (first seen as key #%" PRIu64 ")",
                           c->where, g->kv_index[slot] - 1);
        g->kv_index[slot] = i + 1;
        if ((rc = rd_u32(c, &t, "value type")))
            return rc;
        kv->type = (gguf_vtype_t)t;
        if ((rc = rd_value(c, t, kv)))
            return rc;
    }
    c->where[0] = '\0';
    return 0;
}

/* general.alignment: optional, any unsigned integer type, a nonzero power of two. */
static int read_alignment(gguf_t *g, cursor_t *c)
{
    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    const gguf_kv_t *kv = gguf_kv_find(g, "general.alignment");
    if (!kv)
        return 0;
    uint64_t a;
    switch (kv->type) {
    case GGUF_VT_UINT8:
    case GGUF_VT_UINT16:
    case GGUF_VT_UINT32:
    case GGUF_VT_UINT64:
        a = kv->v.u64;
        break;
    case GGUF_VT_INT8:
    case GGUF_VT_INT16:
    case GGUF_VT_INT32:
    case GGUF_VT_INT64:
        a = kv->v.i64 < 0 ? 0 : (uint64_t)kv->v.i64;
        break;
    default:
        return err_set(c->e, ERR_FORMAT, "key 'general.alignment' has type %s, expected u32",
                       gguf_vtype_name(kv->type));
    }
    if (a == 0 || (a & (a - 1)) || a > (1u << 30))
        return err_set(
            c->e, ERR_FORMAT,
            "key 'general.alignment' is %" PRIu64 ", not a nonzero power of two (at most 2^30)", a);
    g->alignment = (uint32_t)a;
    return 0;
}

static int parse_tensor_info(gguf_t *g, cursor_t *c, uint64_t i)
{
    gguf_tensor_t *t = &g->tensors[i];
    char pn[72];
    int rc;
    snprintf(c->where, sizeof c->where, "tensor #%" PRIu64 ": ", i);
    if ((rc = rd_str(c, &t->name, "name")))
        return rc;
    gguf_printable(pn, sizeof pn, t->name.ptr, t->name.len);
    snprintf(c->where, sizeof c->where, "tensor '%s': ", pn);
    if (t->name.len == 0)
        return err_set(c->e, ERR_FORMAT, "tensor #%" PRIu64 ": empty name at byte %" PRIu64, i,
                       c->off - 8);
    uint64_t slot = index_probe(g->t_index, g->t_index_mask, g->tensors, sizeof *g->tensors,
                                t->name.ptr, t->name.len);
    if (g->t_index[slot])
        return err_set(c->e, ERR_FORMAT,
                       "%sduplicate tensor name (tensors #%" PRIu64 " and #%" PRIu64 ")", c->where,
                       g->t_index[slot] - 1, i);
    g->t_index[slot] = i + 1;

    uint64_t at = c->off;
    if ((rc = rd_u32(c, &t->n_dims, "n_dims")))
        return rc;
    if (t->n_dims < 1 || t->n_dims > GGUF_MAX_DIMS)
        return err_set(c->e, ERR_FORMAT, "%sn_dims %" PRIu32 " at byte %" PRIu64 " is not in 1..%d",
                       c->where, t->n_dims, at, GGUF_MAX_DIMS);
    uint64_t prod = 1;
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++)
        t->ne[d] = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        at = c->off;
        if ((rc = rd_u64(c, &t->ne[d], "dim")))
            return rc;
        if (t->ne[d] == 0)
            return err_set(c->e, ERR_FORMAT, "%sdim %" PRIu32 " is 0 at byte %" PRIu64, c->where, d,
                           at);
        if (t->ne[d] > (uint64_t)INT64_MAX / prod)
            return err_set(c->e, ERR_FORMAT,
                           "%selement count overflows at dim %" PRIu32 " (%" PRIu64
                           ") at byte %" PRIu64,
                           c->where, d, t->ne[d], at);
        prod *= t->ne[d];
    }
    t->n_elems = prod;
    at = c->off;
    if ((rc = rd_u32(c, &t->type, "type")))
        return rc;
    const ggml_type_info_t *ti = ggml_type_get(t->type);
    if (!ti)
        return err_set(c->e, ERR_UNSUPPORTED, "%sunknown tensor type %" PRIu32 " at byte %" PRIu64,
                       c->where, t->type, at);
    if (t->ne[0] % ti->block_elems)
        return err_set(c->e, ERR_FORMAT,
                       "%srow of %" PRIu64 " elements is not a whole "
                       "number of %s blocks (%" PRIu32 " elements each)",
                       c->where, t->ne[0], ti->name, ti->block_elems);
    /* bytes = blocks per row * block bytes * rows, kept below 2^63 */
    uint64_t blocks = t->ne[0] / ti->block_elems, rows = prod / t->ne[0];
    if (blocks > (uint64_t)INT64_MAX / ti->block_bytes ||
        rows > (uint64_t)INT64_MAX / (blocks * ti->block_bytes))
        return err_set(c->e, ERR_FORMAT, "%sbyte size of %" PRIu64 " %s elements overflows",
                       c->where, prod, ti->name);
    t->nbytes = blocks * ti->block_bytes * rows;
    at = c->off;
    if ((rc = rd_u64(c, &t->offset, "offset")))
        return rc;
    if (t->offset % g->alignment)
        return err_set(c->e, ERR_FORMAT,
                       "%soffset %" PRIu64 " not aligned to %" PRIu32 " (at byte %" PRIu64 ")",
                       c->where, t->offset, g->alignment, at);
    return 0;
}

static int parse_tensors(gguf_t *g, cursor_t *c)
{
    int rc;
    g->tensors = calloc(g->n_tensors ? g->n_tensors : 1, sizeof *g->tensors);
    if (!g->tensors || index_alloc(g->n_tensors, &g->t_index, &g->t_index_mask))
        return err_set(c->e, ERR_NOMEM, "out of memory for %" PRIu64 " tensors", g->n_tensors);
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if ((rc = parse_tensor_info(g, c, i)))
            return rc;
    c->where[0] = '\0';

    /* the data section starts at the aligned end of the tensor infos */
    uint64_t a = g->alignment;
    g->data_offset = (c->off + a - 1) / a * a;
    if (g->n_tensors == 0)
        return 0;
    if (g->data_offset > c->size)
        return err_set(c->e, ERR_FORMAT,
                       "data section would start at byte %" PRIu64
                       " but the file ends at byte %" PRIu64,
                       g->data_offset, c->size);
    uint64_t data_size = c->size - g->data_offset;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        gguf_tensor_t *t = &g->tensors[i];
        if (t->offset > data_size || t->nbytes > data_size - t->offset) {
            char pn[72];
            return err_set(c->e, ERR_FORMAT,
                           "tensor '%s': data at offset %" PRIu64 " + %" PRIu64
                           " bytes is outside the data section (%" PRIu64 " bytes at byte %" PRIu64
                           ")",
                           gguf_printable(pn, sizeof pn, t->name.ptr, t->name.len), t->offset,
                           t->nbytes, data_size, g->data_offset);
        }
        t->data = c->base + g->data_offset + t->offset;
    }
    return 0;
}

int gguf_open_mem(const void *buf, size_t len, gguf_t **out, err_info_t *e)
{
    gguf_t *g = calloc(1, sizeof *g);
    if (!g)
        return err_set(e, ERR_NOMEM, "out of memory");
    g->base = buf;
    g->size = len;
    cursor_t c = {.base = buf, .size = len, .off = 0, .e = e};
    int rc;
    if ((rc = parse_header(g, &c)) || (rc = parse_kvs(g, &c)) || (rc = read_alignment(g, &c)) ||
        (rc = parse_tensors(g, &c))) {
        gguf_free(g);
        return rc;
    }
    *out = g;
    return 0;
}

int gguf_open(const char *path, gguf_t **out, err_info_t *e)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return err_set(e, ERR_IO, "cannot open: %s", strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int rc = err_set(e, ERR_IO, "cannot stat: %s", strerror(errno));
        close(fd);
        return rc;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return err_set(e, ERR_IO, "not a regular file");
    }
    size_t size = (size_t)st.st_size;
    if (size < 4) {
        close(fd);
        return err_set(e, ERR_FORMAT, "file is %zu bytes, too short for the GGUF magic", size);
    }
    void *p = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int saved = errno;
    close(fd);
    if (p == MAP_FAILED)
        return err_set(e, ERR_IO, "cannot mmap %zu bytes: %s", size, strerror(saved));
    gguf_t *g = NULL;
    int rc = gguf_open_mem(p, size, &g, e);
    if (rc) {
        munmap(p, size);
        return rc;
    }
    g->mapped = true;
    *out = g;
    return 0;
}

void gguf_close(gguf_t **g)
{
    if (g && *g) {
        gguf_free(*g);
        *g = NULL;
    }
}

/* ---- accessors ---- */

uint32_t gguf_version(const gguf_t *g)
{
    return g->version;
}

uint64_t gguf_file_size(const gguf_t *g)
{
    return g->size;
}

uint32_t gguf_alignment(const gguf_t *g)
{
    return g->alignment;
}

uint64_t gguf_data_offset(const gguf_t *g)
{
    return g->data_offset;
}

uint64_t gguf_kv_count(const gguf_t *g)
{
    return g->n_kv;
}

const gguf_kv_t *gguf_kv_at(const gguf_t *g, uint64_t i)
{
    return i < g->n_kv ? &g->kv[i] : NULL;
}

const gguf_kv_t *gguf_kv_find(const gguf_t *g, const char *key)
{
    uint64_t len = strlen(key);
    uint64_t s = index_probe(g->kv_index, g->kv_index_mask, g->kv, sizeof *g->kv, key, len);
    return g->kv_index[s] ? &g->kv[g->kv_index[s] - 1] : NULL;
}

uint64_t gguf_tensor_count(const gguf_t *g)
{
    return g->n_tensors;
}

const gguf_tensor_t *gguf_tensor_at(const gguf_t *g, uint64_t i)
{
    return i < g->n_tensors ? &g->tensors[i] : NULL;
}

const gguf_tensor_t *gguf_tensor_find(const gguf_t *g, const char *name)
{
    uint64_t len = strlen(name);
    uint64_t s =
        index_probe(g->t_index, g->t_index_mask, g->tensors, sizeof *g->tensors, name, len);
    return g->t_index[s] ? &g->tensors[g->t_index[s] - 1] : NULL;
}

bool gguf_str_eq(gguf_str_t s, const char *c)
{
    return str_eq2(s, c, strlen(c));
}
