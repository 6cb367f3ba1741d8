/*
 * model/rope.h — the model's rotary position embedding, exported once.
 *
 * The forward pass rotates every new query and key row at its position; the KV store
 * rotates stored keys again when rows are pooled (un-rotate the members, average, rotate at
 * the span's position) or moved in model-position space (endless sessions: rows slide down
 * as older ones are compacted). All of them use this description and these functions, so a
 * key re-rotated by the store equals the key the model would have written at the new
 * position.
 *
 * Convention: pair i (i < n_rot/2) of a head's vector is (x[2i], x[2i+1]) for llama's
 * adjacent pairs, or (x[i], x[i + n_rot/2]) for the half-split (NEOX) style; it turns by
 * the angle pos * pos_scale * inv_freq[i]. Dims from n_rot on are left alone. Rotations
 * compose: rotating by a then by b equals rotating by a + b, and by -a undoes a.
 *
 * Pure functions of an mdl_rope_t that lives as long as its model; any thread.
 */
#ifndef GISTD_MODEL_ROPE_H
#define GISTD_MODEL_ROPE_H

#include <stdint.h>

/* How a head's dims pair up. */
enum mdl_rope_pairs {
    MDL_ROPE_ADJACENT = 0, /* (x[2i], x[2i+1]): llama */
    MDL_ROPE_HALVES = 1,   /* (x[i], x[i + n_rot/2]): NEOX style (qwen2, qwen3) */
};

typedef struct mdl_rope {
    uint32_t head_dim;      /* elements of one head's vector */
    uint32_t n_rot;         /* rotated dims (even, <= head_dim) */
    uint32_t pairs;         /* enum mdl_rope_pairs */
    double pos_scale;       /* positions are multiplied by it (1 / linear scaling factor) */
    const double *inv_freq; /* [n_rot/2] radians per position of pair i: base^(-2i/n_rot) with
                               Llama 3 scaling and rope_freqs.weight folded in */
} mdl_rope_t;

/* The dims of pair i. */
static inline void mdl_rope_pair(const mdl_rope_t *r, uint32_t i, uint32_t *a, uint32_t *b)
{
    if (r->pairs == MDL_ROPE_HALVES) {
        *a = i;
        *b = i + r->n_rot / 2;
    } else {
        *a = 2 * i;
        *b = 2 * i + 1;
    }
}

/* cos and sin of every pair's angle at pos: cs[2i] = cos, cs[2i+1] = sin ([n_rot] floats),
 * angles taken in double. */
void mdl_rope_angles(const mdl_rope_t *r, double pos, float *cs);

/* Rotates one head's vector x ([head_dim]) by the angles of mdl_rope_angles. */
void mdl_rope_apply(const mdl_rope_t *r, const float *cs, float *x);

/* Rotates x ([head_dim], double) by pos, which may be fractional or negative (back). */
void mdl_rope_rotate(const mdl_rope_t *r, double pos, double *x);

#endif
