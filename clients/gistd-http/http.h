/*
 * clients/gistd-http/http.h — gistd-http, an OpenAI-compatible HTTP gateway to gistd.
 *
 * gistd-http is a client of gistd like gistctl: it speaks to the daemon only through libgistc.
 * HTTP is libmicrohttpd's, JSON is jansson's.
 *
 * Threads: libmicrohttpd runs one thread per HTTP connection (at most --max-connections of
 * them). A libgistc client belongs to one thread at a time, so the gateway keeps a pool of
 * gistd connections (gh_pool_t): a request takes one for as long as it runs and gives it back
 * after. A streamed reply is produced by a thread of its own (stream.c) that holds the
 * request's gistd connection and conversation until the generation ends; the connection
 * thread only copies the bytes it produced onto the socket. The conversation table
 * (gh_convs_t), the pool and the metrics each have their own mutex, held only for
 * bookkeeping, never across a call to gistd. The main thread waits for signals and closes
 * idle conversations.
 *
 * Conversations: the OpenAI API is stateless, so clients resend the whole conversation every
 * turn. The gateway keeps each conversation in a gistd session and remembers a hash of every
 * message it holds; a request whose messages start with a held conversation's messages
 * continues that session and appends only the new turns. A `session` field in the body or an
 * `X-Gistd-Session` header binds a request to one conversation explicitly. Turns are wrapped
 * by the session's chat template (the daemon's), never by the gateway.
 *
 * Errors: 0 or a negative ERR_* code (common/err.h) with a message in an err_info_t; the HTTP
 * side answers them in OpenAI's shape ({"error": {"message", "type", "code"}}).
 */
#ifndef GISTD_CLIENTS_GISTD_HTTP_H
#define GISTD_CLIENTS_GISTD_HTTP_H

#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "clients/libgistc/gistc.h"

/* ------------------------------------------------------------------ settings */

typedef struct gh_config {
    gc_connect_opts_t gistd;    /* endpoint, timeout and CURVE keys */
    char listen_host[256];      /* an IPv4 address or "localhost" */
    unsigned port;              /* 0: any free port */
    size_t max_body;            /* bytes in a request body; more is refused with 413 */
    unsigned max_connections;   /* HTTP connections at once; more are refused */
    unsigned max_conversations; /* sessions held for conversations; the oldest idle goes */
    double idle_s;              /* conversations idle this long are closed */
    const char *chat_template;  /* asked of the daemon for new sessions; NULL: its default */
    const char *policy;         /* the sessions' policy; NULL: the daemon's default */
    size_t session_budget;      /* the sessions' hard limit; 0: the daemon's default */
    const char *model_id;       /* the model's name in the API; NULL: the daemon's model */
} gh_config_t;

/* ------------------------------------------------------------------ gistd connections */

typedef struct gh_pool gh_pool_t;

int gh_pool_new(const gc_connect_opts_t *o, gh_pool_t **out);
void gh_pool_destroy(gh_pool_t **p);
/* A connection of its own for the calling thread (a new one when none is idle): 0, or the
 * code of the failed connect (ERR_TIMEOUT, ERR_IO, ERR_PERM ...) with its message. */
int gh_pool_get(gh_pool_t *p, gc_client_t **out, err_info_t *e);
/* Gives c back. rc is the result of its last call: after a transport failure (no answer, a
 * broken socket) the connection is closed instead, since replies may still be on their way. */
void gh_pool_put(gh_pool_t *p, gc_client_t *c, int rc);
/* The daemon's model as its last handshake described it; false before any connect. */
bool gh_pool_model(gh_pool_t *p, gc_model_info_t *out);
/* True when rc says the daemon was not reached or did not answer (HTTP 503). */
bool gh_transport_error(int rc);

/* ------------------------------------------------------------------ conversations */

typedef struct gh_convs gh_convs_t;

/* One conversation held in a gistd session. Fields other than the ones the table owns
 * (marked) belong to the request that acquired it, until it releases it. */
typedef struct gh_conv {
    uint32_t session; /* 0: not opened yet */
    bool owned;       /* the gateway opened the session (and closes it) */
    char bind[64];    /* the explicit binding, or "" */
    uint64_t *hash;   /* [n_hash] the messages the session holds, in order */
    uint32_t n_hash, cap_hash;
    uint64_t tokens;    /* the session's positions after the last turn */
    char turn_stop[64]; /* what ends an assistant turn in the session's template */
    bool busy;          /* (table) a request holds it */
    double t_used;      /* (table) when the last request released it */
} gh_conv_t;

/* Sessions the table let go of, for the caller to close with its gistd connection. */
typedef struct gh_closing {
    uint32_t session[8];
    unsigned n;
} gh_closing_t;

int gh_convs_new(unsigned max, double idle_s, gh_convs_t **out);
/* Every conversation's session that the gateway opened, in *sessions (malloc'd; [*n]). */
void gh_convs_destroy(gh_convs_t **t, uint32_t **sessions, unsigned *n);
/* The conversation for a request with messages hash[n] and binding bind (NULL or "": none),
 * marked busy: the held conversation whose messages are the longest prefix of hash, or a new
 * one (session 0). *matched gets how many of the messages it already holds. A bound
 * conversation that does not hold a prefix of hash holds 0 of them: all are new turns to it.
 * ERR_BUSY when the bound conversation is in use by another request. Sessions evicted to
 * stay under the table's limit land in gone. */
int gh_convs_acquire(gh_convs_t *t, const char *bind, const uint64_t *hash, uint32_t n,
                     gh_conv_t **out, uint32_t *matched, gh_closing_t *gone, err_info_t *e);
/* Ends a request's hold. ok: the session now holds the messages in c->hash (set by the
 * caller). Not ok: the session's contents are unknown, so the conversation is forgotten and
 * its session (when the gateway owns it) lands in gone to be closed. */
void gh_convs_release(gh_convs_t *t, gh_conv_t *c, bool ok, gh_closing_t *gone);
/* Forgets conversations idle past the limit; their owned sessions land in gone (as many as
 * fit: call again while gone fills up). */
void gh_convs_reap(gh_convs_t *t, double now, gh_closing_t *gone);
/* Forgets the least recently used idle conversation (its session lands in gone): false when
 * every conversation is in use. For a daemon that holds as many sessions as it may. */
bool gh_convs_evict(gh_convs_t *t, gh_closing_t *gone);
unsigned gh_convs_count(gh_convs_t *t);
/* The hash of a message of role (a gc_role_t) and text. */
uint64_t gh_message_hash(int role, const char *text, size_t len);

/* ------------------------------------------------------------------ metrics */

typedef enum gh_route {
    GH_R_CHAT = 0,
    GH_R_COMPLETIONS,
    GH_R_MODELS,
    GH_R_HEALTH,
    GH_R_METRICS,
    GH_R_OTHER,
    GH_N_ROUTES
} gh_route_t;

typedef struct gh_metrics gh_metrics_t;

int gh_metrics_new(gh_metrics_t **out);
void gh_metrics_destroy(gh_metrics_t **m);
/* A request on route ended with status after seconds. */
void gh_metrics_request(gh_metrics_t *m, gh_route_t route, unsigned status, double seconds);
/* The Prometheus text exposition: the daemon's figures from st (NULL: gistd did not answer),
 * then the gateway's own. Malloc'd, NUL-terminated; NULL when out of memory. */
char *gh_metrics_render(gh_metrics_t *m, const gc_stats_t *st, unsigned conversations);

/* ------------------------------------------------------------------ the gateway */

typedef struct gh {
    gh_config_t cfg;
    gh_pool_t *pool;
    gh_convs_t *convs;
    gh_metrics_t *metrics;
    uint64_t next_id; /* (atomic) for response ids */
} gh_t;

/* One chat or completion request, parsed and checked. */
typedef struct gh_msg {
    int role; /* gc_role_t */
    const char *text;
    size_t len;
} gh_msg_t;

typedef struct gh_req {
    bool chat; /* /v1/chat/completions, else /v1/completions */
    bool stream;
    gh_msg_t *msg; /* [n_msg]; the prompt of a completion is one message of role NONE */
    uint32_t n_msg;
    uint64_t *hash; /* [n_msg] */
    uint32_t max_tokens;
    gc_sampling_t sampling;
    const char *stop[4];
    unsigned n_stop;
    char bind[64];
    char model[128];
    json_t *body; /* owns the strings above */
    json_t *keep; /* owns message contents joined from parts */
} gh_req_t;

/* Reads and checks a request body (bind_header: X-Gistd-Session, may be NULL). ERR_FORMAT
 * or ERR_INVAL with a message naming the field. */
int gh_req_parse(gh_t *g, bool chat, const char *data, size_t len, const char *bind_header,
                 const gc_model_info_t *model, const char *model_id, gh_req_t **out, err_info_t *e);

void gh_req_free(gh_req_t *r);

/* What a finished turn reports. */
typedef struct gh_outcome {
    gc_stop_t reason;
    uint32_t session;
    uint32_t prompt_tokens;    /* the prompt's positions (cached ones included) */
    uint32_t cached_tokens;    /* positions the session held before the request */
    uint32_t prefilled_tokens; /* tokens gistd forwarded for the prompt */
    uint32_t completion_tokens, compactions;
    uint64_t kv_bytes;
    int64_t bytes_freed;
} gh_outcome_t;

/* The HTTP status for an error code: 400 for bad values, 503 when gistd cannot serve. */
unsigned gh_status_for(int rc);
/* {"error": {"message", "type", "code"}} for status and message (a new reference). */
json_t *gh_error_json(unsigned status, const char *message);
/* "chatcmpl-..." / "cmpl-..." ids, unique within a run. */
void gh_response_id(gh_t *g, bool chat, char *buf, size_t cap);
/* The chat.completion.chunk / text_completion object for a piece of text (or the final one
 * with its finish reason and usage when o is not NULL). */
json_t *gh_chunk_json(gh_t *g, const gh_req_t *r, const char *id, long created, const char *text,
                      size_t len, bool first, const gh_outcome_t *o);
/* The finish_reason for a stop reason. */
const char *gh_finish_reason(gc_stop_t reason);
json_t *gh_usage_json(const gh_outcome_t *o);
json_t *gh_extension_json(const gh_outcome_t *o);

/* A turn under way: the gistd connection and conversation it holds. turn.c. */
typedef struct gh_turn {
    gh_t *g;
    gh_req_t *req;
    gc_client_t *c;
    gh_conv_t *conv; /* chat only */
    uint32_t session;
    uint32_t prompt_tokens, cached_tokens, compactions; /* of the appends so far */
    char turn_stop[64]; /* the session template's end of an assistant turn ("": none) */
    int rc;
} gh_turn_t;

/* Takes a connection, finds or opens the session and appends every new turn (for a
 * completion that is not streamed, the prompt is left to gh_turn_generate). 0, or an error
 * with its message (the turn is ended then). */
int gh_turn_begin(gh_t *g, gh_req_t *req, gh_turn_t *t, err_info_t *e);
/* Generates the reply, streaming to cb (may be NULL). */
int gh_turn_generate(gh_turn_t *t, const gc_callbacks_t *cb, gc_result_t *res, err_info_t *e);
/* Remembers the reply content (chat) when ok and gives back the connection and conversation.
 * o (may be NULL) gets the figures. */
void gh_turn_end(gh_turn_t *t, bool ok, const gc_result_t *res, const char *content,
                 size_t content_len, gh_outcome_t *o);
/* Closes the sessions in gone with c. */
void gh_close_sessions(gc_client_t *c, const gh_closing_t *gone);

/* ------------------------------------------------------------------ HTTP */

struct MHD_Connection;
struct MHD_Response;

/* Starts serving; the bound port in *port. */
int gh_http_start(gh_t *g, void **daemon, unsigned *port, err_info_t *e);
void gh_http_stop(void **daemon);
/* A response that streams a generation as server-sent events (stream.c); takes the turn and
 * its request (both ended and freed when the response is, or at once on failure: NULL). */
struct MHD_Response *gh_stream_response(gh_turn_t *t, const char *id, long created);

double gh_now(void);

#endif
