/*
 * model/tok_bpe.c — byte-level BPE (the `gpt2` tokenizer model): merge ranks and encoding.
 *
 * The text is split into words by the pre-tokenizer; each word starts as one symbol per
 * byte (the vocabulary spells byte b as the GPT-2 character tok_gpt2_byte_cpt(b)) and the
 * adjacent pair of lowest merge rank is merged until no pair has a rank (ties go to the
 * leftmost pair). Symbols are ids, so a merge is one lookup of an integer pair. A merge
 * string that is not itself a vocabulary entry gets a symbol id past n_vocab; such a
 * symbol left at the end is written as its bytes' tokens.
 */
#include <stdlib.h>
#include <string.h>

#include "model/tok_internal.h"
#include "model/tok_unicode.h"

/* Bytes GPT-2 keeps as their own character: the printable Latin-1 ones. */
static bool gpt2_byte_is_printable(uint8_t b)
{
    return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
}

/* The other 68 bytes get 256, 257, ... in byte order: 0x00-0x20 (33 of them),
 * 0x7F-0xA0 (34), then 0xAD. */
uint32_t tok_gpt2_byte_cpt(uint8_t b)
{
    if (gpt2_byte_is_printable(b))
        return b;
    if (b <= 0x20)
        return 256u + b;
    if (b <= 0xA0)
        return 256u + 33 + (b - 0x7Fu);
    return 256u + 67; /* 0xAD */
}

int tok_gpt2_cpt_byte(uint32_t cp)
{
    if (cp < 256)
        return gpt2_byte_is_printable((uint8_t)cp) ? (int)cp : -1;
    uint32_t k = cp - 256;
    if (k < 33)
        return (int)k;
    if (k < 67)
        return (int)(0x7F + k - 33);
    return k == 67 ? 0xAD : -1;
}

/* The id of symbol text (s, len), adding a symbol past the vocabulary when there is none. */
static int bpe_intern(tok_t *t, const char *s, size_t len, uint32_t *id)
{
    int32_t found = tok_strmap_find(t, s, len);
    if (found >= 0) {
        *id = (uint32_t)found;
        return 0;
    }
    uint64_t end = t->text_off[t->n_sym];
    if (end + len + 1 > t->texts_cap) {
        size_t cap = 2 * t->texts_cap + len + 1;
        char *p = realloc(t->texts, cap);
        if (!p)
            return ERR_NOMEM;
        t->texts = p;
        t->texts_cap = cap;
    }
    if (t->n_sym + 2 > t->off_cap) {
        size_t cap = 2 * t->off_cap + 2;
        uint64_t *p = realloc(t->text_off, cap * sizeof *p);
        if (!p)
            return ERR_NOMEM;
        t->text_off = p;
        t->off_cap = cap;
    }
    if (t->n_sym == INT32_MAX)
        return ERR_LIMIT;
    memcpy(t->texts + end, s, len);
    t->texts[end + len] = '\0';
    t->text_off[t->n_sym + 1] = end + len + 1;
    *id = t->n_sym++;
    return tok_strmap_add(t, *id);
}

static uint32_t merge_slot(uint64_t key, uint32_t mask)
{
    return (uint32_t)((key * 0x9E3779B97F4A7C15ull) >> 32) & mask;
}

/* The merge of (left, right), or NULL. */
static const tok_merge_t *bpe_merge_find(const tok_t *t, uint32_t left, uint32_t right)
{
    uint64_t key = tok_merge_key(left, right);
    for (uint32_t i = merge_slot(key, t->merge_mask);; i = (i + 1) & t->merge_mask) {
        const tok_merge_t *m = &t->merges[i];
        if (m->key == key)
            return m;
        if (m->key == 0)
            return NULL;
    }
}

int tok_bpe_load(tok_t *t, const gguf_t *g, err_info_t *e)
{
    for (int b = 0; b < 256; b++) {
        char u[4];
        size_t n = tok_utf8_put(tok_gpt2_byte_cpt((uint8_t)b), u);
        uint32_t id;
        if (bpe_intern(t, u, n, &id))
            return err_set(e, ERR_NOMEM, "tokenizer: out of memory");
        t->byte_sym[b] = (int32_t)id;
    }

    gguf_arr_t arr;
    int rc = gguf_get_arr(g, "tokenizer.ggml.merges", &arr, e);
    if (rc)
        return rc;
    if (arr.elem_type != GGUF_VT_STRING)
        return err_set(e, ERR_FORMAT, "tokenizer.ggml.merges: expected strings, found %s",
                       gguf_vtype_name(arr.elem_type));
    /* Bounded so that symbol ids (vocabulary + 3 per merge) stay below 2^31. */
    if (arr.n > (1u << 26))
        return err_set(e, ERR_FORMAT, "tokenizer.ggml.merges: %llu merges is too many",
                       (unsigned long long)arr.n);
    uint32_t cap = 16;
    while (cap < 2 * arr.n + 16)
        cap *= 2;
    t->merges = calloc(cap, sizeof *t->merges);
    if (!t->merges)
        return err_set(e, ERR_NOMEM, "tokenizer: out of memory");
    t->merge_mask = cap - 1;

    gguf_str_t *strs;
    if ((rc = gguf_arr_strs(&arr, &strs)))
        return err_set(e, rc, "tokenizer.ggml.merges: cannot read");
    char *cat = NULL;
    size_t cat_cap = 0;
    for (uint64_t r = 0; r < arr.n && rc == 0; r++) {
        const char *s = strs[r].ptr;
        size_t len = strs[r].len;
        /* "left right": the first space after the first byte (a symbol is never empty). */
        const char *sp = len > 1 ? memchr(s + 1, ' ', len - 1) : NULL;
        if (!sp || sp + 1 == s + len) {
            rc = err_set(e, ERR_FORMAT, "tokenizer.ggml.merges[%llu]: not two symbols",
                         (unsigned long long)r);
            break;
        }
        size_t ll = (size_t)(sp - s), rl = len - ll - 1;
        if (ll + rl > cat_cap) {
            cat_cap = 2 * (ll + rl);
            char *p = realloc(cat, cat_cap);
            if (!p) {
                rc = err_set(e, ERR_NOMEM, "tokenizer: out of memory");
                break;
            }
            cat = p;
        }
        memcpy(cat, s, ll);
        memcpy(cat + ll, sp + 1, rl);
        uint32_t left, right, merged;
        if ((rc = bpe_intern(t, s, ll, &left)) || (rc = bpe_intern(t, sp + 1, rl, &right)) ||
            (rc = bpe_intern(t, cat, ll + rl, &merged))) {
            rc = err_set(e, rc, "tokenizer.ggml.merges[%llu]: %s", (unsigned long long)r,
                         err_str(rc));
            break;
        }
        uint64_t key = tok_merge_key(left, right);
        uint32_t i = merge_slot(key, t->merge_mask);
        while (t->merges[i].key != 0 && t->merges[i].key != key)
            i = (i + 1) & t->merge_mask;
        if (t->merges[i].key == 0) /* a repeated pair keeps its first (lowest) rank */
            t->merges[i] = (tok_merge_t){key, (uint32_t)r, merged};
    }
    free(cat);
    free(strs);
    return rc;
}

/* One symbol of a word: a run of its bytes and the symbol id spelling them. */
typedef struct bpe_sym {
    uint32_t id;
    uint32_t start, n; /* bytes of the word; n == 0 once merged away */
    int32_t prev, next;
} bpe_sym_t;

typedef struct bpe_run {
    const tok_t *t;
    bpe_sym_t *sym;
    size_t sym_cap;
    tok_heap_t heap;
    char *spelled; /* a word in GPT-2 characters (whole-word lookup) */
    size_t spelled_cap;
} bpe_run_t;

static int bpe_try_pair(bpe_run_t *r, int32_t left, int32_t right)
{
    if (left < 0 || right < 0)
        return 0;
    const tok_merge_t *m = bpe_merge_find(r->t, r->sym[left].id, r->sym[right].id);
    if (!m)
        return 0;
    tok_cand_t c = {.key = -(double)m->rank,
                    .left = left,
                    .right = right,
                    .a = r->sym[left].id,
                    .b = r->sym[right].id};
    return tok_heap_push(&r->heap, c);
}

/* Appends the tokens of a final symbol: itself, or (past the vocabulary) its bytes'
 * tokens, or <unk> for a byte without one. */
static int bpe_emit(const tok_t *t, const bpe_sym_t *s, const char *word, tok_vec_t *out)
{
    if (s->id < t->n_vocab)
        return tok_vec_push(out, (int32_t)s->id);
    for (uint32_t i = 0; i < s->n; i++) {
        int32_t b = t->byte_sym[(unsigned char)word[s->start + i]];
        if ((uint32_t)b >= t->n_vocab)
            b = t->unk;
        if (b < 0)
            return ERR_RANGE; /* a byte the vocabulary cannot spell */
        int rc = tok_vec_push(out, b);
        if (rc)
            return rc;
    }
    return 0;
}

/* The vocabulary entry spelling the whole word, or -1 (Llama 3 takes such a word as is,
 * without merging). */
static int bpe_whole_word(bpe_run_t *r, const char *w, size_t len, int32_t *id)
{
    if (4 * len > r->spelled_cap) {
        char *p = realloc(r->spelled, 8 * len);
        if (!p)
            return ERR_NOMEM;
        r->spelled = p;
        r->spelled_cap = 8 * len;
    }
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        n += tok_utf8_put(tok_gpt2_byte_cpt((uint8_t)w[i]), r->spelled + n);
    *id = tok_strmap_find(r->t, r->spelled, n);
    if (*id >= 0 && (uint32_t)*id >= r->t->n_vocab)
        *id = -1;
    return 0;
}

static int bpe_word(bpe_run_t *r, const char *w, size_t len, tok_vec_t *out)
{
    const tok_t *t = r->t;
    int rc;
    if (t->pre == TOK_PRE_LLAMA3) {
        int32_t id;
        if ((rc = bpe_whole_word(r, w, len, &id)))
            return rc;
        if (id >= 0)
            return tok_vec_push(out, id);
    }
    if (len >= INT32_MAX)
        return ERR_TOOBIG;
    if (len > r->sym_cap) {
        bpe_sym_t *p = realloc(r->sym, 2 * len * sizeof *p);
        if (!p)
            return ERR_NOMEM;
        r->sym = p;
        r->sym_cap = 2 * len;
    }
    for (size_t i = 0; i < len; i++)
        r->sym[i] = (bpe_sym_t){(uint32_t)t->byte_sym[(unsigned char)w[i]], (uint32_t)i, 1,
                                (int32_t)i - 1, i + 1 < len ? (int32_t)i + 1 : -1};
    r->heap.n = 0;
    for (size_t i = 1; i < len; i++)
        if ((rc = bpe_try_pair(r, (int32_t)i - 1, (int32_t)i)))
            return rc;
    while (r->heap.n > 0) {
        tok_cand_t c = tok_heap_pop(&r->heap);
        bpe_sym_t *l = &r->sym[c.left], *rt = &r->sym[c.right];
        /* Stale: a side was merged away or became another symbol since it was queued. */
        if (l->n == 0 || rt->n == 0 || l->id != c.a || rt->id != c.b)
            continue;
        l->id = bpe_merge_find(t, c.a, c.b)->merged;
        l->n += rt->n;
        rt->n = 0;
        l->next = rt->next;
        if (rt->next >= 0)
            r->sym[rt->next].prev = c.left;
        if ((rc = bpe_try_pair(r, l->prev, c.left)) || (rc = bpe_try_pair(r, c.left, l->next)))
            return rc;
    }
    for (int32_t i = 0; i >= 0; i = r->sym[i].next)
        if ((rc = bpe_emit(t, &r->sym[i], w, out)))
            return rc;
    return 0;
}

int tok_bpe_encode(const tok_t *t, const char *text, size_t len, tok_vec_t *out)
{
    size_t *ends, n_words;
    int rc = tok_pretok_split(t->pre, text, len, &ends, &n_words);
    if (rc)
        return rc;
    bpe_run_t r = {.t = t};
    tok_wcache_t cache = {0};
    size_t start = 0;
    for (size_t i = 0; i < n_words && rc == 0; i++) {
        const char *w = text + start;
        size_t wlen = ends[i] - start, first = out->n;
        uint32_t h = tok_hash_bytes(w, wlen);
        bool hit;
        start = ends[i];
        if ((rc = tok_wcache_get(&cache, w, wlen, h, out, &hit)) || hit)
            continue;
        if ((rc = bpe_word(&r, w, wlen, out)) == 0)
            rc = tok_wcache_put(&cache, w, wlen, h, first, out->n - first);
    }
    tok_wcache_free(&cache);
    free(r.sym);
    free(r.heap.v);
    free(r.spelled);
    free(ends);
    return rc;
}
