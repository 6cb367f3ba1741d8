/*
 * model/fuzz_gguf_vocab.c — libFuzzer target: a vocabulary-only GGUF file from arbitrary
 * bytes through gguf_open_mem and tok_new, so the fuzzer drives the tokenizer's loader
 * (token, score, type and merge arrays; special ids; model and pre-tokenizer names) and the
 * tokenizer it builds (see fuzz/fuzz.h for how targets are built and replayed).
 *
 * Properties checked for any input: tok_new refuses with a code and a message and leaves
 * *out NULL, or gives a tokenizer whose special ids are inside its vocabulary (or -1);
 * every id has a text that tok_find finds again (maybe under another id with the same
 * text); tok_piece measures what it writes; a few fixed texts (and the vocabulary's own
 * first texts) encode to ids inside the vocabulary that decode without error.
 */
#include <stdbool.h>
#include <string.h>

#include "fuzz/fuzz.h"
#include "model/gguf.h"
#include "model/tokenizer.h"

/* Tokens whose text and piece are checked one by one; the rest only by encode/decode. */
#define WALK_IDS 4096

static int encode_decode(const tok_t *t, const char *s, size_t len, bool special, char *why,
                         size_t cap)
{
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = tok_encode(t, s, len, tok_bos(t) >= 0, special, &ids, &n);
    if (rc == ERR_RANGE)
        return 0; /* a byte no token spells (no byte tokens, no <unk>): a stated refusal */
    if (rc)
        return fuzz_fail(why, cap, "tok_encode of %zu bytes failed with %d", len, rc);
    uint32_t nv = tok_n_vocab(t);
    int bad = 0;
    for (size_t i = 0; i < n && !bad; i++)
        if (ids[i] < 0 || (uint32_t)ids[i] >= nv)
            bad = fuzz_fail(why, cap, "tok_encode gave id %d (vocabulary %u)", ids[i], nv);
    char *text = NULL;
    size_t tlen = 0;
    if (!bad && tok_decode(t, ids, n, &text, &tlen) != 0)
        bad = fuzz_fail(why, cap, "tok_decode of encoded ids failed");
    if (!bad && strlen(text) > tlen)
        bad = fuzz_fail(why, cap, "decoded text longer than its length");
    free(text);
    free(ids);
    return bad;
}

static int check_tok(const tok_t *t, const bool *has_nul, char *why, size_t cap)
{
    uint32_t nv = tok_n_vocab(t);
    if (nv == 0)
        return fuzz_fail(why, cap, "a tokenizer with no tokens");
    int32_t specials[2] = {tok_bos(t), tok_eos(t)};
    for (int i = 0; i < 2; i++)
        if (specials[i] < -1 || specials[i] >= (int64_t)nv)
            return fuzz_fail(why, cap, "special id %d outside the vocabulary of %u", specials[i],
                             nv);
    if (tok_text(t, -1) != NULL || tok_text(t, (int32_t)nv) != NULL)
        return fuzz_fail(why, cap, "tok_text gave text for an id outside the vocabulary");
    for (uint32_t id = 0; id < nv && id < WALK_IDS; id++) {
        const char *s = tok_text(t, (int32_t)id);
        if (!s)
            return fuzz_fail(why, cap, "token %u has no text", id);
        /* a text with a NUL inside is kept whole but reads here only up to the NUL */
        int32_t f = tok_find(t, s, strlen(s));
        if ((f < 0 && !has_nul[id]) || (f >= 0 && strcmp(tok_text(t, f), s) != 0))
            return fuzz_fail(why, cap, "token %u's text is found as %d", id, f);
        char piece[32];
        for (int k = 0; k < 4; k++) {
            bool first = k & 1, show = k & 2;
            size_t want = tok_piece(t, (int32_t)id, first, show, NULL, 0);
            size_t got = tok_piece(t, (int32_t)id, first, show, piece, sizeof piece);
            if (want != got)
                return fuzz_fail(why, cap, "tok_piece(%u) measured %zu, wrote %zu", id, want, got);
        }
        (void)tok_is_control(t, (int32_t)id);
    }
    static const char *const texts[] = {
        "Hello world, the end.",
        "  two  spaces\n\nand a tab\t",
        "caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac",
        "\xff\xfe broken \xc3",
        "<s> </s> <unk> <|endoftext|>",
        "",
    };
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++)
        for (int special = 0; special < 2; special++) {
            int rc = encode_decode(t, texts[i], strlen(texts[i]), special, why, cap);
            if (rc)
                return rc;
        }
    /* the first few token texts glued together: text made of the vocabulary's own pieces */
    char glued[256];
    size_t gl = 0;
    for (uint32_t id = 0; id < nv && id < 16; id++) {
        const char *s = tok_text(t, (int32_t)id);
        size_t l = strlen(s);
        if (gl + l >= sizeof glued)
            break;
        memcpy(glued + gl, s, l);
        gl += l;
    }
    return encode_decode(t, glued, gl, true, why, cap);
}

/* Which of the first WALK_IDS token strings of the file hold a NUL byte. */
static void find_nuls(const gguf_t *g, bool *has_nul)
{
    gguf_arr_t a;
    gguf_str_t *strs = NULL;
    memset(has_nul, 0, WALK_IDS * sizeof *has_nul);
    if (gguf_get_arr(g, "tokenizer.ggml.tokens", &a, NULL) != 0 || gguf_arr_strs(&a, &strs) != 0)
        return;
    for (uint64_t i = 0; i < a.n && i < WALK_IDS; i++)
        has_nul[i] = strs[i].len && memchr(strs[i].ptr, 0, strs[i].len) != NULL;
    free(strs);
}

int fuzz_gguf_vocab_one(const uint8_t *data, size_t size, char *why, size_t cap)
{
    if (cap)
        why[0] = '\0';
    /* a copy that is freed before the tokenizer is used: it must keep nothing of the file */
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy)
        return 0;
    memcpy(copy, data, size);
    gguf_t *g = NULL;
    err_info_t e;
    if (gguf_open_mem(copy, size, &g, &e) != 0) {
        free(copy);
        return 0; /* the reader's refusals are fuzz_gguf's to check */
    }
    tok_t *t = NULL;
    err_clear(&e);
    int rc = tok_new(g, &t, &e);
    static bool has_nul[WALK_IDS];
    find_nuls(g, has_nul);
    gguf_close(&g);
    free(copy);
    int bad = 0;
    if (rc) {
        if (rc > 0 || e.code != rc || !e.msg[0] || t != NULL)
            bad = fuzz_fail(why, cap, "tok_new refused with code %d, message '%s'", rc, e.msg);
    } else {
        bad = check_tok(t, has_nul, why, cap);
    }
    tok_destroy(&t);
    return bad;
}

FUZZ_ENTRY(fuzz_gguf_vocab_one)
