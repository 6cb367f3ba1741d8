/*
 * tools/gist-model/kvrun.c — a model over the hierarchical KV store under a policy
 * (tools/gist-model/kvrun.h): the views, the commits, the runner for learned gists.
 */
#include "tools/gist-model/kvrun.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "model/sampler.h"

struct kvr {
    mdl_t *m;
    const mdl_hparams_t *hp;
    kvr_cfg_t cfg;
    pol_param_t *params; /* copies of cfg's */
    char *policy;
    kv_store_t *st;
    rt_t *rt;
    rt_sess_t s;
    uint64_t text;
};

static void print_event(void *ctx, const pol_event_t *ev)
{
    (void)ctx;
    fprintf(stderr,
            "%s: %s/%s (%s) positions %u..%u level %u, %u lanes, rows %llu -> %llu, "
            "%lld bytes freed (%zu -> %zu)\n",
            ev->action == POL_EXPAND ? "expansion" : "compaction", pol_action_name(ev->action), pol_method_name(ev->method), pol_reason_name(ev->reason),
            ev->first, ev->last, ev->level, ev->lanes, (unsigned long long)ev->rows_before,
            (unsigned long long)ev->rows_after, (long long)ev->bytes_freed, ev->bytes_before,
            ev->bytes_after);
}

/* ------------------------------------------------------------------ life */

static int open_session(kvr_t *r, err_info_t *e)
{
    kv_session_config_t sc = {.hard_limit = r->cfg.hard};
    uint32_t sid;
    int rc = kv_session_create(r->st, &sc, &sid, e);
    if (rc)
        return rc;
    rt_sess_config_t pc = {.policy = r->policy,
                           .params = r->params,
                           .n_params = r->cfg.n_params,
                           .emit = r->cfg.print_events ? print_event : NULL};
    rc = rt_sess_init(r->rt, &r->s, sid, &pc, e);
    if (rc) {
        kv_session_destroy(r->st, sid);
        return rc;
    }
    if (r->cfg.hard) {
        size_t soft = r->cfg.soft;
        if (!soft) {
            size_t head = pol_headroom(r->s.pol, r->cfg.ubatch);
            soft = r->cfg.hard > head ? r->cfg.hard - head : 1;
        }
        if (soft > r->cfg.hard)
            soft = r->cfg.hard;
        rc = kv_session_set_limits(r->st, r->s.kv, r->cfg.hard, soft, NULL);
        if (rc)
            return err_set(e, rc, "KV budget: soft %zu above hard %zu", soft, r->cfg.hard);
    }
    r->text = 0;
    return 0;
}

static void close_session(kvr_t *r)
{
    if (!r->s.pol)
        return;
    const uint32_t sid = r->s.kv;
    rt_sess_fini(&r->s);
    kv_session_destroy(r->st, sid);
}

int kvr_new(mdl_t *m, const kvr_cfg_t *cfg, kvr_t **out, err_info_t *e)
{
    *out = NULL;
    kvr_t *r = calloc(1, sizeof *r);
    if (!r)
        return err_set(e, ERR_NOMEM, "out of memory");
    r->m = m;
    r->hp = mdl_hparams(m);
    r->cfg = *cfg;
    if (!r->cfg.ubatch)
        r->cfg.ubatch = 256;
    int rc = 0;
    r->policy = strdup(cfg->policy && *cfg->policy ? cfg->policy : "auto");
    r->params = calloc(cfg->n_params + 1, sizeof *r->params);
    if (!r->policy || !r->params)
        rc = err_set(e, ERR_NOMEM, "out of memory");
    for (uint32_t i = 0; !rc && i < cfg->n_params; i++) {
        r->params[i].key = strdup(cfg->params[i].key);
        r->params[i].value = strdup(cfg->params[i].value ? cfg->params[i].value : "");
        if (!r->params[i].key || !r->params[i].value)
            rc = err_set(e, ERR_NOMEM, "out of memory");
    }
    r->cfg.params = r->params;
    const char *tmp = getenv("TMPDIR"), *spill = cfg->spill_dir;
    const bool spill_default = !spill;
    if (spill_default)
        spill = tmp && *tmp ? tmp : "/var/tmp";
    kv_store_config_t sc = {.n_layer = r->hp->n_layer,
                            .n_head_kv = r->hp->n_head_kv,
                            .head_dim = r->hp->head_dim,
                            .block_rows = r->cfg.block_rows,
                            .hot_type = r->cfg.hot_type,
                            .spill_dir = strcmp(spill, "none") ? spill : NULL};
    if (!rc)
        rc = kv_store_new(&sc, &r->st, e);
    if (rc == ERR_IO && spill_default) { /* as gistd: no usable default folder, no spilling */
        err_clear(e);
        sc.spill_dir = NULL;
        rc = kv_store_new(&sc, &r->st, e);
    }
    if (!rc)
        rc = rt_new(m, r->st, &r->rt, e);
    if (!rc)
        rc = open_session(r, e);
    if (rc) {
        kvr_destroy(&r);
        return rc;
    }
    *out = r;
    return 0;
}

void kvr_destroy(kvr_t **pr)
{
    if (!pr || !*pr)
        return;
    kvr_t *r = *pr;
    close_session(r);
    rt_destroy(&r->rt);
    kv_store_destroy(&r->st);
    for (uint32_t i = 0; r->params && i < r->cfg.n_params; i++) {
        free((char *)r->params[i].key);
        free((char *)r->params[i].value);
    }
    free(r->params);
    free(r->policy);
    free(r);
    *pr = NULL;
}

int kvr_reset(kvr_t *r, err_info_t *e)
{
    close_session(r);
    return open_session(r, e);
}

const pol_t *kvr_policy(const kvr_t *r)
{
    return r->s.pol;
}

/* ------------------------------------------------------------------ feeding */

int kvr_feed(kvr_t *r, const int32_t *ids, uint32_t n, float *logits, float *last, err_info_t *e)
{
    const size_t nv = r->hp->n_vocab;
    int rc = 0;
    for (uint32_t i = 0; i < n && !rc;) {
        const uint32_t offer = n - i < r->cfg.ubatch ? n - i : r->cfg.ubatch;
        uint32_t k;
        rt_step_begin(r->rt);
        rc = rt_step_add(r->rt, &r->s, ids + i, offer, logits != NULL, &k, e);
        if (rc)
            break;
        if (r->s.gists_ran && i > 0 && logits) /* the next token is predicted by the last gist */
            memcpy(logits + (i - 1) * nv, r->s.logits, nv * sizeof(float));
        rc = rt_step_run(r->rt, e);
        if (!rc)
            rc = rt_step_commit(r->rt, 0, e);
        if (rc)
            break;
        if (logits)
            memcpy(logits + i * nv, rt_step_logits(r->rt, 0, 0), k * nv * sizeof(float));
        else if (last && i + k == n)
            memcpy(last, r->s.logits, nv * sizeof(float));
        rc = rt_step_policy(r->rt, 0, e);
        r->text += k;
        i += k;
    }
    return rc;
}

int kvr_score(kvr_t *r, const int32_t *ids, uint32_t n, double *nll, size_t *scored,
              err_info_t *e)
{
    const uint32_t nv = r->hp->n_vocab;
    int rc = 0;
    for (uint32_t i = 0; i < n && !rc;) {
        const uint32_t offer = n - i < r->cfg.ubatch ? n - i : r->cfg.ubatch;
        uint32_t k;
        rt_step_begin(r->rt);
        rc = rt_step_add(r->rt, &r->s, ids + i, offer, true, &k, e);
        if (rc)
            break;
        /* the step's first token follows the session's latest prediction (after gists) */
        if (r->s.have_logits) {
            *nll += mdl_token_nll(r->s.logits, nv, ids[i]);
            (*scored)++;
        }
        rc = rt_step_run(r->rt, e);
        if (!rc)
            rc = rt_step_commit(r->rt, 0, e);
        if (rc)
            break;
        for (uint32_t j = 0; j + 1 < k; j++) {
            *nll += mdl_token_nll(rt_step_logits(r->rt, 0, j), nv, ids[i + j + 1]);
            (*scored)++;
        }
        rc = rt_step_policy(r->rt, 0, e);
        r->text += k;
        i += k;
    }
    return rc;
}

int kvr_end_turn(kvr_t *r, float *last, bool *updated, err_info_t *e)
{
    int rc = rt_sess_end_turn(r->rt, &r->s, e);
    if (updated)
        *updated = r->s.gists_ran;
    if (!rc && r->s.gists_ran && last)
        memcpy(last, r->s.logits, r->hp->n_vocab * sizeof(float));
    return rc;
}

int kvr_expand(kvr_t *r, float *last, rt_expand_result_t *out, err_info_t *e)
{
    memset(out, 0, sizeof *out);
    pol_expand_cfg_t xc;
    pol_expand_config(r->s.pol, &xc);
    if (!xc.on)
        return 0;
    int rc = rt_sess_expand_auto(r->rt, &r->s, 0, POL_R_TURN, out, e);
    if (!rc && out->spans && last)
        memcpy(last, r->s.logits, r->hp->n_vocab * sizeof(float));
    return rc;
}

void kvr_figures(kvr_t *r, kvr_figures_t *out)
{
    kv_stats_t s;
    memset(out, 0, sizeof *out);
    if (kv_session_stats(r->st, r->s.kv, &s) == 0) {
        out->bytes = s.bytes;
        out->peak = s.peak;
        out->rows = s.rows;
        out->blocks = s.blocks;
        out->run_blocks = s.run_blocks;
        out->positions = s.tokens;
    }
    out->text = r->text;
    pol_stats(r->s.pol, &out->pol);
}

int kvr_full_bytes(mdl_t *m, uint32_t n_ctx, uint32_t block_rows, uint32_t hot_type, size_t *bytes,
                   err_info_t *e)
{
    const mdl_hparams_t *hp = mdl_hparams(m);
    kv_store_config_t sc = {.n_layer = hp->n_layer,
                            .n_head_kv = hp->n_head_kv,
                            .head_dim = hp->head_dim,
                            .block_rows = block_rows,
                            .hot_type = hot_type};
    kv_store_t *st = NULL;
    uint32_t sid;
    kv_session_config_t ss = {0};
    int rc = kv_store_new(&sc, &st, e);
    if (!rc)
        rc = kv_session_create(st, &ss, &sid, e);
    if (!rc)
        rc = kv_reserve(st, sid, n_ctx, e);
    if (!rc) {
        kv_stats_t s;
        kv_session_stats(st, sid, &s);
        *bytes = s.bytes;
    }
    kv_store_destroy(&st);
    return rc;
}

int kvr_parse_size(const char *s, size_t *out)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || !(v >= 0) || !isfinite(v))
        return -1;
    double mul = 1;
    switch (toupper((unsigned char)*end)) {
    case 0:
        break;
    case 'K':
        mul = 1024.0;
        end++;
        break;
    case 'M':
        mul = 1024.0 * 1024.0;
        end++;
        break;
    case 'G':
        mul = 1024.0 * 1024.0 * 1024.0;
        end++;
        break;
    default:
        return -1;
    }
    if (*end == 'i' || *end == 'I')
        end++;
    if (*end == 'B' || *end == 'b')
        end++;
    if (*end)
        return -1;
    *out = (size_t)(v * mul);
    return 0;
}
