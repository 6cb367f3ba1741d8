/*
 * clients/libgistc/client.c — the connection: handshake, sending requests, and the pump that
 * receives replies and streams events to their requests' callbacks.
 *
 * A socket monitor (ZMQ_EVENT_HANDSHAKE_FAILED_*) is read beside the DEALER socket, so a
 * daemon that refuses this client's key, or a CURVE/plain mismatch, ends the waiting call
 * with ERR_PERM instead of a timeout (ZeroMQ itself only retries the connection quietly).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "clients/libgistc/gc_impl.h"
#include "common/keyfile.h"

#define GC_PROTOCOL 1

static gc_pending_t *pending_find(gc_client_t *c, uint64_t id)
{
    for (uint32_t i = 0; i < c->n_pend; i++)
        if (c->pend[i].id == id)
            return &c->pend[i];
    return NULL;
}

static void pending_drop(gc_client_t *c, gc_pending_t *p)
{
    if (p->final)
        gistd__reply__free_unpacked(p->final, NULL);
    gc_result_free(&p->res);
    *p = c->pend[--c->n_pend];
}

void gc_result_free(gc_result_t *r)
{
    if (!r)
        return;
    free(r->text);
    free(r->stop);
    memset(r, 0, sizeof *r);
}

/* ------------------------------------------------------------------ sending */

static int send_raw(gc_client_t *c, const Gistd__Request *r, err_info_t *e)
{
    size_t len = gistd__request__get_packed_size(r);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        return err_set(e, ERR_NOMEM, "out of memory for a request of %zu bytes", len);
    gistd__request__pack(r, buf);
    int rc = 0;
    const uint64_t max = c->model.max_request_bytes;
    if (max && len > max) {
        free(buf);
        return err_set(e, ERR_TOOBIG,
                       "%s: a request of %zu bytes is larger than the daemon's limit of %llu "
                       "bytes",
                       c->endpoint, len, (unsigned long long)max);
    }
    if (zmq_send(c->sock, "", 0, ZMQ_SNDMORE) < 0 || zmq_send(c->sock, buf, len, 0) < 0)
        rc = err_set(e, ERR_IO, "%s: cannot send: %s", c->endpoint, zmq_strerror(errno));
    free(buf);
    return rc;
}

int gc_send_request(gc_client_t *c, Gistd__Request *r, const gc_callbacks_t *cb, uint64_t *id,
                    err_info_t *e)
{
    if (c->n_pend == c->cap_pend) {
        uint32_t cap = c->cap_pend ? c->cap_pend * 2 : 8;
        gc_pending_t *t = realloc(c->pend, sizeof *t * cap);
        if (!t)
            return err_set(e, ERR_NOMEM, "out of memory");
        c->pend = t;
        c->cap_pend = cap;
    }
    r->id = c->next_id++;
    int rc = send_raw(c, r, e);
    if (rc)
        return rc;
    gc_pending_t *p = &c->pend[c->n_pend++];
    memset(p, 0, sizeof *p);
    p->id = r->id;
    if (cb)
        p->cb = *cb;
    if (r->body_case == GISTD__REQUEST__BODY_GENERATE)
        p->session = r->generate->session;
    *id = r->id;
    return 0;
}

/* ------------------------------------------------------------------ receiving */

void gc_usage_from_wire(const Gistd__Usage *u, gc_usage_t *out)
{
    memset(out, 0, sizeof *out);
    if (!u)
        return;
    out->prompt_tokens = u->prompt_tokens;
    out->generated_tokens = u->generated_tokens;
    out->compactions = u->compactions;
    out->kv_bytes = u->kv_bytes;
    out->bytes_freed = u->bytes_freed;
    out->queue_ms = u->queue_ms;
    out->prefill_ms = u->prefill_ms;
    out->first_token_ms = u->first_token_ms;
    out->total_ms = u->total_ms;
}

/* Streams one event to its request's callbacks; a callback that asks to stop sends Cancel. */
static void on_event(gc_client_t *c, gc_pending_t *p, const Gistd__Reply *r)
{
    if (r->body_case == GISTD__REPLY__BODY_TOKEN) {
        const Gistd__TokenEvent *t = r->token;
        p->res.n_tokens++;
        if (!p->cb.on_token || p->cancel_sent)
            return;
        char small[256], *piece = t->text.len < sizeof small ? small : malloc(t->text.len + 1);
        if (!piece)
            return;
        if (t->text.len)
            memcpy(piece, t->text.data, t->text.len);
        piece[t->text.len] = 0;
        int stop = p->cb.on_token(p->cb.ctx, r->session, t->id, piece, t->text.len);
        if (piece != small)
            free(piece);
        if (stop) {
            Gistd__Cancel cm = GISTD__CANCEL__INIT;
            cm.session = r->session;
            Gistd__Request q = GISTD__REQUEST__INIT;
            q.id = 0; /* its acknowledgement matches no request and is dropped */
            q.body_case = GISTD__REQUEST__BODY_CANCEL;
            q.cancel = &cm;
            p->cancel_sent = send_raw(c, &q, NULL) == 0;
        }
    } else if (r->body_case == GISTD__REPLY__BODY_COMPACTION && p->cb.on_compaction) {
        const Gistd__CompactionEvent *ev = r->compaction;
        gc_compaction_t cc = {.action = ev->action,
                              .method = ev->method,
                              .reason = ev->reason,
                              .first = ev->span ? ev->span->first : 0,
                              .last = ev->span ? ev->span->last : 0,
                              .level = ev->level,
                              .lanes = ev->lanes,
                              .rows_before = ev->rows_before,
                              .rows_after = ev->rows_after,
                              .tokens = ev->tokens,
                              .bytes_freed = ev->bytes_freed,
                              .session_bytes_before = ev->session_bytes_before,
                              .session_bytes = ev->session_bytes,
                              .model_pos = ev->model_pos};
        p->cb.on_compaction(p->cb.ctx, r->session, &cc);
    }
}

/* A final reply: an error, a generation's end (kept as a result), or a body for the caller. */
static void on_final(gc_pending_t *p, Gistd__Reply *r)
{
    p->done = true;
    if (r->body_case == GISTD__REPLY__BODY_ERROR) {
        p->rc = err_from_wire(r->error->code);
        err_set(&p->err, p->rc, "%s", r->error->message);
        gistd__reply__free_unpacked(r, NULL);
        return;
    }
    if (r->body_case == GISTD__REPLY__BODY_DONE) {
        const Gistd__Done *d = r->done;
        p->res.reason = (gc_stop_t)d->reason;
        p->res.text = malloc(d->text.len + 1);
        if (p->res.text) {
            if (d->text.len)
                memcpy(p->res.text, d->text.data, d->text.len);
            p->res.text[d->text.len] = 0;
            p->res.text_len = d->text.len;
        }
        if (d->stop.len && (p->res.stop = malloc(d->stop.len + 1))) {
            memcpy(p->res.stop, d->stop.data, d->stop.len);
            p->res.stop[d->stop.len] = 0;
            p->res.stop_len = d->stop.len;
        }
        gc_usage_from_wire(d->usage, &p->res.usage);
    }
    p->final = r;
}

/* Reads one monitor event: 0, or ERR_PERM with the reason when a handshake failed. */
static int monitor_event(gc_client_t *c, err_info_t *e)
{
    uint8_t head[6] = {0};
    int n = zmq_recv(c->mon, head, sizeof head, ZMQ_DONTWAIT);
    if (n < 0)
        return 0;
    int more = 0;
    size_t ml = sizeof more;
    zmq_getsockopt(c->mon, ZMQ_RCVMORE, &more, &ml);
    if (more) {
        char addr[256];
        zmq_recv(c->mon, addr, sizeof addr, 0); /* the endpoint: already known */
    }
    if (n < 6)
        return 0;
    uint16_t ev;
    uint32_t value;
    memcpy(&ev, head, 2);
    memcpy(&value, head + 2, 4);
    const char *hint = c->curve ? "it may not use CURVE, or its public key is not the one given"
                                : "it may require CURVE keys (a server key and a client key pair)";
    if (ev == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)
        return err_set(e, ERR_PERM,
                       "%s: the daemon refused this client's key (CURVE authentication failed, "
                       "status %u): its operator must add the key to its --allow-keys",
                       c->endpoint, value);
    if (ev == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL)
        return err_set(e, ERR_PERM,
                       "%s: the security handshake with the daemon failed (protocol error "
                       "0x%x): %s",
                       c->endpoint, value, hint);
    if (ev == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        return err_set(e, ERR_PERM, "%s: the security handshake with the daemon failed: %s",
                       c->endpoint, hint);
    return 0;
}

/* Receives and handles one reply, waiting up to timeout_ms. 0, or ERR_TIMEOUT, ERR_IO,
 * ERR_PERM (a refused handshake). */
static int pump(gc_client_t *c, int timeout_ms, err_info_t *e)
{
    zmq_pollitem_t it[2] = {{c->sock, 0, ZMQ_POLLIN, 0}, {c->mon, 0, ZMQ_POLLIN, 0}};
    int n = zmq_poll(it, c->mon ? 2 : 1, timeout_ms);
    if (n < 0)
        return err_set(e, errno == EINTR ? ERR_CANCELLED : ERR_IO, "%s: %s", c->endpoint,
                       zmq_strerror(errno));
    if (n == 0)
        return ERR_TIMEOUT;
    if (c->mon && (it[1].revents & ZMQ_POLLIN)) {
        int rc = monitor_event(c, e);
        if (rc)
            return rc;
        if (!(it[0].revents & ZMQ_POLLIN))
            return 0;
    }
    zmq_msg_t part;
    Gistd__Reply *r = NULL;
    int n_parts = 0;
    bool more = true;
    while (more) {
        zmq_msg_init(&part);
        if (zmq_msg_recv(&part, c->sock, 0) < 0) {
            int err = errno;
            zmq_msg_close(&part);
            if (r)
                gistd__reply__free_unpacked(r, NULL);
            return err_set(e, ERR_IO, "%s: cannot receive: %s", c->endpoint, zmq_strerror(err));
        }
        more = zmq_msg_more(&part);
        if (n_parts == 1 && !r)
            r = gistd__reply__unpack(NULL, zmq_msg_size(&part), zmq_msg_data(&part));
        zmq_msg_close(&part);
        n_parts++;
    }
    if (!r)
        return 0; /* not a reply this client understands: ignore it */
    gc_pending_t *p = pending_find(c, r->id);
    if (!p || p->done) {
        gistd__reply__free_unpacked(r, NULL);
        return 0;
    }
    if (r->final) {
        on_final(p, r); /* keeps r or frees it */
    } else {
        on_event(c, p, r);
        gistd__reply__free_unpacked(r, NULL);
    }
    return 0;
}

int gc_wait_final(gc_client_t *c, uint64_t id, Gistd__Reply **final, gc_result_t *res,
                  err_info_t *e)
{
    gc_pending_t *p = pending_find(c, id);
    if (!p)
        return err_set(e, ERR_NOTFOUND, "no outstanding request %llu", (unsigned long long)id);
    int rc = 0;
    while (!(p = pending_find(c, id))->done) {
        rc = pump(c, c->timeout_ms, e);
        if (rc == ERR_TIMEOUT)
            err_set(e, rc, "%s: no reply from gistd within %d ms", c->endpoint, c->timeout_ms);
        if (rc)
            break;
    }
    p = pending_find(c, id);
    if (!rc && p->rc) {
        rc = p->rc;
        if (e)
            *e = p->err;
    }
    if (!rc) {
        if (res) {
            *res = p->res;
            memset(&p->res, 0, sizeof p->res);
        }
        if (final) {
            *final = p->final;
            p->final = NULL;
        }
    }
    pending_drop(c, p);
    return rc;
}

int gc_call(gc_client_t *c, Gistd__Request *r, Gistd__Reply__BodyCase want, Gistd__Reply **out,
            err_info_t *e)
{
    uint64_t id;
    Gistd__Reply *rep = NULL;
    int rc = gc_send_request(c, r, NULL, &id, e);
    if (!rc)
        rc = gc_wait_final(c, id, &rep, NULL, e);
    if (rc)
        return rc;
    if (!rep || rep->body_case != want) {
        if (rep)
            gistd__reply__free_unpacked(rep, NULL);
        return err_set(e, ERR_PROTO, "%s: unexpected reply to request %llu", c->endpoint,
                       (unsigned long long)id);
    }
    if (out)
        *out = rep;
    else
        gistd__reply__free_unpacked(rep, NULL);
    return 0;
}

/* ------------------------------------------------------------------ connection */

_Static_assert(GC_KEY_LEN == KEY_Z85_LEN + 1, "a key as text, with its NUL");

int gc_key_read(const char *path, char out[GC_KEY_LEN], err_info_t *e)
{
    return key_file_read(path, out, e);
}

int gc_connect(const char *endpoint, int timeout_ms, gc_client_t **out, err_info_t *e)
{
    const gc_connect_opts_t o = {.endpoint = endpoint, .timeout_ms = timeout_ms};
    return gc_connect_opts(&o, out, e);
}

int gc_connect_opts(const gc_connect_opts_t *o, gc_client_t **out, err_info_t *e)
{
    const char *endpoint = o->endpoint;
    if (!endpoint || !*endpoint)
        endpoint = GC_DEFAULT_ENDPOINT;
    const int n_keys = !!o->server_key + !!o->public_key + !!o->secret_key;
    if (n_keys != 0 && n_keys != 3)
        return err_set(e, ERR_INVAL,
                       "CURVE needs the daemon's public key and this client's public and secret "
                       "keys, all three");
    if (n_keys && (!key_z85_valid(o->server_key) || !key_z85_valid(o->public_key) ||
                   !key_z85_valid(o->secret_key)))
        return err_set(e, ERR_INVAL, "a CURVE key is not 40 z85 characters");
    gc_client_t *c = calloc(1, sizeof *c);
    if (!c)
        return err_set(e, ERR_NOMEM, "out of memory");
    snprintf(c->endpoint, sizeof c->endpoint, "%s", endpoint);
    c->timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : GC_DEFAULT_TIMEOUT_MS;
    c->next_id = 1;
    c->curve = n_keys == 3;
    int rc = 0;
    c->zctx = zmq_ctx_new();
    c->sock = c->zctx ? zmq_socket(c->zctx, ZMQ_DEALER) : NULL;
    if (!c->sock) {
        rc = err_set(e, ERR_IO, "cannot make a ZeroMQ socket: %s", zmq_strerror(errno));
        goto fail;
    }
    int zero = 0;
    zmq_setsockopt(c->sock, ZMQ_LINGER, &zero, sizeof zero);
    if (c->curve && (zmq_setsockopt(c->sock, ZMQ_CURVE_SERVERKEY, o->server_key, 40) < 0 ||
                     zmq_setsockopt(c->sock, ZMQ_CURVE_PUBLICKEY, o->public_key, 40) < 0 ||
                     zmq_setsockopt(c->sock, ZMQ_CURVE_SECRETKEY, o->secret_key, 40) < 0)) {
        rc = err_set(e, ERR_UNSUPPORTED, "cannot use CURVE: %s", zmq_strerror(errno));
        goto fail;
    }
    /* handshake failures, read by the pump (a unique inproc name per client) */
    char mon_ep[64];
    snprintf(mon_ep, sizeof mon_ep, "inproc://gistc-monitor-%p", (void *)c);
    if (zmq_socket_monitor(c->sock, mon_ep,
                           ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                               ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                               ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) == 0) {
        c->mon = zmq_socket(c->zctx, ZMQ_PAIR);
        if (c->mon) {
            zmq_setsockopt(c->mon, ZMQ_LINGER, &zero, sizeof zero);
            if (zmq_connect(c->mon, mon_ep) < 0) {
                zmq_close(c->mon);
                c->mon = NULL;
            }
        }
    }
    if (zmq_connect(c->sock, endpoint) < 0) {
        if (errno == EPROTONOSUPPORT)
            rc =
                err_set(e, ERR_INVAL,
                        "cannot connect to '%s': not a transport gistd listens on (tcp://HOST:PORT "
                        "or ipc:///path)",
                        endpoint);
        else
            rc = err_set(e, ERR_INVAL, "cannot connect to '%s': %s", endpoint, zmq_strerror(errno));
        goto fail;
    }

    Gistd__Hello h = GISTD__HELLO__INIT;
    h.version = GC_PROTOCOL;
    h.client = (char *)"libgistc";
    Gistd__Request r = GISTD__REQUEST__INIT;
    r.body_case = GISTD__REQUEST__BODY_HELLO;
    r.hello = &h;
    Gistd__Reply *rep = NULL;
    rc = gc_call(c, &r, GISTD__REPLY__BODY_HELLO, &rep, e);
    if (rc)
        goto fail;
    const Gistd__HelloReply *hr = rep->hello;
    gc_model_info_t *m = &c->model;
    snprintf(m->server, sizeof m->server, "%s", hr->server);
    m->version = hr->version;
    m->max_request_bytes = hr->max_request_bytes;
    if (hr->model) {
        snprintf(m->name, sizeof m->name, "%s", hr->model->name);
        m->n_vocab = hr->model->n_vocab;
        m->n_ctx = hr->model->n_ctx;
        m->n_embd = hr->model->n_embd;
        m->n_layer = hr->model->n_layer;
        m->n_head = hr->model->n_head;
        m->n_head_kv = hr->model->n_head_kv;
        m->head_dim = hr->model->head_dim;
        m->n_gist = hr->model->n_gist;
        m->bos = hr->model->bos;
        m->eos = hr->model->eos;
        m->retention = hr->model->retention;
    }
    gistd__reply__free_unpacked(rep, NULL);
    *out = c;
    return 0;
fail:
    gc_disconnect(&c);
    return rc;
}

void gc_disconnect(gc_client_t **p)
{
    gc_client_t *c = *p;
    if (!c)
        return;
    while (c->n_pend > 0)
        pending_drop(c, &c->pend[c->n_pend - 1]);
    free(c->pend);
    if (c->sock && c->mon)
        zmq_socket_monitor(c->sock, NULL, 0);
    if (c->mon)
        zmq_close(c->mon);
    if (c->sock)
        zmq_close(c->sock);
    if (c->zctx)
        zmq_ctx_term(c->zctx);
    free(c);
    *p = NULL;
}

void gc_set_timeout(gc_client_t *c, int timeout_ms)
{
    c->timeout_ms = timeout_ms > 0 ? timeout_ms : GC_DEFAULT_TIMEOUT_MS;
}

const gc_model_info_t *gc_model(const gc_client_t *c)
{
    return &c->model;
}

const char *gc_endpoint(const gc_client_t *c)
{
    return c->endpoint;
}

/* ------------------------------------------------------------------ sizes */

int gc_parse_size(const char *s, size_t *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || !(v >= 0) || !isfinite(v))
        return ERR_INVAL;
    double mul = 1;
    const char *units = "KMGT";
    const char *u = *end ? strchr(units, *end >= 'a' ? *end - 'a' + 'A' : *end) : NULL;
    if (u && *end) {
        for (const char *q = units; q <= u; q++)
            mul *= 1024.0;
        end++;
        if (*end == 'i')
            end++;
    }
    if (*end == 'B' || *end == 'b')
        end++;
    if (*end || v * mul > 1e18)
        return ERR_INVAL;
    *out = (size_t)(v * mul);
    return 0;
}

const char *gc_format_size(uint64_t bytes, char *buf, size_t cap)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)bytes;
    int u = 0;
    while (v >= 1024.0 && u < 4) {
        v /= 1024.0;
        u++;
    }
    if (u == 0)
        snprintf(buf, cap, "%llu B", (unsigned long long)bytes);
    else
        snprintf(buf, cap, "%.*f %s", v < 10 ? 2 : v < 100 ? 1 : 0, v, units[u]);
    return buf;
}
