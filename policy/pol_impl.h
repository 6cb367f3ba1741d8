/*
 * policy/pol_impl.h — the policy engine's insides, shared by the policy's .c files and nobody
 * else.
 *
 * Every named policy is one preset of the same engine: a gist mode (none, pooled, learned),
 * merges of gists into coarser ones, and an eviction score. The engine keeps the session's
 * closed sentences as spans of positions (in position order), the open sentence's first
 * position, the pinned ranges and the thought boundaries; the rows themselves live in the
 * store and are read back when a step needs them.
 */
#ifndef GISTD_POLICY_POL_IMPL_H
#define GISTD_POLICY_POL_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "policy/policy.h"
#include "policy/segment.h"

enum pol_gist_mode { POL_GIST_NONE = 0, POL_GIST_POOLED, POL_GIST_LEARNED };

/* Eviction scores; POL_EV_NONE never evicts. */
enum pol_evict {
    POL_EV_NONE = 0,
    POL_EV_WINDOW,  /* oldest first, reported as "window" */
    POL_EV_RECENCY, /* oldest first, reported as "recency" */
    POL_EV_H2O,
    POL_EV_TOVA,
    POL_EV_TRIM,
};

#define POL_NONE   UINT32_MAX
#define LEVEL_GONE 255 /* a span whose rows were all evicted */
#define SPAN_BUSY  2u  /* a span whose learned gists are being made */

/* Span flags. */
#define POL_SPAN_GISTED_RAW 1u /* learned gist rows kept as raw-kind rows (relabel refused) */
#define POL_SPAN_EXPANDED   4u /* raw again after a re-expansion */

/* A closed sentence, or a run of them after a merge. */
typedef struct pol_span {
    uint32_t first, last;   /* text positions [first, last] */
    uint32_t gfirst, glast; /* its learned gist tokens' positions (gfirst POL_NONE: none) */
    uint32_t tokens;        /* text tokens it stands for */
    uint8_t level;          /* 0 raw, 1 gist, 2+ gists of gists */
    uint8_t flags;
    uint8_t thought_end; /* a thought ends with this sentence */
    uint8_t pad;
} pol_span_t;

/* The positions a span occupies: its text and its gist tokens. */
static inline uint32_t pol_span_end(const pol_span_t *s)
{
    return s->gfirst != POL_NONE && s->glast > s->last ? s->glast : s->last;
}

struct pol {
    char name[16];
    kv_store_t *st;
    uint32_t sid;
    pol_model_t model;
    pol_runner_t runner;
    pol_emit_fn emit;
    void *emit_ctx;

    /* parameters */
    uint32_t sinks;      /* pinned first positions */
    uint32_t recent;     /* pinned last positions */
    float recent_frac;   /* or this fraction of the rows the soft watermark holds, if more */
    uint32_t recent_eff; /* the recent window in force for the step being taken */
    float low;           /* a watermark round compacts down to low x the soft watermark */
    uint32_t gist_rows;  /* pooled rows per sentence */
    uint32_t merge_k;    /* gist groups per merge (0: no merges) */
    uint32_t levels;     /* highest level a merge makes */
    uint32_t min_gist;   /* raw tokens a pooled gist step takes at least */
    int gist_mode;       /* enum pol_gist_mode */
    int evict;           /* enum pol_evict */
    bool acc;            /* attention accumulators on */
    bool no_mass_bias;   /* pooled rows weigh as one token, not as their mass */
    pol_expand_cfg_t xp; /* re-expansion (policy/expand.c) */
    bool by_thought;     /* unit=thought: compress finished thoughts, spare the open one */

    /* state */
    pol_seg_t seg;
    uint32_t open_first; /* first position of the open sentence (POL_NONE: none yet) */
    pol_span_t *spans;   /* [n_spans] closed sentences, in position order */
    uint32_t n_spans, cap_spans;
    uint32_t (*pins)[2]; /* [n_pins] pinned position ranges */
    uint32_t n_pins, cap_pins;
    uint32_t (*holds)[3]; /* [n_holds] expanded ranges [first, last] held until position [2] */
    uint32_t n_holds, cap_holds;
    pol_stats_t stats;

    uint32_t done_spans; /* unit=thought: spans of finished thoughts (set by pol_step) */
    uint32_t open_start; /* and the first position of the open thought */
    bool spare_open;     /* eviction spares the open thought (pol_step's first try) */
    bool spare_gists;    /* and finished thoughts' gist and pooled rows (its first two) */

    /* scratch, grown as needed */
    kv_row_meta_t *meta; /* one lane's metadata */
    uint32_t meta_cap;
};

/* ---- policy.c ---- */
int pol_span_push(pol_t *p, const pol_span_t *s);
bool pol_pinned(const pol_t *p, uint32_t first, uint32_t last); /* overlaps a pinned range */
/* Overlaps an expanded range still held at transcript length len (policy/expand.c). */
bool pol_held(const pol_t *p, uint32_t first, uint32_t last, uint32_t len);
/* Lets go of the expanded ranges still held (not of a span being expanded): a budget that
 * cannot be kept otherwise comes first. Whether there were any (policy/expand.c). */
bool pol_holds_release(pol_t *p);
/* Parses an expand_* parameter (policy/expand.c): 1 when key is not one, else 0 or an error. */
int pol_expand_param(pol_t *p, const char *key, const char *value, err_info_t *e);
size_t pol_session_bytes(pol_t *p);
/* Bytes the session may still grow by under its own and the store's hard limits. */
size_t pol_session_avail(pol_t *p);
void pol_emit_event(pol_t *p, pol_event_t *ev);
uint32_t pol_transcript_len(const pol_t *p);

/* ---- steps.c: the compaction steps ---- */

/* One step of the progressive schedule aiming to free `want` bytes: pooled gists of the
 * oldest eligible raw sentences, else a merge of the oldest run of gists, else eviction by
 * the policy's score. *progress says whether any row went. Learned gists are never made
 * here: they follow their sentence (pol_close_sentence). */
int pol_step(pol_t *p, size_t want, int reason, bool *progress, err_info_t *e);

/* Pools the level-0 spans [i0, i1] (consecutive in p->spans) into gist rows; pins ignored
 * (the caller chose them). ERR_BUDGET when the store refused (nothing changed). */
int pol_pool_spans(pol_t *p, uint32_t i0, uint32_t i1, int reason, err_info_t *e);

/* Closes the open sentence at position `last` (inclusive): records the span and, with
 * learned gists, runs them and drops the sentence's raw rows. */
int pol_close_sentence(pol_t *p, uint32_t last, bool thought, err_info_t *e);

/* Zeroes every attention accumulator of the session (TOVA's "last step only"). */
void pol_zero_acc(pol_t *p);

uint32_t pol_n_head_kv(const pol_t *p);
/* First index in m[0..n) whose position is >= x. */
uint32_t pol_lower_pos(const kv_row_meta_t *m, uint32_t n, float x);
/* Sets the accumulators of rows [r0, r0+n) of lane l to v[0..n). */
void pol_acc_write(pol_t *p, uint32_t l, uint32_t r0, uint32_t n, const float *v);

/* Reads lane l's metadata into p->meta; returns its rows through *n. */
int pol_lane_meta(pol_t *p, uint32_t l, uint32_t *n, err_info_t *e);

#endif
