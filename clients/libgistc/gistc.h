/*
 * clients/libgistc/gistc.h — libgistc, a small C client for gistd.
 *
 * A gc_client_t is one DEALER connection to a daemon (proto/gistd.proto underneath; this
 * header hides it). gc_connect does the versioned handshake, so a client that connects has
 * a daemon that answers. Calls block until their final reply or until the client's timeout
 * passes with no reply at all (ERR_TIMEOUT, with a message naming the endpoint). The daemon
 * sends a keep-alive four times a second while it prefills for a request, so the timeout only
 * passes when the daemon is gone or stuck, however long a prefill takes.
 *
 * Generation streams: gc_generate calls on_token for every token as it arrives. To run
 * several generations at once (one per session), start each with gc_generate_start and
 * collect each with gc_wait; while any wait runs, the events of every running request go to
 * their own callbacks. Outstanding requests are matched to replies by request id.
 *
 * CURVE: gc_connect_opts takes the daemon's public key and this client's key pair (z85 text,
 * as `gistd --keygen` writes them; gc_key_read reads such a file). A daemon that refuses the
 * key, or a handshake that fails because one side uses CURVE and the other does not, ends
 * the waiting call with ERR_PERM and a message saying so, not with a timeout.
 *
 * Ownership: strings and arrays a call returns are malloc'd and freed by the caller (or by
 * the matching gc_*_free). Threads: a client belongs to one thread at a time; use one client
 * per thread. Errors: 0 or a negative ERR_* code (common/err.h); the daemon's error replies
 * come back as their code with the daemon's message in e.
 */
#ifndef GISTD_CLIENTS_GISTC_H
#define GISTD_CLIENTS_GISTC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

#define GC_DEFAULT_ENDPOINT   "tcp://127.0.0.1:5557"
#define GC_DEFAULT_TIMEOUT_MS 30000

typedef struct gc_client gc_client_t;

typedef enum gc_role {
    GC_ROLE_NONE = 0,
    GC_ROLE_SYSTEM,
    GC_ROLE_USER,
    GC_ROLE_ASSISTANT
} gc_role_t;

typedef enum gc_stop {
    GC_STOP_NONE = 0,
    GC_STOP_LENGTH,    /* max_tokens */
    GC_STOP_EOS,       /* end-of-sequence token */
    GC_STOP_STRING,    /* a stop string */
    GC_STOP_CANCELLED, /* cancelled, or the daemon stopping */
} gc_stop_t;

typedef struct gc_model_info {
    char server[64];
    uint32_t version;
    char name[128];
    uint32_t n_vocab, n_ctx, n_embd, n_layer, n_head, n_head_kv, head_dim, n_gist;
    int32_t bos, eos;
    bool retention;
    uint64_t max_request_bytes;
} gc_model_info_t;

/* The sampler chain; zero turns a filter off (temp 0: greedy). */
typedef struct gc_sampling {
    float temp;
    int32_t top_k;
    float top_p, min_p, repeat_penalty;
    int32_t repeat_last_n;
    uint64_t seed;
} gc_sampling_t;

/* The daemon's defaults: temp 0.8, top_k 40, top_p 0.95, min_p 0.05, no penalty, seed 0. */
void gc_sampling_default(gc_sampling_t *s);

typedef struct gc_open_opts {
    const char *policy; /* NULL: "full" */
    const char *const *param_keys, *const *param_values;
    uint32_t n_params;
    size_t budget_bytes; /* 0: the daemon's default */
    size_t soft_bytes;   /* 0: 7/8 of the budget */
    uint32_t sink_tokens, recent_tokens;
    bool pin_system;
    const char *chat_template;     /* NULL: "none" */
    const gc_sampling_t *sampling; /* NULL: the daemon's defaults */
    bool no_bos;
    const char *name;
} gc_open_opts_t;

typedef struct gc_usage {
    uint32_t prompt_tokens, generated_tokens, compactions;
    uint64_t kv_bytes;
    int64_t bytes_freed; /* by compactions (negative: they stored more than they freed) */
    double queue_ms, prefill_ms, first_token_ms, total_ms;
} gc_usage_t;

typedef struct gc_compaction {
    const char *action; /* "gist", "merge", "evict", "expand" */
    const char *method; /* "learned", "pooled", "window", "h2o", "tova", "trim", "recency",
                           "prefill" (an expansion) */
    const char *reason; /* "sentence", "watermark", "budget", "shrink", "request", "expand",
                           "turn" */
    uint32_t first, last, level, lanes;
    uint32_t model_pos; /* expansions: the model position of the first token re-prefilled */
    uint64_t rows_before, rows_after, tokens;
    int64_t bytes_freed; /* session_bytes_before - session_bytes */
    uint64_t session_bytes_before, session_bytes;
} gc_compaction_t;

/* Streaming callbacks (any may be NULL); the pointers they get live for the call only. A
 * callback must not call into the client (return nonzero from on_token to stop instead). */
typedef struct gc_callbacks {
    void *ctx;
    /* A token and its text piece (len bytes; piece[len] is 0). Return nonzero to cancel the
     * generation (it then ends with GC_STOP_CANCELLED). */
    int (*on_token)(void *ctx, uint32_t session, int32_t id, const char *piece, size_t len);
    void (*on_compaction)(void *ctx, uint32_t session, const gc_compaction_t *c);
} gc_callbacks_t;

typedef struct gc_gen_opts {
    uint32_t session;
    uint32_t max_tokens;
    const char *prompt; /* appended first (NULL or "": none) */
    size_t prompt_len;  /* 0: strlen(prompt) */
    gc_role_t prompt_role;
    gc_role_t role;                /* GC_ROLE_ASSISTANT: open an assistant turn */
    const gc_sampling_t *sampling; /* NULL: the session's defaults */
    const char *const *stop;
    uint32_t n_stop;
} gc_gen_opts_t;

typedef struct gc_result {
    gc_stop_t reason;
    char *text; /* the generated text, NUL-terminated (malloc'd; gc_result_free) */
    size_t text_len;
    char *stop; /* GC_STOP_STRING: the stop string that matched, NUL-terminated (or NULL) */
    size_t stop_len;
    uint32_t n_tokens; /* tokens streamed */
    gc_usage_t usage;
} gc_result_t;

void gc_result_free(gc_result_t *r);

typedef struct gc_session_info {
    uint32_t id;
    char name[64], state[16], policy[32], chat_template[16]; /* state "closed": not live */
    char turn_stop[64]; /* what ends an assistant turn in the session's template ("": none) */
    uint64_t bytes, peak_bytes, hard_bytes, soft_bytes;
    uint32_t tokens, pending, compactions;
    uint64_t rows, prompt_tokens, generated_tokens, events_dropped;
    int64_t bytes_freed;
    uint32_t expansions;    /* spans re-expanded */
    uint64_t expand_tokens; /* tokens re-prefilled for them */
    uint64_t tier_f32, tier_f16, tier_q8_0;
    double compression, tokens_per_s, idle_s; /* closed sessions: idle_s since the close */
} gc_session_info_t;

#define GC_MAX_METHODS 16

typedef struct gc_stats {
    uint64_t kv_budget_bytes, kv_soft_bytes, kv_used_bytes, kv_peak_bytes;
    uint32_t sessions, max_sessions, threads;
    uint64_t session_budget_bytes;
    uint64_t tier_f32, tier_f16, tier_q8_0;
    uint64_t rows, blocks, transcript_bytes, tokens;
    uint64_t transcript_disk_bytes; /* spilled to disk, not charged */
    double fragmentation;
    uint64_t je_allocated, je_active, je_resident;
    uint64_t steps, tokens_generated, tokens_prefilled;
    double decode_tokens_per_s, prefill_tokens_per_s, avg_batch, uptime_s;
    uint64_t requests, errors, events_dropped, clients_gone, budget_refusals;
    uint64_t compactions, kv_bytes_per_token;
    uint64_t rate_refusals, permission_refusals; /* requests refused by limits and owners */
    bool curve;                                  /* the daemon authenticates clients by key */
    uint64_t session_min_bytes;                  /* the smallest usable session budget */
    double idle_timeout_s;                       /* idle sessions close after this (0: never) */
    uint64_t expansions, expand_tokens;          /* spans re-expanded, tokens re-prefilled */
    int64_t expand_bytes;                        /* bytes the expansions added */
    double expand_ms;                            /* time spent on them */
    /* steps that decoded a generated token, and the tokens they decoded: their ratio is
     * the decode batch (avg_batch also counts prompt tokens and one-session steps) */
    uint64_t decode_steps, decode_items;
    struct {
        char method[16];
        uint64_t count;
    } compactions_by_method[GC_MAX_METHODS]; /* [n_compactions_by_method] */
    uint32_t n_compactions_by_method;
    int64_t bytes_freed;
    char model[256];
    gc_session_info_t *session_list; /* [n_session_list], when asked for (gc_stats_free) */
    uint32_t n_session_list;
} gc_stats_t;

void gc_stats_free(gc_stats_t *s);

typedef struct gc_budget {
    uint64_t hard_bytes, soft_bytes, used_bytes;
    int64_t bytes_freed;
} gc_budget_t;

/* ---- connection ---- */

#define GC_KEY_LEN 41 /* a CURVE key as z85 text, with its NUL */

typedef struct gc_connect_opts {
    const char *endpoint; /* NULL or "": GC_DEFAULT_ENDPOINT */
    int timeout_ms;       /* <= 0: GC_DEFAULT_TIMEOUT_MS */
    /* CURVE, all three or none (z85 text, 40 characters each) */
    const char *server_key; /* the daemon's public key (its PREFIX.pub) */
    const char *public_key; /* this client's key pair (PREFIX.pub, PREFIX.key) */
    const char *secret_key;
} gc_connect_opts_t;

/* Connects and shakes hands. ERR_TIMEOUT when the daemon does not answer within timeout_ms
 * (<= 0: GC_DEFAULT_TIMEOUT_MS); ERR_UNSUPPORTED when it speaks another protocol version. */
int gc_connect(const char *endpoint, int timeout_ms, gc_client_t **out, err_info_t *e);
/* gc_connect with CURVE keys when o names them (ERR_INVAL for a malformed key or only some of
 * the three; ERR_PERM when the daemon refuses the handshake). */
int gc_connect_opts(const gc_connect_opts_t *o, gc_client_t **out, err_info_t *e);
/* Reads a key file: its first line that is not blank or a '#' comment, 40 z85 characters. */
int gc_key_read(const char *path, char out[GC_KEY_LEN], err_info_t *e);
void gc_disconnect(gc_client_t **c);
/* The longest wait for a reply (milliseconds, <= 0: the default). */
void gc_set_timeout(gc_client_t *c, int timeout_ms);
const gc_model_info_t *gc_model(const gc_client_t *c);
const char *gc_endpoint(const gc_client_t *c);

/* ---- sessions ---- */

/* o NULL: every default. */
int gc_open(gc_client_t *c, const gc_open_opts_t *o, uint32_t *session, err_info_t *e);
/* Closes a session. A snapshot written on request (gc_snapshot) or by the daemon's idle
 * timeout stays, listed as a closed session that gc_restore brings back, unless forget. */
int gc_close(gc_client_t *c, uint32_t session, err_info_t *e);
int gc_close_opts(gc_client_t *c, uint32_t session, bool forget, err_info_t *e);
/* Stops the session's running request. */
int gc_cancel(gc_client_t *c, uint32_t session, err_info_t *e);
int gc_session_info(gc_client_t *c, uint32_t session, gc_session_info_t *out, err_info_t *e);
/* Every session (*list malloc'd; free it). */
int gc_sessions(gc_client_t *c, gc_session_info_t **list, uint32_t *n, err_info_t *e);

/* ---- model work ---- */

/* Appends text (len 0: strlen) as a turn of role and waits until it is prefilled. */
int gc_append(gc_client_t *c, uint32_t session, const char *text, size_t len, gc_role_t role,
              gc_usage_t *usage, err_info_t *e);
int gc_append_tokens(gc_client_t *c, uint32_t session, const int32_t *ids, size_t n,
                     gc_usage_t *usage, err_info_t *e);

/* Generates, streaming to cb (may be NULL); res (may be NULL) gets the outcome. */
int gc_generate(gc_client_t *c, const gc_gen_opts_t *o, const gc_callbacks_t *cb, gc_result_t *res,
                err_info_t *e);
/* Starts a generation and returns at once; *req names it for gc_wait. cb is copied. */
int gc_generate_start(gc_client_t *c, const gc_gen_opts_t *o, const gc_callbacks_t *cb,
                      uint64_t *req, err_info_t *e);
/* Waits for request req to end, delivering the events of every running request meanwhile.
 * The request's error, if it ended with one, is returned here. */
int gc_wait(gc_client_t *c, uint64_t req, gc_result_t *res, err_info_t *e);

/* Log-probabilities of text's tokens (or of ids when text is NULL), each given everything
 * before it; the tokens join the session. *logprobs and *tokens are malloc'd ([*n]). */
int gc_score(gc_client_t *c, uint32_t session, const char *text, const int32_t *ids, size_t n_ids,
             float **logprobs, int32_t **tokens, size_t *n, double *total, err_info_t *e);

/* What an expansion did (gc_expand). */
typedef struct gc_expand_result {
    uint32_t spans, candidates;
    uint64_t tokens;        /* re-prefilled */
    int64_t bytes;          /* the session's bytes after less before */
    uint64_t session_bytes; /* after */
    double ms;
    char note[200]; /* why nothing (or less) was expanded */
} gc_expand_result_t;

/* Brings compressed spans back from the cold transcript: those overlapping [first, last]
 * (span true), or the ones most relevant to the session's last tokens (max_tokens 0: the
 * policy's bound). Events (action "expand", and compactions made for room) go to cb. */
int gc_expand(gc_client_t *c, uint32_t session, bool span, uint32_t first, uint32_t last,
              uint32_t max_tokens, const gc_callbacks_t *cb, gc_expand_result_t *out,
              err_info_t *e);

/* Compacts a span of positions now (or the last thought), with its events to cb. */
int gc_compact(gc_client_t *c, uint32_t session, uint32_t first, uint32_t last, bool last_thought,
               const gc_callbacks_t *cb, err_info_t *e);

/* ---- reading and operating ---- */

/* Positions [first, first + count) (count 0: to the end) as text and token ids (either
 * output may be NULL; both malloc'd). *total gets the transcript's length. */
int gc_transcript(gc_client_t *c, uint32_t session, uint32_t first, uint32_t count, char **text,
                  size_t *text_len, int32_t **tokens, uint32_t *n_tokens, uint32_t *total,
                  err_info_t *e);
int gc_stats(gc_client_t *c, bool sessions, gc_stats_t *out, err_info_t *e);
/* Sets a hard limit (session 0: the global one) and its soft watermark (0: 7/8 of hard). */
int gc_set_budget(gc_client_t *c, uint32_t session, size_t hard, size_t soft, gc_budget_t *out,
                  err_info_t *e);
/* Snapshots a session (0: all) into the daemon's snapshot folder; *n_done (may be NULL) says
 * how many were written. */
int gc_snapshot(gc_client_t *c, uint32_t session, uint32_t *n_done, err_info_t *e);
/* Brings a session back from its snapshot as a live session: under its own id (ERR_EXISTS
 * while that is live), or as_new under a new id, *restored (may be NULL) gets which. */
int gc_restore(gc_client_t *c, uint32_t session, err_info_t *e);
int gc_restore_opts(gc_client_t *c, uint32_t session, bool as_new, uint32_t *restored,
                    err_info_t *e);

/* ---- helpers ---- */

/* "123", "64K", "1.5M", "2GiB" (powers of 1024) -> bytes. ERR_INVAL for anything else. */
int gc_parse_size(const char *s, size_t *out);
/* "1.5 MiB"-style text for a byte count, into buf. */
const char *gc_format_size(uint64_t bytes, char *buf, size_t cap);

/* ------------------------------------------------------------------ text */

/* Generated text on its way to a client: pieces come in, and what may be shown goes out as
 * valid UTF-8, held back while its tail could still become a stop string or is an unfinished
 * character, and never past a stop string. The streamed pieces join to exactly the final
 * text gc_text_final gives. */
typedef struct gc_text {
    char *raw; /* the bytes generated so far */
    size_t len, cap;
    size_t sent; /* raw bytes already passed on */
    const char *const *stop;
    unsigned n_stop;
} gc_text_t;

void gc_text_init(gc_text_t *t, const char *const *stop, unsigned n_stop);
void gc_text_fini(gc_text_t *t);
/* Adds a piece; *out (malloc'd, NUL-terminated, may be empty) gets what may now be shown. */
int gc_text_push(gc_text_t *t, const char *piece, size_t len, char **out, size_t *out_len);
/* The final text of a generation whose whole text is raw[len] and that ended on stop (NULL:
 * not on a stop string), as valid UTF-8 without the stop string (malloc'd). With from =
 * t->sent it gives what is left to show (t may be NULL for the whole text). */
int gc_text_final(const gc_text_t *t, const char *raw, size_t len, const char *stop,
                  size_t stop_len, char **out, size_t *out_len);
/* raw[len] as valid UTF-8: each byte that does not start a whole, well-formed character
 * becomes U+FFFD (malloc'd, NUL-terminated). */
char *gc_utf8_clean(const char *raw, size_t len, size_t *out_len);

#endif
