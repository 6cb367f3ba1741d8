/*
 * model/tok_pretok.c — the pre-tokenizers of byte-level BPE, written out by hand.
 *
 * GPT-2:   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * Llama 3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
 *          ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 * Qwen2:   the same with \p{N} for \p{N}{1,3} (one digit a word), and the contractions
 *          spelt '[sS]|'[tT]|'[rR][eE]|... (the same set as (?i:...))
 *
 * Each loop below tries the alternatives in the regex's order at the current character
 * and takes the first that matches, with the length a backtracking regex engine would
 * give it. Invalid UTF-8 bytes are characters of no class (they match [^\s\p{L}\p{N}]).
 */
#include <stdlib.h>

#include "model/tok_internal.h"
#include "model/tok_unicode.h"

/* Every character has this bit, so a class test past the end of the text is 0. */
#define PRE_CHAR 0x80u
#define PRE_LNS  (TOK_CPT_LETTER | TOK_CPT_NUMBER | TOK_CPT_SPACE)
#define PRE_END  0xFFFFFFFEu /* code point "past the end" */

typedef struct pre_text {
    uint32_t *cp; /* [n] code points (TOK_CPT_INVALID for a stray byte) */
    uint8_t *fl;  /* [n] TOK_CPT_* | PRE_CHAR */
    size_t *off;  /* [n + 1] byte offset of each character, then the length */
    size_t n;
    size_t *ends; /* words found so far: byte offset past each */
    size_t n_ends;
} pre_text_t;

static inline uint32_t F(const pre_text_t *p, size_t i)
{
    return i < p->n ? p->fl[i] : 0;
}

static inline uint32_t C(const pre_text_t *p, size_t i)
{
    return i < p->n ? p->cp[i] : PRE_END;
}

/* A word ends before character pos (the ends array has room for one per character). */
static inline void emit(pre_text_t *p, size_t pos)
{
    p->ends[p->n_ends++] = p->off[pos];
}

static inline bool is_punct(uint32_t f)
{
    return f != 0 && !(f & PRE_LNS);
}

static inline uint32_t ascii_lower(uint32_t c)
{
    return c >= 'A' && c <= 'Z' ? c + 32 : c;
}

/* Length of the contraction 's 't 're 've 'm 'll 'd at pos, or 0. */
static size_t contraction(const pre_text_t *p, size_t pos, bool any_case)
{
    if (C(p, pos) != '\'')
        return 0;
    uint32_t a = C(p, pos + 1), b = C(p, pos + 2);
    if (any_case) {
        a = ascii_lower(a);
        b = ascii_lower(b);
    }
    if (a == 's' || a == 't' || a == 'm' || a == 'd')
        return 2;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
        return 3;
    return 0;
}

/* \s+(?!\S) then \s+ at pos (a whitespace character): a run of whitespace that is
 * followed by more text leaves its last character to the next word. */
static size_t space_run(const pre_text_t *p, size_t pos)
{
    size_t n = 0;
    while (F(p, pos + n) & TOK_CPT_SPACE)
        n++;
    if (n > 1 && pos + n < p->n)
        return n - 1;
    return n;
}

static void split_gpt2(pre_text_t *p)
{
    for (size_t pos = 0; pos < p->n;) {
        size_t k = contraction(p, pos, false);
        if (k) {
            pos += k;
            emit(p, pos);
            continue;
        }
        bool sp = C(p, pos) == ' ';
        uint32_t f = F(p, pos + sp); /* the class after an optional leading space */
        if (f & TOK_CPT_LETTER) {
            for (pos += sp; F(p, pos) & TOK_CPT_LETTER; pos++) {
            }
        } else if (f & TOK_CPT_NUMBER) {
            for (pos += sp; F(p, pos) & TOK_CPT_NUMBER; pos++) {
            }
        } else if (is_punct(f)) {
            for (pos += sp; is_punct(F(p, pos)); pos++) {
            }
        } else if (F(p, pos) & TOK_CPT_SPACE) {
            pos += space_run(p, pos);
        } else {
            pos++; /* not reached: every character is in one class above */
        }
        emit(p, pos);
    }
}

/* Llama 3's split; Qwen2's with max_digits 1. */
static void split_llama3(pre_text_t *p, size_t max_digits)
{
    for (size_t pos = 0; pos < p->n;) {
        size_t k = contraction(p, pos, true);
        if (k) {
            pos += k;
            emit(p, pos);
            continue;
        }
        uint32_t c = C(p, pos), f = F(p, pos);
        bool newline = c == '\r' || c == '\n';
        /* [^\r\n\p{L}\p{N}]?\p{L}+ */
        if (!newline && !(f & TOK_CPT_NUMBER) &&
            ((f & TOK_CPT_LETTER) || (F(p, pos + 1) & TOK_CPT_LETTER))) {
            for (pos++; F(p, pos) & TOK_CPT_LETTER; pos++) {
            }
            emit(p, pos);
            continue;
        }
        /* \p{N}{1,3} (Qwen2: \p{N}) */
        if (f & TOK_CPT_NUMBER) {
            size_t end = pos;
            while (end - pos < max_digits && (F(p, end) & TOK_CPT_NUMBER))
                end++;
            pos = end;
            emit(p, pos);
            continue;
        }
        /* ' ?[^\s\p{L}\p{N}]+[\r\n]*' */
        bool sp = c == ' ';
        if (is_punct(F(p, pos + sp))) {
            for (pos += sp; is_punct(F(p, pos)); pos++) {
            }
            while (C(p, pos) == '\r' || C(p, pos) == '\n')
                pos++;
            emit(p, pos);
            continue;
        }
        /* \s*[\r\n]+ : up to the last newline of the whitespace run */
        size_t last_nl = 0;
        for (size_t i = pos; F(p, i) & TOK_CPT_SPACE; i++)
            if (C(p, i) == '\r' || C(p, i) == '\n')
                last_nl = i + 1;
        if (last_nl)
            pos = last_nl;
        else if (f & TOK_CPT_SPACE)
            pos += space_run(p, pos);
        else
            pos++; /* not reached */
        emit(p, pos);
    }
}

int tok_pretok_split(tok_pre_t pre, const char *text, size_t len, size_t **ends, size_t *n)
{
    pre_text_t p = {0};
    *ends = NULL;
    *n = 0;
    if (len == 0)
        return 0;
    p.cp = malloc(len * sizeof *p.cp);
    p.fl = malloc(len);
    p.off = malloc((len + 1) * sizeof *p.off);
    p.ends = malloc(len * sizeof *p.ends);
    if (!p.cp || !p.fl || !p.off || !p.ends) {
        free(p.ends);
        goto free_text;
    }
    for (size_t off = 0; off < len;) {
        uint32_t cp;
        size_t cl = tok_utf8_next(text + off, len - off, &cp);
        p.cp[p.n] = cp;
        p.fl[p.n] = (uint8_t)(tok_cpt_flags(cp) | PRE_CHAR);
        p.off[p.n++] = off;
        off += cl;
    }
    p.off[p.n] = len;
    if (pre == TOK_PRE_LLAMA3 || pre == TOK_PRE_QWEN2)
        split_llama3(&p, pre == TOK_PRE_QWEN2 ? 1 : 3);
    else
        split_gpt2(&p);
    *ends = p.ends;
    *n = p.n_ends;
free_text:
    free(p.cp);
    free(p.fl);
    free(p.off);
    return *ends ? 0 : ERR_NOMEM;
}
