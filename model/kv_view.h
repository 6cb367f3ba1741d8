/*
 * model/kv_view.h — how the forward pass reads and writes K/V rows it does not own.
 *
 * The model never includes the KV store. For every (sequence, layer, kv-head)
 * in a batch, the caller fills an mdl_kv_view_t: the rows already stored (as
 * chunks, each contiguous and of one payload type) and a slot where the forward
 * pass writes the batch's new rows for that sequence. Keys are stored after
 * RoPE, at their original positions, so attending needs no positions.
 *
 * Attention for a batch item of sequence s sees: every stored row of s's view
 * (score + the row's bias), and the new rows of s's items that come at or
 * before it in batch order (causal within the batch, bias 0). A caller that
 * needs another mask (sentence-anchored gists) feeds one span per batch.
 */
#ifndef GISTD_MODEL_KV_VIEW_H
#define GISTD_MODEL_KV_VIEW_H

#include <stdint.h>

/* A run of stored rows with one layout. */
typedef struct mdl_kv_chunk {
    uint32_t n;         /* rows */
    uint32_t type;      /* payload type of k and v: GGML_TYPE_F32, _F16 or _Q8_0 */
    const void *k;      /* [n][head_dim] in `type`; row stride ggml_row_bytes(type, head_dim) */
    const void *v;      /* [n][head_dim] in `type` */
    const float *bias;  /* [n] additive score bias (log of the row's mass), or NULL for all 0 */
    float *attn_acc;    /* [n] or NULL: when set, the forward adds each row's attention
                           probability, summed over the query heads of this kv-head and
                           over the batch items that read it (H2O/TOVA scores) */
} mdl_kv_chunk_t;

/* Everything one (sequence, layer, kv-head) attends to, and where its new rows go. */
typedef struct mdl_kv_view {
    uint32_t n_chunks;
    const mdl_kv_chunk_t *chunks;
    float *new_k;        /* [n_new][head_dim] f32, written by the forward (after RoPE) */
    float *new_v;        /* [n_new][head_dim] f32, written by the forward */
    float *new_logbeta;  /* [n_new] or NULL: retention log-beta from the layer's gates, written
                            when the model has gates */
    float *new_attn_acc; /* [n_new] or NULL: like attn_acc, for the batch's new rows */
} mdl_kv_view_t;

/* The caller's side. view() is called once per (seq, layer, kv_head) of a batch,
 * before that layer's attention, with n_new = the number of batch items of seq.
 * It returns 0, or a negative ERR_* code that aborts the forward pass. */
typedef struct mdl_kv_io {
    void *ctx;
    int (*view)(void *ctx, int seq, int layer, int kv_head, uint32_t n_new, mdl_kv_view_t *out);
} mdl_kv_io_t;

#endif
