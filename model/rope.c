/*
 * model/rope.c — rotary position embedding (model/rope.h).
 */
#include "model/rope.h"

#include <math.h>

void mdl_rope_angles(const mdl_rope_t *r, double pos, float *cs)
{
    const double p = pos * r->pos_scale;
    for (uint32_t i = 0; i < r->n_rot / 2; i++) {
        const double th = p * r->inv_freq[i];
        cs[2 * i] = (float)cos(th);
        cs[2 * i + 1] = (float)sin(th);
    }
}

void mdl_rope_apply(const mdl_rope_t *r, const float *cs, float *x)
{
    for (uint32_t i = 0; i < r->n_rot / 2; i++) {
        uint32_t a, b;
        mdl_rope_pair(r, i, &a, &b);
        const float c = cs[2 * i], s = cs[2 * i + 1];
        const float x0 = x[a], x1 = x[b];
        x[a] = x0 * c - x1 * s;
        x[b] = x0 * s + x1 * c;
    }
}

void mdl_rope_rotate(const mdl_rope_t *r, double pos, double *x)
{
    const double p = pos * r->pos_scale;
    for (uint32_t i = 0; i < r->n_rot / 2; i++) {
        uint32_t a, b;
        mdl_rope_pair(r, i, &a, &b);
        const double th = p * r->inv_freq[i], c = cos(th), s = sin(th);
        const double x0 = x[a], x1 = x[b];
        x[a] = x0 * c - x1 * s;
        x[b] = x0 * s + x1 * c;
    }
}
