/*
 * runtime/session.c — the runtime and its sessions: the model linked to the store, each
 * session's policy, and the text the segmenter reads.
 */
#include <stdlib.h>
#include <string.h>

#include "runtime/rt_impl.h"

/* The store's rotation callback is the model's own (model/rope.h). */
static void rotate(const void *ctx, double pos, double *x)
{
    mdl_rope_rotate(ctx, pos, x);
}

void rt_policy_model(const mdl_t *m, pol_model_t *pm)
{
    const mdl_hparams_t *hp = mdl_hparams(m);
    *pm = (pol_model_t){.n_gist = hp->n_gist,
                        .gist_first = hp->gist_first,
                        .gist_sinks = hp->gist_sinks,
                        .gist_thought = hp->gist_mask == MDL_GIST_MASK_THOUGHT,
                        .has_gates = mdl_has_retention(m),
                        .rope = {.rotate = rotate, .ctx = mdl_rope(m)}};
}

int rt_new(mdl_t *m, kv_store_t *st, rt_t **out, err_info_t *e)
{
    *out = NULL;
    const mdl_hparams_t *hp = mdl_hparams(m);
    const kv_store_config_t *sc = kv_store_config(st);
    if (sc->n_layer != hp->n_layer || sc->n_head_kv != hp->n_head_kv ||
        sc->head_dim != hp->head_dim)
        return err_set(e, ERR_INVAL,
                       "the store is shaped %u x %u x %u, the model %u layers x %u kv-heads x %u",
                       sc->n_layer, sc->n_head_kv, sc->head_dim, hp->n_layer, hp->n_head_kv,
                       hp->head_dim);
    rt_t *rt = calloc(1, sizeof *rt);
    if (!rt)
        return err_set(e, ERR_NOMEM, "out of memory");
    rt->m = m;
    rt->hp = hp;
    rt->tok = mdl_tok(m);
    rt->st = st;
    rt->nkv = hp->n_head_kv;
    rt->n_lane = hp->n_layer * hp->n_head_kv;
    rt->hd = hp->head_dim;
    rt_policy_model(m, &rt->pm);
    rt->lptr = malloc(sizeof *rt->lptr * 4 * rt->n_lane);
    if (!rt->lptr) {
        rt_destroy(&rt);
        return err_set(e, ERR_NOMEM, "out of memory");
    }
    *out = rt;
    return 0;
}

void rt_destroy(rt_t **p)
{
    if (!p || !*p)
        return;
    rt_t *rt = *p;
    rt_batch_free(&rt->step);
    rt_batch_free(&rt->masked);
    free(rt->lptr);
    free(rt->pieces);
    free(rt->piece_text);
    free(rt);
    *p = NULL;
}

const pol_model_t *rt_model(const rt_t *rt)
{
    return &rt->pm;
}

int rt_pieces(rt_t *rt, const int32_t *tok, uint32_t n, err_info_t *e)
{
    size_t need = 0;
    for (uint32_t i = 0; i < n; i++)
        need += rt->tok ? tok_piece(rt->tok, tok[i], false, false, NULL, 0) : 0;
    if (n > rt->cap_pieces) {
        pol_text_t *p = realloc(rt->pieces, sizeof *p * n);
        if (!p)
            return err_set(e, ERR_NOMEM, "out of memory for %u tokens' text", n);
        rt->pieces = p;
        rt->cap_pieces = n;
    }
    if (need + 1 > rt->cap_piece_text) {
        char *t = realloc(rt->piece_text, 2 * need + 64);
        if (!t)
            return err_set(e, ERR_NOMEM, "out of memory for %u tokens' text", n);
        rt->piece_text = t;
        rt->cap_piece_text = 2 * need + 64;
    }
    size_t used = 0;
    for (uint32_t i = 0; i < n; i++) {
        size_t pl = rt->tok ? tok_piece(rt->tok, tok[i], false, false, rt->piece_text + used,
                                        rt->cap_piece_text - used)
                            : 0;
        rt->pieces[i] = (pol_text_t){rt->piece_text + used, (uint32_t)pl};
        used += pl;
    }
    return 0;
}

/* ------------------------------------------------------------------ sessions */

int rt_sess_init(rt_t *rt, rt_sess_t *s, uint32_t kv, const rt_sess_config_t *cfg, err_info_t *e)
{
    float *logits = malloc(sizeof(float) * rt->hp->n_vocab);
    if (!logits)
        return err_set(e, ERR_NOMEM, "out of memory");
    *s = (rt_sess_t){.kv = kv, .logits = logits, .rt = rt};
    pol_config_t pc = {.name = cfg->policy,
                       .params = cfg->params,
                       .n_params = cfg->n_params,
                       .store = rt->st,
                       .sid = kv,
                       .model = rt->pm,
                       .runner = {.ctx = s, .run = rt_run_masked},
                       .emit = cfg->emit,
                       .emit_ctx = cfg->emit_ctx};
    int rc = pol_new(&pc, &s->pol, e);
    if (rc) {
        free(logits);
        *s = (rt_sess_t){.kv = kv};
        return rc;
    }
    rt_sess_sync(rt, s);
    return 0;
}

void rt_sess_fini(rt_sess_t *s)
{
    if (!s)
        return;
    pol_destroy(&s->pol);
    free(s->logits);
    s->logits = NULL;
    s->have_logits = false;
}

void rt_sess_sync(rt_t *rt, rt_sess_t *s)
{
    uint32_t len;
    if (kv_transcript_len(rt->st, s->kv, &len) == 0)
        s->n_past = len;
}

int rt_sess_end_turn(rt_t *rt, rt_sess_t *s, err_info_t *e)
{
    s->gists_ran = false;
    int rc = pol_end_turn(s->pol, e);
    rt_sess_sync(rt, s);
    return rc;
}

int rt_sess_shrink(rt_t *rt, rt_sess_t *s, size_t target, int64_t *freed, err_info_t *e)
{
    const size_t start = kv_session_bytes(rt->st, s->kv);
    int rc = pol_shrink(s->pol, target, e);
    rt_sess_sync(rt, s);
    *freed = (int64_t)start - (int64_t)kv_session_bytes(rt->st, s->kv);
    return rc;
}
