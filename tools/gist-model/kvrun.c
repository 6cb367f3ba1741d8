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
#include "model/gguf.h"

struct kvr {
    mdl_t *m;
    const mdl_hparams_t *hp;
    const tok_t *tok;
    kvr_cfg_t cfg;
    pol_param_t *params; /* copies of cfg's */
    char *policy;
    kv_store_t *st;
    uint32_t sid;
    pol_t *pol;
    pol_model_t pm;
    uint32_t nl, nkv, hd;
    size_t row_bytes[DT_Q8_0 + 1];

    /* views: per lane the store's chunks, and the model's view of them */
    kv_chunk_t **kch;
    mdl_kv_chunk_t **mch;
    uint32_t *ch_cap;
    float *new_k, *new_v, *new_lb, *new_acc; /* [nl][new_cap][hd] and [nl][new_cap] */
    uint32_t new_cap;
    const pol_run_t *mask; /* while gist tokens run */
    kv_row_meta_t *meta;
    uint32_t meta_cap;

    /* batches */
    int32_t *pos;
    uint8_t *want;
    uint32_t batch_cap;
    float *logits;    /* [ubatch][n_vocab] */
    float *gist_last; /* [n_vocab] after the last gist run */
    bool gist_ran;
    uint64_t text;
};

/* ------------------------------------------------------------------ views */

static int grow_new(kvr_t *r, uint32_t n)
{
    if (n <= r->new_cap)
        return 0;
    uint32_t cap = n > 2 * r->new_cap ? n : 2 * r->new_cap;
    size_t rows = (size_t)r->nl * cap;
    float *k = realloc(r->new_k, rows * r->hd * sizeof(float));
    if (k)
        r->new_k = k;
    float *v = k ? realloc(r->new_v, rows * r->hd * sizeof(float)) : NULL;
    if (v)
        r->new_v = v;
    float *lb = v ? realloc(r->new_lb, rows * sizeof(float)) : NULL;
    if (lb)
        r->new_lb = lb;
    float *acc = lb ? realloc(r->new_acc, rows * sizeof(float)) : NULL;
    if (!acc)
        return ERR_NOMEM;
    r->new_acc = acc;
    r->new_cap = cap;
    return 0;
}

static int view(void *ctx, int seq, int layer, int head, uint32_t n_new, mdl_kv_view_t *out)
{
    kvr_t *r = ctx;
    (void)seq;
    const uint32_t l = (uint32_t)layer * r->nkv + (uint32_t)head;
    uint32_t rows = 0, nc = 0;
    int rc = kv_lane_size(r->st, r->sid, (uint32_t)layer, (uint32_t)head, &rows, &nc);
    if (rc)
        return rc;
    uint32_t need = r->mask ? (nc > rows ? nc : rows) : nc; /* a mask may cut every row apart */
    if (need + 1 > r->ch_cap[l]) {
        uint32_t cap = need + 1 + need / 2;
        kv_chunk_t *a = realloc(r->kch[l], cap * sizeof *a);
        if (a)
            r->kch[l] = a;
        mdl_kv_chunk_t *b = a ? realloc(r->mch[l], cap * sizeof *b) : NULL;
        if (!b)
            return ERR_NOMEM;
        r->mch[l] = b;
        r->ch_cap[l] = cap;
    }
    kv_chunk_t *kc = r->kch[l];
    mdl_kv_chunk_t *mc = r->mch[l];
    rc = kv_lane_view(r->st, r->sid, (uint32_t)layer, (uint32_t)head, kc, r->ch_cap[l], &nc);
    if (rc)
        return rc;
    uint32_t n_out = 0;
    if (!r->mask) {
        for (uint32_t c = 0; c < nc; c++)
            mc[c] = (mdl_kv_chunk_t){.n = kc[c].n,
                                     .type = kc[c].type,
                                     .k = kc[c].k,
                                     .v = kc[c].v,
                                     .bias = kc[c].bias,
                                     .attn_acc = kc[c].attn_acc};
        n_out = nc;
    } else {
        /* the sentence mask: runs of visible rows inside each chunk */
        if (rows > r->meta_cap) {
            kv_row_meta_t *t = realloc(r->meta, rows * sizeof *t);
            if (!t)
                return ERR_NOMEM;
            r->meta = t;
            r->meta_cap = rows;
        }
        if (rows) {
            rc = kv_lane_read(r->st, r->sid, (uint32_t)layer, (uint32_t)head, 0, rows, r->meta,
                              NULL, NULL);
            if (rc)
                return rc;
        }
        uint32_t base = 0;
        for (uint32_t c = 0; c < nc; c++) {
            size_t rb = r->row_bytes[kc[c].type];
            for (uint32_t i = 0; i < kc[c].n;) {
                if (!pol_run_sees(r->mask, &r->meta[base + i])) {
                    i++;
                    continue;
                }
                uint32_t j = i + 1;
                while (j < kc[c].n && pol_run_sees(r->mask, &r->meta[base + j]))
                    j++;
                mc[n_out++] = (mdl_kv_chunk_t){
                    .n = j - i,
                    .type = kc[c].type,
                    .k = (const uint8_t *)kc[c].k + i * rb,
                    .v = (const uint8_t *)kc[c].v + i * rb,
                    .bias = kc[c].bias ? kc[c].bias + i : NULL,
                    .attn_acc = kc[c].attn_acc ? kc[c].attn_acc + i : NULL,
                };
                i = j;
            }
            base += kc[c].n;
        }
    }
    out->n_chunks = n_out;
    out->chunks = mc;
    size_t off = (size_t)l * r->new_cap;
    out->new_k = r->new_k + off * r->hd;
    out->new_v = r->new_v + off * r->hd;
    out->new_logbeta = r->pm.has_gates ? r->new_lb + off : NULL;
    out->new_attn_acc = pol_wants_attn_acc(r->pol) ? r->new_acc + off : NULL;
    if (out->new_attn_acc)
        memset(out->new_attn_acc, 0, n_new * sizeof(float));
    return 0;
}

/* Runs n tokens at the next positions (reserved already) and commits them. */
static int run_commit(kvr_t *r, const int32_t *ids, uint32_t n, bool want_all, float *logits,
                      err_info_t *e)
{
    uint32_t len;
    kv_transcript_len(r->st, r->sid, &len);
    int rc = grow_new(r, n);
    if (!rc && n > r->batch_cap) {
        int32_t *p = realloc(r->pos, n * sizeof *p);
        if (p)
            r->pos = p;
        uint8_t *w = p ? realloc(r->want, n) : NULL;
        if (w) {
            r->want = w;
            r->batch_cap = n;
        } else {
            rc = ERR_NOMEM;
        }
    }
    if (rc) {
        kv_reserve_cancel(r->st, r->sid);
        return err_set(e, ERR_NOMEM, "out of memory for a batch of %u tokens", n);
    }
    for (uint32_t i = 0; i < n; i++) {
        r->pos[i] = (int32_t)(len + i);
        r->want[i] = want_all || i + 1 == n;
    }
    mdl_batch_t b = {.n = n, .token = ids, .pos = r->pos, .want = r->want};
    mdl_kv_io_t io = {.ctx = r, .view = view};
    rc = mdl_forward(r->m, &b, &io, logits, e);
    if (rc) {
        kv_reserve_cancel(r->st, r->sid);
        return rc;
    }
    const float **k = malloc(4 * r->nl * sizeof *k);
    uint32_t *tok = malloc(n * sizeof *tok);
    if (!k || !tok) {
        free(k);
        free(tok);
        kv_reserve_cancel(r->st, r->sid);
        return err_set(e, ERR_NOMEM, "out of memory");
    }
    const float **v = k + r->nl, **lb = v + r->nl, **acc = lb + r->nl;
    for (uint32_t l = 0; l < r->nl; l++) {
        size_t off = (size_t)l * r->new_cap;
        k[l] = r->new_k + off * r->hd;
        v[l] = r->new_v + off * r->hd;
        lb[l] = r->new_lb + off;
        acc[l] = r->new_acc + off;
    }
    for (uint32_t i = 0; i < n; i++)
        tok[i] = (uint32_t)ids[i];
    kv_append_t a = {.n = n,
                     .tokens = tok,
                     .k = k,
                     .v = v,
                     .logbeta = r->pm.has_gates ? lb : NULL,
                     .attn_acc = pol_wants_attn_acc(r->pol) ? acc : NULL};
    rc = kv_commit(r->st, r->sid, &a, e);
    free(k);
    free(tok);
    return rc;
}

/* The policy's runner: gist tokens under the sentence mask. */
static int run_gists(void *ctx, const pol_run_t *run, err_info_t *e)
{
    kvr_t *r = ctx;
    int rc = kv_reserve(r->st, r->sid, run->n, e);
    if (rc)
        return rc;
    r->mask = run;
    rc = run_commit(r, run->tokens, run->n, false, r->gist_last, e);
    r->mask = NULL;
    if (!rc)
        r->gist_ran = true;
    return rc;
}

static void print_event(void *ctx, const pol_event_t *ev)
{
    (void)ctx;
    fprintf(stderr,
            "compaction: %s/%s (%s) positions %u..%u level %u, %u lanes, rows %llu -> %llu, "
            "%lld bytes freed (%zu -> %zu)\n",
            pol_action_name(ev->action), pol_method_name(ev->method), pol_reason_name(ev->reason),
            ev->first, ev->last, ev->level, ev->lanes, (unsigned long long)ev->rows_before,
            (unsigned long long)ev->rows_after, (long long)ev->bytes_freed, ev->bytes_before,
            ev->bytes_after);
}

/* ------------------------------------------------------------------ life */

static int open_session(kvr_t *r, err_info_t *e)
{
    kv_session_config_t sc = {.hard_limit = r->cfg.hard};
    int rc = kv_session_create(r->st, &sc, &r->sid, e);
    if (rc)
        return rc;
    pol_config_t pc = {.name = r->policy,
                       .params = r->params,
                       .n_params = r->cfg.n_params,
                       .store = r->st,
                       .sid = r->sid,
                       .model = r->pm,
                       .runner = {.ctx = r, .run = run_gists},
                       .emit = r->cfg.print_events ? print_event : NULL};
    rc = pol_new(&pc, &r->pol, e);
    if (rc)
        return rc;
    if (r->cfg.hard) {
        size_t soft = r->cfg.soft;
        if (!soft) {
            size_t head = pol_headroom(r->pol, r->cfg.ubatch);
            soft = r->cfg.hard > head ? r->cfg.hard - head : 1;
        }
        if (soft > r->cfg.hard)
            soft = r->cfg.hard;
        rc = kv_session_set_limits(r->st, r->sid, r->cfg.hard, soft, NULL);
        if (rc)
            return err_set(e, rc, "KV budget: soft %zu above hard %zu", soft, r->cfg.hard);
    }
    r->text = 0;
    r->gist_ran = false;
    return 0;
}

int kvr_new(mdl_t *m, const kvr_cfg_t *cfg, kvr_t **out, err_info_t *e)
{
    *out = NULL;
    kvr_t *r = calloc(1, sizeof *r);
    if (!r)
        return err_set(e, ERR_NOMEM, "out of memory");
    r->m = m;
    r->hp = mdl_hparams(m);
    r->tok = mdl_tok(m);
    r->cfg = *cfg;
    if (!r->cfg.block_rows)
        r->cfg.block_rows = 16;
    if (!r->cfg.ubatch)
        r->cfg.ubatch = 256;
    if (r->cfg.hot_type != DT_F16)
        r->cfg.hot_type = DT_F32;
    r->nkv = r->hp->n_head_kv;
    r->nl = r->hp->n_layer * r->nkv;
    r->hd = r->hp->head_dim;
    r->row_bytes[DT_F32] = ggml_row_bytes(DT_F32, r->hd);
    r->row_bytes[DT_F16] = ggml_row_bytes(DT_F16, r->hd);
    r->row_bytes[DT_Q8_0] = r->hd % 32 ? 0 : ggml_row_bytes(DT_Q8_0, r->hd);
    rt_policy_model(m, &r->pm);
    int rc = 0;
    r->policy = strdup(cfg->policy ? cfg->policy : "full");
    r->params = calloc(cfg->n_params + 1, sizeof *r->params);
    r->kch = calloc(r->nl, sizeof *r->kch);
    r->mch = calloc(r->nl, sizeof *r->mch);
    r->ch_cap = calloc(r->nl, sizeof *r->ch_cap);
    r->logits = malloc(sizeof(float) * r->hp->n_vocab * r->cfg.ubatch);
    r->gist_last = malloc(sizeof(float) * r->hp->n_vocab);
    if (!rc && (!r->policy || !r->params || !r->kch || !r->mch || !r->ch_cap || !r->logits ||
                !r->gist_last || grow_new(r, 16)))
        rc = err_set(e, ERR_NOMEM, "out of memory");
    for (uint32_t i = 0; !rc && i < cfg->n_params; i++) {
        r->params[i].key = strdup(cfg->params[i].key);
        r->params[i].value = strdup(cfg->params[i].value ? cfg->params[i].value : "");
        if (!r->params[i].key || !r->params[i].value)
            rc = err_set(e, ERR_NOMEM, "out of memory");
    }
    r->cfg.params = r->params;
    kv_store_config_t sc = {.n_layer = r->hp->n_layer,
                            .n_head_kv = r->nkv,
                            .head_dim = r->hd,
                            .block_rows = r->cfg.block_rows,
                            .hot_type = r->cfg.hot_type};
    if (!rc)
        rc = kv_store_new(&sc, &r->st, e);
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
    pol_destroy(&r->pol);
    kv_store_destroy(&r->st);
    for (uint32_t i = 0; r->params && i < r->cfg.n_params; i++) {
        free((char *)r->params[i].key);
        free((char *)r->params[i].value);
    }
    free(r->params);
    free(r->policy);
    for (uint32_t l = 0; l < r->nl; l++) {
        if (r->kch)
            free(r->kch[l]);
        if (r->mch)
            free(r->mch[l]);
    }
    free(r->kch);
    free(r->mch);
    free(r->ch_cap);
    free(r->new_k);
    free(r->new_v);
    free(r->new_lb);
    free(r->new_acc);
    free(r->meta);
    free(r->pos);
    free(r->want);
    free(r->logits);
    free(r->gist_last);
    free(r);
    *pr = NULL;
}

int kvr_reset(kvr_t *r, err_info_t *e)
{
    pol_destroy(&r->pol);
    kv_session_destroy(r->st, r->sid);
    return open_session(r, e);
}

const pol_t *kvr_policy(const kvr_t *r)
{
    return r->pol;
}

/* ------------------------------------------------------------------ feeding */

int kvr_feed(kvr_t *r, const int32_t *ids, uint32_t n, float *logits, float *last, err_info_t *e)
{
    if (n == 0)
        return 0;
    const uint32_t nv = r->hp->n_vocab;
    /* the tokens' text, for the segmenter */
    pol_text_t *t = malloc(n * sizeof *t);
    size_t cap = 0, used = 0;
    for (uint32_t i = 0; i < n; i++)
        cap += r->tok ? tok_piece(r->tok, ids[i], false, false, NULL, 0) : 0;
    char *text = malloc(cap + 1);
    if (!t || !text) {
        free(t);
        free(text);
        return err_set(e, ERR_NOMEM, "out of memory");
    }
    for (uint32_t i = 0; i < n; i++) {
        size_t pl = r->tok ? tok_piece(r->tok, ids[i], false, false, text + used, cap - used) : 0;
        t[i] = (pol_text_t){text + used, (uint32_t)pl};
        used += pl;
    }
    int rc = 0;
    for (uint32_t i = 0; i < n && !rc;) {
        uint32_t k;
        r->gist_ran = false;
        rc = pol_next(r->pol, t + i, n - i, &k, e);
        if (rc)
            break;
        if (r->gist_ran && i > 0 && logits) /* the next token is predicted by the last gist */
            memcpy(logits + (size_t)(i - 1) * nv, r->gist_last, nv * sizeof(float));
        k = k < r->cfg.ubatch ? k : r->cfg.ubatch;
        rc = pol_reserve(r->pol, k, e);
        if (rc)
            break;
        rc = run_commit(r, ids + i, k, logits != NULL, r->logits, e);
        if (rc)
            break;
        if (logits)
            memcpy(logits + (size_t)i * nv, r->logits, (size_t)k * nv * sizeof(float));
        else if (last && i + k == n)
            memcpy(last, r->logits, nv * sizeof(float));
        rc = pol_commit(r->pol, t + i, k, e);
        r->text += k;
        i += k;
    }
    free(t);
    free(text);
    return rc;
}

int kvr_end_turn(kvr_t *r, float *last, bool *updated, err_info_t *e)
{
    r->gist_ran = false;
    int rc = pol_end_turn(r->pol, e);
    if (updated)
        *updated = r->gist_ran;
    if (!rc && r->gist_ran && last)
        memcpy(last, r->gist_last, r->hp->n_vocab * sizeof(float));
    return rc;
}

void kvr_figures(kvr_t *r, kvr_figures_t *out)
{
    kv_stats_t s;
    memset(out, 0, sizeof *out);
    if (kv_session_stats(r->st, r->sid, &s) == 0) {
        out->bytes = s.bytes;
        out->peak = s.peak;
        out->rows = s.rows;
        out->positions = s.tokens;
    }
    out->text = r->text;
    pol_stats(r->pol, &out->pol);
}

int kvr_full_bytes(mdl_t *m, uint32_t n_ctx, uint32_t block_rows, uint32_t hot_type, size_t *bytes,
                   err_info_t *e)
{
    const mdl_hparams_t *hp = mdl_hparams(m);
    kv_store_config_t sc = {.n_layer = hp->n_layer,
                            .n_head_kv = hp->n_head_kv,
                            .head_dim = hp->head_dim,
                            .block_rows = block_rows ? block_rows : 16,
                            .hot_type = hot_type == DT_F16 ? DT_F16 : DT_F32};
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
