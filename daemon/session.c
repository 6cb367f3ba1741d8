/*
 * daemon/session.c — sessions: opening and closing, their pending tokens. Chat templates are
 * in daemon/chat_tmpl.c.
 *
 * A session's positions are the KV store's transcript (n_past tokens, stored) followed by
 * the pending queue (tokens appended or sampled, not yet forwarded). A request pushes its
 * tokens at the queue's tail; a scheduler step takes them from the head.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/dmn_impl.h"

/* ------------------------------------------------------------------ the table */

dmn_session_t *dmn_session_find(const dmn_t *d, uint32_t id)
{
    for (uint32_t i = 0; i < d->n_sess; i++)
        if (d->sess[i]->id == id)
            return d->sess[i];
    return NULL;
}

/* Checks every field of a Sampling message against its range (zero means off for each,
 * see proto/gistd.proto): ERR_INVAL naming the field, the value and the range. The window
 * is bounded by the model's context (the most positions it attends to at once) and top_k by
 * the vocabulary. */
static int sampling_check(const Gistd__Sampling *w, uint32_t n_vocab, uint32_t n_ctx,
                          err_info_t *e)
{
    if (!isfinite(w->temp) || w->temp < 0.0f)
        return err_set(e, ERR_INVAL, "sampling.temp %g is outside [0, inf) (0: greedy)", w->temp);
    if (w->top_k < 0 || (uint32_t)w->top_k > n_vocab)
        return err_set(e, ERR_INVAL, "sampling.top_k %d is outside [0, %u] (the vocabulary; 0: off)",
                       w->top_k, n_vocab);
    if (!(w->top_p >= 0.0f && w->top_p <= 1.0f))
        return err_set(e, ERR_INVAL, "sampling.top_p %g is outside [0, 1] (0 or 1: off)", w->top_p);
    if (!(w->min_p >= 0.0f && w->min_p <= 1.0f))
        return err_set(e, ERR_INVAL, "sampling.min_p %g is outside [0, 1] (0: off)", w->min_p);
    if (!isfinite(w->repeat_penalty) || w->repeat_penalty < 0.0f)
        return err_set(e, ERR_INVAL,
                       "sampling.repeat_penalty %g is outside [0, inf) (0 or 1: off; finite)",
                       w->repeat_penalty);
    if (w->repeat_last_n < 0 || (uint32_t)w->repeat_last_n > n_ctx)
        return err_set(e, ERR_INVAL,
                       "sampling.repeat_last_n %d is outside [0, %u] (the model's context)",
                       w->repeat_last_n, n_ctx);
    return 0;
}

/* The sampler settings of a Sampling message that sampling_check passed. */
static void sampling_from_wire(const Gistd__Sampling *w, mdl_sampler_cfg_t *c)
{
    c->temp = w->temp;
    c->top_k = w->top_k;
    c->top_p = w->top_p <= 0.0f ? 1.0f : w->top_p;
    c->min_p = w->min_p;
    c->repeat_penalty = w->repeat_penalty == 0.0f ? 1.0f : w->repeat_penalty;
    c->repeat_last_n = w->repeat_last_n;
    c->seed = w->seed;
}

int dmn_session_sampling(const dmn_t *d, const dmn_session_t *s, const Gistd__Sampling *w,
                         mdl_sampler_cfg_t *c, err_info_t *e)
{
    if (w) {
        int rc = sampling_check(w, d->hp->n_vocab, d->hp->n_ctx, e);
        if (rc)
            return rc;
        sampling_from_wire(w, c);
    } else {
        *c = s->sampling;
    }
    mdl_sampler_t *smp = NULL;
    int rc = mdl_sampler_new(c, d->hp->n_vocab, &smp, e);
    mdl_sampler_destroy(&smp);
    return rc;
}

static void session_free(dmn_t *d, dmn_session_t *s)
{
    if (!s)
        return;
    dmn_active_clear(&s->act);
    const uint32_t kv = s->rt.kv;
    dmn_policy_close(s);
    if (kv)
        kv_session_destroy(d->store, kv);
    free(s->pend);
    free(s);
}

int dmn_session_open(dmn_t *d, const Gistd__OpenSession *o, uint32_t id, dmn_session_t **out,
                     err_info_t *e)
{
    if (d->n_sess >= d->cfg.max_sessions)
        return err_set(e, ERR_LIMIT, "the daemon already holds %u sessions (--max-sessions)",
                       d->n_sess);
    if (id && dmn_session_find(d, id))
        return err_set(e, ERR_EXISTS, "session %u already exists", id);
    const char *pol_name = o->policy && *o->policy           ? o->policy
                           : d->cfg.policy && *d->cfg.policy ? d->cfg.policy
                                                             : "auto";
    if (strlen(pol_name) >= sizeof((dmn_session_t *)0)->pol_name)
        return err_set(e, ERR_INVAL, "unknown policy '%s' (known: %s)", pol_name, pol_names());
    if (o->n_policy_params > DMN_MAX_PARAMS)
        return err_set(e, ERR_INVAL, "more than %d policy parameters", DMN_MAX_PARAMS);
    for (size_t i = 0; i < o->n_policy_params; i++)
        if (strlen(o->policy_params[i]->key) >= DMN_PARAM_LEN ||
            strlen(o->policy_params[i]->value) >= DMN_PARAM_LEN)
            return err_set(e, ERR_INVAL, "policy parameter %zu is longer than %d bytes", i,
                           DMN_PARAM_LEN - 1);
    /* no template named: the model file's */
    const dmn_tmpl_t *tmpl =
        o->chat_template && *o->chat_template ? dmn_tmpl_find(o->chat_template) : d->file_tmpl;
    if (!tmpl)
        return err_set(e, ERR_INVAL, "unknown chat template '%s' (known: %s)", o->chat_template,
                       DMN_TMPL_NAMES);
    if (o->name && strlen(o->name) >= DMN_NAME_LEN)
        return err_set(e, ERR_INVAL, "session name longer than %d bytes", DMN_NAME_LEN - 1);
    size_t hard = o->budget_bytes ? o->budget_bytes : d->cfg.session_budget;
    if (hard && hard < d->session_min)
        return err_set(e, ERR_BUDGET,
                       "a session budget of %zu bytes is below the smallest usable one, %zu bytes "
                       "(one KV block of %u rows for each of the model's %u lanes)",
                       hard, d->session_min, kv_block_rows(d->store), d->n_lane);
    if (o->soft_bytes && (!hard || o->soft_bytes > hard))
        return err_set(e, ERR_INVAL, "soft watermark of %zu bytes above the hard limit of %zu",
                       (size_t)o->soft_bytes, hard);

    dmn_session_t *s = calloc(1, sizeof *s);
    if (!s)
        return err_set(e, ERR_NOMEM, "out of memory");
    int rc;
    s->owner = d;
    snprintf(s->pol_name, sizeof s->pol_name, "%s", pol_name);
    for (size_t i = 0; i < o->n_policy_params; i++) {
        snprintf(s->param_key[i], DMN_PARAM_LEN, "%s", o->policy_params[i]->key);
        snprintf(s->param_value[i], DMN_PARAM_LEN, "%s", o->policy_params[i]->value);
    }
    s->n_params = (uint32_t)o->n_policy_params;
    s->tmpl = tmpl;
    s->add_bos = !o->no_bos && tok_bos(d->tok) >= 0;
    snprintf(s->name, sizeof s->name, "%s", o->name ? o->name : "");
    if (o->pins) {
        s->pins.sink_tokens = o->pins->sink_tokens;
        s->pins.recent_tokens = o->pins->recent_tokens;
        s->pins.system_prompt = o->pins->system_prompt;
    }
    mdl_sampler_cfg_default(&s->sampling);
    rc = dmn_session_sampling(d, s, o->sampling, &s->sampling, e);
    if (rc)
        goto fail;

    kv_session_config_t kc = {.hard_limit = hard};
    uint32_t kid;
    err_info_t ke;
    err_clear(&ke);
    rc = kv_session_create(d->store, &kc, &kid, &ke);
    if (rc) {
        rc = err_set(e, rc, "%s%s", rc == ERR_BUDGET ? "no room for a new session: " : "",
                     err_msg(&ke));
        goto fail;
    }
    s->rt.kv = kid;
    /* a budget must hold at least one token (the global limit may have no room left) */
    err_clear(&ke);
    rc = kv_reserve(d->store, s->rt.kv, 1, &ke);
    if (rc == ERR_BUDGET) {
        rc = err_set(e, ERR_BUDGET, "no room for a new session's first token: %s", err_msg(&ke));
        goto fail;
    } else if (rc) {
        rc = err_set(e, rc, "%s", err_msg(&ke));
        goto fail;
    }
    kv_reserve_cancel(d->store, s->rt.kv);
    rc = dmn_policy_open(d, s, kid, e);
    if (rc)
        goto fail;
    /* the soft watermark leaves the policy room to work under the hard limit */
    if (hard) {
        size_t head = pol_headroom(s->rt.pol, d->cfg.prefill_chunk);
        size_t soft = o->soft_bytes ? o->soft_bytes : hard > head ? hard - head : hard / 2;
        rc = kv_session_set_limits(d->store, s->rt.kv, hard, soft, NULL);
        if (rc) {
            rc = err_set(e, rc, "cannot set the session's limits");
            goto fail;
        }
    }

    if (d->n_sess == d->cap_sess) {
        uint32_t cap = d->cap_sess ? d->cap_sess * 2 : 16;
        dmn_session_t **t = realloc(d->sess, sizeof *t * cap);
        if (!t) {
            rc = err_set(e, ERR_NOMEM, "out of memory");
            goto fail;
        }
        d->sess = t;
        d->cap_sess = cap;
    }
    if (!id) {
        while (dmn_session_find(d, d->next_id) || d->next_id == 0)
            d->next_id++;
        id = d->next_id++;
    }
    s->id = id;
    s->t_last = dmn_now();
    d->sess[d->n_sess++] = s;
    *out = s;
    return 0;
fail:
    session_free(d, s);
    return rc;
}

void dmn_session_close(dmn_t *d, dmn_session_t *s)
{
    if (s->act.kind != DMN_REQ_NONE)
        dmn_req_finish(d, s, GISTD__STOP_REASON__STOP_CANCELLED, NULL, 0);
    for (uint32_t i = 0; i < d->n_sess; i++)
        if (d->sess[i] == s) {
            memmove(d->sess + i, d->sess + i + 1, sizeof *d->sess * (d->n_sess - i - 1));
            d->n_sess--;
            break;
        }
    session_free(d, s);
}

void dmn_active_clear(dmn_active_t *a)
{
    mdl_sampler_destroy(&a->smp);
    for (uint32_t i = 0; i < a->n_stop; i++)
        free(a->stop[i]);
    free(a->text);
    free(a->score_tok);
    free(a->logprob);
    memset(a, 0, sizeof *a);
}

/* ------------------------------------------------------------------ tokens */

int dmn_session_push(dmn_session_t *s, const int32_t *tok, uint32_t n)
{
    if (n == 0)
        return 0;
    if (s->pend_head > 0 && s->pend_head + s->n_pend + n > s->pend_cap) {
        memmove(s->pend, s->pend + s->pend_head, sizeof(int32_t) * s->n_pend);
        s->pend_head = 0;
    }
    if (s->n_pend + n > s->pend_cap) {
        if ((uint64_t)s->n_pend + n > UINT32_MAX / 2)
            return ERR_LIMIT;
        uint32_t cap = s->pend_cap ? s->pend_cap : 64;
        while (cap < s->n_pend + n)
            cap *= 2;
        int32_t *p = realloc(s->pend, sizeof(int32_t) * cap);
        if (!p)
            return ERR_NOMEM;
        s->pend = p;
        s->pend_cap = cap;
    }
    memcpy(s->pend + s->pend_head + s->n_pend, tok, sizeof(int32_t) * n);
    s->n_pend += n;
    return 0;
}

void dmn_session_drop_tail(dmn_session_t *s, uint32_t n)
{
    s->n_pend -= n < s->n_pend ? n : s->n_pend;
    if (s->n_pend == 0)
        s->pend_head = 0;
}

/* Tokenizes one piece of text and pushes it; BOS first when asked. */
static int push_piece(dmn_t *d, dmn_session_t *s, const char *text, size_t len, bool bos,
                      bool special, uint32_t *n_added, err_info_t *e)
{
    if (len == 0 && !bos)
        return 0;
    int32_t *ids = NULL;
    size_t n = 0;
    if (tok_encode(d->tok, text, len, bos, special, &ids, &n))
        return err_set(e, ERR_FORMAT, "cannot tokenize %zu bytes of text", len);
    int rc = dmn_session_push(s, ids, (uint32_t)n);
    free(ids);
    if (rc)
        return err_set(e, rc, "no room for %zu more pending tokens", n);
    *n_added += (uint32_t)n;
    return 0;
}

int dmn_session_push_text(dmn_t *d, dmn_session_t *s, const uint8_t *text, size_t len, int role,
                          bool special, uint32_t *n_added, err_info_t *e)
{
    if (role < 0 || role > 3)
        return err_set(e, ERR_INVAL, "unknown role %d", role);
    const uint32_t before = s->rt.n_past + s->n_pend;
    bool bos = before == 0 && s->add_bos;
    const char *pre = s->tmpl->prefix[role], *suf = s->tmpl->suffix[role];
    if (role == GISTD__ROLE__ROLE_USER && s->last_role == GISTD__ROLE__ROLE_SYSTEM &&
        s->tmpl->user_after_system)
        pre = s->tmpl->user_after_system; /* the system turn opened the user's */
    uint32_t added = 0;
    int rc = 0;
    if (*pre) {
        rc = push_piece(d, s, pre, strlen(pre), bos, true, &added, e);
        bos = false;
    }
    if (!rc)
        rc = push_piece(d, s, (const char *)text, len, bos, special, &added, e);
    if (!rc && *suf)
        rc = push_piece(d, s, suf, strlen(suf), false, true, &added, e);
    if (rc) {
        dmn_session_drop_tail(s, added);
        return rc;
    }
    if (len > 0 || *pre)
        s->text_started = true;
    s->last_role = role;
    *n_added = added;
    return 0;
}

int dmn_session_tokens(const dmn_t *d, const dmn_session_t *s, uint32_t first, uint32_t n,
                       int32_t *out)
{
    if ((uint64_t)first + n > (uint64_t)s->rt.n_past + s->n_pend)
        return ERR_RANGE;
    uint32_t i = 0;
    if (first < s->rt.n_past) {
        uint32_t m = s->rt.n_past - first < n ? s->rt.n_past - first : n;
        /* the transcript holds uint32 ids; read them straight into out */
        int rc = kv_transcript_read(d->store, s->rt.kv, first, m, (uint32_t *)out, NULL);
        if (rc)
            return rc;
        i = m;
    }
    for (; i < n; i++)
        out[i] = s->pend[s->pend_head + (first + i - s->rt.n_past)];
    return 0;
}
