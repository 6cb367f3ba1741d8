/*
 * runtime/runtime.h — the session runtime: one decode step over the KV store under a
 * policy, for gistd and gist-model alike.
 *
 * An rt_t links one model to one KV store (both the caller's). Each session the caller
 * runs is an rt_sess_t (embedded in the caller's own session struct): the store's session
 * id, its policy (policy/policy.h), its position counter and the model's latest
 * prediction. The runtime is the policy's runner (learned gist tokens under the sentence
 * mask) and the only place that builds the forward pass's views over the store's lanes,
 * commits new rows and feeds the policy's hooks. The loop, for one step over any number of
 * sessions (the daemon's continuous batching; gist-model runs one session):
 *
 *     rt_step_begin(rt)
 *     for each session with tokens to run:
 *         rt_step_add(rt, s, tokens, n, want_all, &taken)   the policy may close a sentence
 *                                       (learned gists run now) and says how many tokens
 *                                       to run; their rows are reserved (compacting when a
 *                                       budget refuses; a chunk the budget cannot hold is
 *                                       halved down to one token)
 *     rt_step_run(rt)                   one forward pass over every slot
 *     for each slot k:
 *         rt_step_commit(rt, k)         its rows are stored, s->logits follows its last item
 *         ... the caller reads rt_step_logits(rt, k, i): samples, scores ...
 *         rt_step_policy(rt, k)         the segmenter sees the tokens; above the soft
 *                                       watermark the policy compacts
 *
 * Threads: one thread at a time (the store's). Errors: 0 or a negative ERR_* code with a
 * message in err_info_t; a failed call leaves the sessions' stored rows as they were (a
 * failed rt_step_run cancels every slot's reservation).
 */
#ifndef GISTD_RUNTIME_RUNTIME_H
#define GISTD_RUNTIME_RUNTIME_H

#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"
#include "kvstore/kvstore.h"
#include "model/llama.h"
#include "policy/policy.h"

typedef struct rt rt_t;

/* One session as the runtime runs it. The caller reads the fields and changes none. */
typedef struct rt_sess {
    uint32_t kv;      /* the store's session id */
    pol_t *pol;       /* its policy */
    uint32_t n_past;  /* positions stored: the transcript's length (text and gist tokens) */
    float *logits;    /* [n_vocab]: the model's prediction for position n_past */
    bool have_logits; /* false until a step or a gist run has produced one */
    bool gists_ran;   /* learned gists ran in the last rt_step_add (logits follow them) */
    struct rt *rt;    /* private: the runtime it belongs to */
} rt_sess_t;

/* How a session's policy is made. */
typedef struct rt_sess_config {
    const char *policy;        /* name (policy/policy.h); NULL or "": auto */
    const pol_param_t *params; /* [n_params] */
    uint32_t n_params;
    pol_emit_fn emit; /* compaction events (may be NULL) */
    void *emit_ctx;
} rt_sess_config_t;

/* What the policies know of the model: gist tokens, gates, and its rotation (pooled rows
 * turn exactly as the forward pass turns keys). */
void rt_policy_model(const mdl_t *m, pol_model_t *pm);

/* ---- the runtime ---- */

/* Links model m and store st (their shapes must agree: ERR_INVAL). Both stay the caller's
 * and must outlive the runtime. */
int rt_new(mdl_t *m, kv_store_t *st, rt_t **out, err_info_t *e);
void rt_destroy(rt_t **p);
const pol_model_t *rt_model(const rt_t *rt);

/* ---- sessions ---- */

/* Makes s the runtime's view of the store's session kv (empty, or holding rows the policy
 * may treat as one unclosed sentence) with a policy made from cfg. On error s holds only kv
 * (nothing to undo). The store's session stays the caller's: rt_sess_fini leaves it. */
int rt_sess_init(rt_t *rt, rt_sess_t *s, uint32_t kv, const rt_sess_config_t *cfg, err_info_t *e);
/* Frees the policy and the logits; NULL-safe and idempotent. */
void rt_sess_fini(rt_sess_t *s);
/* n_past follows the store's transcript (after hooks that may add gist tokens). */
void rt_sess_sync(rt_t *rt, rt_sess_t *s);

/* The policy's hooks that run learned gists (their prediction lands in s->logits). */
int rt_sess_end_turn(rt_t *rt, rt_sess_t *s, err_info_t *e);
/* Compacts s down to target bytes (reason "shrink"); *freed gets what it freed. */
int rt_sess_shrink(rt_t *rt, rt_sess_t *s, size_t target, int64_t *freed, err_info_t *e);

/* ---- re-expansion (runtime/expand.c) ----
 *
 * Compressed spans come back as raw rows, prefilled again from the cold transcript at the
 * model positions right after the rows held before them, inside the session's budget (the
 * policy compacts other rows first; the hard limits are never crossed). Each expansion is
 * reported through the policy's events (action "expand") and counted in its figures. A
 * refused expansion (no room: ERR_BUDGET, ERR_CONTEXT) changes no rows (the keys of the rows
 * after the span, moved up and back, are equal to within float rounding). After an expansion
 * s->logits is predicted again over the rows as they are now. */

#define RT_EXPAND_CANDIDATES 1024 /* compressed spans scored per turn at most (the newest) */
#define RT_EXPAND_QUERY_SENTENCES 2 /* the turn's last sentences matched against the spans' words */

typedef struct rt_expand_result {
    uint32_t candidates; /* compressed spans considered */
    uint32_t spans;      /* spans expanded */
    uint32_t tokens;     /* tokens re-prefilled */
    int64_t bytes;       /* the session's bytes after less before (room made included) */
    double ms;           /* time taken */
    char note[200];      /* why nothing (or less) was expanded; "" when nothing was refused */
} rt_expand_result_t;

/* Expands the compressed spans that overlap positions [first, last] (clipped to them; learned
 * gist sentences whole). ERR_RANGE outside the transcript; ERR_NOTFOUND when nothing there is
 * compressed; the first refusal's error when nothing was expanded (later refusals end it with
 * a note). */
int rt_sess_expand_span(rt_t *rt, rt_sess_t *s, uint32_t first, uint32_t last,
                        rt_expand_result_t *out, err_info_t *e);
/* Scores the compressed spans against the queries of the last `expand_query` positions (the
 * turn just appended) and expands the best, within max_tokens (0: the policy's
 * expand_tokens) and expand_spans; reason POL_R_TURN or POL_R_REQUEST for the events.
 * Expanding nothing is no error: out->note says why. */
int rt_sess_expand_auto(rt_t *rt, rt_sess_t *s, uint32_t max_tokens, int reason,
                        rt_expand_result_t *out, err_info_t *e);

/* ---- one step ---- */

void rt_step_begin(rt_t *rt);
/* Adds a slot: up to n of tok (n >= 1) for s, as many as the policy and the budget allow
 * (*taken, >= 1), their rows reserved. want_all: logits for every item (scoring), else for
 * the last. On error no slot is added and s holds no reservation. */
int rt_step_add(rt_t *rt, rt_sess_t *s, const int32_t *tok, uint32_t n, bool want_all,
                uint32_t *taken, err_info_t *e);
/* Slots added so far, and the tokens slot k takes. */
uint32_t rt_step_slots(const rt_t *rt);
uint32_t rt_step_taken(const rt_t *rt, uint32_t k);
/* One forward pass over every slot. On error every slot's reservation is cancelled. */
int rt_step_run(rt_t *rt, err_info_t *e);
/* Stores slot k's rows; s->n_past and s->logits follow. On error its reservation is cancelled
 * and nothing of it is stored. */
int rt_step_commit(rt_t *rt, uint32_t k, err_info_t *e);
/* The logits of item i of slot k ([n_vocab]): any item for a want_all slot, else the last. */
const float *rt_step_logits(const rt_t *rt, uint32_t k, uint32_t i);
/* The policy's commit hook for slot k's tokens (segmenter, soft watermark). */
int rt_step_policy(rt_t *rt, uint32_t k, err_info_t *e);

#endif
