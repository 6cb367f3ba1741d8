/*
 * daemon/policy.h — the compaction policy a session consults, as a table of hooks.
 *
 * A policy decides what to compress or evict in one session's KV rows, and when. The daemon
 * calls its hooks at fixed points of a session's life: before a reservation the budget
 * refused ("free N bytes"), after every step that stored rows, when a budget is lowered or
 * the global watermark is passed ("get down to N bytes"), and on an explicit Compact
 * request. A policy acts through the KV store's verbs (kvstore/kvstore.h) on the session it
 * is given, and reports every change it makes through ctx->emit, which becomes a
 * CompactionEvent for the client and the daemon's counters.
 *
 * Policies are looked up by name (dmn_pol_find). Only `full` exists here: it keeps every row
 * and never compacts, so a reservation over budget is refused (ERR_BUDGET) and nothing
 * stored is lost. The policy/ module adds the others (gists, eviction) behind these hooks.
 *
 * Threads: the daemon's one thread. Errors: hooks return 0 or a negative ERR_* code and
 * fill e; a hook that fails must leave the session's rows as they were or report, through
 * emit, exactly what it changed.
 */
#ifndef GISTD_DAEMON_POLICY_H
#define GISTD_DAEMON_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "kvstore/kvstore.h"
#include "model/llama.h"

/* Positions a policy must not compact unless the client asks (Compact). */
typedef struct dmn_pins {
    uint32_t sink_tokens;   /* the first N positions */
    uint32_t recent_tokens; /* the last N positions */
    bool system_prompt;     /* positions appended with the system role (see dmn_pol_ctx) */
} dmn_pins_t;

/* One policy parameter, as the client sent it ("key", "value"). */
typedef struct dmn_pol_param {
    const char *key;
    const char *value;
} dmn_pol_param_t;

/* One change a policy made, reported through dmn_pol_ctx.emit. */
typedef struct dmn_compaction {
    const char *action;   /* "gist", "merge", "evict", "demote" */
    uint32_t first, last; /* the span of positions it touched */
    uint32_t level;       /* level of the rows it made (gists), 0 otherwise */
    uint64_t rows_before; /* rows of the span before and after, all lanes */
    uint64_t rows_after;
    size_t bytes_freed;
    const char *reason; /* "budget", "watermark", "sentence", "request", ... */
} dmn_compaction_t;

/* What an explicit Compact request asks for. */
typedef struct dmn_compact_req {
    bool last_thought;    /* the last finished thought */
    uint32_t first, last; /* else: this span of positions */
} dmn_compact_req_t;

/* The session as a policy sees it. Valid for the duration of one hook call. */
typedef struct dmn_pol_ctx {
    kv_store_t *store;
    uint32_t sid; /* the session's id in the store */
    const mdl_t *model;
    const dmn_pins_t *pins;
    const uint32_t *system_spans; /* [n_system][2]: [first, last] spans appended as system */
    uint32_t n_system;
    uint32_t n_past; /* positions stored (the transcript's length) */
    /* reports one change; the daemon turns it into an event and counts it */
    void (*emit)(void *ectx, const dmn_compaction_t *c);
    void *ectx;
} dmn_pol_ctx_t;

typedef struct dmn_pol_ops {
    const char *name;
    /* Makes the policy's per-session state from the client's parameters (ERR_INVAL for an
     * unknown key or a bad value, with a message). *state may be left NULL. */
    int (*create)(const dmn_pol_param_t *params, uint32_t n_params, void **state, err_info_t *e);
    void (*destroy)(void *state);
    /* A reservation needing `need` more bytes was refused by a budget: free at least that
     * much, or return ERR_BUDGET saying why not. The caller retries the reservation. */
    int (*make_room)(void *state, const dmn_pol_ctx_t *c, size_t need, err_info_t *e);
    /* Rows for positions [pos0, pos0 + n) were just stored. */
    int (*after_step)(void *state, const dmn_pol_ctx_t *c, uint32_t pos0, uint32_t n,
                      err_info_t *e);
    /* Bring the session down to at most `target` bytes, as far as the pins allow (a lowered
     * budget, the global watermark). Freeing less is not an error: the caller checks. */
    int (*shrink)(void *state, const dmn_pol_ctx_t *c, size_t target, err_info_t *e);
    /* An explicit Compact request. */
    int (*compact)(void *state, const dmn_pol_ctx_t *c, const dmn_compact_req_t *r, err_info_t *e);
    /* The state to keep in a snapshot (a malloc'd buffer, *len 0 and *buf NULL for none),
     * and back. May be NULL for a policy without state. */
    int (*save)(void *state, uint8_t **buf, size_t *len);
    int (*load)(void *state, const uint8_t *buf, size_t len, err_info_t *e);
} dmn_pol_ops_t;

/* The policy called name ("" means "full"), or NULL. */
const dmn_pol_ops_t *dmn_pol_find(const char *name);

/* Names of the known policies, separated by ", " (for messages). */
const char *dmn_pol_names(void);

#endif
