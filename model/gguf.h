/*
 * model/gguf.h — GGUF v2/v3 reader (mmap, zero-copy) and the ggml tensor types.
 *
 * gguf_open maps a file read-only and validates everything before trusting it:
 * magic, version, counts, string lengths, value types, nested arrays, tensor
 * dims and their products, tensor types, alignment, offsets and sizes inside
 * the data section, duplicate keys and tensor names. Every rejection returns
 * ERR_FORMAT (or ERR_IO / ERR_NOMEM / ERR_UNSUPPORTED) with a message saying
 * what and where (byte offset, key or tensor name).
 *
 * After a successful open, all returned pointers (strings, arrays, tensor
 * data) point into the mapping and stay valid until gguf_close. Strings are
 * NOT NUL-terminated in the file: they are returned as (ptr, len) pairs.
 * A gguf_t is read-only after open and may be read from any thread.
 */
#ifndef GISTD_MODEL_GGUF_H
#define GISTD_MODEL_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

/* Metadata value types, as numbered in the GGUF spec. */
typedef enum gguf_vtype {
    GGUF_VT_UINT8 = 0,
    GGUF_VT_INT8 = 1,
    GGUF_VT_UINT16 = 2,
    GGUF_VT_INT16 = 3,
    GGUF_VT_UINT32 = 4,
    GGUF_VT_INT32 = 5,
    GGUF_VT_FLOAT32 = 6,
    GGUF_VT_BOOL = 7,
    GGUF_VT_STRING = 8,
    GGUF_VT_ARRAY = 9,
    GGUF_VT_UINT64 = 10,
    GGUF_VT_INT64 = 11,
    GGUF_VT_FLOAT64 = 12,
    GGUF_VT_COUNT_
} gguf_vtype_t;

/* Tensor types, as numbered by ggml. Only some are supported for compute
 * (see gguf_type_info); the reader accepts any type it knows the size of. */
typedef enum ggml_type {
    GGML_TYPE_F32 = 0,
    GGML_TYPE_F16 = 1,
    GGML_TYPE_Q4_0 = 2,
    GGML_TYPE_Q4_1 = 3,
    GGML_TYPE_Q5_0 = 6,
    GGML_TYPE_Q5_1 = 7,
    GGML_TYPE_Q8_0 = 8,
    GGML_TYPE_Q8_1 = 9,
    GGML_TYPE_Q2_K = 10,
    GGML_TYPE_Q3_K = 11,
    GGML_TYPE_Q4_K = 12,
    GGML_TYPE_Q5_K = 13,
    GGML_TYPE_Q6_K = 14,
    GGML_TYPE_Q8_K = 15,
    GGML_TYPE_I8 = 24,
    GGML_TYPE_I16 = 25,
    GGML_TYPE_I32 = 26,
    GGML_TYPE_I64 = 27,
    GGML_TYPE_F64 = 28,
    GGML_TYPE_BF16 = 30,
} ggml_type_t;

/* Size facts of a tensor type: elements per block and bytes per block. */
typedef struct ggml_type_info {
    const char *name;     /* "f32", "q8_0", ... */
    uint32_t block_elems; /* elements in one block (1 for plain types) */
    uint32_t block_bytes; /* bytes in one block */
} ggml_type_info_t;

/* Facts of a type, or NULL for a type number the reader does not know. */
const ggml_type_info_t *ggml_type_get(uint32_t type);

/* Bytes of a row of n elements of a type; 0 when n is not a whole number of blocks
 * or the type is unknown. */
size_t ggml_row_bytes(uint32_t type, uint64_t n);

/* A string inside the mapping (not NUL-terminated). */
typedef struct gguf_str {
    const char *ptr;
    uint64_t len;
} gguf_str_t;

/* An array value: n elements of elem_type. For scalar element types, data
 * points at the packed little-endian elements. For strings and nested arrays,
 * use gguf_arr_str / gguf_arr_sub (elements are variable-sized). */
typedef struct gguf_arr {
    gguf_vtype_t elem_type;
    uint64_t n;
    const uint8_t *data; /* first element in the mapping */
    const uint8_t *end;  /* one past the last element */
} gguf_arr_t;

/* One metadata key/value. */
typedef struct gguf_kv {
    gguf_str_t key;
    gguf_vtype_t type;
    union {
        uint64_t u64; /* any unsigned integer type, widened; bool as 0/1 */
        int64_t i64;  /* any signed integer type, widened */
        double f64;   /* float32 or float64, widened */
        gguf_str_t str;
        gguf_arr_t arr;
    } v;
} gguf_kv_t;

/* One tensor. ne[] is GGUF order: ne[0] is the innermost (contiguous) dim. */
typedef struct gguf_tensor {
    gguf_str_t name;
    uint32_t n_dims;   /* 1..4 */
    uint64_t ne[4];    /* unused dims are 1 */
    uint32_t type;     /* ggml_type_t */
    uint64_t offset;   /* relative to the data section */
    uint64_t n_elems;  /* product of ne */
    uint64_t nbytes;   /* bytes of data */
    const void *data;  /* in the mapping */
} gguf_tensor_t;

typedef struct gguf gguf_t;

/* Maps and validates path. On success *out owns the mapping. On error *out is
 * untouched and e says what was wrong. */
int gguf_open(const char *path, gguf_t **out, err_info_t *e);

/* Same as gguf_open over a caller-owned buffer (fuzzing, tests); the buffer
 * must outlive the returned object and is not copied. */
int gguf_open_mem(const void *buf, size_t len, gguf_t **out, err_info_t *e);

void gguf_close(gguf_t **g);

uint32_t gguf_version(const gguf_t *g);
uint64_t gguf_file_size(const gguf_t *g);
uint32_t gguf_alignment(const gguf_t *g);
uint64_t gguf_data_offset(const gguf_t *g); /* file offset of the data section */

/* --- metadata --- */
uint64_t gguf_kv_count(const gguf_t *g);
const gguf_kv_t *gguf_kv_at(const gguf_t *g, uint64_t i);
const gguf_kv_t *gguf_kv_find(const gguf_t *g, const char *key); /* NULL if absent */

/* Typed getters. Each returns 0 and sets *out, ERR_NOTFOUND when the key is
 * absent (e gets "missing key K"), or ERR_FORMAT when it has an incompatible
 * type or its value does not fit (e says which). Integer getters accept any
 * integer width and signedness whose value fits. */
int gguf_get_u32(const gguf_t *g, const char *key, uint32_t *out, err_info_t *e);
int gguf_get_u64(const gguf_t *g, const char *key, uint64_t *out, err_info_t *e);
int gguf_get_i64(const gguf_t *g, const char *key, int64_t *out, err_info_t *e);
int gguf_get_f32(const gguf_t *g, const char *key, float *out, err_info_t *e); /* any float or int */
int gguf_get_bool(const gguf_t *g, const char *key, bool *out, err_info_t *e);
int gguf_get_str(const gguf_t *g, const char *key, gguf_str_t *out, err_info_t *e);
int gguf_get_arr(const gguf_t *g, const char *key, gguf_arr_t *out, err_info_t *e);

/* Convenience with a default when the key is absent (still ERR_FORMAT on a wrong type). */
int gguf_get_u32_or(const gguf_t *g, const char *key, uint32_t dflt, uint32_t *out,
                    err_info_t *e);
int gguf_get_f32_or(const gguf_t *g, const char *key, float dflt, float *out, err_info_t *e);
int gguf_get_bool_or(const gguf_t *g, const char *key, bool dflt, bool *out, err_info_t *e);

/* Array element access. For scalar arrays: gguf_arr_u64/i64/f64 widen element i
 * (bool/int/float as appropriate). For string arrays, gguf_arr_str. Strings
 * in an array are variable-length, so gguf_arr_str is O(i) unless iterating:
 * use gguf_arr_strs to fill a table of all of them at once (caller frees). */
uint64_t gguf_arr_u64(const gguf_arr_t *a, uint64_t i);
int64_t gguf_arr_i64(const gguf_arr_t *a, uint64_t i);
double gguf_arr_f64(const gguf_arr_t *a, uint64_t i);
gguf_str_t gguf_arr_str(const gguf_arr_t *a, uint64_t i);
int gguf_arr_strs(const gguf_arr_t *a, gguf_str_t **out); /* malloc'd table of a->n */
/* A nested array element i (elem_type GGUF_VT_ARRAY). */
gguf_arr_t gguf_arr_sub(const gguf_arr_t *a, uint64_t i);

/* True when s equals the NUL-terminated c string. */
bool gguf_str_eq(gguf_str_t s, const char *c);

/* --- tensors --- */
uint64_t gguf_tensor_count(const gguf_t *g);
const gguf_tensor_t *gguf_tensor_at(const gguf_t *g, uint64_t i);
const gguf_tensor_t *gguf_tensor_find(const gguf_t *g, const char *name); /* NULL if absent */

/* Name of a value type ("u32", "string", ...). */
const char *gguf_vtype_name(uint32_t t);

#endif
