/* model/flatkv.c — the flat KV cache of model/flatkv.h. */
#include "model/flatkv.h"

#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "model/gguf.h"

/* The rows of one (sequence, layer, kv-head). */
typedef struct lane {
    uint8_t *k, *v;           /* [n_ctx] rows of row_bytes */
    float *bias;              /* [n_ctx] or NULL */
    float *logbeta;           /* [n_ctx] or NULL */
    float *acc;               /* [n_ctx] or NULL */
    mdl_kv_chunk_t *chunks;   /* [max_chunks], filled by the view */
    float *stage_k, *stage_v; /* [stage_cap][head_dim] new rows before conversion (non-F32) */
    uint32_t stage_cap;
} lane_t;

struct mdl_flatkv {
    mdl_flatkv_cfg_t cfg;
    size_t row_bytes;
    uint32_t max_chunks;
    uint32_t *len;     /* [n_seq] rows committed */
    uint32_t *pending; /* [n_seq] rows reserved by the last forward */
    lane_t *lanes;     /* [n_seq][n_layer][n_head_kv] */
};

static lane_t *lane_at(const mdl_flatkv_t *kv, uint32_t seq, uint32_t layer, uint32_t h)
{
    const mdl_flatkv_cfg_t *c = &kv->cfg;
    return &kv->lanes[((size_t)seq * c->n_layer + layer) * c->n_head_kv + h];
}

static size_t n_lanes(const mdl_flatkv_cfg_t *c)
{
    return (size_t)c->n_seq * c->n_layer * c->n_head_kv;
}

int mdl_flatkv_new(const mdl_flatkv_cfg_t *cfg, mdl_flatkv_t **out, err_info_t *e)
{
    if (!cfg->n_layer || !cfg->n_head_kv || !cfg->head_dim || !cfg->n_seq || !cfg->n_ctx)
        return err_set(e, ERR_INVAL, "flat KV cache: every dimension must be > 0");
    if (cfg->type != DT_F32 && cfg->type != DT_F16 && cfg->type != DT_Q8_0)
        return err_set(e, ERR_INVAL, "flat KV cache: payload type %u (f32, f16 or q8_0)",
                       cfg->type);
    if (cfg->type == DT_Q8_0 && cfg->head_dim % QK8_0)
        return err_set(e, ERR_INVAL,
                       "flat KV cache: q8_0 rows need head_dim %u to be a "
                       "multiple of 32",
                       cfg->head_dim);
    mdl_flatkv_t *kv = calloc(1, sizeof *kv);
    if (!kv)
        return err_set(e, ERR_NOMEM, "flat KV cache: out of memory");
    kv->cfg = *cfg;
    kv->row_bytes = ggml_row_bytes(cfg->type, cfg->head_dim);
    kv->max_chunks = cfg->chunk_rows ? (cfg->n_ctx + cfg->chunk_rows - 1) / cfg->chunk_rows : 1;
    kv->len = calloc(cfg->n_seq, sizeof(uint32_t));
    kv->pending = calloc(cfg->n_seq, sizeof(uint32_t));
    kv->lanes = calloc(n_lanes(cfg), sizeof(lane_t));
    bool ok = kv->len && kv->pending && kv->lanes;
    for (size_t i = 0; ok && i < n_lanes(cfg); i++) {
        lane_t *ln = &kv->lanes[i];
        ln->k = malloc(kv->row_bytes * cfg->n_ctx);
        ln->v = malloc(kv->row_bytes * cfg->n_ctx);
        ln->chunks = calloc(kv->max_chunks, sizeof(mdl_kv_chunk_t));
        ok = ln->k && ln->v && ln->chunks;
        if (ok && cfg->bias)
            ok = (ln->bias = calloc(cfg->n_ctx, sizeof(float))) != NULL;
        if (ok && cfg->logbeta)
            ok = (ln->logbeta = calloc(cfg->n_ctx, sizeof(float))) != NULL;
        if (ok && cfg->attn_acc)
            ok = (ln->acc = calloc(cfg->n_ctx, sizeof(float))) != NULL;
    }
    if (!ok) {
        mdl_flatkv_destroy(&kv);
        return err_set(e, ERR_NOMEM, "flat KV cache: out of memory for %u sequences of %u rows",
                       cfg->n_seq, cfg->n_ctx);
    }
    *out = kv;
    return 0;
}

void mdl_flatkv_destroy(mdl_flatkv_t **p)
{
    if (!p || !*p)
        return;
    mdl_flatkv_t *kv = *p;
    for (size_t i = 0; kv->lanes && i < n_lanes(&kv->cfg); i++) {
        lane_t *ln = &kv->lanes[i];
        free(ln->k);
        free(ln->v);
        free(ln->bias);
        free(ln->logbeta);
        free(ln->acc);
        free(ln->chunks);
        free(ln->stage_k);
        free(ln->stage_v);
    }
    free(kv->lanes);
    free(kv->len);
    free(kv->pending);
    free(kv);
    *p = NULL;
}

static int view(void *ctx, int seq, int layer, int h, uint32_t n_new, mdl_kv_view_t *out)
{
    mdl_flatkv_t *kv = ctx;
    const mdl_flatkv_cfg_t *c = &kv->cfg;
    if (seq < 0 || (uint32_t)seq >= c->n_seq || layer < 0 || (uint32_t)layer >= c->n_layer ||
        h < 0 || (uint32_t)h >= c->n_head_kv)
        return ERR_RANGE;
    const uint32_t len = kv->len[seq];
    if (n_new > c->n_ctx - len)
        return ERR_LIMIT;
    kv->pending[seq] = n_new;
    lane_t *ln = lane_at(kv, (uint32_t)seq, (uint32_t)layer, (uint32_t)h);

    uint32_t n_chunks = 0;
    const uint32_t step = c->chunk_rows ? c->chunk_rows : (len ? len : 1);
    for (uint32_t r0 = 0; r0 < len; r0 += step) {
        const uint32_t n = len - r0 < step ? len - r0 : step;
        ln->chunks[n_chunks++] = (mdl_kv_chunk_t){
            .n = n,
            .type = c->type,
            .k = ln->k + (size_t)r0 * kv->row_bytes,
            .v = ln->v + (size_t)r0 * kv->row_bytes,
            .bias = ln->bias ? ln->bias + r0 : NULL,
            .attn_acc = ln->acc ? ln->acc + r0 : NULL,
        };
    }
    out->n_chunks = n_chunks;
    out->chunks = ln->chunks;
    if (c->type == DT_F32) {
        out->new_k = (float *)(void *)(ln->k + (size_t)len * kv->row_bytes);
        out->new_v = (float *)(void *)(ln->v + (size_t)len * kv->row_bytes);
    } else {
        if (n_new > ln->stage_cap) {
            float *sk = realloc(ln->stage_k, sizeof(float) * c->head_dim * n_new);
            if (sk)
                ln->stage_k = sk;
            float *sv = realloc(ln->stage_v, sizeof(float) * c->head_dim * n_new);
            if (sv)
                ln->stage_v = sv;
            if (!sk || !sv)
                return ERR_NOMEM;
            ln->stage_cap = n_new;
        }
        out->new_k = ln->stage_k;
        out->new_v = ln->stage_v;
    }
    out->new_logbeta = ln->logbeta ? ln->logbeta + len : NULL;
    out->new_attn_acc = ln->acc ? ln->acc + len : NULL;
    return 0;
}

mdl_kv_io_t mdl_flatkv_io(mdl_flatkv_t *kv)
{
    return (mdl_kv_io_t){.ctx = kv, .view = view};
}

void mdl_flatkv_commit(mdl_flatkv_t *kv)
{
    const mdl_flatkv_cfg_t *c = &kv->cfg;
    for (uint32_t s = 0; s < c->n_seq; s++) {
        const uint32_t n = kv->pending[s], len = kv->len[s];
        if (!n)
            continue;
        for (uint32_t l = 0; l < c->n_layer; l++) {
            for (uint32_t h = 0; h < c->n_head_kv; h++) {
                lane_t *ln = lane_at(kv, s, l, h);
                if (c->type != DT_F32) {
                    dt_from_f32(c->type, ln->stage_k, ln->k + (size_t)len * kv->row_bytes,
                                (size_t)n * c->head_dim);
                    dt_from_f32(c->type, ln->stage_v, ln->v + (size_t)len * kv->row_bytes,
                                (size_t)n * c->head_dim);
                }
                if (ln->bias)
                    memset(ln->bias + len, 0, sizeof(float) * n);
            }
        }
        kv->len[s] = len + n;
        kv->pending[s] = 0;
    }
}

void mdl_flatkv_rollback(mdl_flatkv_t *kv)
{
    const mdl_flatkv_cfg_t *c = &kv->cfg;
    for (uint32_t s = 0; s < c->n_seq; s++) {
        const uint32_t n = kv->pending[s], len = kv->len[s];
        for (uint32_t l = 0; n && l < c->n_layer; l++)
            for (uint32_t h = 0; h < c->n_head_kv; h++) {
                lane_t *ln = lane_at(kv, s, l, h);
                if (ln->acc)
                    memset(ln->acc + len, 0, sizeof(float) * n);
            }
        kv->pending[s] = 0;
    }
}

void mdl_flatkv_clear(mdl_flatkv_t *kv, uint32_t seq)
{
    const mdl_flatkv_cfg_t *c = &kv->cfg;
    if (seq >= c->n_seq)
        return;
    for (uint32_t l = 0; l < c->n_layer; l++)
        for (uint32_t h = 0; h < c->n_head_kv; h++) {
            lane_t *ln = lane_at(kv, seq, l, h);
            if (ln->acc)
                memset(ln->acc, 0, sizeof(float) * c->n_ctx);
            if (ln->bias)
                memset(ln->bias, 0, sizeof(float) * c->n_ctx);
        }
    kv->len[seq] = 0;
    kv->pending[seq] = 0;
}

uint32_t mdl_flatkv_len(const mdl_flatkv_t *kv, uint32_t seq)
{
    return seq < kv->cfg.n_seq ? kv->len[seq] : 0;
}

static bool in_range(const mdl_flatkv_t *kv, uint32_t seq, uint32_t layer, uint32_t h)
{
    return seq < kv->cfg.n_seq && layer < kv->cfg.n_layer && h < kv->cfg.n_head_kv;
}

float *mdl_flatkv_bias(mdl_flatkv_t *kv, uint32_t seq, uint32_t layer, uint32_t h)
{
    return in_range(kv, seq, layer, h) ? lane_at(kv, seq, layer, h)->bias : NULL;
}

const float *mdl_flatkv_logbeta(const mdl_flatkv_t *kv, uint32_t seq, uint32_t layer, uint32_t h)
{
    return in_range(kv, seq, layer, h) ? lane_at(kv, seq, layer, h)->logbeta : NULL;
}

const float *mdl_flatkv_attn_acc(const mdl_flatkv_t *kv, uint32_t seq, uint32_t layer, uint32_t h)
{
    return in_range(kv, seq, layer, h) ? lane_at(kv, seq, layer, h)->acc : NULL;
}

int mdl_flatkv_row(const mdl_flatkv_t *kv, uint32_t seq, uint32_t layer, uint32_t h, uint32_t r,
                   float *k, float *v)
{
    if (!in_range(kv, seq, layer, h) || r >= kv->len[seq])
        return ERR_RANGE;
    const lane_t *ln = lane_at(kv, seq, layer, h);
    const size_t off = (size_t)r * kv->row_bytes;
    int rc = dt_to_f32(kv->cfg.type, ln->k + off, k, kv->cfg.head_dim);
    return rc ? rc : dt_to_f32(kv->cfg.type, ln->v + off, v, kv->cfg.head_dim);
}
