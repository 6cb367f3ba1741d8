/*
 * model/hparams.h — the hyperparameters of a GGUF model of a supported architecture (llama,
 * qwen2, qwen3), read from its <arch>.* keys and the gistd.* extension keys
 * (../shared/GGUF-EXTENSIONS.md), and the check that every tensor the forward pass needs is
 * present with the right shape and a supported type.
 *
 * A plain struct filled once at load; read-only afterwards, so any thread may read it.
 * Both functions report a bad file with ERR_FORMAT (ERR_UNSUPPORTED for another
 * architecture, an unsupported tensor type or rope scaling) and a message that names the
 * key or tensor, and leave *hp untouched on error.
 */
#ifndef GISTD_MODEL_HPARAMS_H
#define GISTD_MODEL_HPARAMS_H

#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"
#include "model/gguf.h"

/* The architectures the forward pass runs, and the tensor types its kernels read: named
 * once for every error and for `gist-model info`. */
#define MDL_SUPPORTED_ARCHS "llama, qwen2, qwen3"
#define MDL_SUPPORTED_TYPES "f32, f16, bf16, q8_0, q4_0, q5_0, q5_1, q4_K, q5_K or q6_K"

/* general.architecture. qwen2 adds biases to Q, K and V; qwen3 normalises each head of Q
 * and K (RMS, weights [head_dim]) and states key_length; both rotate the two halves of a
 * head (NEOX style) where llama rotates adjacent pairs. */
typedef enum mdl_arch { MDL_ARCH_LLAMA = 0, MDL_ARCH_QWEN2, MDL_ARCH_QWEN3 } mdl_arch_t;

/* llama.rope.scaling.type */
typedef enum mdl_rope_scaling {
    MDL_ROPE_SCALING_NONE = 0,
    MDL_ROPE_SCALING_LINEAR, /* positions divided by factor */
    MDL_ROPE_SCALING_YARN,
    MDL_ROPE_SCALING_LLAMA3, /* frequency-dependent, Llama 3.1 style */
} mdl_rope_scaling_t;

/* gistd.gist.mask: the attention rule learned gist tokens were trained with. */
typedef enum mdl_gist_mask {
    MDL_GIST_MASK_NONE = 0, /* the file carries no gist tokens */
    MDL_GIST_MASK_SENTENCE, /* "sentence" */
    MDL_GIST_MASK_THOUGHT,  /* "thought": the same rule, with gists after each thought */
} mdl_gist_mask_t;

typedef struct mdl_hparams {
    mdl_arch_t arch;      /* general.architecture; the keys below are <arch>.*, shown as llama.* */
    bool rope_halves;     /* rotates (x[i], x[i + n_rot/2]) pairs: qwen2, qwen3 */
    bool qkv_bias;        /* blk.N.attn_{q,k,v}.bias: qwen2 */
    bool qk_norm;         /* blk.N.attn_{q,k}_norm.weight [head_dim]: qwen3 */
    uint32_t n_vocab;     /* llama.vocab_size, else tokenizer tokens, else token_embd ne[1] */
    uint32_t n_ctx;       /* llama.context_length: the trained context */
    uint32_t n_embd;      /* llama.embedding_length */
    uint32_t n_layer;     /* llama.block_count */
    uint32_t n_ff;        /* llama.feed_forward_length */
    uint32_t n_head;      /* llama.attention.head_count */
    uint32_t n_head_kv;   /* llama.attention.head_count_kv (default n_head) */
    uint32_t head_dim;    /* llama.attention.key_length, else n_embd / n_head */
    uint32_t n_rot;       /* llama.rope.dimension_count (default head_dim); even, <= head_dim */
    float rms_eps;        /* llama.attention.layer_norm_rms_epsilon */
    float rope_freq_base; /* llama.rope.freq_base (default 10000) */

    struct {
        mdl_rope_scaling_t type; /* llama.rope.scaling.type (default none) */
        float factor;            /* llama.rope.scaling.factor (default 1) */
        uint32_t orig_ctx;       /* llama.rope.scaling.original_context_length (or n_ctx) */
        float low_freq_factor;   /* llama.rope.scaling.low_freq_factor (llama3, default 1) */
        float high_freq_factor;  /* llama.rope.scaling.high_freq_factor (llama3, default 4) */
    } rope_scaling;

    bool tied;           /* output.weight absent: the output projection is token_embd */
    bool has_rope_freqs; /* rope_freqs.weight [n_rot/2] present (per-frequency divisors) */

    /* sentence-anchored gist tokens (n_gist == 0: none) */
    uint32_t n_gist;           /* gistd.gist.count */
    uint32_t gist_first;       /* gistd.gist.first_token_id */
    mdl_gist_mask_t gist_mask; /* gistd.gist.mask */
    uint32_t gist_sinks;       /* gistd.gist.sinks (default 1) */

    /* TRIM-KV retention gates (retention_hidden == 0: none) */
    uint32_t retention_hidden; /* gistd.retention.hidden */
    uint32_t retention_budget; /* gistd.retention.budget (0 when absent) */
} mdl_hparams_t;

/* Reads and checks the hyperparameters of g: general.architecture one of
 * MDL_SUPPORTED_ARCHS, the
 * required keys present, counts of any unsigned integer width, dimensions consistent
 * (n_embd % n_head, n_head % n_head_kv, n_rot even and <= head_dim, ...) and in sane
 * ranges, gist tokens inside the vocabulary. */
int mdl_hparams_read(const gguf_t *g, mdl_hparams_t *hp, err_info_t *e);

/* Checks that every tensor of a llama model with hp is present with its shape (and a type
 * the kernels convert: MDL_SUPPORTED_TYPES); norms, biases and gate tensors must be f32.
 * qwen2 needs the Q, K, V biases, qwen3 the per-head Q and K norms.
 * Optional: output.weight (absent = tied), rope_freqs.weight. Retention gate tensors are
 * required when hp->retention_hidden > 0. Messages: "missing tensor 'blk.2.attn_k.weight'",
 * "tensor 'blk.3.ffn_up.weight' has shape [64, 100], expected [64, 172]". */
int mdl_hparams_check_tensors(const gguf_t *g, const mdl_hparams_t *hp, err_info_t *e);

/* "llama", "qwen2", "qwen3". */
const char *mdl_arch_name(mdl_arch_t a);

/* "none", "linear", "yarn", "llama3". */
const char *mdl_rope_scaling_name(mdl_rope_scaling_t t);

#endif
