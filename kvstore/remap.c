/*
 * kvstore/remap.c — rows moved in model-position space (endless sessions).
 *
 * A session's rows keep their text positions; their model positions (where K is rotated)
 * slide down when the caller compacts the position space, as llama.cpp's context shift
 * does: each row's K is turned by the distance it moves, with the model's rotation, and
 * its shift (text - model position) grows by the same amount.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "kvstore/kv_impl.h"
#include "kvstore/kv_pool.h"

/* f(p) for the knots: linear between them, shifted like the nearest one outside. */
static double map_pos(uint32_t n, const float *from, const float *to, double p)
{
    if (p <= from[0])
        return p + ((double)to[0] - from[0]);
    if (p >= from[n - 1])
        return p + ((double)to[n - 1] - from[n - 1]);
    uint32_t lo = 0, hi = n - 1; /* from[lo] <= p < from[hi] */
    while (hi - lo > 1) {
        uint32_t mid = (lo + hi) / 2;
        if (from[mid] <= p)
            lo = mid;
        else
            hi = mid;
    }
    const double t = (p - from[lo]) / ((double)from[hi] - from[lo]);
    return to[lo] + t * ((double)to[hi] - to[lo]);
}

int kv_session_remap(kv_store_t *st, uint32_t sid, uint32_t n, const float *from, const float *to,
                     const kv_rope_t *rope, err_info_t *e)
{
    kv_session_t *s = kv_session_find(st, sid);
    if (!s)
        return err_set(e, ERR_NOTFOUND, "remap: no session %u", sid);
    if (s->n_reserved)
        return err_set(e, ERR_BUSY, "remap: session %u has a reservation pending", sid);
    if (!rope || !rope->rotate || n == 0 || !from || !to)
        return err_set(e, ERR_INVAL, "remap: a rotation and at least one knot are required");
    for (uint32_t i = 0; i < n; i++)
        if (!isfinite(from[i]) || !isfinite(to[i]) || (i && (from[i] <= from[i - 1] ||
                                                             to[i] < to[i - 1])))
            return err_set(e, ERR_INVAL, "remap: knot %u (%g -> %g) is not finite or out of order",
                           i, i < n ? from[i] : 0.0, i < n ? to[i] : 0.0);

    /* Blocks shared with a fork are never written: private copies first, all or none. */
    uint32_t n_shared = 0;
    for (uint32_t l = 0; l < st->n_lane; l++)
        for (uint32_t i = 0; i < s->lanes[l].n_blk; i++)
            n_shared += s->lanes[l].b[i].blk->refs > 1;
    kv_block_t **priv = NULL;
    const size_t hd = st->cfg.head_dim;
    double *x = kv_scratch_alloc(st, sizeof(double) * hd);
    float *row = kv_scratch_alloc(st, sizeof(float) * hd);
    if (!x || !row) {
        free(x);
        free(row);
        return err_set(e, ERR_NOMEM, "remap of session %u: out of memory", sid);
    }
    if (n_shared) {
        size_t need = 0;
        for (uint32_t l = 0; l < st->n_lane; l++)
            for (uint32_t i = 0; i < s->lanes[l].n_blk; i++)
                if (s->lanes[l].b[i].blk->refs > 1)
                    need += st->block_charge[kv_tier(s->lanes[l].b[i].blk->type)];
        /* the session already counts shared blocks fully: only the store pays again */
        int rc = kv_budget_check(st, s, 0, need, "remap", e);
        priv = rc ? NULL : kv_scratch_alloc(st, sizeof *priv * n_shared);
        if (!rc && !priv)
            rc = err_set(e, ERR_NOMEM, "remap of session %u: out of memory", sid);
        uint32_t made = 0;
        for (uint32_t l = 0; !rc && l < st->n_lane; l++)
            for (uint32_t i = 0; !rc && i < s->lanes[l].n_blk; i++) {
                const kv_block_t *b = s->lanes[l].b[i].blk;
                if (b->refs == 1)
                    continue;
                kv_block_t *c = kv_block_new(st, NULL, b->type);
                if (!c) {
                    rc = err_set(e, ERR_NOMEM, "remap of session %u: out of memory", sid);
                    break;
                }
                for (uint32_t j = 0; j < b->n; j++)
                    kv_row_copy(st, c, NULL, j, b, NULL, j);
                c->n = b->n;
                priv[made++] = c;
            }
        if (rc) {
            for (uint32_t i = 0; i < made; i++)
                kv_block_unref(st, NULL, priv[i]);
            free(priv);
            free(x);
            free(row);
            return rc;
        }
        /* swap them in: the session keeps its charge, the shared block loses a holder */
        made = 0;
        for (uint32_t l = 0; l < st->n_lane; l++)
            for (uint32_t i = 0; i < s->lanes[l].n_blk; i++) {
                kv_bref_t *r = &s->lanes[l].b[i];
                if (r->blk->refs == 1)
                    continue;
                r->blk->refs--;
                r->blk = priv[made++];
            }
        free(priv);
    }

    for (uint32_t l = 0; l < st->n_lane; l++)
        for (uint32_t i = 0; i < s->lanes[l].n_blk; i++) {
            kv_block_t *b = s->lanes[l].b[i].blk;
            const size_t rb = st->row_bytes[kv_tier(b->type)];
            for (uint32_t j = 0; j < b->n; j++) {
                const double p = (double)b->pos[j] - b->shift[j];
                const double q = map_pos(n, from, to, p);
                if (q == p)
                    continue;
                dt_to_f32(b->type, b->k + j * rb, row, hd);
                for (size_t d = 0; d < hd; d++)
                    x[d] = row[d];
                rope->rotate(rope->ctx, q - p, x);
                for (size_t d = 0; d < hd; d++)
                    row[d] = (float)x[d];
                dt_from_f32(b->type, row, b->k + j * rb, hd);
                b->shift[j] = (float)((double)b->pos[j] - q);
            }
        }
    const double next = (double)s->tr.len - s->shift;
    s->shift = (float)((double)s->tr.len - map_pos(n, from, to, next));
    free(x);
    free(row);
    return 0;
}
