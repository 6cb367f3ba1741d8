/*
 * daemon/dmn_impl.h — the daemon's insides, shared by the daemon's .c files and nobody else.
 *
 * One dmn_t holds everything: the model, the KV store, the sessions, the scheduler's
 * scratch, the socket and the counters behind `stats`. Sessions run at most one request at
 * a time (dmn_active_t); their tokens wait in a pending queue until a scheduler step
 * forwards them, and the step answers the request's client as it goes (token events, a
 * final reply).
 *
 * Files: server.c (socket, loop, replies, logging), handlers.c (requests), session.c
 * (sessions, tokens, chat templates), sched.c (the batched step, through the session runtime,
 * runtime/runtime.h), policy.c (the sessions' policies and their events), stats.c
 * (figures), snapshot.c (snapshots), auth.c (CURVE, the allow list, the ZAP handler, session
 * ownership and request rates). Threads: the
 * daemon's one thread. Errors: 0 or a negative ERR_* code with a message in an err_info_t; a failed
 * request is answered with an Error reply.
 */
#ifndef GISTD_DAEMON_DMN_IMPL_H
#define GISTD_DAEMON_DMN_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "daemon/gistd.h"
#include "kvstore/kv_pool.h"
#include "kvstore/kvstore.h"
#include "model/llama.h"
#include "model/sampler.h"
#include "policy/policy.h"
#include "runtime/runtime.h"
#include "proto/gistd.pb-c.h"

#define DMN_VERSION      "gistd 0.1"
#define DMN_PROTOCOL     1
#define DMN_MAX_STOP     16  /* stop strings per Generate */
#define DMN_MAX_STOP_LEN 256 /* bytes per stop string */
#define DMN_NAME_LEN     64
#define DMN_RATE_RING    256
#define DMN_MAX_PARAMS   32 /* policy parameters per session */
#define DMN_PARAM_LEN    64 /* bytes per parameter key or value */
#define DMN_CRED_LEN     48 /* a credential: a CURVE public key in z85 (40 chars), "" locally */

/* A client, as the ROUTER socket names it, and who it is (auth.c). */
typedef struct dmn_peer {
    uint8_t len;
    uint8_t id[255];
    char cred[DMN_CRED_LEN]; /* its credential: its CURVE public key (z85), "" without CURVE */
    bool admin;              /* its key is marked admin on the allow list */
    bool revoked;            /* its key was taken off the allow list since it connected */
} dmn_peer_t;

/* An allow-list entry: a client public key (z85) and whether it may run daemon-wide work. */
typedef struct dmn_allow {
    char key[DMN_CRED_LEN];
    bool admin;
} dmn_allow_t;

/* A token bucket for the requests of one credential from one address. */
typedef struct dmn_bucket {
    char cred[DMN_CRED_LEN];
    char addr[64];
    double tokens, t; /* tokens left at time t */
} dmn_bucket_t;

/* Positions a policy must not compact unless the client asks. */
typedef struct dmn_pins {
    uint32_t sink_tokens;   /* the first N positions (the policy's `sinks`) */
    uint32_t recent_tokens; /* the last N positions (the policy's `recent`) */
    bool system_prompt;     /* every position appended with the system role */
} dmn_pins_t;

/* A chat template: how a turn of each role is wrapped (index: Gistd__Role). */
typedef struct dmn_tmpl {
    const char *name;
    const char *prefix[4];
    const char *suffix[4];
    const char *stop; /* ends an assistant turn (a stop string for ROLE_ASSISTANT), or NULL */
    /* the prefix of a user turn right after a system turn, when the system turn opens it
     * (Llama 2's <<SYS>> inside the first [INST], Gemma's system text in the first user
     * turn); NULL: the user prefix */
    const char *user_after_system;
} dmn_tmpl_t;

#define DMN_TMPL_NAMES "none, chatml, llama3, llama2, gemma, phi3, zephyr, plain"

typedef enum dmn_req_kind {
    DMN_REQ_NONE = 0,
    DMN_REQ_APPEND,
    DMN_REQ_GENERATE,
    DMN_REQ_SCORE,
} dmn_req_kind_t;

/* The request a session is running, and what it has done so far. */
typedef struct dmn_active {
    dmn_req_kind_t kind;
    dmn_peer_t peer;
    uint64_t id;
    uint32_t prompt_left;   /* this request's own tokens still pending (the queue's tail) */
    uint32_t pos_first;     /* first position it stored (UINT32_MAX: none yet) */
    int role;               /* an append's role (Gistd__Role) */
    bool turn_in;           /* a generate whose prompt is a client's turn (expanded after) */
    uint32_t prompt_tokens; /* tokens forwarded before the first sample */
    bool peer_gone;         /* the client went away: finish without replying */
    /* generate */
    uint32_t max_tokens, n_gen;
    mdl_sampler_t *smp;
    char *stop[DMN_MAX_STOP];
    size_t stop_len[DMN_MAX_STOP];
    uint32_t n_stop;
    size_t stop_max;
    char *text; /* generated text */
    size_t text_len, text_cap;
    /* score */
    uint32_t score_first, n_score; /* positions [score_first, score_first + n_score) */
    int32_t *score_tok;
    float *logprob;
    /* usage */
    double t_arrive, t_start, t_prefill, t_first;
    double t_progress; /* the last keep-alive sent (server.c) */
    uint32_t compactions;
    int64_t bytes_freed;
} dmn_active_t;

typedef struct dmn_session {
    struct dmn *owner;
    uint32_t id; /* the wire id */
    rt_sess_t rt; /* the runtime's session: the store's id, the policy, positions, logits */
    char name[DMN_NAME_LEN];
    char cred[DMN_CRED_LEN]; /* the credential that opened it, its owner ("": local) */
    char pol_name[32];
    char param_key[DMN_MAX_PARAMS][DMN_PARAM_LEN], param_value[DMN_MAX_PARAMS][DMN_PARAM_LEN];
    uint32_t n_params;
    dmn_pins_t pins;
    const dmn_peer_t *ev_peer; /* where compaction events go when not to the running request */
    uint64_t ev_id;
    const dmn_tmpl_t *tmpl;
    mdl_sampler_cfg_t sampling; /* defaults for Generate */
    bool add_bos;
    /* tokens: rt.n_past stored in the KV store, then pend[head .. head + n_pend) waiting */
    int32_t *pend;
    uint32_t pend_head, n_pend, pend_cap;
    bool text_started; /* a piece of text has been appended or generated */
    bool snap_kept;    /* its snapshot was asked for (or written by the idle timeout): its
                        * files outlive a close unless the client says forget */
    int last_role;     /* the role of the last text appended (Gistd__Role) */
    dmn_active_t act;
    /* figures */
    uint64_t prompt_tokens, generated_tokens, events_dropped;
    uint32_t compactions;
    int64_t bytes_freed;
    uint32_t expansions;
    uint64_t expand_tokens;
    double t_last;         /* last activity */
    double tps;            /* decode tokens/s of the last generate */
    uint64_t shrunk_epoch; /* dmn_shrink's mark: asked once per pass */
    uint32_t budget_waits; /* steps waited in a row for rows others reserved (sched.c) */
} dmn_session_t;

typedef struct dmn_counters {
    uint64_t requests, errors, events_dropped, clients_gone, budget_refusals;
    uint64_t steps, items, tokens_generated, tokens_prefilled;
    uint64_t decode_steps, decode_items; /* steps that decoded generated tokens, and those tokens */
    uint64_t compactions;
    uint64_t compactions_by_method[POL_N_METHODS];
    int64_t bytes_freed;
    uint64_t expansions, expand_tokens; /* re-expansions (not counted as compactions) */
    int64_t expand_bytes;
    double expand_ms;
} dmn_counters_t;

struct dmn {
    dmn_cfg_t cfg;
    char *model_path, *snapshot_dir, *listen, *policy;
    char endpoint[256];
    mdl_t *model;
    const mdl_hparams_t *hp;
    const tok_t *tok;
    const dmn_tmpl_t *file_tmpl; /* sessions' default: from tokenizer.chat_template */
    kv_store_t *store;
    uint32_t n_lane;
    rt_t *rt;           /* the session runtime over model and store */
    pol_model_t pm;     /* what policies know of the model */
    void *zctx, *sock;
    dmn_session_t **sess; /* in creation order */
    uint32_t n_sess, cap_sess;
    uint32_t next_id;
    bool stopping;
    dmn_session_t **slot_sess; /* [n_sess]: the session of each slot of the step */
    bool planning;             /* a step's slots are being chosen (their rows reserved) */
    uint32_t cap_slot_sess;
    uint8_t *out; /* packed reply */
    size_t out_cap;
    /* When set, packed replies go here instead of the socket (the request fuzzer's fast
     * path: no socket traffic); its return value is dmn_send's. */
    int (*send_hook)(void *ctx, const dmn_peer_t *to, const uint8_t *p, size_t len);
    void *send_ctx;
    dmn_counters_t c;
    double t_start;
    uint64_t epoch;     /* dmn_shrink passes */
    size_t session_min; /* the smallest usable session budget (dmn_session_min_bytes) */
    double t_idle;      /* last idle sweep */
    struct {
        double t, dt;
        uint32_t dec, pre;
    } rate[DMN_RATE_RING]; /* the last steps: when, how long, tokens decoded and prefilled */
    uint32_t rate_head;
    /* access (auth.c) */
    bool curve;         /* CURVE on: credentials are client keys */
    void *zap;          /* the ZAP handler's REP socket, or NULL */
    void *mon;          /* PAIR socket: the socket's failed handshakes, or NULL */
    dmn_allow_t *allow; /* the allow list */
    uint32_t n_allow, cap_allow;
    dmn_bucket_t *buckets; /* request rates */
    uint32_t n_buckets, cap_buckets;
    double req_rate, req_burst;          /* requests/s and bucket size (req_rate 0: no limit) */
    uint32_t max_client_sessions;        /* 0: no limit */
    size_t budget_max;           /* the highest limit SetBudget may set, global or a session's */
    const char *budget_max_from; /* what set it: an option, or the machine's memory */
    uint64_t refused_rate, refused_perm; /* requests refused */
};

/* ---- server.c ---- */
double dmn_now(void);
/* The machine's physical memory in bytes (SIZE_MAX when the system does not say). */
size_t dmn_phys_bytes(void);
void dmn_log(const dmn_t *d, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Packs and sends r to peer without blocking. 0; ERR_BUSY when the peer's queue is full
 * (the reply is dropped and counted); ERR_NOTFOUND when the peer is gone. */
int dmn_send(dmn_t *d, const dmn_peer_t *to, const Gistd__Reply *r);
/* Sends a final Error reply for request id (counted in errors). */
void dmn_send_error(dmn_t *d, const dmn_peer_t *to, uint64_t id, uint32_t session,
                    const err_info_t *e);
void dmn_send_errorf(dmn_t *d, const dmn_peer_t *to, uint64_t id, uint32_t session, int code,
                     const char *fmt, ...) __attribute__((format(printf, 6, 7)));

/* ---- auth.c ---- */
/* Whether ep is a loopback tcp address, ipc:// or inproc://. */
bool dmn_endpoint_is_local(const char *ep);
/* Resolves the limits and, with CURVE, loads the keys, starts the ZAP handler and makes the
 * socket a CURVE server; before the socket binds. */
int dmn_auth_init(dmn_t *d, err_info_t *e);
void dmn_auth_fini(dmn_t *d);
/* Stops watching the socket's handshakes (before the socket closes; idempotent). */
void dmn_auth_stop_monitor(dmn_t *d);
/* Loads the --allow-keys file again (SIGHUP): the new list replaces the old one only when
 * it loads whole. Connections of keys no longer listed get ERR_PERM from then on. */
int dmn_auth_reload(dmn_t *d, err_info_t *e);
/* Answers the ZAP requests waiting and logs failed handshakes (non-blocking). */
void dmn_zap_serve(dmn_t *d);
/* Sets p's credential from its frames' User-Id (NULL: none), its admin mark, and whether
 * its key has left the allow list. */
void dmn_peer_identify(const dmn_t *d, dmn_peer_t *p, const char *user_id);
/* Whether p may run daemon-wide work (always without CURVE). */
bool dmn_peer_admin(const dmn_t *d, const dmn_peer_t *p);
/* Whether p may use session s: its owner, or an admin. */
bool dmn_peer_owns(const dmn_t *d, const dmn_peer_t *p, const dmn_session_t *s);
/* Whether p may read or write s's text (transcript, append, generate, score): its owner
 * alone (everyone without CURVE). Admin keys manage every session, not its conversation. */
bool dmn_peer_owns_text(const dmn_t *d, const dmn_peer_t *p, const dmn_session_t *s);
/* Sessions owned by cred. */
uint32_t dmn_cred_sessions(const dmn_t *d, const char *cred);
/* Takes a token from the bucket of (cred, addr): 0, or ERR_RATE with *wait_s until one is
 * there. */
int dmn_rate_take(dmn_t *d, const char *cred, const char *addr, double now, double *wait_s);

/* ---- handlers.c ---- */
/* Decodes one request payload, answers it (or starts it) and frees the decoded message. */
void dmn_handle(dmn_t *d, const dmn_peer_t *from, const uint8_t *payload, size_t len);
/* The id of a request payload read without decoding it (field 1), 0 when it has none. */
uint64_t dmn_request_peek_id(const uint8_t *payload, size_t len);

/* ---- session.c ---- */
/* The template of a name (DMN_TMPL_NAMES), or NULL. */
const dmn_tmpl_t *dmn_tmpl_find(const char *name);

/* The template family of a model file's tokenizer.chat_template (Jinja text, not run: the
 * family is told by its markers), or NULL when none is recognised. */
const dmn_tmpl_t *dmn_tmpl_detect(const char *text, size_t len);
dmn_session_t *dmn_session_find(const dmn_t *d, uint32_t id);
/* Opens a session (id 0: the next free id). Checks every parameter, and that the budget
 * holds at least one token. */
int dmn_session_open(dmn_t *d, const Gistd__OpenSession *o, uint32_t id, dmn_session_t **out,
                     err_info_t *e);
/* Ends its request (reply CANCELLED), frees it and drops it from the table. */
void dmn_session_close(dmn_t *d, dmn_session_t *s);
/* The sampler settings of w (NULL: the session's defaults) in *c. Every field of w is checked
 * against its range first (the window against the model's context, top_k against its
 * vocabulary): ERR_INVAL naming the field and its range. */
int dmn_session_sampling(const dmn_t *d, const dmn_session_t *s, const Gistd__Sampling *w,
                         mdl_sampler_cfg_t *c, err_info_t *e);
/* Appends tokens to the pending queue. */
int dmn_session_push(dmn_session_t *s, const int32_t *tok, uint32_t n);
/* Tokenizes text as a turn of role (wrapped by the session's template; BOS first when the
 * session is empty) and appends it to the pending queue; *n_added says how many tokens. */
int dmn_session_push_text(dmn_t *d, dmn_session_t *s, const uint8_t *text, size_t len, int role,
                          bool special, uint32_t *n_added, err_info_t *e);
/* Forgets the last n pending tokens. */
void dmn_session_drop_tail(dmn_session_t *s, uint32_t n);
/* Token ids of positions [first, first + n) of transcript + pending. */
int dmn_session_tokens(const dmn_t *d, const dmn_session_t *s, uint32_t first, uint32_t n,
                       int32_t *out);
/* Frees the request's resources and marks the session idle. */
void dmn_active_clear(dmn_active_t *a);

/* ---- sched.c ---- */
/* Whether some session has work for the scheduler. */
bool dmn_sched_busy(const dmn_t *d);
/* One batched step over every session with work. */
void dmn_sched_step(dmn_t *d);
/* Ends the session's request with a final reply: a Done (generate), an Ack (append), a
 * ScoreReply (score). */
void dmn_req_finish(dmn_t *d, dmn_session_t *s, Gistd__StopReason reason, const char *stop,
                    size_t stop_len);
/* Ends the session's request with an Error reply; its prompt tokens still pending are
 * dropped (generated ones are kept). */
void dmn_req_fail(dmn_t *d, dmn_session_t *s, const err_info_t *e);
/* Brings the session (NULL: the whole store) under `target` bytes through the policies;
 * *freed gets what was freed. */
int dmn_shrink(dmn_t *d, dmn_session_t *s, size_t target, const char *reason, int64_t *freed,
               err_info_t *e);
/* Fills a Usage message for the session's request. */
void dmn_usage(const dmn_t *d, const dmn_session_t *s, Gistd__Usage *u);

/* ---- policy.c ---- */
/* Makes s's runtime session for its KV session kv: the policy (s->pol_name, its parameters and
 * pins) and where its compaction events go. */
int dmn_policy_open(dmn_t *d, dmn_session_t *s, uint32_t kv, err_info_t *e);
/* Re-expands s's compressed spans: those of [first, last] (span true), or the ones most
 * relevant to its last tokens (max_tokens 0: the policy's bound); its events go where its
 * compaction events go; the time is counted. */
int dmn_expand(dmn_t *d, dmn_session_t *s, bool span, uint32_t first, uint32_t last,
               uint32_t max_tokens, int reason, rt_expand_result_t *out, err_info_t *e);
/* After a turn is stored: the automatic expansion when the session's policy has it on (a
 * refusal is logged, never an error of the request). */
void dmn_expand_turn(dmn_t *d, dmn_session_t *s);
void dmn_policy_close(dmn_session_t *s);

/* ---- stats.c ---- */
/* Fills info for s; strings point into s. */
void dmn_session_info(const dmn_t *d, const dmn_session_t *s, Gistd__SessionInfo *info,
                      Gistd__TierBytes *tiers);
/* Answers a Stats request (with the figures of every session `to` may use when asked). */
void dmn_send_stats(dmn_t *d, const dmn_peer_t *to, uint64_t id, bool sessions);
/* Records a step for the tokens/s figures. */
void dmn_rate_note(dmn_t *d, double t, double dt, uint32_t dec, uint32_t pre);

/* ---- snapshot.c ---- */
/* Writes s to the snapshot folder; *path (may be NULL) gets the file's path (malloc'd). */
int dmn_snapshot_write(dmn_t *d, dmn_session_t *s, char **path, err_info_t *e);
/* Restores session id from the snapshot folder: under its own id (ERR_EXISTS while it is
 * live), or under a new one when as_new. */
int dmn_snapshot_restore(dmn_t *d, uint32_t id, bool as_new, dmn_session_t **out, err_info_t *e);
/* The credential that owns session id's snapshot, from a whole file (checksum verified) into
 * owner[cap]: 0, ERR_NOMEM, or ERR_NOTFOUND when there is no such file or it does not read
 * as a snapshot of that session. */
int dmn_snapshot_owner(const dmn_t *d, uint32_t id, char *owner, size_t cap);
/* Restores every session found in the snapshot folder but the closed ones (logging the ones
 * that fail). */
void dmn_snapshot_restore_all(dmn_t *d);
/* Removes session id's snapshot files and its closed mark. */
void dmn_snapshot_remove(dmn_t *d, uint32_t id);
/* Marks s's snapshot as a closed session's (DIR/session-<id>.closed: not restored at start-up,
 * listed by `sessions`, brought back by Restore), before s is closed. */
int dmn_snapshot_mark_closed(dmn_t *d, const dmn_session_t *s, err_info_t *e);
/* Whether session id is closed with its snapshot kept. */
bool dmn_snapshot_closed_has(const dmn_t *d, uint32_t id);
/* Removes the closed mark of session id (it is live again). */
void dmn_snapshot_unmark_closed(dmn_t *d, uint32_t id);
/* A closed session, as its mark describes it. */
typedef struct dmn_closed {
    uint32_t id, tokens;
    double age_s; /* since it was closed */
    char name[DMN_NAME_LEN];
    char cred[DMN_CRED_LEN];
} dmn_closed_t;
/* The closed sessions of the snapshot folder that are not live; *out malloc'd ([return]). */
uint32_t dmn_snapshot_closed(const dmn_t *d, dmn_closed_t **out);

#endif
