/*
 * clients/libgistc/calls.c — libgistc's typed calls: each builds one request, waits for its
 * final reply, and copies what the caller asked for out of it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clients/libgistc/gc_impl.h"

void gc_sampling_default(gc_sampling_t *s)
{
    s->temp = 0.8f;
    s->top_k = 40;
    s->top_p = 0.95f;
    s->min_p = 0.05f;
    s->repeat_penalty = 1.0f;
    s->repeat_last_n = 64;
    s->seed = 0;
}

static void sampling_to_wire(const gc_sampling_t *s, Gistd__Sampling *w)
{
    gistd__sampling__init(w);
    w->temp = s->temp;
    w->top_k = s->top_k;
    w->top_p = s->top_p;
    w->min_p = s->min_p;
    w->repeat_penalty = s->repeat_penalty;
    w->repeat_last_n = s->repeat_last_n;
    w->seed = s->seed;
}

/* ------------------------------------------------------------------ sessions */

int gc_open(gc_client_t *c, const gc_open_opts_t *o, uint32_t *session, err_info_t *e)
{
    static const gc_open_opts_t none = {0};
    if (!o)
        o = &none;
    Gistd__OpenSession m = GISTD__OPEN_SESSION__INIT;
    Gistd__Pins pins = GISTD__PINS__INIT;
    Gistd__Sampling smp;
    Gistd__Param params[32], *pp[32];
    if (o->n_params > 32)
        return err_set(e, ERR_INVAL, "more than 32 policy parameters");
    for (uint32_t i = 0; i < o->n_params; i++) {
        gistd__param__init(&params[i]);
        params[i].key = (char *)o->param_keys[i];
        params[i].value = (char *)o->param_values[i];
        pp[i] = &params[i];
    }
    m.policy = (char *)(o->policy ? o->policy : "");
    m.n_policy_params = o->n_params;
    m.policy_params = pp;
    m.budget_bytes = o->budget_bytes;
    m.soft_bytes = o->soft_bytes;
    pins.sink_tokens = o->sink_tokens;
    pins.recent_tokens = o->recent_tokens;
    pins.system_prompt = o->pin_system;
    m.pins = &pins;
    m.chat_template = (char *)(o->chat_template ? o->chat_template : "");
    if (o->sampling) {
        sampling_to_wire(o->sampling, &smp);
        m.sampling = &smp;
    }
    m.no_bos = o->no_bos;
    m.name = (char *)(o->name ? o->name : "");
    Gistd__Request r = GISTD__REQUEST__INIT;
    r.body_case = GISTD__REQUEST__BODY_OPEN;
    r.open = &m;
    Gistd__Reply *rep;
    int rc = gc_call(c, &r, GISTD__REPLY__BODY_OPENED, &rep, e);
    if (rc)
        return rc;
    *session = rep->opened->session;
    gistd__reply__free_unpacked(rep, NULL);
    return 0;
}

int gc_close(gc_client_t *c, uint32_t session, err_info_t *e)
{
    return gc_close_opts(c, session, false, e);
}

int gc_close_opts(gc_client_t *c, uint32_t session, bool forget, err_info_t *e)
{
    Gistd__CloseSession m = GISTD__CLOSE_SESSION__INIT;
    m.session = session;
    m.forget = forget;
    Gistd__Request r = GISTD__REQUEST__INIT;
    r.body_case = GISTD__REQUEST__BODY_CLOSE;
    r.close = &m;
    return gc_call(c, &r, GISTD__REPLY__BODY_ACK, NULL, e);
}

int gc_cancel(gc_client_t *c, uint32_t session, err_info_t *e)
{
    Gistd__Cancel m = GISTD__CANCEL__INIT;
    m.session = session;
    Gistd__Request r = GISTD__REQUEST__INIT;
    r.body_case = GISTD__REQUEST__BODY_CANCEL;
    r.cancel = &m;
    return gc_call(c, &r, GISTD__REPLY__BODY_ACK, NULL, e);
}

static void info_from_wire(const Gistd__SessionInfo *w, gc_session_info_t *o)
{
    memset(o, 0, sizeof *o);
    o->id = w->id;
    snprintf(o->name, sizeof o->name, "%s", w->name);
    snprintf(o->state, sizeof o->state, "%s", w->state);
    snprintf(o->policy, sizeof o->policy, "%s", w->policy);
    snprintf(o->chat_template, sizeof o->chat_template, "%s", w->chat_template);
    if (w->turn_stop.len && w->turn_stop.len < sizeof o->turn_stop) /* longer: not held back */
        memcpy(o->turn_stop, w->turn_stop.data, w->turn_stop.len);
    o->bytes = w->bytes;
    o->peak_bytes = w->peak_bytes;
    o->hard_bytes = w->hard_bytes;
    o->soft_bytes = w->soft_bytes;
    o->tokens = w->tokens;
    o->pending = w->pending;
    o->rows = w->rows;
    o->compression = w->compression;
    o->prompt_tokens = w->prompt_tokens;
    o->generated_tokens = w->generated_tokens;
    o->tokens_per_s = w->tokens_per_s;
    o->idle_s = w->idle_s;
    o->compactions = w->compactions;
    o->bytes_freed = w->bytes_freed;
    o->expansions = w->expansions;
    o->expand_tokens = w->expand_tokens;
    o->events_dropped = w->events_dropped;
    if (w->tiers) {
        o->tier_f32 = w->tiers->f32;
        o->tier_f16 = w->tiers->f16;
        o->tier_q8_0 = w->tiers->q8_0;
    }
}

int gc_session_info(gc_client_t *c, uint32_t session, gc_session_info_t *out, err_info_t *e)
{
    Gistd__SessionInfoRequest m = GISTD__SESSION_INFO_REQUEST__INIT;
    m.session = session;
    Gistd__Request r = GISTD__REQUEST__INIT;
    r.body_case = GISTD__REQUEST__BODY_INFO;
    r.info = &m;
    Gistd__Reply *rep;
    int rc = gc_call(c, &r, GISTD__REPLY__BODY_INFO, &rep, e);
    if (rc)
        return rc;
    info_from_wire(rep->info, out);
    gistd__reply__free_unpacked(rep, NULL);
    return 0;
}

int gc_sessions(gc_client_t *c, gc_session_info_t **list, uint32_t *n, err_info_t *e)
{
    Gistd__ListSessions m = GISTD__LIST_SESSIONS__INIT;
    Gistd__Request r = GISTD__REQUEST__INIT;
    r.body_case = GISTD__REQUEST__BODY_LIST;
    r.list = &m;
    Gistd__Reply *rep;
    int rc = gc_call(c, &r, GISTD__REPLY__BODY_SESSIONS, &rep, e);
    if (rc)
        return rc;
    const size_t k = rep->sessions->n_sessions;
    gc_session_info_t *l = calloc(k ? k : 1, sizeof *l);
    if (!l) {
        gistd__reply__free_unpacked(rep, NULL);
        return err_set(e, ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < k; i++)
        info_from_wire(rep->sessions->sessions[i], &l[i]);
    gistd__reply__free_unpacked(rep, NULL);
    *list = l;
    *n = (uint32_t)k;
    return 0;
}

/* ------------------------------------------------------------------ model work */

static int append(gc_client_t *c, Gistd__Append *m, gc_usage_t *usage, err_info_t *e)
{
    Gistd__Request r = GISTD__REQUEST__INIT;
    r.body_case = GISTD__REQUEST__BODY_APPEND;
    r.append = m;
    Gistd__Reply *rep;
    int rc = gc_call(c, &r, GISTD__REPLY__BODY_ACK, &rep, e);
    if (rc)
        return rc;
    if (usage)
        gc_usage_from_wire(rep->ack->usage, usage);
    gistd__reply__free_unpacked(rep, NULL);
    return 0;
}

int gc_append(gc_client_t *c, uint32_t session, const char *text, size_t len, gc_role_t role,
              gc_usage_t *usage, err_info_t *e)
{
    Gistd__Append m = GISTD__APPEND__INIT;
    m.session = session;
    m.text.data = (uint8_t *)text;
    m.text.len = text ? (len ? len : strlen(text)) : 0;
    m.role = (Gistd__Role)role;
    return append(c, &m, usage, e);
}

int gc_append_tokens(gc_client_t *c, uint32_t session, const int32_t *ids, size_t n,
                     gc_usage_t *usage, err_info_t *e)
{
    Gistd__Append m = GISTD__APPEND__INIT;
    m.session = session;
    m.n_tokens = n;
    m.tokens = (int32_t *)ids;
    return append(c, &m, usage, e);
}

int gc_generate_start(gc_client_t *c, const gc_gen_opts_t *o, const gc_callbacks_t *cb,
                      uint64_t *req, err_info_t *e)
{
    Gistd__Generate m = GISTD__GENERATE__INIT;
    Gistd__Sampling smp;
    ProtobufCBinaryData stops[16];
    if (o->n_stop > 16)
        return err_set(e, ERR_INVAL, "more than 16 stop strings");
    m.session = o->session;
    m.max_tokens = o->max_tokens;
    for (uint32_t i = 0; i < o->n_stop; i++) {
        stops[i].data = (uint8_t *)o->stop[i];
        stops[i].len = strlen(o->stop[i]);
    }
    m.n_stop = o->n_stop;
    m.stop = stops;
    if (o->sampling) {
        sampling_to_wire(o->sampling, &smp);
        m.sampling = &smp;
    }
    m.prompt.data = (uint8_t *)o->prompt;
    m.prompt.len = o->prompt ? (o->prompt_len ? o->prompt_len : strlen(o->prompt)) : 0;
    m.prompt_role = (Gistd__Role)o->prompt_role;
    m.role = (Gistd__Role)o->role;
    Gistd__Request r = GISTD__REQUEST__INIT;
    r.body_case = GISTD__REQUEST__BODY_GENERATE;
    r.generate = &m;
    return gc_send_request(c, &r, cb, req, e);
}

int gc_wait(gc_client_t *c, uint64_t req, gc_result_t *res, err_info_t *e)
{
    gc_result_t tmp;
    Gistd__Reply *rep = NULL;
    int rc = gc_wait_final(c, req, &rep, res ? res : &tmp, e);
    if (!res && !rc)
        gc_result_free(&tmp);
    if (rep) {
        if (rep->body_case != GISTD__REPLY__BODY_DONE && !rc)
            rc = err_set(e, ERR_PROTO, "%s: request %llu did not end with a Done", c->endpoint,
                         (unsigned long long)req);
        gistd__reply__free_unpacked(rep, NULL);
    }
    return rc;
}

int gc_generate(gc_client_t *c, const gc_gen_opts_t *o, const gc_callbacks_t *cb, gc_result_t *res,
                err_info_t *e)
{
    uint64_t req;
    int rc = gc_generate_start(c, o, cb, &req, e);
    return rc ? rc : gc_wait(c, req, res, e);
}

int gc_score(gc_client_t *c, uint32_t session, const char *text, const int32_t *ids, size_t n_ids,
             float **logprobs, int32_t **tokens, size_t *n, double *total, err_info_t *e)
{
    Gistd__Score m = GISTD__SCORE__INIT;
    m.session = session;
    if (text) {
        m.text.data = (uint8_t *)text;
        m.text.len = strlen(text);
    } else {
        m.n_tokens = n_ids;
        m.tokens = (int32_t *)ids;
    }
    Gistd__Request r = GISTD__REQUEST__INIT;
    r.body_case = GISTD__REQUEST__BODY_SCORE;
    r.score = &m;
    Gistd__Reply *rep;
    int rc = gc_call(c, &r, GISTD__REPLY__BODY_SCORE, &rep, e);
    if (rc)
        return rc;
    const Gistd__ScoreReply *sr = rep->score;
    const size_t k = sr->n_logprobs < sr->n_tokens ? sr->n_logprobs : sr->n_tokens;
    float *lp = malloc(sizeof(float) * (k ? k : 1));
    int32_t *tk = malloc(sizeof(int32_t) * (k ? k : 1));
    if (!lp || !tk) {
        free(lp);
        free(tk);
        gistd__reply__free_unpacked(rep, NULL);
        return err_set(e, ERR_NOMEM, "out of memory");
    }
    if (k) {
        memcpy(lp, sr->logprobs, sizeof(float) * k);
        memcpy(tk, sr->tokens, sizeof(int32_t) * k);
    }
    if (total)
        *total = sr->total;
    gistd__reply__free_unpacked(rep, NULL);
    if (logprobs)
        *logprobs = lp;
    else
        free(lp);
    if (tokens)
        *tokens = tk;
    else
        free(tk);
    *n = k;
    return 0;
}

int gc_compact(gc_client_t *c, uint32_t session, uint32_t first, uint32_t last, bool last_thought,
               const gc_callbacks_t *cb, err_info_t *e)
{
    Gistd__Compact m = GISTD__COMPACT__INIT;
    Gistd__Span span = GISTD__SPAN__INIT;
    m.session = session;
    m.last_thought = last_thought;
    span.first = first;
    span.last = last;
    m.span = last_thought ? NULL : &span;
    Gistd__Request r = GISTD__REQUEST__INIT;
    r.body_case = GISTD__REQUEST__BODY_COMPACT;
    r.compact = &m;
    uint64_t id;
    Gistd__Reply *rep = NULL;
    int rc = gc_send_request(c, &r, cb, &id, e);
    if (!rc)
        rc = gc_wait_final(c, id, &rep, NULL, e);
    if (rep)
        gistd__reply__free_unpacked(rep, NULL);
    return rc;
}

int gc_expand(gc_client_t *c, uint32_t session, bool span, uint32_t first, uint32_t last,
              uint32_t max_tokens, const gc_callbacks_t *cb, gc_expand_result_t *out,
              err_info_t *e)
{
    Gistd__Expand m = GISTD__EXPAND__INIT;
    Gistd__Span sp = GISTD__SPAN__INIT;
    m.session = session;
    m.max_tokens = max_tokens;
    sp.first = first;
    sp.last = last;
    m.span = span ? &sp : NULL;
    Gistd__Request r = GISTD__REQUEST__INIT;
    r.body_case = GISTD__REQUEST__BODY_EXPAND;
    r.expand = &m;
    uint64_t id;
    Gistd__Reply *rep = NULL;
    memset(out, 0, sizeof *out);
    int rc = gc_send_request(c, &r, cb, &id, e);
    if (!rc)
        rc = gc_wait_final(c, id, &rep, NULL, e);
    if (!rc && (!rep || rep->body_case != GISTD__REPLY__BODY_EXPAND))
        rc = err_set(e, ERR_PROTO, "expand: the daemon answered with another reply");
    if (!rc) {
        const Gistd__ExpandReply *x = rep->expand;
        out->spans = x->spans;
        out->candidates = x->candidates;
        out->tokens = x->tokens;
        out->bytes = x->bytes;
        out->session_bytes = x->session_bytes;
        out->ms = x->ms;
        snprintf(out->note, sizeof out->note, "%s", x->note ? x->note : "");
    }
    if (rep)
        gistd__reply__free_unpacked(rep, NULL);
    return rc;
}

/* ------------------------------------------------------------------ reading, operating */

int gc_transcript(gc_client_t *c, uint32_t session, uint32_t first, uint32_t count, char **text,
                  size_t *text_len, int32_t **tokens, uint32_t *n_tokens, uint32_t *total,
                  err_info_t *e)
{
    Gistd__TranscriptRequest m = GISTD__TRANSCRIPT_REQUEST__INIT;
    m.session = session;
    m.first = first;
    m.count = count;
    Gistd__Request r = GISTD__REQUEST__INIT;
    r.body_case = GISTD__REQUEST__BODY_TRANSCRIPT;
    r.transcript = &m;
    Gistd__Reply *rep;
    int rc = gc_call(c, &r, GISTD__REPLY__BODY_TRANSCRIPT, &rep, e);
    if (rc)
        return rc;
    const Gistd__TranscriptReply *tr = rep->transcript;
    char *t = text ? malloc(tr->text.len + 1) : NULL;
    int32_t *ids = tokens ? malloc(sizeof(int32_t) * (tr->n_tokens ? tr->n_tokens : 1)) : NULL;
    if ((text && !t) || (tokens && !ids)) {
        free(t);
        free(ids);
        gistd__reply__free_unpacked(rep, NULL);
        return err_set(e, ERR_NOMEM, "out of memory");
    }
    if (text) {
        if (tr->text.len)
            memcpy(t, tr->text.data, tr->text.len);
        t[tr->text.len] = 0;
        *text = t;
        if (text_len)
            *text_len = tr->text.len;
    }
    if (tokens) {
        if (tr->n_tokens)
            memcpy(ids, tr->tokens, sizeof(int32_t) * tr->n_tokens);
        *tokens = ids;
    }
    if (n_tokens)
        *n_tokens = (uint32_t)tr->n_tokens;
    if (total)
        *total = tr->total;
    gistd__reply__free_unpacked(rep, NULL);
    return 0;
}

int gc_stats(gc_client_t *c, bool sessions, gc_stats_t *o, err_info_t *e)
{
    Gistd__StatsRequest m = GISTD__STATS_REQUEST__INIT;
    m.sessions = sessions;
    Gistd__Request r = GISTD__REQUEST__INIT;
    r.body_case = GISTD__REQUEST__BODY_STATS;
    r.stats = &m;
    Gistd__Reply *rep;
    int rc = gc_call(c, &r, GISTD__REPLY__BODY_STATS, &rep, e);
    if (rc)
        return rc;
    const Gistd__Stats *s = rep->stats;
    memset(o, 0, sizeof *o);
    o->kv_budget_bytes = s->kv_budget_bytes;
    o->kv_soft_bytes = s->kv_soft_bytes;
    o->kv_used_bytes = s->kv_used_bytes;
    o->kv_peak_bytes = s->kv_peak_bytes;
    o->sessions = s->sessions;
    o->max_sessions = s->max_sessions;
    o->threads = s->threads;
    o->session_budget_bytes = s->session_budget_bytes;
    if (s->tiers) {
        o->tier_f32 = s->tiers->f32;
        o->tier_f16 = s->tiers->f16;
        o->tier_q8_0 = s->tiers->q8_0;
    }
    o->rows = s->rows;
    o->blocks = s->blocks;
    o->transcript_bytes = s->transcript_bytes;
    o->transcript_disk_bytes = s->transcript_disk_bytes;
    o->tokens = s->tokens;
    o->fragmentation = s->fragmentation;
    o->je_allocated = s->je_allocated;
    o->je_active = s->je_active;
    o->je_resident = s->je_resident;
    o->steps = s->steps;
    o->tokens_generated = s->tokens_generated;
    o->tokens_prefilled = s->tokens_prefilled;
    o->decode_tokens_per_s = s->decode_tokens_per_s;
    o->prefill_tokens_per_s = s->prefill_tokens_per_s;
    o->avg_batch = s->avg_batch;
    o->decode_steps = s->decode_steps;
    o->decode_items = s->decode_items;
    o->uptime_s = s->uptime_s;
    o->requests = s->requests;
    o->errors = s->errors;
    o->events_dropped = s->events_dropped;
    o->clients_gone = s->clients_gone;
    o->budget_refusals = s->budget_refusals;
    o->compactions = s->compactions;
    o->bytes_freed = s->bytes_freed;
    o->kv_bytes_per_token = s->kv_bytes_per_token;
    o->rate_refusals = s->rate_refusals;
    o->permission_refusals = s->permission_refusals;
    o->curve = s->curve;
    o->session_min_bytes = s->session_min_bytes;
    o->idle_timeout_s = s->idle_timeout_s;
    o->expansions = s->expansions;
    o->expand_tokens = s->expand_tokens;
    o->expand_bytes = s->expand_bytes;
    o->expand_ms = s->expand_ms;
    for (size_t i = 0; i < s->n_compactions_by_method && i < GC_MAX_METHODS; i++) {
        snprintf(o->compactions_by_method[i].method, sizeof o->compactions_by_method[i].method,
                 "%s", s->compactions_by_method[i]->method);
        o->compactions_by_method[i].count = s->compactions_by_method[i]->count;
        o->n_compactions_by_method = (uint32_t)i + 1;
    }
    snprintf(o->model, sizeof o->model, "%s", s->model);
    if (s->n_session_list > 0) {
        o->session_list = calloc(s->n_session_list, sizeof *o->session_list);
        if (!o->session_list) {
            gistd__reply__free_unpacked(rep, NULL);
            return err_set(e, ERR_NOMEM, "out of memory");
        }
        for (size_t i = 0; i < s->n_session_list; i++)
            info_from_wire(s->session_list[i], &o->session_list[i]);
        o->n_session_list = (uint32_t)s->n_session_list;
    }
    gistd__reply__free_unpacked(rep, NULL);
    return 0;
}

void gc_stats_free(gc_stats_t *s)
{
    free(s->session_list);
    s->session_list = NULL;
    s->n_session_list = 0;
}

int gc_set_budget(gc_client_t *c, uint32_t session, size_t hard, size_t soft, gc_budget_t *out,
                  err_info_t *e)
{
    Gistd__SetBudget m = GISTD__SET_BUDGET__INIT;
    m.session = session;
    m.hard_bytes = hard;
    m.soft_bytes = soft;
    Gistd__Request r = GISTD__REQUEST__INIT;
    r.body_case = GISTD__REQUEST__BODY_SET_BUDGET;
    r.set_budget = &m;
    Gistd__Reply *rep;
    int rc = gc_call(c, &r, GISTD__REPLY__BODY_BUDGET, &rep, e);
    if (rc)
        return rc;
    if (out) {
        out->hard_bytes = rep->budget->hard_bytes;
        out->soft_bytes = rep->budget->soft_bytes;
        out->used_bytes = rep->budget->used_bytes;
        out->bytes_freed = rep->budget->bytes_freed;
    }
    gistd__reply__free_unpacked(rep, NULL);
    return 0;
}

int gc_snapshot(gc_client_t *c, uint32_t session, uint32_t *n_done, err_info_t *e)
{
    Gistd__Snapshot m = GISTD__SNAPSHOT__INIT;
    m.session = session;
    Gistd__Request r = GISTD__REQUEST__INIT;
    r.body_case = GISTD__REQUEST__BODY_SNAPSHOT;
    r.snapshot = &m;
    Gistd__Reply *rep;
    int rc = gc_call(c, &r, GISTD__REPLY__BODY_SNAPSHOT, &rep, e);
    if (rc)
        return rc;
    if (n_done)
        *n_done = (uint32_t)rep->snapshot->n_sessions;
    gistd__reply__free_unpacked(rep, NULL);
    return 0;
}

int gc_restore(gc_client_t *c, uint32_t session, err_info_t *e)
{
    return gc_restore_opts(c, session, false, NULL, e);
}

int gc_restore_opts(gc_client_t *c, uint32_t session, bool as_new, uint32_t *restored,
                    err_info_t *e)
{
    Gistd__Restore m = GISTD__RESTORE__INIT;
    m.session = session;
    m.as_new = as_new;
    Gistd__Request r = GISTD__REQUEST__INIT;
    r.body_case = GISTD__REQUEST__BODY_RESTORE;
    r.restore = &m;
    Gistd__Reply *rep = NULL;
    int rc = gc_call(c, &r, GISTD__REPLY__BODY_OPENED, &rep, e);
    if (rc)
        return rc;
    if (restored)
        *restored = rep->opened->session;
    gistd__reply__free_unpacked(rep, NULL);
    return 0;
}
