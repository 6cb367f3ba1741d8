/*
 * model/tok_internal.h — the tokenizer's insides, shared by its files: tokenizer.c
 * (loading, lookups, special tokens, decoding), tok_spm.c (SentencePiece merges),
 * tok_bpe.c (byte-level BPE merges), tok_pretok.c (the pre-tokenizer splits) and
 * tok_util.c (hash tables, heap, id vector). Not part of the public API; tests may
 * include it to reach the pre-tokenizer directly.
 *
 * Everything here is filled once by tok_new and read-only after; encode-time scratch
 * lives on the caller's stack or heap, so a tok_t serves many threads at once.
 * Functions return 0 or a negative ERR_* code: ERR_NOMEM, and where noted ERR_TOOBIG
 * or ERR_RANGE.
 */
#ifndef GISTD_MODEL_TOK_INTERNAL_H
#define GISTD_MODEL_TOK_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model/tokenizer.h"

/* tokenizer.ggml.token_type values (llama.cpp's numbering). */
enum {
    TOK_TYPE_UNDEFINED = 0,
    TOK_TYPE_NORMAL = 1,
    TOK_TYPE_UNKNOWN = 2,
    TOK_TYPE_CONTROL = 3,
    TOK_TYPE_USER_DEFINED = 4,
    TOK_TYPE_UNUSED = 5,
    TOK_TYPE_BYTE = 6,
};

/* Which regex splits text into words before byte-level BPE. */
typedef enum tok_pre { TOK_PRE_GPT2 = 1, TOK_PRE_LLAMA3 = 2, TOK_PRE_QWEN2 = 3 } tok_pre_t;

/* Open-addressing table from a symbol's stored text to its id (the texts stay in
 * tok_t.texts; the table holds ids and hashes only). */
typedef struct tok_strmap {
    uint32_t *slot; /* id + 1, or 0 for empty; mask + 1 slots */
    uint32_t *hash; /* hash of the slot's string, to skip most compares */
    uint32_t mask;  /* slots - 1 (a power of two minus one) */
    uint32_t used;  /* slots in use */
} tok_strmap_t;

/* One BPE merge: the pair (left, right) of symbol ids becomes `merged` at `rank`. */
typedef struct tok_merge {
    uint64_t key; /* tok_merge_key(left, right); 0 marks an empty slot */
    uint32_t rank;
    uint32_t merged;
} tok_merge_t;

static inline uint64_t tok_merge_key(uint32_t left, uint32_t right)
{
    return ((uint64_t)left + 1) << 32 | ((uint64_t)right + 1);
}

struct tok {
    tok_kind_t kind;
    tok_pre_t pre;       /* BPE only */
    uint32_t n_vocab;    /* entries of the vocabulary */
    uint32_t n_sym;      /* n_vocab + BPE merge strings that are not vocabulary entries */
    char *texts;         /* every symbol's stored text, NUL-terminated, back to back */
    uint64_t *text_off;  /* [n_sym + 1] offsets into texts */
    size_t texts_cap;    /* bytes of room in texts */
    size_t off_cap;      /* entries of room in text_off */
    char *pieces;        /* every token's decoded bytes (what tok_piece gives), back to back */
    uint64_t *piece_off; /* [n_vocab + 1] offsets into pieces */
    float *scores;       /* [n_vocab] SentencePiece scores (0 when the file has none) */
    uint8_t *types;      /* [n_vocab] TOK_TYPE_* */
    tok_strmap_t map;    /* stored text -> symbol id */
    int32_t bos, eos, unk, pad;
    bool add_bos;          /* the file's tokenizer.ggml.add_bos_token */
    bool add_space_prefix; /* SPM: prefix the text with one ▁ (and drop it when decoding) */
    bool spm_chunks;       /* SPM: no piece has ▁ after another character, so words can be
                              merged one at a time (tok_spm.c) */
    /* SPM: the byte-fallback token of each byte (<0xXX>); BPE: the symbol of each byte's
     * GPT-2 character. -1 when there is none. */
    int32_t byte_sym[256];
    tok_merge_t *merges; /* BPE: open-addressing table, merge_mask + 1 slots */
    uint32_t merge_mask;
    int32_t *specials; /* control and user-defined tokens, longest text first */
    uint32_t n_specials;
};

/* Text and length of symbol id. */
static inline const char *tok_sym_text(const tok_t *t, uint32_t id)
{
    return t->texts + t->text_off[id];
}

static inline size_t tok_sym_len(const tok_t *t, uint32_t id)
{
    return (size_t)(t->text_off[id + 1] - t->text_off[id] - 1);
}

/* --- tok_util.c --- */

uint32_t tok_hash_bytes(const char *s, size_t len);

/* Builds t->map over symbols [0, n); a later entry with the same text replaces an
 * earlier one (as llama.cpp's map does). */
int tok_strmap_build(tok_t *t, uint32_t n);
/* Adds symbol id (its text already in t->texts), growing the table as needed. */
int tok_strmap_add(tok_t *t, uint32_t id);
void tok_strmap_free(tok_strmap_t *m);
/* Symbol id of exactly (s, len), or -1. */
int32_t tok_strmap_find(const tok_t *t, const char *s, size_t len);

/* A growable array of token ids. */
typedef struct tok_vec {
    int32_t *v;
    size_t n, cap;
} tok_vec_t;

int tok_vec_push(tok_vec_t *v, int32_t id);

/* The tokens of the words met so far in one encode call, so a repeated word is merged
 * once: a word's tokens depend on its bytes alone. Keys point into the caller's text and
 * values are ranges of the output vector, so both must outlive the cache (they do: the
 * cache lives inside one call). Entries stop being added at TOK_WCACHE_MAX. */
typedef struct tok_wcache_ent {
    const char *key; /* NULL in an empty slot */
    uint32_t len, hash;
    size_t first; /* the word's tokens are out->v[first, first + n) */
    size_t n;
} tok_wcache_ent_t;

typedef struct tok_wcache {
    tok_wcache_ent_t *ent;
    uint32_t mask, used;
} tok_wcache_t;

enum { TOK_WCACHE_MAX = 1 << 16, TOK_WCACHE_WORD_MAX = 128 };

/* Appends the cached tokens of word (w, len) with hash h to out and sets *hit, or clears
 * *hit when the word is not cached. */
int tok_wcache_get(const tok_wcache_t *c, const char *w, size_t len, uint32_t h, tok_vec_t *out,
                   bool *hit);
/* Remembers that the word's tokens are out->v[first, first + n). */
int tok_wcache_put(tok_wcache_t *c, const char *w, size_t len, uint32_t h, size_t first, size_t n);
void tok_wcache_free(tok_wcache_t *c);

/* A binary heap of candidate merges. `key` orders it (largest first) and ties go to
 * the smaller `left`; a and b are what the caller needs to tell a stale entry. */
typedef struct tok_cand {
    double key;
    int32_t left, right;
    uint32_t a, b;
} tok_cand_t;

typedef struct tok_heap {
    tok_cand_t *v;
    size_t n, cap;
} tok_heap_t;

int tok_heap_push(tok_heap_t *h, tok_cand_t c);
tok_cand_t tok_heap_pop(tok_heap_t *h); /* h->n > 0 */

/* --- tok_spm.c --- */

/* Appends the SentencePiece tokens of len bytes of raw text (no special tokens in it)
 * to out; prefix adds the ▁ space prefix. ERR_RANGE when a byte has neither a byte token
 * nor an <unk> to stand for it; ERR_TOOBIG for a word of 2 GiB or more. */
int tok_spm_encode(const tok_t *t, const char *text, size_t len, bool prefix, tok_vec_t *out);

/* --- tok_bpe.c --- */

/* Sets t->byte_sym and reads tokenizer.ggml.merges into t (once the vocabulary's texts
 * and map exist); adds symbols past n_vocab for strings that are not tokens. */
int tok_bpe_load(tok_t *t, const gguf_t *g, err_info_t *e);

/* Appends the byte-level BPE tokens of len bytes of raw text to out. ERR_RANGE when a
 * byte has neither a token nor an <unk> to stand for it; ERR_TOOBIG for a word of 2 GiB
 * or more. */
int tok_bpe_encode(const tok_t *t, const char *text, size_t len, tok_vec_t *out);

/* The GPT-2 byte-to-character table: byte b is stored in token texts as code point
 * tok_gpt2_byte_cpt(b); tok_gpt2_cpt_byte is its inverse (-1 for other code points). */
uint32_t tok_gpt2_byte_cpt(uint8_t b);
int tok_gpt2_cpt_byte(uint32_t cp);

/* --- tok_pretok.c --- */

/* Splits len bytes of text into words by the pre-tokenizer regex; *ends gets the byte
 * offset one past each word (malloc'd, *n entries, the last is len; none for empty text).
 * Invalid UTF-8 bytes are single characters of no class, so no byte is ever lost. */
int tok_pretok_split(tok_pre_t pre, const char *text, size_t len, size_t **ends, size_t *n);

#endif
