/*
 * model/fuzz_tokenizer.c — libFuzzer target: arbitrary bytes through four fixed tokenizers
 * built in-process with model/gguf_write.h (see fuzz/fuzz.h for how targets are built and
 * replayed): SentencePiece `llama` with and without the space prefix (byte fallback, scored
 * pieces, control and user-defined tokens) and GPT-2 byte-level BPE under the GPT-2 and
 * the Llama 3 pre-tokenizer rules.
 *
 * Properties checked for any input: every id encode gives is inside the vocabulary, and
 * there are at most two more of them than input bytes; decode(encode(s)) == s for every
 * input under BPE (byte-level: every byte has a symbol) and for every input without a
 * literal '▁' under SentencePiece (a literal ▁ reads as the space marker; every byte has a
 * byte token); add_bos prepends BOS and changes nothing else (ERR_NOTFOUND without one);
 * parse_special gives valid ids; the input read as int32 ids decodes iff every id is in the
 * vocabulary (else ERR_RANGE), and tok_piece measures what it writes.
 */
#include <stdbool.h>
#include <string.h>

#include "fuzz/fuzz.h"
#include "model/gguf.h"
#include "model/gguf_write.h"
#include "model/tok_internal.h"
#include "model/tokenizer.h"

/* SentencePiece token types (tokenizer.ggml.token_type). */
enum { TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER = 4, TT_BYTE = 6 };

/* Pieces of the SentencePiece vocabulary, best score first, after <unk> <s> </s> and the
 * 256 byte tokens. */
static const char *const spm_pieces[] = {
    "▁",     "▁t",     "▁th", "▁the", "h",    "e",      "he", "l",    "ll", "o",   "llo",
    "hello", "▁hello", "▁w",  "▁wo",  "▁wor", "▁world", "a",  "▁a",   "an", "▁an", "d",
    "nd",    "▁and",   ".",   ",",    "\n",   "日",     "本", "日本", "é",  "▁▁",  "▁▁▁▁",
    "in",    "ing",    "g",   "i",    "n",    "t",      "w",  "r",    "or", "ld",  "▁▁t",
};
/* Merges of the BPE vocabulary as byte strings (left, right); the tokens are the 256 byte
 * symbols, then each merge's concatenation in this order, then <|endoftext|>. */
static const char *const bpe_merges[][2] = {
    {"h", "e"},       {"l", "l"},           {"he", "ll"},     {"hell", "o"}, {" ", "hello"},
    {" ", "w"},       {"o", "r"},           {" w", "or"},     {"l", "d"},    {" wor", "ld"},
    {"i", "n"},       {"in", "g"},          {" ", "t"},       {" t", "h"},   {" th", "e"},
    {"\n", "\n"},     {" ", " "},           {"  ", "  "},     {"'", "s"},    {"1", "2"},
    {"\xe6", "\x97"}, {"\xe6\x97", "\xa5"}, {"\xc3", "\xa9"}, {"e", "r"},
};
enum { N_SPM_PIECES = sizeof spm_pieces / sizeof spm_pieces[0] };
enum { N_BPE_MERGES = sizeof bpe_merges / sizeof bpe_merges[0] };

typedef struct fixed {
    const char *name;
    tok_t *tok;
    bool spm;
} fixed_t;

/* Built on the first input, kept for the life of the process. */
static fixed_t fixed[4] = {
    {"spm", NULL, true},
    {"spm-no-prefix", NULL, true},
    {"bpe-gpt2", NULL, false},
    {"bpe-llama3", NULL, false},
};
static bool built;

/* Opens a tokenizer on the writer's file (the buffers live as long as the tokenizer needs
 * none of them: tok_t copies what it keeps). */
static tok_t *open_written(gguf_writer_t *w)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    gguf_t *g = NULL;
    tok_t *t = NULL;
    err_info_t e;
    if (gguf_writer_write_mem(w, &buf, &len, &e) == 0 && gguf_open_mem(buf, len, &g, &e) == 0 &&
        tok_new(g, &t, &e) != 0) {
        fprintf(stderr, "fuzz_tokenizer: %s\n", e.msg);
        t = NULL;
    }
    gguf_close(&g);
    free(buf);
    return t;
}

static tok_t *build_spm(bool prefix)
{
    enum { N = 3 + 256 + N_SPM_PIECES + 2 };
    static char bytes[256][8];
    const char *toks[N];
    int32_t types[N];
    float scores[N];
    uint32_t n = 0;
    toks[n] = "<unk>", types[n] = TT_UNKNOWN, scores[n++] = 0;
    toks[n] = "<s>", types[n] = TT_CONTROL, scores[n++] = 0;
    toks[n] = "</s>", types[n] = TT_CONTROL, scores[n++] = 0;
    for (int b = 0; b < 256; b++) {
        snprintf(bytes[b], sizeof bytes[b], "<0x%02X>", b);
        toks[n] = bytes[b], types[n] = TT_BYTE, scores[n++] = 0;
    }
    for (int i = 0; i < N_SPM_PIECES; i++)
        toks[n] = spm_pieces[i], types[n] = TT_NORMAL, scores[n++] = -1.0f - 0.1f * (float)i;
    toks[n] = "<|user|>", types[n] = TT_USER, scores[n++] = 0;
    toks[n] = "<|eot|>", types[n] = TT_CONTROL, scores[n++] = 0;
    gguf_writer_t *w = NULL;
    if (gguf_writer_new(&w))
        return NULL;
    gguf_writer_add_str(w, "general.architecture", "llama");
    gguf_writer_add_str(w, "tokenizer.ggml.model", "llama");
    gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", toks, n);
    gguf_writer_add_arr(w, "tokenizer.ggml.token_type", GGUF_VT_INT32, types, n);
    gguf_writer_add_arr(w, "tokenizer.ggml.scores", GGUF_VT_FLOAT32, scores, n);
    gguf_writer_add_bool(w, "tokenizer.ggml.add_space_prefix", prefix);
    tok_t *t = open_written(w);
    gguf_writer_destroy(&w);
    return t;
}

/* Appends the GPT-2 symbols of n bytes to dst (NUL-terminated; room for 2 bytes each). */
static void gpt2_append(char *dst, const char *src, size_t n)
{
    size_t l = strlen(dst);
    for (size_t i = 0; i < n; i++) {
        uint32_t cp = tok_gpt2_byte_cpt((uint8_t)src[i]);
        if (cp < 0x80) {
            dst[l++] = (char)cp;
        } else {
            dst[l++] = (char)(0xC0 | (cp >> 6));
            dst[l++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    dst[l] = '\0';
}

static void gpt2_symbols(char *dst, const char *src)
{
    gpt2_append(dst, src, strlen(src));
}

static tok_t *build_bpe(const char *pre)
{
    enum { N = 256 + N_BPE_MERGES + 1 };
    static char text[N][32], merge[N_BPE_MERGES][48];
    const char *toks[N], *merges[N_BPE_MERGES];
    int32_t types[N];
    uint32_t n = 0;
    for (int b = 0; b < 256; b++) {
        char one = (char)b;
        text[n][0] = '\0';
        gpt2_append(text[n], &one, 1);
        toks[n] = text[n], types[n++] = TT_NORMAL;
    }
    for (int i = 0; i < N_BPE_MERGES; i++) {
        merge[i][0] = '\0';
        gpt2_symbols(merge[i], bpe_merges[i][0]);
        strcat(merge[i], " ");
        gpt2_symbols(merge[i], bpe_merges[i][1]);
        merges[i] = merge[i];
        text[n][0] = '\0';
        gpt2_symbols(text[n], bpe_merges[i][0]);
        gpt2_symbols(text[n], bpe_merges[i][1]);
        toks[n] = text[n], types[n++] = TT_NORMAL;
    }
    toks[n] = "<|endoftext|>", types[n++] = TT_CONTROL;
    gguf_writer_t *w = NULL;
    if (gguf_writer_new(&w))
        return NULL;
    gguf_writer_add_str(w, "general.architecture", "llama");
    gguf_writer_add_str(w, "tokenizer.ggml.model", "gpt2");
    gguf_writer_add_str(w, "tokenizer.ggml.pre", pre);
    gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", toks, n);
    gguf_writer_add_arr(w, "tokenizer.ggml.token_type", GGUF_VT_INT32, types, n);
    gguf_writer_add_arr_str(w, "tokenizer.ggml.merges", merges, N_BPE_MERGES);
    tok_t *t = open_written(w);
    gguf_writer_destroy(&w);
    return t;
}

static bool build_all(void)
{
    if (!built) {
        fixed[0].tok = build_spm(true);
        fixed[1].tok = build_spm(false);
        fixed[2].tok = build_bpe("gpt-2");
        fixed[3].tok = build_bpe("llama-bpe");
        built = true;
    }
    for (int i = 0; i < 4; i++)
        if (!fixed[i].tok)
            return false;
    return true;
}

static int check_ids(const fixed_t *f, const int32_t *ids, size_t n, const char *what, char *why,
                     size_t cap)
{
    uint32_t nv = tok_n_vocab(f->tok);
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || (uint32_t)ids[i] >= nv)
            return fuzz_fail(why, cap, "%s: %s gave id %d at %zu (vocabulary %u)", f->name, what,
                             ids[i], i, nv);
    return 0;
}

/* Encode and decode one input with one tokenizer. */
static int round_trip(const fixed_t *f, const uint8_t *data, size_t size, char *why, size_t cap)
{
    const char *s = (const char *)data;
    int32_t *ids = NULL, *bos_ids = NULL;
    size_t n = 0, n_bos = 0, len = 0;
    char *text = NULL;
    int rc = tok_encode(f->tok, s, size, false, false, &ids, &n);
    if (rc)
        return fuzz_fail(why, cap, "%s: encode failed with %d", f->name, rc);
    if ((rc = check_ids(f, ids, n, "encode", why, cap)))
        goto out;
    if (n > size + 2) {
        rc = fuzz_fail(why, cap, "%s: %zu ids for %zu bytes", f->name, n, size);
        goto out;
    }
    if (tok_decode(f->tok, ids, n, &text, &len) != 0) {
        rc = fuzz_fail(why, cap, "%s: decode of its own ids failed", f->name);
        goto out;
    }
    bool exact = !f->spm || !memmem(data, size, "\xe2\x96\x81", 3);
    if (exact && (len != size || memcmp(text, data, size) != 0)) {
        rc =
            fuzz_fail(why, cap, "%s: decode(encode(s)) gave %zu bytes for %zu", f->name, len, size);
        goto out;
    }
    if (strlen(text) > len) {
        rc = fuzz_fail(why, cap, "%s: decoded text not terminated at its length", f->name);
        goto out;
    }

    int brc = tok_encode(f->tok, s, size, true, false, &bos_ids, &n_bos);
    if (tok_bos(f->tok) < 0) {
        if (brc != ERR_NOTFOUND)
            rc = fuzz_fail(why, cap, "%s: add_bos without a BOS gave %d", f->name, brc);
    } else if (brc != 0 || n_bos != n + 1 || bos_ids[0] != tok_bos(f->tok) ||
               (n && memcmp(bos_ids + 1, ids, n * sizeof *ids) != 0)) {
        rc = fuzz_fail(why, cap, "%s: add_bos changed more than the first id", f->name);
    }
out:
    free(ids);
    free(bos_ids);
    free(text);
    return rc;
}

static int specials(const fixed_t *f, const uint8_t *data, size_t size, char *why, size_t cap)
{
    int32_t *ids = NULL;
    size_t n = 0, len = 0;
    char *text = NULL;
    int rc = tok_encode(f->tok, (const char *)data, size, false, true, &ids, &n);
    if (rc)
        return fuzz_fail(why, cap, "%s: encode with parse_special failed with %d", f->name, rc);
    rc = check_ids(f, ids, n, "encode with parse_special", why, cap);
    if (!rc && tok_decode(f->tok, ids, n, &text, &len) != 0)
        rc = fuzz_fail(why, cap, "%s: decode after parse_special failed", f->name);
    free(ids);
    free(text);
    return rc;
}

/* The input read as little-endian int32 ids. */
static int decode_ids(const fixed_t *f, const uint8_t *data, size_t size, char *why, size_t cap)
{
    size_t n = size / 4;
    int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
    if (!ids)
        return 0;
    bool valid = true;
    uint32_t nv = tok_n_vocab(f->tok);
    for (size_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)data[4 * i] | (uint32_t)data[4 * i + 1] << 8 |
                     (uint32_t)data[4 * i + 2] << 16 | (uint32_t)data[4 * i + 3] << 24;
        /* most random ids are far outside: fold half of them into the vocabulary */
        ids[i] = (u & 0x80000000u) ? (int32_t)(u % nv) : (int32_t)u;
        valid = valid && ids[i] >= 0 && (uint32_t)ids[i] < nv;
    }
    char *text = NULL;
    size_t len = 0;
    int rc = tok_decode(f->tok, ids, n, &text, &len);
    int bad = 0;
    if (valid ? rc != 0 : rc != ERR_RANGE)
        bad = fuzz_fail(why, cap, "%s: decode of %s ids gave %d", f->name,
                        valid ? "valid" : "invalid", rc);
    for (size_t i = 0; i < n && !bad; i++) {
        char piece[64];
        size_t want = tok_piece(f->tok, ids[i], i == 0, i & 1, NULL, 0);
        size_t got = tok_piece(f->tok, ids[i], i == 0, i & 1, piece, sizeof piece);
        if (want != got || (ids[i] < 0 || (uint32_t)ids[i] >= nv ? got != 0 : false))
            bad = fuzz_fail(why, cap, "%s: tok_piece(%d) measured %zu, wrote %zu", f->name, ids[i],
                            want, got);
    }
    free(ids);
    free(text);
    return bad;
}

int fuzz_tokenizer_one(const uint8_t *data, size_t size, char *why, size_t cap)
{
    if (cap)
        why[0] = '\0';
    if (!build_all())
        return fuzz_fail(why, cap, "the fixed vocabularies do not load");
    for (int i = 0; i < 4; i++) {
        int rc = round_trip(&fixed[i], data, size, why, cap);
        if (!rc)
            rc = specials(&fixed[i], data, size, why, cap);
        if (!rc)
            rc = decode_ids(&fixed[i], data, size, why, cap);
        if (rc)
            return rc;
    }
    return 0;
}

FUZZ_ENTRY(fuzz_tokenizer_one)
