/* tests/test_rope_forward.c — the forward pass rotates keys exactly as the model's exported
 * rotation (model/rope.h) says, for both pairings: llama's adjacent pairs and the half-split
 * pairs of qwen2 and qwen3 (with their Q/K/V biases and per-head norms before the rotation).
 *
 * Layer 0's new key of a token depends only on the token and its position, so the key the
 * forward writes at position p must equal mdl_rope_rotate of the key it writes at 0 by p.
 * The forward finishes a head on whichever thread makes its last rows; the models here have
 * heads of 64 and 96 dims, products of 16-row units shared among 3 threads with the
 * threshold for threads at 0, so heads are cut between threads. The other pairing, applied
 * to the same key, must miss (the check can fail). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "model/llama.h"
#include "model/rope.h"
#include "model/tiny.h"
#include "tests/check.h"

#define MAX_ITEMS 8
#define MAX_KV    (4 * 128)

/* Layer 0's new keys of every item, by sequence (one item per sequence). */
typedef struct capture {
    uint32_t n_kv, hd;
    float k[MAX_ITEMS][MAX_KV];
} capture_t;

static int capture_view(void *ctx, int seq, int layer, int h, uint32_t n_new, mdl_kv_view_t *out)
{
    capture_t *c = ctx;
    static float sink_k[MAX_KV], sink_v[MAX_KV];
    (void)n_new;
    out->n_chunks = 0;
    out->new_k = layer == 0 ? c->k[seq] + (size_t)h * c->hd : sink_k;
    out->new_v = sink_v;
    return 0;
}

static mdl_t *open_model(const char *arch, uint32_t head_dim, uint32_t type)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/rope-%s-%u-%u.gguf", check_tmpdir(), arch, head_dim, type);
    mdl_tiny_cfg_t cfg;
    mdl_tiny_cfg_default(&cfg);
    cfg.arch = arch;
    cfg.type = type;
    cfg.n_embd = 256;
    cfg.n_head = 4;
    cfg.n_head_kv = 4;
    cfg.n_ff = 256;
    cfg.head_dim = head_dim;
    cfg.rope_base = 500.0f; /* fast-turning pairs everywhere, so a wrong pairing shows */
    err_info_t e;
    err_clear(&e);
    mdl_t *m = NULL;
    if (mdl_tiny_write(path, &cfg, &e) || mdl_new(path, &m, &e))
        check_fail_(__FILE__, __LINE__, "%s model: %s", arch, err_msg(&e));
    if (m)
        mdl_set_threads(m, 3);
    return m;
}

static void check_arch(const char *arch, uint32_t head_dim, uint32_t type, uint32_t pairs)
{
    mdl_t *m = open_model(arch, head_dim, type);
    if (!m)
        return;
    const mdl_hparams_t *hp = mdl_hparams(m);
    const mdl_rope_t *rope = mdl_rope(m);
    CHECK_INT(rope->pairs, ==, pairs);
    CHECK_INT(rope->n_rot, ==, hp->head_dim);
    capture_t *c = calloc(1, sizeof *c);
    c->n_kv = hp->n_head_kv;
    c->hd = hp->head_dim;
    /* the same token at positions 0, 1, 7, 40, 200 in sequences of their own */
    static const int32_t pos[] = {0, 1, 7, 40, 200};
    const uint32_t n = sizeof pos / sizeof pos[0];
    int32_t tok[MAX_ITEMS], seq[MAX_ITEMS];
    for (uint32_t i = 0; i < n; i++) {
        tok[i] = 57;
        seq[i] = (int32_t)i;
    }
    mdl_batch_t b = {.n = n, .token = tok, .pos = pos, .seq = seq};
    mdl_kv_io_t io = {.ctx = c, .view = capture_view};
    float *logits = malloc(sizeof(float) * hp->n_vocab);
    CHECK_OK(mdl_forward(m, &b, &io, logits, NULL));

    mdl_rope_t other = *rope;
    other.pairs = pairs == MDL_ROPE_HALVES ? MDL_ROPE_ADJACENT : MDL_ROPE_HALVES;
    double worst = 0, worst_other = 0, moved = 0;
    for (uint32_t i = 1; i < n; i++) {
        for (uint32_t h = 0; h < c->n_kv; h++) {
            double want[128], alt[128], scale = 0;
            for (uint32_t d = 0; d < c->hd; d++) {
                want[d] = alt[d] = c->k[0][h * c->hd + d];
                scale = fmax(scale, fabs(want[d]));
            }
            mdl_rope_rotate(rope, pos[i], want);
            mdl_rope_rotate(&other, pos[i], alt);
            for (uint32_t d = 0; d < c->hd; d++) {
                const double got = c->k[i][h * c->hd + d];
                worst = fmax(worst, fabs(got - want[d]) / scale);
                worst_other = fmax(worst_other, fabs(got - alt[d]) / scale);
                moved = fmax(moved, fabs(got - c->k[0][h * c->hd + d]) / scale);
            }
        }
    }
    /* f32 products and cos/sin against the rotation in double */
    CHECK_MSG(worst < 1e-5, "%s: forward's keys differ from mdl_rope_rotate by %.3g", arch, worst);
    CHECK_MSG(worst_other > 1e-2, "%s: the other pairing fits too (%.3g)", arch, worst_other);
    CHECK_MSG(moved > 1e-1, "%s: keys did not turn (%.3g)", arch, moved);
    free(logits);
    free(c);
    mdl_destroy(&m);
}

static void test_llama_adjacent(void)
{
    check_arch("llama", 0, DT_F32, MDL_ROPE_ADJACENT);
    check_arch("llama", 96, DT_Q8_0, MDL_ROPE_ADJACENT);
}

static void test_qwen2_halves(void)
{
    check_arch("qwen2", 0, DT_F32, MDL_ROPE_HALVES);
    check_arch("qwen2", 96, DT_F16, MDL_ROPE_HALVES);
    check_arch("qwen2", 64, DT_Q4_K, MDL_ROPE_HALVES);
}

static void test_qwen3_halves(void)
{
    check_arch("qwen3", 128, DT_F16, MDL_ROPE_HALVES);
    check_arch("qwen3", 96, DT_Q8_0, MDL_ROPE_HALVES);
    check_arch("qwen3", 128, DT_Q6_K, MDL_ROPE_HALVES);
}

int main(void)
{
    setenv("GISTD_PAR_MIN_NS", "0", 1); /* every forward call threaded */
    RUN(test_llama_adjacent);
    RUN(test_qwen2_halves);
    RUN(test_qwen3_halves);
    return check_done();
}
