/* tests/test_attn_ops.c — every attention loop table the CPU runs (model/attn_ops.h)
 * against double-precision loops written here. */
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "model/attn_ops.h"
#include "model/gguf.h"
#include "tests/check.h"

static const char *const TABLES[] = {"portable", "avx2", "avx512"};

static uint64_t rng = 0x9E3779B97F4A7C15ULL;

static float urand(void) /* uniform in [-1, 1) */
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 40) * 0x1.0p-24 * 2.0 - 1.0);
}

static void fill(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = urand();
}

/* Rows stored as `type`, row r at K + r * stride, from random values; kf receives the
 * values the stored rows hold (what a double loop must see). */
static void rows_fill(uint32_t type, int hd, int n, size_t stride, uint8_t *K, float *kf)
{
    for (int r = 0; r < n; r++) {
        fill(kf + (size_t)r * hd, (size_t)hd);
        CHECK_OK(dt_from_f32(type, kf + (size_t)r * hd, K + (size_t)r * stride, (size_t)hd));
        CHECK_OK(dt_to_f32(type, K + (size_t)r * stride, kf + (size_t)r * hd, (size_t)hd));
    }
}

/* scores and accum over stored f32, f16 and q8_0 rows, for several head_dims and head
 * counts, padded strides and an optional bias, against double loops over the rows' values;
 * nothing is written past n rows. */
static void test_scores_accum(void)
{
    static const uint32_t types[] = {DT_F32, DT_F16, DT_Q8_0};
    static const int hds[] = {8, 16, 24, 32, 48, 64, 80, 96, 128};
    static const int gs[] = {1, 2, 3, 4, 5, 7};
    enum { MAXN = 70, PAD = 12 }; /* bytes after each row */
    const float poison = 1234.5f;
    for (size_t t = 0; t < sizeof TABLES / sizeof TABLES[0]; t++) {
        const mdl_attn_ops_t *o = mdl_attn_ops_named(TABLES[t]);
        if (!o) {
            printf("# %s: not on this CPU\n", TABLES[t]);
            continue;
        }
        int cases = 0;
        for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++)
            for (size_t hi = 0; hi < sizeof hds / sizeof hds[0]; hi++) {
                const uint32_t type = types[ti];
                const int hd = hds[hi];
                if (hd % o->dim_multiple || (type == DT_Q8_0 && hd % QK8_0))
                    continue;
                const size_t stride = ggml_row_bytes(type, (uint64_t)hd) + PAD;
                for (size_t gi = 0; gi < sizeof gs / sizeof gs[0]; gi++) {
                    const int g = gs[gi];
                    float *q = malloc(sizeof(float) * g * hd),
                          *kf = malloc(sizeof(float) * MAXN * hd);
                    uint8_t *K = malloc(MAXN * stride);
                    float *bias = malloc(sizeof(float) * MAXN),
                          *sc = malloc(sizeof(float) * g * MAXN);
                    float *out = malloc(sizeof(float) * g * hd);
                    double *want = malloc(sizeof(double) * g * hd);
                    for (int n = 1; n <= MAXN; n += (n < 9 ? 1 : 7)) {
                        fill(q, (size_t)g * hd);
                        rows_fill(type, hd, n, stride, K, kf);
                        fill(bias, MAXN);
                        for (int i = 0; i < g * MAXN; i++)
                            sc[i] = poison;
                        const bool with_bias = n % 2;
                        o->scores(type, q, g, hd, K, stride, n, 0.125f, with_bias ? bias : NULL, sc,
                                  MAXN);
                        for (int h = 0; h < g; h++) {
                            for (int r = 0; r < n; r++) {
                                double s = 0, mag = 0;
                                for (int d = 0; d < hd; d++) {
                                    s += (double)q[h * hd + d] * kf[r * hd + d];
                                    mag += fabs((double)q[h * hd + d] * kf[r * hd + d]);
                                }
                                s = s * 0.125 + (with_bias ? bias[r] : 0.0);
                                CHECK_NEAR(sc[h * MAXN + r], s, 1e-6 * (mag + 1.0));
                            }
                            if (n < MAXN)
                                CHECK(sc[h * MAXN + n] == poison);
                        }
                        /* accum adds to what out holds; p rows are sc rows */
                        fill(out, (size_t)g * hd);
                        for (int h = 0; h < g; h++)
                            for (int d = 0; d < hd; d++) {
                                double a = out[h * hd + d];
                                for (int r = 0; r < n; r++)
                                    a += (double)sc[h * MAXN + r] * kf[r * hd + d];
                                want[h * hd + d] = a;
                            }
                        o->accum(type, out, g, hd, K, stride, n, sc, MAXN);
                        for (int i = 0; i < g * hd; i++)
                            CHECK_NEAR(out[i], want[i], 1e-5 * (fabs(want[i]) + n));
                        cases++;
                    }
                    free(q);
                    free(kf);
                    free(K);
                    free(bias);
                    free(sc);
                    free(out);
                    free(want);
                }
            }
        CHECK(cases > 0);
    }
}

static void test_max_exp_sum(void)
{
    enum { N = 77 };
    float p[N], x[N];
    for (size_t t = 0; t < sizeof TABLES / sizeof TABLES[0]; t++) {
        const mdl_attn_ops_t *o = mdl_attn_ops_named(TABLES[t]);
        if (!o)
            continue;
        for (int n = 1; n <= N; n += 3) {
            for (int i = 0; i < n; i++)
                x[i] = urand() * 60.0f;
            x[n / 2] = -INFINITY; /* a masked row */
            if (n > 3)
                x[1] = -200.0f; /* far below the largest: underflows to 0 */
            float want_max = -INFINITY;
            for (int i = 0; i < n; i++)
                want_max = x[i] > want_max ? x[i] : want_max;
            CHECK(o->vmax(x, (size_t)n) == want_max);
            if (!isfinite(want_max))
                continue;
            memcpy(p, x, sizeof p);
            const float sum = o->exp_sum(p, (size_t)n, want_max);
            double want_sum = 0;
            for (int i = 0; i < n; i++) {
                const double e = exp((double)x[i] - want_max);
                want_sum += e;
                /* a few ulp relative, plus the rounding of the f32 argument x - max (half
                 * an ulp of |x - max|, which exp turns into a relative error); values below
                 * the smallest normal float may be 0 */
                if (isinf(x[i])) {
                    CHECK(p[i] == 0.0f);
                    continue;
                }
                const double arg_ulp = fabs((double)x[i] - want_max) * 0x1.0p-23;
                CHECK_NEAR(p[i], e, (1e-6 + arg_ulp) * e + 1.2e-38);
            }
            CHECK_NEAR(sum, want_sum, 1e-6 * want_sum);
        }
    }
}

/* prob_acc against exp(score - max) / sum in double: rows of every length around the vector
 * width, several heads, masked rows (-inf: add nothing), and what was in acc kept. */
static void test_prob_acc(void)
{
    enum { MAXN = 41, G = 4, STRIDE = 48 };
    float sc[G * STRIDE], acc[MAXN + 1], lse[2 * G];
    double want[MAXN];
    for (size_t t = 0; t < sizeof TABLES / sizeof TABLES[0]; t++) {
        const mdl_attn_ops_t *o = mdl_attn_ops_named(TABLES[t]);
        if (!o)
            continue;
        for (int g = 1; g <= G; g++)
            for (int n = 1; n <= MAXN; n++) {
                for (int i = 0; i < g * STRIDE; i++)
                    sc[i] = urand() * 20.0f;
                for (int h = 0; h < g; h++) {
                    if (n > 1) /* a masked row, never the only one */
                        sc[h * STRIDE + (n * 7 + h) % n] = -INFINITY;
                    double mx = -INFINITY, sum = 0;
                    for (int r = 0; r < n; r++)
                        mx = sc[h * STRIDE + r] > mx ? sc[h * STRIDE + r] : mx;
                    for (int r = 0; r < n; r++)
                        sum += exp(sc[h * STRIDE + r] - mx);
                    lse[2 * h] = (float)mx;
                    lse[2 * h + 1] = (float)(1.0 / sum);
                }
                for (int r = 0; r < n; r++) {
                    acc[r] = urand() + 2.0f;
                    want[r] = acc[r];
                    for (int h = 0; h < g; h++)
                        want[r] += exp((double)sc[h * STRIDE + r] - lse[2 * h]) * lse[2 * h + 1];
                }
                acc[n] = 42.0f;
                o->prob_acc(sc, STRIDE, g, (size_t)n, lse, acc);
                for (int r = 0; r < n; r++)
                    CHECK_NEAR(acc[r], want[r], 2e-6 * want[r]);
                CHECK(acc[n] == 42.0f); /* nothing past n written */
            }
    }
}

static void test_to_f32(void)
{
    enum { N = 32 * 5 };
    float x[N], got[N];
    uint16_t h[N];
    block_q8_0 b[N / 32];
    for (size_t t = 0; t < sizeof TABLES / sizeof TABLES[0]; t++) {
        const mdl_attn_ops_t *o = mdl_attn_ops_named(TABLES[t]);
        if (!o)
            continue;
        for (size_t n = 32; n <= N; n += 32) {
            fill(x, n);
            for (size_t i = 0; i < n; i++)
                h[i] = (uint16_t)(rng >> (i % 48)); /* any bit pattern but NaN-free below */
            for (size_t i = 0; i < n; i++)
                if ((h[i] & 0x7C00) == 0x7C00)
                    h[i] &= 0xBFFF;           /* no inf/nan: compared with == below */
            o->to_f32(DT_F16, h, got, n - 3); /* odd lengths take the scalar tail */
            for (size_t i = 0; i < n - 3; i++) {
                /* f16 = (-1)^s 2^(e-15) (1 + m/1024), or 2^-14 m/1024 when e = 0 */
                const int e = (h[i] >> 10) & 31, m = h[i] & 1023;
                double v = e ? ldexp(1.0 + m / 1024.0, e - 15) : ldexp(m / 1024.0, -14);
                v = (h[i] & 0x8000) ? -v : v;
                CHECK_MSG(got[i] == (float)v, "%s f16 %04x: %g vs %g", o->name, h[i], got[i], v);
            }
            dt_quantize_q8_0(x, b, n);
            o->to_f32(DT_Q8_0, b, got, n);
            for (size_t i = 0; i < n; i++) {
                const block_q8_0 *bk = &b[i / 32];
                const float want = dt_f16_to_f32(bk->d) * (float)bk->qs[i % 32];
                CHECK_MSG(got[i] == want, "%s q8_0 [%zu]: %g vs %g", o->name, i, got[i], want);
            }
        }
    }
}

static void test_choice(void)
{
    const mdl_attn_ops_t *o = mdl_attn_ops(8);
    CHECK(o != NULL && 8 % o->dim_multiple == 0);
    o = mdl_attn_ops(12); /* no SIMD table takes rows of 12 */
    CHECK_STR(o->name, "portable");
    CHECK(mdl_attn_ops_named("portable") == &mdl_attn_ops_portable);
    CHECK(mdl_attn_ops_named("sse9") == NULL);
    printf("# best for head_dim 64: %s\n", mdl_attn_ops(64)->name);
}

int main(void)
{
    RUN(test_scores_accum);
    RUN(test_max_exp_sum);
    RUN(test_prob_acc);
    RUN(test_to_f32);
    RUN(test_choice);
    return check_done();
}
