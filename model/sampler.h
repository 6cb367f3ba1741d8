/*
 * model/sampler.h — picks the next token from a row of logits.
 *
 * The chain, in llama.cpp's order: repetition penalty over a window of recent
 * tokens (positive logits divided by the penalty, negative ones multiplied) ->
 * top-k -> top-p (smallest set of most likely tokens whose probability mass is
 * at least p) -> min-p (drop tokens whose probability is below min_p times the
 * most likely one's) -> temperature -> a draw from the softmax of what is left.
 * The filters see the untempered distribution; temperature only shapes the
 * final draw. temp <= 0 means greedy: the arg-max after the penalty.
 *
 * A sampler owns its scratch (sized for n_vocab once, no allocation per token),
 * its random state (a PCG32 generator seeded from the config: the same seed
 * gives the same draws) and its window of recent tokens. One thread at a time.
 * Errors: ERR_INVAL for a bad config, ERR_NOMEM.
 */
#ifndef GISTD_MODEL_SAMPLER_H
#define GISTD_MODEL_SAMPLER_H

#include <stdint.h>

#include "common/err.h"

typedef struct mdl_sampler_cfg {
    float temp;            /* <= 0: greedy */
    int32_t top_k;         /* <= 0: off */
    float top_p;           /* >= 1: off */
    float min_p;           /* <= 0: off */
    float repeat_penalty;  /* 1: off */
    int32_t repeat_last_n; /* window of recent tokens the penalty looks at */
    uint64_t seed;
} mdl_sampler_cfg_t;

typedef struct mdl_sampler mdl_sampler_t;

/* Defaults: temp 0.8, top_k 40, top_p 0.95, min_p 0.05, repeat_penalty 1 (off),
 * repeat_last_n 64, seed 0. */
void mdl_sampler_cfg_default(mdl_sampler_cfg_t *cfg);

/* The longest repetition window a sampler keeps (tokens; its ring is 4 bytes a token). */
#define MDL_SAMPLER_MAX_WINDOW (1 << 22)

/* ERR_INVAL (with a message in e) for a temperature that is negative or not finite, top_p
 * outside (0, 1], min_p outside [0, 1], a penalty that is not a finite number > 0, a window
 * outside [0, MDL_SAMPLER_MAX_WINDOW] or n_vocab 0. top_k may be any value (<= 0: off; at
 * least n_vocab keeps every token). */
int mdl_sampler_new(const mdl_sampler_cfg_t *cfg, uint32_t n_vocab, mdl_sampler_t **out,
                    err_info_t *e);
void mdl_sampler_destroy(mdl_sampler_t **s);

/* Picks a token from logits[n_vocab] (not modified). Does not record it: call
 * mdl_sampler_accept with the token that is actually used. */
int32_t mdl_sampler_sample(mdl_sampler_t *s, const float *logits);

/* Records a token in the repetition window (prompt tokens too, if they should count). */
void mdl_sampler_accept(mdl_sampler_t *s, int32_t token);

/* Forgets the window and reseeds the generator from the config. */
void mdl_sampler_reset(mdl_sampler_t *s);

/* The logits after the repetition penalty, written to out[n_vocab] (for tests and for
 * callers that want to inspect what the penalty did). */
void mdl_sampler_penalize(const mdl_sampler_t *s, const float *logits, float *out);

/* A uniform double in [0, 1) from the sampler's generator (advances it). */
double mdl_sampler_uniform(mdl_sampler_t *s);

/* -log softmax(logits)[t] over n entries: the token's negative log-likelihood (the
 * terms summed in double). Every perplexity and score in the tree uses it. */
double mdl_token_nll(const float *logits, uint32_t n, int32_t t);

#endif
