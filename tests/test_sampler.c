/* tests/test_sampler.c — properties of the sampling chain (model/sampler.h), each checked
 * against a distribution computed here in double precision. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/sampler.h"
#include "tests/check.h"

#define NV 8

static mdl_sampler_t *make(float temp, int top_k, float top_p, float min_p, float pen, int win,
                           uint64_t seed, uint32_t n_vocab)
{
    mdl_sampler_cfg_t c = {.temp = temp,
                           .top_k = top_k,
                           .top_p = top_p,
                           .min_p = min_p,
                           .repeat_penalty = pen,
                           .repeat_last_n = win,
                           .seed = seed};
    mdl_sampler_t *s = NULL;
    err_info_t e;
    err_clear(&e);
    CHECK_OK(mdl_sampler_new(&c, n_vocab, &s, &e));
    return s;
}

/* Reference: softmax(l / temp) restricted to keep[] (renormalised), in double. */
static void ref_dist(const float *l, const bool *keep, int n, double temp, double *p)
{
    double max = -INFINITY, sum = 0;
    for (int i = 0; i < n; i++)
        if (keep[i] && l[i] > max)
            max = l[i];
    for (int i = 0; i < n; i++) {
        p[i] = keep[i] ? exp((l[i] - max) / temp) : 0.0;
        sum += p[i];
    }
    for (int i = 0; i < n; i++)
        p[i] /= sum;
}

/* Draws `draws` tokens and checks each frequency is within 5 standard errors of p[]
 * (and exactly 0 where p is 0). */
static void check_empirical(mdl_sampler_t *s, const float *l, const double *p, int n, int draws)
{
    int cnt[NV] = {0};
    for (int d = 0; d < draws; d++) {
        int32_t t = mdl_sampler_sample(s, l);
        CHECK(t >= 0 && t < n);
        if (t >= 0 && t < n)
            cnt[t]++;
    }
    for (int i = 0; i < n; i++) {
        double f = (double)cnt[i] / draws;
        double se = sqrt(p[i] * (1 - p[i]) / draws) + 1e-12;
        if (p[i] == 0.0)
            CHECK_MSG(cnt[i] == 0, "token %d has probability 0 but was drawn %d times", i, cnt[i]);
        else
            CHECK_MSG(fabs(f - p[i]) < 5 * se, "token %d: frequency %.5f vs p %.5f (se %.5f)", i, f,
                      p[i], se);
    }
}

static void random_logits(float *l, int n, unsigned seed)
{
    srand(seed);
    for (int i = 0; i < n; i++)
        l[i] = (float)rand() / RAND_MAX * 8.0f - 4.0f;
}

static void test_greedy_is_argmax(void)
{
    enum { N = 1000 };
    float *l = malloc(sizeof(float) * N);
    mdl_sampler_t *s = make(0.0f, 40, 0.9f, 0.05f, 1.0f, 64, 1, N);
    for (unsigned trial = 0; trial < 20; trial++) {
        random_logits(l, N, trial + 1);
        int best = 0;
        for (int i = 1; i < N; i++)
            if (l[i] > l[best])
                best = i;
        CHECK_INT(mdl_sampler_sample(s, l), ==, best);
    }
    /* ties: the lowest id */
    for (int i = 0; i < N; i++)
        l[i] = 1.0f;
    l[7] = l[300] = 2.0f;
    CHECK_INT(mdl_sampler_sample(s, l), ==, 7);
    /* the largest past the last whole 16 (N is not a multiple of 16), and at the very end */
    l[995] = 3.0f;
    CHECK_INT(mdl_sampler_sample(s, l), ==, 995);
    l[N - 1] = 4.0f;
    CHECK_INT(mdl_sampler_sample(s, l), ==, N - 1);
    /* a NaN never wins, except that nothing beats one in the first place (as a scan that
     * keeps the best so far with > does); -inf everywhere gives 0 */
    l[500] = NAN;
    CHECK_INT(mdl_sampler_sample(s, l), ==, N - 1);
    l[0] = NAN;
    CHECK_INT(mdl_sampler_sample(s, l), ==, 0);
    for (int i = 0; i < N; i++)
        l[i] = -INFINITY;
    CHECK_INT(mdl_sampler_sample(s, l), ==, 0);
    /* -0 and +0 tie: the lowest id */
    for (int i = 0; i < N; i++)
        l[i] = -1.0f;
    l[20] = -0.0f;
    l[10] = 0.0f;
    CHECK_INT(mdl_sampler_sample(s, l), ==, 10);
    mdl_sampler_destroy(&s);
    CHECK(s == NULL);
    free(l);
}

static void test_top_k_1_is_greedy(void)
{
    enum { N = 500 };
    float l[N];
    mdl_sampler_t *s = make(1.5f, 1, 1.0f, 0.0f, 1.0f, 0, 99, N);
    for (unsigned trial = 0; trial < 50; trial++) {
        random_logits(l, N, 100 + trial);
        int best = 0;
        for (int i = 1; i < N; i++)
            if (l[i] > l[best])
                best = i;
        CHECK_INT(mdl_sampler_sample(s, l), ==, best);
    }
    mdl_sampler_destroy(&s);
}

static void test_distribution_matches_softmax(void)
{
    const float l[NV] = {1.0f, 0.5f, -0.3f, 2.0f, 0.0f, -1.0f, 1.2f, 0.7f};
    const bool all[NV] = {1, 1, 1, 1, 1, 1, 1, 1};
    const float temps[] = {1.0f, 0.7f, 1.8f};
    for (size_t t = 0; t < sizeof temps / sizeof temps[0]; t++) {
        double p[NV];
        ref_dist(l, all, NV, temps[t], p);
        mdl_sampler_t *s = make(temps[t], 0, 1.0f, 0.0f, 1.0f, 0, 1234 + t, NV);
        check_empirical(s, l, p, NV, 200000);
        mdl_sampler_destroy(&s);
    }
}

static void test_top_k(void)
{
    const float l[NV] = {1.0f, 0.5f, -0.3f, 2.0f, 0.0f, -1.0f, 1.2f, 0.7f};
    /* top 3 are ids 3 (2.0), 6 (1.2), 0 (1.0) */
    const bool keep[NV] = {1, 0, 0, 1, 0, 0, 1, 0};
    double p[NV];
    ref_dist(l, keep, NV, 0.9, p);
    mdl_sampler_t *s = make(0.9f, 3, 1.0f, 0.0f, 1.0f, 0, 7, NV);
    check_empirical(s, l, p, NV, 100000);
    mdl_sampler_destroy(&s);
}

static void test_top_p_smallest_set(void)
{
    /* probabilities 0.5, 0.3, 0.15, 0.05 (as logs), shuffled over ids */
    float l[NV];
    for (int i = 0; i < NV; i++)
        l[i] = -INFINITY;
    l[5] = logf(0.5f);
    l[2] = logf(0.3f);
    l[7] = logf(0.15f);
    l[0] = logf(0.05f);
    struct {
        float top_p;
        bool keep[NV];
    } cases[] = {
        {0.45f, {0, 0, 0, 0, 0, 1, 0, 0}}, /* 0.5 >= 0.45 already */
        {0.75f, {0, 0, 1, 0, 0, 1, 0, 0}}, /* 0.5 < 0.75 <= 0.8 */
        {0.85f, {0, 0, 1, 0, 0, 1, 0, 1}}, /* 0.8 < 0.85 <= 0.95 */
        {0.97f, {1, 0, 1, 0, 0, 1, 0, 1}}, /* needs all four */
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        double p[NV];
        ref_dist(l, cases[c].keep, NV, 1.0, p);
        mdl_sampler_t *s = make(1.0f, 0, cases[c].top_p, 0.0f, 1.0f, 0, 55 + c, NV);
        check_empirical(s, l, p, NV, 60000);
        mdl_sampler_destroy(&s);
    }
}

static void test_min_p_threshold(void)
{
    float l[NV];
    for (int i = 0; i < NV; i++)
        l[i] = -INFINITY;
    l[1] = logf(0.5f);
    l[4] = logf(0.3f);
    l[6] = logf(0.15f);
    l[3] = logf(0.05f);
    /* min_p 0.2: threshold 0.1 keeps 0.5, 0.3, 0.15; min_p 0.35: threshold 0.175 keeps two */
    const bool keep_02[NV] = {0, 1, 0, 0, 1, 0, 1, 0};
    const bool keep_035[NV] = {0, 1, 0, 0, 1, 0, 0, 0};
    double p[NV];
    ref_dist(l, keep_02, NV, 1.3, p);
    mdl_sampler_t *s = make(1.3f, 0, 1.0f, 0.2f, 1.0f, 0, 3, NV);
    check_empirical(s, l, p, NV, 60000);
    mdl_sampler_destroy(&s);
    ref_dist(l, keep_035, NV, 1.3, p);
    s = make(1.3f, 0, 1.0f, 0.35f, 1.0f, 0, 4, NV);
    check_empirical(s, l, p, NV, 60000);
    mdl_sampler_destroy(&s);
}

static void test_repetition_penalty(void)
{
    enum { N = 16 };
    float l[N], out[N];
    for (int i = 0; i < N; i++)
        l[i] = (float)(i - 8) * 0.75f; /* ids < 8 negative, 8 zero, > 8 positive */
    mdl_sampler_t *s = make(0.0f, 0, 1.0f, 0.0f, 1.5f, 4, 1, N);
    /* window of 4: token 12 falls out of it once four later tokens arrive */
    const int32_t hist[] = {12, 10, 3, 10, 8};
    for (size_t i = 0; i < sizeof hist / sizeof hist[0]; i++)
        mdl_sampler_accept(s, hist[i]);
    mdl_sampler_penalize(s, l, out);
    for (int i = 0; i < N; i++) {
        float want = l[i];
        if (i == 10)
            want = l[i] / 1.5f; /* positive: divided, once although it occurred twice */
        else if (i == 3)
            want = l[i] * 1.5f; /* negative: multiplied */
        CHECK_MSG(out[i] == want, "token %d: %g vs %g", i, out[i], want);
    }
    /* the penalty can change the greedy choice: 15 is best, unless penalised */
    CHECK_INT(mdl_sampler_sample(s, l), ==, 15);
    mdl_sampler_accept(s, 15);
    l[14] = l[15] - 0.1f;
    CHECK_INT(mdl_sampler_sample(s, l), ==, 14);
    mdl_sampler_reset(s);
    CHECK_INT(mdl_sampler_sample(s, l), ==, 15);
    mdl_sampler_destroy(&s);
}

static void test_seed_reproducible(void)
{
    enum { N = 100, D = 200 };
    float l[N];
    random_logits(l, N, 5);
    int32_t a[D], b[D], c[D];
    mdl_sampler_t *s1 = make(1.0f, 0, 1.0f, 0.0f, 1.0f, 0, 42, N);
    mdl_sampler_t *s2 = make(1.0f, 0, 1.0f, 0.0f, 1.0f, 0, 42, N);
    mdl_sampler_t *s3 = make(1.0f, 0, 1.0f, 0.0f, 1.0f, 0, 43, N);
    for (int i = 0; i < D; i++) {
        a[i] = mdl_sampler_sample(s1, l);
        b[i] = mdl_sampler_sample(s2, l);
        c[i] = mdl_sampler_sample(s3, l);
    }
    CHECK(memcmp(a, b, sizeof a) == 0);
    CHECK(memcmp(a, c, sizeof a) != 0);
    mdl_sampler_reset(s1);
    for (int i = 0; i < D; i++)
        b[i] = mdl_sampler_sample(s1, l);
    CHECK(memcmp(a, b, sizeof a) == 0);
    /* uniform draws stay in [0, 1) and average about 1/2 */
    double sum = 0;
    for (int i = 0; i < 100000; i++) {
        double u = mdl_sampler_uniform(s3);
        CHECK(u >= 0.0 && u < 1.0);
        sum += u;
    }
    CHECK_NEAR(sum / 100000, 0.5, 5 * sqrt(1.0 / 12 / 100000));
    mdl_sampler_destroy(&s1);
    mdl_sampler_destroy(&s2);
    mdl_sampler_destroy(&s3);
}

static void test_bad_config(void)
{
    mdl_sampler_cfg_t c;
    mdl_sampler_t *s = NULL;
    err_info_t e;
    mdl_sampler_cfg_default(&c);
    c.temp = -1.0f;
    CHECK_INT(mdl_sampler_new(&c, 10, &s, &e), ==, ERR_INVAL);
    CHECK(strstr(e.msg, "temperature") != NULL);
    mdl_sampler_cfg_default(&c);
    c.top_p = 0.0f;
    CHECK_INT(mdl_sampler_new(&c, 10, &s, &e), ==, ERR_INVAL);
    mdl_sampler_cfg_default(&c);
    c.min_p = 1.5f;
    CHECK_INT(mdl_sampler_new(&c, 10, &s, &e), ==, ERR_INVAL);
    mdl_sampler_cfg_default(&c);
    c.repeat_penalty = 0.0f;
    CHECK_INT(mdl_sampler_new(&c, 10, &s, &e), ==, ERR_INVAL);
    mdl_sampler_cfg_default(&c);
    CHECK_INT(mdl_sampler_new(&c, 0, &s, &e), ==, ERR_INVAL);
    CHECK(s == NULL);
    mdl_sampler_destroy(&s); /* NULL-safe */
}

/* Extreme values a caller may pass (gistd bounds them at its protocol edge; gist-model and
 * library users reach the sampler directly): each is refused with a message, or works. */
static void test_extreme_config(void)
{
    mdl_sampler_cfg_t c;
    mdl_sampler_t *s = NULL;
    err_info_t e;
    const int32_t windows[] = {INT32_MAX, INT32_MAX - 1, MDL_SAMPLER_MAX_WINDOW + 1, -1, INT32_MIN};
    for (size_t i = 0; i < sizeof windows / sizeof windows[0]; i++) {
        mdl_sampler_cfg_default(&c);
        c.repeat_penalty = 1.3f;
        c.repeat_last_n = windows[i];
        err_clear(&e);
        CHECK_INT(mdl_sampler_new(&c, 10, &s, &e), ==, ERR_INVAL);
        CHECK_MSG(strstr(e.msg, "repeat window"), "window %d: %s", windows[i], e.msg);
        CHECK(s == NULL);
    }
    const float bad[] = {NAN, INFINITY, -INFINITY};
    for (size_t i = 0; i < 3; i++) {
        float *fields[] = {&c.temp, &c.top_p, &c.min_p, &c.repeat_penalty};
        for (size_t f = 0; f < 4; f++) {
            mdl_sampler_cfg_default(&c);
            *fields[f] = bad[i];
            CHECK_INT(mdl_sampler_new(&c, 10, &s, &e), ==, ERR_INVAL);
            CHECK(s == NULL);
        }
    }
    /* the longest window works: its ring wraps, and the penalty sees the last tokens */
    enum { N = 16 };
    float l[N], out[N];
    for (int i = 0; i < N; i++)
        l[i] = 1.0f;
    mdl_sampler_cfg_default(&c);
    c.repeat_penalty = 2.0f;
    c.repeat_last_n = MDL_SAMPLER_MAX_WINDOW;
    CHECK_OK(mdl_sampler_new(&c, N, &s, &e));
    if (s) {
        mdl_sampler_accept(s, 3);
        mdl_sampler_penalize(s, l, out);
        CHECK(out[3] == 0.5f && out[4] == 1.0f);
        mdl_sampler_destroy(&s);
    }
    /* top_k at the int32 extremes: off, or every token kept */
    const int32_t ks[] = {INT32_MIN, -1, INT32_MAX};
    random_logits(l, N, 7);
    for (size_t i = 0; i < 3; i++) {
        mdl_sampler_cfg_default(&c);
        c.top_k = ks[i];
        c.top_p = 1.0f;
        c.min_p = 0.0f;
        CHECK_OK(mdl_sampler_new(&c, N, &s, &e));
        for (int d = 0; s && d < 100; d++) {
            const int32_t t = mdl_sampler_sample(s, l);
            CHECK(t >= 0 && t < N);
        }
        mdl_sampler_destroy(&s);
    }
}

int main(void)
{
    RUN(test_greedy_is_argmax);
    RUN(test_top_k_1_is_greedy);
    RUN(test_distribution_matches_softmax);
    RUN(test_top_k);
    RUN(test_top_p_smallest_set);
    RUN(test_min_p_threshold);
    RUN(test_repetition_penalty);
    RUN(test_seed_reproducible);
    RUN(test_bad_config);
    RUN(test_extreme_config);
    return check_done();
}
