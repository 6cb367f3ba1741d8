/*
 * tools/gist-model/kvrun.h — running a model over the hierarchical KV store under a policy.
 *
 * A kvr_t holds one model's KV store with one session and the session's policy
 * (policy/policy.h). It feeds text tokens the way the policy wants them fed: pol_next (which
 * may close a sentence and run learned gist tokens first), pol_reserve, a forward pass whose
 * views are the store's lanes (kv_chunk_t -> mdl_kv_chunk_t, zero-copy), kv_commit of the new
 * rows (with retention log-beta when the model has gates, attention sums when the policy
 * scores by attention), pol_commit. It is also the policy's runner: gist tokens run with the
 * sentence mask by narrowing each lane's view to the rows the mask lets them see.
 *
 * The caller owns the model; a kvr_t owns the store, the session and the policy. One thread.
 * Errors: 0 or a negative ERR_* code with a message in err_info_t.
 */
#ifndef GISTD_TOOLS_GIST_MODEL_KVRUN_H
#define GISTD_TOOLS_GIST_MODEL_KVRUN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "kvstore/kvstore.h"
#include "model/llama.h"
#include "policy/policy.h"
#include "runtime/runtime.h"

typedef struct kvr kvr_t;

typedef struct kvr_cfg {
    const char *policy;        /* policy name; NULL: "auto" (the daemon's default too) */
    const pol_param_t *params; /* [n_params] policy parameters */
    uint32_t n_params;
    size_t hard;         /* the session's hard limit in bytes; 0: none */
    size_t soft;         /* its soft watermark; 0: hard - the policy's headroom */
    uint32_t block_rows; /* rows per store block; 0: the store's default (64, as gistd's) */
    uint32_t hot_type;   /* DT_F32, DT_F16 or DT_Q8_0 (the store says which it takes) */
    uint32_t ubatch;     /* most tokens per forward pass; 0: 256 */
    const char *spill_dir; /* the store's spill folder for transcript pages no row holds raw;
                              NULL: gistd's default ($TMPDIR, else /var/tmp, none when that is
                              unusable); "none": the transcript stays in memory */
    bool print_events;   /* every compaction event on stderr */
} kvr_cfg_t;

/* What a session went through (kvr_figures). */
typedef struct kvr_figures {
    size_t bytes, peak; /* the session's bytes now and at most */
    uint64_t rows;      /* rows held now, summed over lanes */
    uint64_t blocks;    /* blocks holding them, and of those, blocks in payload runs */
    uint64_t run_blocks;
    uint64_t positions; /* transcript positions (text and gist tokens) */
    uint64_t text;      /* text tokens fed */
    pol_stats_t pol;    /* the policy's figures */
} kvr_figures_t;

/* A store shaped for m with one empty session under cfg's policy and limits. */
int kvr_new(mdl_t *m, const kvr_cfg_t *cfg, kvr_t **out, err_info_t *e);
void kvr_destroy(kvr_t **r);

/* Starts over: a fresh session and policy (the same configuration). */
int kvr_reset(kvr_t *r, err_info_t *e);

/* Runs n text tokens. logits (may be NULL) receives [n][n_vocab]: row i is what the model
 * predicts after ids[i] — after the gist tokens of a sentence that ids[i] closed, when the
 * policy made them while running these tokens (as the model was trained). With logits
 * NULL, last (may be NULL) receives the prediction after the last token only. */
int kvr_feed(kvr_t *r, const int32_t *ids, uint32_t n, float *logits, float *last, err_info_t *e);

/* Runs n text tokens and scores them: adds -log p(token) to *nll and 1 to *scored for every
 * token the session predicts (each but the session's very first), from the prediction the
 * model made before it (after the gist tokens of a sentence it closed, as kvr_feed's
 * logits). A text fed in pieces scores every token once, as one feed would. */
int kvr_score(kvr_t *r, const int32_t *ids, uint32_t n, double *nll, size_t *scored,
              err_info_t *e);

/* Ends a turn (the policy closes the open sentence; learned gists run). When gists ran,
 * *updated says so and last (may be NULL) gets the prediction after them. */
int kvr_end_turn(kvr_t *r, float *last, bool *updated, err_info_t *e);

/* Re-expands the compressed spans relevant to the last tokens fed (rt_sess_expand_auto) when
 * the policy's `expand` is on (out->candidates 0 otherwise); when any was expanded, last (may
 * be NULL) gets the prediction after the last token over the rows as they are now. */
int kvr_expand(kvr_t *r, float *last, rt_expand_result_t *out, err_info_t *e);

void kvr_figures(kvr_t *r, kvr_figures_t *out);
const pol_t *kvr_policy(const kvr_t *r);

/* The bytes a full cache of n_ctx tokens takes in a store shaped for m with block_rows rows
 * per block (blocks, transcript and session structures, as kv_session_stats counts them). */
int kvr_full_bytes(mdl_t *m, uint32_t n_ctx, uint32_t block_rows, uint32_t hot_type, size_t *bytes,
                   err_info_t *e);

/* "12345", "64K", "1.5M", "2G" (powers of 1024). -1 for a malformed size. */
int kvr_parse_size(const char *s, size_t *out);

#endif
