/*
 * model/llama.c — loading a llama GGUF file and the layer loop of the forward pass
 * (model/llama.h). Attention itself is in model/attention.c.
 */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "model/attn_ops.h"
#include "model/kernels.h"
#include "model/llama_impl.h"

/* Work (elements) below which element-wise loops stay on one thread. */
#define PAR_MIN_ELEMS 32768

/* ------------------------------------------------------------------ loading */

static const gguf_tensor_t *find_tensor(const gguf_t *g, const char *name)
{
    return gguf_tensor_find(g, name);
}

/* A 1-D f32 view of tensor `name` with n elements; converts (and keeps) other types. */
static int bind_vec(mdl_t *m, const char *name, uint64_t n, const float **out, err_info_t *e)
{
    const gguf_tensor_t *t = find_tensor(m->g, name);
    if (!t)
        return err_set(e, ERR_FORMAT, "missing tensor '%s'", name);
    if (t->n_elems != n)
        return err_set(e, ERR_FORMAT, "tensor '%s' has %llu elements, expected %llu", name,
                       (unsigned long long)t->n_elems, (unsigned long long)n);
    if (t->type == DT_F32) {
        *out = t->data;
        return 0;
    }
    float **owned = realloc(m->owned, sizeof(float *) * (m->n_owned + 1));
    if (!owned)
        return err_set(e, ERR_NOMEM, "out of memory converting tensor '%s'", name);
    m->owned = owned;
    float *v = malloc(sizeof(float) * n);
    if (!v)
        return err_set(e, ERR_NOMEM, "out of memory converting tensor '%s'", name);
    if (dt_to_f32(t->type, t->data, v, n) != 0) {
        free(v);
        return err_set(e, ERR_UNSUPPORTED, "tensor '%s' has type %u, which cannot be read", name,
                       t->type);
    }
    m->owned[m->n_owned++] = v;
    *out = v;
    return 0;
}

/* A weight matrix of n_rows rows of n_cols elements, in a type the kernels support. */
static int bind_mat(mdl_t *m, const char *name, int n_rows, int n_cols, mdl_mat_t *out,
                    err_info_t *e)
{
    const gguf_tensor_t *t = find_tensor(m->g, name);
    if (!t)
        return err_set(e, ERR_FORMAT, "missing tensor '%s'", name);
    if (t->ne[0] != (uint64_t)n_cols || t->n_elems != (uint64_t)n_rows * (uint64_t)n_cols)
        return err_set(e, ERR_FORMAT, "tensor '%s' has shape [%llu, %llu], expected [%d, %d]", name,
                       (unsigned long long)t->ne[0], (unsigned long long)t->ne[1], n_cols, n_rows);
    if (!kern_type_supported(t->type)) {
        const ggml_type_info_t *ti = ggml_type_get(t->type);
        return err_set(e, ERR_UNSUPPORTED,
                       "tensor '%s' has type %s, which the kernels do not "
                       "support (f32, f16, bf16, q8_0, q4_0)",
                       name, ti ? ti->name : "unknown");
    }
    *out = (mdl_mat_t){.type = t->type, .data = t->data, .n_rows = n_rows, .n_cols = n_cols};
    return 0;
}

/* Per-pair RoPE inverse frequencies, with linear or Llama 3 scaling folded in. */
static int setup_rope(mdl_t *m, err_info_t *e)
{
    const mdl_hparams_t *hp = &m->hp;
    uint32_t half = hp->n_rot / 2;
    if (hp->n_rot % 2 || hp->n_rot > hp->head_dim)
        return err_set(e, ERR_FORMAT, "rope dimension count %u must be even and <= head_dim %u",
                       hp->n_rot, hp->head_dim);
    m->rope_inv_freq = malloc(sizeof(double) * (half ? half : 1));
    if (!m->rope_inv_freq)
        return err_set(e, ERR_NOMEM, "out of memory");
    for (uint32_t i = 0; i < half; i++)
        m->rope_inv_freq[i] = pow((double)hp->rope_freq_base, -2.0 * i / hp->n_rot);
    m->rope_pos_scale = 1.0;

    const float *freq_div = NULL;
    if (find_tensor(m->g, "rope_freqs.weight")) {
        int rc = bind_vec(m, "rope_freqs.weight", half, &freq_div, e);
        if (rc)
            return rc;
    }
    switch (hp->rope_scaling.type) {
    case MDL_ROPE_SCALING_NONE:
        break;
    case MDL_ROPE_SCALING_LINEAR:
        if (!(hp->rope_scaling.factor > 0.0f))
            return err_set(e, ERR_FORMAT, "rope linear scaling factor %g must be > 0",
                           hp->rope_scaling.factor);
        m->rope_pos_scale = 1.0 / hp->rope_scaling.factor;
        break;
    case MDL_ROPE_SCALING_LLAMA3:
        if (freq_div)
            break;
        /* No rope_freqs tensor: derive the per-pair divisors as Llama 3's reference does. */
        if (!(hp->rope_scaling.factor > 0.0f) || hp->rope_scaling.orig_ctx == 0 ||
            !(hp->rope_scaling.high_freq_factor > hp->rope_scaling.low_freq_factor))
            return err_set(e, ERR_FORMAT,
                           "llama3 rope scaling needs factor, original context "
                           "length and high > low frequency factors (or rope_freqs.weight)");
        for (uint32_t i = 0; i < half; i++) {
            double freq = m->rope_inv_freq[i], wavelen = 2.0 * M_PI / freq;
            double lo_wl = hp->rope_scaling.orig_ctx / hp->rope_scaling.low_freq_factor;
            double hi_wl = hp->rope_scaling.orig_ctx / hp->rope_scaling.high_freq_factor;
            double div = 1.0;
            if (wavelen > lo_wl) {
                div = hp->rope_scaling.factor;
            } else if (wavelen >= hi_wl) {
                double smooth =
                    (hp->rope_scaling.orig_ctx / wavelen - hp->rope_scaling.low_freq_factor) /
                    (hp->rope_scaling.high_freq_factor - hp->rope_scaling.low_freq_factor);
                div = 1.0 / ((1.0 - smooth) / hp->rope_scaling.factor + smooth);
            }
            m->rope_inv_freq[i] /= div;
        }
        break;
    default:
        return err_set(e, ERR_UNSUPPORTED,
                       "rope scaling '%s' is not supported (none, linear "
                       "and llama3 are)",
                       mdl_rope_scaling_name(hp->rope_scaling.type));
    }
    for (uint32_t i = 0; freq_div && i < half; i++) {
        if (!(freq_div[i] > 0.0f))
            return err_set(e, ERR_FORMAT, "rope_freqs.weight[%u] = %g must be > 0", i, freq_div[i]);
        m->rope_inv_freq[i] /= freq_div[i];
    }
    return 0;
}

static int bind_layers(mdl_t *m, err_info_t *e)
{
    const mdl_hparams_t *hp = &m->hp;
    const int n_embd = (int)hp->n_embd, q_dim = (int)(hp->n_head * hp->head_dim);
    const int kv_dim = (int)(hp->n_head_kv * hp->head_dim), n_ff = (int)hp->n_ff;
    m->layers = calloc(hp->n_layer, sizeof *m->layers);
    if (!m->layers)
        return err_set(e, ERR_NOMEM, "out of memory");
    m->has_retention = hp->retention_hidden > 0;
    m->ret_hidden = hp->retention_hidden;
    char name[96];
    int rc = 0;
#define NAME(fmt) (snprintf(name, sizeof name, "blk.%u." fmt, l), name)
    for (uint32_t l = 0; l < hp->n_layer && !rc; l++) {
        mdl_layer_t *L = &m->layers[l];
        if ((rc = bind_vec(m, NAME("attn_norm.weight"), n_embd, &L->attn_norm, e)) ||
            (rc = bind_mat(m, NAME("attn_q.weight"), q_dim, n_embd, &L->wq, e)) ||
            (rc = bind_mat(m, NAME("attn_k.weight"), kv_dim, n_embd, &L->wk, e)) ||
            (rc = bind_mat(m, NAME("attn_v.weight"), kv_dim, n_embd, &L->wv, e)) ||
            (rc = bind_mat(m, NAME("attn_output.weight"), n_embd, q_dim, &L->wo, e)) ||
            (rc = bind_vec(m, NAME("ffn_norm.weight"), n_embd, &L->ffn_norm, e)) ||
            (rc = bind_mat(m, NAME("ffn_gate.weight"), n_ff, n_embd, &L->w_gate, e)) ||
            (rc = bind_mat(m, NAME("ffn_up.weight"), n_ff, n_embd, &L->w_up, e)) ||
            (rc = bind_mat(m, NAME("ffn_down.weight"), n_embd, n_ff, &L->w_down, e)))
            break;
        if (!m->has_retention)
            continue;
        const int nh = (int)m->ret_hidden, nkv = (int)hp->n_head_kv;
        if ((rc = bind_mat(m, NAME("retention_in.weight"), nh, n_embd, &L->ret_in, e)) ||
            (rc = bind_vec(m, NAME("retention_in.bias"), nh, &L->ret_in_b, e)) ||
            (rc = bind_mat(m, NAME("retention_out.weight"), nkv, nh, &L->ret_out, e)) ||
            (rc = bind_vec(m, NAME("retention_out.bias"), nkv, &L->ret_out_b, e)))
            break;
    }
#undef NAME
    return rc;
}

static int bind_weights(mdl_t *m, err_info_t *e)
{
    const mdl_hparams_t *hp = &m->hp;
    mdl_mat_t emb;
    int rc = bind_mat(m, "token_embd.weight", (int)hp->n_vocab, (int)hp->n_embd, &emb, e);
    if (rc)
        return rc;
    m->tok_embd = emb.data;
    m->tok_embd_type = emb.type;
    if ((rc = bind_vec(m, "output_norm.weight", hp->n_embd, &m->out_norm, e)))
        return rc;
    if (find_tensor(m->g, "output.weight"))
        rc = bind_mat(m, "output.weight", (int)hp->n_vocab, (int)hp->n_embd, &m->out, e);
    else
        m->out = emb; /* tied */
    if (rc)
        return rc;
    return bind_layers(m, e);
}

int mdl_new(const char *path, mdl_t **out, err_info_t *e)
{
    mdl_t *m = calloc(1, sizeof *m);
    if (!m)
        return err_set(e, ERR_NOMEM, "%s: out of memory", path);
    int rc = gguf_open(path, &m->g, e);
    if (rc)
        goto fail;
    if ((rc = mdl_hparams_read(m->g, &m->hp, e)) ||
        (rc = mdl_hparams_check_tensors(m->g, &m->hp, e)))
        goto fail;
    const mdl_hparams_t *hp = &m->hp;
    if (hp->n_head == 0 || hp->n_head_kv == 0 || hp->n_head % hp->n_head_kv || hp->head_dim == 0) {
        rc = err_set(e, ERR_FORMAT, "head counts %u / %u and head_dim %u do not fit", hp->n_head,
                     hp->n_head_kv, hp->head_dim);
        goto fail;
    }
    if ((rc = setup_rope(m, e)) || (rc = bind_weights(m, e)))
        goto fail;
    m->attn_scale = 1.0f / sqrtf((float)hp->head_dim);
    m->attn_ops = mdl_attn_ops((int)hp->head_dim);
    if (gguf_kv_find(m->g, "tokenizer.ggml.model") && (rc = tok_new(m->g, &m->tok, e)))
        goto fail;
    m->s.seq_slot = malloc(sizeof(int32_t) * MDL_MAX_SEQ);
    if (!m->s.seq_slot) {
        rc = err_set(e, ERR_NOMEM, "out of memory");
        goto fail;
    }
    for (int i = 0; i < MDL_MAX_SEQ; i++)
        m->s.seq_slot[i] = -1;
    mdl_set_threads(m, 0);
    *out = m;
    return 0;
fail:
    err_prefix(e, "%s: ", path);
    mdl_destroy(&m);
    return rc;
}

static void scratch_free(mdl_scratch_t *s)
{
    float *fs[] = {s->x,  s->xb,  s->q,  s->k,  s->v,    s->att,
                   s->hb, s->hb2, s->rh, s->rz, s->rope, s->thr};
    for (size_t i = 0; i < sizeof fs / sizeof fs[0]; i++)
        free(fs[i]);
    free(s->item_slot);
    free(s->item_j);
    free(s->slot_items);
    free(s->slot_first);
    free(s->slot_n);
    free(s->slot_seq);
    free(s->seq_slot);
    free(s->views);
}

void mdl_destroy(mdl_t **p)
{
    if (!p || !*p)
        return;
    mdl_t *m = *p;
    scratch_free(&m->s);
    for (size_t i = 0; i < m->n_owned; i++)
        free(m->owned[i]);
    free(m->owned);
    free(m->layers);
    free(m->rope_inv_freq);
    tok_destroy(&m->tok);
    gguf_close(&m->g);
    free(m);
    *p = NULL;
}

const mdl_hparams_t *mdl_hparams(const mdl_t *m)
{
    return &m->hp;
}

const gguf_t *mdl_gguf(const mdl_t *m)
{
    return m->g;
}

const tok_t *mdl_tok(const mdl_t *m)
{
    return m->tok;
}

bool mdl_has_retention(const mdl_t *m)
{
    return m->has_retention;
}

void mdl_set_threads(mdl_t *m, int n_threads)
{
    m->n_threads = n_threads > 0 ? n_threads : omp_get_num_procs();
}

int mdl_threads(const mdl_t *m)
{
    return m->n_threads;
}

/* ------------------------------------------------------------------ scratch */

static int grow(void *pp, size_t elem, size_t n)
{
    void *p = realloc(*(void **)pp, elem * (n ? n : 1));
    if (!p)
        return ERR_NOMEM;
    *(void **)pp = p;
    return 0;
}

/* Per-item buffers for n items. */
static int scratch_reserve(mdl_t *m, uint32_t n)
{
    mdl_scratch_t *s = &m->s;
    if (n <= s->cap)
        return 0;
    const mdl_hparams_t *hp = &m->hp;
    const size_t q_dim = (size_t)hp->n_head * hp->head_dim;
    const size_t kv_dim = (size_t)hp->n_head_kv * hp->head_dim;
    int rc = 0;
    rc |= grow(&s->x, sizeof(float) * hp->n_embd, n);
    rc |= grow(&s->xb, sizeof(float) * hp->n_embd, n);
    rc |= grow(&s->q, sizeof(float) * q_dim, n);
    rc |= grow(&s->k, sizeof(float) * kv_dim, n);
    rc |= grow(&s->v, sizeof(float) * kv_dim, n);
    rc |= grow(&s->att, sizeof(float) * q_dim, n);
    rc |= grow(&s->hb, sizeof(float) * hp->n_ff, n);
    rc |= grow(&s->hb2, sizeof(float) * hp->n_ff, n);
    rc |= grow(&s->rh, sizeof(float) * (m->ret_hidden ? m->ret_hidden : 1), n);
    rc |= grow(&s->rz, sizeof(float) * hp->n_head_kv, n);
    rc |= grow(&s->rope, sizeof(float) * (hp->n_rot ? hp->n_rot : 1), n);
    rc |= grow(&s->item_slot, sizeof(int32_t), n);
    rc |= grow(&s->item_j, sizeof(int32_t), n);
    rc |= grow(&s->slot_items, sizeof(int32_t), n);
    rc |= grow(&s->slot_first, sizeof(uint32_t), n);
    rc |= grow(&s->slot_n, sizeof(uint32_t), n);
    rc |= grow(&s->slot_seq, sizeof(int32_t), n);
    rc |= grow(&s->views, sizeof(mdl_kv_view_t) * hp->n_head_kv, n);
    if (rc)
        return ERR_NOMEM;
    s->cap = n;
    return 0;
}

/* Per-thread attention buffers for views of up to n_rows rows. */
static int scratch_reserve_attention(mdl_t *m, size_t n_rows)
{
    mdl_scratch_t *s = &m->s;
    size_t need = mdl_attention_scratch(m, n_rows);
    if (need <= s->thr_floats && s->n_thr >= m->n_threads)
        return 0;
    if (need > s->thr_floats)
        need = need > s->thr_floats * 3 / 2 ? need : s->thr_floats * 3 / 2; /* amortise decode */
    else
        need = s->thr_floats;
    float *p = malloc(sizeof(float) * need * (size_t)m->n_threads);
    if (!p)
        return ERR_NOMEM;
    free(s->thr);
    s->thr = p;
    s->thr_floats = need;
    s->n_thr = m->n_threads;
    return 0;
}

/* ------------------------------------------------------------------ forward */

/* out[i] = x[i] / rms(x[i]) * w, for n rows of d. Sum of squares in double, as ggml. */
static void rms_norm(const float *x, const float *w, float *out, uint32_t n, int d, float eps,
                     int n_thr)
{
#pragma omp parallel for num_threads(n_thr) if ((size_t)n * d > PAR_MIN_ELEMS)
    for (uint32_t i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * d;
        float *oi = out + (size_t)i * d;
        double ss = 0.0;
        for (int c = 0; c < d; c++)
            ss += (double)xi[c] * xi[c];
        const float scale = (float)(1.0 / sqrt(ss / d + eps));
        for (int c = 0; c < d; c++)
            oi[c] = xi[c] * scale * w[c];
    }
}

/* Rotates adjacent pairs of the first n_rot dims of each of n_heads heads of n rows. */
static void rope(const mdl_t *m, float *x, uint32_t n, int n_heads)
{
    const int hd = (int)m->hp.head_dim, half = (int)m->hp.n_rot / 2;
    for (uint32_t i = 0; i < n; i++) {
        const float *cs = m->s.rope + (size_t)i * 2 * half;
        for (int h = 0; h < n_heads; h++) {
            float *v = x + ((size_t)i * n_heads + h) * hd;
            for (int p = 0; p < half; p++) {
                const float c = cs[2 * p], sn = cs[2 * p + 1];
                const float a = v[2 * p], b = v[2 * p + 1];
                v[2 * p] = a * c - b * sn;
                v[2 * p + 1] = a * sn + b * c;
            }
        }
    }
}

static inline float silu(float x)
{
    return x / (1.0f + expf(-x));
}

static inline float log_sigmoid(float z)
{
    return fminf(z, 0.0f) - log1pf(expf(-fabsf(z)));
}

static void matmul(const mdl_mat_t *w, const float *x, float *y, uint32_t n)
{
    kern_matmul(w->type, w->data, x, y, w->n_rows, w->n_cols, (int)n);
}

/* Checks the batch and groups its items by sequence. */
static int batch_prepare(mdl_t *m, const mdl_batch_t *b, uint32_t *n_want, err_info_t *e)
{
    mdl_scratch_t *s = &m->s;
    const uint32_t n = b->n;
    uint32_t nw = 0;
    for (uint32_t i = 0; i < n; i++) {
        const int32_t seq = b->seq ? b->seq[i] : 0;
        if (b->token[i] < 0 || (uint32_t)b->token[i] >= m->hp.n_vocab)
            return err_set(e, ERR_RANGE,
                           "batch item %u: token %d is outside the vocabulary "
                           "(%u)",
                           i, b->token[i], m->hp.n_vocab);
        if (b->pos[i] < 0)
            return err_set(e, ERR_RANGE, "batch item %u: position %d is negative", i, b->pos[i]);
        if (seq < 0 || seq >= MDL_MAX_SEQ)
            return err_set(e, ERR_RANGE, "batch item %u: sequence %d is outside [0, %d)", i, seq,
                           MDL_MAX_SEQ);
        nw += b->want ? (b->want[i] != 0) : (i + 1 == n);
    }
    /* slots in order of first appearance; counts, then offsets, then the lists */
    s->n_slots = 0;
    for (uint32_t i = 0; i < n; i++) {
        const int32_t seq = b->seq ? b->seq[i] : 0;
        int32_t slot = s->seq_slot[seq];
        if (slot < 0) {
            slot = (int32_t)s->n_slots++;
            s->seq_slot[seq] = slot;
            s->slot_seq[slot] = seq;
            s->slot_n[slot] = 0;
        }
        s->item_slot[i] = slot;
        s->item_j[i] = (int32_t)s->slot_n[slot]++;
    }
    uint32_t first = 0;
    for (uint32_t sl = 0; sl < s->n_slots; sl++) {
        s->slot_first[sl] = first;
        first += s->slot_n[sl];
        s->seq_slot[s->slot_seq[sl]] = -1; /* leave the table clean for the next batch */
    }
    for (uint32_t i = 0; i < n; i++)
        s->slot_items[s->slot_first[s->item_slot[i]] + (uint32_t)s->item_j[i]] = (int32_t)i;
    *n_want = nw;
    return 0;
}

/* Calls the views of one layer, checks them and writes the new rows into them. */
static int layer_views(mdl_t *m, int layer, const mdl_kv_io_t *io, size_t *max_rows, err_info_t *e)
{
    mdl_scratch_t *s = &m->s;
    const int n_kv = (int)m->hp.n_head_kv, hd = (int)m->hp.head_dim;
    const size_t kv_dim = (size_t)n_kv * hd;
    *max_rows = 0;
    for (uint32_t sl = 0; sl < s->n_slots; sl++) {
        const uint32_t n_new = s->slot_n[sl];
        const int32_t *items = s->slot_items + s->slot_first[sl];
        for (int h = 0; h < n_kv; h++) {
            mdl_kv_view_t *v = &s->views[sl * (size_t)n_kv + h];
            memset(v, 0, sizeof *v);
            if (io && io->view) {
                int rc = io->view(io->ctx, s->slot_seq[sl], layer, h, n_new, v);
                if (rc)
                    return err_set(e, rc, "KV view of sequence %d, layer %d, kv-head %d: %s",
                                   s->slot_seq[sl], layer, h, err_str(rc));
            }
            size_t rows = n_new;
            for (uint32_t c = 0; c < v->n_chunks; c++) {
                const mdl_kv_chunk_t *ch = &v->chunks[c];
                if (ch->n == 0)
                    continue;
                if (ch->type != DT_F32 && ch->type != DT_F16 &&
                    !(ch->type == DT_Q8_0 && hd % QK8_0 == 0))
                    return err_set(e, ERR_UNSUPPORTED,
                                   "KV view of sequence %d, layer %d, "
                                   "kv-head %d: chunk %u has payload type %u (f32, f16 and, "
                                   "for head_dim a multiple of 32, q8_0 are read)",
                                   s->slot_seq[sl], layer, h, c, ch->type);
                if (!ch->k || !ch->v)
                    return err_set(e, ERR_INVAL,
                                   "KV view of sequence %d, layer %d, kv-head "
                                   "%d: chunk %u has no payload",
                                   s->slot_seq[sl], layer, h, c);
                rows += ch->n;
            }
            if (rows > *max_rows)
                *max_rows = rows;
            for (uint32_t jj = 0; jj < n_new; jj++) {
                const size_t it = (size_t)items[jj];
                if (v->new_k)
                    memcpy(v->new_k + (size_t)jj * hd, s->k + it * kv_dim + (size_t)h * hd,
                           sizeof(float) * hd);
                if (v->new_v)
                    memcpy(v->new_v + (size_t)jj * hd, s->v + it * kv_dim + (size_t)h * hd,
                           sizeof(float) * hd);
                if (v->new_logbeta && m->has_retention)
                    v->new_logbeta[jj] = s->rz[it * n_kv + h];
            }
        }
    }
    return 0;
}

/* log-beta of every item and kv-head from the layer's gates, into s.rz. */
static void retention(mdl_t *m, const mdl_layer_t *L, uint32_t n)
{
    mdl_scratch_t *s = &m->s;
    const uint32_t nh = m->ret_hidden, nkv = m->hp.n_head_kv;
    matmul(&L->ret_in, s->xb, s->rh, n);
    for (size_t i = 0; i < (size_t)n * nh; i++)
        s->rh[i] = silu(s->rh[i] + L->ret_in_b[i % nh]);
    matmul(&L->ret_out, s->rh, s->rz, n);
    for (size_t i = 0; i < (size_t)n * nkv; i++)
        s->rz[i] = log_sigmoid(s->rz[i] + L->ret_out_b[i % nkv]);
}

int mdl_forward(mdl_t *m, const mdl_batch_t *b, const mdl_kv_io_t *io, float *logits, err_info_t *e)
{
    const uint32_t n = b->n;
    if (n == 0)
        return 0;
    if (!b->token || !b->pos)
        return err_set(e, ERR_INVAL, "batch of %u items without tokens or positions", n);
    if (scratch_reserve(m, n))
        return err_set(e, ERR_NOMEM, "out of memory for a batch of %u items", n);
    uint32_t n_want = 0;
    int rc = batch_prepare(m, b, &n_want, e);
    if (rc)
        return rc;
    if (n_want && !logits)
        return err_set(e, ERR_INVAL, "%u items want logits but no logits buffer was given", n_want);

    mdl_scratch_t *s = &m->s;
    const mdl_hparams_t *hp = &m->hp;
    const int n_embd = (int)hp->n_embd, n_ff = (int)hp->n_ff, nt = m->n_threads;
    const int half = (int)hp->n_rot / 2;
    omp_set_num_threads(nt); /* the kernels use the caller's OpenMP thread count */

    /* cos/sin of every item's angles, computed in double */
    for (uint32_t i = 0; i < n; i++) {
        const double pos = (double)b->pos[i] * m->rope_pos_scale;
        for (int p = 0; p < half; p++) {
            const double th = pos * m->rope_inv_freq[p];
            s->rope[((size_t)i * half + p) * 2] = (float)cos(th);
            s->rope[((size_t)i * half + p) * 2 + 1] = (float)sin(th);
        }
    }
    for (uint32_t i = 0; i < n; i++)
        kern_get_row(m->tok_embd_type, m->tok_embd, n_embd, b->token[i], s->x + (size_t)i * n_embd);

    for (uint32_t l = 0; l < hp->n_layer; l++) {
        const mdl_layer_t *L = &m->layers[l];
        /* attention block */
        rms_norm(s->x, L->attn_norm, s->xb, n, n_embd, hp->rms_eps, nt);
        matmul(&L->wq, s->xb, s->q, n);
        matmul(&L->wk, s->xb, s->k, n);
        matmul(&L->wv, s->xb, s->v, n);
        rope(m, s->q, n, (int)hp->n_head);
        rope(m, s->k, n, (int)hp->n_head_kv);
        if (m->has_retention)
            retention(m, L, n);
        size_t max_rows;
        if ((rc = layer_views(m, (int)l, io, &max_rows, e)))
            return rc;
        if (scratch_reserve_attention(m, max_rows))
            return err_set(e, ERR_NOMEM, "out of memory for attention over %zu rows", max_rows);
        mdl_attention(m, n);
        matmul(&L->wo, s->att, s->xb, n);
        for (size_t i = 0; i < (size_t)n * n_embd; i++)
            s->x[i] += s->xb[i];

        /* feed-forward block */
        rms_norm(s->x, L->ffn_norm, s->xb, n, n_embd, hp->rms_eps, nt);
        matmul(&L->w_gate, s->xb, s->hb, n);
        matmul(&L->w_up, s->xb, s->hb2, n);
        const size_t nf = (size_t)n * n_ff;
#pragma omp parallel for num_threads(nt) if (nf > PAR_MIN_ELEMS)
        for (size_t i = 0; i < nf; i++)
            s->hb[i] = silu(s->hb[i]) * s->hb2[i];
        matmul(&L->w_down, s->hb, s->xb, n);
        for (size_t i = 0; i < (size_t)n * n_embd; i++)
            s->x[i] += s->xb[i];
    }

    if (n_want == 0)
        return 0;
    /* gather the rows that want logits (final norm applied on the way) */
    uint32_t w = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (b->want ? !b->want[i] : i + 1 != n)
            continue;
        rms_norm(s->x + (size_t)i * n_embd, m->out_norm, s->xb + (size_t)w * n_embd, 1, n_embd,
                 hp->rms_eps, 1);
        w++;
    }
    matmul(&m->out, s->xb, logits, n_want);
    return 0;
}
