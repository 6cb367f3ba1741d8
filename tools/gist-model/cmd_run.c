/*
 * tools/gist-model/cmd_run.c — running a model: `logits`, `generate` and `perplexity`.
 *
 * All three keep their K/V rows in a flat cache (model/flatkv.h): the full
 * cache, no compression, one sequence per prompt.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/dtype.h"
#include "model/flatkv.h"
#include "model/llama.h"
#include "model/sampler.h"
#include "tools/gist-model/cmd.h"
#include "tools/gist-model/cmd_kv.h"

/* ------------------------------------------------------------------ arguments */

/* Token ids separated by spaces or commas, into a malloc'd array. */
static int parse_tokens(const char *s, int32_t **out, uint32_t *n_out)
{
    size_t cap = 16, n = 0;
    int32_t *ids = malloc(sizeof(int32_t) * cap);
    if (!ids)
        return cmd_usage_error("out of memory");
    const char *p = s;
    for (;;) {
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
            if (!t) {
                free(ids);
                return cmd_usage_error("out of memory");
            }
            ids = t;
        }
        ids[n++] = (int32_t)v;
        p = end;
    }
    if (n == 0) {
        free(ids);
        return cmd_usage_error("--tokens: no token ids in '%s'", s);
    }
    *out = ids;
    *n_out = (uint32_t)n;
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

static int new_cache(const mdl_t *m, uint32_t n_seq, uint32_t n_ctx, uint32_t type,
                     uint32_t chunk_rows, bool logbeta, mdl_flatkv_t **kv)
{
    const mdl_hparams_t *hp = mdl_hparams(m);
    mdl_flatkv_cfg_t c = {.n_layer = hp->n_layer,
                          .n_head_kv = hp->n_head_kv,
                          .head_dim = hp->head_dim,
                          .n_seq = n_seq,
                          .n_ctx = n_ctx,
                          .type = type,
                          .chunk_rows = chunk_rows,
                          .logbeta = logbeta};
    err_info_t e;
    err_clear(&e);
    if (mdl_flatkv_new(&c, kv, &e))
        return cmd_usage_error("%s", err_msg(&e));
    return 0;
}

/* ------------------------------------------------------------------ logits */

/* The sentence mask of learned gist tokens (../shared/GGUF-EXTENSIONS.md), applied by
 * narrowing the flat cache's views: a query sees the sinks, every earlier gist token and
 * the tokens of its own sentence (a gist group belongs to the sentence it closes). Each
 * item runs alone, so the item being computed is always the row after the stored ones. */
typedef struct gist_io {
    mdl_kv_io_t inner;
    uint32_t n_kv, sinks, gist_first, n_gist;
    size_t row_bytes;
    const int32_t *const *ids; /* [n_seq] token ids of each sequence */
    int32_t **sid;             /* [n_seq] sentence index of each token */
    mdl_kv_chunk_t *runs;      /* [n_seq * n_kv][max_len] the allowed runs of rows */
    uint32_t max_len;
} gist_io_t;

static bool gist_is(const gist_io_t *gi, int32_t id)
{
    return id >= (int32_t)gi->gist_first && id < (int32_t)(gi->gist_first + gi->n_gist);
}

static int gist_view(void *ctx, int seq, int layer, int h, uint32_t n_new, mdl_kv_view_t *out)
{
    gist_io_t *gi = ctx;
    int rc = gi->inner.view(gi->inner.ctx, seq, layer, h, n_new, out);
    if (rc || out->n_chunks == 0)
        return rc;
    if (n_new != 1 || out->n_chunks != 1)
        return ERR_INTERNAL; /* one item per batch over one stored chunk */
    const mdl_kv_chunk_t all = out->chunks[0];
    const int32_t *ids = gi->ids[seq], *sid = gi->sid[seq];
    const uint32_t q = all.n; /* the query is the row after the stored ones */
    mdl_kv_chunk_t *runs = gi->runs + ((size_t)seq * gi->n_kv + (size_t)h) * gi->max_len;
    uint32_t n_runs = 0;
    for (uint32_t r = 0; r < q;) {
        if (!(r < gi->sinks || gist_is(gi, ids[r]) || sid[r] == sid[q])) {
            r++;
            continue;
        }
        uint32_t e = r + 1;
        while (e < q && (e < gi->sinks || gist_is(gi, ids[e]) || sid[e] == sid[q]))
            e++;
        runs[n_runs++] = (mdl_kv_chunk_t){
            .n = e - r,
            .type = all.type,
            .k = (const uint8_t *)all.k + r * gi->row_bytes,
            .v = (const uint8_t *)all.v + r * gi->row_bytes,
            .bias = all.bias ? all.bias + r : NULL,
            .attn_acc = all.attn_acc ? all.attn_acc + r : NULL,
        };
        r = e;
    }
    out->chunks = runs;
    out->n_chunks = n_runs;
    return 0;
}

#define MAX_SEQS 64

/* gist-model logits MODEL --tokens "ID ..." [--tokens "ID ..." ...] --out FILE [--threads N]
 *   [--ubatch N] [--kv-type f32|f16|q8_0] [--chunk-rows N] [--retention-out FILE]
 *   [--gist-mask]
 * Each --tokens is one sequence, at positions 0, 1, ... Their items are interleaved
 * (round robin over sequences) and run in batches of --ubatch items (default: all in
 * one batch). FILE gets float32 little-endian logits [n_tokens][n_vocab], the sequences
 * one after another in the order given. --retention-out writes float32 log-beta
 * [n_tokens][n_layer][n_head_kv] (models with retention gates only). --gist-mask applies
 * the sentence mask of the model's gist tokens, found where the gist ids stand in the
 * given tokens (each item then runs alone). */
int cmd_logits(int argc, char **argv)
{
    if (kv_mode_wanted(argc, argv)) /* the KV store under a policy: cmd_kv.c */
        return kv_cmd_logits(argc, argv);
    const char *model = NULL, *out_path = NULL, *ret_path = NULL;
    const char *seq_text[MAX_SEQS];
    uint32_t n_seq = 0, kv_type = DT_F32;
    long threads = 0, ubatch = 0, chunk_rows = 0;
    bool gist_mask = false;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        bool has = i + 1 < argc;
        if (!strcmp(a, "--gist-mask")) {
            gist_mask = true;
        } else if (!strcmp(a, "--tokens") && has) {
            if (n_seq == MAX_SEQS)
                return cmd_usage_error("logits: at most %d --tokens sequences", MAX_SEQS);
            seq_text[n_seq++] = argv[++i];
        } else if (!strcmp(a, "--out") && has) {
            out_path = argv[++i];
        } else if (!strcmp(a, "--retention-out") && has) {
            ret_path = argv[++i];
        } else if (!strcmp(a, "--threads") && has) {
            if (cmd_parse_long(a, argv[++i], 0, 1024, &threads))
                return 2;
        } else if (!strcmp(a, "--ubatch") && has) {
            if (cmd_parse_long(a, argv[++i], 1, 1 << 20, &ubatch))
                return 2;
        } else if (!strcmp(a, "--chunk-rows") && has) {
            if (cmd_parse_long(a, argv[++i], 0, 1 << 30, &chunk_rows))
                return 2;
        } else if (!strcmp(a, "--kv-type") && has) {
            const char *t = argv[++i];
            if (!strcmp(t, "f32"))
                kv_type = DT_F32;
            else if (!strcmp(t, "f16"))
                kv_type = DT_F16;
            else if (!strcmp(t, "q8_0"))
                kv_type = DT_Q8_0;
            else
                return cmd_usage_error("--kv-type: '%s' is not f32, f16 or q8_0", t);
        } else if (a[0] == '-' || model) {
            return cmd_usage_error("logits: unexpected argument '%s'", a);
        } else {
            model = a;
        }
    }
    if (!model || !n_seq || !out_path)
        return cmd_usage_error("usage: gist-model logits MODEL --tokens \"ID ID ...\" --out FILE "
                               "[--threads N]");

    int rc = 2;
    mdl_t *m = NULL;
    mdl_flatkv_t *kv = NULL;
    int32_t *ids[MAX_SEQS] = {0};
    uint32_t len[MAX_SEQS] = {0}, total = 0, max_len = 0;
    int32_t *tok = NULL, *pos = NULL, *seq = NULL;
    uint8_t *want = NULL;
    float *logits = NULL, *all = NULL;
    FILE *f = NULL;
    gist_io_t gi = {0};
    int32_t *sid[MAX_SEQS] = {0};
    for (uint32_t s = 0; s < n_seq; s++) {
        if (parse_tokens(seq_text[s], &ids[s], &len[s]))
            goto done;
        total += len[s];
        max_len = len[s] > max_len ? len[s] : max_len;
    }
    if (load_model(model, threads, &m))
        goto done;
    const mdl_hparams_t *hp = mdl_hparams(m);
    if (ret_path && !mdl_has_retention(m)) {
        rc = cmd_usage_error("%s: --retention-out: the model has no retention gates", model);
        goto done;
    }
    if (gist_mask)
        chunk_rows = 0; /* the mask narrows one chunk of all stored rows */
    if (new_cache(m, n_seq, max_len, kv_type, (uint32_t)chunk_rows, ret_path != NULL, &kv))
        goto done;
    if (ubatch == 0 || ubatch > total)
        ubatch = total;
    mdl_kv_io_t io = mdl_flatkv_io(kv);
    if (gist_mask) {
        if (hp->n_gist == 0) {
            rc = cmd_usage_error("%s: --gist-mask: the model has no gist tokens", model);
            goto done;
        }
        gi = (gist_io_t){.inner = io,
                         .n_kv = hp->n_head_kv,
                         .sinks = hp->gist_sinks,
                         .gist_first = hp->gist_first,
                         .n_gist = hp->n_gist,
                         .row_bytes = ggml_row_bytes(kv_type, hp->head_dim),
                         .ids = (const int32_t *const *)ids,
                         .sid = sid,
                         .max_len = max_len};
        gi.runs = malloc(sizeof(mdl_kv_chunk_t) * n_seq * hp->n_head_kv * max_len);
        bool ok = gi.runs != NULL;
        for (uint32_t s = 0; ok && s < n_seq; s++) {
            ok = (sid[s] = malloc(sizeof(int32_t) * len[s])) != NULL;
            /* a new sentence starts at each regular token that follows a gist token */
            for (uint32_t t = 0, cur = 0; ok && t < len[s]; t++) {
                if (t > 0 && !gist_is(&gi, ids[s][t]) && gist_is(&gi, ids[s][t - 1]))
                    cur++;
                sid[s][t] = (int32_t)cur;
            }
        }
        if (!ok) {
            rc = cmd_usage_error("out of memory");
            goto done;
        }
        io = (mdl_kv_io_t){.ctx = &gi, .view = gist_view};
        ubatch = 1;
    }

    /* the interleaved order of all items */
    tok = malloc(sizeof(int32_t) * total);
    pos = malloc(sizeof(int32_t) * total);
    seq = malloc(sizeof(int32_t) * total);
    want = malloc((size_t)ubatch);
    logits = malloc(sizeof(float) * (size_t)ubatch * hp->n_vocab);
    all = malloc(sizeof(float) * (size_t)total * hp->n_vocab);
    if (!tok || !pos || !seq || !want || !logits || !all) {
        rc = cmd_usage_error("out of memory for %u tokens", total);
        goto done;
    }
    uint32_t n = 0, first[MAX_SEQS];
    for (uint32_t s = 0, acc = 0; s < n_seq; acc += len[s], s++)
        first[s] = acc;
    for (uint32_t t = 0; t < max_len; t++)
        for (uint32_t s = 0; s < n_seq; s++)
            if (t < len[s]) {
                tok[n] = ids[s][t];
                pos[n] = (int32_t)t;
                seq[n] = (int32_t)s;
                n++;
            }

    for (uint32_t at = 0; at < total; at += (uint32_t)ubatch) {
        uint32_t nb = total - at < (uint32_t)ubatch ? total - at : (uint32_t)ubatch;
        memset(want, 1, nb); /* every item's logits */
        mdl_batch_t b = {
            .n = nb, .token = tok + at, .pos = pos + at, .seq = seq + at, .want = want};
        err_info_t e;
        err_clear(&e);
        if (mdl_forward(m, &b, &io, logits, &e)) {
            rc = cmd_usage_error("%s: %s", model, err_msg(&e));
            goto done;
        }
        mdl_flatkv_commit(kv);
        for (uint32_t i = 0; i < nb; i++) {
            uint32_t row = first[seq[at + i]] + (uint32_t)pos[at + i];
            memcpy(all + (size_t)row * hp->n_vocab, logits + (size_t)i * hp->n_vocab,
                   sizeof(float) * hp->n_vocab);
        }
    }

    f = fopen(out_path, "wb");
    if (!f || fwrite(all, sizeof(float) * hp->n_vocab, total, f) != total) {
        rc = cmd_usage_error("%s: cannot write: %s", out_path, strerror(errno));
        goto done;
    }
    if (fclose(f)) {
        f = NULL;
        rc = cmd_usage_error("%s: cannot write: %s", out_path, strerror(errno));
        goto done;
    }
    f = NULL;
    if (ret_path) {
        f = fopen(ret_path, "wb");
        bool ok = f != NULL;
        for (uint32_t s = 0; ok && s < n_seq; s++)
            for (uint32_t t = 0; ok && t < len[s]; t++)
                for (uint32_t l = 0; ok && l < hp->n_layer; l++)
                    for (uint32_t h = 0; ok && h < hp->n_head_kv; h++)
                        ok = fwrite(mdl_flatkv_logbeta(kv, s, l, h) + t, sizeof(float), 1, f) == 1;
        if (f && fclose(f))
            ok = false;
        f = NULL;
        if (!ok) {
            rc = cmd_usage_error("%s: cannot write: %s", ret_path, strerror(errno));
            goto done;
        }
    }
    rc = 0;
done:
    if (f)
        fclose(f);
    for (uint32_t s = 0; s < n_seq; s++) {
        free(ids[s]);
        free(sid[s]);
    }
    free(gi.runs);
    free(tok);
    free(pos);
    free(seq);
    free(want);
    free(logits);
    free(all);
    mdl_flatkv_destroy(&kv);
    mdl_destroy(&m);
    return rc;
}

/* ------------------------------------------------------------------ generate */

/* gist-model generate MODEL --prompt STR -n N [--temp T] [--seed S] [--top-k K] [--top-p P]
 *   [--min-p P] [--repeat-penalty R] [--repeat-last-n N] [--ctx N] [--threads N]
 * Prints the prompt, then each new token's text as soon as it is sampled, then a
 * newline. Sampling defaults: temp 0.8, top-k 40, top-p 0.95, min-p 0.05, no
 * repetition penalty (window 64), seed from the clock (printed on stderr); --temp 0
 * is greedy. Stops after N tokens, at end-of-sequence, or when the context
 * (default: the model's) is full. Timings go to stderr. */
int cmd_generate(int argc, char **argv)
{
    if (kv_mode_wanted(argc, argv)) /* the KV store under a policy: cmd_kv.c */
        return kv_cmd_generate(argc, argv);
    const char *model = NULL, *prompt = NULL;
    long threads = 0, n_gen = -1, ctx = 0;
    mdl_sampler_cfg_t sc;
    mdl_sampler_cfg_default(&sc);
    bool seeded = false;
    for (int i = 0; i < argc; i++) {
        const int k = cmd_sampler_opt(&sc, &seeded, argc, argv, &i);
        if (k < 0)
            return 2;
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
        } else if (a[0] == '-' || model) {
            return cmd_usage_error("generate: unexpected argument '%s'", a);
        } else {
            model = a;
        }
        if (bad)
            return 2;
    }
    if (!model || !prompt || n_gen < 0)
        return cmd_usage_error("usage: gist-model generate MODEL --prompt STR -n N [--temp T] "
                               "[--seed S] [--top-k K] [--top-p P] [--min-p P] "
                               "[--repeat-penalty R] [--threads N]");
    if (!seeded)
        sc.seed = (uint64_t)time(NULL);

    int rc = 2;
    mdl_t *m = NULL;
    mdl_flatkv_t *kv = NULL;
    mdl_sampler_t *smp = NULL;
    int32_t *ids = NULL, *pos = NULL;
    float *logits = NULL;
    size_t n_ids = 0;
    err_info_t e;
    err_clear(&e);
    if (load_model(model, threads, &m))
        goto done;
    const mdl_hparams_t *hp = mdl_hparams(m);
    const tok_t *tk = mdl_tok(m);
    if (!tk) {
        rc = cmd_usage_error("%s: the model file carries no tokenizer", model);
        goto done;
    }
    if (mdl_sampler_new(&sc, hp->n_vocab, &smp, &e)) {
        rc = cmd_usage_error("%s", err_msg(&e));
        goto done;
    }
    if (tok_encode(tk, prompt, strlen(prompt), true, false, &ids, &n_ids)) {
        rc = cmd_usage_error("%s: cannot tokenize the prompt", model);
        goto done;
    }
    if (n_ids == 0) {
        rc = cmd_usage_error("generate: the prompt is empty and the model has no BOS token");
        goto done;
    }
    if (ctx == 0)
        ctx = hp->n_ctx;
    if ((long)n_ids >= ctx) {
        rc = cmd_usage_error("generate: the prompt has %zu tokens, the context only %ld", n_ids,
                             ctx);
        goto done;
    }
    if (new_cache(m, 1, (uint32_t)ctx, DT_F32, 0, false, &kv))
        goto done;
    pos = malloc(sizeof(int32_t) * n_ids);
    logits = malloc(sizeof(float) * hp->n_vocab);
    if (!pos || !logits) {
        rc = cmd_usage_error("out of memory");
        goto done;
    }
    for (size_t i = 0; i < n_ids; i++) {
        pos[i] = (int32_t)i;
        mdl_sampler_accept(smp, ids[i]);
    }
    if (!seeded && sc.temp > 0.0f)
        fprintf(stderr, "seed: %llu\n", (unsigned long long)sc.seed);
    fputs(prompt, stdout);
    fflush(stdout);

    mdl_kv_io_t io = mdl_flatkv_io(kv);
    rc = 1;
    double t0 = cmd_now();
    mdl_batch_t b = {.n = (uint32_t)n_ids, .token = ids, .pos = pos}; /* logits of the last */
    if (mdl_forward(m, &b, &io, logits, &e)) {
        fprintf(stderr, "\ngist-model: %s\n", err_msg(&e));
        goto done;
    }
    mdl_flatkv_commit(kv);
    double t1 = cmd_now();
    int32_t cur_pos = (int32_t)n_ids;
    long made = 0;
    const int32_t eos = tok_eos(tk);
    bool first = n_ids == 1 && tok_bos(tk) >= 0; /* nothing printed yet after BOS */
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
        if (cur_pos >= ctx) {
            fprintf(stderr, "\ngist-model: context of %ld tokens is full\n", ctx);
            break;
        }
        mdl_batch_t d = {.n = 1, .token = &t, .pos = &cur_pos};
        if (mdl_forward(m, &d, &io, logits, &e)) {
            fprintf(stderr, "\ngist-model: %s\n", err_msg(&e));
            goto done;
        }
        mdl_flatkv_commit(kv);
        cur_pos++;
    }
    double t2 = cmd_now();
    fputc('\n', stdout);
    fflush(stdout);
    fprintf(stderr,
            "prompt: %zu tokens, %.1f tokens/s; generated: %ld tokens, %.1f tokens/s "
            "(%d threads)\n",
            n_ids, n_ids / (t1 - t0), made, made > 1 ? (made - 1) / (t2 - t1) : 0.0,
            mdl_threads(m));
    rc = 0;
done:
    free(ids);
    free(pos);
    free(logits);
    mdl_sampler_destroy(&smp);
    mdl_flatkv_destroy(&kv);
    mdl_destroy(&m);
    return rc;
}

/* ------------------------------------------------------------------ perplexity */


/* gist-model perplexity MODEL --file F [--ctx N] [--ubatch N] [--threads N]
 * Tokenizes the file (with BOS) and scores it in consecutive windows of N tokens
 * (default: the model's context), each evaluated from an empty cache. A window
 * starts at the previous window's last token, so every token after the first is
 * scored exactly once, from the window's earlier tokens. Prints progress on
 * stderr, then `tokens: K` (tokens scored) and `ppl: X` as the last stdout line. */
int cmd_perplexity(int argc, char **argv)
{
    if (kv_mode_wanted(argc, argv)) /* the KV store under a policy: cmd_kv.c */
        return kv_cmd_perplexity(argc, argv);
    const char *model = NULL, *path = NULL;
    long threads = 0, ctx = 0, ubatch = 256;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        bool has = i + 1 < argc;
        int bad = 0;
        if (!strcmp(a, "--file") && has)
            path = argv[++i];
        else if (!strcmp(a, "--ctx") && has)
            bad = cmd_parse_long(a, argv[++i], 2, INT32_MAX, &ctx);
        else if (!strcmp(a, "--ubatch") && has)
            bad = cmd_parse_long(a, argv[++i], 1, 1 << 20, &ubatch);
        else if (!strcmp(a, "--threads") && has)
            bad = cmd_parse_long(a, argv[++i], 0, 1024, &threads);
        else if (a[0] == '-' || model)
            return cmd_usage_error("perplexity: unexpected argument '%s'", a);
        else
            model = a;
        if (bad)
            return 2;
    }
    if (!model || !path)
        return cmd_usage_error("usage: gist-model perplexity MODEL --file F [--ctx N] "
                               "[--threads N]");

    int rc = 2;
    mdl_t *m = NULL;
    mdl_flatkv_t *kv = NULL;
    char *text = NULL;
    size_t text_len = 0, n_ids = 0;
    int32_t *ids = NULL, *pos = NULL;
    uint8_t *want = NULL;
    float *logits = NULL;
    if (cmd_read_file(path, &text, &text_len) || load_model(model, threads, &m))
        goto done;
    const mdl_hparams_t *hp = mdl_hparams(m);
    const tok_t *tk = mdl_tok(m);
    if (!tk) {
        rc = cmd_usage_error("%s: the model file carries no tokenizer", model);
        goto done;
    }
    if (tok_encode(tk, text, text_len, true, false, &ids, &n_ids)) {
        rc = cmd_usage_error("%s: cannot tokenize the text", path);
        goto done;
    }
    if (n_ids < 2) {
        rc = cmd_usage_error("%s: the text has fewer than 2 tokens", path);
        goto done;
    }
    if (ctx == 0)
        ctx = hp->n_ctx < 2 ? 2 : hp->n_ctx;
    if (ubatch > ctx)
        ubatch = ctx;
    if (new_cache(m, 1, (uint32_t)ctx, DT_F32, 0, false, &kv))
        goto done;
    pos = malloc(sizeof(int32_t) * (size_t)ubatch);
    want = malloc((size_t)ubatch);
    logits = malloc(sizeof(float) * (size_t)ubatch * hp->n_vocab);
    if (!pos || !want || !logits) {
        rc = cmd_usage_error("out of memory");
        goto done;
    }
    memset(want, 1, (size_t)ubatch);

    rc = 1;
    mdl_kv_io_t io = mdl_flatkv_io(kv);
    const size_t n_windows = (n_ids - 2) / (size_t)(ctx - 1) + 1;
    double nll = 0.0, t0 = cmd_now();
    size_t scored = 0, w = 0;
    for (size_t start = 0; start + 1 < n_ids; start += (size_t)ctx - 1, w++) {
        const size_t end = start + (size_t)ctx < n_ids ? start + (size_t)ctx : n_ids;
        mdl_flatkv_clear(kv, 0);
        for (size_t at = start; at < end; at += (size_t)ubatch) {
            const uint32_t nb = (uint32_t)(end - at < (size_t)ubatch ? end - at : (size_t)ubatch);
            for (uint32_t i = 0; i < nb; i++)
                pos[i] = (int32_t)(at + i - start);
            mdl_batch_t b = {.n = nb, .token = ids + at, .pos = pos, .want = want};
            err_info_t e;
            err_clear(&e);
            if (mdl_forward(m, &b, &io, logits, &e)) {
                fprintf(stderr, "gist-model: %s\n", err_msg(&e));
                goto done;
            }
            mdl_flatkv_commit(kv);
            for (uint32_t i = 0; i < nb && at + i + 1 < end; i++) {
                nll += mdl_token_nll(logits + (size_t)i * hp->n_vocab, hp->n_vocab, ids[at + i + 1]);
                scored++;
            }
        }
        fprintf(stderr, "[%zu/%zu] %zu tokens scored, ppl so far %.4f (%.1f tokens/s)\n", w + 1,
                n_windows, scored, exp(nll / scored), scored / (cmd_now() - t0));
    }
    printf("tokens: %zu\nppl: %.4f\n", scored, exp(nll / scored));
    rc = 0;
done:
    free(text);
    free(ids);
    free(pos);
    free(want);
    free(logits);
    mdl_flatkv_destroy(&kv);
    mdl_destroy(&m);
    return rc;
}
