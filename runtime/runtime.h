/*
 * runtime/runtime.h — one session's step over the KV store: the layer gistd and gist-model
 * both call.
 *
 * Threads: one thread at a time (the store's). Errors: 0 or a negative ERR_* code with a
 * message in err_info_t.
 */
#ifndef GISTD_RUNTIME_RUNTIME_H
#define GISTD_RUNTIME_RUNTIME_H

#include "model/llama.h"
#include "policy/policy.h"

/* What the policies know of the model: gist tokens, gates, and its rotation (pooled rows
 * and rows moved in model-position space turn exactly as the forward pass turns them). */
void rt_policy_model(const mdl_t *m, pol_model_t *pm);

#endif
