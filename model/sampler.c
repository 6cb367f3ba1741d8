/* model/sampler.c — the sampling chain of model/sampler.h. */
#include "model/sampler.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* One candidate token. */
typedef struct cand {
    int32_t id;
    float logit;
} cand_t;

struct mdl_sampler {
    mdl_sampler_cfg_t cfg;
    uint32_t n_vocab;
    float *work;     /* [n_vocab] logits after the penalty */
    cand_t *cand;    /* [n_vocab] candidates that survive the filters */
    float *prob;     /* [n_vocab] probabilities of the candidates */
    uint32_t *stamp; /* [n_vocab] marks tokens already penalised in this call */
    uint32_t stamp_gen;
    int32_t *recent; /* [repeat_last_n] ring of recent tokens */
    int32_t n_recent, recent_head;
    uint64_t rng_state, rng_inc; /* PCG32 */
};

void mdl_sampler_cfg_default(mdl_sampler_cfg_t *cfg)
{
    *cfg = (mdl_sampler_cfg_t){.temp = 0.8f,
                               .top_k = 40,
                               .top_p = 0.95f,
                               .min_p = 0.05f,
                               .repeat_penalty = 1.0f,
                               .repeat_last_n = 64,
                               .seed = 0};
}

/* PCG32 (O'Neill, pcg-random.org): XSH-RR output of a 64-bit LCG. */
static uint32_t pcg32_next(mdl_sampler_t *s)
{
    uint64_t old = s->rng_state;
    s->rng_state = old * 6364136223846793005ULL + s->rng_inc;
    uint32_t xorshifted = (uint32_t)(((old >> 18u) ^ old) >> 27u);
    uint32_t rot = (uint32_t)(old >> 59u);
    return (xorshifted >> rot) | (xorshifted << ((-rot) & 31));
}

static void pcg32_seed(mdl_sampler_t *s, uint64_t seed)
{
    s->rng_state = 0;
    s->rng_inc = (0xda3e39cb94b95bdbULL << 1u) | 1u;
    pcg32_next(s);
    s->rng_state += seed;
    pcg32_next(s);
}

double mdl_sampler_uniform(mdl_sampler_t *s)
{
    uint64_t hi = pcg32_next(s), lo = pcg32_next(s);
    return (double)(((hi << 32) | lo) >> 11) * 0x1.0p-53;
}

int mdl_sampler_new(const mdl_sampler_cfg_t *cfg, uint32_t n_vocab, mdl_sampler_t **out,
                    err_info_t *e)
{
    if (n_vocab == 0)
        return err_set(e, ERR_INVAL, "sampler: vocabulary is empty");
    if (!(cfg->temp >= 0.0f) || !isfinite(cfg->temp))
        return err_set(e, ERR_INVAL, "sampler: temperature %g must be >= 0", cfg->temp);
    if (!(cfg->top_p > 0.0f && cfg->top_p <= 1.0f))
        return err_set(e, ERR_INVAL, "sampler: top-p %g must be in (0, 1]", cfg->top_p);
    if (!(cfg->min_p >= 0.0f && cfg->min_p <= 1.0f))
        return err_set(e, ERR_INVAL, "sampler: min-p %g must be in [0, 1]", cfg->min_p);
    if (!(cfg->repeat_penalty > 0.0f) || !isfinite(cfg->repeat_penalty))
        return err_set(e, ERR_INVAL, "sampler: repeat penalty %g must be > 0", cfg->repeat_penalty);
    if (cfg->repeat_last_n < 0 || cfg->repeat_last_n > MDL_SAMPLER_MAX_WINDOW)
        return err_set(e, ERR_INVAL, "sampler: repeat window %d is outside [0, %d]",
                       cfg->repeat_last_n, MDL_SAMPLER_MAX_WINDOW);

    mdl_sampler_t *s = calloc(1, sizeof *s);
    if (!s)
        return err_set(e, ERR_NOMEM, "sampler: out of memory");
    s->cfg = *cfg;
    s->n_vocab = n_vocab;
    s->work = malloc(sizeof(float) * n_vocab);
    s->cand = malloc(sizeof(cand_t) * n_vocab);
    s->prob = malloc(sizeof(float) * n_vocab);
    s->stamp = calloc(n_vocab, sizeof(uint32_t));
    s->recent = malloc(sizeof(int32_t) * ((size_t)cfg->repeat_last_n + 1));
    if (!s->work || !s->cand || !s->prob || !s->stamp || !s->recent) {
        mdl_sampler_destroy(&s);
        return err_set(e, ERR_NOMEM, "sampler: out of memory for a vocabulary of %u", n_vocab);
    }
    mdl_sampler_reset(s);
    *out = s;
    return 0;
}

void mdl_sampler_destroy(mdl_sampler_t **p)
{
    if (!p || !*p)
        return;
    mdl_sampler_t *s = *p;
    free(s->work);
    free(s->cand);
    free(s->prob);
    free(s->stamp);
    free(s->recent);
    free(s);
    *p = NULL;
}

void mdl_sampler_reset(mdl_sampler_t *s)
{
    s->n_recent = 0;
    s->recent_head = 0;
    pcg32_seed(s, s->cfg.seed);
}

void mdl_sampler_accept(mdl_sampler_t *s, int32_t token)
{
    int32_t w = s->cfg.repeat_last_n;
    if (w == 0)
        return;
    s->recent[s->recent_head] = token;
    s->recent_head = (s->recent_head + 1) % w;
    if (s->n_recent < w)
        s->n_recent++;
}

void mdl_sampler_penalize(const mdl_sampler_t *cs, const float *logits, float *out)
{
    /* The stamp table is scratch; penalising is logically const. */
    mdl_sampler_t *s = (mdl_sampler_t *)cs;
    if (out != logits)
        memcpy(out, logits, sizeof(float) * s->n_vocab);
    float pen = s->cfg.repeat_penalty;
    if (pen == 1.0f || s->n_recent == 0)
        return;
    if (++s->stamp_gen == 0) { /* wrapped: clear the marks once every 2^32 calls */
        memset(s->stamp, 0, sizeof(uint32_t) * s->n_vocab);
        s->stamp_gen = 1;
    }
    for (int32_t i = 0; i < s->n_recent; i++) {
        int32_t t = s->recent[i];
        if (t < 0 || (uint32_t)t >= s->n_vocab || s->stamp[t] == s->stamp_gen)
            continue; /* each distinct token is penalised once, however often it occurred */
        s->stamp[t] = s->stamp_gen;
        out[t] = out[t] > 0.0f ? out[t] / pen : out[t] * pen;
    }
}

/* Descending by logit, ties by id, so the order is deterministic. */
static int cand_cmp(const void *a, const void *b)
{
    const cand_t *x = a, *y = b;
    if (x->logit != y->logit)
        return x->logit > y->logit ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

/* Whether a ranks below b in cand_cmp's order. */
static int cand_less(const cand_t *a, const cand_t *b)
{
    return cand_cmp(a, b) > 0;
}

/* Sift-down in a min-heap (the root is the lowest-ranked of the kept k). */
static void heap_down(cand_t *h, int32_t n, int32_t i)
{
    for (;;) {
        int32_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && cand_less(&h[l], &h[m]))
            m = l;
        if (r < n && cand_less(&h[r], &h[m]))
            m = r;
        if (m == i)
            return;
        cand_t t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

/* Keeps the k best of the n candidates in cand[0..k), sorted. O(n log k). */
static int32_t keep_top_k(cand_t *cand, int32_t n, int32_t k)
{
    if (k >= n) {
        qsort(cand, (size_t)n, sizeof *cand, cand_cmp);
        return n;
    }
    for (int32_t i = k / 2 - 1; i >= 0; i--)
        heap_down(cand, k, i);
    for (int32_t i = k; i < n; i++) {
        if (cand_less(&cand[0], &cand[i])) {
            cand[0] = cand[i];
            heap_down(cand, k, 0);
        }
    }
    qsort(cand, (size_t)k, sizeof *cand, cand_cmp);
    return k;
}

/* The first index of the largest of w[0..n), n >= 1; 0 when w[0] is NaN (a NaN elsewhere
 * never wins). The largest value first, in independent lanes (the compiler makes them one
 * vector register), then where it first occurs: a scan that kept the index of the best so
 * far took ten times as long on a 49,152-token vocabulary, once per session per step. */
static int32_t argmax(const float *w, int32_t n)
{
    enum { LANES = 16 };
    float lane[LANES];
    for (int j = 0; j < LANES; j++)
        lane[j] = w[0];
    int32_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++)
            lane[j] = w[i + j] > lane[j] ? w[i + j] : lane[j];
    float m = lane[0];
    for (int j = 1; j < LANES; j++)
        m = lane[j] > m ? lane[j] : m;
    for (; i < n; i++)
        m = w[i] > m ? w[i] : m;
    for (i = 0; i < n; i++)
        if (w[i] == m)
            return i;
    return 0; /* m is NaN: w[0] was */
}

int32_t mdl_sampler_sample(mdl_sampler_t *s, const float *logits)
{
    const mdl_sampler_cfg_t *c = &s->cfg;
    int32_t nv = (int32_t)s->n_vocab;
    const float *w = logits;
    if (c->repeat_penalty != 1.0f && s->n_recent > 0) {
        mdl_sampler_penalize(s, logits, s->work);
        w = s->work;
    }

    if (c->temp <= 0.0f)
        return argmax(w, nv);

    cand_t *cd = s->cand;
    int32_t n = 0;
    float max = -INFINITY;
    for (int32_t i = 0; i < nv; i++) {
        cd[n++] = (cand_t){i, w[i]};
        if (w[i] > max)
            max = w[i];
    }
    if (max == -INFINITY || isnan(max))
        return 0; /* nothing has any probability: no sensible choice */
    bool sorted = false;
    if (c->top_k > 0 && c->top_k < n) {
        n = keep_top_k(cd, n, c->top_k);
        sorted = true;
    }
    if (c->top_p < 1.0f) {
        if (!sorted)
            n = keep_top_k(cd, n, n);
        sorted = true;
        double sum = 0.0;
        for (int32_t i = 0; i < n; i++)
            sum += exp((double)cd[i].logit - max);
        double cum = 0.0;
        int32_t keep = n;
        for (int32_t i = 0; i < n; i++) {
            cum += exp((double)cd[i].logit - max) / sum;
            if (cum >= c->top_p) {
                keep = i + 1;
                break;
            }
        }
        n = keep;
    }
    if (c->min_p > 0.0f) {
        /* p_i >= min_p * p_max  <=>  logit_i >= max + log(min_p); renormalising the
         * survivors of earlier filters does not change the ratio. */
        float thr = max + logf(c->min_p);
        int32_t m = 0;
        for (int32_t i = 0; i < n; i++)
            if (cd[i].logit >= thr)
                cd[m++] = cd[i];
        n = m;
    }

    /* Draw from softmax(logit / temp) over the survivors. */
    double inv_t = 1.0 / c->temp, sum = 0.0;
    float *p = s->prob;
    for (int32_t i = 0; i < n; i++) {
        p[i] = (float)exp(((double)cd[i].logit - max) * inv_t);
        sum += p[i];
    }
    double u = mdl_sampler_uniform(s) * sum, cum = 0.0;
    for (int32_t i = 0; i < n; i++) {
        cum += p[i];
        if (u < cum)
            return cd[i].id;
    }
    /* Rounding left u at the very top: the last candidate with any mass. */
    for (int32_t i = n - 1; i > 0; i--)
        if (p[i] > 0.0f)
            return cd[i].id;
    return cd[0].id;
}

double mdl_token_nll(const float *logits, uint32_t n, int32_t t)
{
    float max = logits[0];
    for (uint32_t i = 1; i < n; i++)
        max = logits[i] > max ? logits[i] : max;
    double sum = 0.0;
    for (uint32_t i = 0; i < n; i++)
        sum += expf(logits[i] - max); /* terms in [0, 1]: float is exact enough, summed in double */
    return log(sum) + max - logits[t];
}
