/*
 * bench/bench_model.c — prefill and decode speed of whole models against the bandwidth
 * bound.
 *
 *   bench_model MODEL.gguf... [--threads 1,2] [--prefill 512] [--decode 128] [--reps 3]
 *
 * For each model and thread count: a prefill of N random tokens in one batch, then N
 * decode steps of one token each (a flat f32 KV cache, one sequence), repeated --reps
 * times with the thread counts alternated; medians are printed. Decode reads every
 * weight matrix once per token, so its bound is bandwidth / (weight bytes per token).
 * The bandwidth (best of 3 streaming reads of 1 GiB at the same thread count) is measured
 * right before each repetition, because this machine's drifts from minute to minute;
 * "of bound" is the median over repetitions of decode speed / that repetition's bound.
 * bench/run-model-bench.sh makes SmolLM2-135M- and Qwen3-0.6B-shaped models and runs this.
 */
#include "bench/bench_util.h"
#include "common/dtype.h"
#include "model/flatkv.h"
#include "model/gguf.h"
#include "model/llama.h"

#include <stdbool.h>

#define MAX_THREADS 8
#define MAX_REPS    15

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Bytes of weights one decode step reads: every matrix (2-D tensor) but the token
 * embedding, of which it reads one row, unless the output projection is tied to it. */
static double decode_bytes(const mdl_t *m)
{
    const gguf_t *g = mdl_gguf(m);
    const mdl_hparams_t *hp = mdl_hparams(m);
    double bytes = 0;
    for (uint64_t i = 0; i < gguf_tensor_count(g); i++) {
        const gguf_tensor_t *t = gguf_tensor_at(g, i);
        bool embd = gguf_str_eq(t->name, "token_embd.weight");
        if (t->n_dims >= 2 && (!embd || hp->tied))
            bytes += (double)t->nbytes;
        else if (embd)
            bytes += (double)t->nbytes / (double)t->ne[1];
    }
    return bytes;
}

/* The model's weight type: a K-quant mix by its llama.cpp file type (general.file_type),
 * else the type of the first feed-forward matrix. */
static const char *weight_name(const mdl_t *m)
{
    const gguf_t *g = mdl_gguf(m);
    uint32_t ft = 0;
    if (gguf_get_u32(g, "general.file_type", &ft, NULL) == 0) {
        if (ft == 15)
            return "q4_K_M";
        if (ft == 17)
            return "q5_K_M";
    }
    const gguf_tensor_t *t = gguf_tensor_find(g, "blk.0.ffn_up.weight");
    const ggml_type_info_t *ti = t ? ggml_type_get(t->type) : NULL;
    return ti ? ti->name : "?";
}

/* One prefill of n_prefill tokens and n_decode decode steps: seconds of the prefill, of all
 * decode steps, and of the fastest tenth of the steps (per step; on a machine shared with
 * other work, the steps that ran undisturbed). */
static int run_once(mdl_t *m, mdl_flatkv_t *kv, int n_prefill, int n_decode, uint64_t seed,
                    double *t_prefill, double *t_decode, double *t_step_fast)
{
    double *steps = malloc(sizeof(double) * n_decode);
    const mdl_hparams_t *hp = mdl_hparams(m);
    int32_t *tok = malloc(sizeof(int32_t) * n_prefill), *pos = malloc(sizeof(int32_t) * n_prefill);
    float *logits = malloc(sizeof(float) * hp->n_vocab);
    err_info_t e;
    err_clear(&e);
    int rc = ERR_NOMEM;
    if (!tok || !pos || !logits || !steps)
        goto done;
    for (int i = 0; i < n_prefill; i++) {
        tok[i] = (int32_t)(rng_next(&seed) % hp->n_vocab);
        pos[i] = i;
    }
    mdl_flatkv_clear(kv, 0);
    mdl_kv_io_t io = mdl_flatkv_io(kv);
    double t0 = bench_now();
    mdl_batch_t b = {.n = (uint32_t)n_prefill, .token = tok, .pos = pos};
    if ((rc = mdl_forward(m, &b, &io, logits, &e)))
        goto done;
    mdl_flatkv_commit(kv);
    double t1 = bench_now();
    for (int i = 0; i < n_decode; i++) {
        int32_t t = (int32_t)(rng_next(&seed) % hp->n_vocab), p = n_prefill + i;
        mdl_batch_t d = {.n = 1, .token = &t, .pos = &p};
        double ts = bench_now();
        if ((rc = mdl_forward(m, &d, &io, logits, &e)))
            goto done;
        mdl_flatkv_commit(kv);
        steps[i] = bench_now() - ts;
    }
    *t_prefill = t1 - t0;
    *t_decode = bench_now() - t1;
    qsort(steps, (size_t)n_decode, sizeof *steps, bench_cmp_double);
    *t_step_fast = steps[n_decode / 10];
done:
    if (rc)
        fprintf(stderr, "bench_model: forward failed: %s\n", e.msg[0] ? e.msg : err_str(rc));
    free(tok);
    free(pos);
    free(logits);
    free(steps);
    return rc;
}

int main(int argc, char **argv)
{
    int threads[MAX_THREADS] = {1, 2}, n_threads = 2, n_prefill = 512, n_decode = 128, reps = 3;
    const char *models[16];
    int n_models = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--threads") && i + 1 < argc) {
            n_threads = 0;
            for (char *p = strtok(argv[++i], ","); p && n_threads < MAX_THREADS;
                 p = strtok(NULL, ","))
                threads[n_threads++] = atoi(p) > 0 ? atoi(p) : 1;
        } else if (!strcmp(a, "--prefill") && i + 1 < argc) {
            n_prefill = atoi(argv[++i]);
        } else if (!strcmp(a, "--decode") && i + 1 < argc) {
            n_decode = atoi(argv[++i]);
        } else if (!strcmp(a, "--reps") && i + 1 < argc) {
            reps = atoi(argv[++i]);
        } else if (a[0] != '-' && n_models < 16) {
            models[n_models++] = a;
        } else {
            n_models = 0;
            break;
        }
    }
    if (n_models == 0 || n_threads == 0 || n_prefill < 1 || n_decode < 1 || reps < 1 ||
        reps > MAX_REPS) {
        fprintf(stderr,
                "usage: bench_model MODEL.gguf... [--threads 1,2] [--prefill N] "
                "[--decode N] [--reps N<=%d]\n",
                MAX_REPS);
        return 2;
    }

    bench_print_machine();
    bench_bw_t bwbuf;
    if (bench_bw_init(&bwbuf) != 0) {
        fprintf(stderr, "bench_model: no memory for the bandwidth buffer\n");
        return 1;
    }
    for (int k = 0; k < n_threads; k++) {
        double best, med;
        bench_bw_measure(&bwbuf, threads[k], 5, &best, &med);
        printf("# bandwidth %dT at start: best %.1f GB/s, median %.1f GB/s (streaming read of "
               "1 GiB)\n",
               threads[k], best, med);
    }
    printf("# prefill: %d tokens in one batch; decode: %d tokens after it; median of %d\n",
           n_prefill, n_decode, reps);
    printf("# prefill t/s: median and best repetition; decode t/s: all steps (median over\n"
           "# repetitions) and the fastest tenth of the steps (the steps no other process\n"
           "# disturbed, on a shared machine); bound = bandwidth / weight bytes per token\n");
    printf("%-6s %9s %3s %9s %8s %9s %8s %7s %9s %9s %9s\n", "type", "weight MB", "T", "prefill",
           "best", "decode", "fast10%", "bw GB/s", "bound t/s", "of bound", "fast/bnd");

    for (int mi = 0; mi < n_models; mi++) {
        mdl_t *m = NULL;
        mdl_flatkv_t *kv = NULL;
        err_info_t e;
        err_clear(&e);
        if (mdl_new(models[mi], &m, &e)) {
            fprintf(stderr, "bench_model: %s: %s\n", models[mi], e.msg);
            return 1;
        }
        const mdl_hparams_t *hp = mdl_hparams(m);
        mdl_flatkv_cfg_t c = {.n_layer = hp->n_layer,
                              .n_head_kv = hp->n_head_kv,
                              .head_dim = hp->head_dim,
                              .n_seq = 1,
                              .n_ctx = (uint32_t)(n_prefill + n_decode),
                              .type = DT_F32};
        if (mdl_flatkv_new(&c, &kv, &e)) {
            fprintf(stderr, "bench_model: KV cache: %s\n", e.msg);
            mdl_destroy(&m);
            return 1;
        }
        double bytes = decode_bytes(m);
        double tp[MAX_THREADS][MAX_REPS], td[MAX_THREADS][MAX_REPS], tf[MAX_THREADS][MAX_REPS];
        double bw[MAX_THREADS][MAX_REPS], frac[MAX_THREADS][MAX_REPS];
        /* one untimed pass maps the file in and sizes the scratch buffers */
        mdl_set_threads(m, threads[n_threads - 1]);
        if (run_once(m, kv, n_prefill, 4, 1, &tp[0][0], &td[0][0], &tf[0][0]))
            return 1;
        for (int r = 0; r < reps; r++)
            for (int k = 0; k < n_threads; k++) {
                double med;
                bench_bw_measure(&bwbuf, threads[k], 3, &bw[k][r], &med);
                mdl_set_threads(m, threads[k]);
                if (run_once(m, kv, n_prefill, n_decode, 100 + r, &tp[k][r], &td[k][r], &tf[k][r]))
                    return 1;
                frac[k][r] = (n_decode / td[k][r]) / (bw[k][r] * 1e9 / bytes);
            }
        for (int k = 0; k < n_threads; k++) {
            double p = n_prefill / bench_median(tp[k], reps);
            double pbest = 0;
            for (int r = 0; r < reps; r++)
                pbest = n_prefill / tp[k][r] > pbest ? n_prefill / tp[k][r] : pbest;
            double d = n_decode / bench_median(td[k], reps);
            double dfast = 1 / bench_median(tf[k], reps);
            double b = bench_median(bw[k], reps);
            printf("%-6s %9.1f %3d %9.1f %8.1f %9.1f %8.1f %7.1f %9.1f %8.0f%% %8.0f%%\n",
                   weight_name(m), bytes / 1e6, threads[k], p, pbest, d, dfast, b, b * 1e9 / bytes,
                   100 * bench_median(frac[k], reps), 100 * dfast / (b * 1e9 / bytes));
        }
        fflush(stdout);
        mdl_flatkv_destroy(&kv);
        mdl_destroy(&m);
    }
    bench_bw_fini(&bwbuf);
    return 0;
}
