/* tests/test_forward_threads.c — the forward pass run by a team of threads gives what it
 * gives on one thread. GISTD_PAR_MIN_NS=0 makes even these tiny models threaded; every
 * weight type, batches of 1, 3 and 8 (decode: activations made by each thread), 11
 * (shared out), 32 (sgemm for float weights), three interleaved sequences, attention
 * accumulators, row biases, retention gates, and an error from a view in mid-call. Lanes
 * are cut into attention parts of 4 rows, so threads share one lane and merge.
 *
 * The row kernels and attention compute each output element the same way whichever
 * thread makes it (parts merge in their order, whoever finishes last), so those results must be equal bit for bit; sgemm is only held to
 * f32 noise. The numbers themselves are checked against numpy in tests/test_forward.py
 * (run it with GISTD_PAR_MIN_NS=0 too). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "model/flatkv.h"
#include "model/llama.h"
#include "model/tiny.h"
#include "tests/check.h"

enum { N_SEQ = 3, N_ITEMS = 32 };
static const uint32_t LENS[N_SEQ] = {9, 4, 19};

typedef struct shape {
    const char *name;
    uint32_t n_embd, n_head, n_head_kv, n_ff, retention_hidden;
    bool tied;
} shape_t;

static const shape_t SHAPES[] = {
    {"gqa+gates", 64, 4, 2, 128, 16, false},
    {"odd", 96, 3, 3, 160, 0, true},
};

/* What one run produces: logits of every item, then per sequence, layer and kv-head the
 * stored rows' log-beta (with gates) and attention accumulators. */
typedef struct result {
    float *logits;
    size_t n_logits;
    float *rows;
    size_t n_rows;
} result_t;

static mdl_t *open_model(const shape_t *sh, uint32_t type, int threads, bool force_par)
{
    char path[512];
    snprintf(path, sizeof path, "%s/threads-%s-%u.gguf", check_tmpdir(), sh->name, type);
    mdl_tiny_cfg_t cfg;
    mdl_tiny_cfg_default(&cfg);
    cfg.seed = 11;
    cfg.type = type;
    cfg.n_embd = sh->n_embd;
    cfg.n_head = sh->n_head;
    cfg.n_head_kv = sh->n_head_kv;
    cfg.n_ff = sh->n_ff;
    cfg.retention_hidden = sh->retention_hidden;
    cfg.tied = sh->tied;
    err_info_t e;
    err_clear(&e);
    mdl_t *m = NULL;
    /* the threshold is read when the model is made */
    setenv("GISTD_PAR_MIN_NS", force_par ? "0" : "1e30", 1);
    setenv("GISTD_ATTN_PART_ROWS", "4", 1); /* threads share even these short lanes */
    if (mdl_tiny_write(path, &cfg, &e) || mdl_new(path, &m, &e))
        check_fail_(__FILE__, __LINE__, "tiny model: %s", err_msg(&e));
    unsetenv("GISTD_PAR_MIN_NS");
    unsetenv("GISTD_ATTN_PART_ROWS");
    if (m)
        mdl_set_threads(m, threads);
    return m;
}

/* The three sequences, interleaved round robin, in batches of ubatch items. */
static int run(mdl_t *m, int ubatch, bool acc, result_t *out)
{
    const mdl_hparams_t *hp = mdl_hparams(m);
    const size_t nv = hp->n_vocab;
    mdl_flatkv_cfg_t c = {.n_layer = hp->n_layer,
                          .n_head_kv = hp->n_head_kv,
                          .head_dim = hp->head_dim,
                          .n_seq = N_SEQ,
                          .n_ctx = 32,
                          .type = DT_F32,
                          .chunk_rows = 5,
                          .bias = true,
                          .logbeta = mdl_has_retention(m),
                          .attn_acc = acc};
    mdl_flatkv_t *kv = NULL;
    CHECK_OK(mdl_flatkv_new(&c, &kv, NULL));
    int32_t tok[N_ITEMS], pos[N_ITEMS], seq[N_ITEMS];
    uint8_t want[N_ITEMS];
    uint32_t at[N_SEQ] = {0}, n = 0;
    for (uint32_t round = 0; n < N_ITEMS; round++)
        for (uint32_t s = 0; s < N_SEQ; s++)
            if (round < LENS[s]) {
                tok[n] = (int32_t)(3 + (s * 131 + round * 37) % (hp->n_vocab - 3));
                pos[n] = (int32_t)at[s]++;
                seq[n] = (int32_t)s;
                want[n++] = 1;
            }
    out->n_logits = N_ITEMS * nv;
    out->logits = malloc(sizeof(float) * out->n_logits);
    mdl_kv_io_t io = mdl_flatkv_io(kv);
    int rc = 0;
    for (uint32_t i = 0; i < N_ITEMS && !rc; i += (uint32_t)ubatch) {
        uint32_t k = N_ITEMS - i < (uint32_t)ubatch ? N_ITEMS - i : (uint32_t)ubatch;
        mdl_batch_t b = {
            .n = k, .token = tok + i, .pos = pos + i, .seq = seq + i, .want = want + i};
        rc = mdl_forward(m, &b, &io, out->logits + i * nv, NULL);
        if (rc == 0)
            mdl_flatkv_commit(kv);
        /* give the stored rows a bias, so that it counts from the next batch on */
        for (uint32_t s = 0; s < N_SEQ; s++)
            for (uint32_t l = 0; l < hp->n_layer; l++)
                for (uint32_t h = 0; h < hp->n_head_kv; h++) {
                    float *bias = mdl_flatkv_bias(kv, s, l, h);
                    for (uint32_t r = 0; r < mdl_flatkv_len(kv, s); r++)
                        bias[r] = 0.1f * (float)((r * 7 + h) % 5);
                }
    }
    out->n_rows = 0;
    out->rows = malloc(sizeof(float) * 2 * N_ITEMS * hp->n_layer * hp->n_head_kv);
    for (uint32_t s = 0; s < N_SEQ; s++)
        for (uint32_t l = 0; l < hp->n_layer; l++)
            for (uint32_t h = 0; h < hp->n_head_kv; h++) {
                const float *lb = mdl_flatkv_logbeta(kv, s, l, h);
                const float *ac = mdl_flatkv_attn_acc(kv, s, l, h);
                for (uint32_t r = 0; r < mdl_flatkv_len(kv, s); r++) {
                    if (lb)
                        out->rows[out->n_rows++] = lb[r];
                    if (ac)
                        out->rows[out->n_rows++] = ac[r];
                }
            }
    mdl_flatkv_destroy(&kv);
    return rc;
}

static void result_free(result_t *r)
{
    free(r->logits);
    free(r->rows);
}

/* max |a - b| / max |b| over n values. */
static double rel(const float *a, const float *b, size_t n)
{
    double d = 0, s = 0;
    for (size_t i = 0; i < n; i++) {
        d = fmax(d, fabs((double)a[i] - b[i]));
        s = fmax(s, fabs((double)b[i]));
    }
    return s > 0 ? d / s : d;
}

static void compare(const result_t *got, const result_t *want, bool exact, const char *what)
{
    CHECK(got->n_logits == want->n_logits && got->n_rows == want->n_rows);
    if (got->n_logits != want->n_logits || got->n_rows != want->n_rows)
        return;
    if (exact) {
        CHECK_MSG(memcmp(got->logits, want->logits, sizeof(float) * got->n_logits) == 0,
                  "%s: logits differ (%.3g)", what, rel(got->logits, want->logits, got->n_logits));
        CHECK_MSG(memcmp(got->rows, want->rows, sizeof(float) * got->n_rows) == 0,
                  "%s: log-beta or accumulators differ (%.3g)", what,
                  rel(got->rows, want->rows, got->n_rows));
    } else {
        CHECK_MSG(rel(got->logits, want->logits, got->n_logits) < 1e-5, "%s: logits %.3g", what,
                  rel(got->logits, want->logits, got->n_logits));
        CHECK_MSG(rel(got->rows, want->rows, got->n_rows) < 1e-5, "%s: rows %.3g", what,
                  rel(got->rows, want->rows, got->n_rows));
    }
}

static void test_threads_match_one(void)
{
    /* shape, weight type: every type on the first shape (with gates), two on the other */
    static const struct {
        int shape;
        uint32_t type;
    } models[] = {{0, DT_Q8_0}, {1, DT_F32}, {0, DT_F32}, {0, DT_F16}, {0, DT_Q4_0}, {1, DT_Q8_0}};
    /* batch size, attention accumulators (which change how attention is shared out) */
    static const int cases[][2] = {{1, 1}, {3, 0}, {8, 0}, {11, 1}, {N_ITEMS, 0}};
    /* GISTD_TEST_QUICK=1 (make check, under valgrind): two of the models */
    const char *q = getenv("GISTD_TEST_QUICK");
    const size_t n_models = q && *q && strcmp(q, "0") != 0 ? 2 : sizeof models / sizeof models[0];
    for (size_t mi = 0; mi < n_models; mi++) {
        const shape_t *sh = &SHAPES[models[mi].shape];
        const uint32_t type = models[mi].type;
        mdl_t *one = open_model(sh, type, 1, false);
        mdl_t *two = open_model(sh, type, 2, true);
        mdl_t *three = open_model(sh, type, 3, true);
        for (size_t ci = 0; one && two && three && ci < sizeof cases / sizeof cases[0]; ci++) {
            const int ub = cases[ci][0], acc = cases[ci][1];
            /* sgemm takes float weights from 32 items on */
            const bool exact = ub < 32 || type == DT_Q8_0 || type == DT_Q4_0;
            /* three threads on two cores wait a lot: one batch size */
            const int n_t = ub == 11 ? 3 : 2;
            result_t r1, rt;
            CHECK_OK(run(one, ub, acc, &r1));
            for (int t = 2; t <= n_t; t++) {
                CHECK_OK(run(t == 2 ? two : three, ub, acc, &rt));
                char what[128];
                snprintf(what, sizeof what, "%s type %u ubatch %d%s, %d threads", sh->name, type,
                         ub, acc ? " acc" : "", t);
                compare(&rt, &r1, exact, what);
                result_free(&rt);
            }
            result_free(&r1);
        }
        mdl_destroy(&one);
        mdl_destroy(&two);
        mdl_destroy(&three);
    }
}

static int failing_view(void *ctx, int seq, int layer, int h, uint32_t n_new, mdl_kv_view_t *out)
{
    int *calls = ctx;
    return ++*calls == 3 ? ERR_BUDGET : 0;
}

/* A view that fails in the second layer stops the whole team; the model works after. */
static void test_error_in_team(void)
{
    mdl_t *m = open_model(&SHAPES[0], DT_Q8_0, 2, true);
    if (!m)
        return;
    const size_t nv = mdl_hparams(m)->n_vocab;
    float *lg = malloc(sizeof(float) * 4 * nv);
    int32_t tok[4] = {1, 20, 30, 40}, pos[4] = {0, 1, 2, 3};
    for (uint32_t n = 1; n <= 4; n += 3) {
        int calls = 0;
        mdl_kv_io_t io = {.ctx = &calls, .view = failing_view};
        mdl_batch_t b = {.n = n, .token = tok, .pos = pos};
        err_info_t e;
        err_clear(&e);
        CHECK_INT(mdl_forward(m, &b, &io, lg, &e), ==, ERR_BUDGET);
        CHECK(strstr(e.msg, "layer 1") != NULL); /* 2 kv-heads: the third call is layer 1 */
        CHECK_INT(calls, ==, 3);
        CHECK_OK(mdl_forward(m, &b, NULL, lg, &e));
    }
    free(lg);
    mdl_destroy(&m);
}

int main(void)
{
    RUN(test_threads_match_one);
    RUN(test_error_in_team);
    return check_done();
}
