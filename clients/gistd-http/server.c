/*
 * clients/gistd-http/server.c — the HTTP side: libmicrohttpd's callbacks, the routes, and
 * replies that are JSON objects or OpenAI-shaped errors.
 *
 * libmicrohttpd calls on_request several times per request: first with the headers (a body
 * announced larger than --max-body is refused then, without reading it), then with each
 * piece of the body, and last with none, when the route runs. on_completed records the
 * request's status and duration once its reply has been sent (a stream included).
 */
#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clients/gistd-http/http.h"

/* One HTTP request as it arrives. */
typedef struct call {
    double t0;
    gh_route_t route;
    unsigned status;
    char *body;
    size_t len, cap;
    bool too_big;
} call_t;

static enum MHD_Result send_json(struct MHD_Connection *conn, call_t *call, unsigned status,
                                 json_t *obj)
{
    char *text = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
    json_decref(obj);
    if (!text) {
        status = 500;
        text = strdup("{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\","
                      "\"code\":\"internal_error\"}}");
        if (!text)
            return MHD_NO;
    }
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", "application/json");
    call->status = status;
    enum MHD_Result r = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return r;
}

static enum MHD_Result send_error(struct MHD_Connection *conn, call_t *call, unsigned status,
                                  const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static enum MHD_Result send_error(struct MHD_Connection *conn, call_t *call, unsigned status,
                                  const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return send_json(conn, call, status, gh_error_json(status, msg));
}

static enum MHD_Result send_err(struct MHD_Connection *conn, call_t *call, const err_info_t *e)
{
    const unsigned status = gh_status_for(e->code);
    if (status == 503 && gh_transport_error(e->code))
        return send_error(conn, call, status, "gistd is not answering: %s", err_msg(e));
    return send_error(conn, call, status, "%s", err_msg(e));
}

/* The model's name in the API. */
static void model_id(gh_t *g, const gc_model_info_t *m, bool have, char *buf, size_t cap)
{
    if (g->cfg.model_id)
        snprintf(buf, cap, "%s", g->cfg.model_id);
    else if (have && m->name[0])
        snprintf(buf, cap, "%s", m->name);
    else
        snprintf(buf, cap, "gistd");
}

/* The daemon's model, connecting once if no connection has been made yet. */
static int model_info(gh_t *g, gc_model_info_t *m, err_info_t *e)
{
    if (gh_pool_model(g->pool, m))
        return 0;
    gc_client_t *c = NULL;
    int rc = gh_pool_get(g->pool, &c, e);
    if (rc)
        return rc;
    *m = *gc_model(c);
    gh_pool_put(g->pool, c, 0);
    return 0;
}

/* ------------------------------------------------------------------ routes */

static enum MHD_Result on_models(gh_t *g, struct MHD_Connection *conn, call_t *call,
                                 const char *one)
{
    gc_model_info_t m;
    err_info_t e;
    err_clear(&e);
    const bool have = !model_info(g, &m, &e);
    char id[160];
    model_id(g, &m, have, id, sizeof id);
    if (!have && !g->cfg.model_id)
        return send_err(conn, call, &e);
    if (one && strcmp(one, id))
        return send_error(conn, call, 404,
                          "the model '%.100s' does not exist; this gateway "
                          "serves '%s'",
                          one, id);
    json_t *model = json_pack("{s:s,s:s,s:i,s:s}", "id", id, "object", "model", "created",
                              (json_int_t)0, "owned_by", "gistd");
    if (model && have)
        json_object_set_new(model, "gistd",
                            json_pack("{s:i,s:i,s:i,s:i,s:i,s:b}", "n_ctx", (json_int_t)m.n_ctx,
                                      "n_vocab", (json_int_t)m.n_vocab, "n_layer",
                                      (json_int_t)m.n_layer, "n_embd", (json_int_t)m.n_embd,
                                      "n_gist", (json_int_t)m.n_gist, "retention", m.retention));
    if (one)
        return send_json(conn, call, 200, model);
    return send_json(conn, call, 200, json_pack("{s:s,s:[o]}", "object", "list", "data", model));
}

static enum MHD_Result on_health(gh_t *g, struct MHD_Connection *conn, call_t *call)
{
    gc_client_t *c = NULL;
    err_info_t e;
    err_clear(&e);
    gc_stats_t st;
    memset(&st, 0, sizeof st);
    int rc = gh_pool_get(g->pool, &c, &e);
    if (!rc) {
        rc = gc_stats(c, false, &st, &e);
        gh_pool_put(g->pool, c, rc);
    }
    if (rc)
        return send_json(conn, call, 503,
                         json_pack("{s:s,s:s}", "status", "unavailable", "error", err_msg(&e)));
    json_t *o =
        json_pack("{s:s,s:i,s:i,s:I,s:I}", "status", "ok", "sessions", (json_int_t)st.sessions,
                  "conversations", (json_int_t)gh_convs_count(g->convs), "kv_bytes",
                  (json_int_t)st.kv_used_bytes, "kv_budget_bytes", (json_int_t)st.kv_budget_bytes);
    gc_stats_free(&st);
    return send_json(conn, call, 200, o);
}

static enum MHD_Result on_metrics(gh_t *g, struct MHD_Connection *conn, call_t *call)
{
    gc_client_t *c = NULL;
    err_info_t e;
    err_clear(&e);
    gc_stats_t st;
    memset(&st, 0, sizeof st);
    int rc = gh_pool_get(g->pool, &c, &e);
    if (!rc) {
        rc = gc_stats(c, false, &st, &e);
        gh_pool_put(g->pool, c, rc);
    }
    char *text = gh_metrics_render(g->metrics, rc ? NULL : &st, gh_convs_count(g->convs));
    gc_stats_free(&st);
    if (!text)
        return send_error(conn, call, 500, "out of memory");
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
    call->status = 200;
    enum MHD_Result r = MHD_queue_response(conn, 200, resp);
    MHD_destroy_response(resp);
    return r;
}

/* The reply to a turn that was not streamed. */
static json_t *completion_json(gh_t *g, const gh_req_t *r, const char *content, size_t len,
                               const gh_outcome_t *o)
{
    char id[64];
    gh_response_id(g, r->chat, id, sizeof id);
    json_t *choice = r->chat ? json_pack("{s:i,s:{s:s,s:s%},s:n,s:s}", "index", 0, "message",
                                         "role", "assistant", "content", content, len, "logprobs",
                                         "finish_reason", gh_finish_reason(o->reason))
                             : json_pack("{s:i,s:s%,s:n,s:s}", "index", 0, "text", content, len,
                                         "logprobs", "finish_reason", gh_finish_reason(o->reason));
    return json_pack("{s:s,s:s,s:i,s:s,s:[o],s:o,s:o}", "id", id, "object",
                     r->chat ? "chat.completion" : "text_completion", "created",
                     (json_int_t)time(NULL), "model", r->model, "choices", choice, "usage",
                     gh_usage_json(o), "gistd", gh_extension_json(o));
}

static enum MHD_Result on_generate(gh_t *g, struct MHD_Connection *conn, call_t *call, bool chat)
{
    if (call->too_big)
        return send_error(conn, call, 413, "the request body is larger than %zu bytes",
                          g->cfg.max_body);
    err_info_t e;
    err_clear(&e);
    gc_model_info_t m;
    const bool have = !model_info(g, &m, &e);
    char id[160];
    model_id(g, &m, have, id, sizeof id);
    if (!have && !g->cfg.model_id)
        return send_err(conn, call, &e); /* gistd is not there to say what it serves */
    gh_req_t *r = NULL;
    const char *bind =
        chat ? MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Gistd-Session") : NULL;
    int rc = gh_req_parse(g, chat, call->body ? call->body : "", call->len, bind, have ? &m : NULL,
                          id, &r, &e);
    if (rc)
        return send_err(conn, call, &e);
    gh_turn_t t;
    rc = gh_turn_begin(g, r, &t, &e);
    if (rc) {
        gh_req_free(r);
        return send_err(conn, call, &e);
    }
    if (r->stream) {
        char rid[64];
        gh_response_id(g, chat, rid, sizeof rid);
        struct MHD_Response *resp = gh_stream_response(&t, rid, (long)time(NULL));
        if (!resp)
            return send_error(conn, call, 500, "cannot start a stream");
        call->status = 200;
        enum MHD_Result q = MHD_queue_response(conn, 200, resp);
        MHD_destroy_response(resp);
        return q;
    }
    gc_result_t res;
    memset(&res, 0, sizeof res);
    rc = gh_turn_generate(&t, NULL, &res, &e);
    if (!rc && res.reason == GC_STOP_CANCELLED)
        rc = err_set(&e, ERR_CANCELLED, "gistd stopped the generation (it may be shutting down)");
    char *content = NULL;
    size_t len = 0;
    if (!rc && gc_text_final(NULL, res.text, res.text_len, res.stop, res.stop_len, &content, &len))
        rc = err_set(&e, ERR_NOMEM, "out of memory");
    gh_outcome_t o;
    gh_turn_end(&t, !rc, &res, content, len, &o);
    enum MHD_Result q = rc ? send_err(conn, call, &e)
                           : send_json(conn, call, 200, completion_json(g, r, content, len, &o));
    free(content);
    gc_result_free(&res);
    gh_req_free(r);
    return q;
}

/* ------------------------------------------------------------------ libmicrohttpd */

static gh_route_t route_of(const char *url)
{
    if (!strcmp(url, "/v1/chat/completions"))
        return GH_R_CHAT;
    if (!strcmp(url, "/v1/completions"))
        return GH_R_COMPLETIONS;
    if (!strcmp(url, "/v1/models") || !strncmp(url, "/v1/models/", 11))
        return GH_R_MODELS;
    if (!strcmp(url, "/health"))
        return GH_R_HEALTH;
    if (!strcmp(url, "/metrics"))
        return GH_R_METRICS;
    return GH_R_OTHER;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **req_cls)
{
    gh_t *g = cls;
    call_t *call = *req_cls;
    if (!call) {
        call = calloc(1, sizeof *call);
        if (!call)
            return MHD_NO;
        call->t0 = gh_now();
        call->route = route_of(url);
        *req_cls = call;
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > g->cfg.max_body)
            return send_error(conn, call, 413, "the request body is larger than %zu bytes",
                              g->cfg.max_body);
        return MHD_YES;
    }
    if (*upload_size) {
        if (!call->too_big && call->len + *upload_size > g->cfg.max_body) {
            call->too_big = true;
            free(call->body);
            call->body = NULL;
            call->len = call->cap = 0;
        }
        if (!call->too_big) {
            if (call->len + *upload_size + 1 > call->cap) {
                size_t cap = call->cap ? call->cap * 2 : 4096;
                while (cap < call->len + *upload_size + 1)
                    cap *= 2;
                char *p = realloc(call->body, cap);
                if (!p)
                    return MHD_NO;
                call->body = p;
                call->cap = cap;
            }
            memcpy(call->body + call->len, upload, *upload_size);
            call->len += *upload_size;
        }
        *upload_size = 0;
        return MHD_YES;
    }
    const bool get = !strcmp(method, "GET"), post = !strcmp(method, "POST");
    switch (call->route) {
    case GH_R_CHAT:
    case GH_R_COMPLETIONS:
        if (!post)
            return send_error(conn, call, 405, "%s takes POST", url);
        return on_generate(g, conn, call, call->route == GH_R_CHAT);
    case GH_R_MODELS:
        if (!get)
            return send_error(conn, call, 405, "%s takes GET", url);
        return on_models(g, conn, call, url[10] == '/' ? url + 11 : NULL);
    case GH_R_HEALTH:
        if (!get)
            return send_error(conn, call, 405, "%s takes GET", url);
        return on_health(g, conn, call);
    case GH_R_METRICS:
        if (!get)
            return send_error(conn, call, 405, "%s takes GET", url);
        return on_metrics(g, conn, call);
    default:
        return send_error(conn, call, 404,
                          "no route %.200s (known: /v1/chat/completions, /v1/completions, "
                          "/v1/models, /health, /metrics)",
                          url);
    }
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                         enum MHD_RequestTerminationCode why)
{
    gh_t *g = cls;
    call_t *call = *req_cls;
    if (!call)
        return;
    gh_metrics_request(g->metrics, call->route, call->status ? call->status : 500,
                       gh_now() - call->t0);
    free(call->body);
    free(call);
    *req_cls = NULL;
}

int gh_http_start(gh_t *g, void **daemon, unsigned *port, err_info_t *e)
{
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)g->cfg.port);
    const char *host = strcmp(g->cfg.listen_host, "localhost") ? g->cfg.listen_host : "127.0.0.1";
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1)
        return err_set(e, ERR_INVAL, "--listen: '%s' is not an IPv4 address", g->cfg.listen_host);
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL |
            MHD_USE_ERROR_LOG,
        0, NULL, NULL, on_request, g, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)g->cfg.max_connections,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120, MHD_OPTION_NOTIFY_COMPLETED, on_completed, g,
        MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)256, MHD_OPTION_END);
    if (!d)
        return err_set(e, ERR_IO, "cannot listen on %s:%u (in use, or not an address here?)",
                       g->cfg.listen_host, g->cfg.port);
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    *port = info ? info->port : g->cfg.port;
    *daemon = d;
    return 0;
}

void gh_http_stop(void **daemon)
{
    if (*daemon)
        MHD_stop_daemon(*daemon);
    *daemon = NULL;
}

double gh_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}
