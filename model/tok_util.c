/* model/tok_util.c — the tokenizer's containers: string map, id vector, word cache, merge
 * heap. */
#include <stdlib.h>
#include <string.h>

#include "model/tok_internal.h"

/* FNV-1a over the bytes, then a final mix so the low bits (the slot) depend on all. */
uint32_t tok_hash_bytes(const char *s, size_t len)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    h ^= h >> 16;
    h *= 0x7feb352du;
    h ^= h >> 15;
    return h;
}

/* Puts id into slot table m (which has room), replacing an entry with the same text. */
static void strmap_put(const tok_t *t, tok_strmap_t *m, uint32_t id, uint32_t h)
{
    const char *s = tok_sym_text(t, id);
    size_t len = tok_sym_len(t, id);
    uint32_t i = h & m->mask;
    for (;; i = (i + 1) & m->mask) {
        uint32_t other = m->slot[i];
        if (!other)
            break;
        other--;
        if (m->hash[i] == h && tok_sym_len(t, other) == len &&
            !memcmp(tok_sym_text(t, other), s, len))
            break;
    }
    if (!m->slot[i])
        m->used++;
    m->slot[i] = id + 1;
    m->hash[i] = h;
}

/* Makes the table cap slots (a power of two) and puts the old entries back. */
static int strmap_resize(const tok_t *t, tok_strmap_t *m, uint32_t cap)
{
    tok_strmap_t nm = {calloc(cap, sizeof *nm.slot), calloc(cap, sizeof *nm.hash), cap - 1, 0};
    if (!nm.slot || !nm.hash) {
        tok_strmap_free(&nm);
        return ERR_NOMEM;
    }
    if (m->slot)
        for (uint32_t i = 0; i <= m->mask; i++)
            if (m->slot[i])
                strmap_put(t, &nm, m->slot[i] - 1, m->hash[i]);
    tok_strmap_free(m);
    *m = nm;
    return 0;
}

int tok_strmap_build(tok_t *t, uint32_t n)
{
    uint32_t cap = 16;
    while (cap < 2 * (uint64_t)n + 16)
        cap *= 2;
    int rc = strmap_resize(t, &t->map, cap);
    if (rc)
        return rc;
    for (uint32_t id = 0; id < n; id++)
        strmap_put(t, &t->map, id, tok_hash_bytes(tok_sym_text(t, id), tok_sym_len(t, id)));
    return 0;
}

int tok_strmap_add(tok_t *t, uint32_t id)
{
    tok_strmap_t *m = &t->map;
    if (2 * ((uint64_t)m->used + 1) > (uint64_t)m->mask + 1) {
        int rc = strmap_resize(t, m, 2 * (m->mask + 1));
        if (rc)
            return rc;
    }
    strmap_put(t, m, id, tok_hash_bytes(tok_sym_text(t, id), tok_sym_len(t, id)));
    return 0;
}

void tok_strmap_free(tok_strmap_t *m)
{
    free(m->slot);
    free(m->hash);
    m->slot = NULL;
    m->hash = NULL;
    m->mask = 0;
    m->used = 0;
}

int32_t tok_strmap_find(const tok_t *t, const char *s, size_t len)
{
    const tok_strmap_t *m = &t->map;
    uint32_t h = tok_hash_bytes(s, len);
    for (uint32_t i = h & m->mask;; i = (i + 1) & m->mask) {
        uint32_t id = m->slot[i];
        if (!id)
            return -1;
        id--;
        if (m->hash[i] == h && tok_sym_len(t, id) == len && !memcmp(tok_sym_text(t, id), s, len))
            return (int32_t)id;
    }
}

int tok_vec_push(tok_vec_t *v, int32_t id)
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? 2 * v->cap : 64;
        int32_t *p = realloc(v->v, cap * sizeof *p);
        if (!p)
            return ERR_NOMEM;
        v->v = p;
        v->cap = cap;
    }
    v->v[v->n++] = id;
    return 0;
}

int tok_wcache_get(const tok_wcache_t *c, const char *w, size_t len, uint32_t h, tok_vec_t *out,
                   bool *hit)
{
    *hit = false;
    if (!c->ent)
        return 0;
    for (uint32_t i = h & c->mask;; i = (i + 1) & c->mask) {
        const tok_wcache_ent_t *e = &c->ent[i];
        if (!e->key)
            return 0;
        if (e->hash != h || e->len != len || memcmp(e->key, w, len) != 0)
            continue;
        if (out->n + e->n > out->cap) {
            size_t cap = 2 * (out->n + e->n);
            int32_t *p = realloc(out->v, cap * sizeof *p);
            if (!p)
                return ERR_NOMEM;
            out->v = p;
            out->cap = cap;
        }
        memcpy(out->v + out->n, out->v + e->first, e->n * sizeof *out->v);
        out->n += e->n;
        *hit = true;
        return 0;
    }
}

int tok_wcache_put(tok_wcache_t *c, const char *w, size_t len, uint32_t h, size_t first, size_t n)
{
    if (len > TOK_WCACHE_WORD_MAX || c->used >= TOK_WCACHE_MAX)
        return 0;
    if (2 * (c->used + 1) > c->mask + 1 || !c->ent) {
        uint32_t cap = c->ent ? 2 * (c->mask + 1) : 1024;
        tok_wcache_ent_t *ne = calloc(cap, sizeof *ne);
        if (!ne)
            return ERR_NOMEM;
        for (uint32_t i = 0; c->ent && i <= c->mask; i++) {
            if (!c->ent[i].key)
                continue;
            uint32_t j = c->ent[i].hash & (cap - 1);
            while (ne[j].key)
                j = (j + 1) & (cap - 1);
            ne[j] = c->ent[i];
        }
        free(c->ent);
        c->ent = ne;
        c->mask = cap - 1;
    }
    uint32_t i = h & c->mask;
    while (c->ent[i].key)
        i = (i + 1) & c->mask;
    c->ent[i] = (tok_wcache_ent_t){w, (uint32_t)len, h, first, n};
    c->used++;
    return 0;
}

void tok_wcache_free(tok_wcache_t *c)
{
    free(c->ent);
    c->ent = NULL;
    c->mask = c->used = 0;
}

/* True when a should leave the heap before b. */
static bool cand_before(const tok_cand_t *a, const tok_cand_t *b)
{
    return a->key > b->key || (a->key == b->key && a->left < b->left);
}

int tok_heap_push(tok_heap_t *h, tok_cand_t c)
{
    if (h->n == h->cap) {
        size_t cap = h->cap ? 2 * h->cap : 64;
        tok_cand_t *p = realloc(h->v, cap * sizeof *p);
        if (!p)
            return ERR_NOMEM;
        h->v = p;
        h->cap = cap;
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t up = (i - 1) / 2;
        if (!cand_before(&c, &h->v[up]))
            break;
        h->v[i] = h->v[up];
        i = up;
    }
    h->v[i] = c;
    return 0;
}

tok_cand_t tok_heap_pop(tok_heap_t *h)
{
    tok_cand_t top = h->v[0];
    tok_cand_t last = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n)
            break;
        if (c + 1 < h->n && cand_before(&h->v[c + 1], &h->v[c]))
            c++;
        if (!cand_before(&h->v[c], &last))
            break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n > 0)
        h->v[i] = last;
    return top;
}
