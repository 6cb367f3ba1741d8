/*
 * bench/bench_batch.c — what the forward pass of a step of N decoders costs against a step
 * of one: the most a daemon step of N sessions can gain over one session before any
 * daemon work (bench_daemon measures the daemon's own).
 *
 *   bench_batch MODEL.gguf [--batch 8] [--threads 1,2] [--steps 200] [--kv-type f16]
 *
 * Two flat KV caches (one sequence; N sequences) are fed one token a sequence per step, the
 * step of one and the step of N alternated (which goes first alternates too), up to
 * --steps positions. Per thread count it prints the step times, the median and the fastest
 * tenth (the steps no other process disturbed, on a shared machine), and the speedup the
 * forward allows: N x t(1) / t(N).
 */
#include "bench/bench_util.h"
#include "common/dtype.h"
#include "model/flatkv.h"
#include "model/llama.h"

#define MAX_THREADS 8
#define MAX_BATCH   64

/* One decode step of n sequences at position p; its seconds, or a negative value. */
static double step(mdl_t *m, mdl_flatkv_t *kv, uint32_t n, int32_t p, float *logits)
{
    const mdl_hparams_t *hp = mdl_hparams(m);
    int32_t tok[MAX_BATCH], pos[MAX_BATCH], seq[MAX_BATCH];
    uint8_t want[MAX_BATCH];
    for (uint32_t i = 0; i < n; i++) {
        tok[i] = (int32_t)((p * 7u + i * 13u) % hp->n_vocab);
        pos[i] = p;
        seq[i] = (int32_t)i;
        want[i] = 1;
    }
    const mdl_batch_t b = {.n = n, .token = tok, .pos = pos, .seq = seq, .want = want};
    const mdl_kv_io_t io = mdl_flatkv_io(kv);
    err_info_t e;
    err_clear(&e);
    const double t0 = bench_now();
    if (mdl_forward(m, &b, &io, logits, &e)) {
        fprintf(stderr, "bench_batch: forward: %s\n", err_msg(&e));
        return -1;
    }
    const double dt = bench_now() - t0;
    mdl_flatkv_commit(kv);
    return dt;
}

int main(int argc, char **argv)
{
    const char *model = NULL, *kv_type = "f16";
    int threads[MAX_THREADS] = {1, 2}, n_threads = 2, n_steps = 200;
    uint32_t batch = 8;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--batch") && v) {
            batch = (uint32_t)atoi(argv[++i]);
        } else if (!strcmp(a, "--steps") && v) {
            n_steps = atoi(argv[++i]);
        } else if (!strcmp(a, "--kv-type") && v) {
            kv_type = argv[++i];
        } else if (!strcmp(a, "--threads") && v) {
            n_threads = 0;
            for (char *p = argv[++i]; *p && n_threads < MAX_THREADS;) {
                threads[n_threads++] = (int)strtol(p, &p, 10);
                p += *p == ',';
            }
        } else if (a[0] != '-' && !model) {
            model = a;
        } else {
            fprintf(stderr, "usage: bench_batch MODEL.gguf [--batch 8] [--threads 1,2] "
                            "[--steps 200] [--kv-type f32|f16|q8_0]\n");
            return 2;
        }
    }
    const uint32_t type = !strcmp(kv_type, "f32")    ? DT_F32
                          : !strcmp(kv_type, "q8_0") ? DT_Q8_0
                                                     : DT_F16;
    if (!model || batch < 2 || batch > MAX_BATCH || n_steps < 20 ||
        (type == DT_F16 && strcmp(kv_type, "f16"))) {
        fprintf(stderr,
                "bench_batch: give a model, --batch 2..%d, --steps >= 20, --kv-type "
                "f32, f16 or q8_0\n",
                MAX_BATCH);
        return 2;
    }
    mdl_t *m = NULL;
    err_info_t e;
    err_clear(&e);
    if (mdl_new(model, &m, &e)) {
        fprintf(stderr, "bench_batch: %s: %s\n", model, err_msg(&e));
        return 1;
    }
    const mdl_hparams_t *hp = mdl_hparams(m);
    bench_print_machine();
    printf("# model: %s: n_embd %u, n_layer %u, n_vocab %u; KV %s; %d steps of 1 and of %u "
           "sequences, alternated\n",
           model, hp->n_embd, hp->n_layer, hp->n_vocab, kv_type, n_steps, batch);
    printf("%3s %12s %12s %12s %12s %10s %10s\n", "T", "1: med ms", "1: fast ms", "N: med ms",
           "N: fast ms", "speedup", "fast");
    float *logits = malloc(sizeof(float) * hp->n_vocab * batch);
    double *t1 = malloc(sizeof(double) * (size_t)n_steps);
    double *tn = malloc(sizeof(double) * (size_t)n_steps);
    int rc = logits && t1 && tn ? 0 : 1;
    for (int k = 0; k < n_threads && !rc; k++) {
        mdl_flatkv_t *kv1 = NULL, *kvn = NULL;
        mdl_flatkv_cfg_t c = {.n_layer = hp->n_layer,
                              .n_head_kv = hp->n_head_kv,
                              .head_dim = hp->head_dim,
                              .n_seq = 1,
                              .n_ctx = (uint32_t)n_steps + 1,
                              .type = type,
                              .chunk_rows = 64};
        rc = mdl_flatkv_new(&c, &kv1, &e);
        c.n_seq = batch;
        if (!rc)
            rc = mdl_flatkv_new(&c, &kvn, &e);
        if (rc) {
            fprintf(stderr, "bench_batch: KV cache: %s\n", err_msg(&e));
            mdl_flatkv_destroy(&kv1);
            break;
        }
        mdl_set_threads(m, threads[k]);
        for (int p = 0; p < n_steps && !rc; p++) {
            const bool one_first = p % 2 == 0;
            const double a = step(m, one_first ? kv1 : kvn, one_first ? 1 : batch, p, logits);
            const double b = step(m, one_first ? kvn : kv1, one_first ? batch : 1, p, logits);
            rc = a < 0 || b < 0;
            t1[p] = one_first ? a : b;
            tn[p] = one_first ? b : a;
        }
        mdl_flatkv_destroy(&kv1);
        mdl_flatkv_destroy(&kvn);
        if (rc)
            break;
        /* the first tenth warms the caches and sizes the scratch: left out */
        const int skip = n_steps / 10, n = n_steps - skip;
        const double m1 = bench_median(t1 + skip, n), mn = bench_median(tn + skip, n);
        qsort(t1 + skip, (size_t)n, sizeof *t1, bench_cmp_double);
        qsort(tn + skip, (size_t)n, sizeof *tn, bench_cmp_double);
        const double f1 = t1[skip + n / 20],
                     fn = tn[skip + n / 20]; /* middle of the fastest tenth */
        printf("%3d %12.2f %12.2f %12.2f %12.2f %10.2f %10.2f\n", threads[k], m1 * 1e3, f1 * 1e3,
               mn * 1e3, fn * 1e3, batch * m1 / mn, batch * f1 / fn);
    }
    free(logits);
    free(t1);
    free(tn);
    mdl_destroy(&m);
    return rc;
}
