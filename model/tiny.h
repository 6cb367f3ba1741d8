/*
 * model/tiny.h — writes a random-weight llama, qwen2 or qwen3 model as a GGUF file: the
 * fixtures of the tests and benchmarks (`gist-model make-tiny`), with a small
 * SentencePiece-style `llama` tokenizer inside and, on request, the gistd extensions (gist
 * tokens, retention gates). qwen2 files carry Q/K/V biases, qwen3 files per-head Q/K norms
 * and their own head_dim (key_length).
 *
 * Weights come from a seeded generator, keyed by the seed and the tensor's name, so the
 * same seed and shape give the same underlying floats whatever the storage type (an f32
 * and a q8_0 file of one seed hold the same model up to quantization). The chosen type
 * applies to the 2-D matrices; norm vectors and gate tensors stay f32, as in real files. A
 * K-quant mix (q4_K_M, q5_K_M) picks the type per tensor as llama.cpp's quantizer does:
 * output and, in some layers, attn_v and ffn_down in q6_K; a matrix whose rows are not whole
 * 256-blocks falls back to q5_0, q5_1 or q8_0 as llama.cpp's does.
 * Matrices are uniform(-1, 1) * 1.5 / sqrt(n_cols), norms 1 + 0.1 * uniform(-1, 1), so
 * activations stay O(1). Pure function of its arguments; any thread.
 */
#ifndef GISTD_MODEL_TINY_H
#define GISTD_MODEL_TINY_H

#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"

/* K-quant mixes, as llama.cpp's file types name them. */
enum mdl_tiny_mix { MDL_TINY_MIX_NONE = 0, MDL_TINY_MIX_Q4_K_M, MDL_TINY_MIX_Q5_K_M };

typedef struct mdl_tiny_cfg {
    uint64_t seed;
    uint32_t type;     /* storage type of the matrices: GGML_TYPE_F32/F16/BF16/Q8_0/Q4_0/Q5_0/Q5_1/
                          Q4_K/Q5_K/Q6_K; with a mix, its base type (set by mdl_tiny_set_type) */
    uint32_t mix;      /* enum mdl_tiny_mix */
    const char *arch;  /* "llama" (default), "qwen2", "qwen3" */
    uint32_t head_dim; /* 0: n_embd / n_head; else written as key_length (qwen3 files do) */
    uint32_t n_embd, n_layer, n_head, n_head_kv, n_ff, n_vocab, n_ctx;
    float rope_base;           /* llama.rope.freq_base */
    float rms_eps;             /* llama.attention.layer_norm_rms_epsilon */
    bool tied;                 /* no output.weight: the output projection is token_embd */
    uint32_t n_gist;           /* > 0: the last n_gist vocabulary entries are <gist_0>.. */
    uint32_t retention_hidden; /* > 0: retention gate tensors with this hidden width */
    uint32_t retention_budget; /* gistd.retention.budget (written with the gates) */
    const char *name;          /* general.name */
    const char *chat_template; /* tokenizer.chat_template, or NULL for none */
    bool no_space_prefix;      /* tokenizer.ggml.add_space_prefix false (text round-trips) */
} mdl_tiny_cfg_t;

/* n_embd 64, n_layer 2, n_head 4, n_head_kv 2, n_ff 128, n_vocab 384, n_ctx 256, f32,
 * untied, rope_base 10000, rms_eps 1e-5, no gist tokens, no gates (budget 64 if enabled),
 * seed 1, name "tiny". */
void mdl_tiny_cfg_default(mdl_tiny_cfg_t *cfg);

/* Checks cfg and writes the model to path. ERR_INVAL with a message for a bad shape
 * (heads that do not divide, a vocabulary smaller than 259 + n_gist, rows that are not
 * whole q8_0/q4_0 blocks, or for a plain K-quant type not whole 256-blocks, an unsupported
 * type or architecture), ERR_IO when the file cannot be written. */
int mdl_tiny_write(const char *path, const mdl_tiny_cfg_t *cfg, err_info_t *e);

/* The type number for a name ("f32", "f16", "bf16", "q8_0", "q4_0", "q5_0", "q5_1", "q4_K",
 * "q5_K", "q6_K", any case), or -1. */
int mdl_tiny_type_from_name(const char *name);

/* Sets cfg's type and mix from a name: a type, or a mix ("q4_K_M", "q5_K_M"). 0, or -1 for
 * an unknown name (cfg unchanged). */
int mdl_tiny_set_type(mdl_tiny_cfg_t *cfg, const char *name);

#endif
