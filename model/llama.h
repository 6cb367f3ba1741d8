/*
 * model/llama.h — a llama-architecture model and its batched forward pass.
 *
 * An mdl_t owns the mapped GGUF file, its hyperparameters, its tokenizer (when
 * the file carries one) and scratch buffers. Weights are read-only views into
 * the mapping (1-D vectors stored in another type than f32 are converted once,
 * at load). The forward pass is the one llama.cpp runs for LLM_ARCH_LLAMA:
 * token embedding; per layer RMSNorm -> Q/K/V -> RoPE on adjacent pairs ->
 * grouped-query attention over the caller's KV view -> output projection ->
 * residual -> RMSNorm -> SwiGLU -> residual; final RMSNorm and the output
 * matrix (or the tied token embedding).
 *
 * One entry point runs a batch of (sequence, token, position) items: a prefill
 * of many tokens of one sequence and a decode step of one token for each of
 * many sequences are the same call. K/V rows are read and written through
 * model/kv_view.h; the model never owns a KV cache.
 *
 * Threads: one thread at a time may call into an mdl_t (the forward pass uses
 * OpenMP inside, with mdl_set_threads threads). Errors: 0 or a negative ERR_*
 * code; functions that read external input (files, batches) fill an err_info_t.
 */
#ifndef GISTD_MODEL_LLAMA_H
#define GISTD_MODEL_LLAMA_H

#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"
#include "model/gguf.h"
#include "model/hparams.h"
#include "model/kv_view.h"
#include "model/rope.h"
#include "model/tokenizer.h"

typedef struct mdl mdl_t;

/* A batch of n items. Items of one sequence must come in position order; the
 * attention of an item sees its sequence's stored rows and the new rows of its
 * sequence's items at or before it in the batch. */
typedef struct mdl_batch {
    uint32_t n;
    const int32_t *token; /* [n] token ids, < n_vocab */
    const int32_t *pos;   /* [n] original positions (RoPE), >= 0 */
    const int32_t *seq;   /* [n] sequence indices, 0 <= seq < MDL_MAX_SEQ; NULL: all 0 */
    const uint8_t *want;  /* [n] nonzero where the item wants logits; NULL: only the last item */
} mdl_batch_t;

/* Largest sequence index + 1 a batch may use (bounds the per-sequence tables). */
#define MDL_MAX_SEQ 65536

/* Opens path, reads and checks the hyperparameters and every tensor's shape
 * and type, and builds the tokenizer when the file has tokenizer.ggml.model.
 * On error *out is untouched and e says which key, tensor or shape is wrong. */
int mdl_new(const char *path, mdl_t **out, err_info_t *e);
void mdl_destroy(mdl_t **m);

const mdl_hparams_t *mdl_hparams(const mdl_t *m);
const gguf_t *mdl_gguf(const mdl_t *m);
/* The rotation the forward pass applies to queries and keys (model/rope.h): everything that
 * rotates stored keys again (pooled rows, rows moved in model-position space) uses it. */
const mdl_rope_t *mdl_rope(const mdl_t *m);
/* The tokenizer, or NULL when the file carries none. */
const tok_t *mdl_tok(const mdl_t *m);
/* Whether the file has retention gates (blk.N.retention_*): the forward then writes
 * log-beta for every new row into the views that ask for it. */
bool mdl_has_retention(const mdl_t *m);

/* Threads the forward pass uses (<= 0: all processors). Default: all processors. */
void mdl_set_threads(mdl_t *m, int n_threads);
int mdl_threads(const mdl_t *m);

/* Queries of one sequence in a batch (a prefill chunk) that read each key and value row
 * together, at most: 64, or GISTD_ATTN_Q_ROWS when the model was opened; 1 gives each query
 * a pass of its own, as a decode step has. A setting for benchmarks and tests: the result
 * is the same within f32 rounding. */
void mdl_set_attn_q_rows(mdl_t *m, uint32_t q_rows);
uint32_t mdl_attn_q_rows(const mdl_t *m);

/* Runs batch b. io->view is called once per (sequence in b, layer, kv-head), in
 * layer order, before that layer's attention, with n_new = the number of items
 * of that sequence; the forward then writes their K (after RoPE) and V rows
 * into new_k/new_v in batch order, and log-beta into new_logbeta when the model
 * has gates and the view gives the slot. logits receives [n_want][n_vocab]
 * floats: one row per item that wants logits, in batch order (may be NULL when
 * no item wants any). ERR_RANGE for a bad token, position or sequence index;
 * a view's error code aborts the pass (rows already written are then undefined).
 * Allocates only when a batch or a view is larger than any before. */
int mdl_forward(mdl_t *m, const mdl_batch_t *b, const mdl_kv_io_t *io, float *logits,
                err_info_t *e);

#endif
