/*
 * Tests for the tokenizer (model/tokenizer.c and its tok_*.c files): llama.cpp's published
 * test vectors for the Llama 2 SentencePiece and GPT-2 BPE vocabularies under ../shared,
 * round trips over the shared corpus and edge cases, special tokens, pieces, and crafted
 * vocabularies (written here with the GGUF writer) for the Llama 3 pre-tokenizer and for
 * every rejection. The pre-tokenizer splits are checked against splits worked out by hand
 * from the regexes.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/gguf.h"
#include "model/gguf_write.h"
#include "model/tok_internal.h"
#include "model/tokenizer.h"
#include "tests/check.h"

/* ---- helpers ---- */

/* A tokenizer over a shared vocabulary (and its gguf_t), or NULL after a skip. */
static tok_t *open_vocab(const char *rel, gguf_t **g)
{
    const char *path = check_shared_or_skip(rel);
    if (!path)
        return NULL;
    err_info_t e;
    err_clear(&e);
    tok_t *t = NULL;
    *g = NULL;
    if (gguf_open(path, g, &e) || tok_new(*g, &t, &e)) {
        check_fail_(__FILE__, __LINE__, "%s: %s", rel, err_msg(&e));
        gguf_close(g);
        return NULL;
    }
    return t;
}

/* Encodes, decodes, and checks the text comes back byte for byte. */
static bool round_trips(const tok_t *t, const char *s, size_t len, bool special)
{
    int32_t *ids = NULL;
    size_t n = 0;
    char *back = NULL;
    size_t blen = 0;
    bool ok = tok_encode(t, s, len, true, special, &ids, &n) == 0 &&
              tok_decode(t, ids, n, &back, &blen) == 0 && blen == len && !memcmp(back, s, len);
    free(ids);
    free(back);
    return ok;
}

/* Encodes s (no BOS, no special parsing) and compares with the expected ids. */
static bool encodes_to(const tok_t *t, const char *s, const int32_t *want, size_t n_want)
{
    int32_t *ids = NULL;
    size_t n = 0;
    if (tok_encode(t, s, strlen(s), false, false, &ids, &n))
        return false;
    bool ok = n == n_want && (n == 0 || !memcmp(ids, want, n * sizeof *ids));
    if (!ok) {
        fprintf(stderr, "# \"%s\" gives", s);
        for (size_t i = 0; i < n; i++)
            fprintf(stderr, " %d", ids[i]);
        fputc('\n', stderr);
    }
    free(ids);
    return ok;
}

/* ---- llama.cpp's test vectors ---- */

/* Runs every string of vocab's .inp file and compares with the .out line. The strings
 * are separated by "\n__ggml_vocab_test__\n" (the file ends with one). */
static void run_vectors(const char *vocab)
{
    char rel[128], inp_rel[160], out_rel[160];
    snprintf(rel, sizeof rel, "vocab/%s", vocab);
    snprintf(inp_rel, sizeof inp_rel, "vocab/%s.inp", vocab);
    snprintf(out_rel, sizeof out_rel, "vocab/%s.out", vocab);
    gguf_t *g;
    tok_t *t = open_vocab(rel, &g);
    if (!t)
        return;
    size_t inp_len = 0, out_len = 0;
    char *inp = check_shared(inp_rel) ? check_slurp(check_shared(inp_rel), &inp_len) : NULL;
    char *out = check_shared(out_rel) ? check_slurp(check_shared(out_rel), &out_len) : NULL;
    CHECK(inp && out);
    if (!inp || !out)
        goto done;

    static const char sep[] = "\n__ggml_vocab_test__\n";
    size_t n_strings = 0, n_lines = 0, n_bad = 0;
    char *s = inp, *line = out;
    char *hit;
    while ((hit = strstr(s, sep))) {
        *hit = '\0';
        size_t slen = (size_t)(hit - s);
        char *eol = strchr(line, '\n');
        CHECK_MSG(eol != NULL, "%s: fewer expected lines than strings", vocab);
        if (!eol)
            break;
        *eol = '\0';
        n_lines++;

        int32_t want[2048];
        size_t n_want = 0;
        for (char *p = line, *q; n_want < 2048; p = q) {
            long v = strtol(p, &q, 10);
            if (q == p)
                break;
            want[n_want++] = (int32_t)v;
        }
        int32_t *ids = NULL;
        size_t n = 0;
        CHECK_OK(tok_encode(t, s, slen, false, false, &ids, &n));
        bool same = n == n_want && (n == 0 || !memcmp(ids, want, n * sizeof *ids));
        if (!same) {
            n_bad++;
            check_fail_(__FILE__, __LINE__, "%s string %zu (\"%.40s\"): %zu ids, expected %zu",
                        vocab, n_strings, s, n, n_want);
        }
        /* Every vector string also comes back from its ids. */
        CHECK_MSG(round_trips(t, s, slen, false), "%s string %zu does not round-trip", vocab,
                  n_strings);
        free(ids);
        n_strings++;
        s = hit + sizeof sep - 1;
        line = eol + 1;
    }
    CHECK_INT(*s, ==, '\0');    /* nothing after the last separator */
    CHECK_INT(*line, ==, '\0'); /* and no expected line left over */
    CHECK_INT(n_strings, ==, n_lines);
    CHECK_INT(n_strings, ==, 46);
    CHECK_INT(n_bad, ==, 0);
done:
    free(inp);
    free(out);
    tok_destroy(&t);
    gguf_close(&g);
}

static void test_spm_vectors(void)
{
    run_vectors("ggml-vocab-llama-spm.gguf");
}

static void test_bpe_vectors(void)
{
    run_vectors("ggml-vocab-gpt-2.gguf");
}

/* ---- round trips ---- */

static const char *const corpus_files[] = {
    "dasher_english_GB.txt",
    "emma.txt",
    "jargon.txt",
    "kjv.txt",
    "mansfieldpark.txt",
    "mobydick.txt",
    "persuasion.txt",
    "prideprejudice.txt",
    "sensesensibility.txt",
    "sherlock_holmes_pg1661.txt",
    "tom_sawyer.txt",
};

/* The first 256 KiB of every corpus file round-trips (whole lines, so slices start at a
 * line and never split a UTF-8 character). */
static void corpus_round_trip(const char *vocab)
{
    gguf_t *g;
    tok_t *t = open_vocab(vocab, &g);
    if (!t)
        return;
    for (size_t i = 0; i < sizeof corpus_files / sizeof corpus_files[0]; i++) {
        char rel[96];
        snprintf(rel, sizeof rel, "corpus/%s", corpus_files[i]);
        const char *path = check_shared_or_skip(rel);
        if (!path)
            continue;
        size_t len;
        char *text = check_slurp(path, &len);
        CHECK(text != NULL);
        if (!text)
            continue;
        size_t cut = len < (256u << 10) ? len : (256u << 10);
        while (cut < len && cut > 0 && text[cut - 1] != '\n')
            cut--;
        CHECK_MSG(round_trips(t, text, cut, false), "%s: %s does not round-trip", vocab, rel);
        /* A slice that starts with spaces keeps them. */
        char *sp = malloc(cut + 3);
        memcpy(sp, "   ", 3);
        memcpy(sp + 3, text, cut);
        CHECK_MSG(round_trips(t, sp, cut + 3, false), "%s: spaces + %s", vocab, rel);
        free(sp);
        free(text);
    }
    tok_destroy(&t);
    gguf_close(&g);
}

/* Llama's vocabulary lets SentencePiece merge word by word; merging the whole text at
 * once (what a vocabulary with a ▁ inside a piece needs) gives the same tokens. */
static void test_spm_words_equal_whole_text(void)
{
    gguf_t *g;
    tok_t *t = open_vocab("vocab/ggml-vocab-llama-spm.gguf", &g);
    if (!t)
        return;
    const char *path = check_shared_or_skip("corpus/jargon.txt");
    size_t len = 0;
    char *text = path ? check_slurp(path, &len) : NULL;
    CHECK(!path || text != NULL);
    size_t cut = len < (64u << 10) ? len : (64u << 10);
    while (cut > 0 && text[cut - 1] != '\n')
        cut--;
    static const char extra[] = "  two  spaces,▁marks▁▁here \xe2\x96 and\ttabs   ";
    for (int k = 0; k < 2 && text; k++) {
        const char *s = k ? extra : text;
        size_t n = k ? sizeof extra - 1 : cut;
        int32_t *a = NULL, *b = NULL;
        size_t na = 0, nb = 0;
        CHECK(t->spm_chunks);
        CHECK_OK(tok_encode(t, s, n, false, false, &a, &na));
        t->spm_chunks = false;
        CHECK_OK(tok_encode(t, s, n, false, false, &b, &nb));
        t->spm_chunks = true;
        CHECK(na == nb && na > 0 && !memcmp(a, b, na * sizeof *a));
        free(a);
        free(b);
    }
    free(text);
    tok_destroy(&t);
    gguf_close(&g);
}

static void test_spm_corpus_round_trip(void)
{
    corpus_round_trip("vocab/ggml-vocab-llama-spm.gguf");
}

static void test_bpe_corpus_round_trip(void)
{
    corpus_round_trip("vocab/ggml-vocab-gpt-2.gguf");
}

/* Texts that are hard to get back: spaces at either end, invalid UTF-8, emoji, CJK,
 * control characters, a 100000-letter word. */
static void edge_round_trips(const char *vocab, bool spm)
{
    gguf_t *g;
    tok_t *t = open_vocab(vocab, &g);
    if (!t)
        return;
    static const struct {
        const char *s;
        size_t len;
    } cases[] = {
#define C_(lit) {lit, sizeof lit - 1}
        C_(""),
        C_(" "),
        C_("    "),
        C_(" x "),
        C_("\t\n \r\n"),
        C_("\xff\xfe\x80 ok \xc3"),           /* stray bytes, a truncated sequence at the end */
        C_("\xe2\x96 \xed\xa0\x80 \xc0\xaf"), /* truncated, a surrogate, an overlong slash */
        C_("🦙🚀😶‍🌫️ ✅ family: 👨‍👩‍👧"),
        C_("我想在apple工作 日本語のテキスト 한국어"),
        C_("\x01\x02\x1b[0m\x7f bell\a"),
        C_("nul\0inside"),
        C_("<s> </s> <unk> <|endoftext|> ▁ literal markers"),
        C_("'s 'S 'tis 're 'VE y'all 123456789 3.14"),
#undef C_
    };
    /* SentencePiece reads a literal ▁ as a space marker, so that text comes back with a
     * space instead: the one case it cannot return. */
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        if (!spm || !strstr(cases[i].s, "▁"))
            CHECK_MSG(round_trips(t, cases[i].s, cases[i].len, false),
                      "%s: case %zu does not round-trip", vocab, i);

    size_t n = 100000;
    char *word = malloc(n);
    for (size_t i = 0; i < n; i++)
        word[i] = "abcdefghij"[(i * 7) % 10];
    CHECK_MSG(round_trips(t, word, n, false), "%s: a long word", vocab);
    memset(word, 'a', n);
    CHECK_MSG(round_trips(t, word, n, false), "%s: a long run of one letter", vocab);
    free(word);
    tok_destroy(&t);
    gguf_close(&g);
}

static void test_spm_edge_round_trips(void)
{
    edge_round_trips("vocab/ggml-vocab-llama-spm.gguf", true);
}

static void test_bpe_edge_round_trips(void)
{
    edge_round_trips("vocab/ggml-vocab-gpt-2.gguf", false);
}

/* ---- specific behaviour of each vocabulary ---- */

static void test_spm_details(void)
{
    gguf_t *g;
    tok_t *t = open_vocab("vocab/ggml-vocab-llama-spm.gguf", &g);
    if (!t)
        return;
    CHECK_INT(tok_kind(t), ==, TOK_SPM);
    CHECK_INT(tok_n_vocab(t), ==, 32000);
    CHECK_INT(tok_bos(t), ==, 1);
    CHECK_INT(tok_eos(t), ==, 2);
    CHECK(tok_add_bos(t));
    CHECK(tok_is_control(t, 1));
    CHECK(!tok_is_control(t, 15043));
    CHECK_INT(tok_find(t, "▁Hello", strlen("▁Hello")), ==, 15043);
    CHECK_INT(tok_find(t, "no such piece", 13), ==, -1);
    CHECK_STR(tok_text(t, 15043), "▁Hello");
    CHECK_STR(tok_text(t, 13), "<0x0A>");
    CHECK(tok_text(t, -1) == NULL);
    CHECK(tok_text(t, 32000) == NULL);

    /* Invalid UTF-8 falls back to byte tokens: <0xXX> is id 3 + XX in this vocabulary. */
    const int32_t bytes[] = {29871, 3 + 0xFF, 3 + 0x80};
    CHECK(encodes_to(t, "\xff\x80", bytes, 3));

    /* BOS, and special texts only with parse_special (each followed by a ▁ prefix). */
    int32_t *ids;
    size_t n;
    CHECK_OK(tok_encode(t, "Hello", 5, true, false, &ids, &n));
    CHECK_INT(n, ==, 2);
    CHECK_INT(ids[0], ==, 1);
    CHECK_INT(ids[1], ==, 15043);
    free(ids);
    CHECK_OK(tok_encode(t, "<s>Hello</s>", 12, false, true, &ids, &n));
    CHECK_INT(n, ==, 3);
    if (n == 3) {
        CHECK_INT(ids[0], ==, 1);
        CHECK_INT(ids[1], ==, 15043);
        CHECK_INT(ids[2], ==, 2);
    }
    char *text;
    size_t len;
    CHECK_OK(tok_decode(t, ids, n, &text, &len));
    CHECK_STR(text, "Hello");
    free(text);
    free(ids);
    CHECK_OK(tok_encode(t, "<s>Hello", 8, false, false, &ids, &n));
    for (size_t i = 0; i < n; i++)
        CHECK(ids[i] != 1);
    free(ids);

    /* Pieces: the first one loses the added space; controls only when asked. */
    char buf[32];
    size_t pl = tok_piece(t, 15043, false, false, buf, sizeof buf);
    CHECK(pl == 6 && !memcmp(buf, " Hello", 6));
    pl = tok_piece(t, 15043, true, false, buf, sizeof buf);
    CHECK(pl == 5 && !memcmp(buf, "Hello", 5));
    CHECK_INT(tok_piece(t, 13, true, false, buf, sizeof buf), ==, 1);
    CHECK_INT(buf[0], ==, '\n');
    CHECK_INT(tok_piece(t, 1, false, false, buf, sizeof buf), ==, 0);
    pl = tok_piece(t, 1, false, true, buf, sizeof buf);
    CHECK(pl == 3 && !memcmp(buf, "<s>", 3));
    CHECK_INT(tok_piece(t, 15043, false, false, buf, 2), ==, 6); /* full length, 2 written */
    CHECK_INT(tok_piece(t, 15043, false, false, NULL, 0), ==, 6);
    CHECK_INT(tok_piece(t, 99999, false, false, buf, sizeof buf), ==, 0);

    /* " Hello" is ▁ + ▁Hello: decoding drops only the one space that encoding added. */
    const int32_t sp_hello[] = {1, 29871, 15043};
    CHECK_OK(tok_decode(t, sp_hello, 3, &text, &len));
    CHECK_STR(text, " Hello");
    free(text);
    const int32_t bad[] = {15043, 32000};
    CHECK_INT(tok_decode(t, bad, 2, &text, &len), ==, ERR_RANGE);
    CHECK_OK(tok_decode(t, NULL, 0, &text, &len));
    CHECK_INT(len, ==, 0);
    free(text);
    tok_destroy(&t);
    gguf_close(&g);
}

static void test_bpe_details(void)
{
    gguf_t *g;
    tok_t *t = open_vocab("vocab/ggml-vocab-gpt-2.gguf", &g);
    if (!t)
        return;
    CHECK_INT(tok_kind(t), ==, TOK_BPE);
    CHECK_INT(tok_n_vocab(t), ==, 50257);
    CHECK_INT(tok_bos(t), ==, 50256);
    CHECK(!tok_add_bos(t));
    CHECK_INT(tok_find(t, "Ġworld", strlen("Ġworld")), ==, 995);

    const int32_t plain[] = {64, 27, 91, 437, 1659, 5239, 91, 29, 65};
    CHECK(encodes_to(t, "a<|endoftext|>b", plain, 9));
    int32_t *ids;
    size_t n;
    CHECK_OK(tok_encode(t, "a<|endoftext|>b<|endoftext|>", 28, false, true, &ids, &n));
    CHECK_INT(n, ==, 4);
    if (n == 4) {
        CHECK_INT(ids[0], ==, 64);
        CHECK_INT(ids[1], ==, 50256);
        CHECK_INT(ids[2], ==, 65);
        CHECK_INT(ids[3], ==, 50256);
    }
    free(ids);

    /* Pieces map GPT-2 byte characters back: Ġ is a space, Ċ a newline; no prefix rule. */
    char buf[32];
    size_t pl = tok_piece(t, 995, true, false, buf, sizeof buf);
    CHECK(pl == 6 && !memcmp(buf, " world", 6));
    CHECK_INT(tok_piece(t, 198, false, false, buf, sizeof buf), ==, 1);
    CHECK_INT(buf[0], ==, '\n');
    CHECK_INT(tok_piece(t, 50256, false, false, buf, sizeof buf), ==, 0);
    pl = tok_piece(t, 50256, false, true, buf, sizeof buf);
    CHECK(pl == 13 && !memcmp(buf, "<|endoftext|>", 13));
    tok_destroy(&t);
    gguf_close(&g);
}

/* ---- the pre-tokenizers, against splits worked out from the regexes ---- */

/* Splits s and compares with the expected words, given as one string with '|' between. */
static bool splits_to(tok_pre_t pre, const char *s, size_t len, const char *want)
{
    size_t *ends, n;
    if (tok_pretok_split(pre, s, len, &ends, &n))
        return false;
    char got[512];
    size_t g = 0, start = 0;
    for (size_t i = 0; i < n && g + (ends[i] - start) + 2 < sizeof got; i++) {
        if (i)
            got[g++] = '|';
        memcpy(got + g, s + start, ends[i] - start);
        g += ends[i] - start;
        start = ends[i];
    }
    got[g] = '\0';
    free(ends);
    bool ok = !strcmp(got, want);
    if (!ok)
        fprintf(stderr, "# split of \"%s\": \"%s\", expected \"%s\"\n", s, got, want);
    return ok;
}

#define SPLITS(pre, s, want) CHECK(splits_to(pre, s, sizeof s - 1, want))

static void test_gpt2_split(void)
{
    SPLITS(TOK_PRE_GPT2, "", "");
    SPLITS(TOK_PRE_GPT2, "Hello world", "Hello| world");
    SPLITS(TOK_PRE_GPT2, "I'm he'll they're 'S", "I|'m| he|'ll| they|'re| '|S");
    SPLITS(TOK_PRE_GPT2, "abc123 456!!", "abc|123| 456|!!");
    SPLITS(TOK_PRE_GPT2, "a   b", "a|  | b");
    SPLITS(TOK_PRE_GPT2, "a  \nb", "a|  |\n|b");
    SPLITS(TOK_PRE_GPT2, "end   ", "end|   ");
    SPLITS(TOK_PRE_GPT2, " ?!x", " ?!|x");
    SPLITS(TOK_PRE_GPT2, "\xff\xfe\x61\x62", "\xff\xfe|ab"); /* stray bytes, then "ab" */
    SPLITS(TOK_PRE_GPT2, "日本語 テスト", "日本語| テスト");
    /* No-break spaces are \s but not the optional ' ' before a word. */
    SPLITS(TOK_PRE_GPT2, "x\u00a0\u00a0y", "x|\u00a0|\u00a0|y");
}

static void test_llama3_split(void)
{
    SPLITS(TOK_PRE_LLAMA3, "Hello world", "Hello| world");
    SPLITS(TOK_PRE_LLAMA3, "I'M YOU'LL 'Tis", "I|'M| YOU|'LL| '|Tis");
    SPLITS(TOK_PRE_LLAMA3, "1234567 x12", "123|456|7| x|12");
    SPLITS(TOK_PRE_LLAMA3, "(hello) ...\n\nnext", "(hello|)| ...\n\n|next");
    SPLITS(TOK_PRE_LLAMA3, "a \n\n  b", "a| \n\n| | b");
    SPLITS(TOK_PRE_LLAMA3, "\tx", "\tx");
    SPLITS(TOK_PRE_LLAMA3, "x  \t y", "x|  \t| y");
    SPLITS(TOK_PRE_LLAMA3, "end  ", "end|  ");
    SPLITS(TOK_PRE_LLAMA3, "\r\n\r\nx", "\r\n\r\n|x");
    SPLITS(TOK_PRE_LLAMA3, "$3", "$|3");
}

/* Qwen2's split is Llama 3's with one digit a word. */
static void test_qwen2_split(void)
{
    SPLITS(TOK_PRE_QWEN2, "Hello world", "Hello| world");
    SPLITS(TOK_PRE_QWEN2, "1234 x12", "1|2|3|4| x|1|2");
    SPLITS(TOK_PRE_QWEN2, "I'M YOU'LL 'Tis", "I|'M| YOU|'LL| '|Tis");
    SPLITS(TOK_PRE_QWEN2, "a \n\n  b", "a| \n\n| | b");
    SPLITS(TOK_PRE_QWEN2, "\u0663\u0664 v2", "\u0663|\u0664| v|2"); /* Arabic-Indic digits */
}

/* ---- crafted vocabularies ---- */

/* What a crafted vocabulary file holds; NULL / 0 leaves a key out. */
typedef struct vocab_spec {
    const char *model, *pre;
    const char *const *tokens;
    uint32_t n_tokens;
    const int32_t *types;
    uint32_t n_types;
    const char *const *merges;
    uint32_t n_merges;
    const float *scores;  /* n_tokens of them */
    int add_space_prefix; /* 0 or 1; -1: absent */
    int64_t bos;          /* < -1: absent */
} vocab_spec_t;

/* Writes the spec into a GGUF buffer and opens a tokenizer on it: returns tok_new's code. */
static int craft(const vocab_spec_t *v, uint8_t **buf, gguf_t **g, tok_t **t, err_info_t *e)
{
    gguf_writer_t *w = NULL;
    size_t len;
    *g = NULL;
    *t = NULL;
    *buf = NULL;
    err_clear(e);
    if (gguf_writer_new(&w))
        return ERR_NOMEM;
    gguf_writer_add_str(w, "general.architecture", "llama");
    if (v->model)
        gguf_writer_add_str(w, "tokenizer.ggml.model", v->model);
    if (v->pre)
        gguf_writer_add_str(w, "tokenizer.ggml.pre", v->pre);
    if (v->tokens)
        gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", v->tokens, v->n_tokens);
    if (v->types)
        gguf_writer_add_arr(w, "tokenizer.ggml.token_type", GGUF_VT_INT32, v->types, v->n_types);
    if (v->merges)
        gguf_writer_add_arr_str(w, "tokenizer.ggml.merges", v->merges, v->n_merges);
    if (v->scores)
        gguf_writer_add_arr(w, "tokenizer.ggml.scores", GGUF_VT_FLOAT32, v->scores, v->n_tokens);
    if (v->add_space_prefix >= 0)
        gguf_writer_add_bool(w, "tokenizer.ggml.add_space_prefix", v->add_space_prefix);
    if (v->bos >= -1)
        gguf_writer_add_i64(w, "tokenizer.ggml.bos_token_id", v->bos);
    int rc = gguf_writer_write_mem(w, buf, &len, e);
    gguf_writer_destroy(&w);
    if (rc == 0)
        rc = gguf_open_mem(*buf, len, g, e);
    if (rc)
        return -1000 + rc; /* a writer or reader failure, not the tokenizer's */
    return tok_new(*g, t, e);
}

static void uncraft(uint8_t **buf, gguf_t **g, tok_t **t)
{
    tok_destroy(t);
    gguf_close(g);
    free(*buf);
    *buf = NULL;
}

#define CHECK_CRAFT_FAILS(spec, code, piece)                                                       \
    do {                                                                                           \
        uint8_t *b_;                                                                               \
        gguf_t *g_;                                                                                \
        tok_t *t_;                                                                                 \
        err_info_t e_;                                                                             \
        CHECK_INT(craft(&(spec), &b_, &g_, &t_, &e_), ==, code);                                   \
        CHECK(t_ == NULL);                                                                         \
        CHECK_MSG(strstr(e_.msg, piece) != NULL, "message \"%s\" lacks \"%s\"", e_.msg, piece);    \
        uncraft(&b_, &g_, &t_);                                                                    \
    } while (0)

/* A byte-level vocabulary: the 256 GPT-2 byte characters in byte order (so byte b is
 * token b), then "he" 256, "ll" 257, "hell" 258, "hello" 259, "Ġhello" 260, "world" 261
 * and the control token "<|eot|>" 262. */
enum { BPE_N = 263 };

static const char *const *bpe_tokens(void)
{
    static char bytes[256][4];
    static const char *toks[BPE_N];
    for (int b = 0; b < 256; b++) {
        size_t l = 0;
        uint32_t cp = tok_gpt2_byte_cpt((uint8_t)b);
        if (cp < 0x80) {
            bytes[b][l++] = (char)cp;
        } else {
            bytes[b][l++] = (char)(0xC0 | (cp >> 6));
            bytes[b][l++] = (char)(0x80 | (cp & 0x3F));
        }
        bytes[b][l] = '\0';
        toks[b] = bytes[b];
    }
    static const char *const words[] = {"he", "ll", "hell", "hello", "Ġhello", "world", "<|eot|>"};
    for (size_t i = 0; i < 7; i++)
        toks[256 + i] = words[i];
    return toks;
}

static void bpe_types(int32_t *types)
{
    for (uint32_t i = 0; i < BPE_N; i++)
        types[i] = 1;
    types[262] = 3;
}

/* No merge makes "world": only Llama 3's rule (a word that is a token is taken whole)
 * finds it. */
static const char *const bpe_merges[] = {"h e", "l l", "he ll", "hell o", "Ġ hello"};

static void test_crafted_llama3(void)
{
    int32_t types[BPE_N];
    bpe_types(types);
    vocab_spec_t v = {.model = "gpt2",
                      .pre = "llama-bpe",
                      .tokens = bpe_tokens(),
                      .n_tokens = BPE_N,
                      .types = types,
                      .n_types = BPE_N,
                      .merges = bpe_merges,
                      .n_merges = 5,
                      .add_space_prefix = -1,
                      .bos = -2};
    uint8_t *buf;
    gguf_t *g;
    tok_t *t;
    err_info_t e;
    CHECK_INT(craft(&v, &buf, &g, &t, &e), ==, 0);
    if (t) {
        const int32_t hhw[] = {259, 260, ' ', 'w', 'o', 'r', 'l', 'd', 261};
        CHECK(encodes_to(t, "hello hello world", hhw, 8)); /* " world" is no token */
        CHECK(encodes_to(t, "world", hhw + 8, 1));
        const int32_t digits[] = {'1', '2', '3', '4'};
        CHECK(encodes_to(t, "1234", digits, 4));
        int32_t *ids;
        size_t k;
        CHECK_OK(tok_encode(t, "hello hello<|eot|>", 18, false, true, &ids, &k));
        CHECK_INT(k, ==, 3);
        if (k == 3) {
            CHECK_INT(ids[0], ==, 259);
            CHECK_INT(ids[1], ==, 260);
            CHECK_INT(ids[2], ==, 262);
        }
        free(ids);
        CHECK_INT(tok_bos(t), ==, -1);
        CHECK_INT(tok_encode(t, "x", 1, true, false, &ids, &k), ==, ERR_NOTFOUND);
    }
    uncraft(&buf, &g, &t);

    /* Under the GPT-2 rules "world" is spelled by its bytes, and "hello" is reached by
     * ranks: h e l l o -> he l l o -> he ll o -> hell o -> hello. */
    v.pre = "gpt-2";
    CHECK_INT(craft(&v, &buf, &g, &t, &e), ==, 0);
    if (t) {
        const int32_t w[] = {'w', 'o', 'r', 'l', 'd'};
        CHECK(encodes_to(t, "world", w, 5));
        const int32_t hello[] = {259};
        CHECK(encodes_to(t, "hello", hello, 1));
        const int32_t hel[] = {256, 'l'};
        CHECK(encodes_to(t, "hel", hel, 2));
    }
    uncraft(&buf, &g, &t);
}

static void test_crafted_rejects(void)
{
    int32_t types[BPE_N];
    bpe_types(types);
    vocab_spec_t ok = {.model = "gpt2",
                       .tokens = bpe_tokens(),
                       .n_tokens = BPE_N,
                       .types = types,
                       .n_types = BPE_N,
                       .merges = bpe_merges,
                       .n_merges = 5,
                       .add_space_prefix = -1,
                       .bos = -2};
    vocab_spec_t v;

    v = ok, v.model = "bert";
    CHECK_CRAFT_FAILS(v, ERR_UNSUPPORTED, "bert");
    v = ok, v.pre = "deepseek-llm";
    CHECK_CRAFT_FAILS(v, ERR_UNSUPPORTED, "deepseek-llm");
    v = ok, v.model = NULL;
    CHECK_CRAFT_FAILS(v, ERR_NOTFOUND, "tokenizer.ggml.model");
    v = ok, v.tokens = NULL;
    CHECK_CRAFT_FAILS(v, ERR_NOTFOUND, "tokenizer.ggml.tokens");
    v = ok, v.merges = NULL;
    CHECK_CRAFT_FAILS(v, ERR_NOTFOUND, "tokenizer.ggml.merges");
    v = ok, v.n_types = 5;
    CHECK_CRAFT_FAILS(v, ERR_FORMAT, "token_type");
    v = ok, v.bos = BPE_N;
    CHECK_CRAFT_FAILS(v, ERR_FORMAT, "bos_token_id");
    static const char *const bad_merge[] = {"hello"};
    v = ok, v.merges = bad_merge, v.n_merges = 1;
    CHECK_CRAFT_FAILS(v, ERR_FORMAT, "merges[0]");
    int32_t bad_types[BPE_N];
    memcpy(bad_types, types, sizeof bad_types);
    bad_types[7] = 9;
    v = ok, v.types = bad_types;
    CHECK_CRAFT_FAILS(v, ERR_FORMAT, "token_type[7]");

    /* The default and absent pre names are GPT-2; -1 means no BOS. */
    uint8_t *buf;
    gguf_t *g;
    tok_t *t;
    err_info_t e;
    v = ok, v.pre = "default", v.bos = -1;
    CHECK_INT(craft(&v, &buf, &g, &t, &e), ==, 0);
    CHECK(t && tok_bos(t) == -1);
    uncraft(&buf, &g, &t);
}

/* A SentencePiece vocabulary without byte tokens: scores, ties and the space prefix. */
static void test_crafted_spm(void)
{
    static const char *const toks[] = {"<unk>", "<s>", "</s>", "a",  "b",
                                       "ab",    "ba",  "▁",    "▁a", "aba"};
    static const int32_t types[] = {2, 3, 3, 1, 1, 1, 1, 1, 1, 1};
    static const float scores[] = {0, 0, 0, -10, -10, -1, -2, -5, -3, -0.5f};
    vocab_spec_t v = {.model = "llama",
                      .tokens = toks,
                      .n_tokens = 10,
                      .types = types,
                      .n_types = 10,
                      .add_space_prefix = -1,
                      .bos = -2};
    uint8_t *buf;
    gguf_t *g;
    tok_t *t;
    err_info_t e;
    /* No scores: every pair ties, so the leftmost merges first. ▁ a b a -> ▁a b a ->
     * ▁a ba (the pair "ab" lost its "a"). */
    CHECK_INT(craft(&v, &buf, &g, &t, &e), ==, 0);
    if (t) {
        CHECK(encodes_to(t, "aba", (const int32_t[]){8, 6}, 2));
        /* 'c' has no piece and no byte token: it becomes <unk>, which decodes to nothing. */
        CHECK(encodes_to(t, "ac", (const int32_t[]){8, 0}, 2));
        CHECK_INT(tok_bos(t), ==, 1);
        CHECK_INT(tok_eos(t), ==, 2);
    }
    uncraft(&buf, &g, &t);

    /* Scores: ab (-1) first, then aba (-0.5); ▁a (-3) and ba (-2) are stale by then. */
    v.scores = scores;
    CHECK_INT(craft(&v, &buf, &g, &t, &e), ==, 0);
    if (t)
        CHECK(encodes_to(t, "aba", (const int32_t[]){7, 9}, 2));
    uncraft(&buf, &g, &t);

    /* Without the space prefix there is no ▁, and decoding drops no space. */
    v.add_space_prefix = 0;
    CHECK_INT(craft(&v, &buf, &g, &t, &e), ==, 0);
    if (t) {
        CHECK(encodes_to(t, "aba", (const int32_t[]){9}, 1));
        CHECK(encodes_to(t, " a", (const int32_t[]){8}, 1));
        char *text;
        size_t len;
        CHECK_OK(tok_decode(t, (const int32_t[]){8}, 1, &text, &len));
        CHECK_STR(text, " a");
        free(text);
    }
    uncraft(&buf, &g, &t);
}

int main(void)
{
    RUN(test_spm_vectors);
    RUN(test_bpe_vectors);
    RUN(test_spm_details);
    RUN(test_bpe_details);
    RUN(test_gpt2_split);
    RUN(test_llama3_split);
    RUN(test_qwen2_split);
    RUN(test_crafted_llama3);
    RUN(test_crafted_rejects);
    RUN(test_crafted_spm);
    RUN(test_spm_edge_round_trips);
    RUN(test_bpe_edge_round_trips);
    RUN(test_spm_words_equal_whole_text);
    RUN(test_spm_corpus_round_trip);
    RUN(test_bpe_corpus_round_trip);
    return check_done();
}
