/*
 * daemon/server.c — the daemon's object, its ROUTER socket and its event loop.
 *
 * The loop polls the socket, the stop descriptor and, with CURVE, the ZAP handler and the
 * socket's handshake monitor (auth.c). It reads at most DMN_RECV_BURST
 * messages before each scheduler step, so a flood of requests cannot starve the sessions
 * that are generating, and it never blocks while work is waiting. Replies are sent without
 * blocking: a client whose queue is full loses that reply (counted in events_dropped), and a
 * client that has gone away ends its own stream and nothing else.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "common/dtype.h"
#include "daemon/dmn_impl.h"

#define DMN_RECV_BURST 256
#define DMN_SNDHWM     16384 /* replies queued per client before they are dropped */
/* requests queued per client before its sends wait: with frames of up to 4 x max_request,
 * what one client can make the daemon hold before it reads them */
#define DMN_RCVHWM       256
#define DMN_LINGER_MS    2000 /* at shutdown, how long queued replies may take to leave */
#define DMN_PROGRESS_S   0.25 /* keep-alive period of a request the daemon prefills */
#define DMN_IDLE_SWEEP_S 1.0  /* how often idle sessions are looked for */

void dmn_cfg_default(dmn_cfg_t *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->listen = DMN_DEFAULT_LISTEN;
    cfg->max_request = 1u << 20;
    cfg->max_sessions = 64;
    cfg->prefill_chunk = 64;
    cfg->kv_type = DT_F16;
    cfg->block_rows = 64;
    cfg->log_level = DMN_LOG_WARN;
    cfg->rate_limit = -1;
    cfg->max_client_sessions = -1;
    cfg->idle_timeout = DMN_DEFAULT_IDLE_TIMEOUT;
    const char *tmp = getenv("TMPDIR");
    cfg->spill_dir = tmp && *tmp ? tmp : "/var/tmp";
    cfg->spill_default = true;
}

double dmn_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void dmn_log(const dmn_t *d, int level, const char *fmt, ...)
{
    if (level > d->cfg.log_level)
        return;
    static const char *const names[] = {"error", "warn", "info", "debug"};
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "gistd: %s: ", names[level]);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* ------------------------------------------------------------------ replies */

int dmn_send(dmn_t *d, const dmn_peer_t *to, const Gistd__Reply *r)
{
    size_t len = gistd__reply__get_packed_size(r);
    if (len > d->out_cap) {
        size_t cap = len < 4096 ? 4096 : len * 2;
        uint8_t *p = realloc(d->out, cap);
        if (!p) {
            dmn_log(d, DMN_LOG_ERROR, "out of memory packing a reply of %zu bytes", len);
            return ERR_NOMEM;
        }
        d->out = p;
        d->out_cap = cap;
    }
    gistd__reply__pack(r, d->out);
    if (d->send_hook)
        return d->send_hook(d->send_ctx, to, d->out, len);
    /* ROUTER_MANDATORY: the first frame fails at once when the peer is gone or its queue is
     * full; once it is accepted, the rest of the message goes with it. */
    if (zmq_send(d->sock, to->id, to->len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
        if (errno == EAGAIN) {
            d->c.events_dropped++;
            return ERR_BUSY;
        }
        return ERR_NOTFOUND;
    }
    if (zmq_send(d->sock, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
        zmq_send(d->sock, d->out, len, ZMQ_DONTWAIT) < 0) {
        dmn_log(d, DMN_LOG_WARN, "a reply was cut short: %s", zmq_strerror(errno));
        return ERR_IO;
    }
    return 0;
}

void dmn_send_error(dmn_t *d, const dmn_peer_t *to, uint64_t id, uint32_t session,
                    const err_info_t *e)
{
    int code = e->code ? e->code : ERR_INTERNAL;
    Gistd__Error er = GISTD__ERROR__INIT;
    er.code = err_wire(code);
    char name[32];
    snprintf(name, sizeof name, "%s", err_str(code));
    /* the symbolic name, from the table's order */
    static const struct {
        int code;
        const char *name;
    } names[] = {
#define ERR_NAME_(n, v, m) {v, #n},
        ERR_TABLE(ERR_NAME_)
#undef ERR_NAME_
    };
    er.name = (char *)"ERR_INTERNAL";
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (names[i].code == code)
            er.name = (char *)names[i].name;
    er.message = (char *)err_msg(e);
    Gistd__Reply r = GISTD__REPLY__INIT;
    r.id = id;
    r.final = true;
    r.session = session;
    r.body_case = GISTD__REPLY__BODY_ERROR;
    r.error = &er;
    d->c.errors++;
    dmn_log(d, DMN_LOG_INFO, "request %llu: %s: %s", (unsigned long long)id, er.name, er.message);
    dmn_send(d, to, &r);
}

void dmn_send_errorf(dmn_t *d, const dmn_peer_t *to, uint64_t id, uint32_t session, int code,
                     const char *fmt, ...)
{
    err_info_t e;
    e.code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e.msg, sizeof e.msg, fmt, ap);
    va_end(ap);
    dmn_send_error(d, to, id, session, &e);
}

/* ------------------------------------------------------------------ receiving */

/* Reads one message [identity][empty][payload] and handles it. Returns 1 when a message was
 * read, 0 when none was waiting, or a negative code when the socket failed. Every message
 * counts against its client's rate before anything else is looked at; a refused one is
 * answered with an error that names the request when its id can be read. */
static int recv_one(dmn_t *d)
{
    zmq_msg_t part, payload;
    dmn_peer_t peer = {0};
    int n_parts = 0, rc = 1;
    bool more = true, bad_delim = false, have_user = false;
    char user[DMN_CRED_LEN] = "", addr[64] = "";

    zmq_msg_init(&payload);
    while (more) {
        zmq_msg_init(&part);
        if (zmq_msg_recv(&part, d->sock, n_parts == 0 ? ZMQ_DONTWAIT : 0) < 0) {
            int err = errno;
            zmq_msg_close(&part);
            rc = n_parts == 0 && (err == EAGAIN || err == EINTR) ? 0 : ERR_IO;
            if (rc)
                dmn_log(d, DMN_LOG_ERROR, "receive: %s", zmq_strerror(err));
            goto done;
        }
        more = zmq_msg_more(&part);
        if (n_parts >= 1 && !have_user) {
            /* the ZAP handler's User-Id and the address ride on the client's own frames */
            const char *u = zmq_msg_gets(&part, "User-Id");
            const char *a = zmq_msg_gets(&part, "Peer-Address");
            snprintf(user, sizeof user, "%s", u ? u : "");
            snprintf(addr, sizeof addr, "%s", a ? a : "");
            have_user = true;
        }
        if (n_parts == 0) {
            size_t len = zmq_msg_size(&part);
            peer.len = (uint8_t)(len < sizeof peer.id ? len : sizeof peer.id);
            memcpy(peer.id, zmq_msg_data(&part), peer.len);
        } else if (n_parts == 1) {
            bad_delim = zmq_msg_size(&part) != 0;
        } else if (n_parts == 2) {
            zmq_msg_move(&payload, &part); /* keeps the payload without a copy */
        }
        zmq_msg_close(&part);
        n_parts++;
    }
    d->c.requests++;
    dmn_peer_identify(d, &peer, d->curve ? user : NULL);
    const size_t len = zmq_msg_size(&payload);
    const uint64_t id = n_parts == 3 ? dmn_request_peek_id(zmq_msg_data(&payload), len) : 0;
    double wait_s = 0;
    if (peer.revoked) {
        d->refused_perm++;
        dmn_send_errorf(d, &peer, id, 0, ERR_PERM,
                        "this client's key was taken off the daemon's allow list");
    } else if (dmn_rate_take(d, peer.cred, addr, dmn_now(), &wait_s)) {
        d->refused_rate++;
        dmn_send_errorf(d, &peer, id, 0, ERR_RATE,
                        "rate limited: more than %g requests/s (burst %g) from this client; "
                        "retry in %.0f ms",
                        d->req_rate, d->req_burst, wait_s * 1000 + 0.5);
    } else if (bad_delim || n_parts != 3) {
        dmn_send_errorf(d, &peer, 0, 0, ERR_PROTO,
                        "malformed message: expected an empty delimiter frame and one payload "
                        "frame after the identity, got %d frame%s%s",
                        n_parts - 1, n_parts == 2 ? "" : "s",
                        bad_delim ? " and no empty delimiter" : "");
    } else if (len > d->cfg.max_request) {
        dmn_send_errorf(d, &peer, id, 0, ERR_TOOBIG,
                        "request of %zu bytes is larger than the limit of %zu bytes", len,
                        d->cfg.max_request);
    } else {
        dmn_handle(d, &peer, zmq_msg_data(&payload), len);
    }
done:
    zmq_msg_close(&payload);
    return rc;
}

/* ------------------------------------------------------------------ life */

static int no_run(void *ctx, const pol_run_t *r, err_info_t *e)
{
    return err_set(e, ERR_UNSUPPORTED, "no model runs here");
}

/* The default policy works with this model (made once for a scratch session), and what the
 * scratch session holds with one token reserved is the smallest usable session budget. */
static int check_policy(dmn_t *d, err_info_t *e)
{
    uint32_t sid;
    int rc = kv_session_create(d->store, NULL, &sid, e);
    if (rc)
        return rc;
    kv_stats_t ks;
    rc = kv_reserve(d->store, sid, 1, e);
    if (rc) {
        kv_session_destroy(d->store, sid);
        return rc;
    }
    kv_session_stats(d->store, sid, &ks);
    d->session_min = ks.bytes;
    kv_reserve_cancel(d->store, sid);
    pol_t *p = NULL;
    pol_config_t pc = {.name = d->policy,
                       .store = d->store,
                       .sid = sid,
                       .model = d->pm,
                       .runner = {.run = no_run}};
    rc = pol_new(&pc, &p, e);
    pol_destroy(&p);
    kv_session_destroy(d->store, sid);
    return rc ? err_prefix(e, "--policy %s: ", d->policy) : 0;
}

size_t dmn_phys_bytes(void)
{
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    return pages > 0 && page > 0 ? (size_t)pages * (size_t)page : SIZE_MAX;
}

/* The highest global limit SetBudget may set (d->budget_max) and where it comes from. KV
 * bytes live in memory, so no limit may pass the machine's physical memory: one above it
 * would never be reached, which is no limit at all. */
static int budget_ceiling(const dmn_cfg_t *cfg, dmn_t *d, err_info_t *e)
{
    const size_t phys = dmn_phys_bytes();
    if (cfg->kv_budget > phys || cfg->kv_budget_max > phys)
        return err_set(e, ERR_INVAL,
                       "--kv-budget%s of %zu bytes is more than this machine's physical memory "
                       "(%zu bytes)",
                       cfg->kv_budget > phys ? "" : "-max",
                       cfg->kv_budget > phys ? cfg->kv_budget : cfg->kv_budget_max, phys);
    if (cfg->kv_budget_max && cfg->kv_budget > cfg->kv_budget_max)
        return err_set(e, ERR_INVAL, "--kv-budget of %zu bytes is above --kv-budget-max (%zu)",
                       cfg->kv_budget, cfg->kv_budget_max);
    if (cfg->kv_budget_max) {
        d->budget_max = cfg->kv_budget_max;
        d->budget_max_from = "gistd --kv-budget-max";
    } else if (cfg->kv_budget) {
        d->budget_max = cfg->kv_budget;
        d->budget_max_from = "gistd --kv-budget; --kv-budget-max allows more";
    } else {
        d->budget_max = phys;
        d->budget_max_from = "this machine's physical memory";
    }
    return 0;
}

int dmn_listen_check(const char *ep, err_info_t *e)
{
    static const char *const known[] = {"tcp://", "ipc://", "inproc://"};
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (!strncmp(ep, known[i], strlen(known[i])))
            return 0;
    const char *sep = strstr(ep, "://");
    return err_set(e, ERR_INVAL,
                   "--listen %s: %s%.*s%s; gistd listens on tcp://HOST:PORT (tcp://127.0.0.1:* "
                   "picks a free port) or ipc:///path",
                   ep, sep ? "unknown transport '" : "not an endpoint (TRANSPORT://ADDRESS)",
                   sep ? (int)(sep - ep) : 0, ep, sep ? "'" : "");
}

size_t dmn_session_min_bytes(const dmn_t *d)
{
    return d->session_min;
}

/* The sessions' default template: the family of the file's tokenizer.chat_template; plain,
 * with a warning, for one not recognised; none without one. */
static void file_template(dmn_t *d)
{
    gguf_str_t t;
    err_info_t e;
    d->file_tmpl = dmn_tmpl_find("none");
    if (gguf_get_str(mdl_gguf(d->model), "tokenizer.chat_template", &t, &e) != 0)
        return;
    d->file_tmpl = dmn_tmpl_detect(t.ptr, t.len);
    if (d->file_tmpl) {
        dmn_log(d, DMN_LOG_INFO, "chat template of the model file: %s", d->file_tmpl->name);
        return;
    }
    d->file_tmpl = dmn_tmpl_find("plain");
    dmn_log(d, DMN_LOG_WARN,
            "the model file's chat template (%llu bytes) is none of the families gistd "
            "renders (%s); sessions that name no template use plain",
            (unsigned long long)t.len, DMN_TMPL_NAMES);
}

int dmn_new(const dmn_cfg_t *cfg, dmn_t **out, err_info_t *e)
{
    if (!cfg->model_path)
        return err_set(e, ERR_INVAL, "no model file given (--model FILE)");
    if (cfg->kv_type != DT_F32 && cfg->kv_type != DT_F16 && cfg->kv_type != DT_Q8_0)
        return err_set(e, ERR_INVAL, "the KV payload type must be f32, f16 or q8_0");
    if (cfg->max_sessions == 0 || cfg->prefill_chunk == 0)
        return err_set(e, ERR_INVAL, "--max-sessions and the prefill chunk must be at least 1");
    int rc = dmn_listen_check(cfg->listen ? cfg->listen : DMN_DEFAULT_LISTEN, e);
    if (!rc)
        rc = dmn_auth_check(cfg, e); /* before the model loads: a refusal comes at once */
    if (rc)
        return rc;
    dmn_t *d = calloc(1, sizeof *d);
    if (!d)
        return err_set(e, ERR_NOMEM, "out of memory");
    d->cfg = *cfg;
    rc = budget_ceiling(cfg, d, e);
    if (rc) {
        free(d);
        return rc;
    }
    d->t_start = dmn_now();
    d->next_id = 1;
    d->epoch = 1;
    d->model_path = strdup(cfg->model_path);
    d->listen = strdup(cfg->listen ? cfg->listen : DMN_DEFAULT_LISTEN);
    d->snapshot_dir = cfg->snapshot_dir ? strdup(cfg->snapshot_dir) : NULL;
    d->policy = strdup(cfg->policy && *cfg->policy ? cfg->policy : "auto");
    d->cfg.policy = d->policy;
    d->cfg.model_path = d->model_path;
    d->cfg.listen = d->listen;
    d->cfg.snapshot_dir = d->snapshot_dir;
    if (!d->model_path || !d->listen || !d->policy || (cfg->snapshot_dir && !d->snapshot_dir)) {
        rc = err_set(e, ERR_NOMEM, "out of memory");
        goto fail;
    }

    rc = mdl_new(d->model_path, &d->model, e);
    if (rc) {
        rc = ERR_FORMAT; /* one code for a model that cannot be loaded, however it fails */
        if (e)
            e->code = rc;
        goto fail;
    }
    mdl_set_threads(d->model, cfg->threads);
    d->hp = mdl_hparams(d->model);
    d->tok = mdl_tok(d->model);
    if (!d->tok) {
        rc = err_set(e, ERR_FORMAT, "%s: the model file carries no tokenizer", d->model_path);
        goto fail;
    }
    d->n_lane = d->hp->n_layer * d->hp->n_head_kv;
    file_template(d);

    kv_store_config_t kc = {.n_layer = d->hp->n_layer,
                            .n_head_kv = d->hp->n_head_kv,
                            .head_dim = d->hp->head_dim,
                            .block_rows = cfg->block_rows,
                            .hot_type = cfg->kv_type,
                            .spill_dir = cfg->spill_dir};
    rc = kv_store_new(&kc, &d->store, e);
    if (rc == ERR_IO && cfg->spill_default) { /* the default folder is not there: no spilling */
        dmn_log(d, DMN_LOG_WARN, "%s; session transcripts stay in memory (--spill-dir DIR)",
                err_msg(e));
        err_clear(e);
        kc.spill_dir = NULL;
        rc = kv_store_new(&kc, &d->store, e);
    }
    if (!rc)
        d->cfg.spill_dir = kv_store_config(d->store)->spill_dir;
    if (!rc)
        rc = rt_new(d->model, d->store, &d->rt, e);
    if (rc)
        goto fail;
    d->pm = *rt_model(d->rt);
    rc = check_policy(d, e);
    if (rc)
        goto fail;
    /* the limits, once the smallest usable session is known */
    const size_t min = d->session_min;
    if ((cfg->kv_budget && cfg->kv_budget < min) ||
        (cfg->session_budget && cfg->session_budget < min)) {
        const bool global = cfg->kv_budget && cfg->kv_budget < min;
        rc = err_set(e, ERR_INVAL,
                     "%s %zu bytes is below the smallest usable session budget for this model, "
                     "%zu bytes (%.0f KiB: one KV block of %u rows for each of its %u lanes)",
                     global ? "--kv-budget" : "--session-budget",
                     global ? cfg->kv_budget : cfg->session_budget, min, min / 1024.0,
                     kv_block_rows(d->store), d->n_lane);
        goto fail;
    }
    if (cfg->kv_budget)
        kv_store_set_limits(d->store, cfg->kv_budget, cfg->kv_budget / 8 * 7, NULL);

    d->zctx = zmq_ctx_new();
    d->sock = d->zctx ? zmq_socket(d->zctx, ZMQ_ROUTER) : NULL;
    if (!d->sock) {
        rc = err_set(e, ERR_IO, "cannot make a ZeroMQ socket: %s", zmq_strerror(errno));
        goto fail;
    }
    int one = 1, zero = 0, hwm = DMN_SNDHWM, rcvhwm = DMN_RCVHWM;
    int64_t maxmsg = (int64_t)cfg->max_request * 4 + 4096; /* beyond this: disconnect */
    zmq_setsockopt(d->sock, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    zmq_setsockopt(d->sock, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(d->sock, ZMQ_RCVHWM, &rcvhwm, sizeof rcvhwm);
    zmq_setsockopt(d->sock, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(d->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    rc = dmn_auth_init(d, e);
    if (rc)
        goto fail;
    if (zmq_bind(d->sock, d->listen) < 0) {
        rc = err_set(e, ERR_IO, "cannot listen on %s: %s", d->listen, zmq_strerror(errno));
        goto fail;
    }
    size_t ep_len = sizeof d->endpoint;
    if (zmq_getsockopt(d->sock, ZMQ_LAST_ENDPOINT, d->endpoint, &ep_len) < 0)
        snprintf(d->endpoint, sizeof d->endpoint, "%s", d->listen);

    if (d->snapshot_dir)
        dmn_snapshot_restore_all(d);
    dmn_log(d, DMN_LOG_INFO, "serving %s on %s (%u layers, %u kv-heads, head_dim %u)",
            d->model_path, d->endpoint, d->hp->n_layer, d->hp->n_head_kv, d->hp->head_dim);
    *out = d;
    return 0;
fail:
    dmn_destroy(&d);
    return rc;
}

void dmn_destroy(dmn_t **p)
{
    dmn_t *d = *p;
    if (!d)
        return;
    while (d->n_sess > 0)
        dmn_session_close(d, d->sess[d->n_sess - 1]);
    free(d->sess);
    /* the handshake monitor stops while its socket is still open; then the last replies
     * (CANCELLED at shutdown) go out before the socket closes, and the ZAP handler last */
    dmn_auth_stop_monitor(d);
    if (d->sock) {
        int linger = DMN_LINGER_MS;
        zmq_setsockopt(d->sock, ZMQ_LINGER, &linger, sizeof linger);
        zmq_close(d->sock);
        d->sock = NULL;
    }
    dmn_auth_fini(d);
    if (d->zctx)
        zmq_ctx_term(d->zctx);
    rt_destroy(&d->rt);
    kv_store_destroy(&d->store);
    mdl_destroy(&d->model);
    free(d->out);
    free(d->slot_sess);
    free(d->model_path);
    free(d->listen);
    free(d->snapshot_dir);
    free(d->policy);
    free(d);
    *p = NULL;
}

const char *dmn_endpoint(const dmn_t *d)
{
    return d->endpoint;
}

/* Ends every running request and, with a snapshot folder, writes every session. */
static void shut_down(dmn_t *d)
{
    for (uint32_t i = 0; i < d->n_sess; i++) {
        dmn_session_t *s = d->sess[i];
        if (s->act.kind != DMN_REQ_NONE)
            dmn_req_finish(d, s, GISTD__STOP_REASON__STOP_CANCELLED, NULL, 0);
    }
    if (!d->snapshot_dir)
        return;
    for (uint32_t i = 0; i < d->n_sess; i++) {
        err_info_t e;
        err_clear(&e);
        if (dmn_snapshot_write(d, d->sess[i], NULL, &e))
            dmn_log(d, DMN_LOG_ERROR, "snapshot of session %u: %s", d->sess[i]->id, err_msg(&e));
    }
    dmn_log(d, DMN_LOG_INFO, "wrote %u session snapshot(s) to %s", d->n_sess, d->snapshot_dir);
}

/* A Progress reply to every request that has prefilled DMN_PROGRESS_S without one: a client
 * waits as long as the daemon works on its request, however long a prefill takes. */
static void keep_alive(dmn_t *d, double now)
{
    for (uint32_t i = 0; i < d->n_sess; i++) {
        dmn_session_t *s = d->sess[i];
        dmn_active_t *a = &s->act;
        if (a->kind == DMN_REQ_NONE || a->peer_gone || a->n_gen > 0)
            continue; /* a generation streams its tokens: they keep the client waiting */
        if (a->t_progress == 0.0)
            a->t_progress = a->t_arrive;
        if (now - a->t_progress < DMN_PROGRESS_S)
            continue;
        a->t_progress = now;
        Gistd__Progress pg = GISTD__PROGRESS__INIT;
        pg.prompt_done = a->prompt_tokens;
        pg.prompt_total = a->prompt_tokens + a->prompt_left;
        pg.generated = a->n_gen;
        Gistd__Reply r = GISTD__REPLY__INIT;
        r.id = a->id;
        r.session = s->id;
        r.body_case = GISTD__REPLY__BODY_PROGRESS;
        r.progress = &pg;
        dmn_send(d, &a->peer, &r);
    }
}

/* Closes the sessions idle for longer than the idle timeout; with a snapshot folder each is
 * snapshotted first and marked closed, so that a Restore brings it back. A session whose
 * snapshot fails stays live (and is tried again at the next sweep). */
static void idle_sweep(dmn_t *d, double now)
{
    if (d->cfg.idle_timeout <= 0 || now - d->t_idle < DMN_IDLE_SWEEP_S)
        return;
    d->t_idle = now;
    for (uint32_t i = 0; i < d->n_sess;) {
        dmn_session_t *s = d->sess[i];
        if (s->act.kind != DMN_REQ_NONE || now - s->t_last < d->cfg.idle_timeout) {
            i++;
            continue;
        }
        const uint32_t id = s->id;
        if (d->snapshot_dir) {
            err_info_t e;
            err_clear(&e);
            const bool kept = s->snap_kept;
            s->snap_kept = true;
            if (dmn_snapshot_write(d, s, NULL, &e) || dmn_snapshot_mark_closed(d, s, &e)) {
                s->snap_kept = kept;
                s->t_last = now; /* not again before another idle timeout */
                dmn_log(d, DMN_LOG_ERROR, "session %u stays live: idle, but %s", id, err_msg(&e));
                i++;
                continue;
            }
        }
        dmn_log(d, DMN_LOG_INFO, "session %u closed after %.0f s idle%s", id, now - s->t_last,
                d->snapshot_dir ? "; its snapshot is kept" : "");
        dmn_session_close(d, s); /* the next session moves to index i */
    }
}

int dmn_run(dmn_t *d, int stop_fd)
{
    /* the socket, the ZAP handler (with CURVE), the stop descriptor */
    zmq_pollitem_t items[4] = {{d->sock, 0, ZMQ_POLLIN, 0}};
    int n_items = 1, i_zap = -1, i_mon = -1, i_stop = -1;
    if (d->zap) {
        i_zap = n_items;
        items[n_items++] = (zmq_pollitem_t){d->zap, 0, ZMQ_POLLIN, 0};
    }
    if (d->mon) {
        i_mon = n_items;
        items[n_items++] = (zmq_pollitem_t){d->mon, 0, ZMQ_POLLIN, 0};
    }
    if (stop_fd >= 0) {
        i_stop = n_items;
        items[n_items++] = (zmq_pollitem_t){NULL, stop_fd, ZMQ_POLLIN, 0};
    }
    int rc = 0;
    while (!d->stopping) {
        bool busy = dmn_sched_busy(d);
        /* idle, it still wakes for the idle sweep while there are sessions */
        const long wait = busy ? 0 : d->n_sess && d->cfg.idle_timeout > 0 ? 1000 : -1;
        int n = zmq_poll(items, n_items, wait);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            dmn_log(d, DMN_LOG_ERROR, "poll: %s", zmq_strerror(errno));
            rc = ERR_IO;
            break;
        }
        if ((i_zap >= 0 && (items[i_zap].revents & ZMQ_POLLIN)) ||
            (i_mon >= 0 && (items[i_mon].revents & ZMQ_POLLIN)))
            dmn_zap_serve(d);
        if (i_stop >= 0 && (items[i_stop].revents & ZMQ_POLLIN)) {
            char c = 0;
            const ssize_t got = read(stop_fd, &c, 1);
            if (got < 0)
                dmn_log(d, DMN_LOG_WARN, "stop descriptor: %s", strerror(errno));
            if (got == 1 && c == DMN_CTL_RELOAD) {
                err_info_t e;
                err_clear(&e);
                if (dmn_auth_reload(d, &e))
                    dmn_log(d, DMN_LOG_ERROR, "%s; the previous list stays", err_msg(&e));
                continue;
            }
            /* any other byte, or end of file, asks to stop */
            dmn_log(d, DMN_LOG_INFO, "stopping");
            d->stopping = true;
            break;
        }
        if (items[0].revents & ZMQ_POLLIN) {
            for (int i = 0; i < DMN_RECV_BURST; i++) {
                int got = recv_one(d);
                if (got <= 0) {
                    if (got < 0)
                        rc = got;
                    break;
                }
            }
            if (rc < 0)
                break;
        }
        if (dmn_sched_busy(d))
            dmn_sched_step(d);
        const double now = dmn_now();
        keep_alive(d, now);
        idle_sweep(d, now);
    }
    shut_down(d);
    return rc;
}
