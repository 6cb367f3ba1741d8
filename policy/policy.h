/*
 * policy/policy.h — what to compress or evict in one session's KV rows, and when.
 *
 * A pol_t belongs to one session of a KV store (kvstore/kvstore.h). It is chosen by name
 * with key=value parameters:
 *   full    keep every row; a reservation over budget fails (the baseline)
 *   window  sinks + the most recent rows (StreamingLLM, positions kept, not re-indexed)
 *   h2o     evict per lane the rows with the least accumulated attention (recent window kept)
 *   tova    evict per lane the rows the last queries attended to least
 *   trim    evict per lane the lowest TRIM-KV retention log(beta) * (t - pos) (needs gates)
 *   pool    progressive: pooled sentence gists, then gists of gists, then eviction
 *   gist    learned sentence-anchored gists as each sentence closes (needs gist tokens),
 *           then gists of gists, then eviction
 *   auto    the progressive schedule (the default): pooled sentence gists as the budget
 *           requires (weighing as one token each, without pool's log-mass bias, so that a
 *           re-expanded fact wins over them), merges, then eviction by TRIM-KV scores if the
 *           model has gates, else by accumulated attention (learned gists only on request,
 *           as `gist`: they change what every later token sees from the first sentence on);
 *           and re-expansion of the compressed spans each new turn calls for (`expand`, see
 *           below)
 * Any of them with unit=thought compresses whole finished thoughts (paragraph breaks or the
 * client's markers) instead of sentences: a finished thought pools into gist_rows rows, merges
 * take whole thoughts, and eviction takes the raw rows of finished thoughts first, then the
 * open thought's (it stands for the recent window), and only then finished thoughts' gist or
 * pooled rows, which are all that is left of them.
 * New policies are presets of the same engine (policy/policy.c), so they slot in without
 * touching the kvstore or the model.
 *
 * The caller runs the model; the policy reads and edits rows only through the store's
 * verbs, and reaches the model only through the runner the caller fills (pol_runner_t), used
 * to run learned gist tokens under the sentence mask. The policy never includes model/.
 *
 * The caller's loop, for a prefill or a decode step (tools/gist-model/kvrun.c is one):
 *
 *     while tokens remain:
 *         pol_next(p, pieces, n, &k)      the text of the tokens about to run; the policy may
 *                                         close a sentence first (learned gists) and says how
 *                                         many tokens to run in one batch (k >= 1)
 *         pol_reserve(p, k)               kv_reserve, compacting when a budget refuses it
 *         forward k tokens over the store's lanes, kv_commit
 *         pol_commit(p, pieces, k)        the segmenter sees them; above the soft watermark
 *                                         the schedule runs down to the low watermark
 *
 * and at the edges of a session: pol_end_turn (a chat turn ended), pol_mark_thought (a
 * client's thought marker), pol_pin_span (a system prompt), pol_shrink (a budget was
 * lowered), pol_compact (an explicit request). Learned gist tokens are committed to the
 * session as tokens (the transcript holds their ids, at the positions they were trained
 * at: right after their sentence), so a caller's position counter must follow
 * kv_transcript_len, not its own count of text tokens.
 *
 * Every change a policy makes is reported as a pol_event_t through the emit callback: what
 * (action, method, positions, lanes, level), why (reason) and the session's bytes before and
 * after, so that the events' bytes add up to the store's byte changes outside commits.
 *
 * Pins: the first `sinks` positions, spans given to pol_pin_span, and the last `recent`
 * positions are never compacted by the schedule; pol_compact (the client's explicit request)
 * may touch them. A session never crosses its hard limit (the store refuses); when pins
 * leave nothing to free, pol_reserve fails with ERR_BUDGET and nothing stored is lost.
 *
 * Threads: a pol_t and its session belong to one thread (the store's). Errors: 0 or a
 * negative ERR_* code (common/err.h) with a message in err_info_t; pol_new reports an
 * unknown name or parameter with ERR_INVAL and a learned policy on a model without gist
 * tokens or gates with ERR_UNSUPPORTED. A failed hook leaves the rows as they were, except
 * for what it already reported through events.
 */
#ifndef GISTD_POLICY_POLICY_H
#define GISTD_POLICY_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "kvstore/kv_pool.h"
#include "kvstore/kvstore.h"

typedef struct pol pol_t;

/* ---- events ---- */

enum pol_action {
    POL_GIST = 0,  /* closed sentences -> level-1 gist rows (learned or pooled) */
    POL_MERGE = 1, /* runs of gists -> pooled rows one level up */
    POL_EVICT = 2, /* rows removed (their tokens stay in the cold transcript) */
    POL_EXPAND = 3, /* a compressed span re-prefilled from the cold transcript (raw rows again) */
    POL_N_ACTIONS = 4
};

enum pol_method {
    POL_M_LEARNED = 0, /* the model's gist tokens under the sentence mask */
    POL_M_POOLED,      /* mass-weighted means (kv_pool_rows) */
    POL_M_WINDOW,      /* oldest unpinned positions, every lane alike */
    POL_M_H2O,         /* least accumulated attention, per lane */
    POL_M_TOVA,        /* least attention from the last step's queries, per lane */
    POL_M_TRIM,        /* lowest log(beta) * (t - pos), per lane */
    POL_M_RECENCY,     /* oldest unpinned rows, per lane */
    POL_M_PREFILL,     /* re-expansion: the span's tokens prefilled again (runtime/expand.c) */
    POL_N_METHODS
};
/* The methods of compactions (every method before POL_M_PREFILL). */
#define POL_N_COMPACT_METHODS POL_M_PREFILL

enum pol_reason {
    POL_R_SENTENCE = 0, /* a sentence closed (learned gists are made right away) */
    POL_R_WATERMARK,    /* the session was above its soft watermark after a commit */
    POL_R_BUDGET,       /* a reservation (or a learned gist) needed room under the hard limit */
    POL_R_SHRINK,       /* pol_shrink: a lowered budget or the global watermark */
    POL_R_REQUEST,      /* pol_compact: the client asked (or an Expand request) */
    POL_R_EXPAND,       /* room made for a re-expansion (pol_expand_room) */
    POL_R_TURN,         /* re-expansion chosen by a new turn's queries (automatic) */
    POL_N_REASONS
};

/* One compaction or re-expansion. Positions are transcript positions, spans inclusive. */
typedef struct pol_event {
    uint8_t action;       /* enum pol_action */
    uint8_t method;       /* enum pol_method */
    uint8_t reason;       /* enum pol_reason */
    uint8_t level;        /* level of the rows made (gist 1, merge 2+); 0 for evictions */
    uint32_t first, last; /* the span of positions it touched */
    uint32_t lanes;       /* lanes it changed */
    uint64_t rows_before; /* rows of the span in those lanes, before */
    uint64_t rows_after;  /* and after (learned gists: the gist rows that replaced it) */
    uint64_t tokens;      /* text tokens the span stands for (expansions: tokens re-prefilled) */
    uint32_t model_first; /* expansions: the model position of the first token re-prefilled */
    size_t bytes_before;  /* the session's bytes (kv_session_stats) before the step */
    size_t bytes_after;   /* and after it */
    int64_t bytes_freed;  /* bytes_before - bytes_after: negative when a step stored more
                             than it freed: learned gists of a short sentence, or, under a
                             limit, an eviction that emptied no block while the edit gathered
                             the lane's older blocks into a payload run (its record, tens of bytes
                             a lane: kv_session_dissolve_runs in kvstore/kvstore.h) */
} pol_event_t;

typedef void (*pol_emit_fn)(void *ctx, const pol_event_t *ev);

/* "gist", "merge", "evict", "expand" (the wire's CompactionEvent.action); "learned", "pooled",
 * "window", "h2o", "tova", "trim", "recency", "prefill"; "sentence", "watermark", "budget",
 * "shrink", "request", "expand", "turn". "?" for a value out of range. */
const char *pol_action_name(int action);
const char *pol_method_name(int method);
const char *pol_reason_name(int reason);

/* ---- what the policy needs from the caller ---- */

/* One run of learned gist tokens: the tokens, and which stored rows they may attend to. A
 * stored row is visible when its position lies in one of the ranges, or (see_gists) when it
 * is not a raw token row (a learned gist or a pooled row); the run's own tokens see each
 * other causally. */
typedef struct pol_run {
    uint32_t n;            /* tokens */
    const int32_t *tokens; /* [n] token ids (the model's gist tokens) */
    uint32_t n_see;        /* position ranges */
    const float (*see)[2]; /* [n_see] inclusive [lo, hi] position ranges */
    bool see_gists;        /* every non-raw row is visible too */
} pol_run_t;

/* Whether a stored row is visible to the tokens of run r (the mask a runner applies). */
bool pol_run_sees(const pol_run_t *r, const kv_row_meta_t *m);

/* How the policy runs the model. run() reserves r->n rows in the session (kv_reserve), runs
 * the tokens at the next transcript positions with r's mask over the session's lanes, and
 * commits their rows (kv_commit, with retention log-beta when the model has gates). It
 * returns ERR_BUDGET, having changed nothing, when the reservation was refused: the policy
 * then frees room and calls again. It must not call back into the policy. A caller that
 * scores text keeps the last token's logits: the text token that follows is predicted from
 * the last gist token, as the model was trained. */
typedef struct pol_runner {
    void *ctx;
    int (*run)(void *ctx, const pol_run_t *r, err_info_t *e);
} pol_runner_t;

/* What the policy knows of the model. */
typedef struct pol_model {
    uint32_t n_gist;     /* gistd.gist.count (0: no gist tokens) */
    uint32_t gist_first; /* gistd.gist.first_token_id */
    uint32_t gist_sinks; /* gistd.gist.sinks: tokens every token sees under the mask */
    bool gist_thought;   /* gistd.gist.mask "thought": gists follow each thought, not each
                            sentence (the policy's thoughts are its sentences) */
    bool has_gates;      /* the model writes retention log-beta for every new row */
    kv_rope_t rope;      /* the model's rotation, for pooled rows (rotate NULL: pooling refused) */
} pol_model_t;

/* One parameter as given by a client or the command line ("recent", "64"). */
typedef struct pol_param {
    const char *key;
    const char *value;
} pol_param_t;

/* Text of one token, as the tokenizer's piece (may hold any byte). */
typedef struct pol_text {
    const char *s;
    uint32_t len;
} pol_text_t;

typedef struct pol_config {
    const char *name;          /* see the list above; NULL or "" means "auto" */
    const pol_param_t *params; /* [n_params] (see pol_param_help) */
    uint32_t n_params;
    kv_store_t *store;
    uint32_t sid; /* the session; attention accumulators are turned on here when the
                     policy scores by attention (h2o, tova, auto without gates) */
    pol_model_t model;
    pol_runner_t runner; /* required by learned gists */
    pol_emit_fn emit;    /* may be NULL */
    void *emit_ctx;
} pol_config_t;

/* Creates the policy for a session (which should be empty, or hold only tokens the policy
 * may treat as one unclosed sentence). ERR_INVAL: unknown name ("unknown policy 'x' (known:
 * ...)") or parameter, or a bad value; ERR_UNSUPPORTED: `gist` on a model without gist
 * tokens, `trim` without retention gates, pooling without RoPE parameters. */
int pol_new(const pol_config_t *cfg, pol_t **out, err_info_t *e);
/* NULL-safe; sets *p to NULL. Leaves the session and its rows alone. */
void pol_destroy(pol_t **p);

/* "full, window, h2o, tova, pool, gist, trim, auto". */
const char *pol_names(void);
/* One line per parameter, "key=default  what" (for --help and error messages). */
const char *pol_param_help(void);
/* The policy's name as resolved ("auto" for ""). */
const char *pol_name(const pol_t *p);

/* Whether the forward should accumulate attention into the session's rows (the store's
 * kv_lane_view then hands out accumulators, and kv_commit wants the new rows' sums). */
bool pol_wants_attn_acc(const pol_t *p);
/* Bytes to keep between the soft watermark and the hard limit so that a reservation of
 * `ubatch` rows fits under the hard limit (a gist step that finds no room for its new rows
 * frees its span first). */
size_t pol_headroom(const pol_t *p, uint32_t ubatch);

/* ---- hooks the caller runs ---- */

/* Before running tokens: their text pieces, in order (n >= 1). When the previous token
 * closed a sentence (decided by the first of these pieces) the policy acts first (learned
 * gists run through the runner). *n_run (1..n) says how many of them to run in one batch:
 * fewer than n when a sentence boundary lies among them and the policy needs to act there.
 * Changes nothing but the session's rows and the policy's state. */
int pol_next(pol_t *p, const pol_text_t *pieces, uint32_t n, uint32_t *n_run, err_info_t *e);

/* kv_reserve(n) for the session; when a budget refuses it, compacts (progressive schedule,
 * reason "budget") and tries again, until it fits or nothing more can be freed (ERR_BUDGET,
 * nothing lost). */
int pol_reserve(pol_t *p, uint32_t n, err_info_t *e);

/* After kv_commit of the n tokens last given to pol_next (the first n of them): the
 * segmenter records them, and when the session is above its soft watermark (or the store
 * above its own) the schedule compacts down to the low watermark, `low` (0.85) of the one
 * crossed, in one round (reason "watermark"): a few rounds per thousand tokens at steady
 * state, not a row per token. TOVA scores are read, then the accumulators zeroed. */
int pol_commit(pol_t *p, const pol_text_t *pieces, uint32_t n, err_info_t *e);

/* A chat turn ended: the open sentence closes now (learned gists run at once). */
int pol_end_turn(pol_t *p, err_info_t *e);
/* A thought ended here (the client's marker): closes the open sentence and remembers the
 * boundary for pol_compact's last_thought. Paragraph breaks ("\n\n") mark thoughts too. */
int pol_mark_thought(pol_t *p, err_info_t *e);

/* Pins positions [first, last] (a system prompt): never compacted by the schedule. */
int pol_pin_span(pol_t *p, uint32_t first, uint32_t last, err_info_t *e);

/* Frees at least `need` bytes of the session (reason "budget"); ERR_BUDGET when the pins
 * leave too little (what could be freed is freed, and reported). */
int pol_make_room(pol_t *p, size_t need, err_info_t *e);
/* Compacts until the session holds at most `target` bytes or nothing more can be freed
 * (reason "shrink"); freeing less is not an error: the caller compares. */
int pol_shrink(pol_t *p, size_t target, err_info_t *e);

/* An explicit request: gist the sentences of a span now, pins included. */
typedef struct pol_compact_req {
    bool last_thought;    /* the last finished thought (between the last two thought marks; a
                             text that ends with a paragraph break has just finished one) */
    uint32_t first, last; /* else these positions */
} pol_compact_req_t;
/* Learned gists close the open sentence when the span reaches it; closed raw sentences are
 * pooled. ERR_UNSUPPORTED for `full`; ERR_NOTFOUND when there is no finished thought;
 * ERR_RANGE for a span outside the transcript. */
int pol_compact(pol_t *p, const pol_compact_req_t *r, err_info_t *e);

/* ---- re-expansion (the model runs in runtime/expand.c) ----
 *
 * A compressed span (gisted, merged or evicted) can be brought back: its tokens are read from
 * the cold transcript and prefilled again at model positions right after the rows held before
 * it, and its rows replaced by the raw rows. The policy decides what may be expanded, makes
 * room, and keeps the books: the span is raw again, held for `expand_hold` positions (neither
 * gisted nor evicted), then folds back to gists like any old sentence. */

typedef struct pol_expand_cfg {
    bool on;         /* expand=0|1: expand on each appended turn (auto: on by default) */
    uint32_t tokens; /* expand_tokens: most tokens re-prefilled per turn */
    uint32_t spans;  /* expand_spans: most spans expanded per turn */
    uint32_t query;  /* expand_query: the turn's last tokens whose queries score spans */
    uint32_t hold;   /* expand_hold: positions an expanded span stays raw */
    float min_score; /* expand_min: a span's score must reach this (1: the average candidate's) */
    float lex;       /* expand_lex: weight of the lexical match in the score (0..1) */
} pol_expand_cfg_t;

void pol_expand_config(const pol_t *p, pol_expand_cfg_t *out);

/* A compressed span: the positions [first, last] (gist tokens included) and its level
 * (0: raw with rows evicted; 255: every row evicted). */
typedef struct pol_cspan {
    uint32_t first, last;
    uint32_t tokens; /* text tokens it stands for */
    uint8_t level;
    bool whole; /* learned gists: only the whole span can come back */
} pol_cspan_t;

/* The closed compressed spans that overlap [lo, hi], clipped to it, outside the sinks, the
 * pins and the held expansions, in position order (raw sentences count when eviction took
 * rows of them from some lane): *out (malloc'd, NULL when none) and *n. Learned gist spans come
 * whole (their gist rows stand for the whole sentence). */
int pol_expand_spans(const pol_t *p, uint32_t lo, uint32_t hi, pol_cspan_t **out, uint32_t *n,
                     err_info_t *e);

/* Where the policy's segmenter closes sentences in text read afresh (pieces[0 .. n), in
 * order): the indices i, 0 < i < n, of the tokens that start a sentence, in order, into
 * cuts (room for n - 1); returns how many. Re-expansion cuts a merged span into the
 * sentences it was made of with it. */
uint32_t pol_sentence_cuts(const pol_t *p, const pol_text_t *pieces, uint32_t n, uint32_t *cuts);

/* Makes room for an expansion of [first, last] that adds `need` bytes: compacts (reason
 * "expand"; the spans of [first, last] are left alone) until they fit under the hard limits
 * and, when it can, under the soft watermark. ERR_BUDGET when even then they do not fit
 * under the hard limits (what was compacted is reported by events, the span is untouched). */
int pol_expand_room(pol_t *p, uint32_t first, uint32_t last, size_t need, err_info_t *e);

/* After ev->first..ev->last were re-prefilled (ev filled by the caller: rows, lanes, tokens,
 * bytes, model_first, reason): the spans there become one raw span held for expand_hold
 * positions (parts of a span outside it keep their level), the figures count it, the event
 * is emitted. ERR_NOMEM changes nothing. */
int pol_expand_done(pol_t *p, pol_event_t *ev, err_info_t *e);

/* ---- figures ---- */

typedef struct pol_stats {
    uint64_t events[POL_N_ACTIONS][POL_N_METHODS]; /* compactions by kind */
    uint64_t rows_removed;                         /* rows_before - rows_after summed over events */
    int64_t bytes_freed;                           /* summed over events */
    uint64_t text_tokens;                          /* tokens committed through pol_commit */
    uint64_t gist_tokens;                          /* learned gist tokens run */
    uint64_t sentences;                            /* sentences closed */
    uint64_t thoughts;                             /* thought boundaries */
    uint64_t expansions;                           /* spans re-expanded */
    uint64_t expand_tokens;                        /* tokens re-prefilled for them */
    int64_t expand_bytes;                          /* bytes the expansions added (summed) */
} pol_stats_t;

void pol_stats(const pol_t *p, pol_stats_t *out);

/* ---- snapshots ---- */

/* The policy's state (segments, pins, segmenter) as a malloc'd buffer with a version and a
 * checksum; pol_load restores it into a policy of the same name made for the restored
 * session (ERR_FORMAT / ERR_CORRUPT for a bad buffer, nothing changed). */
int pol_save(const pol_t *p, uint8_t **buf, size_t *len);
int pol_load(pol_t *p, const uint8_t *buf, size_t len, err_info_t *e);

#endif
