/*
 * daemon/policy.c — a session's compaction policy (policy/policy.h) as the daemon runs it.
 *
 * Each session owns a pol_t, made for its KV session with the client's policy name and
 * parameters (the session's pins become the `sinks` and `recent` parameters). The scheduler
 * consults it around every step: before (pol_next: it may close a sentence and run learned
 * gist tokens through the runner, and says how many tokens may run), at the reservation
 * (pol_reserve: compacts when a budget refuses), and after the commit (pol_commit: the
 * segmenter, and the soft watermark). Every compaction it reports becomes a
 * CompactionEvent for the client of the session's running request (or of the request that
 * asked for it) and is counted. The daemon's default policy is `full`: no compaction, and a
 * reservation over budget is refused with ERR_BUDGET, losing nothing.
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
    s->compactions++;
    s->bytes_freed += ev->bytes_freed;
    d->c.compactions++;
    if (ev->method < POL_N_METHODS)
        d->c.compactions_by_method[ev->method]++;
    d->c.bytes_freed += ev->bytes_freed;
    const dmn_peer_t *to = s->ev_peer;
    if (!to && s->act.kind != DMN_REQ_NONE && !s->act.peer_gone)
        to = &s->act.peer;
    if (s->act.kind != DMN_REQ_NONE) {
        s->act.compactions++;
        s->act.bytes_freed += ev->bytes_freed;
    }
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
    Gistd__Reply r = GISTD__REPLY__INIT;
    r.id = s->ev_peer ? s->ev_id : s->act.id;
    r.session = s->id;
    r.body_case = GISTD__REPLY__BODY_COMPACTION;
    r.compaction = &ce;
    if (dmn_send(d, to, &r) == ERR_BUSY)
        s->events_dropped++;
}

/* The policy's runner: learned gist tokens under the sentence mask (sched.c). */
static int run_gists(void *ctx, const pol_run_t *run, err_info_t *e)
{
    dmn_session_t *s = ctx;
    return dmn_sched_run_masked(s->owner, s, run, e);
}

static bool has_key(const pol_param_t *p, uint32_t n, const char *key)
{
    for (uint32_t i = 0; i < n; i++)
        if (!strcmp(p[i].key, key))
            return true;
    return false;
}

int dmn_policy_open(dmn_t *d, dmn_session_t *s, err_info_t *e)
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
    pol_config_t pc = {.name = s->pol_name,
                       .params = params,
                       .n_params = n,
                       .store = d->store,
                       .sid = s->kv,
                       .model = d->pm,
                       .runner = {.ctx = s, .run = run_gists},
                       .emit = on_event,
                       .emit_ctx = s};
    return pol_new(&pc, &s->pol, e);
}

void dmn_policy_close(dmn_session_t *s)
{
    pol_destroy(&s->pol);
}

void dmn_session_sync(dmn_t *d, dmn_session_t *s)
{
    uint32_t len;
    if (kv_transcript_len(d->store, s->kv, &len) == 0)
        s->n_past = len;
}

/* The text pieces of n tokens, for the segmenter (d->pieces, valid until the next call). */
static int pieces(dmn_t *d, const int32_t *tok, uint32_t n, err_info_t *e)
{
    size_t need = 0;
    for (uint32_t i = 0; i < n; i++)
        need += tok_piece(d->tok, tok[i], false, false, NULL, 0);
    if (n > d->cap_pieces || need + 1 > d->cap_piece_text) {
        pol_text_t *p = realloc(d->pieces, sizeof *p * (n > d->cap_pieces ? n : d->cap_pieces));
        if (p) {
            d->pieces = p;
            d->cap_pieces = n > d->cap_pieces ? n : d->cap_pieces;
        }
        size_t cap = need + 1 > d->cap_piece_text ? 2 * need + 64 : d->cap_piece_text;
        char *t = p ? realloc(d->piece_text, cap) : NULL;
        if (!t)
            return err_set(e, ERR_NOMEM, "out of memory for %u tokens' text", n);
        d->piece_text = t;
        d->cap_piece_text = cap;
    }
    size_t used = 0;
    for (uint32_t i = 0; i < n; i++) {
        size_t pl =
            tok_piece(d->tok, tok[i], false, false, d->piece_text + used, d->cap_piece_text - used);
        d->pieces[i] = (pol_text_t){d->piece_text + used, (uint32_t)pl};
        used += pl;
    }
    return 0;
}

int dmn_policy_next(dmn_t *d, dmn_session_t *s, uint32_t n, uint32_t *n_run, err_info_t *e)
{
    int rc = pieces(d, s->pend + s->pend_head, n, e);
    if (!rc)
        rc = pol_next(s->pol, d->pieces, n, n_run, e);
    dmn_session_sync(d, s);
    if (!rc && (*n_run == 0 || *n_run > n))
        *n_run = n;
    return rc;
}

int dmn_policy_reserve(dmn_t *d, dmn_session_t *s, uint32_t n, err_info_t *e)
{
    err_info_t pe;
    err_clear(&pe);
    int rc = pol_reserve(s->pol, n, &pe);
    dmn_session_sync(d, s);
    if (rc == ERR_BUDGET)
        d->c.budget_refusals++;
    if (rc)
        return err_set(e, rc, "session %u: %s", s->id, err_msg(&pe));
    return 0;
}

int dmn_policy_commit(dmn_t *d, dmn_session_t *s, const int32_t *tok, uint32_t n, err_info_t *e)
{
    int rc = pieces(d, tok, n, e);
    if (!rc)
        rc = pol_commit(s->pol, d->pieces, n, e);
    dmn_session_sync(d, s);
    return rc;
}

int dmn_policy_model(dmn_t *d, err_info_t *e)
{
    const mdl_hparams_t *hp = d->hp;
    d->pm.n_gist = hp->n_gist;
    d->pm.gist_first = hp->gist_first;
    d->pm.gist_sinks = hp->gist_sinks;
    d->pm.has_gates = mdl_has_retention(d->model);
    kv_rope_t rope = {.n_rot = hp->n_rot, .base = hp->rope_freq_base};
    const gguf_tensor_t *t = gguf_tensor_find(mdl_gguf(d->model), "rope_freqs.weight");
    if (t && t->type == GGML_TYPE_F32 && t->n_elems == hp->n_rot / 2) {
        d->freq_div = malloc(t->nbytes);
        if (!d->freq_div)
            return err_set(e, ERR_NOMEM, "out of memory");
        memcpy(d->freq_div, t->data, t->nbytes);
        rope.freq_div = d->freq_div;
    } else if (t || hp->rope_scaling.type == MDL_ROPE_SCALING_LLAMA3 ||
               hp->rope_scaling.type == MDL_ROPE_SCALING_YARN) {
        rope.n_rot = 0; /* a rotation pooled rows cannot redo: pooling policies are refused */
    }
    if (hp->rope_scaling.type == MDL_ROPE_SCALING_LINEAR)
        rope.scale = hp->rope_scaling.factor;
    d->pm.rope = rope;
    return 0;
}
