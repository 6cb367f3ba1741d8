/*
 * clients/gistd-http/turn.c — one request's work with gistd: find or open its session, append
 * the turns the session does not hold yet, generate, and remember what the session now holds.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clients/gistd-http/http.h"

void gh_close_sessions(gc_client_t *c, const gh_closing_t *gone)
{
    for (unsigned i = 0; c && i < gone->n; i++) {
        err_info_t e;
        err_clear(&e);
        gc_close(c, gone->session[i], &e); /* already gone (a restarted daemon) is fine */
    }
}

static int open_session(gh_turn_t *t, const char *name, uint32_t *id, err_info_t *e)
{
    const gh_config_t *cfg = &t->g->cfg;
    gc_open_opts_t o = {.chat_template = t->req->chat ? cfg->chat_template : NULL,
                        .policy = cfg->policy,
                        .budget_bytes = cfg->session_budget,
                        .name = name && *name ? name : "gistd-http"};
    int rc = gc_open(t->c, &o, id, e);
    if (rc == ERR_LIMIT) {
        /* the daemon holds all the sessions it may: give back an idle conversation's */
        gh_closing_t gone = {0};
        if (gh_convs_evict(t->g->convs, &gone)) {
            gh_close_sessions(t->c, &gone);
            err_clear(e);
            rc = gc_open(t->c, &o, id, e);
        }
    }
    return rc;
}

static int append(gh_turn_t *t, const gh_msg_t *m, err_info_t *e)
{
    gc_usage_t u;
    memset(&u, 0, sizeof u);
    int rc = gc_append(t->c, t->session, m->text, m->len, (gc_role_t)m->role, &u, e);
    t->prompt_tokens += u.prompt_tokens;
    t->compactions += u.compactions;
    return rc;
}

/* Finds or opens the conversation's session and appends the turns it does not hold. */
static int chat_begin(gh_turn_t *t, err_info_t *e)
{
    gh_t *g = t->g;
    const gh_req_t *r = t->req;
    int rc = 0;
    for (int attempt = 0; attempt < 2; attempt++) {
        gh_closing_t gone = {0};
        uint32_t matched = 0;
        rc = gh_convs_acquire(g->convs, r->bind, r->hash, r->n_msg, &t->conv, &matched, &gone, e);
        gh_close_sessions(t->c, &gone);
        if (rc)
            return rc;
        gh_conv_t *cv = t->conv;
        const bool fresh = !cv->session;
        if (fresh)
            rc = open_session(t, cv->bind, &cv->session, e);
        if (!rc && (fresh || (!cv->owned && cv->n_hash == 0 && cv->tokens == 0))) {
            /* what the session's template ends a reply with (streams hold it back); a session
             * opened elsewhere, named by its id, must exist and be ours to use */
            gc_session_info_t info;
            rc = gc_session_info(t->c, cv->session, &info, e);
            if (!rc) {
                cv->tokens = info.tokens;
                snprintf(cv->turn_stop, sizeof cv->turn_stop, "%s", info.turn_stop);
            }
        }
        t->session = cv->session;
        snprintf(t->turn_stop, sizeof t->turn_stop, "%s", cv->turn_stop);
        t->cached_tokens = (uint32_t)cv->tokens;
        for (uint32_t i = matched; !rc && i < r->n_msg; i++)
            rc = append(t, &r->msg[i], e);
        t->rc = rc;
        if (!rc)
            return 0;
        /* the session's contents are unknown now: forget the conversation */
        gone.n = 0;
        gh_convs_release(g->convs, cv, false, &gone);
        t->conv = NULL;
        gh_close_sessions(gh_transport_error(rc) ? NULL : t->c, &gone);
        /* a held session the daemon no longer has (it restarted): start it again, whole */
        if (!(rc == ERR_NOTFOUND && matched > 0 && !r->bind[0]))
            break;
        err_clear(e);
        t->prompt_tokens = t->compactions = 0;
    }
    return rc;
}

int gh_turn_begin(gh_t *g, gh_req_t *req, gh_turn_t *t, err_info_t *e)
{
    memset(t, 0, sizeof *t);
    t->g = g;
    t->req = req;
    int rc = gh_pool_get(g->pool, &t->c, e);
    if (rc)
        return rc;
    if (req->chat) {
        rc = chat_begin(t, e);
    } else {
        rc = open_session(t, NULL, &t->session, e);
        /* a streamed completion prefills first, so that its errors still get their status */
        if (!rc && req->stream)
            rc = append(t, &req->msg[0], e);
    }
    if (rc) {
        t->rc = rc;
        gh_turn_end(t, false, NULL, NULL, 0, NULL);
    }
    return rc;
}

int gh_turn_generate(gh_turn_t *t, const gc_callbacks_t *cb, gc_result_t *res, err_info_t *e)
{
    const gh_req_t *r = t->req;
    gc_gen_opts_t o = {.session = t->session,
                       .max_tokens = r->max_tokens,
                       .sampling = &r->sampling,
                       .stop = r->stop,
                       .n_stop = r->n_stop};
    if (r->chat) {
        o.role = GC_ROLE_ASSISTANT;
    } else if (!r->stream) {
        o.prompt = r->msg[0].text;
        o.prompt_len = r->msg[0].len;
        o.prompt_role = GC_ROLE_NONE;
    }
    t->rc = gc_generate(t->c, &o, cb, res, e);
    return t->rc;
}

/* The conversation now holds the request's messages and the reply. */
static int remember(gh_conv_t *cv, const gh_req_t *r, const char *content, size_t len)
{
    if (cv->cap_hash < r->n_msg + 1) {
        uint64_t *h = realloc(cv->hash, (r->n_msg + 1) * sizeof *h);
        if (!h)
            return ERR_NOMEM;
        cv->hash = h;
        cv->cap_hash = r->n_msg + 1;
    }
    memcpy(cv->hash, r->hash, r->n_msg * sizeof *cv->hash);
    cv->hash[r->n_msg] = gh_message_hash(GC_ROLE_ASSISTANT, content, len);
    cv->n_hash = r->n_msg + 1;
    return 0;
}

void gh_turn_end(gh_turn_t *t, bool ok, const gc_result_t *res, const char *content,
                 size_t content_len, gh_outcome_t *o)
{
    gh_t *g = t->g;
    ok = ok && res && res->reason != GC_STOP_CANCELLED;
    const uint32_t generated = res ? res->usage.generated_tokens : 0;
    const uint32_t prefilled = t->prompt_tokens + (res ? res->usage.prompt_tokens : 0);
    uint32_t prompt = t->cached_tokens + prefilled;
    gh_closing_t gone = {0};
    if (t->conv) {
        gc_session_info_t info;
        err_info_t e;
        if (ok && remember(t->conv, t->req, content, content_len))
            ok = false;
        /* the session's length, for the next turn's cached_tokens */
        if (ok && !gc_session_info(t->c, t->session, &info, &e)) {
            t->conv->tokens = info.tokens;
            prompt = info.tokens >= generated ? info.tokens - generated : info.tokens;
        }
        gh_convs_release(g->convs, t->conv, ok, &gone);
        t->conv = NULL;
    } else if (t->session && !t->req->chat) {
        gone.session[gone.n++] = t->session; /* a completion's session is its own */
    }
    if (o) {
        memset(o, 0, sizeof *o);
        o->session = t->session;
        o->cached_tokens = t->cached_tokens;
        o->prompt_tokens = prompt;
        o->prefilled_tokens = prefilled;
        o->compactions = t->compactions;
        if (res) {
            o->reason = res->reason;
            o->completion_tokens = generated;
            o->compactions += res->usage.compactions;
            o->kv_bytes = res->usage.kv_bytes;
            o->bytes_freed = res->usage.bytes_freed;
        }
    }
    gc_client_t *closer = t->c;
    if (gh_transport_error(t->rc)) {
        /* the connection may still get this request's replies: close with a fresh one */
        gh_pool_put(g->pool, t->c, t->rc);
        closer = NULL;
        err_info_t e;
        if (gone.n && gh_pool_get(g->pool, &closer, &e))
            closer = NULL;
        t->rc = 0;
    }
    gh_close_sessions(closer, &gone);
    gh_pool_put(g->pool, closer, t->rc);
    t->c = NULL;
}
