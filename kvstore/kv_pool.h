/*
 * kvstore/kv_pool.h — RoPE at fractional positions and pooled rows.
 *
 * K rows are stored after RoPE at their original positions. A pooled row stands for its
 * members: undo RoPE at each member's position, take the mass-weighted mean of K and of V,
 * and rotate again at the mass-weighted mean position (which may be fractional). The store
 * knows the model's rotation only through kv_rope_t.
 *
 * Convention (llama.cpp's "normal" rope, as GGUF llama files expect): the pairs
 * (x[2i], x[2i+1]) for i < n_rot/2 are rotated by theta_i = (pos / scale) * base^(-2i/n_rot)
 * / freq_div[i]; dims from n_rot on are left alone. Pure functions; any thread. Return 0 or
 * ERR_INVAL.
 */
#ifndef GISTD_KVSTORE_KV_POOL_H
#define GISTD_KVSTORE_KV_POOL_H

#include <stdint.h>

#include "kvstore/kvstore.h"

typedef struct kv_rope {
    uint32_t n_rot;        /* rotated dims (even, <= head_dim) */
    float base;            /* frequency base (10000 for Llama 2) */
    float scale;           /* linear position scaling: positions are divided by it; 0 = 1 */
    const float *freq_div; /* [n_rot/2] per-pair frequency divisors (Llama 3), or NULL */
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
