/*
 * daemon/stats.c — the figures behind `gistctl stats`, `sessions` and `top`: the store's
 * bytes (Redis INFO-memory style, from kv_store_stats), each session's bytes and compression,
 * and tokens/s over the last few seconds of work.
 */
#include <stdlib.h>
#include <string.h>

#include "daemon/dmn_impl.h"

/* Tokens/s figures look this far back. */
#define DMN_RATE_WINDOW_S 5.0

void dmn_rate_note(dmn_t *d, double t, double dt, uint32_t dec, uint32_t pre)
{
    d->rate_head = (d->rate_head + 1) % DMN_RATE_RING;
    d->rate[d->rate_head].t = t;
    d->rate[d->rate_head].dt = dt;
    d->rate[d->rate_head].dec = dec;
    d->rate[d->rate_head].pre = pre;
}

/* Decode and prefill tokens/s over the steps of the last DMN_RATE_WINDOW_S seconds: tokens
 * over the wall time from the first of those steps to the end of the last. */
static void rates(const dmn_t *d, double *dec_tps, double *pre_tps)
{
    const double now = dmn_now();
    double first = now, end = 0.0;
    uint64_t dec = 0, pre = 0;
    for (uint32_t i = 0; i < DMN_RATE_RING; i++) {
        const uint32_t j = (d->rate_head + DMN_RATE_RING - i) % DMN_RATE_RING;
        if (d->rate[j].dt <= 0.0 || now - d->rate[j].t > DMN_RATE_WINDOW_S)
            break;
        first = d->rate[j].t;
        end = end > d->rate[j].t + d->rate[j].dt ? end : d->rate[j].t + d->rate[j].dt;
        dec += d->rate[j].dec;
        pre += d->rate[j].pre;
    }
    const double span = end - first;
    *dec_tps = span > 0 ? dec / span : 0.0;
    *pre_tps = span > 0 ? pre / span : 0.0;
}

static const char *state_name(const dmn_session_t *s)
{
    switch (s->act.kind) {
    case DMN_REQ_APPEND:
        return "prefill";
    case DMN_REQ_GENERATE:
        return s->act.n_gen > 0 ? "generate" : "prefill";
    case DMN_REQ_SCORE:
        return "score";
    default:
        return "idle";
    }
}

void dmn_session_info(const dmn_t *d, const dmn_session_t *s, Gistd__SessionInfo *info,
                      Gistd__TierBytes *tiers)
{
    kv_stats_t ks;
    kv_session_stats(d->store, s->rt.kv, &ks);
    gistd__session_info__init(info);
    gistd__tier_bytes__init(tiers);
    info->id = s->id;
    info->name = (char *)s->name;
    info->state = (char *)state_name(s);
    info->policy = (char *)pol_name(s->rt.pol);
    info->chat_template = (char *)s->tmpl->name;
    if (s->tmpl->stop) {
        info->turn_stop.data = (uint8_t *)s->tmpl->stop;
        info->turn_stop.len = strlen(s->tmpl->stop);
    }
    info->bytes = ks.bytes;
    info->peak_bytes = ks.peak;
    info->hard_bytes = ks.hard_limit;
    info->soft_bytes = ks.soft_limit;
    info->tokens = s->rt.n_past + s->n_pend;
    info->pending = s->n_pend;
    info->rows = ks.rows;
    /* tokens represented per row held: every lane of a stored position would hold one raw row */
    info->compression = ks.rows ? (double)s->rt.n_past * d->n_lane / (double)ks.rows : 1.0;
    info->prompt_tokens = s->prompt_tokens;
    info->generated_tokens = s->generated_tokens;
    /* while it generates, the speed of this request so far; else that of the last one */
    const dmn_active_t *a = &s->act;
    const double now = dmn_now();
    info->tokens_per_s =
        a->kind == DMN_REQ_GENERATE && a->n_gen > 1 && a->t_first > 0 && now > a->t_first
            ? (a->n_gen - 1) / (now - a->t_first)
            : s->tps;
    info->idle_s = s->act.kind == DMN_REQ_NONE ? now - s->t_last : 0.0;
    info->compactions = s->compactions;
    info->bytes_freed = s->bytes_freed;
    info->expansions = s->expansions;
    info->expand_tokens = s->expand_tokens;
    info->events_dropped = s->events_dropped;
    tiers->f32 = ks.tier_bytes[KV_TIER_F32];
    tiers->f16 = ks.tier_bytes[KV_TIER_F16];
    tiers->q8_0 = ks.tier_bytes[KV_TIER_Q8_0];
    info->tiers = tiers;
}

void dmn_send_stats(dmn_t *d, const dmn_peer_t *to, uint64_t id, bool sessions)
{
    kv_stats_t ks;
    kv_store_stats(d->store, &ks);
    Gistd__Stats st = GISTD__STATS__INIT;
    Gistd__TierBytes tiers = GISTD__TIER_BYTES__INIT;
    st.kv_budget_bytes = ks.hard_limit;
    st.kv_soft_bytes = ks.soft_limit;
    st.kv_used_bytes = ks.bytes;
    st.kv_peak_bytes = ks.peak;
    /* the sessions this client may see (an admin: all); the store's figures are the daemon's */
    for (uint32_t i = 0; i < d->n_sess; i++)
        st.sessions += dmn_peer_owns(d, to, d->sess[i]);
    st.max_sessions = d->cfg.max_sessions;
    st.session_budget_bytes = d->cfg.session_budget;
    tiers.f32 = ks.tier_bytes[KV_TIER_F32];
    tiers.f16 = ks.tier_bytes[KV_TIER_F16];
    tiers.q8_0 = ks.tier_bytes[KV_TIER_Q8_0];
    st.tiers = &tiers;
    st.rows = ks.rows;
    st.blocks = ks.blocks;
    st.fragmentation = ks.fragmentation;
    st.transcript_bytes = ks.transcript_bytes;
    st.transcript_disk_bytes = ks.transcript_disk_bytes;
    st.tokens = ks.tokens;
    st.je_allocated = ks.je_allocated;
    st.je_active = ks.je_active;
    st.je_resident = ks.je_resident;
    st.steps = d->c.steps;
    st.tokens_generated = d->c.tokens_generated;
    st.tokens_prefilled = d->c.tokens_prefilled;
    rates(d, &st.decode_tokens_per_s, &st.prefill_tokens_per_s);
    st.avg_batch = d->c.steps ? (double)d->c.items / d->c.steps : 0.0;
    st.decode_steps = d->c.decode_steps;
    st.decode_items = d->c.decode_items;
    st.requests = d->c.requests;
    st.errors = d->c.errors;
    st.events_dropped = d->c.events_dropped;
    st.clients_gone = d->c.clients_gone;
    st.budget_refusals = d->c.budget_refusals;
    st.compactions = d->c.compactions;
    st.bytes_freed = d->c.bytes_freed;
    st.uptime_s = dmn_now() - d->t_start;
    st.model = d->model_path;
    st.threads = (uint32_t)mdl_threads(d->model);
    st.rate_refusals = d->refused_rate;
    st.permission_refusals = d->refused_perm;
    st.curve = d->curve;
    st.session_min_bytes = d->session_min;
    st.idle_timeout_s = d->cfg.idle_timeout;
    Gistd__MethodCount by_method[POL_N_COMPACT_METHODS], *by_method_ptr[POL_N_COMPACT_METHODS];
    for (int i = 0; i < POL_N_COMPACT_METHODS; i++) {
        gistd__method_count__init(&by_method[i]);
        by_method[i].method = (char *)pol_method_name(i);
        by_method[i].count = d->c.compactions_by_method[i];
        by_method_ptr[i] = &by_method[i];
    }
    st.n_compactions_by_method = POL_N_COMPACT_METHODS;
    st.expansions = d->c.expansions;
    st.expand_tokens = d->c.expand_tokens;
    st.expand_bytes = d->c.expand_bytes;
    st.expand_ms = d->c.expand_ms;
    st.compactions_by_method = by_method_ptr;
    st.kv_bytes_per_token =
        (uint64_t)d->n_lane * kv_block_bytes(d->store, d->cfg.kv_type) / kv_block_rows(d->store);

    Gistd__SessionInfo *infos = NULL, **ptrs = NULL;
    Gistd__TierBytes *stiers = NULL;
    if (sessions && d->n_sess > 0) {
        infos = calloc(d->n_sess, sizeof *infos);
        ptrs = calloc(d->n_sess, sizeof *ptrs);
        stiers = calloc(d->n_sess, sizeof *stiers);
        if (!infos || !ptrs || !stiers) {
            free(infos);
            free(ptrs);
            free(stiers);
            dmn_send_errorf(d, to, id, 0, ERR_NOMEM, "no memory for %u sessions' figures",
                            d->n_sess);
            return;
        }
        uint32_t k = 0;
        for (uint32_t i = 0; i < d->n_sess; i++) {
            if (!dmn_peer_owns(d, to, d->sess[i]))
                continue; /* another client's session is not shown */
            dmn_session_info(d, d->sess[i], &infos[k], &stiers[k]);
            ptrs[k] = &infos[k];
            k++;
        }
        st.n_session_list = k;
        st.session_list = ptrs;
    }
    Gistd__Reply r = GISTD__REPLY__INIT;
    r.id = id;
    r.final = true;
    r.body_case = GISTD__REPLY__BODY_STATS;
    r.stats = &st;
    dmn_send(d, to, &r);
    free(infos);
    free(ptrs);
    free(stiers);
}
