/*
 * model/tokenizer.h — text <-> token ids, built from a GGUF file's tokenizer.ggml.* keys.
 *
 * Two models: SentencePiece-style `llama` (scores, byte fallback, ▁ space
 * marker, add_space_prefix) and GPT-2 byte-level BPE `gpt2` (merge ranks, the
 * GPT-2 pre-tokenizer split, or the Llama 3 one when tokenizer.ggml.pre asks).
 * A tok_t copies what it needs from the file and does not keep the gguf_t.
 * After tok_new it is read-only and may be used from any thread.
 */
#ifndef GISTD_MODEL_TOKENIZER_H
#define GISTD_MODEL_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "model/gguf.h"

typedef struct tok tok_t;

typedef enum tok_kind { TOK_SPM = 1, TOK_BPE = 2 } tok_kind_t;

/* Builds the tokenizer from g. ERR_NOTFOUND / ERR_FORMAT / ERR_UNSUPPORTED with
 * a message when the keys are missing, malformed or name an unknown model. */
int tok_new(const gguf_t *g, tok_t **out, err_info_t *e);
void tok_destroy(tok_t **t);

tok_kind_t tok_kind(const tok_t *t);
uint32_t tok_n_vocab(const tok_t *t);
int32_t tok_bos(const tok_t *t); /* -1 when the vocabulary has none */
int32_t tok_eos(const tok_t *t); /* -1 when the vocabulary has none */
bool tok_is_control(const tok_t *t, int32_t id);
/* The file's tokenizer.ggml.add_bos_token: whether prompts for this model start with BOS
 * (default true for SentencePiece, false for BPE). tok_encode only adds it when asked. */
bool tok_add_bos(const tok_t *t);

/* The token's text as stored in the vocabulary (with ▁ or GPT-2 byte symbols),
 * NUL-terminated; NULL for an id outside the vocabulary. */
const char *tok_text(const tok_t *t, int32_t id);

/* Id of the vocabulary entry whose stored text is exactly s, or -1. */
int32_t tok_find(const tok_t *t, const char *s, size_t len);

/* Tokenizes len bytes of text into a malloc'd array (*ids, *n_ids; caller frees).
 * add_bos prepends BOS. parse_special recognises control/special token texts
 * ("<s>", "<|endoftext|>", ...) in the text; otherwise they are plain text.
 * Any bytes are accepted (invalid UTF-8 falls back to byte tokens). Errors, with *ids
 * untouched: ERR_NOTFOUND when add_bos and the vocabulary has no BOS, ERR_RANGE when a
 * byte has no token to spell it (no byte token and no <unk>), ERR_NOMEM. */
int tok_encode(const tok_t *t, const char *text, size_t len, bool add_bos, bool parse_special,
               int32_t **ids, size_t *n_ids);

/* The bytes one token contributes to the text: byte tokens give their byte,
 * ▁ becomes a space, GPT-2 byte symbols are mapped back, control tokens (and unknown
 * and unused ones) give nothing unless show_special, which gives their stored text.
 * `first` is true for the first token after BOS (or of the text): SentencePiece then
 * drops the space prefix it added.
 * Writes at most cap bytes to buf (NULL with cap 0 only measures) and returns the
 * piece's full length; 0 for an id outside the vocabulary. */
size_t tok_piece(const tok_t *t, int32_t id, bool first, bool show_special, char *buf, size_t cap);

/* Detokenizes n ids into a malloc'd NUL-terminated string (caller frees); BOS/EOS
 * and other control tokens are skipped. Invalid ids give ERR_RANGE. */
int tok_decode(const tok_t *t, const int32_t *ids, size_t n, char **text, size_t *len);

#endif
