/*
 * gist-model info MODEL — what a model file holds: format facts, hyperparameters, tensors
 * by type, tokenizer, and the gistd extensions. The file is validated as the daemon would
 * (reader, hyperparameters, tensor shapes). A file the reader cannot read says why on one line
 * of stderr and exits 2; a readable file this build cannot run (another architecture, a
 * tensor type or shape it does not know) has its metadata and tensor types printed first,
 * then what is unsupported, and exits 2 too.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "model/gguf.h"
#include "model/hparams.h"
#include "tools/gist-model/cmd.h"

/* Prints a byte count with a binary unit after it: "1054240 (1.0 MiB)". */
static void print_bytes(uint64_t n)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)n;
    int u = 0;
    while (v >= 1024.0 && u < 4) {
        v /= 1024.0;
        u++;
    }
    printf("%" PRIu64 " bytes (%.1f %s)", n, v, units[u]);
}

/* A string key as text, or `dflt` when absent or not a string. */
static void print_str_key(const gguf_t *g, const char *key, const char *dflt)
{
    gguf_str_t s;
    if (gguf_get_str(g, key, &s, NULL) == 0)
        printf("%.*s", (int)(s.len < 200 ? s.len : 200), s.ptr);
    else
        printf("%s", dflt);
}

static void print_tensors(const gguf_t *g)
{
    /* counts and bytes by type number (ggml numbers are below 40) */
    uint64_t count[40] = {0}, bytes[40] = {0}, total = 0, elems = 0;
    for (uint64_t i = 0; i < gguf_tensor_count(g); i++) {
        const gguf_tensor_t *t = gguf_tensor_at(g, i);
        if (t->type < 40) {
            count[t->type]++;
            bytes[t->type] += t->nbytes;
        }
        total += t->nbytes;
        elems += t->n_elems;
    }
    printf("tensors:         %" PRIu64 ", %" PRIu64 " parameters, ", gguf_tensor_count(g), elems);
    print_bytes(total);
    printf("\n");
    for (uint32_t t = 0; t < 40; t++) {
        if (!count[t])
            continue;
        printf("  %-6s         %" PRIu64 " tensors, ", ggml_type_get(t)->name, count[t]);
        print_bytes(bytes[t]);
        printf("\n");
    }
}

static void print_tokenizer(const gguf_t *g)
{
    gguf_arr_t toks;
    uint32_t id;
    printf("tokenizer:       ");
    print_str_key(g, "tokenizer.ggml.model", "(none)");
    if (gguf_get_arr(g, "tokenizer.ggml.tokens", &toks, NULL) == 0)
        printf(", %" PRIu64 " tokens", toks.n);
    else
        printf(", no token list");
    if (gguf_get_u32(g, "tokenizer.ggml.bos_token_id", &id, NULL) == 0)
        printf(", bos %" PRIu32, id);
    if (gguf_get_u32(g, "tokenizer.ggml.eos_token_id", &id, NULL) == 0)
        printf(", eos %" PRIu32, id);
    const gguf_kv_t *merges = gguf_kv_find(g, "tokenizer.ggml.merges");
    if (merges && merges->type == GGUF_VT_ARRAY)
        printf(", %" PRIu64 " merges", merges->v.arr.n);
    printf("\n");
}

static void print_hparams(const mdl_hparams_t *hp)
{
    printf("hyperparameters:\n");
    printf("  n_vocab        %" PRIu32 "\n", hp->n_vocab);
    printf("  n_ctx          %" PRIu32 "\n", hp->n_ctx);
    printf("  n_embd         %" PRIu32 "\n", hp->n_embd);
    printf("  n_layer        %" PRIu32 "\n", hp->n_layer);
    printf("  n_ff           %" PRIu32 "\n", hp->n_ff);
    printf("  n_head         %" PRIu32 "\n", hp->n_head);
    printf("  n_head_kv      %" PRIu32 "\n", hp->n_head_kv);
    printf("  head_dim       %" PRIu32 "\n", hp->head_dim);
    printf("  n_rot          %" PRIu32 "\n", hp->n_rot);
    printf("  rms_eps        %g\n", (double)hp->rms_eps);
    printf("  rope_freq_base %g\n", (double)hp->rope_freq_base);
    printf("  rope_scaling   %s", mdl_rope_scaling_name(hp->rope_scaling.type));
    if (hp->rope_scaling.type != MDL_ROPE_SCALING_NONE)
        printf(" (factor %g, original context %" PRIu32 ")", (double)hp->rope_scaling.factor,
               hp->rope_scaling.orig_ctx);
    if (hp->rope_scaling.type == MDL_ROPE_SCALING_LLAMA3)
        printf(" (low freq factor %g, high freq factor %g)",
               (double)hp->rope_scaling.low_freq_factor, (double)hp->rope_scaling.high_freq_factor);
    printf("\n");
    printf("  rope_freqs     %s\n", hp->has_rope_freqs ? "rope_freqs.weight" : "none");
    printf("  output         %s\n", hp->tied ? "tied to token_embd" : "output.weight");
}

static void print_extensions(const mdl_hparams_t *hp)
{
    if (hp->n_gist)
        printf("gist tokens:     %" PRIu32 " (ids %" PRIu32 "..%" PRIu32 "), mask %s, "
               "sinks %" PRIu32 "\n",
               hp->n_gist, hp->gist_first, hp->gist_first + hp->n_gist - 1,
               hp->gist_mask == MDL_GIST_MASK_SENTENCE  ? "sentence"
               : hp->gist_mask == MDL_GIST_MASK_THOUGHT ? "thought"
                                                        : "none",
               hp->gist_sinks);
    else
        printf("gist tokens:     none\n");
    if (hp->retention_hidden)
        printf("retention gates: hidden %" PRIu32 ", budget %" PRIu32 " rows per layer and "
               "kv-head\n",
               hp->retention_hidden, hp->retention_budget);
    else
        printf("retention gates: none\n");
}

/* Every metadata key with its value (strings cut at 60 bytes, arrays by length and type). */
static void print_metadata(const gguf_t *g)
{
    static const char *const vt[] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                                     "bool", "string", "array", "u64", "i64", "f64"};
    printf("metadata:\n");
    for (uint64_t i = 0; i < gguf_kv_count(g); i++) {
        const gguf_kv_t *kv = gguf_kv_at(g, i);
        printf("  %-40.*s ", (int)(kv->key.len < 200 ? kv->key.len : 200), kv->key.ptr);
        switch (kv->type) {
        case GGUF_VT_UINT8:
        case GGUF_VT_UINT16:
        case GGUF_VT_UINT32:
        case GGUF_VT_UINT64:
        case GGUF_VT_BOOL:
            printf("%" PRIu64 "\n", kv->v.u64);
            break;
        case GGUF_VT_INT8:
        case GGUF_VT_INT16:
        case GGUF_VT_INT32:
        case GGUF_VT_INT64:
            printf("%" PRId64 "\n", kv->v.i64);
            break;
        case GGUF_VT_FLOAT32:
        case GGUF_VT_FLOAT64:
            printf("%g\n", kv->v.f64);
            break;
        case GGUF_VT_STRING: {
            const int n = (int)(kv->v.str.len < 60 ? kv->v.str.len : 60);
            putchar('"');
            for (int k = 0; k < n; k++) {
                const char ch = kv->v.str.ptr[k];
                putchar(ch == '\n' || ch == '\r' || ch == '\t' ? ' ' : ch);
            }
            printf("\"%s\n", kv->v.str.len > 60 ? "..." : "");
            break;
        }
        case GGUF_VT_ARRAY:
            printf("[%" PRIu64 " x %s]\n", kv->v.arr.n,
                   kv->v.arr.elem_type < GGUF_VT_COUNT_ ? vt[kv->v.arr.elem_type] : "?");
            break;
        default:
            printf("(type %u)\n", (unsigned)kv->type);
        }
    }
}

/* What the file holds when this build cannot run it: the reader's facts, every key, the
 * tensors by type, then what is unsupported (also on stderr); exit status 2. */
static int info_unsupported(const gguf_t *g, const char *path, const err_info_t *e)
{
    printf("file:            %s, ", path);
    print_bytes(gguf_file_size(g));
    printf("\n");
    printf("gguf version:    %" PRIu32 "\n", gguf_version(g));
    printf("architecture:    ");
    print_str_key(g, "general.architecture", "(none)");
    printf("\n");
    printf("name:            ");
    print_str_key(g, "general.name", "(none)");
    printf("\n");
    print_metadata(g);
    print_tensors(g);
    printf("unsupported:     %s\n", err_msg(e));
    fflush(stdout);
    return cmd_usage_error("%s: cannot be run here: %s", path, err_msg(e));
}

int cmd_info(int argc, char **argv)
{
    if (argc != 1 || argv[0][0] == '-')
        return cmd_usage_error("info: usage: gist-model info MODEL");
    const char *path = argv[0];
    gguf_t *g = NULL;
    err_info_t e;
    mdl_hparams_t hp;
    err_clear(&e);
    if (gguf_open(path, &g, &e))
        return cmd_usage_error("%s: %s", path, err_msg(&e));
    if (mdl_hparams_read(g, &hp, &e) || mdl_hparams_check_tensors(g, &hp, &e)) {
        const int rc = info_unsupported(g, path, &e);
        gguf_close(&g);
        return rc;
    }
    printf("file:            %s, ", path);
    print_bytes(gguf_file_size(g));
    printf("\n");
    printf("gguf version:    %" PRIu32 "\n", gguf_version(g));
    printf("architecture:    %s (%s pairs for RoPE%s%s)\n", mdl_arch_name(hp.arch),
           hp.rope_halves ? "half-split" : "adjacent", hp.qkv_bias ? ", Q/K/V biases" : "",
           hp.qk_norm ? ", per-head Q/K norms" : "");
    printf("name:            ");
    print_str_key(g, "general.name", "(none)");
    printf("\n");
    printf("keys:            %" PRIu64 "\n", gguf_kv_count(g));
    printf("alignment:       %" PRIu32 " (data section at byte %" PRIu64 ")\n", gguf_alignment(g),
           gguf_data_offset(g));
    print_hparams(&hp);
    print_tensors(g);
    print_tokenizer(g);
    print_extensions(&hp);
    printf("supported:       architectures " MDL_SUPPORTED_ARCHS "; weights " MDL_SUPPORTED_TYPES
           "\n");
    gguf_close(&g);
    return 0;
}
