/*
 * kvstore/kv_pool.h — pooled rows, and the rotation the store borrows from the model.
 *
 * K rows are stored after RoPE at their model positions. A pooled row stands for its
 * members: undo RoPE at each member's position, take the mass-weighted mean of K and of V,
 * and rotate again at the mass-weighted mean position (which may be fractional). The store
 * never knows how the model rotates: it calls the caller's kv_rope_t, which is the model's
 * own rotation (model/rope.h, wired by the session runtime), so a key the store rotates
 * equals the key the model would write there. Pure functions; any thread. Return 0,
 * ERR_INVAL or ERR_NOMEM.
 */
#ifndef GISTD_KVSTORE_KV_POOL_H
#define GISTD_KVSTORE_KV_POOL_H

#include <stdint.h>

#include "kvstore/kvstore.h"

/* The model's rotation: rotate(ctx, pos, x) turns one head's vector x ([head_dim], double)
 * by position pos (fractional or negative: negative turns back). Angles compose. */
typedef struct kv_rope {
    void (*rotate)(const void *ctx, double pos, double *x);
    const void *ctx;
} kv_rope_t;

/* Rotates x ([head_dim]) in place by +pos (sign = 1) or back by pos (sign = -1). */
int kv_rope_apply(const kv_rope_t *rope, uint32_t head_dim, float pos, int sign, float *x);

/* Builds one pooled row from n members: k, v are [n][head_dim] f32 (k after RoPE at
 * meta[i].pos); writes k_out, v_out ([head_dim]) and meta_out: pos = mass-weighted mean
 * position, mass = sum, span = [min first, max last], level = max level + 1, kind pooled,
 * logbeta = max (the most retained member). */
int kv_pool_rows(const kv_rope_t *rope, uint32_t head_dim, uint32_t n, const float *k,
                 const float *v, const kv_row_meta_t *meta, float *k_out, float *v_out,
                 kv_row_meta_t *meta_out);

#endif
