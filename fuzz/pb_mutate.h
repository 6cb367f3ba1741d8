/*
 * fuzz/pb_mutate.h — structure-aware mutation of decoded protobuf-c messages, for fuzz targets
 * whose input is protobuf (daemon/fuzz_request.c).
 *
 * A byte-level fuzzer rarely turns a valid message into another valid one with an extreme
 * value in a deep field (a Generate whose sampling.repeat_last_n is INT32_MAX); here a message
 * is changed through its descriptor instead: one field, picked at random at any depth, is set
 * to a value from a table of extremes for its type (0, +-1, the int32 and uint32 limits, 2^63,
 * NaN, inf, denormals, ...), a word of the caller's dictionary (strings and bytes), a fresh
 * sub-message, another member of a oneof, or one element more or less of a repeated field.
 * Everything is allocated with malloc, as protobuf_c_message_free_unpacked(m, NULL) frees it,
 * so a mutated message is freed like an unpacked one.
 *
 * Header-only: static functions, named pbm_*; one thread. Randomness comes from the caller's
 * pbm_rng_t, so a seed gives the same mutations.
 */
#ifndef GISTD_FUZZ_PB_MUTATE_H
#define GISTD_FUZZ_PB_MUTATE_H

#include <float.h>
#include <math.h>
#include <protobuf-c/protobuf-c.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct pbm_rng {
    uint64_t s;
} pbm_rng_t;

/* Words for string and bytes fields (policy names, texts, ...). */
typedef struct pbm_dict {
    const char *const *words;
    size_t n_words;
} pbm_dict_t;

/* splitmix64 */
static inline uint64_t pbm_next(pbm_rng_t *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* A uniform value in [0, n), n > 0. */
static inline uint32_t pbm_below(pbm_rng_t *r, uint32_t n)
{
    return (uint32_t)(pbm_next(r) % n);
}

#define PBM_PICK(r, table) ((table)[pbm_below((r), sizeof(table) / sizeof((table)[0]))])

static const int64_t pbm_ints[] = {
    0, 1, -1, 2, 3, 4, 7, 8, 16, 63, 64, 65, 127, 128, 129, 255, 256, 257, 299, 300, 301, 383, 384,
    385, 4096, 65535, 65536, 1 << 20, (1 << 22) + 1, INT32_MAX, INT32_MAX - 1, INT32_MIN,
    INT32_MIN + 1, UINT32_MAX, (int64_t)UINT32_MAX - 1, (int64_t)1 << 32, INT64_MAX, INT64_MIN,
    -2, -5, -128};
static const float pbm_floats[] = {0.0f,    -0.0f,    1.0f,     -1.0f,    0.5f,   0.95f,
                                   0.05f,   1.0001f,  0.9999f,  2.0f,     -5.0f,  1.3f,
                                   1e-45f,  FLT_MIN,  FLT_MAX,  -FLT_MAX, 1e30f,  -1e-30f,
                                   INFINITY, -INFINITY, NAN,    100.0f,   1e-3f,  65504.0f};

/* Small values are likelier: session ids and counts that name something that exists. */
static inline int64_t pbm_int(pbm_rng_t *r)
{
    return pbm_below(r, 4) == 0 ? (int64_t)pbm_below(r, 6) : PBM_PICK(r, pbm_ints);
}

static inline ProtobufCMessage *pbm_new(const ProtobufCMessageDescriptor *desc)
{
    ProtobufCMessage *m = malloc(desc->sizeof_message);
    if (m)
        desc->message_init(m);
    return m;
}

/* The size of one value of a field in a struct (repeated fields: of one array element). */
static inline size_t pbm_value_size(const ProtobufCFieldDescriptor *f)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_DOUBLE:
        return 8;
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(void *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    default:
        return 4;
    }
}

/* Frees what the value at p owns (a string, bytes, a message), as free_unpacked would. */
static inline void pbm_free_value(const ProtobufCFieldDescriptor *f, void *p)
{
    if (f->type == PROTOBUF_C_TYPE_STRING) {
        char *s = *(char **)p;
        if (s && s != (const char *)f->default_value)
            free(s);
        *(char **)p = NULL;
    } else if (f->type == PROTOBUF_C_TYPE_BYTES) {
        ProtobufCBinaryData *b = p;
        const ProtobufCBinaryData *def = f->default_value;
        if (b->data && (!def || def->data != b->data))
            free(b->data);
        b->data = NULL;
        b->len = 0;
    } else if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
        ProtobufCMessage *m = *(ProtobufCMessage **)p;
        if (m)
            protobuf_c_message_free_unpacked(m, NULL);
        *(ProtobufCMessage **)p = NULL;
    }
}

static inline void pbm_mutate(ProtobufCMessage *m, pbm_rng_t *r, const pbm_dict_t *dict,
                              int depth);

/* Writes a new value of f's type at p (fresh: p holds nothing that needs freeing). */
static inline void pbm_fill(const ProtobufCFieldDescriptor *f, void *p, pbm_rng_t *r,
                            const pbm_dict_t *dict, int depth)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32: {
        const uint32_t v = (uint32_t)pbm_int(r);
        memcpy(p, &v, 4);
        break;
    }
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64: {
        /* byte sizes too: 2^63, 2^64 - 1 and around a few MiB */
        static const uint64_t big[] = {UINT64_MAX, UINT64_MAX - 1, 1ull << 63, (1ull << 63) - 1,
                                       1ull << 40, 1ull << 20, 2ull << 20, 64ull << 10, 100};
        const uint64_t v = pbm_below(r, 2) ? PBM_PICK(r, big) : (uint64_t)pbm_int(r);
        memcpy(p, &v, 8);
        break;
    }
    case PROTOBUF_C_TYPE_FLOAT: {
        const float v = PBM_PICK(r, pbm_floats);
        memcpy(p, &v, 4);
        break;
    }
    case PROTOBUF_C_TYPE_DOUBLE: {
        const double v = PBM_PICK(r, pbm_floats);
        memcpy(p, &v, 8);
        break;
    }
    case PROTOBUF_C_TYPE_BOOL:
        *(protobuf_c_boolean *)p = pbm_below(r, 2);
        break;
    case PROTOBUF_C_TYPE_ENUM: {
        const ProtobufCEnumDescriptor *ed = f->descriptor;
        int32_t v = pbm_below(r, 4) || !ed->n_values ? (int32_t)pbm_int(r)
                                                     : ed->values[pbm_below(r, ed->n_values)].value;
        memcpy(p, &v, 4);
        break;
    }
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_BYTES: {
        const char *w = dict->n_words ? dict->words[pbm_below(r, (uint32_t)dict->n_words)] : "";
        size_t n = strlen(w);
        const uint32_t reps = pbm_below(r, 8) == 0 ? 1 + pbm_below(r, 300) : 1;
        char *s = malloc(n * reps + 1);
        if (!s)
            n = 0;
        for (uint32_t i = 0; s && i < reps; i++)
            memcpy(s + i * n, w, n);
        if (s)
            s[n * reps] = '\0';
        if (f->type == PROTOBUF_C_TYPE_STRING) {
            *(char **)p = s ? s : (char *)f->default_value;
        } else {
            ProtobufCBinaryData *b = p;
            b->data = (uint8_t *)s;
            b->len = s ? n * reps : 0;
        }
        break;
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        ProtobufCMessage *sub = pbm_new(f->descriptor);
        /* a fresh message with a few fields set */
        for (uint32_t i = 0, k = pbm_below(r, 3); sub && depth > 0 && i < k; i++)
            pbm_mutate(sub, r, dict, depth - 1);
        *(ProtobufCMessage **)p = sub;
        break;
    }
    }
}

/* Changes field f of m. */
static inline void pbm_mutate_field(ProtobufCMessage *m, const ProtobufCFieldDescriptor *f,
                                    pbm_rng_t *r, const pbm_dict_t *dict, int depth)
{
    char *base = (char *)m;
    void *p = base + f->offset;
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
        size_t *n = (size_t *)(base + f->quantifier_offset);
        char **arr = (char **)p;
        const size_t sz = pbm_value_size(f);
        const uint32_t op = pbm_below(r, 4);
        if (op == 0 && *n > 0) { /* one fewer */
            pbm_free_value(f, *arr + (*n - 1) * sz);
            if (--*n == 0) {
                free(*arr);
                *arr = NULL;
            }
        } else if (op == 1 && *n > 0) { /* change one */
            char *el = *arr + pbm_below(r, (uint32_t)*n) * sz;
            if (f->type == PROTOBUF_C_TYPE_MESSAGE && *(ProtobufCMessage **)el) {
                pbm_mutate(*(ProtobufCMessage **)el, r, dict, depth - 1);
            } else {
                pbm_free_value(f, el);
                pbm_fill(f, el, r, dict, depth - 1);
            }
        } else if (*n < 4096) { /* one more (or a run of them) */
            const size_t add = pbm_below(r, 8) == 0 ? 1 + pbm_below(r, 64) : 1;
            char *grown = realloc(*arr, (*n + add) * sz);
            if (!grown)
                return;
            *arr = grown;
            for (size_t i = 0; i < add; i++)
                pbm_fill(f, grown + (*n + i) * sz, r, dict, depth - 1);
            *n += add;
        }
        return;
    }
    if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
        uint32_t *which = (uint32_t *)(base + f->quantifier_offset);
        if (*which == f->id && f->type == PROTOBUF_C_TYPE_MESSAGE && *(ProtobufCMessage **)p) {
            pbm_mutate(*(ProtobufCMessage **)p, r, dict, depth - 1);
            return;
        }
        /* another member: free the one that is set (members share the union) */
        const ProtobufCMessageDescriptor *desc = m->descriptor;
        for (unsigned i = 0; *which && i < desc->n_fields; i++)
            if (desc->fields[i].id == *which &&
                desc->fields[i].quantifier_offset == f->quantifier_offset)
                pbm_free_value(&desc->fields[i], base + desc->fields[i].offset);
        *which = f->id;
        pbm_fill(f, p, r, dict, depth);
        return;
    }
    if (f->type == PROTOBUF_C_TYPE_MESSAGE && *(ProtobufCMessage **)p && pbm_below(r, 4)) {
        pbm_mutate(*(ProtobufCMessage **)p, r, dict, depth - 1);
        return;
    }
    if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->quantifier_offset &&
        f->type != PROTOBUF_C_TYPE_MESSAGE && f->type != PROTOBUF_C_TYPE_STRING)
        *(protobuf_c_boolean *)(base + f->quantifier_offset) = 1;
    pbm_free_value(f, p);
    pbm_fill(f, p, r, dict, depth);
}

/* Changes one field of m, picked at random; depth bounds how far into sub-messages. */
static inline void pbm_mutate(ProtobufCMessage *m, pbm_rng_t *r, const pbm_dict_t *dict,
                              int depth)
{
    const ProtobufCMessageDescriptor *desc = m->descriptor;
    if (desc->n_fields == 0 || depth < 0)
        return;
    const ProtobufCFieldDescriptor *f = &desc->fields[pbm_below(r, desc->n_fields)];
    if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) && pbm_below(r, 4)) {
        /* mostly into the member that is set: a new member replaces everything below it */
        const uint32_t which = *(const uint32_t *)((const char *)m + f->quantifier_offset);
        for (unsigned i = 0; which && i < desc->n_fields; i++)
            if (desc->fields[i].id == which &&
                desc->fields[i].quantifier_offset == f->quantifier_offset)
                f = &desc->fields[i];
    }
    pbm_mutate_field(m, f, r, dict, depth);
}

#endif
