/*
 * tests/test_rope_util.h — a RoPE description for tests of the store and the policies: the
 * model's rotation (model/rope.h) set up from base, linear scale and per-pair divisors the
 * way the model file would give them, and handed to the store as its kv_rope_t. Tests
 * compare what it does with rotations written from the definition.
 */
#ifndef GISTD_TESTS_TEST_ROPE_UTIL_H
#define GISTD_TESTS_TEST_ROPE_UTIL_H

#include <math.h>
#include <stdint.h>

#include "kvstore/kv_pool.h"
#include "model/rope.h"

#define TR_MAX_PAIRS 256

typedef struct tr_rope {
    mdl_rope_t m;
    double inv_freq[TR_MAX_PAIRS];
    kv_rope_t kv;
} tr_rope_t;

static void tr_rotate(const void *ctx, double pos, double *x)
{
    mdl_rope_rotate(ctx, pos, x);
}

/* Adjacent pairs of the first n_rot dims, theta_i = pos / scale * base^(-2i/n_rot) / div_i
 * (scale 0: 1; div NULL: 1). Returns the store's view of it. */
static inline const kv_rope_t *tr_rope_init(tr_rope_t *t, uint32_t head_dim, uint32_t n_rot,
                                            double base, double scale, const float *div)
{
    for (uint32_t i = 0; i < n_rot / 2 && i < TR_MAX_PAIRS; i++)
        t->inv_freq[i] = pow(base, -2.0 * i / n_rot) / (div ? div[i] : 1.0);
    t->m = (mdl_rope_t){.head_dim = head_dim,
                        .n_rot = n_rot,
                        .pairs = MDL_ROPE_ADJACENT,
                        .pos_scale = scale > 0 ? 1.0 / scale : 1.0,
                        .inv_freq = t->inv_freq};
    t->kv = (kv_rope_t){.rotate = tr_rotate, .ctx = &t->m};
    return &t->kv;
}

#endif
