/*
 * model/gguf_priv.h — helpers shared by the GGUF reader's two files (gguf.c parses and
 * validates; gguf_get.c answers typed queries). Not part of the public API.
 */
#ifndef GISTD_MODEL_GGUF_PRIV_H
#define GISTD_MODEL_GGUF_PRIV_H

#include <stdint.h>
#include <string.h>

#include "model/gguf.h"

/* Little-endian loads (unaligned-safe). */
static inline uint16_t ld16(const uint8_t *p)
{
    uint16_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline uint32_t ld32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline uint64_t ld64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* Bytes of one element of a fixed-size value type; 0 for string, array, unknown. */
static inline size_t vtype_size(uint32_t t)
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

/* Copies up to 60 bytes of s as printable ASCII into buf (for messages). */
static inline const char *gguf_printable(char *buf, size_t cap, const char *s, uint64_t len)
{
    size_t n = 0;
    uint64_t lim = len < 60 ? len : 60;
    for (uint64_t i = 0; i < lim && n + 1 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        buf[n++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    if (len > lim && n + 4 < cap) {
        memcpy(buf + n, "...", 3);
        n += 3;
    }
    buf[n] = '\0';
    return buf;
}

#endif
