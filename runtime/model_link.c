/*
 * runtime/model_link.c — what the policies and the store know of the model, from the model.
 */
#include "runtime/runtime.h"

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
                        .has_gates = mdl_has_retention(m),
                        .rope = {.rotate = rotate, .ctx = mdl_rope(m)}};
}
