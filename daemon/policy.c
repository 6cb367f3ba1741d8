/*
 * daemon/policy.c — a session's compaction policy (policy/policy.h) as the daemon runs it.
 *
 * Each session's runtime session (runtime/runtime.h) owns a pol_t, made for its KV session
 * with the client's policy name and parameters (the session's pins become the `sinks` and
 * `recent` parameters); the runtime runs its hooks around every step. Every compaction it
 * reports becomes a
 * CompactionEvent for the client of the session's running request (or of the request that
 * asked for it) and is counted.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/dmn_impl.h"

/* A compaction the policy made: counted, and streamed to the client who should hear of it. */
static void on_event(void *ctx, const pol_event_t *ev)
{
    dmn_session_t *s = ctx;
    dmn_t *d = s->owner;
    if (ev->action == POL_EXPAND) {
        s->expansions++;
        s->expand_tokens += ev->tokens;
        d->c.expansions++;
        d->c.expand_tokens += ev->tokens;
        d->c.expand_bytes -= ev->bytes_freed;
    } else {
        s->compactions++;
        s->bytes_freed += ev->bytes_freed;
        d->c.compactions++;
        if (ev->method < POL_N_METHODS)
            d->c.compactions_by_method[ev->method]++;
        d->c.bytes_freed += ev->bytes_freed;
        if (s->act.kind != DMN_REQ_NONE) {
            s->act.compactions++;
            s->act.bytes_freed += ev->bytes_freed;
        }
    }
    const dmn_peer_t *to = s->ev_peer;
    if (!to && s->act.kind != DMN_REQ_NONE && !s->act.peer_gone)
        to = &s->act.peer;
    if (!to)
        return;
    Gistd__Span span = GISTD__SPAN__INIT;
    span.first = ev->first;
    span.last = ev->last;
    Gistd__CompactionEvent ce = GISTD__COMPACTION_EVENT__INIT;
    ce.action = (char *)pol_action_name(ev->action);
    ce.method = (char *)pol_method_name(ev->method);
    ce.reason = (char *)pol_reason_name(ev->reason);
    ce.span = &span;
    ce.level = ev->level;
    ce.lanes = ev->lanes;
    ce.rows_before = ev->rows_before;
    ce.rows_after = ev->rows_after;
    ce.tokens = ev->tokens;
    ce.bytes_freed = ev->bytes_freed;
    ce.session_bytes_before = ev->bytes_before;
    ce.session_bytes = ev->bytes_after;
    ce.model_pos = ev->model_first;
    Gistd__Reply r = GISTD__REPLY__INIT;
    r.id = s->ev_peer ? s->ev_id : s->act.id;
    r.session = s->id;
    r.body_case = GISTD__REPLY__BODY_COMPACTION;
    r.compaction = &ce;
    if (dmn_send(d, to, &r) == ERR_BUSY)
        s->events_dropped++;
}

static bool has_key(const pol_param_t *p, uint32_t n, const char *key)
{
    for (uint32_t i = 0; i < n; i++)
        if (!strcmp(p[i].key, key))
            return true;
    return false;
}

int dmn_policy_open(dmn_t *d, dmn_session_t *s, uint32_t kv, err_info_t *e)
{
    pol_param_t params[DMN_MAX_PARAMS + 2];
    uint32_t n = s->n_params;
    char sinks[16], recent[16];
    for (uint32_t i = 0; i < n; i++)
        params[i] = (pol_param_t){s->param_key[i], s->param_value[i]};
    if (s->pins.sink_tokens && !has_key(params, n, "sinks")) {
        snprintf(sinks, sizeof sinks, "%u", s->pins.sink_tokens);
        params[n++] = (pol_param_t){"sinks", sinks};
    }
    if (s->pins.recent_tokens && !has_key(params, n, "recent")) {
        snprintf(recent, sizeof recent, "%u", s->pins.recent_tokens);
        params[n++] = (pol_param_t){"recent", recent};
    }
    rt_sess_config_t rc = {.policy = s->pol_name,
                           .params = params,
                           .n_params = n,
                           .emit = on_event,
                           .emit_ctx = s};
    return rt_sess_init(d->rt, &s->rt, kv, &rc, e);
}

void dmn_policy_close(dmn_session_t *s)
{
    rt_sess_fini(&s->rt);
}

int dmn_expand(dmn_t *d, dmn_session_t *s, bool span, uint32_t first, uint32_t last,
               uint32_t max_tokens, int reason, rt_expand_result_t *out, err_info_t *e)
{
    int rc = span ? rt_sess_expand_span(d->rt, &s->rt, first, last, out, e)
                  : rt_sess_expand_auto(d->rt, &s->rt, max_tokens, reason, out, e);
    d->c.expand_ms += out->ms;
    return rc;
}

void dmn_expand_turn(dmn_t *d, dmn_session_t *s)
{
    pol_expand_cfg_t xc;
    pol_expand_config(s->rt.pol, &xc);
    if (!xc.on)
        return;
    rt_expand_result_t r;
    err_info_t e;
    err_clear(&e);
    if (dmn_expand(d, s, false, 0, 0, 0, POL_R_TURN, &r, &e))
        dmn_log(d, DMN_LOG_WARN, "session %u: expanding after a turn: %s", s->id, err_msg(&e));
    else if (r.spans)
        dmn_log(d, DMN_LOG_DEBUG, "session %u: %u spans expanded (%u tokens, %+lld bytes, %.1f ms)",
                s->id, r.spans, r.tokens, (long long)r.bytes, r.ms);
}
