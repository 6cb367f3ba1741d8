/*
 * model/llama_impl.h — the insides of an mdl_t, shared by model/llama.c (loading,
 * scratch), model/forward.c (the layer loop) and model/attention.c (attention over KV
 * views). Not for other modules: they use model/llama.h. Same threading rules as an
 * mdl_t; inside mdl_forward, the functions below marked "team" are called by every
 * thread of the forward's OpenMP team (or by the caller alone when it runs unthreaded).
 */
#ifndef GISTD_MODEL_LLAMA_IMPL_H
#define GISTD_MODEL_LLAMA_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model/kernels.h"
#include "model/llama.h"
#include "model/rope.h"

/* A weight matrix: n_rows rows of n_cols elements of `type`, in the mapping, or packed for
 * the kernels in memory of the model's own (kern_pack_type: `type` is then the packed
 * type). */
typedef struct mdl_mat {
    uint32_t type;
    const void *data;
    int n_rows, n_cols;
} mdl_mat_t;

typedef struct mdl_layer {
    const float *attn_norm; /* [n_embd] */
    mdl_mat_t wq;           /* [n_head*head_dim][n_embd] */
    mdl_mat_t wk, wv;       /* [n_head_kv*head_dim][n_embd] */
    const float *bq;        /* [n_head*head_dim] Q bias (qwen2), else NULL */
    const float *bk, *bv;   /* [n_head_kv*head_dim] K and V biases (qwen2), else NULL */
    const float *q_norm;    /* [head_dim] RMS norm weights of each Q head (qwen3), else NULL */
    const float *k_norm;    /* [head_dim] the same for K heads */
    mdl_mat_t wo;           /* [n_embd][n_head*head_dim] */
    const float *ffn_norm;  /* [n_embd] */
    mdl_mat_t w_gate, w_up; /* [n_ff][n_embd] */
    mdl_mat_t w_down;       /* [n_embd][n_ff] */
    mdl_mat_t ret_in;       /* [n_hidden][n_embd]; data NULL without retention gates */
    const float *ret_in_b;  /* [n_hidden] */
    mdl_mat_t ret_out;      /* [n_head_kv][n_hidden] */
    const float *ret_out_b; /* [n_head_kv] */
} mdl_layer_t;

/* Products of up to this many items take activations that each thread of the forward's
 * team normalises and quantises for itself, which costs less than the barrier that sharing
 * the work out needs: a daemon's step of eight decoders, two threads, 4% faster than with
 * four (bench_batch, alternated). */
#define MDL_PRV_ROWS 8

/* Queries [j0, j0 + nq) of a slot's new rows: they read the rows together. */
typedef struct mdl_attn_qtile {
    uint32_t slot, j0, nq;
} mdl_attn_qtile_t;

/* One layer's attention work (mdl_attention_plan, made by thread 0 once the views are in).
 * A slot's items are cut into query tiles of up to q_rows (a decoding slot is one tile of
 * one); units are (tile, kv-head), or (slot, kv-head) when a view accumulates attention. A
 * unit's rows (stored, then its sequence's new rows up to the tile's last query) split into
 * parts of part_rows (tiles of one query) or tile_part_rows (more) that the team takes one
 * at a time, and the thread that finishes a unit's last part merges its partials. */
typedef struct mdl_attn_plan {
    bool acc;                    /* units are (slot, kv-head), without parts in `parts` */
    bool acc_parts;              /* accumulators with one query a slot: units and parts as
                                    without, each part keeping its rows' scores in `scores` */
    uint32_t n_units, n_parts;   /* this layer's */
    uint32_t n_tiles;            /* this layer's query tiles */
    uint32_t cap_units, cap_parts, cap_tiles;
    size_t cap_part_floats;
    uint32_t q_rows;             /* queries per tile at most */
    uint32_t part_rows;          /* rows per part of a one-query unit (the last may have fewer) */
    uint32_t tile_part_rows;     /* rows per part of a unit of more queries */
    mdl_attn_qtile_t *tiles;     /* [n_tiles] (acc: unused) */
    uint32_t *unit_first;        /* [n_units + 1] each unit's first part */
    uint32_t *unit_rows;         /* [n_units] rows each unit attends to (acc: unused) */
    size_t *unit_poff;           /* [n_units] where each unit's partials start in `parts` */
    size_t *unit_soff;           /* [n_units] where each unit's scores start in `scores`
                                    (acc_parts) */
    _Atomic uint32_t *unit_done; /* [n_units] parts finished */
    uint32_t *part_unit;         /* [n_parts] */
    float *parts;                /* per unit, [its parts][mdl_attn_part_floats(nq * g, hd)] */
    float *scores;               /* acc_parts: per unit, [g][unit_rows] */
    size_t cap_scores;
    size_t *view_c0;             /* [n_slots * n_head_kv] where each view's entries of
                                    chunk_row0 start */
    size_t *chunk_row0;          /* per view, [n_chunks + 1] the row each chunk starts at
                                    within the view, then the view's stored rows */
    size_t cap_views, cap_c0;
    size_t seg_cap;              /* segments per thread */
    int n_seg_thr;
    struct mdl_attn_seg *segs;   /* [n_seg_thr][seg_cap] a unit's rows as segments */
} mdl_attn_plan_t;

/* Scratch of the forward pass, grown as batches and views grow, never shrunk.
 * Per-item buffers hold `cap` items. */
typedef struct mdl_scratch {
    uint32_t cap;
    float *x;    /* [cap][n_embd] residual stream */
    float *xb;   /* [cap][n_embd] normalised input of a sublayer; logits rows gathered */
    float *q;    /* [cap][n_head*head_dim] after RoPE */
    float *k;    /* [cap][n_head_kv*head_dim] after RoPE */
    float *v;    /* [cap][n_head_kv*head_dim] */
    float *att;  /* [cap][n_head*head_dim] attention output */
    float *hb;   /* [cap][n_ff] gate, then silu(gate) * up */
    float *hb2;  /* [cap][n_ff] up */
    float *rh;   /* [cap][ret_hidden] retention gate hidden layer, after silu */
    float *rope; /* [cap][n_rot/2][2] cos, sin of each item's angles */
    /* [n_head + n_head_kv] rows of each Q head, then K head, made so far in this layer's
     * product: the thread that completes a head finishes it (bias, norm, RoPE) for every
     * item and sets the count back to 0 */
    _Atomic int *head_rows;
    uint8_t *qx; /* [cap][qx_row] the activations of a product, quantised (shared) */
    size_t qx_row;
    int32_t *want; /* [cap] batch indices of the items that want logits */

    /* Items grouped by sequence: the sequences of a batch get slots 0..n_slots-1 in
     * order of first appearance; slot s's items (batch indices, in batch order) are
     * slot_items[slot_first[s] .. slot_first[s] + slot_n[s]). */
    int32_t *item_slot;   /* [cap] slot of each item */
    int32_t *item_j;      /* [cap] index of each item within its sequence's new rows */
    int32_t *slot_items;  /* [cap] */
    uint32_t *slot_first; /* [cap] */
    uint32_t *slot_n;     /* [cap] */
    int32_t *slot_seq;    /* [cap] sequence index of each slot */
    int32_t *seq_slot;    /* [MDL_MAX_SEQ] slot of a sequence index, -1 when absent */
    uint32_t n_slots;
    mdl_kv_view_t *views; /* [cap][n_head_kv] this layer's views, by slot */

    /* Per-thread buffers. Activations of a product of a few items, made by each thread
     * for itself (cheaper than sharing them out and waiting for each other): */
    int n_prv;
    float *prv_x;    /* [n_prv][MDL_PRV_ROWS][n_embd] normalised rows */
    uint8_t *prv_qx; /* [n_prv][MDL_PRV_ROWS][qx_row] */
    /* attention: scores and dequantised rows */
    int n_thr;
    size_t thr_floats; /* floats per thread */
    float *thr;        /* [n_thr][thr_floats], 64-byte aligned */
    mdl_attn_plan_t plan;
} mdl_scratch_t;

struct mdl {
    gguf_t *g;
    tok_t *tok; /* NULL when the file carries no tokenizer */
    mdl_hparams_t hp;
    int n_threads;

    const void *tok_embd; /* [n_vocab][n_embd] of tok_embd_type */
    uint32_t tok_embd_type;
    const float *out_norm; /* [n_embd] */
    mdl_mat_t out;         /* [n_vocab][n_embd]; token_embd when tied */
    mdl_layer_t *layers;   /* [n_layer] */
    bool has_retention;
    uint32_t ret_hidden;

    mdl_rope_t rope;                     /* the rotation (mdl_rope); owns rope_inv_freq */
    double *rope_inv_freq;               /* [n_rot/2] base^(-2i/n_rot) / freq factor */
    float attn_scale;                    /* 1 / sqrt(head_dim) */
    const struct mdl_attn_ops *attn_ops; /* attention loops for this CPU and head_dim */

    void **owned; /* vectors converted to f32 and matrices packed at load, freed with it */
    size_t n_owned;

    /* What one layer costs, to decide whether a forward call is worth threads: */
    double layer_bytes;  /* weight bytes, on average over layers (with the output's share) */
    double layer_params; /* weights, likewise */
    uint32_t attn_part_rows; /* rows of one part of attention (s.plan) */
    uint32_t attn_q_rows;    /* queries of one sequence that read their rows together, at
                                most (s.plan; 1: each query alone) */
    double par_min_ns;   /* estimated one-thread time of a layer below which a call runs on
                            the caller's thread alone (GISTD_PAR_MIN_NS overrides) */

    kern_scratch_t *ks;
    mdl_scratch_t s;
};

/* Team. Attention of layer `layer` for every (item, kv-head) of the batch, writing s.att;
 * also writes each view's new rows (K, V, retention log-beta). Uses the views in
 * m->s.views and the rows in s.q/s.k/s.v (s.rh with retention gates). Shares units out
 * with `omp for nowait`: the caller waits for the team before reading s.att. */
void mdl_attention(mdl_t *m, int layer);

/* Thread 0, after this layer's views are in s.views and before the team reads them: shares
 * the layer's attention out (s.plan) and makes room for it. 0 or ERR_NOMEM. */
int mdl_attention_plan(mdl_t *m);

/* Frees the plan's buffers (model/attention.c). */
void mdl_attention_plan_free(mdl_attn_plan_t *p);

/* Frees the buffers of a scratch (model/forward.c). */
void mdl_scratch_free(mdl_scratch_t *s);

/* Floats of per-thread attention scratch needed for a view set whose largest
 * (stored + new) row count is n_rows. */
size_t mdl_attention_scratch(const mdl_t *m, size_t n_rows);

#endif
