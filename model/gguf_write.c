/*
 * model/gguf_write.c — the GGUF writer (see model/gguf_write.h).
 *
 * Metadata is encoded into one buffer as keys are added; tensor infos are kept as a list
 * and laid out at write time: each tensor's data starts at a multiple of the alignment
 * within the data section, and is followed by zero padding, as ggml writes it.
 */
#include "model/gguf_write.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define WRITER_DEFAULT_ALIGNMENT 32

/* ---- gguf_buf ---- */

void gguf_buf_init(gguf_buf_t *b)
{
    memset(b, 0, sizeof *b);
}

void gguf_buf_fini(gguf_buf_t *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

void gguf_buf_bytes(gguf_buf_t *b, const void *p, size_t n)
{
    if (b->oom || n == 0)
        return;
    if (n > b->cap - b->len) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap - b->len < n) {
            if (cap > SIZE_MAX / 2) {
                b->oom = true;
                return;
            }
            cap *= 2;
        }
        uint8_t *q = realloc(b->p, cap);
        if (!q) {
            b->oom = true;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
}

/* Values are stored little-endian; the project only builds on little-endian hosts. */
void gguf_buf_u8(gguf_buf_t *b, uint8_t v)
{
    gguf_buf_bytes(b, &v, 1);
}

void gguf_buf_u16(gguf_buf_t *b, uint16_t v)
{
    gguf_buf_bytes(b, &v, 2);
}

void gguf_buf_u32(gguf_buf_t *b, uint32_t v)
{
    gguf_buf_bytes(b, &v, 4);
}

void gguf_buf_u64(gguf_buf_t *b, uint64_t v)
{
    gguf_buf_bytes(b, &v, 8);
}

void gguf_buf_f32(gguf_buf_t *b, float v)
{
    gguf_buf_bytes(b, &v, 4);
}

void gguf_buf_f64(gguf_buf_t *b, double v)
{
    gguf_buf_bytes(b, &v, 8);
}

void gguf_buf_strn(gguf_buf_t *b, const char *s, uint64_t n)
{
    gguf_buf_u64(b, n);
    gguf_buf_bytes(b, s, (size_t)n);
}

void gguf_buf_str(gguf_buf_t *b, const char *s)
{
    gguf_buf_strn(b, s, strlen(s));
}

void gguf_buf_arr_head(gguf_buf_t *b, gguf_vtype_t elem_type, uint64_t n)
{
    gguf_buf_u32(b, (uint32_t)elem_type);
    gguf_buf_u64(b, n);
}

void gguf_buf_pad(gguf_buf_t *b, uint32_t align)
{
    static const uint8_t zeros[64];
    while (!b->oom && b->len % align) {
        size_t n = align - b->len % align;
        gguf_buf_bytes(b, zeros, n < sizeof zeros ? n : sizeof zeros);
    }
}

/* ---- the writer ---- */

typedef struct wtensor {
    char *name;
    uint32_t type;
    uint32_t n_dims;
    uint64_t ne[4];
    uint64_t nbytes;
    uint64_t offset; /* within the data section, set at write time */
    const void *data;
    gguf_fill_fn fill;
    void *ctx;
} wtensor_t;

struct gguf_writer {
    uint32_t version;
    uint32_t alignment;
    bool alignment_set;
    gguf_buf_t kv; /* encoded keys and values */
    uint64_t n_kv;
    wtensor_t *tensors;
    uint64_t n_tensors, cap_tensors;
    err_info_t err; /* the first error of an add (sticky) */
};

int gguf_writer_new(gguf_writer_t **out)
{
    gguf_writer_t *w = calloc(1, sizeof *w);
    if (!w)
        return ERR_NOMEM;
    w->version = 3;
    w->alignment = WRITER_DEFAULT_ALIGNMENT;
    gguf_buf_init(&w->kv);
    *out = w;
    return 0;
}

void gguf_writer_destroy(gguf_writer_t **pw)
{
    if (!pw || !*pw)
        return;
    gguf_writer_t *w = *pw;
    for (uint64_t i = 0; i < w->n_tensors; i++)
        free(w->tensors[i].name);
    free(w->tensors);
    gguf_buf_fini(&w->kv);
    free(w);
    *pw = NULL;
}

void gguf_writer_set_version(gguf_writer_t *w, uint32_t version)
{
    w->version = version;
}

/* Records the first error; returns code either way. */
static int fail(gguf_writer_t *w, int code, const char *what, const char *name)
{
    if (!w->err.code)
        err_set(&w->err, code, "%s%s%s", what, name ? ": " : "", name ? name : "");
    return code;
}

int gguf_writer_set_alignment(gguf_writer_t *w, uint32_t alignment)
{
    if (w->err.code)
        return w->err.code;
    if (alignment == 0 || (alignment & (alignment - 1)))
        return fail(w, ERR_INVAL, "alignment is not a nonzero power of two", NULL);
    if (w->alignment_set)
        return fail(w, ERR_INVAL, "alignment set twice", NULL);
    w->alignment = alignment;
    w->alignment_set = true;
    return gguf_writer_add_u32(w, "general.alignment", alignment);
}

/* Starts a key: name and type. The caller then puts the value into w->kv. */
static int kv_begin(gguf_writer_t *w, const char *key, gguf_vtype_t type)
{
    if (w->err.code)
        return w->err.code;
    gguf_buf_str(&w->kv, key);
    gguf_buf_u32(&w->kv, (uint32_t)type);
    w->n_kv++;
    return 0;
}

static int kv_end(gguf_writer_t *w, const char *key)
{
    if (w->kv.oom)
        return fail(w, ERR_NOMEM, "out of memory adding key", key);
    return 0;
}

#define SCALAR_ADDER(fn, ctype, vt, put)                                                           \
    int fn(gguf_writer_t *w, const char *key, ctype v)                                             \
    {                                                                                              \
        if (kv_begin(w, key, vt))                                                                  \
            return w->err.code;                                                                    \
        put;                                                                                       \
        return kv_end(w, key);                                                                     \
    }

SCALAR_ADDER(gguf_writer_add_u8, uint8_t, GGUF_VT_UINT8, gguf_buf_u8(&w->kv, v))
SCALAR_ADDER(gguf_writer_add_i8, int8_t, GGUF_VT_INT8, gguf_buf_u8(&w->kv, (uint8_t)v))
SCALAR_ADDER(gguf_writer_add_u16, uint16_t, GGUF_VT_UINT16, gguf_buf_u16(&w->kv, v))
SCALAR_ADDER(gguf_writer_add_i16, int16_t, GGUF_VT_INT16, gguf_buf_u16(&w->kv, (uint16_t)v))
SCALAR_ADDER(gguf_writer_add_u32, uint32_t, GGUF_VT_UINT32, gguf_buf_u32(&w->kv, v))
SCALAR_ADDER(gguf_writer_add_i32, int32_t, GGUF_VT_INT32, gguf_buf_u32(&w->kv, (uint32_t)v))
SCALAR_ADDER(gguf_writer_add_u64, uint64_t, GGUF_VT_UINT64, gguf_buf_u64(&w->kv, v))
SCALAR_ADDER(gguf_writer_add_i64, int64_t, GGUF_VT_INT64, gguf_buf_u64(&w->kv, (uint64_t)v))
SCALAR_ADDER(gguf_writer_add_f32, float, GGUF_VT_FLOAT32, gguf_buf_f32(&w->kv, v))
SCALAR_ADDER(gguf_writer_add_f64, double, GGUF_VT_FLOAT64, gguf_buf_f64(&w->kv, v))
SCALAR_ADDER(gguf_writer_add_bool, bool, GGUF_VT_BOOL, gguf_buf_u8(&w->kv, v ? 1 : 0))
SCALAR_ADDER(gguf_writer_add_str, const char *, GGUF_VT_STRING, gguf_buf_str(&w->kv, v))

/* Element size of a scalar value type; 0 for string, array or unknown. */
static size_t scalar_size(gguf_vtype_t t)
{
    switch (t) {
    case GGUF_VT_UINT8:
    case GGUF_VT_INT8:
    case GGUF_VT_BOOL:
        return 1;
    case GGUF_VT_UINT16:
    case GGUF_VT_INT16:
        return 2;
    case GGUF_VT_UINT32:
    case GGUF_VT_INT32:
    case GGUF_VT_FLOAT32:
        return 4;
    case GGUF_VT_UINT64:
    case GGUF_VT_INT64:
    case GGUF_VT_FLOAT64:
        return 8;
    default:
        return 0;
    }
}

int gguf_writer_add_arr(gguf_writer_t *w, const char *key, gguf_vtype_t elem_type,
                        const void *elems, uint64_t n)
{
    size_t esz = scalar_size(elem_type);
    if (w->err.code)
        return w->err.code;
    if (!esz)
        return fail(w, ERR_INVAL, "gguf_writer_add_arr takes scalar elements only", key);
    kv_begin(w, key, GGUF_VT_ARRAY);
    gguf_buf_arr_head(&w->kv, elem_type, n);
    gguf_buf_bytes(&w->kv, elems, (size_t)(n * esz));
    return kv_end(w, key);
}

int gguf_writer_add_arr_str(gguf_writer_t *w, const char *key, const char *const *strs, uint64_t n)
{
    if (kv_begin(w, key, GGUF_VT_ARRAY))
        return w->err.code;
    gguf_buf_arr_head(&w->kv, GGUF_VT_STRING, n);
    for (uint64_t i = 0; i < n; i++)
        gguf_buf_str(&w->kv, strs[i]);
    return kv_end(w, key);
}

int gguf_writer_add_raw(gguf_writer_t *w, const char *key, gguf_vtype_t type, const void *value,
                        size_t len)
{
    if (kv_begin(w, key, type))
        return w->err.code;
    gguf_buf_bytes(&w->kv, value, len);
    return kv_end(w, key);
}

static int add_tensor(gguf_writer_t *w, const char *name, uint32_t type, uint32_t n_dims,
                      const uint64_t *ne, const void *data, gguf_fill_fn fill, void *ctx)
{
    if (w->err.code)
        return w->err.code;
    const ggml_type_info_t *ti = ggml_type_get(type);
    if (!ti)
        return fail(w, ERR_INVAL, "unknown tensor type", name);
    if (n_dims < 1 || n_dims > 4)
        return fail(w, ERR_INVAL, "n_dims not in 1..4", name);
    uint64_t n = 1;
    for (uint32_t d = 0; d < n_dims; d++) {
        if (ne[d] == 0 || ne[d] > (uint64_t)INT64_MAX / n)
            return fail(w, ERR_INVAL, "tensor dim is 0 or the element count overflows", name);
        n *= ne[d];
    }
    if (ne[0] % ti->block_elems) {
        if (!w->err.code)
            err_set(&w->err, ERR_INVAL,
                    "tensor '%s': row of %" PRIu64 " elements is not a "
                    "whole number of %s blocks of %" PRIu32,
                    name, ne[0], ti->name, ti->block_elems);
        return ERR_INVAL;
    }
    if (w->n_tensors == w->cap_tensors) {
        uint64_t cap = w->cap_tensors ? 2 * w->cap_tensors : 64;
        wtensor_t *t = realloc(w->tensors, cap * sizeof *t);
        if (!t)
            return fail(w, ERR_NOMEM, "out of memory adding tensor", name);
        w->tensors = t;
        w->cap_tensors = cap;
    }
    wtensor_t *t = &w->tensors[w->n_tensors];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    if (!t->name)
        return fail(w, ERR_NOMEM, "out of memory adding tensor", name);
    t->type = type;
    t->n_dims = n_dims;
    for (uint32_t d = 0; d < 4; d++)
        t->ne[d] = d < n_dims ? ne[d] : 1;
    t->nbytes = n / ne[0] * (ne[0] / ti->block_elems * ti->block_bytes);
    t->data = data;
    t->fill = fill;
    t->ctx = ctx;
    w->n_tensors++;
    return 0;
}

int gguf_writer_add_tensor(gguf_writer_t *w, const char *name, uint32_t type, uint32_t n_dims,
                           const uint64_t *ne, const void *data)
{
    return add_tensor(w, name, type, n_dims, ne, data, NULL, NULL);
}

int gguf_writer_add_tensor_fill(gguf_writer_t *w, const char *name, uint32_t type, uint32_t n_dims,
                                const uint64_t *ne, gguf_fill_fn fill, void *ctx)
{
    return add_tensor(w, name, type, n_dims, ne, NULL, fill, ctx);
}

uint64_t gguf_writer_kv_count(const gguf_writer_t *w)
{
    return w->n_kv;
}

uint64_t gguf_writer_tensor_count(const gguf_writer_t *w)
{
    return w->n_tensors;
}

/* Encodes everything before the data section (header, keys, tensor infos, padding) and
 * assigns each tensor's offset; *data_bytes gets the size of the padded data section. */
static int encode_head(gguf_writer_t *w, gguf_buf_t *h, uint64_t *data_bytes, err_info_t *e)
{
    if (w->err.code) {
        err_set(e, w->err.code, "%s", w->err.msg);
        return w->err.code;
    }
    uint64_t off = 0, a = w->alignment;
    gguf_buf_init(h);
    gguf_buf_bytes(h, "GGUF", 4);
    gguf_buf_u32(h, w->version);
    gguf_buf_u64(h, w->n_tensors);
    gguf_buf_u64(h, w->n_kv);
    gguf_buf_bytes(h, w->kv.p, w->kv.len);
    for (uint64_t i = 0; i < w->n_tensors; i++) {
        wtensor_t *t = &w->tensors[i];
        gguf_buf_str(h, t->name);
        gguf_buf_u32(h, t->n_dims);
        for (uint32_t d = 0; d < t->n_dims; d++)
            gguf_buf_u64(h, t->ne[d]);
        gguf_buf_u32(h, t->type);
        t->offset = off;
        gguf_buf_u64(h, off);
        off += (t->nbytes + a - 1) / a * a;
    }
    gguf_buf_pad(h, w->alignment);
    if (h->oom) {
        gguf_buf_fini(h);
        return err_set(e, ERR_NOMEM, "out of memory encoding the GGUF header");
    }
    *data_bytes = off;
    return 0;
}

/* Puts tensor i's data (and its padding) at dst, which has room for the padded size. */
static int tensor_bytes(gguf_writer_t *w, uint64_t i, uint8_t *dst, err_info_t *e)
{
    wtensor_t *t = &w->tensors[i];
    uint64_t a = w->alignment, padded = (t->nbytes + a - 1) / a * a;
    if (t->fill) {
        int rc = t->fill(t->ctx, i, dst, (size_t)t->nbytes);
        if (rc)
            return err_set(e, rc, "tensor '%s': producing its data failed (%s)", t->name,
                           err_str(rc));
    } else {
        memcpy(dst, t->data, (size_t)t->nbytes);
    }
    memset(dst + t->nbytes, 0, (size_t)(padded - t->nbytes));
    return 0;
}

int gguf_writer_write_mem(gguf_writer_t *w, uint8_t **buf, size_t *len, err_info_t *e)
{
    gguf_buf_t h;
    uint64_t data_bytes;
    int rc = encode_head(w, &h, &data_bytes, e);
    if (rc)
        return rc;
    size_t total = h.len + (size_t)data_bytes;
    uint8_t *out = malloc(total ? total : 1);
    if (!out) {
        gguf_buf_fini(&h);
        return err_set(e, ERR_NOMEM, "out of memory for a %zu-byte file", total);
    }
    memcpy(out, h.p, h.len);
    for (uint64_t i = 0; i < w->n_tensors; i++) {
        if ((rc = tensor_bytes(w, i, out + h.len + w->tensors[i].offset, e))) {
            free(out);
            gguf_buf_fini(&h);
            return rc;
        }
    }
    gguf_buf_fini(&h);
    *buf = out;
    *len = total;
    return 0;
}

int gguf_writer_write(gguf_writer_t *w, const char *path, err_info_t *e)
{
    gguf_buf_t h;
    uint64_t data_bytes;
    int rc = encode_head(w, &h, &data_bytes, e);
    if (rc)
        return rc;
    FILE *f = fopen(path, "wb");
    if (!f) {
        gguf_buf_fini(&h);
        return err_set(e, ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    }
    uint8_t *tmp = NULL;
    size_t tmp_cap = 0;
    if (fwrite(h.p, 1, h.len, f) != h.len)
        goto io_error;
    for (uint64_t i = 0; i < w->n_tensors; i++) {
        uint64_t a = w->alignment, padded = (w->tensors[i].nbytes + a - 1) / a * a;
        if (padded > tmp_cap) {
            uint8_t *q = realloc(tmp, (size_t)padded);
            if (!q) {
                rc = err_set(e, ERR_NOMEM, "out of memory for tensor '%s' (%" PRIu64 " bytes)",
                             w->tensors[i].name, padded);
                goto fail;
            }
            tmp = q;
            tmp_cap = (size_t)padded;
        }
        if ((rc = tensor_bytes(w, i, tmp, e)))
            goto fail;
        if (fwrite(tmp, 1, (size_t)padded, f) != padded)
            goto io_error;
    }
    free(tmp);
    gguf_buf_fini(&h);
    if (fclose(f) != 0) {
        rc = err_set(e, ERR_IO, "%s: write failed: %s", path, strerror(errno));
        unlink(path);
        return rc;
    }
    return 0;

io_error:
    rc = err_set(e, ERR_IO, "%s: write failed: %s", path, strerror(errno));
fail:
    free(tmp);
    gguf_buf_fini(&h);
    fclose(f);
    unlink(path);
    return rc;
}
