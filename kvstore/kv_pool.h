/*
 * kvstore/kv_pool.h — pooled rows, rows moved in model-position space, and the rotation the
 * store borrows from the model for both.
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

/* Builds one pooled row from n members: k, v are [n][head_dim] f32 (k after RoPE at the
 * model position meta[i].pos - meta[i].shift); writes k_out, v_out ([head_dim]) and
 * meta_out: pos and model position = the mass-weighted means (K rotated at the latter),
 * mass = sum, span = [min first, max last], level = max level + 1, kind pooled,
 * logbeta = max (the most retained member). */
int kv_pool_rows(const kv_rope_t *rope, uint32_t head_dim, uint32_t n, const float *k,
                 const float *v, const kv_row_meta_t *meta, float *k_out, float *v_out,
                 kv_row_meta_t *meta_out);

/* ---- model positions (kvstore/remap.c) ---- */

/* Moves every row of the session in model-position space, keeping the rows' text positions:
 * a row at model position p = pos - shift goes to f(p), f the piecewise-linear map through
 * the knots (from[i], to[i]) (from strictly increasing, to non-decreasing, both finite; left
 * of the first and right of the last knot f shifts like the nearest knot), and its K is
 * turned by f(p) - p with the model's rotation; the session's next model position moves by
 * f likewise. Blocks shared with a fork are copied first (charged; ERR_BUDGET or ERR_NOMEM
 * change nothing). Re-rotated rows of f16 and q8_0 blocks are rounded to their type again. */
int kv_session_remap(kv_store_t *st, uint32_t sid, uint32_t n, const float *from, const float *to,
                     const kv_rope_t *rope, err_info_t *e);

#endif
