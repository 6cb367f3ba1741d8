/*
 * model/tok_spm.c — SentencePiece-style encoding (the `llama` tokenizer model).
 *
 * Spaces become ▁ (and one ▁ is put in front when asked), the text is cut into UTF-8
 * characters, and the adjacent pair whose concatenation is the highest-scoring
 * vocabulary piece is merged, again and again, until no adjacent pair is a piece (ties
 * go to the leftmost pair). A final symbol that is not a piece falls back to its bytes'
 * <0xXX> tokens. This is the BPE algorithm of SentencePiece as llama.cpp runs it.
 *
 * Merging never joins symbols across a point that no piece spans, so when the vocabulary
 * has no piece with a ▁ after other characters (Llama's has none), the text is cut before
 * each word's ▁ and the words are merged one by one: the same tokens, with a small heap
 * instead of one the size of the text.
 */
#include <stdlib.h>
#include <string.h>

#include "model/tok_internal.h"
#include "model/tok_unicode.h"

#define SPM_MARK "\xE2\x96\x81" /* U+2581 ▁, the space marker */

/* A run of bytes of the escaped text; merged-away symbols have n == 0. */
typedef struct spm_sym {
    uint32_t start, n;
    int32_t prev, next; /* neighbours in the chain, -1 at the ends */
} spm_sym_t;

typedef struct spm_run {
    const tok_t *t;
    const char *text;
    spm_sym_t *sym;
    tok_heap_t heap;
} spm_run_t;

/* The normal piece whose text is exactly (s, len), or -1. */
static int32_t spm_piece(const tok_t *t, const char *s, size_t len)
{
    int32_t id = tok_strmap_find(t, s, len);
    if (id < 0 || (uint32_t)id >= t->n_vocab || t->types[id] != TOK_TYPE_NORMAL)
        return -1;
    return id;
}

/* Queues the merge of symbols left and right (adjacent) when their text is a piece. */
static int spm_try_pair(spm_run_t *r, int32_t left, int32_t right)
{
    if (left < 0 || right < 0)
        return 0;
    const spm_sym_t *l = &r->sym[left], *rt = &r->sym[right];
    uint32_t size = l->n + rt->n;
    int32_t id = spm_piece(r->t, r->text + l->start, size);
    if (id < 0)
        return 0;
    tok_cand_t c = {.key = r->t->scores[id], .left = left, .right = right, .a = size};
    return tok_heap_push(&r->heap, c);
}

/* Appends the tokens of one final symbol: its piece, or its bytes. */
static int spm_emit(const tok_t *t, const char *s, size_t len, tok_vec_t *out)
{
    int32_t id = spm_piece(t, s, len);
    if (id >= 0)
        return tok_vec_push(out, id);
    for (size_t i = 0; i < len; i++) {
        int32_t b = t->byte_sym[(unsigned char)s[i]];
        if (b < 0)
            b = t->unk;
        if (b < 0)
            return ERR_RANGE;
        int rc = tok_vec_push(out, b);
        if (rc)
            return rc;
    }
    return 0;
}

/* Escapes text into a new buffer: optional leading ▁, every space as ▁. */
static char *spm_escape(const char *text, size_t len, bool prefix, size_t *out_len)
{
    size_t spaces = prefix;
    for (size_t i = 0; i < len; i++)
        spaces += text[i] == ' ';
    char *buf = malloc(len + 2 * spaces + 1);
    if (!buf)
        return NULL;
    size_t n = 0;
    if (prefix) {
        memcpy(buf, SPM_MARK, 3);
        n = 3;
    }
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') {
            memcpy(buf + n, SPM_MARK, 3);
            n += 3;
        } else {
            buf[n++] = text[i];
        }
    }
    *out_len = n;
    return buf;
}

/* Start of the next chunk after cs: a ▁ that follows a character other than ▁ (or n). */
static size_t spm_next_chunk(const char *buf, size_t cs, size_t n)
{
    for (size_t i = cs + 1; i + 3 <= n; i++) {
        const char *hit = memchr(buf + i, '\xE2', n - i - 2);
        if (!hit)
            break;
        i = (size_t)(hit - buf);
        if (!memcmp(hit, SPM_MARK, 3) && (i < 3 || memcmp(hit - 3, SPM_MARK, 3) != 0))
            return i;
    }
    return n;
}

/* Merges the symbols of buf[cs, ce) and appends their tokens. */
static int spm_chunk(spm_run_t *r, size_t cs, size_t ce, tok_vec_t *out)
{
    int rc;
    int32_t n_sym = 0;
    r->heap.n = 0;
    for (size_t off = cs; off < ce;) {
        uint32_t cp;
        size_t cl = tok_utf8_next(r->text + off, ce - off, &cp);
        r->sym[n_sym] = (spm_sym_t){(uint32_t)off, (uint32_t)cl, n_sym - 1, -1};
        if (n_sym > 0)
            r->sym[n_sym - 1].next = n_sym;
        n_sym++;
        off += cl;
    }
    for (int32_t i = 1; i < n_sym; i++)
        if ((rc = spm_try_pair(r, i - 1, i)))
            return rc;

    while (r->heap.n > 0) {
        tok_cand_t c = tok_heap_pop(&r->heap);
        spm_sym_t *l = &r->sym[c.left], *rt = &r->sym[c.right];
        /* Stale: one side was merged away or grew since this pair was queued. */
        if (l->n == 0 || rt->n == 0 || l->n + rt->n != c.a)
            continue;
        l->n += rt->n;
        rt->n = 0;
        l->next = rt->next;
        if (rt->next >= 0)
            r->sym[rt->next].prev = c.left;
        if ((rc = spm_try_pair(r, l->prev, c.left)) || (rc = spm_try_pair(r, c.left, l->next)))
            return rc;
    }
    for (int32_t i = 0; i >= 0; i = r->sym[i].next)
        if ((rc = spm_emit(r->t, r->text + r->sym[i].start, r->sym[i].n, out)))
            return rc;
    return 0;
}

int tok_spm_encode(const tok_t *t, const char *text, size_t len, bool prefix, tok_vec_t *out)
{
    if (len == 0)
        return 0;
    size_t n;
    char *buf = spm_escape(text, len, prefix, &n);
    if (!buf)
        return ERR_NOMEM;
    int rc = 0;
    spm_run_t r = {.t = t, .text = buf};
    tok_wcache_t cache = {0};
    size_t sym_cap = 0;
    for (size_t cs = 0, ce; cs < n && rc == 0; cs = ce) {
        ce = t->spm_chunks ? spm_next_chunk(buf, cs, n) : n;
        size_t first = out->n;
        uint32_t h = tok_hash_bytes(buf + cs, ce - cs);
        bool hit;
        if ((rc = tok_wcache_get(&cache, buf + cs, ce - cs, h, out, &hit)) || hit)
            continue;
        if (ce - cs >= INT32_MAX || ce >= UINT32_MAX) {
            rc = ERR_TOOBIG;
        } else if (ce - cs > sym_cap) {
            sym_cap = 2 * (ce - cs);
            free(r.sym);
            if (!(r.sym = malloc(sym_cap * sizeof *r.sym)))
                rc = ERR_NOMEM;
        }
        if (rc == 0 && (rc = spm_chunk(&r, cs, ce, out)) == 0)
            rc = tok_wcache_put(&cache, buf + cs, ce - cs, h, first, out->n - first);
    }
    tok_wcache_free(&cache);
    free(r.heap.v);
    free(r.sym);
    free(buf);
    return rc;
}
