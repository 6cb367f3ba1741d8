/*
 * model/gguf_write.h — a small GGUF v3 (or v2) writer: metadata of every value type,
 * nested arrays included, tensors with their data, alignment padding as ggml writes it.
 *
 * Used by `gist-model make-tiny` (model/tiny.c) and by tests that craft files. The writer
 * owns copies of keys, names and metadata values; tensor data is either a caller pointer
 * that must stay valid until the file is written, or produced by a fill callback at write
 * time (so a large model never has to sit in memory whole).
 *
 * Errors are sticky, as in a buffered stream: the first failing add records its code and
 * message, later adds do nothing, and gguf_writer_write returns that first error. The
 * writer does not refuse duplicate keys or names: tests use it to make files that the
 * reader must reject. One thread at a time per writer.
 */
#ifndef GISTD_MODEL_GGUF_WRITE_H
#define GISTD_MODEL_GGUF_WRITE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "model/gguf.h"

/* A growable byte buffer that encodes GGUF values (little-endian). Used inside the writer
 * and by tests to build pre-encoded values (nested arrays) or whole crafted files. After an
 * allocation failure `oom` is set and further puts do nothing. */
typedef struct gguf_buf {
    uint8_t *p;
    size_t len, cap;
    bool oom;
} gguf_buf_t;

void gguf_buf_init(gguf_buf_t *b);
void gguf_buf_fini(gguf_buf_t *b);
void gguf_buf_bytes(gguf_buf_t *b, const void *p, size_t n);
void gguf_buf_u8(gguf_buf_t *b, uint8_t v);
void gguf_buf_u16(gguf_buf_t *b, uint16_t v);
void gguf_buf_u32(gguf_buf_t *b, uint32_t v);
void gguf_buf_u64(gguf_buf_t *b, uint64_t v);
void gguf_buf_f32(gguf_buf_t *b, float v);
void gguf_buf_f64(gguf_buf_t *b, double v);
void gguf_buf_str(gguf_buf_t *b, const char *s);              /* u64 length + bytes */
void gguf_buf_strn(gguf_buf_t *b, const char *s, uint64_t n); /* the same, n bytes */
/* An array header: u32 element type, u64 count (the elements follow, put by the caller). */
void gguf_buf_arr_head(gguf_buf_t *b, gguf_vtype_t elem_type, uint64_t n);
/* Zero bytes up to the next multiple of align. */
void gguf_buf_pad(gguf_buf_t *b, uint32_t align);

typedef struct gguf_writer gguf_writer_t;

/* Fills dst (nbytes, the tensor's size) with the data of the tensor added as `index`
 * (0-based, in add order). Returns 0 or a negative ERR_* code. */
typedef int (*gguf_fill_fn)(void *ctx, uint64_t index, void *dst, size_t nbytes);

/* A writer for version 3, alignment 32, no keys and no tensors. */
int gguf_writer_new(gguf_writer_t **out);
void gguf_writer_destroy(gguf_writer_t **w);

/* The version number written in the header: 2 or 3 for real files; any other number only
 * to craft files the reader must reject. */
void gguf_writer_set_version(gguf_writer_t *w, uint32_t version);

/* Sets the data alignment (a power of two) and adds the key general.alignment (u32) at this
 * point of the key list. ERR_INVAL for a bad alignment or a second call. */
int gguf_writer_set_alignment(gguf_writer_t *w, uint32_t alignment);

/* --- metadata: each adds one key, in order --- */
int gguf_writer_add_u8(gguf_writer_t *w, const char *key, uint8_t v);
int gguf_writer_add_i8(gguf_writer_t *w, const char *key, int8_t v);
int gguf_writer_add_u16(gguf_writer_t *w, const char *key, uint16_t v);
int gguf_writer_add_i16(gguf_writer_t *w, const char *key, int16_t v);
int gguf_writer_add_u32(gguf_writer_t *w, const char *key, uint32_t v);
int gguf_writer_add_i32(gguf_writer_t *w, const char *key, int32_t v);
int gguf_writer_add_u64(gguf_writer_t *w, const char *key, uint64_t v);
int gguf_writer_add_i64(gguf_writer_t *w, const char *key, int64_t v);
int gguf_writer_add_f32(gguf_writer_t *w, const char *key, float v);
int gguf_writer_add_f64(gguf_writer_t *w, const char *key, double v);
int gguf_writer_add_bool(gguf_writer_t *w, const char *key, bool v);
int gguf_writer_add_str(gguf_writer_t *w, const char *key, const char *v);
/* An array of n packed little-endian scalars of elem_type (not string or array). */
int gguf_writer_add_arr(gguf_writer_t *w, const char *key, gguf_vtype_t elem_type,
                        const void *elems, uint64_t n);
/* An array of n NUL-terminated strings. */
int gguf_writer_add_arr_str(gguf_writer_t *w, const char *key, const char *const *strs, uint64_t n);
/* A value of type `type` already encoded in bytes (for nested arrays: encode them with a
 * gguf_buf_t, starting with gguf_buf_arr_head, and pass GGUF_VT_ARRAY). */
int gguf_writer_add_raw(gguf_writer_t *w, const char *key, gguf_vtype_t type, const void *value,
                        size_t len);

/* --- tensors: ne[] in GGUF order (ne[0] innermost), n_dims 1..4; the row length ne[0]
 * must be a whole number of the type's blocks (ERR_INVAL with a message otherwise) --- */
int gguf_writer_add_tensor(gguf_writer_t *w, const char *name, uint32_t type, uint32_t n_dims,
                           const uint64_t *ne, const void *data);
int gguf_writer_add_tensor_fill(gguf_writer_t *w, const char *name, uint32_t type, uint32_t n_dims,
                                const uint64_t *ne, gguf_fill_fn fill, void *ctx);

uint64_t gguf_writer_kv_count(const gguf_writer_t *w);
uint64_t gguf_writer_tensor_count(const gguf_writer_t *w);

/* Writes the file (header, keys, tensor infos, padding, data each padded to the alignment).
 * Returns the first error of any add, or an I/O error; a partly written file is removed. */
int gguf_writer_write(gguf_writer_t *w, const char *path, err_info_t *e);

/* The same into a malloc'd buffer (*buf, *len; the caller frees *buf). */
int gguf_writer_write_mem(gguf_writer_t *w, uint8_t **buf, size_t *len, err_info_t *e);

#endif
