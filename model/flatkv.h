/*
 * model/flatkv.h — a simple flat KV cache behind the view interface of model/kv_view.h.
 *
 * For each of n_seq sequences it keeps up to n_ctx rows per (layer, kv-head), in
 * one payload type (F32, F16 or Q8_0), with optional per-row bias, retention
 * log-beta and attention accumulators. It never compresses or evicts: it is the
 * full cache that the offline tool, the tests and benchmarks use, and the
 * reference the hierarchical store (kvstore/) is compared with.
 *
 * Use: io = mdl_flatkv_io(kv); mdl_forward(m, batch, &io, ...); then
 * mdl_flatkv_commit(kv) makes the batch's new rows part of the cache (the view
 * reserves them; a failed forward is undone with mdl_flatkv_rollback).
 *
 * Owns all its memory. One thread at a time. Errors: ERR_INVAL for a bad
 * config, ERR_LIMIT when a sequence would pass n_ctx rows, ERR_NOMEM.
 */
#ifndef GISTD_MODEL_FLATKV_H
#define GISTD_MODEL_FLATKV_H

#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"
#include "model/kv_view.h"

typedef struct mdl_flatkv_cfg {
    uint32_t n_layer, n_head_kv, head_dim;
    uint32_t n_seq;      /* sequences 0 .. n_seq-1 */
    uint32_t n_ctx;      /* rows per (sequence, layer, kv-head) */
    uint32_t type;       /* payload: DT_F32, DT_F16 or DT_Q8_0 (head_dim a multiple of 32) */
    uint32_t chunk_rows; /* stored rows are shown as chunks of this many rows (0: one chunk) */
    bool bias;           /* keep a per-row bias (0 for new rows; see mdl_flatkv_bias) */
    bool logbeta;        /* ask the forward for retention log-beta of new rows */
    bool attn_acc;       /* ask the forward to accumulate attention per row */
} mdl_flatkv_cfg_t;

typedef struct mdl_flatkv mdl_flatkv_t;

int mdl_flatkv_new(const mdl_flatkv_cfg_t *cfg, mdl_flatkv_t **out, err_info_t *e);
void mdl_flatkv_destroy(mdl_flatkv_t **kv);

/* The view callback bound to kv, for mdl_forward. */
mdl_kv_io_t mdl_flatkv_io(mdl_flatkv_t *kv);

/* Appends the rows the last forward wrote (converted to the payload type). */
void mdl_flatkv_commit(mdl_flatkv_t *kv);
/* Forgets the rows the last forward reserved. */
void mdl_flatkv_rollback(mdl_flatkv_t *kv);

/* Empties one sequence (its accumulators and biases too). */
void mdl_flatkv_clear(mdl_flatkv_t *kv, uint32_t seq);

/* Rows stored for a sequence. */
uint32_t mdl_flatkv_len(const mdl_flatkv_t *kv, uint32_t seq);

/* Per-row arrays of one (sequence, layer, kv-head), [n_ctx] each, or NULL when the config did
 * not ask for them. Rows < mdl_flatkv_len are meaningful; the bias may be written. */
float *mdl_flatkv_bias(mdl_flatkv_t *kv, uint32_t seq, uint32_t layer, uint32_t kv_head);
const float *mdl_flatkv_logbeta(const mdl_flatkv_t *kv, uint32_t seq, uint32_t layer,
                                uint32_t kv_head);
const float *mdl_flatkv_attn_acc(const mdl_flatkv_t *kv, uint32_t seq, uint32_t layer,
                                 uint32_t kv_head);

/* Copies stored row r of (seq, layer, kv_head) as f32 (after conversion from the payload). */
int mdl_flatkv_row(const mdl_flatkv_t *kv, uint32_t seq, uint32_t layer, uint32_t kv_head,
                   uint32_t r, float *k, float *v);

#endif
