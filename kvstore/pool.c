/*
 * kvstore/pool.c — RoPE at fractional positions and mass-weighted pooling of rows.
 *
 * Angles and sums are taken in double: a pooled row averages rows rotated at positions far
 * apart, and f32 angles at large positions would lose more than the average is worth.
 */
#include "kvstore/kv_pool.h"

#include <math.h>
#include <stdlib.h>

#include "common/err.h"

static int rope_check(const kv_rope_t *rope, uint32_t head_dim)
{
    return rope && rope->rotate && head_dim > 0 ? 0 : ERR_INVAL;
}

static void rope_rotate(const kv_rope_t *rope, double pos, int sign, double *x)
{
    rope->rotate(rope->ctx, sign * pos, x);
}

int kv_rope_apply(const kv_rope_t *rope, uint32_t head_dim, float pos, int sign, float *x)
{
    if (rope_check(rope, head_dim) != 0 || (sign != 1 && sign != -1) || !x)
        return ERR_INVAL;
    double *t = malloc(sizeof *t * head_dim);
    if (!t)
        return ERR_NOMEM;
    for (uint32_t d = 0; d < head_dim; d++)
        t[d] = x[d];
    rope_rotate(rope, pos, sign, t);
    for (uint32_t d = 0; d < head_dim; d++)
        x[d] = (float)t[d];
    free(t);
    return 0;
}

int kv_pool_rows(const kv_rope_t *rope, uint32_t head_dim, uint32_t n, const float *k,
                 const float *v, const kv_row_meta_t *meta, float *k_out, float *v_out,
                 kv_row_meta_t *meta_out)
{
    if (rope_check(rope, head_dim) != 0 || n == 0 || !k || !v || !meta || !k_out || !v_out ||
        !meta_out)
        return ERR_INVAL;
    double mass = 0.0, pos = 0.0, mpos = 0.0;
    for (uint32_t i = 0; i < n; i++) {
        if (!(meta[i].mass > 0.0f) || !isfinite(meta[i].pos) || !isfinite(meta[i].shift))
            return ERR_INVAL;
        mass += meta[i].mass;
        pos += (double)meta[i].mass * meta[i].pos;
        mpos += (double)meta[i].mass * ((double)meta[i].pos - meta[i].shift);
    }
    pos /= mass;
    mpos /= mass;

    double *sk = calloc(3 * (size_t)head_dim, sizeof *sk);
    if (!sk)
        return ERR_NOMEM;
    double *sv = sk + head_dim, *t = sv + head_dim;
    kv_row_meta_t out = {.pos = 0.0f, .mass = (float)mass, .kind = KV_KIND_POOLED};
    out.first = meta[0].first;
    out.last = meta[0].last;
    out.logbeta = meta[0].logbeta;
    uint8_t level = 0;
    for (uint32_t i = 0; i < n; i++) {
        const float *ki = k + (size_t)i * head_dim, *vi = v + (size_t)i * head_dim;
        for (uint32_t d = 0; d < head_dim; d++)
            t[d] = ki[d];
        rope_rotate(rope, (double)meta[i].pos - meta[i].shift, -1, t);
        double w = meta[i].mass / mass;
        for (uint32_t d = 0; d < head_dim; d++) {
            sk[d] += w * t[d];
            sv[d] += w * vi[d];
        }
        if (meta[i].first < out.first)
            out.first = meta[i].first;
        if (meta[i].last > out.last)
            out.last = meta[i].last;
        if (meta[i].logbeta > out.logbeta)
            out.logbeta = meta[i].logbeta;
        if (meta[i].level > level)
            level = meta[i].level;
    }
    rope_rotate(rope, mpos, 1, sk);
    for (uint32_t d = 0; d < head_dim; d++) {
        k_out[d] = (float)sk[d];
        v_out[d] = (float)sv[d];
    }
    out.pos = (float)pos;
    out.shift = (float)(pos - mpos);
    out.level = (uint8_t)(level < 255 ? level + 1 : 255);
    *meta_out = out;
    free(sk);
    return 0;
}
