/*
 * bench/bench_depth.c — decode and prefill speed at depth: how a token's cost grows with
 * the rows before it, with the full cache and under a byte budget, for each hot row type.
 *
 *   bench_depth MODEL.gguf [--depths 0,1024,4096,8192] [--kv-types f32,f16,q8_0]
 *               [--caches full,budget] [--budget 47M] [--decode 32] [--rounds 3]
 *               [--prefill 64] [--q-rows N,...] [--threads N] [--block-rows 64]
 *               [--policy auto] [--ubatch 256] [--seed 1]
 *
 * One variant is (row type, full cache or budget): a KV store of its own with one session
 * run the way gist-model runs one (tools/gist-model/kvrun.h: the runtime, the policy,
 * compaction under the budget). Every variant is prefilled with the same random tokens to
 * each depth in turn; at each depth the variants decode --decode tokens in each of --rounds
 * rounds, in an order that rotates every round, so that a machine whose speed drifts (other
 * work, bandwidth) shifts every variant alike. A decode step is a whole step: the forward
 * pass, storing its rows, and the policy's compaction when the budget asks for it.
 * Printed per variant and depth: the median decode tokens/s over the rounds, the ratio to
 * the same variant's depth-0 figure of this run, the same ratio paired (the figure to compare
 * across machines), the bytes and rows the session held. Paired: in every round each variant
 * also decodes as many steps in a second session of its own, emptied and started again at
 * depth 0 (so it holds 1 to 1 + decode rows), right before or after (alternately) the steps
 * at depth; the median over rounds of the two speeds' ratio. The plain ratio divides figures
 * taken minutes apart, and this machine's bandwidth drifts from minute to minute by more than
 * the changes measured. Decoded tokens add rows: a depth is the prefilled rows, and each
 * depth's untimed first step and rounds add up to 1 + rounds x decode more.
 *
 * Prefill: after the decode rounds at each depth, every variant runs one chunk of --prefill
 * tokens (gistd's prefill_chunk is 64) in each round, once for each --q-rows setting (the
 * queries of a chunk that read their rows together, mdl_set_attn_q_rows; 1 gives each query
 * its own pass), all alternated as the decode steps are. Printed per variant, setting and
 * depth: the median prefill tokens/s, its ratio to the same variant's depth 0 and to the
 * first setting at the same depth. The chunks add rounds x prefill x settings rows more.
 */
#include "bench/bench_util.h"
#include "common/dtype.h"
#include "model/llama.h"
#include "tools/gist-model/kvrun.h"

#include <stdbool.h>

#define MAX_DEPTHS 8
#define MAX_TYPES  3
#define MAX_VARS   (2 * MAX_TYPES)
#define MAX_ROUNDS 25
#define MAX_QROWS  4

typedef struct variant {
    uint32_t type;
    bool budget;
    kvr_t *r;
    kvr_t *ref;                            /* the paired session at depth 0, emptied every round */
    uint32_t fed;                          /* tokens prefilled so far */
    double tps[MAX_DEPTHS];                /* median tokens/s at each depth */
    double paired[MAX_DEPTHS];             /* median of its ratio to the paired depth 0 */
    double pre_tps[MAX_QROWS][MAX_DEPTHS]; /* median prefill tokens/s per --q-rows setting */
    size_t bytes[MAX_DEPTHS];              /* session bytes after the depth's rounds */
    uint64_t rows[MAX_DEPTHS];             /* rows summed over lanes, likewise */
    double in_runs[MAX_DEPTHS];            /* share of its blocks in payload runs */
} variant_t;

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* n decode steps of random tokens through r: their seconds into *secs; 0 or an error. */
static int decode(kvr_t *r, int n, uint64_t *rs, uint32_t n_vocab, float *last, double *secs,
                  err_info_t *e)
{
    const double t0 = bench_now();
    for (int s = 0; s < n; s++) {
        const int32_t t = (int32_t)(3 + rng_next(rs) % (n_vocab - 3));
        const int rc = kvr_feed(r, &t, 1, NULL, last, e);
        if (rc)
            return rc;
    }
    *secs = bench_now() - t0;
    return 0;
}

/* The paired depth-0 figure: ref emptied, one step untimed (as at every depth), then n. */
static int decode_ref(kvr_t *ref, int n, uint64_t *rs, uint32_t n_vocab, float *last, double *secs,
                      err_info_t *e)
{
    double untimed;
    int rc = kvr_reset(ref, e);
    if (!rc)
        rc = decode(ref, 1, rs, n_vocab, last, &untimed, e);
    return rc ? rc : decode(ref, n, rs, n_vocab, last, secs, e);
}

static const char *type_name(uint32_t t)
{
    return t == DT_F32 ? "f32" : t == DT_F16 ? "f16" : "q8_0";
}

/* "47M", "512K", "1G", plain bytes; 0 on a bad size. */
static size_t parse_size(const char *s)
{
    char *end;
    double v = strtod(s, &end);
    double mul = *end == 'K' ? 1024.0 : *end == 'M' ? 1048576.0 : *end == 'G' ? 1073741824.0 : 1.0;
    if (end == s || v <= 0 || (*end && end[1]) || (*end && mul == 1.0))
        return 0;
    return (size_t)(v * mul);
}

static int usage(void)
{
    fprintf(stderr, "usage: bench_depth MODEL.gguf [--depths 0,1024,4096,8192] "
                    "[--kv-types f32,f16,q8_0] [--caches full,budget] [--budget 47M] "
                    "[--decode 32] [--rounds 3] [--prefill 64] [--q-rows N,...] [--threads N] "
                    "[--block-rows 64] [--policy auto] [--ubatch 256] [--seed 1]\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage();
    const char *path = argv[1], *policy = "auto";
    long depths[MAX_DEPTHS] = {0, 1024, 4096, 8192};
    long q_rows[MAX_QROWS] = {0};
    int n_depths = 4, n_types = 3, n_decode = 32, rounds = 3, threads = 0, n_prefill = 64;
    int n_qrows = 0;
    bool caches[2] = {true, true}; /* full, budget */
    uint32_t types[MAX_TYPES] = {DT_F32, DT_F16, DT_Q8_0}, block_rows = 64, ubatch = 256;
    size_t budget = 47u << 20;
    uint64_t seed = 1;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            return usage();
        i++;
        if (!strcmp(a, "--depths")) {
            if ((n_depths = bench_parse_list(v, depths, MAX_DEPTHS)) < 1)
                return usage();
        } else if (!strcmp(a, "--kv-types")) {
            n_types = bench_parse_row_types(v, types, MAX_TYPES);
            if (n_types < 1)
                return usage();
        } else if (!strcmp(a, "--caches")) {
            caches[0] = strstr(v, "full") != NULL;
            caches[1] = strstr(v, "budget") != NULL;
            if (!caches[0] && !caches[1])
                return usage();
        } else if (!strcmp(a, "--prefill")) {
            n_prefill = atoi(v);
        } else if (!strcmp(a, "--q-rows")) {
            if ((n_qrows = bench_parse_list(v, q_rows, MAX_QROWS)) < 1)
                return usage();
            for (int k = 0; k < n_qrows; k++)
                if (q_rows[k] < 1)
                    return usage();
        } else if (!strcmp(a, "--budget")) {
            if (!(budget = parse_size(v)))
                return usage();
        } else if (!strcmp(a, "--decode")) {
            n_decode = atoi(v);
        } else if (!strcmp(a, "--rounds")) {
            rounds = atoi(v);
        } else if (!strcmp(a, "--threads")) {
            threads = atoi(v);
        } else if (!strcmp(a, "--block-rows")) {
            block_rows = (uint32_t)atoi(v);
        } else if (!strcmp(a, "--ubatch")) {
            ubatch = (uint32_t)atoi(v);
        } else if (!strcmp(a, "--policy")) {
            policy = v;
        } else if (!strcmp(a, "--seed")) {
            seed = strtoull(v, NULL, 10);
        } else {
            return usage();
        }
    }
    if (n_decode < 1 || rounds < 1 || rounds > MAX_ROUNDS || threads < 0 || ubatch < 1 ||
        n_prefill < 0)
        return usage();
    for (int d = 1; d < n_depths; d++)
        if (depths[d] <= depths[d - 1]) {
            fprintf(stderr, "bench_depth: --depths must increase\n");
            return 2;
        }

    err_info_t e;
    err_clear(&e);
    mdl_t *m = NULL;
    if (mdl_new(path, &m, &e)) {
        fprintf(stderr, "bench_depth: %s: %s\n", path, e.msg);
        return 1;
    }
    if (threads)
        mdl_set_threads(m, threads);
    const uint32_t q_rows_model = mdl_attn_q_rows(m);
    if (!n_qrows)
        q_rows[n_qrows++] = q_rows_model;
    const mdl_hparams_t *hp = mdl_hparams(m);
    if ((uint64_t)depths[n_depths - 1] + (uint64_t)rounds * n_decode * n_depths > hp->n_ctx)
        fprintf(stderr,
                "bench_depth: note: the deepest full cache passes the model's context "
                "(%u): fine for speed, not for text\n",
                hp->n_ctx);

    variant_t vars[MAX_VARS];
    int n_vars = 0;
    for (int t = 0; t < n_types; t++)
        for (int b = 0; b < 2; b++) {
            if (!caches[b])
                continue;
            variant_t *v = &vars[n_vars];
            memset(v, 0, sizeof *v);
            v->type = types[t];
            v->budget = b;
            kvr_cfg_t c = {.policy = b ? policy : "full",
                           .hard = b ? budget : 0,
                           .block_rows = block_rows,
                           .hot_type = types[t],
                           .ubatch = ubatch};
            if (kvr_new(m, &c, &v->r, &e) || kvr_new(m, &c, &v->ref, &e)) {
                fprintf(stderr, "bench_depth: %s rows, %s: %s\n", type_name(types[t]),
                        b ? "budget" : "full", e.msg);
                return 1;
            }
            n_vars++;
        }

    bench_print_machine();
    printf("# model: %s (%u layers, %u kv-heads of %u, %d threads)\n", path, hp->n_layer,
           hp->n_head_kv, hp->head_dim, mdl_threads(m));
    printf("# %d variants alternated in %d rounds of %d decode steps at each depth; policy "
           "'%s' under a budget of %.1f MB, 'full' without; blocks of %u rows\n",
           n_vars, rounds, n_decode, policy, budget / 1048576.0, block_rows);

    /* one token stream for everyone: the prefill, then what the decode steps feed */
    const long max_tok = depths[n_depths - 1];
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)(max_tok ? max_tok : 1));
    uint64_t rs = seed;
    for (long i = 0; i < max_tok; i++)
        tok[i] = (int32_t)(3 + rng_next(&rs) % (hp->n_vocab - 3));
    float *last = malloc(sizeof(float) * hp->n_vocab);
    double t_round[MAX_VARS][MAX_ROUNDS], t_pre[MAX_VARS * MAX_QROWS][MAX_ROUNDS];
    double ratio[MAX_VARS][MAX_ROUNDS];
    int32_t *chunk = malloc(sizeof(int32_t) * (size_t)(n_prefill ? n_prefill : 1));
    int rc = 0;

    for (int d = 0; d < n_depths && !rc; d++) {
        const double t_fill = bench_now();
        for (int vi = 0; vi < n_vars && !rc; vi++) {
            variant_t *v = &vars[vi];
            const uint32_t n = (uint32_t)(depths[d] - v->fed);
            if (n && (rc = kvr_feed(v->r, tok + v->fed, n, NULL, last, &e)))
                fprintf(stderr, "bench_depth: prefill of %s: %s\n", type_name(v->type), e.msg);
            v->fed = (uint32_t)depths[d];
        }
        fprintf(stderr, "bench_depth: depth %ld: prefilled in %.1f s, decoding\n", depths[d],
                bench_now() - t_fill);
        for (int vi = 0; vi < n_vars && !rc; vi++) { /* one step untimed: scratch grows */
            double untimed;
            if ((rc = decode(vars[vi].r, 1, &rs, hp->n_vocab, last, &untimed, &e)))
                fprintf(stderr, "bench_depth: decode: %s\n", e.msg);
        }
        for (int r = 0; r < rounds && !rc; r++)
            for (int k = 0; k < n_vars && !rc; k++) {
                const int x = (k + r) % n_vars;
                variant_t *v = &vars[x];
                double t_ref = 0;
                if (r % 2)
                    rc = decode_ref(v->ref, n_decode, &rs, hp->n_vocab, last, &t_ref, &e);
                if (!rc)
                    rc = decode(v->r, n_decode, &rs, hp->n_vocab, last, &t_round[x][r], &e);
                if (!rc && r % 2 == 0)
                    rc = decode_ref(v->ref, n_decode, &rs, hp->n_vocab, last, &t_ref, &e);
                ratio[x][r] = rc ? 0 : t_ref / t_round[x][r];
                if (rc)
                    fprintf(stderr, "bench_depth: decode of %s: %s\n", type_name(v->type), e.msg);
            }
        /* prefill: one chunk per variant and setting in each round, the order rotating */
        const int n_runs = n_vars * n_qrows;
        for (int r = 0; r < rounds && n_prefill && !rc; r++)
            for (int k = 0; k < n_runs && !rc; k++) {
                const int x = (k + r) % n_runs;
                variant_t *v = &vars[x / n_qrows];
                for (int t = 0; t < n_prefill; t++)
                    chunk[t] = (int32_t)(3 + rng_next(&rs) % (hp->n_vocab - 3));
                mdl_set_attn_q_rows(m, (uint32_t)q_rows[x % n_qrows]);
                const double t0 = bench_now();
                rc = kvr_feed(v->r, chunk, (uint32_t)n_prefill, NULL, last, &e);
                t_pre[x][r] = bench_now() - t0;
                if (rc)
                    fprintf(stderr, "bench_depth: prefill of %s: %s\n", type_name(v->type), e.msg);
            }
        mdl_set_attn_q_rows(m, q_rows_model);
        for (int x = 0; x < n_runs && n_prefill && !rc; x++)
            vars[x / n_qrows].pre_tps[x % n_qrows][d] = n_prefill / bench_median(t_pre[x], rounds);
        for (int vi = 0; vi < n_vars && !rc; vi++) {
            kvr_figures_t f;
            kvr_figures(vars[vi].r, &f);
            vars[vi].tps[d] = n_decode / bench_median(t_round[vi], rounds);
            vars[vi].paired[d] = bench_median(ratio[vi], rounds);
            vars[vi].bytes[d] = f.bytes;
            vars[vi].rows[d] = f.rows;
            vars[vi].in_runs[d] = f.blocks ? (double)f.run_blocks / (double)f.blocks : 0.0;
        }
    }

    if (!rc) {
        printf("%-5s %-6s %7s %9s %9s %7s %10s %9s %8s\n", "rows", "cache", "depth", "tok/s",
               "of d0", "paired", "KV MB", "rows/lane", "in runs");
        const uint64_t n_lane = (uint64_t)hp->n_layer * hp->n_head_kv;
        for (int vi = 0; vi < n_vars; vi++)
            for (int d = 0; d < n_depths; d++) {
                const variant_t *v = &vars[vi];
                printf("%-5s %-6s %7ld %9.1f %8.0f%% %6.0f%% %10.1f %9llu %7.0f%%\n",
                       type_name(v->type), v->budget ? "budget" : "full", depths[d], v->tps[d],
                       100.0 * v->tps[d] / v->tps[0], 100.0 * v->paired[d], v->bytes[d] / 1048576.0,
                       (unsigned long long)(v->rows[d] / n_lane), 100.0 * v->in_runs[d]);
            }
    }
    if (!rc && n_prefill) {
        printf("\n# prefill: chunks of %d tokens, the queries of a chunk in tiles of q-rows "
               "(1: each alone)\n",
               n_prefill);
        printf("%-5s %-6s %6s %7s %9s %9s %9s\n", "rows", "cache", "q-rows", "depth", "tok/s",
               "of d0", "of first");
        for (int vi = 0; vi < n_vars; vi++)
            for (int k = 0; k < n_qrows; k++)
                for (int d = 0; d < n_depths; d++) {
                    const variant_t *v = &vars[vi];
                    printf("%-5s %-6s %6ld %7ld %9.1f %8.0f%% %8.2fx\n", type_name(v->type),
                           v->budget ? "budget" : "full", q_rows[k], depths[d], v->pre_tps[k][d],
                           100.0 * v->pre_tps[k][d] / v->pre_tps[k][0],
                           v->pre_tps[k][d] / v->pre_tps[0][d]);
                }
    }
    for (int vi = 0; vi < n_vars; vi++) {
        kvr_destroy(&vars[vi].r);
        kvr_destroy(&vars[vi].ref);
    }
    free(chunk);
    free(tok);
    free(last);
    mdl_destroy(&m);
    return rc ? 1 : 0;
}
