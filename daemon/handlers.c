/*
 * daemon/handlers.c — one function per request: check it, then answer it or start it.
 *
 * dmn_handle decodes the payload, calls the handler for its body, and frees the decoded
 * message before it returns: a handler copies whatever it keeps (text becomes tokens in the
 * session's queue, stop strings are copied). Requests that need the model (append,
 * generate, score) only set up the session's request here; the scheduler runs them.
 * Every check that fails is an Error reply saying what was wrong; nothing changes then.
 *
 * Access: a session belongs to the credential that opened it (auth.c). Another credential
 * cannot use it, see it in a listing or restore over it (ERR_PERM, "session N belongs to
 * another client") unless it is an admin key; with CURVE on, budgets and snapshots of every
 * session are for admin keys only. Its text (transcript, append, generate, score) is its
 * owner's alone, an admin's included: admins manage sessions, they do not read them. A
 * snapshot another client owns is answered as if there were none. Without CURVE every
 * client is the local credential.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/dmn_impl.h"

typedef struct hctx {
    dmn_t *d;
    const dmn_peer_t *peer;
    uint64_t id;
} hctx_t;

static void reply(const hctx_t *h, uint32_t session, Gistd__Reply *r)
{
    r->id = h->id;
    r->final = true;
    r->session = session;
    dmn_send(h->d, h->peer, r);
}

static void fail(const hctx_t *h, uint32_t session, const err_info_t *e)
{
    dmn_send_error(h->d, h->peer, h->id, session, e);
}

static void refuse_foreign(const hctx_t *h, uint32_t id)
{
    h->d->refused_perm++;
    dmn_log(h->d, DMN_LOG_INFO, "client %s refused session %u: not its owner",
            *h->peer->cred ? h->peer->cred : "(local)", id);
    dmn_send_errorf(h->d, h->peer, h->id, id, ERR_PERM, "session %u belongs to another client", id);
}

/* Whether the client may run daemon-wide work `what`; after an Error reply when not. */
static bool need_admin(const hctx_t *h, uint32_t session, const char *what)
{
    if (dmn_peer_admin(h->d, h->peer))
        return true;
    h->d->refused_perm++;
    dmn_send_errorf(h->d, h->peer, h->id, session, ERR_PERM,
                    "%s is for admin keys only (marked 'admin' in the daemon's --allow-keys)",
                    what);
    return false;
}

/* The session a request names, or NULL after an Error reply. */
static dmn_session_t *find(const hctx_t *h, uint32_t id, bool must_be_idle)
{
    dmn_session_t *s = dmn_session_find(h->d, id);
    if (!s && id == 0) {
        dmn_send_errorf(h->d, h->peer, h->id, id, ERR_INVAL,
                        "the request names no session (session ids start at 1)");
        return NULL;
    }
    if (!s) {
        if (h->d->snapshot_dir && dmn_snapshot_closed_has(h->d, id))
            dmn_send_errorf(h->d, h->peer, h->id, id, ERR_NOTFOUND,
                            "session %u is closed (its snapshot is kept: gistctl restore %u "
                            "brings it back)",
                            id, id);
        else
            dmn_send_errorf(h->d, h->peer, h->id, id, ERR_NOTFOUND, "no session %u", id);
        return NULL;
    }
    if (!dmn_peer_owns(h->d, h->peer, s)) {
        refuse_foreign(h, id);
        return NULL;
    }
    if (must_be_idle && s->act.kind != DMN_REQ_NONE) {
        dmn_send_errorf(h->d, h->peer, h->id, id, ERR_BUSY,
                        "session %u is running request %llu; wait for it or cancel it", id,
                        (unsigned long long)s->act.id);
        return NULL;
    }
    return s;
}

/* The session a request that reads or writes its text names, or NULL after an Error reply:
 * like find, but an admin key that does not own it is refused too. */
static dmn_session_t *find_text(const hctx_t *h, uint32_t id, bool must_be_idle)
{
    dmn_session_t *s = find(h, id, must_be_idle);
    if (s && !dmn_peer_owns_text(h->d, h->peer, s)) {
        h->d->refused_perm++;
        dmn_send_errorf(h->d, h->peer, h->id, id, ERR_PERM,
                        "session %u's text is its owner's alone: admin keys manage sessions "
                        "but do not read or write them",
                        id);
        return NULL;
    }
    return s;
}

static void ack(const hctx_t *h, uint32_t session)
{
    Gistd__Ack a = GISTD__ACK__INIT;
    Gistd__Reply r = GISTD__REPLY__INIT;
    r.body_case = GISTD__REPLY__BODY_ACK;
    r.ack = &a;
    reply(h, session, &r);
}

/* Starts a request on s: the client to answer, and the clock. */
static void start(const hctx_t *h, dmn_session_t *s, dmn_req_kind_t kind)
{
    dmn_active_clear(&s->act);
    s->act.kind = kind;
    s->act.peer = *h->peer;
    s->act.id = h->id;
    s->act.pos_first = UINT32_MAX;
    s->act.t_arrive = dmn_now();
}

/* Token ids from the wire, checked against the vocabulary, pushed to the queue. */
static int push_ids(const hctx_t *h, dmn_session_t *s, const int32_t *ids, size_t n,
                    uint32_t *added, err_info_t *e)
{
    const uint32_t nv = h->d->hp->n_vocab;
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || (uint32_t)ids[i] >= nv)
            return err_set(e, ERR_RANGE, "token %d at index %zu is outside the vocabulary [0, %u)",
                           ids[i], i, nv);
    uint32_t bos = 0;
    if (s->rt.n_past + s->n_pend == 0 && s->add_bos && n > 0 && ids[0] != tok_bos(h->d->tok)) {
        const int32_t b = tok_bos(h->d->tok);
        if (dmn_session_push(s, &b, 1))
            return err_set(e, ERR_NOMEM, "out of memory");
        bos = 1;
    }
    if (dmn_session_push(s, ids, (uint32_t)n)) {
        dmn_session_drop_tail(s, bos);
        return err_set(e, ERR_NOMEM, "no room for %zu more pending tokens", n);
    }
    if (n > 0)
        s->text_started = true;
    *added = bos + (uint32_t)n;
    return 0;
}

/* ------------------------------------------------------------------ handshake, sessions */

static void on_hello(const hctx_t *h, const Gistd__Hello *m)
{
    if (m->version != DMN_PROTOCOL) {
        dmn_send_errorf(h->d, h->peer, h->id, 0, ERR_UNSUPPORTED,
                        "the client speaks protocol version %u; this daemon speaks version %d",
                        m->version, DMN_PROTOCOL);
        return;
    }
    const dmn_t *d = h->d;
    Gistd__ModelInfo mi = GISTD__MODEL_INFO__INIT;
    char name[128] = "";
    gguf_str_t gs;
    if (gguf_get_str(mdl_gguf(d->model), "general.name", &gs, NULL) == 0)
        snprintf(name, sizeof name, "%.*s", (int)(gs.len < 127 ? gs.len : 127), gs.ptr);
    mi.name = name;
    mi.path = d->model_path;
    mi.n_vocab = d->hp->n_vocab;
    mi.n_ctx = d->hp->n_ctx;
    mi.n_embd = d->hp->n_embd;
    mi.n_layer = d->hp->n_layer;
    mi.n_head = d->hp->n_head;
    mi.n_head_kv = d->hp->n_head_kv;
    mi.head_dim = d->hp->head_dim;
    mi.bos = tok_bos(d->tok);
    mi.eos = tok_eos(d->tok);
    mi.n_gist = d->hp->n_gist;
    mi.retention = mdl_has_retention(d->model);
    Gistd__HelloReply hr = GISTD__HELLO_REPLY__INIT;
    hr.version = DMN_PROTOCOL;
    hr.server = (char *)DMN_VERSION;
    hr.model = &mi;
    hr.max_request_bytes = d->cfg.max_request;
    Gistd__Reply r = GISTD__REPLY__INIT;
    r.body_case = GISTD__REPLY__BODY_HELLO;
    r.hello = &hr;
    reply(h, 0, &r);
}

static void send_opened(const hctx_t *h, const dmn_session_t *s)
{
    size_t hard = 0, soft = 0;
    kv_session_limits(h->d->store, s->rt.kv, &hard, &soft);
    Gistd__SessionOpened so = GISTD__SESSION_OPENED__INIT;
    so.session = s->id;
    so.budget_bytes = hard;
    so.soft_bytes = soft;
    so.tokens = s->rt.n_past + s->n_pend;
    Gistd__Reply r = GISTD__REPLY__INIT;
    r.body_case = GISTD__REPLY__BODY_OPENED;
    r.opened = &so;
    reply(h, s->id, &r);
}

static void on_open(const hctx_t *h, const Gistd__OpenSession *m)
{
    dmn_session_t *s;
    err_info_t e;
    err_clear(&e);
    const uint32_t lim = h->d->max_client_sessions;
    if (lim && dmn_cred_sessions(h->d, h->peer->cred) >= lim) {
        dmn_send_errorf(h->d, h->peer, h->id, 0, ERR_LIMIT,
                        "this client already has %u sessions open, the most one client may "
                        "hold (gistd --max-client-sessions); close one first",
                        lim);
        return;
    }
    if (dmn_session_open(h->d, m, 0, &s, &e)) {
        fail(h, 0, &e);
        return;
    }
    snprintf(s->cred, sizeof s->cred, "%s", h->peer->cred);
    dmn_log(h->d, DMN_LOG_INFO, "session %u opened (policy %s)", s->id, pol_name(s->rt.pol));
    send_opened(h, s);
}

static void on_close(const hctx_t *h, const Gistd__CloseSession *m)
{
    dmn_t *d = h->d;
    dmn_session_t *s = find(h, m->session, false);
    if (!s)
        return;
    /* a snapshot the client asked for stays, marked closed, unless it says forget */
    err_info_t e;
    err_clear(&e);
    const bool keep = s->snap_kept && !m->forget && d->snapshot_dir;
    if (keep && dmn_snapshot_mark_closed(d, s, &e)) {
        fail(h, m->session, &e); /* nothing changed: the session stays live */
        return;
    }
    dmn_session_close(d, s);
    if (!keep)
        dmn_snapshot_remove(d, m->session);
    dmn_log(d, DMN_LOG_INFO, "session %u closed%s", m->session,
            keep ? "; its snapshot is kept" : "");
    ack(h, m->session);
}

static void on_cancel(const hctx_t *h, const Gistd__Cancel *m)
{
    dmn_session_t *s = find(h, m->session, false);
    if (!s)
        return;
    if (s->act.kind != DMN_REQ_NONE)
        dmn_req_finish(h->d, s, GISTD__STOP_REASON__STOP_CANCELLED, NULL, 0);
    ack(h, m->session);
}

/* ------------------------------------------------------------------ model work */

static void on_append(const hctx_t *h, const Gistd__Append *m)
{
    dmn_session_t *s = find_text(h, m->session, true);
    if (!s)
        return;
    err_info_t e;
    err_clear(&e);
    uint32_t added = 0;
    int rc = m->text.len > 0 || m->n_tokens == 0
                 ? dmn_session_push_text(h->d, s, m->text.data, m->text.len, m->role, m->special,
                                         &added, &e)
                 : push_ids(h, s, m->tokens, m->n_tokens, &added, &e);
    if (rc) {
        fail(h, s->id, &e);
        return;
    }
    start(h, s, DMN_REQ_APPEND);
    s->act.role = m->role;
    s->act.prompt_left = added; /* an empty append is acknowledged by the next step */
}

static void on_generate(const hctx_t *h, const Gistd__Generate *m)
{
    dmn_t *d = h->d;
    dmn_session_t *s = find_text(h, m->session, true);
    if (!s)
        return;
    err_info_t e;
    err_clear(&e);
    mdl_sampler_cfg_t sc;
    if (dmn_session_sampling(d, s, m->sampling, &sc, &e)) {
        fail(h, s->id, &e);
        return;
    }
    const char *tstop = m->role == GISTD__ROLE__ROLE_ASSISTANT ? s->tmpl->stop : NULL;
    if (m->n_stop + (tstop != NULL) > DMN_MAX_STOP) {
        dmn_send_errorf(d, h->peer, h->id, s->id, ERR_INVAL, "more than %d stop strings",
                        DMN_MAX_STOP);
        return;
    }
    for (size_t i = 0; i < m->n_stop; i++)
        if (m->stop[i].len == 0 || m->stop[i].len > DMN_MAX_STOP_LEN) {
            dmn_send_errorf(d, h->peer, h->id, s->id, ERR_INVAL,
                            "stop string %zu is %zu bytes long; allowed: 1 to %d", i,
                            m->stop[i].len, DMN_MAX_STOP_LEN);
            return;
        }
    if (m->prompt_role < 0 || m->prompt_role > 3 || m->role < 0 || m->role > 3) {
        dmn_send_errorf(d, h->peer, h->id, s->id, ERR_INVAL, "unknown role");
        return;
    }

    start(h, s, DMN_REQ_GENERATE);
    dmn_active_t *a = &s->act;
    a->role = m->role;
    a->max_tokens = m->max_tokens;
    a->turn_in = m->prompt.len > 0 && m->prompt_role != GISTD__ROLE__ROLE_SYSTEM;
    uint32_t added = 0, more = 0;
    int rc = 0;
    if (m->prompt.len > 0 || s->rt.n_past + s->n_pend == 0)
        rc = dmn_session_push_text(d, s, m->prompt.data, m->prompt.len, m->prompt_role, m->special,
                                   &added, &e);
    if (!rc && m->role == GISTD__ROLE__ROLE_ASSISTANT && *s->tmpl->prefix[m->role]) {
        const char *pre = s->tmpl->prefix[m->role];
        rc = dmn_session_push_text(d, s, (const uint8_t *)pre, strlen(pre), 0, true, &more, &e);
        added += more;
    }
    if (!rc && s->rt.n_past + s->n_pend == 0)
        rc = err_set(&e, ERR_INVAL,
                     "session %u is empty and the model has no BOS token: give "
                     "a prompt",
                     s->id);
    a->prompt_left = added;
    if (!rc) {
        for (size_t i = 0; i < m->n_stop + (tstop != NULL) && !rc; i++) {
            const size_t len = i < m->n_stop ? m->stop[i].len : strlen(tstop);
            a->stop[i] = malloc(len);
            if (!a->stop[i]) {
                rc = err_set(&e, ERR_NOMEM, "out of memory");
                break;
            }
            memcpy(a->stop[i], i < m->n_stop ? (const char *)m->stop[i].data : tstop, len);
            a->stop_len[i] = len;
            a->n_stop = (uint32_t)i + 1;
        }
    }
    if (!rc)
        rc = mdl_sampler_new(&sc, d->hp->n_vocab, &a->smp, &e);
    if (!rc && sc.repeat_last_n > 0 && sc.repeat_penalty != 1.0f) {
        /* the repetition window sees the session's last tokens, prompt included */
        const uint32_t len = s->rt.n_past + s->n_pend;
        const uint32_t n = len < (uint32_t)sc.repeat_last_n ? len : (uint32_t)sc.repeat_last_n;
        int32_t *win = malloc(sizeof(int32_t) * (n ? n : 1));
        rc = win ? dmn_session_tokens(d, s, len - n, n, win) : ERR_NOMEM;
        for (uint32_t i = 0; !rc && i < n; i++)
            mdl_sampler_accept(a->smp, win[i]);
        free(win);
        if (rc)
            err_set(&e, rc, "cannot read session %u's recent tokens", s->id);
    }
    if (rc)
        dmn_req_fail(d, s, &e);
}

static void on_score(const hctx_t *h, const Gistd__Score *m)
{
    dmn_t *d = h->d;
    dmn_session_t *s = find_text(h, m->session, true);
    if (!s)
        return;
    err_info_t e;
    err_clear(&e);
    const uint32_t before = s->rt.n_past + s->n_pend, pend_before = s->n_pend;
    const bool bos = before == 0 && s->add_bos;
    uint32_t added = 0;
    int rc = m->text.len > 0
                 ? dmn_session_push_text(d, s, m->text.data, m->text.len, 0, false, &added, &e)
                 : push_ids(h, s, m->tokens, m->n_tokens, &added, &e);
    if (rc) {
        fail(h, s->id, &e);
        return;
    }
    start(h, s, DMN_REQ_SCORE);
    dmn_active_t *a = &s->act;
    a->prompt_left = added;
    const uint32_t skip =
        bos && added > 0 && s->pend[s->pend_head + pend_before] == tok_bos(d->tok);
    a->score_first = before + skip;
    a->n_score = added - skip;
    a->score_tok = malloc(sizeof(int32_t) * (a->n_score ? a->n_score : 1));
    a->logprob = malloc(sizeof(float) * (a->n_score ? a->n_score : 1));
    if (!a->score_tok || !a->logprob) {
        err_set(&e, ERR_NOMEM, "out of memory");
        dmn_req_fail(d, s, &e);
        return;
    }
    for (uint32_t i = 0; i < a->n_score; i++) {
        a->score_tok[i] = s->pend[s->pend_head + pend_before + skip + i];
        a->logprob[i] = NAN;
    }
    /* the first token follows what is stored: the session's last logits predict it */
    if (a->n_score > 0 && pend_before == 0 && !skip && s->rt.have_logits)
        a->logprob[0] = (float)-mdl_token_nll(s->rt.logits, d->hp->n_vocab, a->score_tok[0]);
}

static void on_compact(const hctx_t *h, const Gistd__Compact *m)
{
    dmn_t *d = h->d;
    dmn_session_t *s = find(h, m->session, true);
    if (!s)
        return;
    pol_compact_req_t cr = {.last_thought = m->last_thought};
    if (!m->last_thought) {
        if (!m->span || m->span->first > m->span->last || m->span->last >= s->rt.n_past) {
            dmn_send_errorf(d, h->peer, h->id, s->id, ERR_RANGE,
                            "compact needs a span of stored positions, first <= last < %u",
                            s->rt.n_past);
            return;
        }
        cr.first = m->span->first;
        cr.last = m->span->last;
    }
    /* A compaction changes what is stored, not where the text is: the session's prediction of
     * the next token stays the one its last token made with its text in view, as when the
     * policy closes a thought on its own (rt_step_add: the gists run once the next token
     * came), not the prediction of the gists it ran */
    const size_t nv = d->hp->n_vocab;
    float *keep = NULL;
    if (s->rt.have_logits) {
        keep = malloc(nv * sizeof *keep);
        if (!keep) {
            dmn_send_errorf(d, h->peer, h->id, s->id, ERR_NOMEM, "out of memory");
            return;
        }
        memcpy(keep, s->rt.logits, nv * sizeof *keep);
    }
    /* compaction events of this request go to its client */
    start(h, s, DMN_REQ_APPEND);
    err_info_t e;
    err_clear(&e);
    int rc = pol_compact(s->rt.pol, &cr, &e);
    rt_sess_sync(d->rt, &s->rt);
    if (keep) {
        memcpy(s->rt.logits, keep, nv * sizeof *keep);
        free(keep);
    }
    if (rc)
        dmn_req_fail(d, s, &e);
    else
        dmn_req_finish(d, s, GISTD__STOP_REASON__STOP_NONE, NULL, 0);
}

static void on_expand(const hctx_t *h, const Gistd__Expand *m)
{
    dmn_t *d = h->d;
    dmn_session_t *s = find(h, m->session, true);
    if (!s)
        return;
    if (m->span && (m->span->first > m->span->last || m->span->last >= s->rt.n_past)) {
        dmn_send_errorf(d, h->peer, h->id, s->id, ERR_RANGE,
                        "expand needs a span of stored positions, first <= last < %u",
                        s->rt.n_past);
        return;
    }
    /* the events of this request (room made, expansions) go to its client */
    start(h, s, DMN_REQ_APPEND);
    err_info_t e;
    err_clear(&e);
    rt_expand_result_t r;
    int rc = dmn_expand(d, s, m->span != NULL, m->span ? m->span->first : 0,
                        m->span ? m->span->last : 0, m->max_tokens, POL_R_REQUEST, &r, &e);
    if (rc) {
        dmn_req_fail(d, s, &e);
        return;
    }
    Gistd__ExpandReply x = GISTD__EXPAND_REPLY__INIT;
    x.spans = r.spans;
    x.tokens = r.tokens;
    x.bytes = r.bytes;
    x.session_bytes = kv_session_bytes(d->store, s->rt.kv);
    x.candidates = r.candidates;
    x.ms = r.ms;
    x.note = r.note;
    Gistd__Reply rep = GISTD__REPLY__INIT;
    rep.body_case = GISTD__REPLY__BODY_EXPAND;
    rep.expand = &x;
    dmn_active_clear(&s->act);
    s->t_last = dmn_now();
    reply(h, s->id, &rep);
}

/* ------------------------------------------------------------------ reading */

static void on_info(const hctx_t *h, const Gistd__SessionInfoRequest *m)
{
    dmn_session_t *s = find(h, m->session, false);
    if (!s)
        return;
    Gistd__SessionInfo info;
    Gistd__TierBytes tiers;
    dmn_session_info(h->d, s, &info, &tiers);
    Gistd__Reply r = GISTD__REPLY__INIT;
    r.body_case = GISTD__REPLY__BODY_INFO;
    r.info = &info;
    reply(h, s->id, &r);
}

/* Live sessions, then closed ones whose snapshot is kept (state "closed"): those the client
 * may use. */
static void on_list(const hctx_t *h)
{
    dmn_t *d = h->d;
    dmn_closed_t *closed = NULL;
    const uint32_t n_closed = dmn_snapshot_closed(d, &closed);
    const uint32_t n = d->n_sess + n_closed;
    Gistd__SessionInfo *infos = calloc(n ? n : 1, sizeof *infos);
    Gistd__SessionInfo **ptrs = calloc(n ? n : 1, sizeof *ptrs);
    Gistd__TierBytes *tiers = calloc(n ? n : 1, sizeof *tiers);
    if (!infos || !ptrs || !tiers) {
        dmn_send_errorf(d, h->peer, h->id, 0, ERR_NOMEM, "out of memory");
    } else {
        uint32_t k = 0;
        for (uint32_t i = 0; i < d->n_sess; i++) {
            if (!dmn_peer_owns(d, h->peer, d->sess[i]))
                continue; /* another client's session is not shown */
            dmn_session_info(d, d->sess[i], &infos[k], &tiers[k]);
            ptrs[k] = &infos[k];
            k++;
        }
        for (uint32_t i = 0; i < n_closed; i++) {
            const dmn_closed_t *c = &closed[i];
            if (!dmn_peer_admin(d, h->peer) && strcmp(c->cred, h->peer->cred))
                continue;
            gistd__session_info__init(&infos[k]);
            gistd__tier_bytes__init(&tiers[k]);
            infos[k].id = c->id;
            infos[k].name = (char *)c->name;
            infos[k].state = (char *)"closed";
            infos[k].policy = (char *)"";
            infos[k].chat_template = (char *)"";
            infos[k].tokens = c->tokens;
            infos[k].idle_s = c->age_s;
            infos[k].compression = 1.0;
            infos[k].tiers = &tiers[k];
            ptrs[k] = &infos[k];
            k++;
        }
        Gistd__SessionList sl = GISTD__SESSION_LIST__INIT;
        sl.n_sessions = k;
        sl.sessions = ptrs;
        Gistd__Reply r = GISTD__REPLY__INIT;
        r.body_case = GISTD__REPLY__BODY_SESSIONS;
        r.sessions = &sl;
        reply(h, 0, &r);
    }
    free(closed);
    free(infos);
    free(ptrs);
    free(tiers);
}

static void on_transcript(const hctx_t *h, const Gistd__TranscriptRequest *m)
{
    dmn_t *d = h->d;
    dmn_session_t *s = find_text(h, m->session, false);
    if (!s)
        return;
    const uint32_t total = s->rt.n_past + s->n_pend;
    if (m->first > total) {
        dmn_send_errorf(d, h->peer, h->id, s->id, ERR_RANGE,
                        "first position %u is past the transcript's end (%u)", m->first, total);
        return;
    }
    uint32_t n = total - m->first;
    n = m->count && m->count < n ? m->count : n;
    int32_t *ids = malloc(sizeof(int32_t) * (n ? n : 1));
    uint16_t *live = malloc(sizeof(uint16_t) * (n ? n : 1));
    protobuf_c_boolean *blive = malloc(sizeof(protobuf_c_boolean) * (n ? n : 1));
    char *text = NULL;
    size_t text_len = 0;
    int rc = ids && live && blive ? dmn_session_tokens(d, s, m->first, n, ids) : ERR_NOMEM;
    if (!rc && m->first < s->rt.n_past) {
        const uint32_t stored = s->rt.n_past - m->first < n ? s->rt.n_past - m->first : n;
        rc = kv_transcript_read(d->store, s->rt.kv, m->first, stored, NULL, live);
        for (uint32_t i = 0; !rc && i < n; i++)
            blive[i] = i >= stored || live[i] > 0;
    } else if (!rc) {
        for (uint32_t i = 0; i < n; i++)
            blive[i] = 1;
    }
    if (!rc)
        rc = tok_decode(d->tok, ids, n, &text, &text_len);
    if (rc) {
        dmn_send_errorf(d, h->peer, h->id, s->id, rc, "cannot read session %u's transcript", s->id);
    } else {
        Gistd__TranscriptReply tr = GISTD__TRANSCRIPT_REPLY__INIT;
        tr.session = s->id;
        tr.first = m->first;
        tr.total = total;
        tr.n_tokens = n;
        tr.tokens = ids;
        tr.text.data = (uint8_t *)text;
        tr.text.len = text_len;
        tr.n_live = n;
        tr.live = blive;
        Gistd__Reply r = GISTD__REPLY__INIT;
        r.body_case = GISTD__REPLY__BODY_TRANSCRIPT;
        r.transcript = &tr;
        reply(h, s->id, &r);
    }
    free(ids);
    free(live);
    free(blive);
    free(text);
}

/* ------------------------------------------------------------------ budgets, snapshots */

static void on_set_budget(const hctx_t *h, const Gistd__SetBudget *m)
{
    dmn_t *d = h->d;
    dmn_session_t *s = NULL;
    if (!need_admin(h, m->session, "changing a budget"))
        return;
    if (m->session && !(s = find(h, m->session, false)))
        return;
    if (!m->session && !m->hard_bytes) {
        dmn_send_errorf(d, h->peer, h->id, 0, ERR_INVAL,
                        "the global limit must be above 0 bytes (0 would switch it off)");
        return;
    }
    if (m->hard_bytes > d->budget_max) {
        dmn_send_errorf(d, h->peer, h->id, m->session, ERR_INVAL,
                        "a limit of %llu bytes is above the most a budget may be, %zu bytes (%s)",
                        (unsigned long long)m->hard_bytes, d->budget_max, d->budget_max_from);
        return;
    }
    const size_t hard = m->hard_bytes;
    /* a session's soft watermark leaves its policy room to work; the store's is 7/8 */
    const size_t head = s ? pol_headroom(s->rt.pol, d->cfg.prefill_chunk) : hard / 8;
    const size_t soft = m->soft_bytes ? m->soft_bytes : hard > head ? hard - head : hard / 2;
    if (m->soft_bytes && (!hard || m->soft_bytes > hard)) {
        dmn_send_errorf(d, h->peer, h->id, m->session, ERR_INVAL,
                        "soft watermark of %llu bytes above the hard limit of %zu",
                        (unsigned long long)m->soft_bytes, hard);
        return;
    }
    size_t used = s ? kv_session_bytes(d->store, s->rt.kv) : kv_store_bytes(d->store), old = 0;
    /* under a limit every block's bytes go with it: the payload runs with free slots go
     * first (moving rows, not dropping them), and their free slots count as freed */
    for (uint32_t i = 0; hard && i < (s ? 1 : d->n_sess); i++)
        kv_session_dissolve_runs(d->store, s ? s->rt.kv : d->sess[i]->rt.kv);
    const size_t solid = s ? kv_session_bytes(d->store, s->rt.kv) : kv_store_bytes(d->store);
    int64_t freed = (int64_t)used - (int64_t)solid;
    used = solid;
    err_info_t e;
    err_clear(&e);
    if (hard && used > hard) {
        /* compact down to the new limit at once, or refuse it */
        int64_t got = 0;
        dmn_shrink(d, s, hard, "budget", &got, &e);
        freed += got;
        used = s ? kv_session_bytes(d->store, s->rt.kv) : kv_store_bytes(d->store);
        if (used > hard) {
            if (s)
                kv_session_limits(d->store, s->rt.kv, &old, NULL);
            else
                kv_store_limits(d->store, &old, NULL);
            dmn_send_errorf(d, h->peer, h->id, m->session, ERR_BUDGET,
                            "%s holds %zu bytes, above the new limit of %zu, and its "
                            "polic%s freed only %lld; the limit stays %zu",
                            s ? "the session" : "the store", used, hard, s ? "y" : "ies",
                            (long long)freed, old);
            return;
        }
    }
    size_t excess = 0;
    int rc = s ? kv_session_set_limits(d->store, s->rt.kv, hard, soft, &excess)
               : kv_store_set_limits(d->store, hard, soft, &excess);
    if (rc) {
        dmn_send_errorf(d, h->peer, h->id, m->session, rc, "cannot set the limits");
        return;
    }
    dmn_log(d, DMN_LOG_INFO, "%s budget now %zu bytes (soft %zu)", s ? "session" : "global", hard,
            soft);
    Gistd__BudgetReply br = GISTD__BUDGET_REPLY__INIT;
    br.session = m->session;
    br.hard_bytes = hard;
    br.soft_bytes = soft;
    br.used_bytes = used;
    br.bytes_freed = freed;
    Gistd__Reply r = GISTD__REPLY__INIT;
    r.body_case = GISTD__REPLY__BODY_BUDGET;
    r.budget = &br;
    reply(h, m->session, &r);
}

static void on_snapshot(const hctx_t *h, const Gistd__Snapshot *m)
{
    dmn_t *d = h->d;
    if (!d->snapshot_dir) {
        dmn_send_errorf(d, h->peer, h->id, m->session, ERR_UNSUPPORTED,
                        "the daemon was started without --snapshot-dir");
        return;
    }
    dmn_session_t *one = NULL;
    if (!m->session && !need_admin(h, 0, "a snapshot of every session (session 0)"))
        return;
    if (m->session && !(one = find(h, m->session, false)))
        return;
    const uint32_t n = one ? 1 : d->n_sess;
    uint32_t *ids = calloc(n ? n : 1, sizeof *ids);
    char **paths = calloc(n ? n : 1, sizeof *paths);
    uint32_t done = 0;
    err_info_t e;
    err_clear(&e);
    int rc = ids && paths ? 0 : err_set(&e, ERR_NOMEM, "out of memory");
    for (uint32_t i = 0; !rc && i < n; i++) {
        dmn_session_t *s = one ? one : d->sess[i];
        rc = dmn_snapshot_write(d, s, &paths[done], &e);
        if (!rc) {
            ids[done++] = s->id;
            s->snap_kept = true; /* asked for: it outlives a close */
        }
    }
    if (rc) {
        fail(h, m->session, &e);
    } else {
        Gistd__SnapshotReply sr = GISTD__SNAPSHOT_REPLY__INIT;
        sr.n_sessions = done;
        sr.sessions = ids;
        sr.n_paths = done;
        sr.paths = paths;
        Gistd__Reply r = GISTD__REPLY__INIT;
        r.body_case = GISTD__REPLY__BODY_SNAPSHOT;
        r.snapshot = &sr;
        reply(h, m->session, &r);
    }
    for (uint32_t i = 0; paths && i < done; i++)
        free(paths[i]);
    free(ids);
    free(paths);
}

/* The one answer a client gets for a snapshot it may not restore: whether no file exists or
 * another client's does, the reply is the same, and it names no path. */
static void no_snapshot(const hctx_t *h, uint32_t id)
{
    dmn_send_errorf(h->d, h->peer, h->id, id, ERR_NOTFOUND,
                    "no snapshot of session %u that this client may restore", id);
}

/* Sends e with the snapshot folder taken out of every path in its message. */
static void fail_pathless(const hctx_t *h, uint32_t session, err_info_t *e)
{
    const char *dir = h->d->snapshot_dir;
    const size_t n = strlen(dir);
    char *at;
    while (n && (at = strstr(e->msg, dir)) && at[n] == '/')
        memmove(at, at + n + 1, strlen(at + n + 1) + 1);
    fail(h, session, e);
}

static void on_restore(const hctx_t *h, const Gistd__Restore *m)
{
    dmn_t *d = h->d;
    if (!d->snapshot_dir) {
        dmn_send_errorf(d, h->peer, h->id, m->session, ERR_UNSUPPORTED,
                        "the daemon was started without --snapshot-dir");
        return;
    }
    if (!m->session) {
        dmn_send_errorf(d, h->peer, h->id, 0, ERR_INVAL, "restore needs a session id");
        return;
    }
    dmn_session_t *s = dmn_session_find(d, m->session);
    if (s && !dmn_peer_owns(d, h->peer, s)) {
        refuse_foreign(h, m->session);
        return;
    }
    /* the file names its owner: a client that is not an admin restores only its own, and
     * learns nothing of another's (not even that it exists: no refusal is counted) */
    if (!s && !dmn_peer_admin(d, h->peer)) {
        char owner[DMN_CRED_LEN] = "";
        const int rc = dmn_snapshot_owner(d, m->session, owner, sizeof owner);
        if (rc == ERR_NOMEM) {
            dmn_send_errorf(d, h->peer, h->id, m->session, ERR_NOMEM, "out of memory");
            return;
        }
        if (rc || strcmp(owner, h->peer->cred)) {
            if (!rc)
                dmn_log(d, DMN_LOG_INFO, "client %s refused restoring session %u: not its owner",
                        *h->peer->cred ? h->peer->cred : "(local)", m->session);
            no_snapshot(h, m->session);
            return;
        }
    }
    err_info_t e;
    err_clear(&e);
    if (dmn_snapshot_restore(d, m->session, m->as_new, &s, &e)) {
        if (e.code == ERR_NOTFOUND) {
            dmn_log(d, DMN_LOG_INFO, "restore of session %u: %s", m->session, err_msg(&e));
            no_snapshot(h, m->session);
        } else {
            fail_pathless(h, m->session, &e);
        }
        return;
    }
    if (!dmn_peer_owns(d, h->peer, s)) { /* the file changed since its owner was read */
        dmn_session_close(d, s);
        no_snapshot(h, m->session);
        return;
    }
    const uint32_t lim = d->max_client_sessions;
    if (lim && dmn_cred_sessions(d, s->cred) > lim) {
        dmn_session_close(d, s);
        dmn_send_errorf(d, h->peer, h->id, m->session, ERR_LIMIT,
                        "the owner of session %u already has %u sessions open, the most one "
                        "client may hold (gistd --max-client-sessions); close one first",
                        m->session, lim);
        return;
    }
    if (!m->as_new)
        dmn_snapshot_unmark_closed(d, m->session); /* live again */
    send_opened(h, s);
}

/* ------------------------------------------------------------------ dispatch */

uint64_t dmn_request_peek_id(const uint8_t *p, size_t len)
{
    /* top-level fields: a varint key (field << 3 | wire type), then the value */
    size_t at = 0;
    for (int field_no = 0; at < len && field_no < 64; field_no++) {
        uint64_t v[2] = {0, 0};
        for (int k = 0; k < 2; k++) { /* the key, then a varint value */
            unsigned shift = 0;
            while (at < len && shift < 64) {
                const uint8_t b = p[at++];
                v[k] |= (uint64_t)(b & 0x7f) << shift;
                shift += 7;
                if (!(b & 0x80))
                    break;
            }
            if (k == 0 && (v[0] & 7) != 0)
                break; /* not a varint: its value is skipped below */
        }
        const uint64_t key = v[0];
        if (key == (1u << 3 | 0))
            return v[1];
        switch (key & 7) {
        case 0: /* varint: read above */
            break;
        case 1:
            at += 8;
            break;
        case 5:
            at += 4;
            break;
        case 2: {
            uint64_t n = 0;
            unsigned shift = 0;
            while (at < len && shift < 64) {
                const uint8_t b = p[at++];
                n |= (uint64_t)(b & 0x7f) << shift;
                shift += 7;
                if (!(b & 0x80))
                    break;
            }
            if (n > len - at)
                return 0;
            at += n;
            break;
        }
        default:
            return 0;
        }
    }
    return 0;
}

void dmn_handle(dmn_t *d, const dmn_peer_t *from, const uint8_t *payload, size_t len)
{
    Gistd__Request *req = gistd__request__unpack(NULL, len, payload);
    if (!req) {
        dmn_send_errorf(d, from, 0, 0, ERR_PROTO,
                        "the payload (%zu bytes) is not a valid gistd.Request", len);
        return;
    }
    const hctx_t h = {.d = d, .peer = from, .id = req->id};
    switch (req->body_case) {
    case GISTD__REQUEST__BODY_HELLO:
        on_hello(&h, req->hello);
        break;
    case GISTD__REQUEST__BODY_OPEN:
        on_open(&h, req->open);
        break;
    case GISTD__REQUEST__BODY_CLOSE:
        on_close(&h, req->close);
        break;
    case GISTD__REQUEST__BODY_APPEND:
        on_append(&h, req->append);
        break;
    case GISTD__REQUEST__BODY_GENERATE:
        on_generate(&h, req->generate);
        break;
    case GISTD__REQUEST__BODY_SCORE:
        on_score(&h, req->score);
        break;
    case GISTD__REQUEST__BODY_COMPACT:
        on_compact(&h, req->compact);
        break;
    case GISTD__REQUEST__BODY_EXPAND:
        on_expand(&h, req->expand);
        break;
    case GISTD__REQUEST__BODY_INFO:
        on_info(&h, req->info);
        break;
    case GISTD__REQUEST__BODY_LIST:
        on_list(&h);
        break;
    case GISTD__REQUEST__BODY_TRANSCRIPT:
        on_transcript(&h, req->transcript);
        break;
    case GISTD__REQUEST__BODY_STATS:
        dmn_send_stats(d, from, req->id, req->stats->sessions);
        break;
    case GISTD__REQUEST__BODY_SET_BUDGET:
        on_set_budget(&h, req->set_budget);
        break;
    case GISTD__REQUEST__BODY_SNAPSHOT:
        on_snapshot(&h, req->snapshot);
        break;
    case GISTD__REQUEST__BODY_RESTORE:
        on_restore(&h, req->restore);
        break;
    case GISTD__REQUEST__BODY_CANCEL:
        on_cancel(&h, req->cancel);
        break;
    default:
        dmn_send_errorf(d, from, req->id, 0, ERR_PROTO,
                        "request %llu has no body this daemon knows (an empty or newer request)",
                        (unsigned long long)req->id);
        break;
    }
    gistd__request__free_unpacked(req, NULL);
}
