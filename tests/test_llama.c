/* tests/test_llama.c — the forward pass's contract with its caller (model/llama.h,
 * model/kv_view.h) on a random-weight model: row bias, attention accumulators, views,
 * batches and errors. The numbers themselves are checked against numpy in
 * tests/test_forward.py; here each check compares two ways of asking the same thing. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "model/flatkv.h"
#include "model/llama.h"
#include "model/tiny.h"
#include "tests/check.h"

static mdl_t *open_tiny(uint64_t seed)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/tiny-%llu.gguf", check_tmpdir(), (unsigned long long)seed);
    mdl_tiny_cfg_t cfg;
    mdl_tiny_cfg_default(&cfg);
    cfg.seed = seed;
    err_info_t e;
    err_clear(&e);
    mdl_t *m = NULL;
    if (mdl_tiny_write(path, &cfg, &e) || mdl_new(path, &m, &e))
        check_fail_(__FILE__, __LINE__, "tiny model: %s", err_msg(&e));
    if (m)
        mdl_set_threads(m, 2);
    return m;
}

static mdl_flatkv_t *cache(const mdl_t *m, uint32_t n_seq, bool bias, bool acc)
{
    const mdl_hparams_t *hp = mdl_hparams(m);
    mdl_flatkv_cfg_t c = {.n_layer = hp->n_layer,
                          .n_head_kv = hp->n_head_kv,
                          .head_dim = hp->head_dim,
                          .n_seq = n_seq,
                          .n_ctx = 64,
                          .type = DT_F32,
                          .bias = bias,
                          .attn_acc = acc};
    mdl_flatkv_t *kv = NULL;
    CHECK_OK(mdl_flatkv_new(&c, &kv, NULL));
    return kv;
}

static double max_rel(const float *a, const float *b, size_t n)
{
    double d = 0, s = 0;
    for (size_t i = 0; i < n; i++) {
        d = fmax(d, fabs((double)a[i] - b[i]));
        s = fmax(s, fabs((double)b[i]));
    }
    return d / s;
}

static const int32_t TOKS[] = {1, 17, 200, 45, 300, 9, 77, 150};
enum { NT = sizeof TOKS / sizeof TOKS[0] };

/* Runs n items of one sequence (positions p0..) through kv, logits of every item. */
static int run_seq(mdl_t *m, mdl_flatkv_t *kv, const mdl_kv_io_t *io, int seq, const int32_t *t,
                   uint32_t n, int p0, float *logits)
{
    int32_t pos[NT], sq[NT];
    uint8_t want[NT];
    for (uint32_t i = 0; i < n; i++) {
        pos[i] = p0 + (int32_t)i;
        sq[i] = seq;
        want[i] = 1;
    }
    mdl_batch_t b = {.n = n, .token = t, .pos = pos, .seq = sq, .want = want};
    mdl_kv_io_t own;
    if (!io) {
        own = mdl_flatkv_io(kv);
        io = &own;
    }
    int rc = mdl_forward(m, &b, io, logits, NULL);
    if (rc == 0)
        mdl_flatkv_commit(kv);
    return rc;
}

static void test_load(void)
{
    mdl_t *m = open_tiny(3);
    if (!m)
        return;
    const mdl_hparams_t *hp = mdl_hparams(m);
    CHECK_INT(hp->n_embd, ==, 64);
    CHECK_INT(hp->n_head_kv, ==, 2);
    CHECK(mdl_tok(m) != NULL);
    CHECK(!mdl_has_retention(m));
    CHECK_INT(mdl_threads(m), ==, 2);
    mdl_destroy(&m);
    CHECK(m == NULL);
    mdl_destroy(&m);

    err_info_t e;
    err_clear(&e);
    mdl_t *sentinel = (mdl_t *)&e;
    mdl_t *out = sentinel;
    CHECK(mdl_new("/nonexistent/x.gguf", &out, &e) < 0);
    CHECK(out == sentinel); /* untouched on error */
    CHECK(strstr(err_msg(&e), "/nonexistent/x.gguf") != NULL);
}

/* A view that shows the inner view's rows and then repeats stored row DUP once. */
enum { DUP = 2 };
typedef struct dup_ctx {
    mdl_kv_io_t inner;
    mdl_kv_chunk_t chunks[2][8];
    size_t row_bytes;
} dup_ctx_t;

static int dup_view(void *ctx, int seq, int layer, int h, uint32_t n_new, mdl_kv_view_t *out)
{
    dup_ctx_t *d = ctx;
    int rc = d->inner.view(d->inner.ctx, seq, layer, h, n_new, out);
    if (rc || out->n_chunks != 1)
        return rc ? rc : ERR_INTERNAL;
    mdl_kv_chunk_t *c = d->chunks[h];
    c[0] = out->chunks[0];
    c[1] = c[0];
    c[1].n = 1;
    c[1].k = (const uint8_t *)c[0].k + DUP * d->row_bytes;
    c[1].v = (const uint8_t *)c[0].v + DUP * d->row_bytes;
    c[1].bias = NULL;
    c[1].attn_acc = NULL;
    out->chunks = c;
    out->n_chunks = 2;
    return 0;
}

/* A row with bias log(2) weighs like the same row stored twice. */
static void test_bias_is_log_mass(void)
{
    mdl_t *m = open_tiny(4);
    if (!m)
        return;
    const mdl_hparams_t *hp = mdl_hparams(m);
    const size_t nv = hp->n_vocab;
    float *lg = malloc(sizeof(float) * NT * nv), *a = malloc(sizeof(float) * nv);
    float *b = malloc(sizeof(float) * nv), *c = malloc(sizeof(float) * nv);
    mdl_flatkv_t *kv = cache(m, 1, true, false);
    CHECK_OK(run_seq(m, kv, NULL, 0, TOKS, 5, 0, lg));
    const int32_t next = TOKS[5], pos = 5;
    mdl_batch_t one = {.n = 1, .token = &next, .pos = &pos};
    mdl_kv_io_t io = mdl_flatkv_io(kv);

    CHECK_OK(mdl_forward(m, &one, &io, c, NULL)); /* plain */
    mdl_flatkv_rollback(kv);
    for (uint32_t l = 0; l < hp->n_layer; l++)
        for (uint32_t h = 0; h < hp->n_head_kv; h++)
            mdl_flatkv_bias(kv, 0, l, h)[DUP] = logf(2.0f);
    CHECK_OK(mdl_forward(m, &one, &io, a, NULL)); /* bias */
    mdl_flatkv_rollback(kv);
    for (uint32_t l = 0; l < hp->n_layer; l++)
        for (uint32_t h = 0; h < hp->n_head_kv; h++)
            mdl_flatkv_bias(kv, 0, l, h)[DUP] = 0.0f;
    dup_ctx_t d = {.inner = io, .row_bytes = sizeof(float) * hp->head_dim};
    mdl_kv_io_t dio = {.ctx = &d, .view = dup_view};
    CHECK_OK(mdl_forward(m, &one, &dio, b, NULL)); /* duplicate */
    mdl_flatkv_rollback(kv);

    CHECK_MSG(max_rel(a, b, nv) < 1e-5, "bias vs duplicate: %g", max_rel(a, b, nv));
    CHECK_MSG(max_rel(a, c, nv) > 1e-4, "the bias changed nothing: %g", max_rel(a, c, nv));
    free(lg);
    free(a);
    free(b);
    free(c);
    mdl_flatkv_destroy(&kv);
    mdl_destroy(&m);
}

/* Every query head's probabilities sum to 1 over the rows it sees, so a lane's
 * accumulators grow by (query heads per kv-head) for each item that reads them. */
static void test_attention_accumulators(void)
{
    mdl_t *m = open_tiny(5);
    if (!m)
        return;
    const mdl_hparams_t *hp = mdl_hparams(m);
    const double g = hp->n_head / hp->n_head_kv;
    float *lg = malloc(sizeof(float) * NT * hp->n_vocab * 2);
    mdl_flatkv_t *kv = cache(m, 2, false, true);
    /* sequence 0: 6 items in one batch; sequence 1: 3, then 2 more */
    CHECK_OK(run_seq(m, kv, NULL, 0, TOKS, 6, 0, lg));
    CHECK_OK(run_seq(m, kv, NULL, 1, TOKS + 1, 3, 0, lg));
    CHECK_OK(run_seq(m, kv, NULL, 1, TOKS + 4, 2, 3, lg));
    const uint32_t items[2] = {6, 5};
    for (uint32_t s = 0; s < 2; s++)
        for (uint32_t l = 0; l < hp->n_layer; l++)
            for (uint32_t h = 0; h < hp->n_head_kv; h++) {
                const float *acc = mdl_flatkv_attn_acc(kv, s, l, h);
                double sum = 0;
                for (uint32_t r = 0; r < mdl_flatkv_len(kv, s); r++) {
                    CHECK(acc[r] > 0.0f);
                    sum += acc[r];
                }
                CHECK_NEAR(sum, g * items[s], 1e-4 * g * items[s]);
                /* the first row is seen by every item, the last only by itself */
                CHECK(acc[0] >= acc[mdl_flatkv_len(kv, s) - 1]);
                CHECK(acc[mdl_flatkv_len(kv, s) - 1] <= g + 1e-5);
            }
    free(lg);
    mdl_flatkv_destroy(&kv);
    mdl_destroy(&m);
}

/* Without a KV io the batch attends only within itself: a fresh prefill is the same. */
static void test_no_io_and_default_want(void)
{
    mdl_t *m = open_tiny(6);
    if (!m)
        return;
    const size_t nv = mdl_hparams(m)->n_vocab;
    float *all = malloc(sizeof(float) * NT * nv), *last = malloc(sizeof(float) * nv);
    mdl_flatkv_t *kv = cache(m, 1, false, false);
    CHECK_OK(run_seq(m, kv, NULL, 0, TOKS, NT, 0, all));
    int32_t pos[NT];
    for (int i = 0; i < NT; i++)
        pos[i] = i;
    mdl_batch_t b = {.n = NT, .token = TOKS, .pos = pos}; /* want NULL: only the last */
    CHECK_OK(mdl_forward(m, &b, NULL, last, NULL));
    CHECK(max_rel(last, all + (NT - 1) * nv, nv) < 1e-6);
    free(all);
    free(last);
    mdl_flatkv_destroy(&kv);
    mdl_destroy(&m);
}

static int failing_view(void *ctx, int seq, int layer, int h, uint32_t n_new, mdl_kv_view_t *out)
{
    int *calls = ctx;
    return ++*calls == 3 ? ERR_BUDGET : 0;
}

static void test_errors(void)
{
    mdl_t *m = open_tiny(7);
    if (!m)
        return;
    const int32_t nv = (int32_t)mdl_hparams(m)->n_vocab;
    float *lg = malloc(sizeof(float) * 4 * (size_t)nv);
    int32_t tok[2] = {1, nv}, pos[2] = {0, 1}, seq[2] = {0, 0};
    mdl_batch_t b = {.n = 2, .token = tok, .pos = pos, .seq = seq};
    err_info_t e;
    err_clear(&e);
    CHECK_INT(mdl_forward(m, &b, NULL, lg, &e), ==, ERR_RANGE);
    CHECK(strstr(e.msg, "token") != NULL);
    tok[1] = 5;
    pos[1] = -1;
    CHECK_INT(mdl_forward(m, &b, NULL, lg, &e), ==, ERR_RANGE);
    pos[1] = 1;
    seq[1] = MDL_MAX_SEQ;
    CHECK_INT(mdl_forward(m, &b, NULL, lg, &e), ==, ERR_RANGE);
    seq[1] = 0;
    CHECK_INT(mdl_forward(m, &b, NULL, NULL, &e), ==, ERR_INVAL); /* wants logits, no buffer */
    int calls = 0;
    mdl_kv_io_t io = {.ctx = &calls, .view = failing_view};
    CHECK_INT(mdl_forward(m, &b, &io, lg, &e), ==, ERR_BUDGET);
    CHECK(strstr(e.msg, "layer 1") != NULL); /* 2 kv-heads: the third call is layer 1 */
    mdl_batch_t empty = {.n = 0, .token = tok, .pos = pos};
    CHECK_OK(mdl_forward(m, &empty, NULL, NULL, &e));
    /* after errors the model still works */
    CHECK_OK(mdl_forward(m, &b, NULL, lg, &e));
    free(lg);
    mdl_destroy(&m);
}

int main(void)
{
    RUN(test_load);
    RUN(test_bias_is_log_mass);
    RUN(test_attention_accumulators);
    RUN(test_no_io_and_default_want);
    RUN(test_errors);
    return check_done();
}
