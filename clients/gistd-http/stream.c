/*
 * clients/gistd-http/stream.c — a generation streamed as server-sent events.
 *
 * A producer thread runs the generation on the request's gistd connection and turns each
 * token into a `data: {chunk}` event in a buffer; libmicrohttpd's connection thread takes the
 * bytes from there as the socket can carry them. When the HTTP client goes away, the next
 * token cancels the generation, and the response's free callback waits for the producer to
 * give back the connection and conversation.
 */
#include <microhttpd.h>
#include <stdlib.h>
#include <string.h>

#include "clients/gistd-http/http.h"

typedef struct gh_stream {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    char *buf; /* events not yet sent: [off, len) */
    size_t len, cap, off;
    bool done;    /* the producer has written its last event */
    bool gone;    /* the HTTP client went away */
    bool started; /* the producer runs */
    bool failed;  /* out of memory for an event */
    pthread_t th;
    gh_turn_t turn;
    gc_text_t text;
    const char *stop[5]; /* the request's stop strings and the template's end of turn */
    char id[64];
    long created;
} gh_stream_t;

static void emit_raw(gh_stream_t *s, const char *data, size_t n)
{
    pthread_mutex_lock(&s->mu);
    if (s->len + n > s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 4096;
        while (cap < s->len + n)
            cap *= 2;
        char *p = realloc(s->buf, cap);
        if (!p) {
            s->failed = true;
            pthread_mutex_unlock(&s->mu);
            return;
        }
        s->buf = p;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, data, n);
    s->len += n;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* Writes `data: JSON\n\n` and drops the reference to obj. */
static void emit(gh_stream_t *s, json_t *obj)
{
    char *j = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
    json_decref(obj);
    if (!j) {
        s->failed = true;
        return;
    }
    const size_t n = strlen(j);
    char *ev = malloc(n + 9);
    if (ev) {
        memcpy(ev, "data: ", 6);
        memcpy(ev + 6, j, n);
        memcpy(ev + 6 + n, "\n\n", 2);
        emit_raw(s, ev, n + 8);
    } else {
        s->failed = true;
    }
    free(ev);
    free(j);
}

static int on_token(void *ctx, uint32_t session, int32_t id, const char *piece, size_t len)
{
    gh_stream_t *s = ctx;
    char *out = NULL;
    size_t out_len = 0;
    if (!gc_text_push(&s->text, piece, len, &out, &out_len) && out_len)
        emit(s,
             gh_chunk_json(s->turn.g, s->turn.req, s->id, s->created, out, out_len, false, NULL));
    free(out);
    pthread_mutex_lock(&s->mu);
    const bool stop = s->gone;
    pthread_mutex_unlock(&s->mu);
    return stop;
}

static void *produce(void *arg)
{
    gh_stream_t *s = arg;
    gh_turn_t *t = &s->turn;
    if (t->req->chat)
        emit(s, gh_chunk_json(t->g, t->req, s->id, s->created, "", 0, true, NULL));
    gc_callbacks_t cb = {.ctx = s, .on_token = on_token};
    gc_result_t res;
    memset(&res, 0, sizeof res);
    err_info_t e;
    err_clear(&e);
    int rc = gh_turn_generate(t, &cb, &res, &e);
    char *rest = NULL, *content = NULL;
    size_t rest_len = 0, content_len = 0;
    if (!rc && res.reason == GC_STOP_CANCELLED)
        rc = err_set(&e, ERR_CANCELLED, "gistd stopped the generation (it may be shutting down)");
    if (!rc && (gc_text_final(&s->text, res.text, res.text_len, res.stop, res.stop_len, &rest,
                              &rest_len) ||
                gc_text_final(NULL, res.text, res.text_len, res.stop, res.stop_len, &content,
                              &content_len)))
        rc = err_set(&e, ERR_NOMEM, "out of memory for the generated text");
    gh_outcome_t o;
    gh_turn_end(t, !rc, &res, content, content_len, &o);
    if (!rc) {
        if (rest_len)
            emit(s, gh_chunk_json(t->g, t->req, s->id, s->created, rest, rest_len, false, NULL));
        emit(s, gh_chunk_json(t->g, t->req, s->id, s->created, "", 0, false, &o));
    } else {
        emit(s, gh_error_json(gh_status_for(rc), err_msg(&e)));
    }
    emit_raw(s, "data: [DONE]\n\n", 14);
    free(rest);
    free(content);
    gc_result_free(&res);
    pthread_mutex_lock(&s->mu);
    s->done = true;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

static ssize_t read_events(void *cls, uint64_t pos, char *out, size_t max)
{
    gh_stream_t *s = cls;
    pthread_mutex_lock(&s->mu);
    while (s->off == s->len && !s->done)
        pthread_cond_wait(&s->cv, &s->mu);
    ssize_t n;
    if (s->off == s->len) {
        n = s->failed ? MHD_CONTENT_READER_END_WITH_ERROR : MHD_CONTENT_READER_END_OF_STREAM;
    } else {
        size_t k = s->len - s->off < max ? s->len - s->off : max;
        memcpy(out, s->buf + s->off, k);
        s->off += k;
        if (s->off == s->len)
            s->off = s->len = 0;
        n = (ssize_t)k;
    }
    pthread_mutex_unlock(&s->mu);
    return n;
}

static void stream_free(void *cls)
{
    gh_stream_t *s = cls;
    pthread_mutex_lock(&s->mu);
    s->gone = true;
    pthread_mutex_unlock(&s->mu);
    if (s->started)
        pthread_join(s->th, NULL);
    else
        gh_turn_end(&s->turn, false, NULL, NULL, 0, NULL);
    gh_req_free(s->turn.req);
    gc_text_fini(&s->text);
    free(s->buf);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

struct MHD_Response *gh_stream_response(gh_turn_t *t, const char *id, long created)
{
    gh_stream_t *s = calloc(1, sizeof *s);
    if (!s) {
        gh_turn_end(t, false, NULL, NULL, 0, NULL);
        gh_req_free(t->req);
        return NULL;
    }
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    s->turn = *t;
    memset(t, 0, sizeof *t);
    unsigned n_stop = s->turn.req->n_stop;
    memcpy(s->stop, s->turn.req->stop, n_stop * sizeof *s->stop);
    if (s->turn.turn_stop[0])
        s->stop[n_stop++] = s->turn.turn_stop;
    gc_text_init(&s->text, s->stop, n_stop);
    snprintf(s->id, sizeof s->id, "%s", id);
    s->created = created;
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, read_events, s, stream_free);
    if (!resp) {
        stream_free(s);
        return NULL;
    }
    MHD_add_response_header(resp, "Content-Type", "text/event-stream");
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    if (pthread_create(&s->th, NULL, produce, s)) {
        MHD_destroy_response(resp); /* stream_free ends the turn */
        return NULL;
    }
    s->started = true;
    return resp;
}
