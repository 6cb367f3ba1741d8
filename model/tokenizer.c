/*
 * model/tokenizer.c — building a tokenizer from a GGUF file, lookups, special tokens,
 * and decoding. The merging itself is in tok_spm.c and tok_bpe.c.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/tok_internal.h"
#include "model/tok_unicode.h"

/* ---- loading ---- */

/* Reads an optional token id key into *out: dflt when absent (and inside the vocabulary),
 * -1 when stored as -1. Another value outside the vocabulary is ERR_FORMAT when strict,
 * else read as -1. */
static int load_id(const gguf_t *g, const char *key, int32_t dflt, uint32_t n_vocab, bool strict,
                   int32_t *out, err_info_t *e)
{
    *out = (dflt >= 0 && (uint32_t)dflt < n_vocab) ? dflt : -1;
    if (!gguf_kv_find(g, key))
        return 0;
    int64_t v;
    int rc = gguf_get_i64(g, key, &v, e);
    if (rc)
        return rc;
    if (v == -1) {
        *out = -1;
    } else if (v >= 0 && v < n_vocab) {
        *out = (int32_t)v;
    } else if (strict) {
        return err_set(e, ERR_FORMAT, "%s = %" PRId64 " is outside the vocabulary (%u tokens)", key,
                       v, n_vocab);
    } else {
        *out = -1;
    }
    return 0;
}

/* Copies the token texts into t->texts / t->text_off, each followed by a NUL. */
static int load_texts(tok_t *t, const gguf_str_t *strs, err_info_t *e)
{
    size_t total = 0;
    for (uint32_t i = 0; i < t->n_vocab; i++)
        total += strs[i].len + 1;
    t->texts_cap = total + 1;
    t->off_cap = (size_t)t->n_vocab + 1;
    t->texts = malloc(t->texts_cap);
    t->text_off = malloc(t->off_cap * sizeof *t->text_off);
    if (!t->texts || !t->text_off)
        return err_set(e, ERR_NOMEM, "tokenizer: out of memory");
    uint64_t off = 0;
    for (uint32_t i = 0; i < t->n_vocab; i++) {
        t->text_off[i] = off;
        memcpy(t->texts + off, strs[i].ptr, strs[i].len);
        off += strs[i].len;
        t->texts[off++] = '\0';
    }
    t->text_off[t->n_vocab] = off;
    t->n_sym = t->n_vocab;
    return 0;
}

/* Reads the optional per-token arrays: scores (floats) and token types (0..6). */
static int load_scores_types(tok_t *t, const gguf_t *g, err_info_t *e)
{
    t->scores = calloc(t->n_vocab, sizeof *t->scores);
    t->types = malloc(t->n_vocab);
    if (!t->scores || !t->types)
        return err_set(e, ERR_NOMEM, "tokenizer: out of memory");
    memset(t->types, TOK_TYPE_NORMAL, t->n_vocab);
    gguf_arr_t a;
    int rc;
    if (gguf_kv_find(g, "tokenizer.ggml.scores")) {
        if ((rc = gguf_get_arr(g, "tokenizer.ggml.scores", &a, e)))
            return rc;
        if (a.elem_type != GGUF_VT_FLOAT32 && a.elem_type != GGUF_VT_FLOAT64)
            return err_set(e, ERR_FORMAT, "tokenizer.ggml.scores: expected floats, found %s",
                           gguf_vtype_name(a.elem_type));
        if (a.n != t->n_vocab)
            return err_set(e, ERR_FORMAT, "tokenizer.ggml.scores: %" PRIu64 " for %u tokens", a.n,
                           t->n_vocab);
        for (uint32_t i = 0; i < t->n_vocab; i++)
            t->scores[i] = (float)gguf_arr_f64(&a, i);
    }
    if (gguf_kv_find(g, "tokenizer.ggml.token_type")) {
        if ((rc = gguf_get_arr(g, "tokenizer.ggml.token_type", &a, e)))
            return rc;
        if (a.elem_type == GGUF_VT_FLOAT32 || a.elem_type == GGUF_VT_FLOAT64 ||
            a.elem_type == GGUF_VT_STRING || a.elem_type == GGUF_VT_ARRAY ||
            a.elem_type == GGUF_VT_BOOL)
            return err_set(e, ERR_FORMAT, "tokenizer.ggml.token_type: expected integers, found %s",
                           gguf_vtype_name(a.elem_type));
        if (a.n != t->n_vocab)
            return err_set(e, ERR_FORMAT, "tokenizer.ggml.token_type: %" PRIu64 " for %u tokens",
                           a.n, t->n_vocab);
        for (uint32_t i = 0; i < t->n_vocab; i++) {
            int64_t v = gguf_arr_i64(&a, i);
            if (v < TOK_TYPE_UNDEFINED || v > TOK_TYPE_BYTE)
                return err_set(
                    e, ERR_FORMAT,
                    "tokenizer.ggml.token_type[%u] = %" PRId64 " is not a token type (0..6)", i, v);
            t->types[i] = (uint8_t)v;
        }
    }
    return 0;
}

/* The byte of a "<0xXX>" token text, or -1. */
static int byte_token_value(const char *s, size_t len)
{
    if (len != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>')
        return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = (c >= '0' && c <= '9')   ? c - '0'
                : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                : (c >= 'a' && c <= 'f') ? c - 'a' + 10
                                         : -1;
        if (d < 0)
            return -1;
        v = 16 * v + d;
    }
    return v;
}

/* SPM's byte fallback: <0xXX> for each byte, else a one-byte normal token. */
static void load_spm_bytes(tok_t *t)
{
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        int32_t id = tok_strmap_find(t, name, 6);
        if (id < 0) {
            char c = (char)b;
            id = tok_strmap_find(t, &c, 1);
            if (id >= 0 && t->types[id] != TOK_TYPE_NORMAL)
                id = -1;
        }
        t->byte_sym[b] = id;
    }
}

/* True when no normal piece has a ▁ after a character other than ▁, so SentencePiece can
 * merge the words of a text (each from its ▁ on) one at a time. */
static bool spm_words_independent(const tok_t *t)
{
    static const char mark[] = "\xE2\x96\x81";
    for (uint32_t id = 0; id < t->n_vocab; id++) {
        if (t->types[id] != TOK_TYPE_NORMAL)
            continue;
        const char *s = tok_sym_text(t, id);
        size_t len = tok_sym_len(t, id);
        bool inner_mark = false, only_marks = len % 3 == 0;
        for (size_t i = 0; i < len; i++) {
            bool at_mark = i + 3 <= len && !memcmp(s + i, mark, 3);
            inner_mark |= at_mark && i > 0;
            if (i % 3 == 0)
                only_marks &= at_mark;
        }
        if (inner_mark && !only_marks)
            return false;
    }
    return true;
}

/* Appends to buf the bytes a normal BPE token stands for: each GPT-2 character back to
 * its byte (other characters stay as they are). */
static size_t bpe_unmap(const char *s, size_t len, char *buf)
{
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        size_t cl = tok_utf8_next(s + i, len - i, &cp);
        int b = cp == TOK_CPT_INVALID ? -1 : tok_gpt2_cpt_byte(cp);
        if (b >= 0) {
            buf[n++] = (char)b;
        } else {
            memcpy(buf + n, s + i, cl);
            n += cl;
        }
        i += cl;
    }
    return n;
}

/* Appends to buf the bytes a normal SPM token stands for: ▁ becomes a space. */
static size_t spm_unescape(const char *s, size_t len, char *buf)
{
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        if (i + 3 <= len && !memcmp(s + i, "\xE2\x96\x81", 3)) {
            buf[n++] = ' ';
            i += 3;
        } else {
            buf[n++] = s[i++];
        }
    }
    return n;
}

/* Fills t->pieces: what each token contributes to decoded text (never longer than its
 * stored text). */
static int load_pieces(tok_t *t, err_info_t *e)
{
    t->pieces = malloc(t->text_off[t->n_vocab] + 1);
    t->piece_off = malloc(((size_t)t->n_vocab + 1) * sizeof *t->piece_off);
    if (!t->pieces || !t->piece_off)
        return err_set(e, ERR_NOMEM, "tokenizer: out of memory");
    uint64_t off = 0;
    for (uint32_t id = 0; id < t->n_vocab; id++) {
        const char *s = tok_sym_text(t, id);
        size_t len = tok_sym_len(t, id);
        char *out = t->pieces + off;
        int b = t->types[id] == TOK_TYPE_BYTE ? byte_token_value(s, len) : -1;
        t->piece_off[id] = off;
        if (b >= 0) {
            out[0] = (char)b;
            off += 1;
        } else if (t->types[id] == TOK_TYPE_NORMAL) {
            off += t->kind == TOK_SPM ? spm_unescape(s, len, out) : bpe_unmap(s, len, out);
        } else {
            memcpy(out, s, len);
            off += len;
        }
    }
    t->piece_off[t->n_vocab] = off;
    return 0;
}

static int special_cmp(const void *pa, const void *pb, void *ctx)
{
    const tok_t *t = ctx;
    int32_t a = *(const int32_t *)pa, b = *(const int32_t *)pb;
    size_t la = tok_sym_len(t, (uint32_t)a), lb = tok_sym_len(t, (uint32_t)b);
    if (la != lb)
        return la > lb ? -1 : 1;
    return (a > b) - (a < b);
}

/* The control and user-defined tokens that parse_special finds in text, longest first. */
static int load_specials(tok_t *t, err_info_t *e)
{
    t->specials = malloc(((size_t)t->n_vocab + 1) * sizeof *t->specials);
    if (!t->specials)
        return err_set(e, ERR_NOMEM, "tokenizer: out of memory");
    for (uint32_t id = 0; id < t->n_vocab; id++)
        if ((t->types[id] == TOK_TYPE_CONTROL || t->types[id] == TOK_TYPE_USER_DEFINED) &&
            tok_sym_len(t, id) > 0)
            t->specials[t->n_specials++] = (int32_t)id;
    qsort_r(t->specials, t->n_specials, sizeof *t->specials, special_cmp, t);
    return 0;
}

static int load_kind(tok_t *t, const gguf_t *g, err_info_t *e)
{
    gguf_str_t s;
    int rc = gguf_get_str(g, "tokenizer.ggml.model", &s, e);
    if (rc)
        return rc;
    if (gguf_str_eq(s, "llama"))
        t->kind = TOK_SPM;
    else if (gguf_str_eq(s, "gpt2"))
        t->kind = TOK_BPE;
    else
        return err_set(e, ERR_UNSUPPORTED,
                       "tokenizer.ggml.model '%.*s' is not supported (llama or gpt2)",
                       (int)(s.len > 64 ? 64 : s.len), s.ptr);
    if (t->kind != TOK_BPE)
        return 0;
    t->pre = TOK_PRE_GPT2;
    if (!gguf_kv_find(g, "tokenizer.ggml.pre"))
        return 0;
    if ((rc = gguf_get_str(g, "tokenizer.ggml.pre", &s, e)))
        return rc;
    if (gguf_str_eq(s, "llama-bpe") || gguf_str_eq(s, "llama3"))
        t->pre = TOK_PRE_LLAMA3;
    else if (gguf_str_eq(s, "qwen2"))
        t->pre = TOK_PRE_QWEN2;
    else if (!gguf_str_eq(s, "default") && !gguf_str_eq(s, "gpt-2"))
        return err_set(e, ERR_UNSUPPORTED,
                       "tokenizer.ggml.pre '%.*s' is not supported (default, gpt-2, llama-bpe, "
                       "qwen2)",
                       (int)(s.len > 64 ? 64 : s.len), s.ptr);
    return 0;
}

static int tok_load(tok_t *t, const gguf_t *g, err_info_t *e)
{
    int rc = load_kind(t, g, e);
    if (rc)
        return rc;

    gguf_arr_t arr;
    if ((rc = gguf_get_arr(g, "tokenizer.ggml.tokens", &arr, e)))
        return rc;
    if (arr.elem_type != GGUF_VT_STRING)
        return err_set(e, ERR_FORMAT, "tokenizer.ggml.tokens: expected strings, found %s",
                       gguf_vtype_name(arr.elem_type));
    if (arr.n == 0 || arr.n >= INT32_MAX / 2)
        return err_set(e, ERR_FORMAT, "tokenizer.ggml.tokens: %" PRIu64 " tokens", arr.n);
    t->n_vocab = (uint32_t)arr.n;
    gguf_str_t *strs;
    if ((rc = gguf_arr_strs(&arr, &strs)))
        return err_set(e, rc, "tokenizer.ggml.tokens: cannot read");
    rc = load_texts(t, strs, e);
    free(strs);
    if (rc || (rc = load_scores_types(t, g, e)))
        return rc;
    if (tok_strmap_build(t, t->n_vocab))
        return err_set(e, ERR_NOMEM, "tokenizer: out of memory");

    bool spm = t->kind == TOK_SPM;
    if ((rc = load_id(g, "tokenizer.ggml.bos_token_id", spm ? 1 : -1, t->n_vocab, true, &t->bos,
                      e)) ||
        (rc = load_id(g, "tokenizer.ggml.eos_token_id", spm ? 2 : -1, t->n_vocab, true, &t->eos,
                      e)) ||
        (rc = load_id(g, "tokenizer.ggml.unknown_token_id", spm ? 0 : -1, t->n_vocab, true, &t->unk,
                      e)) ||
        /* Some converted files name a padding id past the vocabulary; it is never used
         * to encode or decode, so such a value reads as "none". */
        (rc = load_id(g, "tokenizer.ggml.padding_token_id", -1, t->n_vocab, false, &t->pad, e)))
        return rc;
    if ((rc = gguf_get_bool_or(g, "tokenizer.ggml.add_bos_token", spm, &t->add_bos, e)))
        return rc;
    if (spm) {
        if ((rc = gguf_get_bool_or(g, "tokenizer.ggml.add_space_prefix", true, &t->add_space_prefix,
                                   e)))
            return rc;
        load_spm_bytes(t);
        t->spm_chunks = spm_words_independent(t);
    } else if ((rc = tok_bpe_load(t, g, e))) {
        return rc;
    }
    if ((rc = load_pieces(t, e)) || (rc = load_specials(t, e)))
        return rc;
    return 0;
}

int tok_new(const gguf_t *g, tok_t **out, err_info_t *e)
{
    tok_t *t = calloc(1, sizeof *t);
    if (!t)
        return err_set(e, ERR_NOMEM, "tokenizer: out of memory");
    int rc = tok_load(t, g, e);
    if (rc) {
        tok_destroy(&t);
        return rc;
    }
    *out = t;
    return 0;
}

void tok_destroy(tok_t **tp)
{
    tok_t *t = tp ? *tp : NULL;
    if (!t)
        return;
    free(t->texts);
    free(t->text_off);
    free(t->pieces);
    free(t->piece_off);
    free(t->scores);
    free(t->types);
    tok_strmap_free(&t->map);
    free(t->merges);
    free(t->specials);
    free(t);
    *tp = NULL;
}

/* ---- lookups ---- */

tok_kind_t tok_kind(const tok_t *t)
{
    return t->kind;
}

uint32_t tok_n_vocab(const tok_t *t)
{
    return t->n_vocab;
}

int32_t tok_bos(const tok_t *t)
{
    return t->bos;
}

int32_t tok_eos(const tok_t *t)
{
    return t->eos;
}

bool tok_add_bos(const tok_t *t)
{
    return t->add_bos;
}

static bool valid_id(const tok_t *t, int32_t id)
{
    return id >= 0 && (uint32_t)id < t->n_vocab;
}

bool tok_is_control(const tok_t *t, int32_t id)
{
    return valid_id(t, id) && t->types[id] == TOK_TYPE_CONTROL;
}

const char *tok_text(const tok_t *t, int32_t id)
{
    return valid_id(t, id) ? tok_sym_text(t, (uint32_t)id) : NULL;
}

int32_t tok_find(const tok_t *t, const char *s, size_t len)
{
    int32_t id = tok_strmap_find(t, s, len);
    return valid_id(t, id) ? id : -1;
}

/* ---- encoding ---- */

/* A piece of the input: raw text, or a special token found in it. */
typedef struct frag {
    int32_t id; /* -1 for raw text */
    size_t off, len;
} frag_t;

typedef struct frag_list {
    frag_t *v;
    size_t n, cap;
} frag_list_t;

static int frag_push(frag_list_t *l, frag_t f)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 16;
        frag_t *p = realloc(l->v, cap * sizeof *p);
        if (!p)
            return ERR_NOMEM;
        l->v = p;
        l->cap = cap;
    }
    l->v[l->n++] = f;
    return 0;
}

/* Cuts the raw fragments of *l at every occurrence of special token id. */
static int frag_split(const tok_t *t, const char *text, frag_list_t *l, int32_t id)
{
    const char *s = tok_sym_text(t, (uint32_t)id);
    size_t slen = tok_sym_len(t, (uint32_t)id);
    frag_list_t out = {0};
    int rc = 0;
    for (size_t i = 0; i < l->n && rc == 0; i++) {
        frag_t f = l->v[i];
        if (f.id >= 0) {
            rc = frag_push(&out, f);
            continue;
        }
        size_t pos = f.off, end = f.off + f.len;
        const char *hit;
        while (rc == 0 && (hit = memmem(text + pos, end - pos, s, slen))) {
            size_t at = (size_t)(hit - text);
            if (at > pos)
                rc = frag_push(&out, (frag_t){-1, pos, at - pos});
            if (rc == 0)
                rc = frag_push(&out, (frag_t){id, at, slen});
            pos = at + slen;
        }
        if (rc == 0 && pos < end)
            rc = frag_push(&out, (frag_t){-1, pos, end - pos});
    }
    free(l->v);
    *l = out;
    return rc;
}

int tok_encode(const tok_t *t, const char *text, size_t len, bool add_bos, bool parse_special,
               int32_t **ids, size_t *n_ids)
{
    if (!text && len)
        return ERR_INVAL;
    if (add_bos && t->bos < 0)
        return ERR_NOTFOUND;
    tok_vec_t out = {0};
    frag_list_t frags = {0};
    int rc = 0;
    if (add_bos)
        rc = tok_vec_push(&out, t->bos);
    if (rc == 0 && len > 0)
        rc = frag_push(&frags, (frag_t){-1, 0, len});
    /* Longest special texts first, so a longer one is never cut by a shorter one. */
    for (uint32_t i = 0; parse_special && i < t->n_specials && rc == 0; i++)
        rc = frag_split(t, text, &frags, t->specials[i]);

    bool after_special = true; /* SentencePiece prefixes text that starts or follows one */
    for (size_t i = 0; i < frags.n && rc == 0; i++) {
        frag_t f = frags.v[i];
        if (f.id >= 0) {
            rc = tok_vec_push(&out, f.id);
            after_special = true;
        } else if (t->kind == TOK_SPM) {
            rc = tok_spm_encode(t, text + f.off, f.len, t->add_space_prefix && after_special, &out);
            after_special = false;
        } else {
            rc = tok_bpe_encode(t, text + f.off, f.len, &out);
        }
    }
    free(frags.v);
    if (rc) {
        free(out.v);
        return rc;
    }
    if (!out.v && !(out.v = malloc(sizeof *out.v)))
        return ERR_NOMEM;
    *ids = out.v;
    *n_ids = out.n;
    return 0;
}

/* ---- decoding ---- */

/* True for the token types that decoded text shows without show_special. */
static bool shown_type(uint8_t type)
{
    return type == TOK_TYPE_NORMAL || type == TOK_TYPE_BYTE || type == TOK_TYPE_USER_DEFINED;
}

/* The piece of id as (pointer, length), after the first-token rule. */
static const char *piece_of(const tok_t *t, int32_t id, bool first, bool show_special, size_t *len)
{
    const char *p;
    if (shown_type(t->types[id])) {
        p = t->pieces + t->piece_off[id];
        *len = (size_t)(t->piece_off[id + 1] - t->piece_off[id]);
    } else if (show_special) {
        p = tok_sym_text(t, (uint32_t)id);
        *len = tok_sym_len(t, (uint32_t)id);
    } else {
        *len = 0;
        return "";
    }
    if (first && t->add_space_prefix && *len > 0 && p[0] == ' ') {
        p++;
        (*len)--;
    }
    return p;
}

size_t tok_piece(const tok_t *t, int32_t id, bool first, bool show_special, char *buf, size_t cap)
{
    if (!valid_id(t, id))
        return 0;
    size_t len;
    const char *p = piece_of(t, id, first, show_special, &len);
    if (cap > 0) /* buf may be NULL when only the length is wanted */
        memcpy(buf, p, len < cap ? len : cap);
    return len;
}

int tok_decode(const tok_t *t, const int32_t *ids, size_t n, char **text, size_t *len)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (!valid_id(t, ids[i]))
            return ERR_RANGE;
        total += (size_t)(t->piece_off[ids[i] + 1] - t->piece_off[ids[i]]);
    }
    char *buf = malloc(total + 1);
    if (!buf)
        return ERR_NOMEM;
    size_t n_out = 0;
    bool first = true; /* until the first token that is not skipped */
    for (size_t i = 0; i < n; i++) {
        if (!shown_type(t->types[ids[i]]))
            continue;
        size_t pl;
        const char *p = piece_of(t, ids[i], first, false, &pl);
        memcpy(buf + n_out, p, pl);
        n_out += pl;
        first = false;
    }
    buf[n_out] = '\0';
    *text = buf;
    *len = n_out;
    return 0;
}
