/*
 * bench/bench_kvstore.c — costs of the KV store's verbs, on a TinyLlama-shaped session
 * (22 layers x 4 kv-heads x 64 dims = 88 lanes, f16 hot rows, 64-row blocks).
 *
 *   append    rows per second through reserve/commit: decode (1 token) and prefill (64)
 *   view      building the chunk views of every lane (once per decode step)
 *   replace   a 20-token span -> 2 gist rows in every lane, at the old end and the middle
 *   evict     16 scattered rows, or a 32-row run, from one lane
 *   bytes     reading a session's and the store's bytes: the O(1) counters (kv_session_bytes,
 *             kv_store_bytes) against the walks of every block and row (kv_session_stats,
 *             kv_store_stats), on sessions of 1,024 and 4,096 tokens
 *   attention the same naive attention loop over a lane whose 2048 rows sit in full
 *             blocks (half q8_0, half f16, two runs) and over the same rows in 8-row
 *             chunks of alternating tier (the worst layout demotion can make), and over a
 *             lane after random evictions and gists (packed by the store)
 * Variants are alternated and medians quoted. Usage: bench_kvstore [rounds] (default 7).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/dtype.h"
#include "kvstore/kvstore.h"

#define NLAYER 22
#define NHEAD  4
#define NL     (NLAYER * NHEAD)
#define HD     64

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *x, int n)
{
    qsort(x, (size_t)n, sizeof *x, cmp_double);
    return n % 2 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}

static uint64_t rng_s = 12345;
static float frand(void)
{
    rng_s = rng_s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(rng_s >> 11) * 0x1p-53 * 2.0 - 1.0);
}

static void die(int rc, const err_info_t *e, const char *what)
{
    if (rc) {
        fprintf(stderr, "bench_kvstore: %s: %s\n", what, err_msg(e));
        exit(1);
    }
}

/* Scratch rows for every lane: what the forward pass would have written. */
static float *g_k, *g_v;
static const float *g_kp[NL], *g_vp[NL];
static uint32_t g_tok[4096];

static void scratch_init(uint32_t n)
{
    g_k = malloc(sizeof(float) * NL * n * HD);
    g_v = malloc(sizeof(float) * NL * n * HD);
    for (size_t i = 0; i < (size_t)NL * n * HD; i++) {
        g_k[i] = frand();
        g_v[i] = frand();
    }
    for (int l = 0; l < NL; l++) {
        g_kp[l] = g_k + (size_t)l * n * HD;
        g_vp[l] = g_v + (size_t)l * n * HD;
    }
}

static void append(kv_store_t *st, uint32_t sid, uint32_t n)
{
    err_info_t e;
    die(kv_reserve(st, sid, n, &e), &e, "reserve");
    kv_append_t a = {.n = n, .tokens = g_tok, .k = g_kp, .v = g_vp};
    die(kv_commit(st, sid, &a, &e), &e, "commit");
}

static kv_store_t *new_store(uint32_t n_layer, uint32_t n_head)
{
    kv_store_config_t cfg = {
        .n_layer = n_layer, .n_head_kv = n_head, .head_dim = HD, .hot_type = DT_F16};
    kv_store_t *st;
    err_info_t e;
    die(kv_store_new(&cfg, &st, &e), &e, "store");
    return st;
}

static uint32_t new_session(kv_store_t *st)
{
    uint32_t sid;
    err_info_t e;
    die(kv_session_create(st, NULL, &sid, &e), &e, "session");
    return sid;
}

/* ---- append, view ---- */

static void bench_append(int rounds)
{
    double dec[64], pre[64], view[64];
    kv_chunk_t ch[256];
    for (int r = 0; r < rounds; r++) {
        kv_store_t *st = new_store(NLAYER, NHEAD);
        uint32_t a = new_session(st), b = new_session(st);
        double t0 = now();
        for (int i = 0; i < 1024; i++)
            append(st, a, 1);
        double t1 = now();
        for (int i = 0; i < 16; i++)
            append(st, b, 64);
        double t2 = now();
        dec[r] = 1024.0 * NL / (t1 - t0);
        pre[r] = 1024.0 * NL / (t2 - t1);
        double t3 = now();
        for (int i = 0; i < 100; i++)
            for (uint32_t l = 0; l < NL; l++) {
                uint32_t nc;
                kv_lane_view(st, a, l / NHEAD, l % NHEAD, ch, 256, &nc);
            }
        view[r] = (now() - t3) / 100.0;
        if (r == 0) {
            kv_stats_t s;
            kv_session_stats(st, a, &s);
            printf("session of 1024 tokens: %zu bytes (%.0f per token, %zu blocks of %zu), "
                   "fragmentation %.3f\n",
                   s.bytes, (double)s.bytes / 1024.0, (size_t)s.blocks, kv_block_bytes(st, DT_F16),
                   s.fragmentation);
        }
        kv_store_destroy(&st);
    }
    printf("append, decode (1 token x %d lanes per commit): %.2f M rows/s (%.0f tokens/s)\n", NL,
           median(dec, rounds) / 1e6, median(dec, rounds) / NL);
    printf("append, prefill (64 tokens per commit):          %.2f M rows/s (%.0f tokens/s)\n",
           median(pre, rounds) / 1e6, median(pre, rounds) / NL);
    printf("views of all %d lanes (1024 rows each):          %.1f us\n", NL,
           median(view, rounds) * 1e6);
}

/* ---- replace, evict ---- */

static void gist_span(kv_store_t *st, uint32_t sid, float p0, float p1)
{
    static float k[2 * HD], v[2 * HD];
    static kv_row_meta_t m[2];
    static const float *kp[NL], *vp[NL];
    static const kv_row_meta_t *mp[NL];
    static uint32_t n[NL];
    for (int j = 0; j < 2; j++)
        m[j] = (kv_row_meta_t){.pos = p0 + (float)j * (p1 - p0) / 2.0f,
                               .mass = 10.0f,
                               .first = (uint32_t)p0,
                               .last = (uint32_t)p1,
                               .kind = KV_KIND_GIST,
                               .level = 1};
    for (int l = 0; l < NL; l++) {
        kp[l] = k;
        vp[l] = v;
        mp[l] = m;
        n[l] = 2;
    }
    kv_rows_t r = {.n = n, .k = kp, .v = vp, .meta = mp};
    err_info_t e;
    die(kv_span_replace(st, sid, p0, p1, &r, &e), &e, "replace");
}

static void bench_edits(int rounds)
{
    double old_end[64], middle[64], scat[64], run[64];
    for (int r = 0; r < rounds; r++) {
        kv_store_t *st = new_store(NLAYER, NHEAD);
        uint32_t sid = new_session(st);
        for (int i = 0; i < 32; i++)
            append(st, sid, 64); /* 2048 tokens */
        /* alternate: a span at the old end (after 4 sinks), then one in the middle */
        double t0 = now();
        for (int i = 0; i < 10; i++)
            gist_span(st, sid, 4.0f + 20.0f * (float)i, 23.0f + 20.0f * (float)i);
        double t1 = now();
        for (int i = 0; i < 10; i++)
            gist_span(st, sid, 1000.0f + 20.0f * (float)i, 1019.0f + 20.0f * (float)i);
        double t2 = now();
        old_end[r] = (t1 - t0) / 10.0;
        middle[r] = (t2 - t1) / 10.0;
        uint32_t idx[32];
        err_info_t e;
        double t3 = now();
        for (int i = 0; i < 10; i++) {
            for (int j = 0; j < 16; j++)
                idx[j] = 100u + 97u * (uint32_t)j + (uint32_t)i;
            die(kv_lane_evict(st, sid, (uint32_t)i % NLAYER, 0, idx, 16, &e), &e, "evict");
        }
        double t4 = now();
        for (int i = 0; i < 10; i++) {
            for (int j = 0; j < 32; j++)
                idx[j] = 500u + (uint32_t)j;
            die(kv_lane_evict(st, sid, (uint32_t)i % NLAYER, 1, idx, 32, &e), &e, "evict");
        }
        double t5 = now();
        scat[r] = (t4 - t3) / 10.0;
        run[r] = (t5 - t4) / 10.0;
        kv_store_destroy(&st);
    }
    printf("span replace (20 tokens -> 2 gists, %d lanes of ~2000 rows), old end: %.1f us, "
           "middle: %.1f us\n",
           NL, median(old_end, rounds) * 1e6, median(middle, rounds) * 1e6);
    printf("evict from one lane of ~2000 rows: 16 scattered rows %.1f us, a 32-row run %.1f "
           "us\n",
           median(scat, rounds) * 1e6, median(run, rounds) * 1e6);
}

/* ---- attention ---- */

static void chunk_row(uint32_t type, const void *base, uint32_t r, float *out)
{
    if (type == DT_F32) {
        memcpy(out, (const float *)base + (size_t)r * HD, HD * sizeof(float));
    } else if (type == DT_F16) {
        const uint16_t *h = (const uint16_t *)base + (size_t)r * HD;
        for (int d = 0; d < HD; d++)
            out[d] = dt_f16_to_f32(h[d]);
    } else {
        const block_q8_0 *b = (const block_q8_0 *)base + (size_t)r * (HD / QK8_0);
        for (int g = 0; g < HD / QK8_0; g++) {
            float d = dt_f16_to_f32(b[g].d);
            for (int j = 0; j < QK8_0; j++)
                out[g * QK8_0 + j] = d * (float)b[g].qs[j];
        }
    }
}

/* One query over a lane: scores, softmax with bias, weighted sum of V. */
static float attend(const kv_chunk_t *ch, uint32_t nc, const float *q, float *out, float *sc)
{
    float row[HD], mx = -INFINITY, sum = 0.0f;
    uint32_t n = 0;
    for (uint32_t c = 0; c < nc; c++)
        for (uint32_t r = 0; r < ch[c].n; r++, n++) {
            chunk_row(ch[c].type, ch[c].k, r, row);
            float s = 0.0f;
            for (int d = 0; d < HD; d++)
                s += q[d] * row[d];
            sc[n] = s * 0.125f + ch[c].bias[r];
            mx = fmaxf(mx, sc[n]);
        }
    memset(out, 0, sizeof(float) * HD);
    n = 0;
    for (uint32_t c = 0; c < nc; c++)
        for (uint32_t r = 0; r < ch[c].n; r++, n++) {
            float p = expf(sc[n] - mx);
            sum += p;
            chunk_row(ch[c].type, ch[c].v, r, row);
            for (int d = 0; d < HD; d++)
                out[d] += p * row[d];
        }
    for (int d = 0; d < HD; d++)
        out[d] /= sum;
    return out[0];
}

static double time_attention(kv_store_t *st, uint32_t sid, int reps)
{
    static kv_chunk_t ch[4096];
    static float sc[1 << 16], q[HD], out[HD];
    uint32_t nc;
    kv_lane_view(st, sid, 0, 0, ch, 4096, &nc);
    for (int d = 0; d < HD; d++)
        q[d] = frand();
    volatile float sink = 0.0f;
    double t0 = now();
    for (int i = 0; i < reps; i++)
        sink += attend(ch, nc, q, out, sc);
    (void)sink;
    return (now() - t0) / reps;
}

static void bench_attention(int rounds)
{
    kv_store_t *st = new_store(1, 1);
    err_info_t e;
    uint32_t contig = new_session(st), frag = new_session(st), churn = new_session(st),
             fresh = new_session(st);
    for (int i = 0; i < 32; i++) {
        append(st, contig, 64);
        append(st, frag, 64);
    }
    die(kv_span_demote(st, contig, 0.0f, 1023.0f, &e), &e, "demote");
    static uint32_t idx[1024];
    for (uint32_t j = 0; j < 1024; j++) /* rows 8..15, 24..31, ...: alternating 8-row runs */
        idx[j] = (j / 8) * 16 + 8 + j % 8;
    die(kv_lane_demote(st, frag, 0, 0, idx, 1024, &e), &e, "demote");
    /* churn: 2600 tokens with random evictions and gists, against a fresh lane as long */
    for (int i = 0; i < 40; i++)
        append(st, churn, 64);
    for (int i = 0; i < 50; i++) {
        uint32_t rows;
        kv_lane_size(st, churn, 0, 0, &rows, NULL);
        uint32_t a = (uint32_t)((frand() + 1.0f) * 0.5f * (float)(rows - 20));
        for (uint32_t j = 0; j < 4; j++)
            idx[j] = a + 3 * j;
        die(kv_lane_evict(st, churn, 0, 0, idx, 4, &e), &e, "evict");
    }
    for (int i = 0; i < 10; i++)
        gist_span(st, churn, 100.0f + 150.0f * (float)i, 140.0f + 150.0f * (float)i);
    uint32_t rows_churn, rows_contig, nc_frag, nc_contig, nc_churn, nc_fresh;
    kv_lane_size(st, churn, 0, 0, &rows_churn, &nc_churn);
    kv_lane_size(st, contig, 0, 0, &rows_contig, &nc_contig);
    kv_lane_size(st, frag, 0, 0, NULL, &nc_frag);
    append(st, fresh, rows_churn);
    kv_lane_size(st, fresh, 0, 0, NULL, &nc_fresh);

    double tc[64], tf[64], tch[64], tfr[64];
    for (int r = 0; r < rounds; r++) {
        tc[r] = time_attention(st, contig, 200);
        tf[r] = time_attention(st, frag, 200);
        tch[r] = time_attention(st, churn, 200);
        tfr[r] = time_attention(st, fresh, 200);
    }
    double mc = median(tc, rounds), mf = median(tf, rounds);
    printf("attention, %u rows half q8_0 half f16: contiguous (%u chunks) %.1f us, "
           "8-row alternating chunks (%u) %.1f us (%+.1f%%)\n",
           rows_contig, nc_contig, mc * 1e6, nc_frag, mf * 1e6, 100.0 * (mf / mc - 1.0));
    double mch = median(tch, rounds), mfr = median(tfr, rounds);
    printf("attention, %u f16 rows after 50 evictions and 10 gists (%u chunks) %.1f us, "
           "fresh lane (%u chunks) %.1f us (%+.1f%%)\n",
           rows_churn, nc_churn, mch * 1e6, nc_fresh, mfr * 1e6, 100.0 * (mch / mfr - 1.0));
    kv_stats_t s;
    kv_session_stats(st, frag, &s);
    printf("alternating-tier lane: %zu bytes, fragmentation %.3f; contiguous: ", s.bytes,
           s.fragmentation);
    kv_session_stats(st, contig, &s);
    printf("%zu bytes, fragmentation %.3f\n", s.bytes, s.fragmentation);
    kv_store_destroy(&st);
}

/* ---- bytes: the counters against the walks ---- */

static void bench_bytes(int rounds)
{
    static const uint32_t lens[] = {1024, 4096};
    for (size_t q = 0; q < sizeof lens / sizeof lens[0]; q++) {
        kv_store_t *st = new_store(NLAYER, NHEAD);
        uint32_t sid = new_session(st), other = new_session(st);
        for (uint32_t i = 0; i < lens[q] / 64; i++) {
            append(st, sid, 64);
            append(st, other, 64);
        }
        const int calls = 200;
        double ss[64], gs[64], sb[64], gb[64];
        volatile size_t sink = 0;
        for (int r = 0; r < rounds; r++) {
            kv_stats_t x;
            double t0 = now();
            for (int i = 0; i < calls; i++) {
                kv_session_stats(st, sid, &x);
                sink += x.bytes;
            }
            double t1 = now();
            for (int i = 0; i < calls; i++)
                sink += kv_session_bytes(st, sid);
            double t2 = now();
            for (int i = 0; i < calls; i++) {
                kv_store_stats(st, &x);
                sink += x.bytes;
            }
            double t3 = now();
            for (int i = 0; i < calls; i++)
                sink += kv_store_bytes(st);
            double t4 = now();
            ss[r] = (t1 - t0) / calls;
            sb[r] = (t2 - t1) / calls;
            gs[r] = (t3 - t2) / calls;
            gb[r] = (t4 - t3) / calls;
        }
        (void)sink;
        const double mss = median(ss, rounds), msb = median(sb, rounds);
        const double mgs = median(gs, rounds), mgb = median(gb, rounds);
        printf("bytes, session of %u tokens (%u rows): kv_session_stats %.1f us, kv_session_bytes "
               "%.1f ns (%.0fx); store of 2 such: kv_store_stats %.1f us, kv_store_bytes %.1f ns "
               "(%.0fx)\n",
               lens[q], lens[q] * NL, mss * 1e6, msb * 1e9, mss / (msb > 0 ? msb : 1e-12),
               mgs * 1e6, mgb * 1e9, mgs / (mgb > 0 ? mgb : 1e-12));
        kv_store_destroy(&st);
    }
}

static void machine(void)
{
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[256], model[256] = "unknown";
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "model name", 10) == 0) {
            char *c = strchr(line, ':');
            snprintf(model, sizeof model, "%s", c ? c + 2 : line);
            model[strcspn(model, "\n")] = '\0';
            break;
        }
    if (f)
        fclose(f);
    printf("bench_kvstore on %s; %d layers x %d kv-heads x %d dims, f16 hot rows\n", model, NLAYER,
           NHEAD, HD);
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 7;
    if (rounds < 1 || rounds > 64)
        rounds = 7;
    machine();
    scratch_init(2600);
    for (int i = 0; i < 4096; i++)
        g_tok[i] = (uint32_t)i;
    bench_append(rounds);
    bench_edits(rounds);
    bench_attention(rounds);
    bench_bytes(rounds);
    free(g_k);
    free(g_v);
    return 0;
}
