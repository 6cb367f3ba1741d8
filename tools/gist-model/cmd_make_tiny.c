/*
 * gist-model make-tiny — writes a random-weight llama model (model/tiny.h) for tests and
 * benchmarks:
 *   make-tiny OUT.gguf --seed N [--type f32|f16|bf16|q8_0|q4_0|q5_0|q5_1|q4_K|q5_K|q6_K|
 *                                       q4_K_M|q5_K_M]
 *             [--arch llama|qwen2|qwen3] [--head-dim N] [--n-embd N] [--n-layer N]
 *             [--n-head N] [--n-head-kv N] [--n-ff N] [--n-vocab N] [--n-ctx N]
 *             [--rope-base F] [--tied] [--gist N] [--retention-hidden N]
 *             [--retention-budget N] [--name S] [--chat-template JINJA] [--no-space-prefix]
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/tiny.h"
#include "tools/gist-model/cmd.h"

/* Parses a whole decimal unsigned number up to max. */
static bool parse_u64(const char *s, uint64_t max, uint64_t *out)
{
    char *end;
    if (!s || !*s || *s == '-')
        return false;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v > max)
        return false;
    *out = v;
    return true;
}

int cmd_make_tiny(int argc, char **argv)
{
    mdl_tiny_cfg_t cfg;
    mdl_tiny_cfg_default(&cfg);
    const char *out = NULL;
    bool have_seed = false;
    static const struct {
        const char *flag;
        size_t off;
    } u32_opts[] = {
        {"--n-embd", offsetof(mdl_tiny_cfg_t, n_embd)},
        {"--n-layer", offsetof(mdl_tiny_cfg_t, n_layer)},
        {"--n-head", offsetof(mdl_tiny_cfg_t, n_head)},
        {"--n-head-kv", offsetof(mdl_tiny_cfg_t, n_head_kv)},
        {"--n-ff", offsetof(mdl_tiny_cfg_t, n_ff)},
        {"--n-vocab", offsetof(mdl_tiny_cfg_t, n_vocab)},
        {"--n-ctx", offsetof(mdl_tiny_cfg_t, n_ctx)},
        {"--head-dim", offsetof(mdl_tiny_cfg_t, head_dim)},
        {"--gist", offsetof(mdl_tiny_cfg_t, n_gist)},
        {"--retention-hidden", offsetof(mdl_tiny_cfg_t, retention_hidden)},
        {"--retention-budget", offsetof(mdl_tiny_cfg_t, retention_budget)},
    };

    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        bool matched = false;
        uint64_t u;
        if (!strcmp(a, "--tied")) {
            cfg.tied = true;
            continue;
        }
        if (!strcmp(a, "--no-space-prefix")) {
            cfg.no_space_prefix = true;
            continue;
        }
        for (size_t k = 0; k < sizeof u32_opts / sizeof u32_opts[0]; k++) {
            if (strcmp(a, u32_opts[k].flag))
                continue;
            if (!parse_u64(val, UINT32_MAX, &u))
                return cmd_usage_error("make-tiny: %s needs a whole number, got '%s'", a,
                                       val ? val : "");
            *(uint32_t *)((char *)&cfg + u32_opts[k].off) = (uint32_t)u;
            matched = true;
            i++;
        }
        if (matched)
            continue;
        if (!strcmp(a, "--seed")) {
            if (!parse_u64(val, UINT64_MAX, &cfg.seed))
                return cmd_usage_error("make-tiny: --seed needs a whole number, got '%s'",
                                       val ? val : "");
            have_seed = true;
            i++;
        } else if (!strcmp(a, "--type")) {
            if (!val || mdl_tiny_set_type(&cfg, val))
                return cmd_usage_error("make-tiny: --type must be f32, f16, bf16, q8_0, q4_0, "
                                       "q5_0, q5_1, q4_K, q5_K, q6_K, q4_K_M or q5_K_M, got "
                                       "'%s'",
                                       val ? val : "");
            i++;
        } else if (!strcmp(a, "--arch")) {
            if (!val || (strcmp(val, "llama") && strcmp(val, "qwen2") && strcmp(val, "qwen3")))
                return cmd_usage_error("make-tiny: --arch must be llama, qwen2 or qwen3, got '%s'",
                                       val ? val : "");
            cfg.arch = val;
            i++;
        } else if (!strcmp(a, "--rope-base")) {
            char *end;
            cfg.rope_base = val ? strtof(val, &end) : 0.0f;
            if (!val || *end || !(cfg.rope_base > 0.0f))
                return cmd_usage_error("make-tiny: --rope-base needs a positive number, "
                                       "got '%s'",
                                       val ? val : "");
            i++;
        } else if (!strcmp(a, "--chat-template")) {
            if (!val)
                return cmd_usage_error("make-tiny: --chat-template needs a value");
            cfg.chat_template = val;
            i++;
        } else if (!strcmp(a, "--name")) {
            if (!val)
                return cmd_usage_error("make-tiny: --name needs a value");
            cfg.name = val;
            i++;
        } else if (a[0] == '-' && a[1]) {
            return cmd_usage_error("make-tiny: unknown option '%s'", a);
        } else if (out) {
            return cmd_usage_error("make-tiny: more than one output file ('%s', '%s')", out, a);
        } else {
            out = a;
        }
    }
    if (!out)
        return cmd_usage_error("make-tiny: missing OUT.gguf (usage: make-tiny OUT.gguf "
                               "--seed N [--type T] [shape options])");
    if (!have_seed)
        return cmd_usage_error("make-tiny: missing --seed N");

    err_info_t e;
    err_clear(&e);
    int rc = mdl_tiny_write(out, &cfg, &e);
    if (rc)
        return cmd_usage_error("%s: %s", out, err_msg(&e));
    return 0;
}
