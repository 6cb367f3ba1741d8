/*
 * runtime/positions.c — model positions that stay inside the trained context, forever.
 *
 * Rows keep their text positions (the transcript's); the model sees each row at a model
 * position, and a session's model positions must stay below n_ctx: past the trained
 * context a model produces garbage. Compaction leaves gaps (gisted sentences, evicted rows),
 * so before a step would cross n_ctx the runtime closes them: every distinct model
 * position held by any lane of the session is renumbered by its rank (StreamingLLM's
 * positions within the cache, shared by every lane so one query position serves all), and
 * the store turns each moved key by the distance it moved (llama.cpp's context shift). The
 * renumbering brings the session down to three quarters of the context, so it happens a
 * few times per context's worth of tokens, not every step; a step's chunk stops at the
 * context's end, so the renumbering comes at the same token whatever the chunking. When the rows held are more than
 * that (per-lane eviction keeps different rows in different lanes), the oldest ones are
 * squeezed together and the newest keep their exact spacing. `full` never compacts, so it
 * stops at n_ctx with ERR_CONTEXT instead of degrading.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/rt_impl.h"

static int cmp_float(const void *a, const void *b)
{
    const float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Every distinct model position the session's lanes hold, sorted: *out (malloc'd), *n. */
static int held_positions(rt_t *rt, const rt_sess_t *s, float **out, uint32_t *n, err_info_t *e)
{
    uint64_t total = 0;
    uint32_t max_rows = 0;
    for (uint32_t l = 0; l < rt->n_lane; l++) {
        uint32_t rows;
        kv_lane_size(rt->st, s->kv, l / rt->nkv, l % rt->nkv, &rows, NULL);
        total += rows;
        max_rows = rows > max_rows ? rows : max_rows;
    }
    float *p = malloc(sizeof *p * (total ? total : 1));
    kv_row_meta_t *m = malloc(sizeof *m * (max_rows ? max_rows : 1));
    if (!p || !m) {
        free(p);
        free(m);
        return err_set(e, ERR_NOMEM, "out of memory for %llu rows' positions",
                       (unsigned long long)total);
    }
    uint64_t k = 0;
    for (uint32_t l = 0; l < rt->n_lane; l++) {
        uint32_t rows;
        kv_lane_size(rt->st, s->kv, l / rt->nkv, l % rt->nkv, &rows, NULL);
        if (rows)
            kv_lane_read(rt->st, s->kv, l / rt->nkv, l % rt->nkv, 0, rows, m, NULL, NULL);
        for (uint32_t j = 0; j < rows; j++)
            p[k++] = m[j].pos - m[j].shift;
    }
    free(m);
    qsort(p, k, sizeof *p, cmp_float);
    uint32_t u = 0;
    for (uint64_t j = 0; j < k; j++)
        if (u == 0 || p[j] != p[u - 1])
            p[u++] = p[j];
    *out = p;
    *n = u;
    return 0;
}

/* Renumbers s's model positions so that k more fit (see the top of the file). */
static int room(rt_t *rt, rt_sess_t *s, uint32_t k, float next, bool compacts, err_info_t *e)
{
    const uint32_t n_ctx = rt->hp->n_ctx;
    if (!compacts)
        return err_set(e, ERR_CONTEXT,
                       "the session holds %u positions and %u more would pass the model's "
                       "trained context of %u (policy %s keeps every row; window, h2o, tova, "
                       "pool, trim, gist and auto go on forever)",
                       s->n_past, k, n_ctx, pol_name(s->pol));
    if (k > n_ctx / 2)
        return err_set(e, ERR_CONTEXT, "%u tokens in one step: more than half the context of %u",
                       k, n_ctx);
    float *from = NULL;
    uint32_t m = 0;
    int rc = held_positions(rt, s, &from, &m, e);
    if (rc)
        return rc;
    float *to = malloc(sizeof *to * (m + 1));
    float *fr = realloc(from, sizeof *from * (m + 1));
    if (!to || !fr) {
        free(to);
        free(fr ? fr : from);
        return err_set(e, ERR_NOMEM, "out of memory for %u positions", m);
    }
    from = fr;
    /* where the next token goes: three quarters of the context, or less for a long step */
    uint32_t target = n_ctx * 3 / 4;
    if (target + k > n_ctx)
        target = n_ctx - k;
    if (m <= target) {
        for (uint32_t j = 0; j < m; j++)
            to[j] = (float)j;
        target = m;
    } else {
        /* the newest half keep their spacing; the older rows share what is left */
        const uint32_t keep = target / 2, head = m - keep, room = target - keep;
        for (uint32_t j = 0; j < head; j++)
            to[j] = floorf((float)((double)j * room / head));
        for (uint32_t j = head; j < m; j++)
            to[j] = (float)(room + (j - head));
    }
    from[m] = next;
    to[m] = (float)target;
    rc = kv_session_remap(rt->st, s->kv, m + 1, from, to, &rt->pm.rope, e);
    free(from);
    free(to);
    return rc;
}

int rt_positions_fit(rt_t *rt, rt_sess_t *s, uint32_t *k, bool may_cut, err_info_t *e)
{
    const uint32_t n_ctx = rt->hp->n_ctx;
    float next;
    kv_session_next_mpos(rt->st, s->kv, &next);
    if (n_ctx == 0 || next + (float)*k <= (float)n_ctx)
        return 0;
    const bool compacts = strcmp(pol_name(s->pol), "full") != 0 && rt->pm.rope.rotate;
    if (may_cut && next < (float)n_ctx) {
        /* a chunk stops at the context's end; the renumbering comes when a step starts
         * there, so it happens at the same token however the text was cut into chunks */
        *k = n_ctx - (uint32_t)next;
        return 0;
    }
    return room(rt, s, *k, next, compacts, e);
}

int32_t rt_positions_next(const rt_t *rt, const rt_sess_t *s)
{
    float next = 0.0f;
    kv_session_next_mpos(rt->st, s->kv, &next);
    return (int32_t)next;
}
