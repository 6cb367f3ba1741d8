/*
 * runtime/rt_impl.h — the runtime's insides, shared by the runtime's .c files and nobody else.
 */
#ifndef GISTD_RUNTIME_RT_IMPL_H
#define GISTD_RUNTIME_RT_IMPL_H

#include "runtime/runtime.h"

/* One slot of a step: a session and its items [first, first + n). */
typedef struct rt_slot {
    rt_sess_t *s;
    const int32_t *tok; /* the caller's tokens, read by the forward pass */
    uint32_t first, n;
    uint32_t want0; /* its first logits row */
    bool want_all;
    bool at_pos0; /* its items sit at model positions pos0, pos0 + 1, ... (else: the next) */
    int32_t pos0;
} rt_slot_t;

/* Growable scratch for one forward pass: items, views, new rows, logits. */
typedef struct rt_batch {
    uint32_t cap_items, cap_slots, cap_chunks, cap_want, cap_meta;
    int32_t *tok, *pos, *seq;
    uint32_t *utok;
    uint8_t *want;
    rt_slot_t *slots;
    mdl_kv_view_t *views; /* [slot][lane] */
    mdl_kv_chunk_t *chunks;
    kv_chunk_t *kvch; /* one lane's chunks from the store */
    uint32_t cap_kvch;
    kv_row_meta_t *meta;   /* one lane's rows, for masks */
    float *newk, *newv;    /* per slot [lane][n][head_dim], slots one after another */
    float *newlb, *newacc; /* per slot [lane][n] */
    float *logits;         /* [cap_want][n_vocab] */
    uint32_t n_slots, n_items, n_want;
    /* a pass that stores nothing (rt_run_at): the store's accumulators are left alone, and
     * when score is set the stored rows' attention goes there instead ([lane][score_stride],
     * indexed by the row's place in its lane) */
    bool apart;
    float *score;
    uint32_t score_stride;
} rt_batch_t;

struct rt {
    mdl_t *m;
    const mdl_hparams_t *hp;
    const tok_t *tok;
    kv_store_t *st;
    uint32_t n_lane, nkv, hd;
    pol_model_t pm;
    rt_batch_t step;    /* the step being built */
    rt_batch_t masked;  /* a learned gist run (it happens while a step is being built) */
    const float **lptr; /* [4][n_lane] per-lane pointers for kv_commit */
    pol_text_t *pieces; /* token texts for the segmenter */
    uint32_t cap_pieces;
    char *piece_text;
    size_t cap_piece_text;
};

/* The text pieces of n tokens in rt->pieces (valid until the next call). */
int rt_pieces(rt_t *rt, const int32_t *tok, uint32_t n, err_info_t *e);
/* The policies' runner: learned gist tokens under their mask (runtime/step.c). */
int rt_run_masked(void *ctx, const pol_run_t *run, err_info_t *e);
void rt_batch_free(rt_batch_t *b);
/* Before *k new tokens of s: renumbers its model positions when they would pass the model's
 * context (runtime/positions.c). may_cut: *k may be lowered (a step's chunk). ERR_CONTEXT
 * when a policy that never compacts has reached the context. */
int rt_positions_fit(rt_t *rt, rt_sess_t *s, uint32_t *k, bool may_cut, err_info_t *e);
/* The model position of s's next token. */
int32_t rt_positions_next(const rt_t *rt, const rt_sess_t *s);

/* One forward pass of n tokens of s at model positions pos0.. under mask (NULL: every stored
 * row), in rt->masked, that reserves and stores nothing: the new rows stay in rt->masked
 * (lane l's at newk/newv/newlb + l * n rows), the store's attention accumulators are left
 * alone, and when score is set ([n_lane][stride] zeroed by the caller) each stored row's
 * attention from these tokens is added there (runtime/step.c). */
int rt_run_at(rt_t *rt, rt_sess_t *s, const int32_t *tok, uint32_t n, int32_t pos0,
              const pol_run_t *mask, float *score, uint32_t stride, err_info_t *e);

#endif
