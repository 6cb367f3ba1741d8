/*
 * model/hparams.c — reading the hyperparameters of llama, qwen2 and qwen3 files and checking
 * tensor shapes
 * (see model/hparams.h).
 */
#include "model/hparams.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

/* Upper bounds that no real llama model comes near; they keep later size arithmetic
 * (n_layer * n_ctx * n_embd and the like) far from overflow. */
#define MAX_EMBD  (1u << 16)
#define MAX_LAYER 1024u
#define MAX_FF    (1u << 20)
#define MAX_HEAD  1024u
#define MAX_VOCAB (1u << 24)
#define MAX_CTX   (1u << 24)

static const char *const arch_names[] = {"llama", "qwen2", "qwen3"};

const char *mdl_arch_name(mdl_arch_t a)
{
    return (unsigned)a < sizeof arch_names / sizeof arch_names[0] ? arch_names[a] : "unknown";
}

/* "<arch>.<suffix>" in buf (the architecture's own key). */
static const char *akey(char *buf, mdl_arch_t arch, const char *suffix)
{
    snprintf(buf, 96, "%s.%s", mdl_arch_name(arch), suffix);
    return buf;
}

const char *mdl_rope_scaling_name(mdl_rope_scaling_t t)
{
    switch (t) {
    case MDL_ROPE_SCALING_NONE:
        return "none";
    case MDL_ROPE_SCALING_LINEAR:
        return "linear";
    case MDL_ROPE_SCALING_YARN:
        return "yarn";
    case MDL_ROPE_SCALING_LLAMA3:
        return "llama3";
    }
    return "unknown";
}

/* A required count: absent is a malformed model (ERR_FORMAT), as is 0 or more than max. */
static int need_u32(const gguf_t *g, const char *key, uint32_t max, uint32_t *out, err_info_t *e)
{
    int rc = gguf_get_u32(g, key, out, e);
    if (rc == ERR_NOTFOUND)
        return err_set(e, ERR_FORMAT, "missing key %s", key);
    if (rc)
        return rc;
    if (*out == 0 || *out > max)
        return err_set(e, ERR_FORMAT, "key %s is %" PRIu32 ", expected 1..%" PRIu32, key, *out,
                       max);
    return 0;
}

/* An optional count, 1..max when present. */
static int opt_u32(const gguf_t *g, const char *key, uint32_t dflt, uint32_t max, uint32_t *out,
                   err_info_t *e)
{
    if (!gguf_kv_find(g, key)) {
        *out = dflt;
        return 0;
    }
    return need_u32(g, key, max, out, e);
}

/* An optional positive finite float. */
static int opt_pos_f32(const gguf_t *g, const char *key, float dflt, float *out, err_info_t *e)
{
    int rc = gguf_get_f32_or(g, key, dflt, out, e);
    if (rc)
        return rc;
    if (!(*out > 0.0f) || !isfinite(*out))
        return err_set(e, ERR_FORMAT, "key %s is %g, expected a positive number", key,
                       (double)*out);
    return 0;
}

static int read_arch(const gguf_t *g, mdl_arch_t *out, err_info_t *e)
{
    gguf_str_t arch;
    int rc = gguf_get_str(g, "general.architecture", &arch, e);
    if (rc == ERR_NOTFOUND)
        return err_set(e, ERR_FORMAT, "missing key general.architecture");
    if (rc)
        return rc;
    for (size_t i = 0; i < sizeof arch_names / sizeof arch_names[0]; i++)
        if (gguf_str_eq(arch, arch_names[i])) {
            *out = (mdl_arch_t)i;
            return 0;
        }
    return err_set(e, ERR_UNSUPPORTED, "architecture '%.*s' is not supported (%s)",
                   (int)(arch.len < 40 ? arch.len : 40), arch.ptr, MDL_SUPPORTED_ARCHS);
}

static int read_vocab(const gguf_t *g, mdl_hparams_t *hp, err_info_t *e)
{
    char k[96];
    if (gguf_kv_find(g, akey(k, hp->arch, "vocab_size")))
        return need_u32(g, k, MAX_VOCAB, &hp->n_vocab, e);
    const gguf_kv_t *kv = gguf_kv_find(g, "tokenizer.ggml.tokens");
    if (kv) {
        if (kv->type != GGUF_VT_ARRAY || kv->v.arr.elem_type != GGUF_VT_STRING)
            return err_set(e, ERR_FORMAT, "key tokenizer.ggml.tokens is not an array of strings");
        if (kv->v.arr.n == 0 || kv->v.arr.n > MAX_VOCAB)
            return err_set(e, ERR_FORMAT,
                           "tokenizer.ggml.tokens has %" PRIu64 " entries, "
                           "expected 1..%u",
                           kv->v.arr.n, MAX_VOCAB);
        hp->n_vocab = (uint32_t)kv->v.arr.n;
        return 0;
    }
    const gguf_tensor_t *t = gguf_tensor_find(g, "token_embd.weight");
    if (t && t->n_dims == 2 && t->ne[1] <= MAX_VOCAB) {
        hp->n_vocab = (uint32_t)t->ne[1];
        return 0;
    }
    return err_set(e, ERR_FORMAT,
                   "missing key %s (and no tokenizer.ggml.tokens "
                   "or token_embd.weight to count the vocabulary from)",
                   akey(k, hp->arch, "vocab_size"));
}

static int read_rope_scaling(const gguf_t *g, mdl_hparams_t *hp, err_info_t *e)
{
    int rc;
    char k[96];
    const mdl_arch_t A = hp->arch;
    hp->rope_scaling.type = MDL_ROPE_SCALING_NONE;
    gguf_str_t s;
    rc = gguf_get_str(g, akey(k, A, "rope.scaling.type"), &s, e);
    if (rc && rc != ERR_NOTFOUND)
        return rc;
    if (rc == 0) {
        static const char *const names[] = {"none", "linear", "yarn", "llama3"};
        bool known = false;
        for (int i = 0; i < 4; i++)
            if (gguf_str_eq(s, names[i])) {
                hp->rope_scaling.type = (mdl_rope_scaling_t)i;
                known = true;
            }
        if (!known)
            return err_set(e, ERR_UNSUPPORTED,
                           "%s '%.*s' is not supported "
                           "(none, linear, yarn, llama3)",
                           k, (int)(s.len < 40 ? s.len : 40), s.ptr);
    }
    /* the older llama.rope.scale_linear key means linear scaling by that factor */
    float dflt = 1.0f;
    if (hp->rope_scaling.type == MDL_ROPE_SCALING_NONE &&
        gguf_kv_find(g, akey(k, A, "rope.scale_linear"))) {
        if ((rc = opt_pos_f32(g, k, 1.0f, &dflt, e)))
            return rc;
        if (dflt != 1.0f)
            hp->rope_scaling.type = MDL_ROPE_SCALING_LINEAR;
    }
    if ((rc = opt_pos_f32(g, akey(k, A, "rope.scaling.factor"), dflt, &hp->rope_scaling.factor,
                          e)) ||
        (rc = opt_u32(g, akey(k, A, "rope.scaling.original_context_length"), hp->n_ctx, MAX_CTX,
                      &hp->rope_scaling.orig_ctx, e)) ||
        (rc = opt_pos_f32(g, akey(k, A, "rope.scaling.low_freq_factor"), 1.0f,
                          &hp->rope_scaling.low_freq_factor, e)) ||
        (rc = opt_pos_f32(g, akey(k, A, "rope.scaling.high_freq_factor"), 4.0f,
                          &hp->rope_scaling.high_freq_factor, e)))
        return rc;
    return 0;
}

static int read_gist(const gguf_t *g, mdl_hparams_t *hp, err_info_t *e)
{
    int rc;
    if ((rc = gguf_get_u32_or(g, "gistd.gist.count", 0, &hp->n_gist, e)) ||
        (rc = gguf_get_u32_or(g, "gistd.gist.sinks", 1, &hp->gist_sinks, e)) ||
        (rc = gguf_get_u32_or(g, "gistd.retention.hidden", 0, &hp->retention_hidden, e)) ||
        (rc = gguf_get_u32_or(g, "gistd.retention.budget", 0, &hp->retention_budget, e)))
        return rc;
    hp->gist_mask = MDL_GIST_MASK_NONE;
    hp->gist_first = 0;
    if (hp->n_gist > 0) {
        rc = gguf_get_u32(g, "gistd.gist.first_token_id", &hp->gist_first, e);
        if (rc == ERR_NOTFOUND)
            return err_set(e, ERR_FORMAT,
                           "missing key gistd.gist.first_token_id "
                           "(gistd.gist.count is %" PRIu32 ")",
                           hp->n_gist);
        if (rc)
            return rc;
        if (hp->n_gist > hp->n_vocab || hp->gist_first > hp->n_vocab - hp->n_gist)
            return err_set(e, ERR_FORMAT,
                           "gist tokens %" PRIu32 "..%" PRIu64 " lie outside "
                           "the vocabulary of %" PRIu32,
                           hp->gist_first, (uint64_t)hp->gist_first + hp->n_gist - 1, hp->n_vocab);
        gguf_str_t mask;
        rc = gguf_get_str(g, "gistd.gist.mask", &mask, e);
        if (rc && rc != ERR_NOTFOUND)
            return rc;
        /* a file that omits the key was trained with the sentence rule */
        if (rc == 0 && !gguf_str_eq(mask, "sentence") && !gguf_str_eq(mask, "thought"))
            return err_set(e, ERR_UNSUPPORTED,
                           "gistd.gist.mask '%.*s' is not supported "
                           "(expected 'sentence' or 'thought')",
                           (int)(mask.len < 40 ? mask.len : 40), mask.ptr);
        hp->gist_mask = rc == 0 && gguf_str_eq(mask, "thought") ? MDL_GIST_MASK_THOUGHT
                                                                : MDL_GIST_MASK_SENTENCE;
    }
    if (hp->retention_hidden > MAX_FF)
        return err_set(e, ERR_FORMAT,
                       "key gistd.retention.hidden is %" PRIu32 ", expected at "
                       "most %u",
                       hp->retention_hidden, MAX_FF);
    return 0;
}

int mdl_hparams_read(const gguf_t *g, mdl_hparams_t *out, err_info_t *e)
{
    mdl_hparams_t hp;
    int rc;
    char k[96];
    memset(&hp, 0, sizeof hp);
    if ((rc = read_arch(g, &hp.arch, e)))
        return rc;
    const mdl_arch_t A = hp.arch;
    if ((rc = need_u32(g, akey(k, A, "block_count"), MAX_LAYER, &hp.n_layer, e)) ||
        (rc = need_u32(g, akey(k, A, "embedding_length"), MAX_EMBD, &hp.n_embd, e)) ||
        (rc = need_u32(g, akey(k, A, "feed_forward_length"), MAX_FF, &hp.n_ff, e)) ||
        (rc = need_u32(g, akey(k, A, "attention.head_count"), MAX_HEAD, &hp.n_head, e)) ||
        (rc = opt_u32(g, akey(k, A, "attention.head_count_kv"), hp.n_head, MAX_HEAD, &hp.n_head_kv,
                      e)) ||
        (rc = need_u32(g, akey(k, A, "context_length"), MAX_CTX, &hp.n_ctx, e)))
        return rc;

    if (hp.n_head_kv > hp.n_head || hp.n_head % hp.n_head_kv)
        return err_set(e, ERR_FORMAT,
                       "head_count %" PRIu32 " is not a multiple of "
                       "head_count_kv %" PRIu32,
                       hp.n_head, hp.n_head_kv);
    if (gguf_kv_find(g, akey(k, A, "attention.key_length"))) {
        if ((rc = need_u32(g, k, MAX_EMBD, &hp.head_dim, e)))
            return rc;
        uint32_t vlen;
        if ((rc =
                 opt_u32(g, akey(k, A, "attention.value_length"), hp.head_dim, MAX_EMBD, &vlen, e)))
            return rc;
        if (vlen != hp.head_dim)
            return err_set(e, ERR_UNSUPPORTED,
                           "value_length %" PRIu32 " differs from "
                           "key_length %" PRIu32,
                           vlen, hp.head_dim);
    } else {
        if (hp.n_embd % hp.n_head)
            return err_set(e, ERR_FORMAT,
                           "embedding_length %" PRIu32 " is not a multiple of "
                           "head_count %" PRIu32,
                           hp.n_embd, hp.n_head);
        hp.head_dim = hp.n_embd / hp.n_head;
    }
    if ((uint64_t)hp.n_head * hp.head_dim > MAX_EMBD)
        return err_set(e, ERR_FORMAT, "head_count * head_dim = %" PRIu64 " is too large",
                       (uint64_t)hp.n_head * hp.head_dim);
    if ((rc = opt_u32(g, akey(k, A, "rope.dimension_count"), hp.head_dim, MAX_EMBD, &hp.n_rot, e)))
        return rc;
    if (hp.n_rot % 2 || hp.n_rot > hp.head_dim)
        return err_set(e, ERR_FORMAT,
                       "rope.dimension_count %" PRIu32 " must be even and at "
                       "most head_dim %" PRIu32,
                       hp.n_rot, hp.head_dim);

    rc = gguf_get_f32(g, akey(k, A, "attention.layer_norm_rms_epsilon"), &hp.rms_eps, e);
    if (rc == ERR_NOTFOUND)
        return err_set(e, ERR_FORMAT, "missing key %s", k);
    if (rc)
        return rc;
    if (!(hp.rms_eps > 0.0f && hp.rms_eps < 1.0f))
        return err_set(e, ERR_FORMAT, "layer_norm_rms_epsilon %g is not in (0, 1)",
                       (double)hp.rms_eps);
    if ((rc = opt_pos_f32(g, akey(k, A, "rope.freq_base"), 10000.0f, &hp.rope_freq_base, e)) ||
        (rc = read_rope_scaling(g, &hp, e)) || (rc = read_vocab(g, &hp, e)) ||
        (rc = read_gist(g, &hp, e)))
        return rc;

    hp.tied = gguf_tensor_find(g, "output.weight") == NULL;
    hp.has_rope_freqs = gguf_tensor_find(g, "rope_freqs.weight") != NULL;
    hp.rope_halves = A != MDL_ARCH_LLAMA;
    hp.qkv_bias = A == MDL_ARCH_QWEN2;
    hp.qk_norm = A == MDL_ARCH_QWEN3;
    *out = hp;
    return 0;
}

/* ---- tensor shapes ---- */

static void fmt_shape(char *buf, size_t cap, const uint64_t *ne, uint32_t n)
{
    size_t k = 0;
    k += (size_t)snprintf(buf + k, cap - k, "[");
    for (uint32_t i = 0; i < n && k < cap; i++)
        k += (size_t)snprintf(buf + k, cap - k, "%s%" PRIu64, i ? ", " : "", ne[i]);
    if (k < cap)
        snprintf(buf + k, cap - k, "]");
}

/* Checks one tensor: present (unless optional), shape [d0] or [d0, d1], and a type the
 * kernels convert (f32 only when f32_only). */
static int check_one(const gguf_t *g, const char *name, uint64_t d0, uint64_t d1, bool optional,
                     bool f32_only, err_info_t *e)
{
    const gguf_tensor_t *t = gguf_tensor_find(g, name);
    if (!t)
        return optional ? 0 : err_set(e, ERR_FORMAT, "missing tensor '%s'", name);
    uint64_t want[4] = {d0, d1, 1, 1};
    uint32_t want_dims = d1 ? 2 : 1;
    if (!d1)
        want[1] = 1;
    if (memcmp(t->ne, want, sizeof want) != 0) {
        char got_s[96], want_s[64];
        fmt_shape(got_s, sizeof got_s, t->ne, t->n_dims);
        fmt_shape(want_s, sizeof want_s, want, want_dims);
        return err_set(e, ERR_FORMAT, "tensor '%s' has shape %s, expected %s", name, got_s, want_s);
    }
    bool ok = t->type == GGML_TYPE_F32;
    if (!f32_only)
        ok = ok || t->type == GGML_TYPE_F16 || t->type == GGML_TYPE_BF16 ||
             t->type == GGML_TYPE_Q8_0 || t->type == GGML_TYPE_Q4_0 || t->type == GGML_TYPE_Q5_0 ||
             t->type == GGML_TYPE_Q5_1 || t->type == GGML_TYPE_Q4_K || t->type == GGML_TYPE_Q5_K ||
             t->type == GGML_TYPE_Q6_K;
    if (!ok)
        return err_set(e, ERR_UNSUPPORTED, "tensor '%s' has type %s, expected %s", name,
                       ggml_type_get(t->type)->name, f32_only ? "f32" : MDL_SUPPORTED_TYPES);
    return 0;
}

int mdl_hparams_check_tensors(const gguf_t *g, const mdl_hparams_t *hp, err_info_t *e)
{
    const uint64_t embd = hp->n_embd, q = (uint64_t)hp->n_head * hp->head_dim;
    const uint64_t kv = (uint64_t)hp->n_head_kv * hp->head_dim;
    char n[96];
    int rc;
    if ((rc = check_one(g, "token_embd.weight", embd, hp->n_vocab, false, false, e)) ||
        (rc = check_one(g, "output_norm.weight", embd, 0, false, true, e)) ||
        (rc = check_one(g, "output.weight", embd, hp->n_vocab, true, false, e)) ||
        (rc = check_one(g, "rope_freqs.weight", hp->n_rot / 2, 0, true, true, e)))
        return rc;
    for (uint32_t l = 0; l < hp->n_layer; l++) {
        enum { ALWAYS, GATES, QKV_BIAS, QK_NORM };
        static const struct {
            const char *suffix;
            int d0, d1; /* 0 none, 1 n_embd, 2 q width, 3 kv width, 4 n_ff, 5 gate hidden,
                           6 n_head_kv, 7 head_dim */
            bool f32_only;
            int when;
        } specs[] = {
            {"attn_norm.weight", 1, 0, true, ALWAYS},
            {"attn_q.weight", 1, 2, false, ALWAYS},
            {"attn_k.weight", 1, 3, false, ALWAYS},
            {"attn_v.weight", 1, 3, false, ALWAYS},
            {"attn_q.bias", 2, 0, true, QKV_BIAS},
            {"attn_k.bias", 3, 0, true, QKV_BIAS},
            {"attn_v.bias", 3, 0, true, QKV_BIAS},
            {"attn_q_norm.weight", 7, 0, true, QK_NORM},
            {"attn_k_norm.weight", 7, 0, true, QK_NORM},
            {"attn_output.weight", 2, 1, false, ALWAYS},
            {"ffn_norm.weight", 1, 0, true, ALWAYS},
            {"ffn_gate.weight", 1, 4, false, ALWAYS},
            {"ffn_up.weight", 1, 4, false, ALWAYS},
            {"ffn_down.weight", 4, 1, false, ALWAYS},
            {"retention_in.weight", 1, 5, true, GATES},
            {"retention_in.bias", 5, 0, true, GATES},
            {"retention_out.weight", 5, 6, true, GATES},
            {"retention_out.bias", 6, 0, true, GATES},
        };
        const uint64_t dims[8] = {
            0, embd, q, kv, hp->n_ff, hp->retention_hidden, hp->n_head_kv, hp->head_dim};
        const bool on[4] = {true, hp->retention_hidden > 0, hp->qkv_bias, hp->qk_norm};
        for (size_t s = 0; s < sizeof specs / sizeof specs[0]; s++) {
            if (!on[specs[s].when])
                continue;
            snprintf(n, sizeof n, "blk.%" PRIu32 ".%s", l, specs[s].suffix);
            if ((rc = check_one(g, n, dims[specs[s].d0], dims[specs[s].d1], false,
                                specs[s].f32_only, e)))
                return rc;
        }
    }
    return 0;
}
