/*
 * kvstore/transcript.c — a session's cold transcript: the token id of every position ever
 * appended (4 bytes) and how many lanes still hold it as a raw row (2 bytes), in pages of
 * KV_TPAGE positions so that growing it never copies what is there (only the small page
 * table is reallocated, doubling).
 */
#include <string.h>

#include "kvstore/kv_impl.h"

static uint32_t pages_for(uint32_t len)
{
    return (uint32_t)(((uint64_t)len + KV_TPAGE - 1) / KV_TPAGE);
}

size_t kv_tr_bytes(const kv_transcript_t *tr)
{
    return tr->n_pages * kv_charge(sizeof(kv_tpage_t)) +
           kv_charge(tr->cap_pages * sizeof(kv_tpage_t *));
}

/* The page table capacity needed for np pages. */
static uint32_t table_cap(const kv_transcript_t *tr, uint32_t np)
{
    if (np <= tr->cap_pages)
        return tr->cap_pages;
    uint32_t cap = tr->cap_pages ? 2 * tr->cap_pages : 4;
    return cap > np ? cap : np;
}

size_t kv_tr_need(const kv_transcript_t *tr, uint32_t n)
{
    uint32_t np = pages_for(tr->len + n);
    size_t need = 0;
    if (np > tr->n_pages)
        need += (np - tr->n_pages) * kv_charge(sizeof(kv_tpage_t));
    uint32_t cap = table_cap(tr, np);
    if (cap != tr->cap_pages)
        need += kv_charge(cap * sizeof(kv_tpage_t *));
    return need;
}

size_t kv_tr_copy_bytes(const kv_transcript_t *tr)
{
    kv_transcript_t empty = {0};
    return kv_tr_need(&empty, tr->len);
}

int kv_tr_reserve(kv_store_t *st, kv_session_t *s, uint32_t n)
{
    kv_transcript_t *tr = &s->tr;
    if ((uint64_t)tr->len + n > UINT32_MAX - KV_TPAGE)
        return ERR_RANGE;
    uint32_t np = pages_for(tr->len + n);
    if (np <= tr->n_pages)
        return 0;
    uint32_t cap = table_cap(tr, np);
    kv_tpage_t **table = tr->pages;
    if (cap != tr->cap_pages) {
        table = kv_mem_alloc(st, s, cap * sizeof *table);
        if (!table)
            return ERR_NOMEM;
        if (tr->n_pages)
            memcpy(table, tr->pages, tr->n_pages * sizeof *table);
    }
    uint32_t got = tr->n_pages;
    for (; got < np; got++) {
        table[got] = kv_mem_alloc(st, s, sizeof(kv_tpage_t));
        if (!table[got])
            break;
    }
    if (got < np) {
        for (uint32_t i = tr->n_pages; i < got; i++)
            kv_mem_free(st, s, table[i], sizeof(kv_tpage_t));
        if (table != tr->pages)
            kv_mem_free(st, s, table, cap * sizeof *table);
        return ERR_NOMEM;
    }
    if (table != tr->pages) {
        if (tr->pages)
            kv_mem_free(st, s, tr->pages, tr->cap_pages * sizeof *tr->pages);
        tr->pages = table;
        tr->cap_pages = cap;
    }
    tr->n_pages = np;
    return 0;
}

void kv_tr_release_unused(kv_store_t *st, kv_session_t *s)
{
    kv_transcript_t *tr = &s->tr;
    uint32_t np = pages_for(tr->len);
    while (tr->n_pages > np)
        kv_mem_free(st, s, tr->pages[--tr->n_pages], sizeof(kv_tpage_t));
    if (tr->n_pages == 0 && tr->pages) {
        kv_mem_free(st, s, tr->pages, tr->cap_pages * sizeof *tr->pages);
        tr->pages = NULL;
        tr->cap_pages = 0;
    }
}

void kv_tr_append(kv_transcript_t *tr, const uint32_t *tokens, uint32_t n, uint16_t live)
{
    for (uint32_t i = 0; i < n; i++) {
        uint32_t p = tr->len + i;
        kv_tpage_t *pg = tr->pages[p / KV_TPAGE];
        pg->tok[p % KV_TPAGE] = tokens[i];
        pg->live[p % KV_TPAGE] = live;
    }
    tr->len += n;
}

uint16_t *kv_tr_live(kv_transcript_t *tr, uint32_t pos)
{
    return &tr->pages[pos / KV_TPAGE]->live[pos % KV_TPAGE];
}

uint32_t kv_tr_token(const kv_transcript_t *tr, uint32_t pos)
{
    return tr->pages[pos / KV_TPAGE]->tok[pos % KV_TPAGE];
}

void kv_tr_free(kv_store_t *st, kv_session_t *s)
{
    kv_transcript_t *tr = &s->tr;
    for (uint32_t i = 0; i < tr->n_pages; i++)
        kv_mem_free(st, s, tr->pages[i], sizeof(kv_tpage_t));
    if (tr->pages)
        kv_mem_free(st, s, tr->pages, tr->cap_pages * sizeof *tr->pages);
    memset(tr, 0, sizeof *tr);
}

int kv_tr_copy(kv_store_t *st, kv_session_t *dst, const kv_transcript_t *src)
{
    if (kv_tr_reserve(st, dst, src->len) != 0)
        return ERR_NOMEM;
    for (uint32_t i = 0; i < dst->tr.n_pages; i++)
        memcpy(dst->tr.pages[i], src->pages[i], sizeof(kv_tpage_t));
    dst->tr.len = src->len;
    return 0;
}
