/*
 * model/llama.c — loading a llama, qwen2 or qwen3 GGUF file (model/llama.h). The forward pass is in
 * model/forward.c, attention in model/attention.c.
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

/* Estimated one-thread time of one layer (ns) below which a forward call runs on the
 * caller's thread alone: there are five to nine barriers per layer, each about a
 * microsecond when the other threads are awake and milliseconds when one of them waits
 * for a core on a busy machine, so a layer must bring about 0.1 ms of work to be worth
 * sharing out. Decode of a SmolLM2-135M shape is estimated at 0.35 ms (q8_0) to 0.9 ms
 * (f32) a layer; of stories260K at 0.01 ms, which then stays on one thread. */
#define PAR_MIN_NS 100000.0

/* Rows of one part of a lane's attention (model/attention.c): small enough that two threads
 * share one kv-head of a lane of a few hundred rows, large enough that a part's fixed cost
 * (finding its rows, merging) stays small beside streaming 256 rows. The same for every
 * team size and batch, so results do not depend on either. */
#define ATTN_PART_ROWS 256
/* Queries of a prefill chunk that read each key and value row together (GISTD_ATTN_Q_ROWS
 * overrides: 1 gives each query its own pass, as a decode step has). */
#define ATTN_Q_ROWS 64

/* ------------------------------------------------------------------ loading */

static const gguf_tensor_t *find_tensor(const gguf_t *g, const char *name)
{
    return gguf_tensor_find(g, name);
}

/* Room in m->owned for one more buffer the model frees with itself (taken at once, so
 * that the buffer, once made, can always be kept); false when there is no memory. */
static bool room_to_own(mdl_t *m)
{
    void **owned = realloc(m->owned, sizeof *owned * (m->n_owned + 1));
    if (!owned)
        return false;
    m->owned = owned;
    return true;
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
    if (!room_to_own(m))
        return err_set(e, ERR_NOMEM, "out of memory converting tensor '%s'", name);
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
                       "support (" MDL_SUPPORTED_TYPES ")",
                       name, ti ? ti->name : "unknown");
    }
    *out = (mdl_mat_t){.type = t->type, .data = t->data, .n_rows = n_rows, .n_cols = n_cols};
    return 0;
}

/* Packs a product's matrix for the kernels in use when they multiply it faster packed
 * (kern_pack_type), into memory the model owns; otherwise leaves it in the mapping. */
static int pack_mat(mdl_t *m, mdl_mat_t *w, err_info_t *e)
{
    const uint32_t packed = w->data ? kern_pack_type(w->type, w->n_rows, w->n_cols) : 0;
    if (!packed)
        return 0;
    if (!room_to_own(m))
        return err_set(e, ERR_NOMEM, "out of memory packing the weights");
    const size_t n = kern_packed_bytes(packed, w->n_rows, w->n_cols);
    void *p = aligned_alloc(64, (n + 63) & ~(size_t)63);
    if (!p)
        return err_set(e, ERR_NOMEM, "out of memory packing the weights (%zu bytes)", n);
    kern_pack(w->type, packed, w->data, w->n_rows, w->n_cols, p);
    m->owned[m->n_owned++] = p;
    *w = (mdl_mat_t){.type = packed, .data = p, .n_rows = w->n_rows, .n_cols = w->n_cols};
    return 0;
}

/* Every product's matrix packed where the kernels want it (a tied output projection gets
 * a packed copy; the embedding lookup keeps the mapping's rows). */
static int pack_weights(mdl_t *m, err_info_t *e)
{
    int rc = pack_mat(m, &m->out, e);
    for (uint32_t l = 0; l < m->hp.n_layer && !rc; l++) {
        mdl_layer_t *L = &m->layers[l];
        mdl_mat_t *ws[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (size_t i = 0; i < sizeof ws / sizeof ws[0] && !rc; i++)
            rc = pack_mat(m, ws[i], e);
    }
    return rc;
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
    m->rope = (mdl_rope_t){.head_dim = hp->head_dim,
                           .n_rot = hp->n_rot,
                           .pairs = hp->rope_halves ? MDL_ROPE_HALVES : MDL_ROPE_ADJACENT,
                           .pos_scale = 1.0,
                           .inv_freq = m->rope_inv_freq};

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
        m->rope.pos_scale = 1.0 / hp->rope_scaling.factor;
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
        if (hp->qkv_bias && ((rc = bind_vec(m, NAME("attn_q.bias"), q_dim, &L->bq, e)) ||
                             (rc = bind_vec(m, NAME("attn_k.bias"), kv_dim, &L->bk, e)) ||
                             (rc = bind_vec(m, NAME("attn_v.bias"), kv_dim, &L->bv, e))))
            break;
        if (hp->qk_norm &&
            ((rc = bind_vec(m, NAME("attn_q_norm.weight"), hp->head_dim, &L->q_norm, e)) ||
             (rc = bind_vec(m, NAME("attn_k_norm.weight"), hp->head_dim, &L->k_norm, e))))
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

static double mat_bytes(const mdl_mat_t *w)
{
    return w->data ? (double)kern_row_bytes(w->type, w->n_cols) * w->n_rows : 0.0;
}

static double mat_params(const mdl_mat_t *w)
{
    return w->data ? (double)w->n_cols * w->n_rows : 0.0;
}

/* The weight bytes and weights of an average layer (the output projection shared out
 * among the layers), the threshold for threads (GISTD_PAR_MIN_NS: 0 makes every call
 * threaded, for tests), the rows of one part of attention (GISTD_ATTN_PART_ROWS: a few
 * cut even short lanes apart, for tests) and the queries of a tile (GISTD_ATTN_Q_ROWS). */
static void layer_cost(mdl_t *m)
{
    double bytes = mat_bytes(&m->out), params = mat_params(&m->out);
    for (uint32_t l = 0; l < m->hp.n_layer; l++) {
        const mdl_layer_t *L = &m->layers[l];
        const mdl_mat_t *ws[] = {&L->wq,   &L->wk,     &L->wv,     &L->wo,     &L->w_gate,
                                 &L->w_up, &L->w_down, &L->ret_in, &L->ret_out};
        for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++) {
            bytes += mat_bytes(ws[i]);
            params += mat_params(ws[i]);
        }
    }
    const double nl = m->hp.n_layer ? m->hp.n_layer : 1;
    m->layer_bytes = bytes / nl;
    m->layer_params = params / nl;
    const char *env = getenv("GISTD_PAR_MIN_NS");
    char *end = NULL;
    double v = env ? strtod(env, &end) : -1.0;
    m->par_min_ns = env && end != env && v >= 0 ? v : PAR_MIN_NS;
    env = getenv("GISTD_ATTN_PART_ROWS");
    end = NULL;
    v = env ? strtod(env, &end) : 0.0;
    m->attn_part_rows = env && end != env && v >= 1 && v <= 1e9 ? (uint32_t)v : ATTN_PART_ROWS;
    env = getenv("GISTD_ATTN_Q_ROWS");
    end = NULL;
    v = env ? strtod(env, &end) : 0.0;
    m->attn_q_rows = env && end != env && v >= 1 && v <= 4096 ? (uint32_t)v : ATTN_Q_ROWS;
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
    if (hp->head_dim % 2) {
        rc = err_set(e, ERR_UNSUPPORTED, "head_dim %u is odd", hp->head_dim);
        goto fail;
    }
    if ((rc = setup_rope(m, e)) || (rc = bind_weights(m, e)) || (rc = pack_weights(m, e)))
        goto fail;
    layer_cost(m);
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
    m->s.head_rows = calloc(hp->n_head + hp->n_head_kv, sizeof *m->s.head_rows);
    if (!m->s.head_rows) {
        rc = err_set(e, ERR_NOMEM, "out of memory");
        goto fail;
    }
    if (kern_scratch_new(&m->ks)) {
        rc = err_set(e, ERR_NOMEM, "out of memory");
        goto fail;
    }
    mdl_set_threads(m, 0);
    *out = m;
    return 0;
fail:
    err_prefix(e, "%s: ", path);
    mdl_destroy(&m);
    return rc;
}

void mdl_destroy(mdl_t **p)
{
    if (!p || !*p)
        return;
    mdl_t *m = *p;
    mdl_scratch_free(&m->s);
    kern_scratch_destroy(&m->ks);
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

const mdl_rope_t *mdl_rope(const mdl_t *m)
{
    return &m->rope;
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

void mdl_set_attn_q_rows(mdl_t *m, uint32_t q_rows)
{
    m->attn_q_rows = q_rows ? q_rows : 1;
}

uint32_t mdl_attn_q_rows(const mdl_t *m)
{
    return m->attn_q_rows;
}
