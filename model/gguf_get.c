/*
 * model/gguf_get.c — typed queries on an open GGUF file: getters that widen integer and
 * float keys and say what is wrong when a key is absent or has the wrong type, and access
 * to array elements. Arrays were validated when the file was opened, so walking them here
 * needs no bounds checks.
 */
#include <inttypes.h>
#include <stdlib.h>

#include "model/gguf.h"
#include "model/gguf_priv.h"

/* ---- typed getters ---- */

static const gguf_kv_t *find_or_missing(const gguf_t *g, const char *key, err_info_t *e)
{
    const gguf_kv_t *kv = gguf_kv_find(g, key);
    if (!kv)
        err_set(e, ERR_NOTFOUND, "missing key %s", key);
    return kv;
}

static bool vtype_unsigned(uint32_t t)
{
    return t == GGUF_VT_UINT8 || t == GGUF_VT_UINT16 || t == GGUF_VT_UINT32 || t == GGUF_VT_UINT64;
}

static bool vtype_signed(uint32_t t)
{
    return t == GGUF_VT_INT8 || t == GGUF_VT_INT16 || t == GGUF_VT_INT32 || t == GGUF_VT_INT64;
}

static int wrong_type(const gguf_kv_t *kv, const char *expected, err_info_t *e)
{
    char pk[72];
    return err_set(e, ERR_FORMAT, "key '%s' has type %s, expected %s",
                   gguf_printable(pk, sizeof pk, kv->key.ptr, kv->key.len),
                   gguf_vtype_name(kv->type), expected);
}

/* An integer value that must lie in [0, max] (max = UINT64_MAX for u64). */
static int get_unsigned(const gguf_t *g, const char *key, uint64_t max, const char *tname,
                        uint64_t *out, err_info_t *e)
{
    const gguf_kv_t *kv = find_or_missing(g, key, e);
    if (!kv)
        return ERR_NOTFOUND;
    if (vtype_unsigned(kv->type)) {
        if (kv->v.u64 > max)
            return err_set(e, ERR_FORMAT, "key '%s' value %" PRIu64 " does not fit in %s", key,
                           kv->v.u64, tname);
        *out = kv->v.u64;
        return 0;
    }
    if (vtype_signed(kv->type)) {
        if (kv->v.i64 < 0 || (uint64_t)kv->v.i64 > max)
            return err_set(e, ERR_FORMAT, "key '%s' value %" PRId64 " does not fit in %s", key,
                           kv->v.i64, tname);
        *out = (uint64_t)kv->v.i64;
        return 0;
    }
    return wrong_type(kv, "an integer", e);
}

int gguf_get_u32(const gguf_t *g, const char *key, uint32_t *out, err_info_t *e)
{
    uint64_t v;
    int rc = get_unsigned(g, key, UINT32_MAX, "u32", &v, e);
    if (!rc)
        *out = (uint32_t)v;
    return rc;
}

int gguf_get_u64(const gguf_t *g, const char *key, uint64_t *out, err_info_t *e)
{
    return get_unsigned(g, key, UINT64_MAX, "u64", out, e);
}

int gguf_get_i64(const gguf_t *g, const char *key, int64_t *out, err_info_t *e)
{
    const gguf_kv_t *kv = find_or_missing(g, key, e);
    if (!kv)
        return ERR_NOTFOUND;
    if (vtype_signed(kv->type)) {
        *out = kv->v.i64;
        return 0;
    }
    if (vtype_unsigned(kv->type)) {
        if (kv->v.u64 > INT64_MAX)
            return err_set(e, ERR_FORMAT, "key '%s' value %" PRIu64 " does not fit in i64", key,
                           kv->v.u64);
        *out = (int64_t)kv->v.u64;
        return 0;
    }
    return wrong_type(kv, "an integer", e);
}

int gguf_get_f32(const gguf_t *g, const char *key, float *out, err_info_t *e)
{
    const gguf_kv_t *kv = find_or_missing(g, key, e);
    if (!kv)
        return ERR_NOTFOUND;
    if (kv->type == GGUF_VT_FLOAT32 || kv->type == GGUF_VT_FLOAT64)
        *out = (float)kv->v.f64;
    else if (vtype_unsigned(kv->type))
        *out = (float)kv->v.u64;
    else if (vtype_signed(kv->type))
        *out = (float)kv->v.i64;
    else
        return wrong_type(kv, "a number", e);
    return 0;
}

int gguf_get_bool(const gguf_t *g, const char *key, bool *out, err_info_t *e)
{
    const gguf_kv_t *kv = find_or_missing(g, key, e);
    if (!kv)
        return ERR_NOTFOUND;
    if (kv->type != GGUF_VT_BOOL)
        return wrong_type(kv, "bool", e);
    *out = kv->v.u64 != 0;
    return 0;
}

int gguf_get_str(const gguf_t *g, const char *key, gguf_str_t *out, err_info_t *e)
{
    const gguf_kv_t *kv = find_or_missing(g, key, e);
    if (!kv)
        return ERR_NOTFOUND;
    if (kv->type != GGUF_VT_STRING)
        return wrong_type(kv, "string", e);
    *out = kv->v.str;
    return 0;
}

int gguf_get_arr(const gguf_t *g, const char *key, gguf_arr_t *out, err_info_t *e)
{
    const gguf_kv_t *kv = find_or_missing(g, key, e);
    if (!kv)
        return ERR_NOTFOUND;
    if (kv->type != GGUF_VT_ARRAY)
        return wrong_type(kv, "array", e);
    *out = kv->v.arr;
    return 0;
}

int gguf_get_u32_or(const gguf_t *g, const char *key, uint32_t dflt, uint32_t *out, err_info_t *e)
{
    if (!gguf_kv_find(g, key)) {
        *out = dflt;
        return 0;
    }
    return gguf_get_u32(g, key, out, e);
}

int gguf_get_f32_or(const gguf_t *g, const char *key, float dflt, float *out, err_info_t *e)
{
    if (!gguf_kv_find(g, key)) {
        *out = dflt;
        return 0;
    }
    return gguf_get_f32(g, key, out, e);
}

int gguf_get_bool_or(const gguf_t *g, const char *key, bool dflt, bool *out, err_info_t *e)
{
    if (!gguf_kv_find(g, key)) {
        *out = dflt;
        return 0;
    }
    return gguf_get_bool(g, key, out, e);
}

/* ---- array elements (the arrays were validated at open, so walking them is safe) ---- */

/* A float element read as an integer saturates (NaN reads 0): converting an out-of-range
 * float to an integer type is undefined behaviour, and the file decides the value. */
static uint64_t f64_to_u64(double d)
{
    if (!(d > 0.0))
        return 0;
    return d >= 18446744073709551616.0 ? UINT64_MAX : (uint64_t)d;
}

static int64_t f64_to_i64(double d)
{
    if (d != d)
        return 0;
    if (d < -9223372036854775808.0)
        return INT64_MIN;
    return d >= 9223372036854775808.0 ? INT64_MAX : (int64_t)d;
}

uint64_t gguf_arr_u64(const gguf_arr_t *a, uint64_t i)
{
    if (vtype_signed(a->elem_type))
        return (uint64_t)gguf_arr_i64(a, i);
    if (i >= a->n)
        return 0;
    const uint8_t *p = a->data + i * vtype_size(a->elem_type);
    switch (a->elem_type) {
    case GGUF_VT_UINT8:
    case GGUF_VT_BOOL:
        return p[0];
    case GGUF_VT_UINT16:
        return ld16(p);
    case GGUF_VT_UINT32:
        return ld32(p);
    case GGUF_VT_UINT64:
        return ld64(p);
    case GGUF_VT_FLOAT32:
    case GGUF_VT_FLOAT64:
        return f64_to_u64(gguf_arr_f64(a, i));
    default:
        return 0;
    }
}

int64_t gguf_arr_i64(const gguf_arr_t *a, uint64_t i)
{
    if (i >= a->n)
        return 0;
    const uint8_t *p = a->data + i * vtype_size(a->elem_type);
    switch (a->elem_type) {
    case GGUF_VT_INT8:
        return (int8_t)p[0];
    case GGUF_VT_INT16:
        return (int16_t)ld16(p);
    case GGUF_VT_INT32:
        return (int32_t)ld32(p);
    case GGUF_VT_INT64:
        return (int64_t)ld64(p);
    case GGUF_VT_FLOAT32:
    case GGUF_VT_FLOAT64:
        return f64_to_i64(gguf_arr_f64(a, i));
    default:
        return (int64_t)gguf_arr_u64(a, i);
    }
}

double gguf_arr_f64(const gguf_arr_t *a, uint64_t i)
{
    if (i >= a->n)
        return 0.0;
    const uint8_t *p = a->data + i * vtype_size(a->elem_type);
    if (a->elem_type == GGUF_VT_FLOAT32) {
        float f;
        memcpy(&f, p, 4);
        return f;
    }
    if (a->elem_type == GGUF_VT_FLOAT64) {
        double d;
        memcpy(&d, p, 8);
        return d;
    }
    if (vtype_signed(a->elem_type))
        return (double)gguf_arr_i64(a, i);
    return (double)gguf_arr_u64(a, i);
}

gguf_str_t gguf_arr_str(const gguf_arr_t *a, uint64_t i)
{
    gguf_str_t s = {NULL, 0};
    if (a->elem_type != GGUF_VT_STRING || i >= a->n)
        return s;
    const uint8_t *p = a->data;
    for (uint64_t k = 0; k < i; k++)
        p += 8 + ld64(p);
    s.len = ld64(p);
    s.ptr = (const char *)p + 8;
    return s;
}

int gguf_arr_strs(const gguf_arr_t *a, gguf_str_t **out)
{
    if (a->elem_type != GGUF_VT_STRING)
        return ERR_INVAL;
    gguf_str_t *t = malloc((a->n ? a->n : 1) * sizeof *t);
    if (!t)
        return ERR_NOMEM;
    const uint8_t *p = a->data;
    for (uint64_t k = 0; k < a->n; k++) {
        t[k].len = ld64(p);
        t[k].ptr = (const char *)p + 8;
        p += 8 + t[k].len;
    }
    *out = t;
    return 0;
}

/* The header and bounds of the validated array encoded at p. */
static gguf_arr_t arr_at(const uint8_t *p)
{
    gguf_arr_t a;
    a.elem_type = (gguf_vtype_t)ld32(p);
    a.n = ld64(p + 4);
    a.data = p + 12;
    size_t esz = vtype_size(a.elem_type);
    if (esz) {
        a.end = a.data + a.n * esz;
    } else if (a.elem_type == GGUF_VT_STRING) {
        const uint8_t *q = a.data;
        for (uint64_t k = 0; k < a.n; k++)
            q += 8 + ld64(q);
        a.end = q;
    } else {
        const uint8_t *q = a.data;
        for (uint64_t k = 0; k < a.n; k++)
            q = arr_at(q).end;
        a.end = q;
    }
    return a;
}

gguf_arr_t gguf_arr_sub(const gguf_arr_t *a, uint64_t i)
{
    gguf_arr_t none = {GGUF_VT_UINT8, 0, NULL, NULL};
    if (a->elem_type != GGUF_VT_ARRAY || i >= a->n)
        return none;
    const uint8_t *p = a->data;
    for (uint64_t k = 0; k < i; k++)
        p = arr_at(p).end;
    return arr_at(p);
}
