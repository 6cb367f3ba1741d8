/*
 * daemon/sched.c — continuous batching: one forward pass per step over every session with
 * work, and the ends of requests.
 *
 * A step takes one token from every session that is decoding (one pending token) and, in
 * the same batch, up to cfg.prefill_chunk prompt tokens from the sessions that are
 * prefilling, oldest request first. The decoders are never starved: however long a prompt
 * is, it enters the batch a chunk at a time beside them. For each session in the batch the
 * step reserves its new rows in the KV store (asking the session's policy to make room when
 * a budget refuses), hands the model a view of the session's lanes, commits the new rows,
 * and then samples, scores or acknowledges as the session's request needs.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/dmn_impl.h"

/* ------------------------------------------------------------------ requests end */

void dmn_usage(const dmn_t *d, const dmn_session_t *s, Gistd__Usage *u)
{
    const dmn_active_t *a = &s->act;
    const double now = dmn_now();
    u->prompt_tokens = a->prompt_tokens;
    u->generated_tokens = a->n_gen;
    u->kv_bytes = kv_session_bytes(d->store, s->rt.kv);
    u->compactions = a->compactions;
    u->bytes_freed = a->bytes_freed;
    u->queue_ms = a->t_start > 0 ? (a->t_start - a->t_arrive) * 1e3 : 0.0;
    u->prefill_ms = a->t_prefill > 0 && a->t_start > 0 ? (a->t_prefill - a->t_start) * 1e3 : 0.0;
    u->first_token_ms = a->t_first > 0 ? (a->t_first - a->t_arrive) * 1e3 : 0.0;
    u->total_ms = (now - a->t_arrive) * 1e3;
}

/* A chat turn ended with the request: the policy closes the open sentence (learned gists run
 * now), after pinning a system prompt when the session pins them. */
static void end_turn(dmn_t *d, dmn_session_t *s, Gistd__StopReason reason)
{
    const dmn_active_t *a = &s->act;
    const bool turn = (a->kind == DMN_REQ_APPEND && a->role != GISTD__ROLE__ROLE_NONE) ||
                      (a->kind == DMN_REQ_GENERATE && a->role == GISTD__ROLE__ROLE_ASSISTANT);
    if (!turn || reason == GISTD__STOP_REASON__STOP_CANCELLED)
        return;
    err_info_t e;
    err_clear(&e);
    int rc = 0;
    if (a->kind == DMN_REQ_APPEND && a->role == GISTD__ROLE__ROLE_SYSTEM && s->pins.system_prompt &&
        a->pos_first != UINT32_MAX && s->rt.n_past > a->pos_first)
        rc = pol_pin_span(s->rt.pol, a->pos_first, s->rt.n_past - 1, &e);
    if (!rc)
        rc = rt_sess_end_turn(d->rt, &s->rt, &e);
    if (rc)
        dmn_log(d, DMN_LOG_WARN, "session %u: end of turn: %s", s->id, err_msg(&e));
    /* a turn from the client (not a system prompt, not the model's own): the compressed spans
     * it calls for come back before anything answers it */
    if (!rc && a->kind == DMN_REQ_APPEND && a->role != GISTD__ROLE__ROLE_SYSTEM)
        dmn_expand_turn(d, s);
}

void dmn_req_finish(dmn_t *d, dmn_session_t *s, Gistd__StopReason reason, const char *stop,
                    size_t stop_len)
{
    dmn_active_t *a = &s->act;
    end_turn(d, s, reason);
    const double now = dmn_now();
    if (a->kind == DMN_REQ_GENERATE && a->n_gen > 1 && a->t_first > 0 && now > a->t_first)
        s->tps = (a->n_gen - 1) / (now - a->t_first);
    s->t_last = now;
    if (a->peer_gone) {
        dmn_active_clear(a);
        return;
    }
    Gistd__Usage u = GISTD__USAGE__INIT;
    dmn_usage(d, s, &u);
    Gistd__Reply r = GISTD__REPLY__INIT;
    r.id = a->id;
    r.final = true;
    r.session = s->id;
    Gistd__Done done = GISTD__DONE__INIT;
    Gistd__Ack ack = GISTD__ACK__INIT;
    Gistd__ScoreReply sr = GISTD__SCORE_REPLY__INIT;
    if (a->kind == DMN_REQ_GENERATE) {
        done.reason = reason;
        done.usage = &u;
        done.stop.data = (uint8_t *)stop;
        done.stop.len = stop ? stop_len : 0;
        done.text.data = (uint8_t *)a->text;
        done.text.len = a->text_len;
        r.body_case = GISTD__REPLY__BODY_DONE;
        r.done = &done;
    } else if (a->kind == DMN_REQ_SCORE && reason != GISTD__STOP_REASON__STOP_CANCELLED) {
        double total = 0.0;
        for (uint32_t i = 0; i < a->n_score; i++)
            if (isfinite(a->logprob[i]))
                total += a->logprob[i];
        sr.n_tokens = a->n_score;
        sr.tokens = a->score_tok;
        sr.n_logprobs = a->n_score;
        sr.logprobs = a->logprob;
        sr.total = total;
        sr.usage = &u;
        r.body_case = GISTD__REPLY__BODY_SCORE;
        r.score = &sr;
    } else if (reason == GISTD__STOP_REASON__STOP_CANCELLED) {
        err_info_t e;
        if (d->stopping) {
            /* The daemon is stopping mid-prefill. The turn was accepted whole when it was
             * queued, so it stays whole: its tokens not yet stored stay pending, the snapshot
             * taken at shutdown holds them, and a restarted daemon prefills them before the
             * session's next request. A client that sees this reply need not append it again. */
            err_set(&e, ERR_CANCELLED,
                    "the daemon is stopping: session %u keeps this request's tokens (%u stored, "
                    "%u still to prefill after a restart)",
                    s->id, a->prompt_tokens, a->prompt_left);
        } else {
            /* cancelled by the client: the tokens it had not stored are forgotten */
            dmn_session_drop_tail(s, a->prompt_left);
            err_set(&e, ERR_CANCELLED, "cancelled after %u tokens were stored", a->prompt_tokens);
        }
        dmn_send_error(d, &a->peer, a->id, s->id, &e);
        dmn_active_clear(a);
        return;
    } else {
        ack.usage = &u;
        r.body_case = GISTD__REPLY__BODY_ACK;
        r.ack = &ack;
    }
    if (dmn_send(d, &a->peer, &r) == ERR_BUSY)
        s->events_dropped++;
    dmn_active_clear(a);
}

void dmn_req_fail(dmn_t *d, dmn_session_t *s, const err_info_t *e)
{
    dmn_active_t *a = &s->act;
    dmn_session_drop_tail(s, a->prompt_left);
    s->t_last = dmn_now();
    if (!a->peer_gone)
        dmn_send_error(d, &a->peer, a->id, s->id, e);
    dmn_active_clear(a);
}

/* ------------------------------------------------------------------ generating */

/* Samples the session's next token from its logits, streams it, and ends the request when a
 * stop condition holds. The token joins the pending queue either way: it is part of the
 * text the client saw. */
static void gen_next(dmn_t *d, dmn_session_t *s)
{
    dmn_active_t *a = &s->act;
    if (a->n_gen >= a->max_tokens) {
        dmn_req_finish(d, s, GISTD__STOP_REASON__STOP_LENGTH, NULL, 0);
        return;
    }
    if (!s->rt.have_logits) {
        err_info_t e;
        err_set(&e, ERR_INTERNAL, "session %u has nothing to predict from", s->id);
        dmn_req_fail(d, s, &e);
        return;
    }
    const int32_t t = mdl_sampler_sample(a->smp, s->rt.logits);
    mdl_sampler_accept(a->smp, t);
    const uint32_t pos = s->rt.n_past + s->n_pend;
    if (dmn_session_push(s, &t, 1)) {
        err_info_t e;
        err_set(&e, ERR_NOMEM, "no memory for session %u's next token", s->id);
        dmn_req_fail(d, s, &e);
        return;
    }
    if (a->n_gen == 0)
        a->t_first = dmn_now();
    a->n_gen++;
    s->generated_tokens++;
    d->c.tokens_generated++;
    if (t == tok_eos(d->tok)) {
        dmn_req_finish(d, s, GISTD__STOP_REASON__STOP_EOS, NULL, 0);
        return;
    }

    char piece[512];
    size_t pl = tok_piece(d->tok, t, !s->text_started, false, piece, sizeof piece);
    pl = pl < sizeof piece ? pl : sizeof piece;
    s->text_started = true;
    if (a->text_len + pl + 1 > a->text_cap) {
        size_t cap = a->text_cap ? a->text_cap * 2 : 256;
        while (cap < a->text_len + pl + 1)
            cap *= 2;
        char *p = realloc(a->text, cap);
        if (!p) {
            err_info_t e;
            err_set(&e, ERR_NOMEM, "no memory for session %u's text", s->id);
            dmn_req_fail(d, s, &e);
            return;
        }
        a->text = p;
        a->text_cap = cap;
    }
    memcpy(a->text + a->text_len, piece, pl);
    a->text_len += pl;
    a->text[a->text_len] = 0;

    if (!a->peer_gone) {
        Gistd__TokenEvent ev = GISTD__TOKEN_EVENT__INIT;
        ev.id = t;
        ev.text.data = (uint8_t *)piece;
        ev.text.len = pl;
        ev.index = a->n_gen - 1;
        ev.pos = pos;
        Gistd__Reply r = GISTD__REPLY__INIT;
        r.id = a->id;
        r.session = s->id;
        r.body_case = GISTD__REPLY__BODY_TOKEN;
        r.token = &ev;
        int rc = dmn_send(d, &a->peer, &r);
        if (rc == ERR_BUSY) {
            s->events_dropped++;
        } else if (rc == ERR_NOTFOUND) {
            /* the client went away: its stream ends here, and costs nobody else anything */
            a->peer_gone = true;
            d->c.clients_gone++;
            dmn_log(d, DMN_LOG_INFO, "session %u: the client of request %llu went away", s->id,
                    (unsigned long long)a->id);
            dmn_req_finish(d, s, GISTD__STOP_REASON__STOP_CANCELLED, NULL, 0);
            return;
        }
    }

    for (uint32_t i = 0; i < a->n_stop; i++) {
        /* a match must end in the new piece */
        size_t from =
            a->text_len > pl + a->stop_len[i] - 1 ? a->text_len - pl - a->stop_len[i] + 1 : 0;
        if (memmem(a->text + from, a->text_len - from, a->stop[i], a->stop_len[i])) {
            dmn_req_finish(d, s, GISTD__STOP_REASON__STOP_STRING, a->stop[i], a->stop_len[i]);
            return;
        }
    }
    if (a->n_gen >= a->max_tokens)
        dmn_req_finish(d, s, GISTD__STOP_REASON__STOP_LENGTH, NULL, 0);
}

/* ------------------------------------------------------------------ the batch */

/* Adds a slot for s: up to n of its pending tokens, as many as its policy and budget allow.
 * A refused slot ends s's request. */
/* Steps a session waits in a row for the global limit before its request fails. */
#define DMN_BUDGET_WAITS 64

/* Whether the global hard limit, not s's own, is what has the least room left. */
static bool global_binds(const dmn_t *d, const dmn_session_t *s, size_t hard)
{
    const size_t used = kv_store_bytes(d->store);
    const size_t room = hard > used ? hard - used : 0;
    size_t own;
    if (kv_session_limits(d->store, s->rt.kv, &own, NULL) || own == 0)
        return true;
    const size_t mine = kv_session_bytes(d->store, s->rt.kv);
    return room < (own > mine ? own - mine : 0);
}

static void add_slot(dmn_t *d, dmn_session_t *s, uint32_t n)
{
    err_info_t e;
    err_clear(&e);
    uint32_t taken;
    const uint32_t k = rt_step_slots(d->rt);
    const bool want_all = s->act.kind == DMN_REQ_SCORE;
    int rc = rt_step_add(d->rt, &s->rt, s->pend + s->pend_head, n, want_all, &taken, &e);
    size_t hard, soft;
    kv_store_limits(d->store, &hard, &soft);
    if (rc == ERR_BUDGET && hard && d->n_sess > 1) {
        /* The global limit refused what s's own budget allows, and s alone cannot free it
         * (its pins): the other sessions give back what they hold above their share now,
         * not at the next watermark check, and s tries once more. */
        int64_t freed = 0;
        err_info_t se;
        err_clear(&se);
        dmn_shrink(d, NULL, soft ? soft : hard, "budget", &freed, &se);
        if (freed > 0) {
            err_clear(&e);
            rc = rt_step_add(d->rt, &s->rt, s->pend + s->pend_head, n, want_all, &taken, &e);
        }
    }
    if (rc == ERR_BUDGET && hard && k > 0 && s->budget_waits < DMN_BUDGET_WAITS &&
        global_binds(d, s, hard)) {
        /* What the global limit lacks is held by rows the sessions already in this step
         * reserved (dmn_shrink leaves them alone while they are planned): s waits for the
         * next step, when they have committed and can be shrunk, instead of failing. */
        s->budget_waits++;
        return;
    }
    if (rc) {
        if (rc == ERR_BUDGET)
            d->c.budget_refusals++;
        err_prefix(&e, "session %u: ", s->id);
        dmn_req_fail(d, s, &e);
        return;
    }
    s->budget_waits = 0;
    d->slot_sess[k] = s;
}

static bool in_step(const dmn_t *d, const dmn_session_t *s)
{
    for (uint32_t k = 0; k < rt_step_slots(d->rt); k++)
        if (d->slot_sess[k] == s)
            return true;
    return false;
}

/* Chooses this step's slots: every decoder, then prefill chunks, oldest request first. */
static int plan(dmn_t *d)
{
    if (d->n_sess > d->cap_slot_sess) {
        dmn_session_t **t = realloc(d->slot_sess, sizeof *t * d->n_sess * 2);
        if (!t)
            return ERR_NOMEM;
        d->slot_sess = t;
        d->cap_slot_sess = d->n_sess * 2;
    }
    rt_step_begin(d->rt);
    d->planning = true;
    for (uint32_t i = 0; i < d->n_sess; i++) {
        dmn_session_t *s = d->sess[i];
        if (s->act.kind != DMN_REQ_NONE && s->n_pend == 1)
            add_slot(d, s, 1);
    }
    uint32_t left = d->cfg.prefill_chunk;
    while (left > 0) {
        dmn_session_t *best = NULL;
        for (uint32_t i = 0; i < d->n_sess; i++) {
            dmn_session_t *s = d->sess[i];
            if (s->act.kind != DMN_REQ_NONE && s->n_pend > 1 && !in_step(d, s) &&
                (!best || s->act.t_arrive < best->act.t_arrive))
                best = s;
        }
        if (!best)
            break;
        const uint32_t n = best->n_pend < left ? best->n_pend : left;
        const uint32_t before = rt_step_slots(d->rt);
        add_slot(d, best, n);
        if (rt_step_slots(d->rt) > before)
            left -= rt_step_taken(d->rt, before);
        else if (best->act.kind != DMN_REQ_NONE)
            break; /* not refused, yet not added: try again next step */
    }
    d->planning = false;
    return 0;
}


/* After the forward: stores slot k's rows, takes its tokens off the queue, scores them, and
 * runs the policy's commit hook. Returns true when the session's request may go on. */
static bool commit_slot(dmn_t *d, uint32_t k, double now)
{
    dmn_session_t *s = d->slot_sess[k];
    dmn_active_t *a = &s->act;
    const uint32_t n = rt_step_taken(d->rt, k), nv = d->hp->n_vocab, pos0 = s->rt.n_past;
    err_info_t e;
    err_clear(&e);
    if (rt_step_commit(d->rt, k, &e)) {
        dmn_req_fail(d, s, &e);
        return false;
    }
    if (a->kind == DMN_REQ_SCORE)
        for (uint32_t i = 0; i < n; i++) {
            const uint32_t q = pos0 + i + 1; /* the position item i predicts */
            if (q >= a->score_first && q < a->score_first + a->n_score && i + 1 < s->n_pend)
                a->logprob[q - a->score_first] = (float)-mdl_token_nll(
                    rt_step_logits(d->rt, k, i), nv, s->pend[s->pend_head + i + 1]);
        }
    s->pend_head += n;
    s->n_pend -= n;
    if (s->n_pend == 0)
        s->pend_head = 0;
    if (a->prompt_left > s->n_pend)
        a->prompt_left = s->n_pend;
    s->t_last = now;
    if (a->t_start == 0)
        a->t_start = now;
    if (a->n_gen == 0) {
        a->prompt_tokens += n;
        s->prompt_tokens += n;
        d->c.tokens_prefilled += n;
    }

    if (a->pos_first == UINT32_MAX)
        a->pos_first = pos0;
    if (rt_step_policy(d->rt, k, &e)) {
        dmn_req_fail(d, s, &e);
        return false;
    }
    return a->kind != DMN_REQ_NONE;
}

/* A session whose queue is empty: its request goes on (generate) or ends. */
static void advance(dmn_t *d, dmn_session_t *s)
{
    if (s->act.kind == DMN_REQ_NONE || s->n_pend > 0)
        return;
    if (s->act.kind == DMN_REQ_GENERATE) {
        if (s->act.n_gen == 0 && s->act.t_prefill == 0) {
            s->act.t_prefill = dmn_now();
            if (s->act.turn_in) /* its prompt was a turn: expand before the first sample */
                dmn_expand_turn(d, s);
        }
        gen_next(d, s);
    } else {
        dmn_req_finish(d, s, GISTD__STOP_REASON__STOP_NONE, NULL, 0);
    }
}

/* ------------------------------------------------------------------ the step */

bool dmn_sched_busy(const dmn_t *d)
{
    for (uint32_t i = 0; i < d->n_sess; i++)
        if (d->sess[i]->act.kind != DMN_REQ_NONE)
            return true;
    return false;
}

/* Above the global watermark: the sessions furthest above their fair share, idle ones first,
 * are asked to shrink. Checked after every step: the store's byte counter is O(1). */
static void watermark(dmn_t *d)
{
    size_t soft;
    kv_store_limits(d->store, NULL, &soft);
    if (!soft || d->n_sess == 0 || kv_store_bytes(d->store) <= soft)
        return;
    int64_t freed = 0;
    err_info_t e;
    err_clear(&e);
    dmn_shrink(d, NULL, soft, "watermark", &freed, &e);
}

void dmn_sched_step(dmn_t *d)
{
    const double t0 = dmn_now();
    for (uint32_t i = 0; i < d->n_sess; i++)
        advance(d, d->sess[i]);

    if (plan(d)) {
        dmn_log(d, DMN_LOG_ERROR, "out of memory planning a step");
        return;
    }
    const uint32_t n_slots = rt_step_slots(d->rt);
    if (n_slots == 0)
        return;

    err_info_t e;
    err_clear(&e);
    if (rt_step_run(d->rt, &e)) {
        dmn_log(d, DMN_LOG_ERROR, "forward pass failed: %s", err_msg(&e));
        for (uint32_t k = 0; k < n_slots; k++)
            dmn_req_fail(d, d->slot_sess[k], &e);
        return;
    }
    const double t1 = dmn_now();
    uint32_t dec = 0, items = 0;
    for (uint32_t k = 0; k < n_slots; k++) {
        dmn_session_t *s = d->slot_sess[k];
        const uint32_t n = rt_step_taken(d->rt, k);
        items += n;
        if (s->act.kind == DMN_REQ_GENERATE && s->act.n_gen > 0)
            dec += n;
        if (commit_slot(d, k, t1))
            advance(d, s);
    }
    d->c.steps++;
    d->c.items += items;
    d->c.decode_steps += dec > 0;
    d->c.decode_items += dec;
    dmn_rate_note(d, t0, dmn_now() - t0, dec, items - dec);
    watermark(d);
}

/* ------------------------------------------------------------------ shrinking */

int dmn_shrink(dmn_t *d, dmn_session_t *only, size_t target, const char *reason, int64_t *freed,
               err_info_t *e)
{
    *freed = 0;
    if (only) {
        if (kv_session_bytes(d->store, only->rt.kv) <= target)
            return 0;
        return rt_sess_shrink(d->rt, &only->rt, target, freed, e);
    }
    /* the whole store: fair share = target / sessions; furthest above it first, idle first */
    const size_t start = kv_store_bytes(d->store);
    if (start <= target || d->n_sess == 0)
        return 0;
    const size_t fair = target / d->n_sess;
    for (int pass = 0; pass < 2; pass++) { /* pass 0: idle sessions, pass 1: busy ones */
        for (;;) {
            dmn_session_t *best = NULL;
            size_t best_over = 0, best_bytes = 0;
            for (uint32_t i = 0; i < d->n_sess; i++) {
                dmn_session_t *s = d->sess[i];
                if ((s->act.kind == DMN_REQ_NONE) != (pass == 0) || s->shrunk_epoch == d->epoch ||
                    (d->planning && in_step(d, s))) /* its rows are reserved: edits wait */
                    continue;
                const size_t bytes = kv_session_bytes(d->store, s->rt.kv);
                if (bytes > fair && bytes - fair > best_over) {
                    best = s;
                    best_over = bytes - fair;
                    best_bytes = bytes;
                }
            }
            if (!best)
                break;
            best->shrunk_epoch = d->epoch;
            const size_t now = kv_store_bytes(d->store);
            if (now <= target)
                break;
            const size_t over = now - target;
            size_t goal = best_bytes > over ? best_bytes - over : 0;
            goal = goal > fair ? goal : fair;
            err_info_t pe;
            err_clear(&pe);
            int64_t got;
            if (rt_sess_shrink(d->rt, &best->rt, goal, &got, &pe))
                dmn_log(d, DMN_LOG_WARN, "session %u: shrinking for the %s: %s", best->id, reason,
                        err_msg(&pe));
        }
    }
    d->epoch++;
    *freed = (int64_t)start - (int64_t)kv_store_bytes(d->store);
    (void)e;
    return 0;
}
