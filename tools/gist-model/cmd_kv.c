/*
 * tools/gist-model/cmd_kv.c — `logits`, `generate` and `perplexity` over the KV store under a
 * policy, and `segment` (tools/gist-model/cmd_kv.h).
 *
 * Options shared by the three (besides each command's own):
 *   --policy NAME          full, window, h2o, tova, pool, gist, trim, auto (default: auto,
 *                          as gistd's)
 *   --param KEY=VALUE      a policy parameter (repeatable; see pol_param_help)
 *   --kv-budget SIZE       the session's hard limit: bytes ("64K", "1.5M") or a percentage of
 *                          the full cache of --ctx tokens ("25%"); 0: none
 *   --kv-soft SIZE         its soft watermark (default: hard - the policy's headroom)
 *   --kv-block-rows N      rows per store block (default 64, as gistd's --block-rows)
 *   --kv-type f32|f16|q8_0 payload of new rows (default f16, as gistd's)
 *   --spill-dir DIR|none   where transcript pages no row holds raw go (default as gistd's:
 *                          $TMPDIR, else /var/tmp)
 *   --events               every compaction (and expansion) on stderr
 *   --expand, --no-expand  re-expand compressed spans relevant to the prompt's end before
 *                          generating (`expand=1|0`; auto: on by default)
 *   --expand-tokens N      most tokens re-prefilled (`expand_tokens=N`)
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/dtype.h"
#include "model/llama.h"
#include "model/sampler.h"
#include "policy/segment.h"
#include "tools/gist-model/cmd.h"
#include "tools/gist-model/cmd_kv.h"
#include "tools/gist-model/kvrun.h"

#define MAX_PARAMS 32
#define MAX_SEQS   64

bool kv_mode_wanted(int argc, char **argv)
{
    for (int i = 0; i < argc; i++)
        if (!strcmp(argv[i], "--policy") || !strcmp(argv[i], "--kv-budget"))
            return true;
    return false;
}

/* The store options, as parsed. */
typedef struct kv_opts {
    kvr_cfg_t cfg;
    pol_param_t params[MAX_PARAMS];
    char *param_buf[MAX_PARAMS];
    const char *budget; /* as given, resolved once the model is loaded */
    const char *soft;
    bool policy_given;
} kv_opts_t;

static void opts_free(kv_opts_t *o)
{
    for (uint32_t i = 0; i < o->cfg.n_params; i++)
        free(o->param_buf[i]);
}

/* Adds a policy parameter "KEY=VALUE": 0, or -1 (usage printed). */
static int add_param(kv_opts_t *o, const char *kv)
{
    const char *eq = strchr(kv, '=');
    if (!eq || eq == kv)
        return cmd_usage_error("--param: '%s' is not KEY=VALUE", kv), -1;
    if (o->cfg.n_params == MAX_PARAMS)
        return cmd_usage_error("--param: at most %d parameters", MAX_PARAMS), -1;
    char *b = strdup(kv);
    if (!b)
        return cmd_usage_error("out of memory"), -1;
    b[eq - kv] = 0;
    o->param_buf[o->cfg.n_params] = b;
    o->params[o->cfg.n_params].key = b;
    o->params[o->cfg.n_params].value = b + (eq - kv) + 1;
    o->cfg.n_params++;
    return 0;
}

/* Consumes a store option at argv[*i]: 1 when it was one, 0 when not, -1 (usage printed) for
 * a bad one. */
static int kv_opt(kv_opts_t *o, int argc, char **argv, int *i)
{
    const char *a = argv[*i];
    bool has = *i + 1 < argc;
    long v;
    if (!strcmp(a, "--events")) {
        o->cfg.print_events = true;
        return 1;
    }
    if (!strcmp(a, "--expand") || !strcmp(a, "--no-expand"))
        return add_param(o, a[2] == 'e' ? "expand=1" : "expand=0") ? -1 : 1;
    if (!has)
        return 0;
    if (!strcmp(a, "--policy")) {
        o->cfg.policy = argv[++*i];
        o->policy_given = true;
    } else if (!strcmp(a, "--param")) {
        if (add_param(o, argv[++*i]))
            return -1;
    } else if (!strcmp(a, "--expand-tokens")) {
        char kv[48];
        if (cmd_parse_long(a, argv[++*i], 1, 1 << 16, &v))
            return -1;
        snprintf(kv, sizeof kv, "expand_tokens=%ld", v);
        if (add_param(o, kv))
            return -1;
    } else if (!strcmp(a, "--kv-budget")) {
        o->budget = argv[++*i];
    } else if (!strcmp(a, "--kv-soft")) {
        o->soft = argv[++*i];
    } else if (!strcmp(a, "--spill-dir")) {
        o->cfg.spill_dir = argv[++*i];
    } else if (!strcmp(a, "--kv-block-rows")) {
        if (cmd_parse_long(a, argv[++*i], 1, 1 << 16, &v))
            return -1;
        o->cfg.block_rows = (uint32_t)v;
    } else if (!strcmp(a, "--kv-type")) {
        const char *t = argv[++*i];
        if (!strcmp(t, "f32"))
            o->cfg.hot_type = DT_F32;
        else if (!strcmp(t, "f16"))
            o->cfg.hot_type = DT_F16;
        else if (!strcmp(t, "q8_0"))
            o->cfg.hot_type = DT_Q8_0;
        else
            return cmd_usage_error("--kv-type: '%s' is not f32, f16 or q8_0", t), -1;
    } else {
        return 0;
    }
    return 1;
}

/* Resolves the budget (a percentage needs the full cache of n_ctx tokens) and the policy. */
static int kv_resolve(kv_opts_t *o, mdl_t *m, uint32_t n_ctx, size_t *full)
{
    o->cfg.params = o->params;
    err_info_t e;
    err_clear(&e);
    *full = 0;
    if (kvr_full_bytes(m, n_ctx, o->cfg.block_rows, o->cfg.hot_type, full, &e))
        return cmd_usage_error("%s", err_msg(&e));
    if (o->budget) {
        size_t n = strlen(o->budget);
        if (n > 1 && o->budget[n - 1] == '%') {
            char *end;
            double pct = strtod(o->budget, &end);
            if (end != o->budget + n - 1 || !(pct > 0) || pct > 1e6)
                return cmd_usage_error("--kv-budget: '%s' is not a percentage", o->budget);
            o->cfg.hard = (size_t)((double)*full * pct / 100.0);
        } else if (kvr_parse_size(o->budget, &o->cfg.hard)) {
            return cmd_usage_error("--kv-budget: '%s' is not a size (bytes, 64K, 1.5M, 25%%)",
                                   o->budget);
        }
    }
    if (o->soft && kvr_parse_size(o->soft, &o->cfg.soft))
        return cmd_usage_error("--kv-soft: '%s' is not a size", o->soft);
    if (o->cfg.soft && o->cfg.hard && o->cfg.soft > o->cfg.hard)
        return cmd_usage_error("--kv-soft %zu is above --kv-budget %zu", o->cfg.soft, o->cfg.hard);
    if (!o->policy_given)
        o->cfg.policy = "auto"; /* gistd's default too */
    return 0;
}

static int load_model(const char *path, long threads, mdl_t **m)
{
    err_info_t e;
    err_clear(&e);
    if (mdl_new(path, m, &e))
        return cmd_usage_error("%s", err_msg(&e));
    mdl_set_threads(*m, (int)threads);
    return 0;
}

static int new_run(mdl_t *m, kv_opts_t *o, kvr_t **r)
{
    err_info_t e;
    err_clear(&e);
    int rc = kvr_new(m, &o->cfg, r, &e);
    if (rc)
        return cmd_usage_error("%s", err_msg(&e));
    return 0;
}

/* "gist/learned=3 evict/h2o=10", or "none". */
static void print_compactions(FILE *f, const pol_stats_t *s)
{
    bool any = false;
    for (int a = 0; a < POL_N_ACTIONS; a++)
        for (int mth = 0; mth < POL_N_METHODS; mth++)
            if (s->events[a][mth]) {
                fprintf(f, "%s%s/%s=%llu", any ? " " : "", pol_action_name(a), pol_method_name(mth),
                        (unsigned long long)s->events[a][mth]);
                any = true;
            }
    fputs(any ? "\n" : "none\n", f);
}

/* ------------------------------------------------------------------ perplexity */

int kv_cmd_perplexity(int argc, char **argv)
{
    const char *model = NULL, *path = NULL;
    long threads = 0, ctx = -1, ubatch = 0; /* ctx -1: the model's; 0: one session */
    long turn = 0; /* > 0 (one session only): a turn every `turn` tokens, re-expansion after it */
    kv_opts_t o = {.cfg.hot_type = DT_F16};
    int rc = 2;
    for (int i = 0; i < argc; i++) {
        int k = kv_opt(&o, argc, argv, &i);
        if (k < 0)
            goto done;
        if (k > 0)
            continue;
        const char *a = argv[i];
        bool has = i + 1 < argc;
        int bad = 0;
        if (!strcmp(a, "--file") && has)
            path = argv[++i];
        else if (!strcmp(a, "--ctx") && has)
            bad = cmd_parse_long(a, argv[++i], 0, INT32_MAX, &ctx);
        else if (!strcmp(a, "--ubatch") && has)
            bad = cmd_parse_long(a, argv[++i], 1, 1 << 20, &ubatch);
        else if (!strcmp(a, "--threads") && has)
            bad = cmd_parse_long(a, argv[++i], 0, 1024, &threads);
        else if (!strcmp(a, "--turn") && has)
            bad = cmd_parse_long(a, argv[++i], 1, INT32_MAX, &turn);
        else if (a[0] == '-' || model)
            bad = cmd_usage_error("perplexity: unexpected argument '%s'", a);
        else
            model = a;
        if (bad)
            goto done;
    }
    if (ctx == 1) {
        cmd_usage_error("perplexity: --ctx 1 scores nothing (0: the whole file as one session; "
                        "N >= 2: windows of N tokens)");
        goto done;
    }
    if (!model || !path) {
        cmd_usage_error("usage: gist-model perplexity MODEL --file F [--ctx N|0 [--turn N]] "
                        "[--policy NAME] [--kv-budget SIZE] ...");
        goto done;
    }
    if (turn && ctx != 0) {
        cmd_usage_error("perplexity: --turn needs --ctx 0 (the whole file as one session)");
        goto done;
    }

    mdl_t *m = NULL;
    kvr_t *r = NULL;
    char *text = NULL;
    size_t text_len = 0, n_ids = 0, full = 0;
    int32_t *ids = NULL;
    float *logits = NULL;
    if (cmd_read_file(path, &text, &text_len) || load_model(model, threads, &m))
        goto out;
    const mdl_hparams_t *hp = mdl_hparams(m);
    const tok_t *tk = mdl_tok(m);
    if (!tk) {
        cmd_usage_error("%s: the model file carries no tokenizer", model);
        goto out;
    }
    if (tok_encode(tk, text, text_len, true, false, &ids, &n_ids)) {
        cmd_usage_error("%s: cannot tokenize the text", path);
        goto out;
    }
    if (n_ids < 2) {
        cmd_usage_error("%s: the text has fewer than 2 tokens", path);
        goto out;
    }
    /* --ctx 0: the whole file as one session, however long (budgets in % are of the full
     * cache of one context); else windows of ctx tokens, each a fresh session */
    const bool one = ctx == 0;
    if (ctx <= 0)
        ctx = hp->n_ctx < 2 ? 2 : hp->n_ctx;
    if (one)
        ctx = n_ids > (size_t)INT32_MAX ? INT32_MAX : (long)n_ids;
    if (kv_resolve(&o, m, hp->n_ctx && one ? hp->n_ctx : (uint32_t)ctx, &full))
        goto out;
    /* under a budget the tokens run one at a time, as decoding does, unless told otherwise */
    o.cfg.ubatch = (uint32_t)(ubatch ? ubatch : (o.cfg.hard ? 1 : 256));
    if (new_run(m, &o, &r))
        goto out;
    logits = one ? malloc(1) : malloc(sizeof(float) * (size_t)ctx * hp->n_vocab);
    if (!logits) {
        cmd_usage_error("out of memory");
        goto out;
    }

    rc = 1;
    const size_t n_windows = (n_ids - 2) / (size_t)(ctx - 1) + 1;
    double nll = 0.0, t0 = cmd_now(), rows_sum = 0.0, text_sum = 0.0;
    size_t scored = 0, w = 0, peak = 0;
    uint64_t gist_tokens = 0, expansions = 0, expand_tokens = 0;
    pol_stats_t total = {0};
    err_info_t e;
    for (size_t start = 0; start + 1 < n_ids; start += (size_t)ctx - 1, w++) {
        const size_t end = start + (size_t)ctx < n_ids ? start + (size_t)ctx : n_ids;
        err_clear(&e);
        if (w > 0 && kvr_reset(r, &e)) {
            fprintf(stderr, "gist-model: %s\n", err_msg(&e));
            goto out;
        }
        if (one) {
            /* in pieces, for the progress lines; the scores are those of one feed. With
             * --turn, each piece is a turn: what the policy re-expands after it (as gistd does
             * after a client's turn) is there when the next one is scored */
            const size_t piece = turn ? (size_t)turn : 4096;
            size_t next_line = 0;
            for (size_t at = start; at < end; at += piece) {
                const size_t to = at + piece < end ? at + piece : end;
                if (kvr_score(r, ids + at, (uint32_t)(to - at), &nll, &scored, &e)) {
                    fprintf(stderr, "gist-model: after %zu tokens: %s\n", scored, err_msg(&e));
                    goto out;
                }
                if (turn && to < end) {
                    rt_expand_result_t xr;
                    if (kvr_expand(r, NULL, &xr, &e)) {
                        fprintf(stderr, "gist-model: expanding after %zu tokens: %s\n", scored,
                                err_msg(&e));
                        goto out;
                    }
                    expansions += xr.spans;
                    expand_tokens += xr.tokens;
                }
                if (scored >= next_line || to == end) {
                    fprintf(stderr, "%zu tokens scored, ppl so far %.4f (%.1f tokens/s)\n", scored,
                            exp(nll / scored), scored / (cmd_now() - t0));
                    next_line = scored + 4096;
                }
            }
        } else if (kvr_feed(r, ids + start, (uint32_t)(end - start), logits, NULL, &e)) {
            fprintf(stderr, "gist-model: %s\n", err_msg(&e));
            goto out;
        }
        for (size_t i = start; !one && i + 1 < end; i++) {
            nll += mdl_token_nll(logits + (i - start) * hp->n_vocab, hp->n_vocab, ids[i + 1]);
            scored++;
        }
        kvr_figures_t fg;
        kvr_figures(r, &fg);
        peak = fg.peak > peak ? fg.peak : peak;
        rows_sum += (double)fg.rows / (hp->n_layer * hp->n_head_kv);
        text_sum += (double)fg.text;
        gist_tokens += fg.pol.gist_tokens;
        for (int a = 0; a < POL_N_ACTIONS; a++)
            for (int mth = 0; mth < POL_N_METHODS; mth++)
                total.events[a][mth] += fg.pol.events[a][mth];
        fprintf(stderr, "[%zu/%zu] %zu tokens scored, ppl so far %.4f (%.1f tokens/s)\n", w + 1,
                n_windows, scored, exp(nll / scored), scored / (cmd_now() - t0));
    }
    printf("policy: %s\n", pol_name(kvr_policy(r)));
    printf("tokens: %zu\n", scored);
    printf("kv_budget: %zu\n", o.cfg.hard);
    printf("full_kv_bytes: %zu\n", full);
    printf("peak_kv_bytes: %zu\n", peak);
    printf("rows_per_token: %.4f\n", text_sum > 0 ? rows_sum / text_sum : 0.0);
    printf("gist_tokens: %llu\n", (unsigned long long)gist_tokens);
    printf("compactions: ");
    print_compactions(stdout, &total);
    if (turn)
        printf("expansions: %llu spans, %llu tokens re-prefilled, %zu turns of %ld tokens\n",
               (unsigned long long)expansions, (unsigned long long)expand_tokens,
               (n_ids + (size_t)turn - 1) / (size_t)turn, turn);
    printf("ppl: %.4f\n", exp(nll / scored));
    rc = 0;
out:
    free(text);
    free(ids);
    free(logits);
    kvr_destroy(&r);
    mdl_destroy(&m);
done:
    opts_free(&o);
    return rc;
}

/* ------------------------------------------------------------------ logits */

static int parse_tokens(const char *s, int32_t **out, uint32_t *n_out)
{
    size_t cap = 16, n = 0;
    int32_t *ids = malloc(sizeof(int32_t) * cap);
    const char *p = s;
    while (ids) {
        while (*p == ' ' || *p == ',' || *p == '\t' || *p == '\n')
            p++;
        if (!*p)
            break;
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (errno || end == p || v < 0 || v > INT32_MAX ||
            (*end && *end != ' ' && *end != ',' && *end != '\t' && *end != '\n')) {
            free(ids);
            return cmd_usage_error("--tokens: '%s' is not a list of token ids", s);
        }
        if (n == cap) {
            int32_t *t = realloc(ids, sizeof(int32_t) * (cap *= 2));
            if (!t)
                free(ids);
            ids = t;
            if (!ids)
                break;
        }
        ids[n++] = (int32_t)v;
        p = end;
    }
    if (!ids)
        return cmd_usage_error("out of memory");
    if (n == 0) {
        free(ids);
        return cmd_usage_error("--tokens: no token ids in '%s'", s);
    }
    *out = ids;
    *n_out = (uint32_t)n;
    return 0;
}

int kv_cmd_logits(int argc, char **argv)
{
    const char *model = NULL, *out_path = NULL;
    const char *seq_text[MAX_SEQS];
    uint32_t n_seq = 0;
    long threads = 0, ubatch = 0;
    kv_opts_t o = {.cfg.hot_type = DT_F16};
    int rc = 2;
    for (int i = 0; i < argc; i++) {
        int k = kv_opt(&o, argc, argv, &i);
        if (k < 0)
            goto done;
        if (k > 0)
            continue;
        const char *a = argv[i];
        bool has = i + 1 < argc;
        int bad = 0;
        if (!strcmp(a, "--tokens") && has) {
            if (n_seq == MAX_SEQS)
                bad = cmd_usage_error("logits: at most %d --tokens sequences", MAX_SEQS);
            else
                seq_text[n_seq++] = argv[++i];
        } else if (!strcmp(a, "--out") && has) {
            out_path = argv[++i];
        } else if (!strcmp(a, "--threads") && has) {
            bad = cmd_parse_long(a, argv[++i], 0, 1024, &threads);
        } else if (!strcmp(a, "--ubatch") && has) {
            bad = cmd_parse_long(a, argv[++i], 1, 1 << 20, &ubatch);
        } else if (a[0] == '-' || model) {
            bad = cmd_usage_error("logits: '%s' is not an option of the KV store mode", a);
        } else {
            model = a;
        }
        if (bad)
            goto done;
    }
    if (!model || !n_seq || !out_path) {
        cmd_usage_error("usage: gist-model logits MODEL --tokens \"ID ...\" --out FILE "
                        "--policy NAME [--kv-budget SIZE] ...");
        goto done;
    }
    mdl_t *m = NULL;
    kvr_t *r = NULL;
    int32_t *ids[MAX_SEQS] = {0};
    uint32_t len[MAX_SEQS] = {0}, max_len = 0;
    float *logits = NULL;
    FILE *f = NULL;
    size_t full;
    for (uint32_t s = 0; s < n_seq; s++) {
        if (parse_tokens(seq_text[s], &ids[s], &len[s]))
            goto out;
        max_len = len[s] > max_len ? len[s] : max_len;
    }
    if (load_model(model, threads, &m))
        goto out;
    const uint32_t nv = mdl_hparams(m)->n_vocab;
    if (kv_resolve(&o, m, max_len, &full))
        goto out;
    o.cfg.ubatch = (uint32_t)(ubatch ? ubatch : (o.cfg.hard ? 1 : max_len));
    if (new_run(m, &o, &r))
        goto out;
    logits = malloc(sizeof(float) * (size_t)max_len * nv);
    f = fopen(out_path, "wb");
    if (!logits || !f) {
        cmd_usage_error("%s: %s", out_path, logits ? strerror(errno) : "out of memory");
        goto out;
    }
    rc = 1;
    for (uint32_t s = 0; s < n_seq; s++) {
        err_info_t e;
        err_clear(&e);
        if ((s > 0 && kvr_reset(r, &e)) || kvr_feed(r, ids[s], len[s], logits, NULL, &e)) {
            rc = cmd_usage_error("%s: %s", model, err_msg(&e));
            goto out;
        }
        if (fwrite(logits, sizeof(float) * nv, len[s], f) != len[s]) {
            rc = cmd_usage_error("%s: cannot write: %s", out_path, strerror(errno));
            goto out;
        }
    }
    rc = fclose(f) ? cmd_usage_error("%s: cannot write: %s", out_path, strerror(errno)) : 0;
    f = NULL;
out:
    if (f)
        fclose(f);
    for (uint32_t s = 0; s < n_seq; s++)
        free(ids[s]);
    free(logits);
    kvr_destroy(&r);
    mdl_destroy(&m);
done:
    opts_free(&o);
    return rc;
}

/* ------------------------------------------------------------------ generate */

int kv_cmd_generate(int argc, char **argv)
{
    const char *model = NULL, *prompt = NULL;
    long threads = 0, n_gen = -1, ctx = 0, ubatch = 0;
    mdl_sampler_cfg_t sc;
    mdl_sampler_cfg_default(&sc);
    bool seeded = false;
    kv_opts_t o = {.cfg.hot_type = DT_F16};
    int rc = 2;
    for (int i = 0; i < argc; i++) {
        int k = kv_opt(&o, argc, argv, &i);
        if (k < 0)
            goto done;
        if (k == 0)
            k = cmd_sampler_opt(&sc, &seeded, argc, argv, &i);
        if (k < 0)
            goto done;
        if (k > 0)
            continue;
        const char *a = argv[i];
        bool has = i + 1 < argc;
        int bad = 0;
        if (!strcmp(a, "--prompt") && has) {
            prompt = argv[++i];
        } else if (!strcmp(a, "-n") && has) {
            bad = cmd_parse_long(a, argv[++i], 0, INT32_MAX, &n_gen);
        } else if (!strcmp(a, "--threads") && has) {
            bad = cmd_parse_long(a, argv[++i], 0, 1024, &threads);
        } else if (!strcmp(a, "--ctx") && has) {
            bad = cmd_parse_long(a, argv[++i], 1, INT32_MAX, &ctx);
        } else if (!strcmp(a, "--ubatch") && has) {
            bad = cmd_parse_long(a, argv[++i], 1, 1 << 20, &ubatch);
        } else if (a[0] == '-' || model) {
            bad = cmd_usage_error("generate: unexpected argument '%s'", a);
        } else {
            model = a;
        }
        if (bad)
            goto done;
    }
    if (!model || !prompt || n_gen < 0) {
        cmd_usage_error("usage: gist-model generate MODEL --prompt STR -n N --policy NAME "
                        "[--kv-budget SIZE] [sampling options]");
        goto done;
    }
    if (!seeded)
        sc.seed = (uint64_t)time(NULL);

    mdl_t *m = NULL;
    kvr_t *r = NULL;
    mdl_sampler_t *smp = NULL;
    int32_t *ids = NULL;
    float *logits = NULL;
    size_t n_ids = 0, full;
    err_info_t e;
    err_clear(&e);
    if (load_model(model, threads, &m))
        goto out;
    const mdl_hparams_t *hp = mdl_hparams(m);
    const tok_t *tk = mdl_tok(m);
    if (!tk) {
        cmd_usage_error("%s: the model file carries no tokenizer", model);
        goto out;
    }
    if (mdl_sampler_new(&sc, hp->n_vocab, &smp, &e)) {
        cmd_usage_error("%s", err_msg(&e));
        goto out;
    }
    if (tok_encode(tk, prompt, strlen(prompt), true, false, &ids, &n_ids) || n_ids == 0) {
        cmd_usage_error("%s: cannot tokenize the prompt (or it is empty)", model);
        goto out;
    }
    if (kv_resolve(&o, m, ctx ? (uint32_t)ctx : hp->n_ctx, &full))
        goto out;
    o.cfg.ubatch = (uint32_t)(ubatch ? ubatch : (o.cfg.hard ? 16 : 256));
    if (new_run(m, &o, &r))
        goto out;
    logits = malloc(sizeof(float) * hp->n_vocab);
    if (!logits) {
        cmd_usage_error("out of memory");
        goto out;
    }
    for (size_t i = 0; i < n_ids; i++)
        mdl_sampler_accept(smp, ids[i]);
    if (!seeded && sc.temp > 0)
        fprintf(stderr, "seed: %llu\n", (unsigned long long)sc.seed);
    fputs(prompt, stdout);
    fflush(stdout);
    rc = 1;
    double t0 = cmd_now();
    if (kvr_feed(r, ids, (uint32_t)n_ids, NULL, logits, &e)) {
        fprintf(stderr, "\ngist-model: %s\n", err_msg(&e));
        goto out;
    }
    rt_expand_result_t xr;
    if (kvr_expand(r, logits, &xr, &e)) {
        fprintf(stderr, "\ngist-model: expanding: %s\n", err_msg(&e));
        goto out;
    }
    double t1 = cmd_now();
    long made = 0;
    const int32_t eos = tok_eos(tk);
    bool first = n_ids == 1 && tok_bos(tk) >= 0;
    while (made < n_gen) {
        int32_t t = mdl_sampler_sample(smp, logits);
        mdl_sampler_accept(smp, t);
        made++;
        if (t == eos)
            break;
        char piece[256];
        size_t pl = tok_piece(tk, t, first, false, piece, sizeof piece);
        fwrite(piece, 1, pl < sizeof piece ? pl : sizeof piece, stdout);
        fflush(stdout);
        first = false;
        if (made == n_gen)
            break;
        kvr_figures_t fg;
        kvr_figures(r, &fg);
        if (ctx && fg.positions >= (uint64_t)ctx) {
            fprintf(stderr, "\ngist-model: context of %ld positions is full\n", ctx);
            break;
        }
        if (kvr_feed(r, &t, 1, NULL, logits, &e)) {
            fprintf(stderr, "\ngist-model: %s\n", err_msg(&e));
            goto out;
        }
    }
    double t2 = cmd_now();
    fputc('\n', stdout);
    fflush(stdout);
    kvr_figures_t fg;
    kvr_figures(r, &fg);
    fprintf(stderr,
            "prompt: %zu tokens, %.1f tokens/s; generated: %ld tokens, %.1f tokens/s (%d "
            "threads)\nkv: policy %s, %zu bytes (peak %zu, budget %zu), %llu rows for %llu "
            "positions; compactions: ",
            n_ids, n_ids / (t1 - t0), made, made > 1 ? (made - 1) / (t2 - t1) : 0.0, mdl_threads(m),
            pol_name(kvr_policy(r)), fg.bytes, fg.peak, o.cfg.hard, (unsigned long long)fg.rows,
            (unsigned long long)fg.positions);
    print_compactions(stderr, &fg.pol);
    if (xr.candidates || xr.spans)
        fprintf(stderr,
                "expansion: %u of %u compressed spans, %u tokens re-prefilled, %+lld "
                "bytes, %.1f ms%s%s\n",
                xr.spans, xr.candidates, xr.tokens, (long long)xr.bytes, xr.ms,
                xr.note[0] ? "; " : "", xr.note);
    rc = 0;
out:
    free(ids);
    free(logits);
    mdl_sampler_destroy(&smp);
    kvr_destroy(&r);
    mdl_destroy(&m);
done:
    opts_free(&o);
    return rc;
}

/* ------------------------------------------------------------------ segment */

int cmd_segment(int argc, char **argv)
{
    const char *model = NULL, *path = NULL, *text = NULL;
    pol_seg_cfg_t sc = {.train_rule = false, .max_len = 0};
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        bool has = i + 1 < argc;
        long v;
        if (!strcmp(a, "--file") && has) {
            path = argv[++i];
        } else if (!strcmp(a, "--text") && has) {
            text = argv[++i];
        } else if (!strcmp(a, "--rule") && has) {
            const char *r = argv[++i];
            if (strcmp(r, "train") && strcmp(r, "text"))
                return cmd_usage_error("--rule: '%s' is not train or text", r);
            sc.train_rule = !strcmp(r, "train");
        } else if (!strcmp(a, "--max-sentence") && has) {
            if (cmd_parse_long(a, argv[++i], 0, 1 << 20, &v))
                return 2;
            sc.max_len = (uint32_t)v;
        } else if (a[0] == '-' || model) {
            return cmd_usage_error("segment: unexpected argument '%s'", a);
        } else {
            model = a;
        }
    }
    if (!model || (!path == !text))
        return cmd_usage_error("usage: gist-model segment MODEL (--file F | --text S) "
                               "[--rule train|text] [--max-sentence N]");
    char *buf = NULL;
    size_t len = 0, n = 0;
    if (path && cmd_read_file(path, &buf, &len))
        return 2;
    if (text) {
        buf = strdup(text);
        len = strlen(text);
    }
    gguf_t *g = NULL;
    tok_t *tk = NULL;
    err_info_t e;
    err_clear(&e);
    int32_t *ids = NULL;
    int rc = 2;
    if (gguf_open(model, &g, &e) || tok_new(g, &tk, &e)) {
        cmd_usage_error("%s", err_msg(&e));
        goto out;
    }
    if (tok_encode(tk, buf, len, true, false, &ids, &n)) {
        cmd_usage_error("cannot tokenize the text");
        goto out;
    }
    pol_seg_t s;
    pol_seg_init(&s, &sc);
    for (size_t i = 0; i < n; i++) {
        char piece[256];
        size_t pl = tok_piece(tk, ids[i], false, false, piece, sizeof piece);
        int k = pol_seg_push(&s, piece, (uint32_t)(pl < sizeof piece ? pl : sizeof piece));
        if (k != POL_SEG_NONE && i > 0)
            printf("%zu%s\n", i - 1,
                   k == POL_SEG_PARAGRAPH ? " P"
                   : k == POL_SEG_LENGTH  ? " L"
                                          : "");
    }
    rc = 0;
out:
    free(buf);
    free(ids);
    tok_destroy(&tk);
    gguf_close(&g);
    return rc;
}
